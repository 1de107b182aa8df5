//! What the peer tells the person, through a bounded queue.
//!
//! The chat service must never wait on a slow screen (a `Deliver` would
//! stall its sender), so a full queue drops the newest event and counts it;
//! the next event that fits is preceded by a notice saying how many were
//! dropped. Every dropped message is in the history (`/history`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::proto::ChatMessage;

/// Events queued for the person before new ones are dropped.
pub const EVENT_QUEUE: usize = 4096;

/// Something that happened that the person should see.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// A message arrived (live, by gap repair, by a sync, or from an outbox).
    Message { msg: ChatMessage, late: bool },
    /// This peer is no longer in a room.
    Left { room: String, reason: String },
    /// A restarted peer is back in a room it was in, having caught up on
    /// `new` messages sent while it was away.
    Back { room: String, new: usize },
    /// Anything else worth a line: the router went away and came back, an
    /// outbox was flushed.
    Notice(String),
    /// Something the person must act on: a known nick came back with
    /// another key.
    Warning { nick: String, text: String },
    /// Someone else joined or left one of this peer's rooms (from the
    /// router's `Watch` events; never this peer itself). `message`: the
    /// parting message of a leave or a quit, empty for none.
    Presence {
        room: String,
        nick: String,
        change: Presence,
        message: String,
    },
    /// This peer's mailbox at the router was drained: `delivered` messages
    /// waited there and are new here; `expired` envelopes were removed
    /// unread at the router's age limit.
    Mailbox { delivered: usize, expired: u64 },
    /// A message its author handed over on its own link failed the
    /// signature check that follows storing it: it has left the history
    /// (it was shown, and is never served to anyone), and `key`, the key
    /// that link proved, is flagged: only its holder could have sent it.
    Forged {
        msg: ChatMessage,
        key: Option<crate::identity::PublicKey>,
    },
    /// Someone in `room` changed their nick from `old` to `new`: their
    /// signed nick-change event (a [`crate::proto::Kind::Nick`] message,
    /// also told as the `Message` just before) arrived in the room's
    /// history, once per room. A receiver that knew `old` checked that
    /// its key signed the event (else the event is refused, and this is
    /// never told) and now knows `new` for the same key: see
    /// [`crate::peer::Peer::same_person`], which says whether it did
    /// (false: `old` was never met here, so the claim is the author's
    /// word alone). Private partners follow the key: no event names them.
    NickChanged {
        room: String,
        old: String,
        new: String,
    },
    /// The router stopped answering (`up` false: every router of the list
    /// was unreachable), or answers again after that (`up` true). Said once
    /// per outage.
    Router { up: bool },
}

/// A change in who sits in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Joined,
    /// Left the room.
    Left,
    /// Its session ended on purpose: it logged out (or a new login of its
    /// key took over); one per room it sat in.
    Quit,
    /// Its lease ran out: the peer stopped answering (crashed, cut off);
    /// one per room it sat in.
    TimedOut,
}

/// The sending side of the queue. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<PeerEvent>,
    dropped: Arc<AtomicU64>,
}

impl Events {
    pub fn new() -> (Events, mpsc::Receiver<PeerEvent>) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let events = Events {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (events, rx)
    }

    pub fn emit(&self, event: PeerEvent) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let notice = PeerEvent::Notice(format!(
                "{dropped} event(s) were dropped while the screen was busy; /history shows every message"
            ));
            if self.tx.try_send(notice).is_ok() {
                self.dropped.fetch_sub(dropped, Ordering::Relaxed);
            }
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // Nobody listening (the UI is gone) is not an error.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// A message stored and new here; a nick-change event is also told as
    /// [`PeerEvent::NickChanged`].
    pub fn message(&self, msg: ChatMessage, late: bool) {
        let renamed =
            (msg.kind == crate::proto::Kind::Nick as i32).then(|| PeerEvent::NickChanged {
                room: msg.conversation.clone(),
                old: msg.body.clone(),
                new: msg.author.clone(),
            });
        self.emit(PeerEvent::Message { msg, late });
        if let Some(renamed) = renamed {
            self.emit(renamed);
        }
    }

    /// Messages that a sync stored and were new here.
    pub fn messages(&self, msgs: Vec<(ChatMessage, bool)>) {
        for (msg, late) in msgs {
            self.message(msg, late);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_and_then_says_so() {
        let (events, mut rx) = Events::new();
        for i in 0..EVENT_QUEUE + 5 {
            events.emit(PeerEvent::Notice(i.to_string()));
        }
        for _ in 0..EVENT_QUEUE {
            rx.recv().await.unwrap();
        }
        events.emit(PeerEvent::Notice("after".into()));
        match rx.recv().await.unwrap() {
            PeerEvent::Notice(n) => assert!(n.starts_with("5 event(s) were dropped"), "{n}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(rx.recv().await.unwrap(), PeerEvent::Notice(n) if n == "after"));
    }
}
