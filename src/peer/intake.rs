//! Intake: the one way in for messages that others wrote. Whatever the
//! source (a link, the router's mailbox), a batch passes the same stages,
//! in this order, with the differences a source's [`Policy`] names:
//!
//! 1. **form and author**: well formed, not this peer's own nick, written
//!    by the key that handed it over (the link's, or the depositor's that
//!    the seal binds);
//! 2. **signature**: checked now, before storing (second-hand: mail), or
//!    after, off the latency path (first-hand: the author's own link; see
//!    `checks`);
//! 3. **right to write**: a room's owner alone makes its creation event;
//!    a room line's author is a member now (live) or the room is one this
//!    peer keeps (mail written while it rested there); a private line is
//!    between its two parties;
//! 4. **store**: one store job for the batch (marked unchecked where the
//!    signature waits), then the person told and gaps repaired;
//! 5. **answer**: one per message, in order; a refusal is that message's
//!    alone.
//!
//! Pulled history is second-hand too; the sync checks a page's signatures
//! as one batch before storing it, and takes a room's creation event only
//! from its owner (`Syncer::admits_creation`), as stage 3 does here.

use std::collections::HashMap;

use tonic::Status;

use super::away::Away;
use super::checks::Checks;
use super::events::{Events, PeerEvent};
use super::rooms::Rooms;
use super::session::Session;
use crate::identity::{verify_messages, PublicKey};
use crate::message::valid_message;
use crate::metrics::PeerMetrics;
use crate::names::{Conversation, Nick, Room};
use crate::net::Peers;
use crate::proto::{ChatMessage, DeliverResponse};
use crate::store::{Inserted, Store};
use crate::sync::Syncer;
use crate::trust::Holds;

/// From this many signatures on, a batch is checked on the blocking pool.
const VERIFY_IN_PLACE: usize = 32;
/// How long a room line waits for the router to confirm its author is a
/// member (only a newcomer's, whom the picture does not hold yet).
const ROOM_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How messages reached this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// From its author, over the author's own link (or `Deliver`).
    Link,
    /// From the router's mailbox, deposited by its author while this peer
    /// was away.
    Mailbox,
}

/// When a source's signatures are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Before storing: nothing vouches for the message but its signature.
    BeforeStoring,
    /// After storing, off the path, before it is ever served: the link
    /// that handed it over proved its author.
    AfterStoring,
}

/// Who may write a room line of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    /// Its author is a member now (the router confirms a newcomer).
    Now,
    /// The room is one this peer keeps: mail was written while its author
    /// sat in the room and this peer rested there; the author may be gone.
    Kept,
}

/// What intake asks of a source's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Policy {
    check: Check,
    membership: Membership,
}

impl Source {
    fn policy(self) -> Policy {
        match self {
            Source::Link => Policy {
                check: Check::AfterStoring,
                membership: Membership::Now,
            },
            Source::Mailbox => Policy {
                check: Check::BeforeStoring,
                membership: Membership::Kept,
            },
        }
    }

    /// The metrics' label.
    fn label(self) -> &'static str {
        match self {
            Source::Link => "link",
            Source::Mailbox => "mailbox",
        }
    }
}

/// Admission of messages, with what it judges by. Cheap to clone.
#[derive(Clone)]
pub(super) struct Intake {
    /// Off only in `bench`'s comparison (see `PeerConfig::unsigned`).
    pub(super) check_signatures: bool,
    /// Checks, off the path, the signatures of what links hand over.
    pub(super) checks: Checks,
    pub(super) store: Store,
    pub(super) session: Session,
    pub(super) rooms: Rooms,
    pub(super) sync: Syncer,
    pub(super) peers: Peers,
    pub(super) events: Events,
    /// Told to whoever writes privately while the person is away.
    pub(super) away: Away,
    /// Counts what comes in (messages, commits).
    pub(super) metrics: PeerMetrics,
}

type Answer = Result<DeliverResponse, Status>;

impl Intake {
    fn me(&self) -> &Nick {
        self.session.nick()
    }

    /// Takes `msgs`, handed over by `caller` by way of `source`, through
    /// the stages of the module's doc. One answer per message, in order.
    pub(super) async fn take(
        &self,
        source: Source,
        caller: &PublicKey,
        msgs: Vec<ChatMessage>,
    ) -> Vec<Answer> {
        let policy = source.policy();
        let mut answers: Vec<Option<Answer>> = vec![None; msgs.len()];
        let passed = self.authored(caller, msgs, &mut answers).await;
        let deferred = self.check_signatures && policy.check == Check::AfterStoring;
        let passed = if self.check_signatures && !deferred {
            self.signed(caller, passed, &mut answers).await
        } else {
            passed
        };
        let admitted = self.rights(policy, passed, &mut answers).await;
        self.store(source, caller, deferred, admitted, &mut answers)
            .await;
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(Status::internal("no answer"))))
            .collect()
    }

    /// Stage 1: those of `msgs` well formed and written by `caller`.
    async fn authored(
        &self,
        caller: &PublicKey,
        msgs: Vec<ChatMessage>,
        answers: &mut [Option<Answer>],
    ) -> Vec<(usize, ChatMessage, Conversation, Nick)> {
        // Within a batch each author's key is asked once: a link's batch is
        // one author's.
        let mut keys: HashMap<String, Result<(), Status>> = HashMap::new();
        let mut passed = Vec::with_capacity(msgs.len());
        for (i, msg) in msgs.into_iter().enumerate() {
            match self.admit(caller, &msg, &mut keys).await {
                Ok((conv, author)) => passed.push((i, msg, conv, author)),
                Err(status) => answers[i] = Some(Err(status)),
            }
        }
        passed
    }

    /// Stage 2, before storing: those of `passed` that carry `caller`'s
    /// signature, checked as one batch.
    async fn signed(
        &self,
        caller: &PublicKey,
        passed: Vec<(usize, ChatMessage, Conversation, Nick)>,
        answers: &mut [Option<Answer>],
    ) -> Vec<(usize, ChatMessage, Conversation, Nick)> {
        if passed.is_empty() {
            return passed;
        }
        let good = if passed.len() < VERIFY_IN_PLACE {
            // In place, the usual case (a message alone): no copies.
            let items: Vec<(PublicKey, &ChatMessage)> =
                passed.iter().map(|p| (*caller, &p.1)).collect();
            verify_messages(&items)
        } else {
            verify_off_runtime(*caller, passed.iter().map(|p| p.1.clone()).collect()).await
        };
        passed
            .into_iter()
            .zip(good)
            .filter_map(|(p, good)| {
                if good {
                    return Some(p);
                }
                let msg = &p.1;
                tracing::warn!(author = %msg.author, caller = %caller, conversation = %msg.conversation, seq = msg.seq, "refused a message whose signature does not check");
                answers[p.0] = Some(Err(Status::invalid_argument(
                    "the message's signature does not check against its author's key",
                )));
                None
            })
            .collect()
    }

    /// Stage 3: those of `passed` their authors may write where they are.
    async fn rights(
        &self,
        policy: Policy,
        passed: Vec<(usize, ChatMessage, Conversation, Nick)>,
        answers: &mut [Option<Answer>],
    ) -> Vec<(usize, ChatMessage, Conversation)> {
        // Each (room, author)'s membership is asked once per batch.
        let mut rights: HashMap<(String, String), Result<(), Status>> = HashMap::new();
        let mut admitted = Vec::with_capacity(passed.len());
        for (i, msg, conv, author) in passed {
            let right = match &conv {
                // Anyone can sign a creation event: only the owner's is taken.
                Conversation::Room(room) if !self.sync.admits_creation(&msg) => {
                    Err(Status::permission_denied(format!(
                        "{author} does not own {room}: its creation event is refused"
                    )))
                }
                Conversation::Room(room) if policy.membership == Membership::Kept => {
                    if self.rooms.contains(room.as_str()) {
                        Ok(())
                    } else {
                        Err(Status::failed_precondition(format!(
                            "not a member of {room}"
                        )))
                    }
                }
                Conversation::Room(room) => {
                    let at = (room.key(), author.key());
                    match rights.get(&at) {
                        Some(right) => right.clone(),
                        None => {
                            let right = self.check_room(room, &author).await;
                            rights.insert(at, right.clone());
                            right
                        }
                    }
                }
                Conversation::Private(..) => {
                    if !conv.is_party(self.me()) || !conv.is_party(&author) {
                        Err(Status::permission_denied(
                            "not a party to that private conversation",
                        ))
                    } else {
                        // A new partner may share no room: follow its presence.
                        self.session.follow(&author);
                        Ok(())
                    }
                }
            };
            match right {
                Ok(()) => admitted.push((i, msg, conv)),
                Err(status) => answers[i] = Some(Err(status)),
            }
        }
        admitted
    }

    /// Stages 4 and 5: `admitted` stored in one store job (marked
    /// unchecked when `deferred`, their checks queued), each answered.
    async fn store(
        &self,
        source: Source,
        caller: &PublicKey,
        deferred: bool,
        admitted: Vec<(usize, ChatMessage, Conversation)>,
        answers: &mut [Option<Answer>],
    ) {
        if admitted.is_empty() {
            return;
        }
        let batch = admitted.iter().map(|a| a.1.clone()).collect();
        let began = std::time::Instant::now();
        let stored = if deferred {
            self.store.insert_unchecked(batch, *caller.as_bytes()).await
        } else {
            self.store.insert_many(batch).await
        };
        self.metrics.commit(began.elapsed());
        match stored {
            Ok(inserted) => {
                let new = inserted.iter().filter(|i| i.new).count();
                self.metrics.message_in(source.label(), new);
                if deferred {
                    let new = admitted.iter().zip(&inserted).filter(|(_, i)| i.new);
                    self.checks
                        .push(*caller, new.map(|((_, msg, _), _)| msg.clone()));
                }
                for ((i, msg, conv), inserted) in admitted.into_iter().zip(inserted) {
                    answers[i] = Some(self.stored(msg, &conv, inserted));
                }
            }
            Err(err) => {
                let status = Status::from(err);
                for (i, ..) in admitted {
                    answers[i] = Some(Err(status.clone()));
                }
            }
        }
    }

    /// Whether `caller` holds the key `nick` is bound to (as
    /// [`crate::trust::Keys`] says). A changed key is refused, and the
    /// person told, until they trust it.
    pub(super) async fn is_key_of(&self, nick: &str, caller: &PublicKey) -> Result<(), Status> {
        match self.peers.keys().holds(nick, caller).await {
            Holds::Yes => Ok(()),
            Holds::Changed => Err(Status::permission_denied(format!(
                "{nick}'s key changed; refused until the person here trusts it"
            ))),
            Holds::No => {
                tracing::warn!(nick, caller = %caller, "refused a caller that does not hold the nick's key");
                Err(Status::permission_denied(format!(
                    "the calling key is not {nick}'s"
                )))
            }
            Holds::Unsure => Err(Status::unavailable(format!(
                "cannot learn {nick}'s key now; try later"
            ))),
        }
    }

    /// Whether a room message from `author` may be stored here. Refusals
    /// (FAILED_PRECONDITION, PERMISSION_DENIED) are definite: the sender
    /// stops trying. When this peer cannot tell yet (its router is
    /// unreachable, it is joining the room again) the answer is
    /// UNAVAILABLE, so the sender keeps the message owed and retries.
    async fn check_room(&self, room: &Room, author: &Nick) -> Result<(), Status> {
        let world = self.session.world();
        if !world.in_room(room.as_str()) {
            if self.rooms.contains(room.as_str()) {
                return Err(Status::unavailable(format!(
                    "joining {room} again; try later"
                )));
            }
            return Err(Status::failed_precondition(format!(
                "not a member of {room}"
            )));
        }
        // A newcomer's first line asks the router; the link's later batches
        // wait behind it, so the wait is short: past it the sender keeps the
        // line owed and tries again (by then the Watch event has come).
        let asked = tokio::time::timeout(
            ROOM_CHECK_WAIT,
            self.session.confirm_member(room.as_str(), author.as_str()),
        )
        .await;
        match asked {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(Status::permission_denied(format!(
                "{author} is not a member of {room}"
            ))),
            Ok(Err(err)) => {
                tracing::debug!(cause = %err, %room, %author, "cannot check membership");
                Err(Status::unavailable(format!(
                    "cannot check that {author} is in {room} now; try later"
                )))
            }
            Err(_) => Err(Status::unavailable(format!(
                "the router did not confirm that {author} is in {room} in time; try later"
            ))),
        }
    }

    /// The checks of one message that need no signature: well formed, not
    /// this peer's own nick, written by the caller's key.
    async fn admit(
        &self,
        caller: &PublicKey,
        msg: &ChatMessage,
        keys: &mut HashMap<String, Result<(), Status>>,
    ) -> Result<(Conversation, Nick), Status> {
        let conv = valid_message(msg).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let author =
            Nick::parse(&msg.author).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if author.key() == self.me().key() {
            return Err(Status::invalid_argument(
                "a message from this peer's own nick",
            ));
        }
        // Deliver carries the caller's own messages only: whatever name it
        // writes, the key decides, and the signature must be that key's.
        let known = match keys.get(&author.key()) {
            Some(known) => known.clone(),
            None => {
                let known = self.is_key_of(author.as_str(), caller).await;
                keys.insert(author.key(), known.clone());
                known
            }
        };
        known.map(|()| (conv, author))
    }

    /// What a stored message means: told to the person if new, a gap
    /// repaired, the answer to its sender.
    fn stored(
        &self,
        msg: ChatMessage,
        conv: &Conversation,
        inserted: Inserted,
    ) -> Result<DeliverResponse, Status> {
        if inserted.implausible {
            tracing::warn!(author = %msg.author, seq = msg.seq, lamport = msg.lamport, "refused a message whose clock runs implausibly far ahead");
            return Err(Status::invalid_argument(
                "seq or Lamport time runs implausibly far ahead of what is held",
            ));
        }
        if inserted.gap {
            if let Some(sender) = self.session.world().user(&msg.author) {
                self.sync.repair_gap(&msg, sender);
            }
        }
        let stored = inserted.new;
        if inserted.new {
            self.events.emit(PeerEvent::Message {
                msg,
                late: inserted.late,
            });
        }
        let away = match conv {
            Conversation::Private(..) => self.away.get().map(|a| a.to_string()),
            Conversation::Room(_) => None,
        };
        Ok(DeliverResponse {
            stored,
            away: away.unwrap_or_default(),
        })
    }
}

/// Which of `msgs` carry `key`'s signature, checked as one batch on the
/// blocking pool, so the runtime's threads keep serving meanwhile.
async fn verify_off_runtime(key: PublicKey, msgs: Vec<ChatMessage>) -> Vec<bool> {
    let n = msgs.len();
    // A check that did not finish (a panic, a runtime shutting down)
    // refuses the batch; the sender tries again.
    tokio::task::spawn_blocking(move || {
        let items: Vec<(PublicKey, &ChatMessage)> = msgs.iter().map(|m| (key, m)).collect();
        verify_messages(&items)
    })
    .await
    .unwrap_or_else(|_| vec![false; n])
}
