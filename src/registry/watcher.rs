//! One watcher's stream of registry events, the same for every registry:
//! events scoped to the sessions that need them, cut off after reporting
//! that the watcher fell behind, ended after its own session's
//! `UserOffline`.
//!
//! Presence goes by relationship: a nick's online/offline events reach
//! those who share a room with it (the event's audience), and those it
//! follows among the ones following it (the event's `followed`, fixed
//! when it happens). Following alone is not enough: a stranger who names
//! `alice` and `bob` learns nothing of them unless they named her too (a
//! private partner follows back, so partners still see each other). A nick
//! that starts following someone who already follows it and is online
//! makes an online event for that one alone: it could not see the login.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::Stream;

use super::{Event, EventKind, RegistryError, Token, MAX_FOLLOW};
use crate::names::Nick;

/// An event and the sessions that need it, fixed when it happens (after
/// a leave or a delete the room no longer says who was in it).
pub(crate) struct Scoped {
    pub event: Event,
    pub audience: HashSet<Token>,
    /// A presence event's: the sessions of those its nick follows.
    pub followed: HashSet<Token>,
}

/// What a registry tells its watchers.
#[derive(Clone)]
pub(crate) enum Feed {
    /// Shared: each watcher gets a clone of the pointer.
    Event(Arc<Scoped>),
    /// The registry's picture was rebuilt from scratch (etcd compacted
    /// past it): every watcher has missed events and must rebuild.
    Reset,
}

impl Feed {
    pub fn event(event: Event, audience: HashSet<Token>, followed: HashSet<Token>) -> Feed {
        Feed::Event(Arc::new(Scoped {
            event,
            audience,
            followed,
        }))
    }
}

/// Refuses a watch that asks to follow more than [`MAX_FOLLOW`] nicks.
pub(crate) fn check_follow(follow: &[Nick]) -> Result<(), RegistryError> {
    if follow.len() > MAX_FOLLOW {
        return Err(RegistryError::InvalidArgument(format!(
            "a watch follows at most {MAX_FOLLOW} nicks, not {}",
            follow.len()
        )));
    }
    Ok(())
}

/// Whether a session token still holds a live session.
pub(crate) type Alive = Box<dyn Fn(&str) -> bool + Send + Sync>;

pub(crate) struct Watcher {
    events: BroadcastStream<Feed>,
    token: Token,
    nick: String,
    /// Keys of the nicks whose presence this watcher follows.
    follow: HashSet<String>,
    alive: Alive,
    done: bool,
}

impl Watcher {
    /// The watcher of session `token` (held by `nick`) following `follow`,
    /// on `rx` (subscribed while the session was seen live, so nothing
    /// between the check and the subscription is lost).
    pub fn new(
        rx: broadcast::Receiver<Feed>,
        token: &str,
        nick: String,
        follow: &[Nick],
        alive: Alive,
    ) -> Watcher {
        Watcher {
            events: BroadcastStream::new(rx),
            token: token.to_owned(),
            nick,
            follow: follow.iter().map(Nick::key).collect(),
            alive,
            done: false,
        }
    }

    fn wants(&self, scoped: &Scoped) -> bool {
        scoped.audience.contains(&self.token)
            || match &scoped.event.kind {
                EventKind::UserOnline(m) | EventKind::UserOffline(m) => {
                    scoped.followed.contains(&self.token)
                        && self.follow.contains(&m.nick.to_ascii_lowercase())
                }
                EventKind::NickChanged { old, member } => {
                    scoped.followed.contains(&self.token)
                        && (self.follow.contains(&old.to_ascii_lowercase())
                            || self.follow.contains(&member.nick.to_ascii_lowercase()))
                }
                _ => false,
            }
    }
}

impl Stream for Watcher {
    type Item = Result<Event, RegistryError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let event = loop {
            match std::task::ready!(Pin::new(&mut this.events).poll_next(cx)) {
                Some(Ok(Feed::Event(scoped))) if this.wants(&scoped) => break scoped.event.clone(),
                // Not this session's business: the next one.
                Some(Ok(Feed::Event(_))) => continue,
                None => return Poll::Ready(None),
                Some(Ok(Feed::Reset)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(RegistryError::Lagged(0))));
                }
                Some(Err(BroadcastStreamRecvError::Lagged(n))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(RegistryError::Lagged(n))));
                }
            }
        };
        // Nicks are unique among sessions: the old one was this session's
        // own, whose offline event must still end the stream.
        if let EventKind::NickChanged { old, member } = &event.kind {
            if old.eq_ignore_ascii_case(&this.nick) {
                this.nick.clone_from(&member.nick);
            }
        }
        if let EventKind::UserOffline(m) = &event.kind {
            if m.nick.eq_ignore_ascii_case(&this.nick) && !(this.alive)(&this.token) {
                this.done = true;
            }
        }
        Poll::Ready(Some(Ok(event)))
    }
}
