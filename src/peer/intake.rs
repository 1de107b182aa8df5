//! Intake: the one way in for messages that others wrote. Whatever the
//! source (a link, the router's mailbox, a pull), a batch passes the same
//! stages, in this order, with the differences a source's [`Policy`]
//! names:
//!
//! 1. **form and author**: well formed; from a link or a mailbox, not this
//!    peer's own nick and written by the key that handed it over (the
//!    link's, or the depositor's that the seal binds); pulled, any author,
//!    whose key [`crate::trust::Keys`] gives;
//! 2. **signature**: checked now, before storing (second-hand: mail, a
//!    pull), or after, off the latency path (first-hand: the author's own
//!    link; see `checks`);
//! 3. **right to write**: a room's owner alone makes its creation event;
//!    a room line's author is a member now (live), or the room is one this
//!    peer keeps (mail written while it rested there), or anyone who wrote
//!    there (pulled history: its authors may have left since); a private
//!    line is between its two parties;
//! 4. **store**: one store job for the batch (marked unchecked where the
//!    signature waits), then the person told and gaps repaired; a pull's
//!    pages are stored by the sync, each while the next one is checked;
//! 5. **answer**: one per message, in order; a refusal is that message's
//!    alone (a pull's page is answered with how many were refused).

use std::collections::HashMap;

use futures::future::join_all;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::away::Away;
use super::checks::Checks;
use super::events::Events;
use super::rooms::Rooms;
use super::session::Session;
use crate::identity::{verify_messages, PublicKey};
use crate::message::valid_message;
use crate::metrics::PeerMetrics;
use crate::names::{Conversation, Nick, Room};
use crate::net::Peers;
use crate::proto::{ChatMessage, DeliverResponse, Kind, Member};
use crate::store::{Inserted, Store};
use crate::trust::{Holds, KeyOf};

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
    /// A page of history, pulled from any member that holds it.
    Pull,
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
    /// Anyone who ever wrote there: a room's history outlives its members'
    /// stay, and its signatures are what vouch for it.
    Ever,
}

/// Whose key a message must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Author {
    /// The key that handed it over: a link carries its caller's own
    /// messages only, a mailbox its depositor's.
    Caller,
    /// Its author's, as [`crate::trust::Keys`] says (this peer's own
    /// included: a restarted peer pulls what it wrote before).
    Named,
}

/// What intake asks of a source's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Policy {
    author: Author,
    check: Check,
    membership: Membership,
}

impl Source {
    fn policy(self) -> Policy {
        match self {
            Source::Link => Policy {
                author: Author::Caller,
                check: Check::AfterStoring,
                membership: Membership::Now,
            },
            Source::Mailbox => Policy {
                author: Author::Caller,
                check: Check::BeforeStoring,
                membership: Membership::Kept,
            },
            Source::Pull => Policy {
                author: Author::Named,
                check: Check::BeforeStoring,
                membership: Membership::Ever,
            },
        }
    }

    /// The metrics' label.
    fn label(self) -> &'static str {
        match self {
            Source::Link => "link",
            Source::Mailbox => "mailbox",
            Source::Pull => "pull",
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
    /// Gaps that stored messages showed, for the sync to repair.
    pub(super) gaps: mpsc::Sender<(ChatMessage, Member)>,
    pub(super) peers: Peers,
    pub(super) events: Events,
    /// Told to whoever writes privately while the person is away.
    pub(super) away: Away,
    /// Counts what comes in (messages, commits).
    pub(super) metrics: PeerMetrics,
}

type Answer = Result<DeliverResponse, Status>;

/// One message on its way through the stages: where its answer goes, its
/// conversation and author as parsed, and the key its signature must be.
struct Item {
    at: usize,
    msg: ChatMessage,
    conv: Conversation,
    author: Nick,
    key: PublicKey,
}

impl Intake {
    fn me(&self) -> Nick {
        self.session.nick()
    }

    /// Takes `msgs`, handed over by `caller` by way of `source` (a link or
    /// a mailbox), through the stages of the module's doc. One answer per
    /// message, in order.
    pub(super) async fn take(
        &self,
        source: Source,
        caller: &PublicKey,
        msgs: Vec<ChatMessage>,
    ) -> Vec<Answer> {
        let policy = source.policy();
        debug_assert_eq!(policy.author, Author::Caller);
        let mut answers: Vec<Option<Answer>> = vec![None; msgs.len()];
        let passed = self.authored(caller, msgs, &mut answers).await;
        let deferred = self.check_signatures && policy.check == Check::AfterStoring;
        let passed = if self.check_signatures && !deferred {
            self.signed(passed, &mut answers).await
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

    /// Stages 1 to 3 for a page of `conversation` pulled from `from`: those
    /// to store, and how many were refused. Those whose author's key cannot
    /// be learnt now are neither; a later sync brings them again.
    async fn pulled(
        &self,
        from: &str,
        conversation: &str,
        msgs: Vec<ChatMessage>,
    ) -> (Vec<ChatMessage>, usize) {
        let policy = Source::Pull.policy();
        let mut answers: Vec<Option<Answer>> = vec![None; msgs.len()];
        let passed = self.named(conversation, msgs, &mut answers).await;
        let passed = if self.check_signatures {
            self.signed(passed, &mut answers).await
        } else {
            passed
        };
        let admitted = self.rights(policy, passed, &mut answers).await;
        let refused = answers
            .iter()
            .flatten()
            .filter(|a| a.as_ref().is_err_and(|s| s.code() != Code::Unavailable))
            .count();
        if refused > 0 {
            tracing::warn!(from, conversation, refused, "refused pulled messages");
        }
        let good = admitted.into_iter().map(|item| item.msg).collect();
        (good, refused)
    }

    /// Stage 1 (a link, a mailbox): those of `msgs` well formed and
    /// written by `caller`.
    async fn authored(
        &self,
        caller: &PublicKey,
        msgs: Vec<ChatMessage>,
        answers: &mut [Option<Answer>],
    ) -> Vec<Item> {
        // Within a batch each author's key is asked once: a link's batch is
        // one author's.
        let mut keys: HashMap<String, Result<(), Status>> = HashMap::new();
        let mut passed = Vec::with_capacity(msgs.len());
        for (at, msg) in msgs.into_iter().enumerate() {
            match self.admit(caller, &msg, &mut keys).await {
                Ok((conv, author)) => passed.push(Item {
                    at,
                    msg,
                    conv,
                    author,
                    key: *caller,
                }),
                Err(status) => answers[at] = Some(Err(status)),
            }
        }
        passed
    }

    /// Stage 1 (a pull): those of `msgs` well formed, of `conversation`,
    /// by authors whose keys are known (each asked once per page).
    async fn named(
        &self,
        conversation: &str,
        msgs: Vec<ChatMessage>,
        answers: &mut [Option<Answer>],
    ) -> Vec<Item> {
        let mut keys: HashMap<String, KeyOf> = HashMap::new();
        let mut passed = Vec::with_capacity(msgs.len());
        for (at, msg) in msgs.into_iter().enumerate() {
            let formed = match valid_message(&msg) {
                Ok(_) if msg.conversation != conversation => Err(Status::invalid_argument(
                    "a message of another conversation than the one pulled",
                )),
                Ok(conv) => Nick::parse(&msg.author)
                    .map(|author| (conv, author))
                    .map_err(|e| Status::invalid_argument(e.to_string())),
                Err(e) => Err(Status::invalid_argument(e.to_string())),
            };
            let (conv, author) = match formed {
                Ok(parsed) => parsed,
                Err(status) => {
                    answers[at] = Some(Err(status));
                    continue;
                }
            };
            let key = match keys.get(&author.key()) {
                Some(k) => *k,
                None => {
                    let k = self.peers.keys().key_of(author.as_str()).await;
                    keys.insert(author.key(), k);
                    k
                }
            };
            match key {
                KeyOf::Key(key) => passed.push(Item {
                    at,
                    msg,
                    conv,
                    author,
                    key,
                }),
                KeyOf::Unbound => {
                    answers[at] = Some(Err(Status::permission_denied(format!(
                        "nobody ever claimed {author}"
                    ))))
                }
                KeyOf::Unsure => {
                    tracing::debug!(%author, "cannot learn the author's key now; message left for a later sync");
                    answers[at] = Some(Err(Status::unavailable(
                        "the author's key is not known now",
                    )));
                }
            }
        }
        passed
    }

    /// Stage 2, before storing: those of `passed` that carry their keys'
    /// signatures, checked as one batch.
    async fn signed(&self, passed: Vec<Item>, answers: &mut [Option<Answer>]) -> Vec<Item> {
        if passed.is_empty() {
            return passed;
        }
        let (passed, good) = verify(passed).await;
        passed
            .into_iter()
            .zip(good)
            .filter_map(|(item, good)| {
                if good {
                    return Some(item);
                }
                let msg = &item.msg;
                tracing::warn!(author = %msg.author, key = %item.key, conversation = %msg.conversation, seq = msg.seq, "refused a message whose signature does not check");
                answers[item.at] = Some(Err(Status::invalid_argument(
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
        passed: Vec<Item>,
        answers: &mut [Option<Answer>],
    ) -> Vec<Item> {
        // Each (room, author)'s membership is asked once per batch.
        let mut rights: HashMap<(String, String), Result<(), Status>> = HashMap::new();
        let mut admitted = Vec::with_capacity(passed.len());
        for item in passed {
            let (msg, author) = (&item.msg, &item.author);
            let right = match &item.conv {
                // Anyone can sign a creation event: only the owner's is taken.
                Conversation::Room(room) if !self.admits_creation(msg) => {
                    Err(Status::permission_denied(format!(
                        "{author} does not own {room}: its creation event is refused"
                    )))
                }
                // A nick change is believed only from the key the old
                // nick is known here by (see `Keys::renamed`).
                Conversation::Room(_) if msg.kind == Kind::Nick as i32 => {
                    self.admits_rename(policy, &item, &mut rights).await
                }
                Conversation::Room(_) if policy.membership == Membership::Ever => Ok(()),
                Conversation::Room(room) if policy.membership == Membership::Kept => {
                    if self.rooms.contains(room.as_str()) {
                        Ok(())
                    } else {
                        Err(Status::failed_precondition(format!(
                            "not a member of {room}"
                        )))
                    }
                }
                Conversation::Room(room) => self.room_right(&mut rights, room, author).await,
                Conversation::Private(..) => {
                    let conv = &item.conv;
                    if !conv.is_party(&self.me()) || !conv.is_party(author) {
                        Err(Status::permission_denied(
                            "not a party to that private conversation",
                        ))
                    } else {
                        if policy.author == Author::Caller {
                            // A new partner may share no room: follow its
                            // presence.
                            self.session.follow(author);
                        }
                        Ok(())
                    }
                }
            };
            match right {
                Ok(()) => admitted.push(item),
                Err(status) => answers[item.at] = Some(Err(status)),
            }
        }
        admitted
    }

    /// Whether a nick-change event (author: the new nick; body: the old
    /// one) may be taken: the old nick known here for another key than
    /// the one that signed it is a forgery, refused for good; known for
    /// the same key, the new nick is learnt for it; never met, the event
    /// is the author's word alone, taken and learnt from no further. Its
    /// author must have the right to write in the room as for any line.
    async fn admits_rename(
        &self,
        policy: Policy,
        item: &Item,
        rights: &mut HashMap<(String, String), Result<(), Status>>,
    ) -> Result<(), Status> {
        let (msg, author) = (&item.msg, &item.author);
        match self
            .peers
            .keys()
            .renamed(&msg.body, author.as_str(), &item.key)
        {
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(old = %msg.body, new = %author, key = %item.key, cause = %err, "refused a nick change");
                return Err(Status::permission_denied(format!(
                    "{author} claims to have been {}, whose key is another: {err}",
                    msg.body
                )));
            }
        }
        let Conversation::Room(room) = &item.conv else {
            return Err(Status::invalid_argument("a nick change belongs to a room"));
        };
        match policy.membership {
            Membership::Ever => Ok(()),
            Membership::Kept if self.rooms.contains(room.as_str()) => Ok(()),
            Membership::Kept => Err(Status::failed_precondition(format!(
                "not a member of {room}"
            ))),
            Membership::Now => self.room_right(rights, room, author).await,
        }
    }

    /// Whether `m` may be taken as far as ownership goes: a room's creation
    /// event only from the room's owner as the router reported it (anyone
    /// can sign one, dated as they like); every other message passes, and
    /// so does a creation while the owner is not known here (the store's
    /// rule alone then keeps a room to one creation event).
    fn admits_creation(&self, m: &ChatMessage) -> bool {
        if m.kind != crate::proto::Kind::Created as i32 {
            return true;
        }
        match self.session.world().owner(&m.conversation) {
            Some(owner) if !owner.eq_ignore_ascii_case(&m.author) => {
                tracing::warn!(
                    author = %m.author,
                    conversation = %m.conversation,
                    %owner,
                    "refused a creation event by someone the router does not name the room's owner"
                );
                false
            }
            _ => true,
        }
    }

    /// Stages 4 and 5: `admitted` stored in one store job (marked
    /// unchecked when `deferred`, their checks queued), each answered.
    async fn store(
        &self,
        source: Source,
        caller: &PublicKey,
        deferred: bool,
        admitted: Vec<Item>,
        answers: &mut [Option<Answer>],
    ) {
        if admitted.is_empty() {
            return;
        }
        let batch = admitted.iter().map(|a| a.msg.clone()).collect();
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
                        .push(*caller, new.map(|(item, _)| item.msg.clone()));
                }
                for (item, inserted) in admitted.into_iter().zip(inserted) {
                    answers[item.at] = Some(self.stored(item.msg, &item.conv, inserted));
                }
            }
            Err(err) => {
                let status = Status::from(err);
                for item in admitted {
                    answers[item.at] = Some(Err(status.clone()));
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
    /// [`Intake::check_room`], asked once per (room, author) of a batch.
    async fn room_right(
        &self,
        rights: &mut HashMap<(String, String), Result<(), Status>>,
        room: &Room,
        author: &Nick,
    ) -> Result<(), Status> {
        let at = (room.key(), author.key());
        if let Some(right) = rights.get(&at) {
            return right.clone();
        }
        let right = self.check_room(room, author).await;
        rights.insert(at, right.clone());
        right
    }

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
                // Full: repairs are already waiting, and anti-entropy
                // covers what they miss.
                let _ = self.gaps.try_send((msg.clone(), sender));
            }
        }
        let stored = inserted.new;
        if inserted.new {
            self.events.message(msg, inserted.late);
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

/// `items` and, in order, whether each carries its key's signature. A few
/// are checked here (a thread hop costs more); more, a pull's page or a
/// mailbox's, are spread over the blocking pool, one share per core, so
/// they neither hold up the runtime's threads nor leave a core idle.
async fn verify(items: Vec<Item>) -> (Vec<Item>, Vec<bool>) {
    fn check(part: &[Item]) -> Vec<bool> {
        let keyed: Vec<(PublicKey, &ChatMessage)> =
            part.iter().map(|item| (item.key, &item.msg)).collect();
        verify_messages(&keyed)
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if items.len() < VERIFY_IN_PLACE || cores == 1 {
        let good = check(&items);
        return (items, good);
    }
    let share = items.len().div_ceil(cores);
    let mut rest = items;
    let mut parts = Vec::with_capacity(cores);
    while !rest.is_empty() {
        let tail = rest.split_off(share.min(rest.len()));
        parts.push(std::mem::replace(&mut rest, tail));
    }
    let checks = parts.into_iter().map(|part| {
        tokio::task::spawn_blocking(move || {
            let good = check(&part);
            (part, good)
        })
    });
    let (mut items, mut good) = (Vec::new(), Vec::new());
    for done in join_all(checks).await {
        match done {
            Ok((part, ok)) => {
                items.extend(part);
                good.extend(ok);
            }
            // Only a panic in the check itself, or a runtime shutting
            // down: those messages are left out, and their sender (or a
            // later sync) brings them again.
            Err(err) => tracing::warn!(cause = %err, "a signature check did not finish"),
        }
    }
    (items, good)
}

#[async_trait::async_trait]
impl crate::sync::Admission for Intake {
    async fn page(
        &self,
        from: &str,
        conversation: &str,
        msgs: Vec<ChatMessage>,
    ) -> (Vec<ChatMessage>, usize) {
        self.pulled(from, conversation, msgs).await
    }
}
