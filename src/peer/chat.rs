//! The `Chat` service every peer serves: `Deliver` stores one message,
//! `GetVersion` and `PullHistory` let others sync from this peer.
//!
//! Every call is judged by the caller's key, which its TLS link proved
//! (never by a name in the request): a `Deliver` must come from the key the
//! author's nick is bound to and carry that key's signature; a private
//! conversation is read only by its other party, a room only by members.
//!
//! A `PullHistory` stream makes each page as its reader reads (HTTP/2 flow
//! control paces it), pages are at most `PAGE_BYTES`, and the streams open
//! at once are capped per caller key and in total (`limits`): whatever one
//! key does, what this peer holds for its pulls stays small.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Request, Response, Status, Streaming};

use super::away::Away;
use super::events::{Events, PeerEvent};
use super::limits::{PullLimits, StreamPermit};
use super::rooms::Rooms;
use super::session::Session;
use crate::identity::{verify_messages, PublicKey};
use crate::message::valid_message;
use crate::names::{Conversation, Nick, Room};
use crate::net::Peers;
use crate::proto::chat_server::Chat;
use crate::proto::*;
use crate::store::{Inserted, PullCursor, Store, StoreError};
use crate::sync::{digest, KeyOf, Syncer};

/// Most messages a history page carries, whatever the requester asks.
const MAX_PAGE: usize = 1000;
/// Bytes of messages per history page (a page holds at least one message,
/// whatever its size). An open stream holds one store read, sized to about
/// a page, besides the transport's buffers (HTTP/2 stops asking for pages
/// while its reader does not read), so this bounds what a reader that stops
/// reading costs; at 1 KiB a message it is still a page of a few hundred.
const PAGE_BYTES: usize = 256 * 1024;
/// What a message is reckoned to take before one has been read: sizes the
/// first store read of a pull (PAGE_BYTES / this messages).
const FIRST_GUESS_BYTES: usize = 1024;
/// Most messages one link batch may carry (proto `LinkBatch`).
pub const MAX_LINK_BATCH: usize = 1024;
/// Answers of a link waiting for its caller to read them.
const LINK_ACKS: usize = 4;
/// From this many signatures on, a batch is checked on the blocking pool.
const VERIFY_IN_PLACE: usize = 32;

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Status {
        // The cause (with the file's path) is for this peer's log, not for
        // whoever called.
        tracing::error!(cause = %err, "history store failed");
        match err {
            StoreError::Full { .. } => Status::resource_exhausted("peer's disk is full"),
            _ => Status::unavailable("peer's history store is unavailable"),
        }
    }
}

/// What the chat service serves from: the store, the picture of the world
/// (through the session), the rooms the person wants, and where new
/// messages and gaps go. Not the peer itself. Cheap to clone: a link's
/// task holds its own.
#[derive(Clone)]
pub(super) struct ChatService {
    /// Off only in `bench`'s comparison (see `PeerConfig::unsigned`).
    pub(super) check_signatures: bool,
    /// Checks, off the path, the signatures of what links hand over.
    pub(super) checks: super::checks::Checks,
    pub(super) store: Store,
    pub(super) session: Session,
    pub(super) rooms: Rooms,
    pub(super) sync: Syncer,
    pub(super) peers: Peers,
    pub(super) events: Events,
    /// Told to whoever writes privately while the person is away.
    pub(super) away: Away,
    /// Caps on the `PullHistory` streams open at once.
    pub(super) pulls: PullLimits,
    /// Counts what comes in (messages, batches, deferred checks, commits).
    pub(super) metrics: crate::metrics::PeerMetrics,
    pub(super) stop: CancellationToken,
    pub(super) tasks: TaskTracker,
}

impl ChatService {
    fn me(&self) -> &Nick {
        self.session.nick()
    }

    /// Whether `caller` holds the key `nick` is bound to: the key this
    /// peer knows for it, or (first meeting) the router's binding. A known
    /// nick calling with the key the router now binds it to is a changed
    /// key: refused, and the person told (see `Peers::trusted`).
    async fn is_key_of(&self, nick: &str, caller: &PublicKey) -> Result<(), Status> {
        let refuse = || {
            tracing::warn!(nick, caller = %caller, "refused a caller that does not hold the nick's key");
            Status::permission_denied(format!("the calling key is not {nick}'s"))
        };
        match self.sync.key_of(nick).await {
            KeyOf::Key(k) if k == *caller => Ok(()),
            KeyOf::Key(_) => {
                // Either an impostor or a real change of key; only the
                // second is worth telling the person about.
                if let Ok(Some(bound)) = self.session.bound_key(nick).await {
                    if bound == *caller {
                        let _ = self.peers.trusted(nick, caller);
                        return Err(Status::permission_denied(format!(
                            "{nick}'s key changed; refused until the person here trusts it"
                        )));
                    }
                }
                Err(refuse())
            }
            KeyOf::Unbound => Err(refuse()),
            KeyOf::Unsure => Err(Status::unavailable(format!(
                "cannot learn {nick}'s key now; try later"
            ))),
        }
    }

    /// Refuses a caller with no right to `conv`: a private conversation is
    /// read only by its other party, a room only by its members.
    async fn check_access(&self, conv: &Conversation, caller: &PublicKey) -> Result<(), Status> {
        match conv {
            Conversation::Private(a, b) => {
                if !conv.is_party(self.me()) {
                    return Err(Status::permission_denied(
                        "not a party to that private conversation",
                    ));
                }
                let other = if *a == self.me().key() { b } else { a };
                self.is_key_of(other, caller).await
            }
            Conversation::Room(room) => {
                let world = self.session.world();
                if !world.in_room(room.as_str()) {
                    return Err(Status::failed_precondition(format!(
                        "not a member of {room}"
                    )));
                }
                let holder = |w: &super::world::World| {
                    w.members(room.as_str())
                        .unwrap_or_default()
                        .into_iter()
                        .find(|m| m.key == caller.as_bytes())
                };
                let member = match holder(world) {
                    Some(m) => Some(m),
                    None => {
                        // A Watch event can trail a join: ask afresh.
                        if let Err(err) = self.session.refresh_room(room.as_str()).await {
                            tracing::debug!(cause = %err, %room, "cannot refresh members");
                            return Err(Status::unavailable("cannot check membership now"));
                        }
                        holder(world)
                    }
                };
                match member {
                    Some(m) => self
                        .peers
                        .trusted(&m.nick, caller)
                        .map_err(|e| Status::permission_denied(e.to_string())),
                    None => Err(Status::permission_denied(format!(
                        "the calling key is not a member of {room}"
                    ))),
                }
            }
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
        match self
            .session
            .confirm_member(room.as_str(), author.as_str())
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Status::permission_denied(format!(
                "{author} is not a member of {room}"
            ))),
            Err(err) => {
                tracing::debug!(cause = %err, %room, %author, "cannot check membership");
                Err(Status::unavailable(format!(
                    "cannot check that {author} is in {room} now; try later"
                )))
            }
        }
    }
    /// Takes `msgs`, the caller's own messages, as `Deliver` takes one
    /// ([`ChatService::take_from`] from a link).
    /// each is checked (well formed, its author's key is the caller's, a
    /// member or party may write it), their signatures are checked as one
    /// batch, and those that pass are stored in one store job. One answer
    /// per message, in order; a refusal is that message's alone.
    async fn take(
        &self,
        caller: &PublicKey,
        msgs: Vec<ChatMessage>,
    ) -> Vec<Result<DeliverResponse, Status>> {
        self.take_from(Source::Link, caller, msgs).await
    }

    /// [`ChatService::take`] of messages that came by way of `source`:
    /// `caller` is the key that handed them over (a link's, or the key
    /// that deposited an envelope, which the seal binds).
    pub(super) async fn take_from(
        &self,
        source: Source,
        caller: &PublicKey,
        msgs: Vec<ChatMessage>,
    ) -> Vec<Result<DeliverResponse, Status>> {
        let mut answers: Vec<Option<Result<DeliverResponse, Status>>> = vec![None; msgs.len()];
        // Within a batch each author's key and each (room, author)'s
        // membership is asked once: a link's batch is one author's.
        let mut keys: HashMap<String, Result<(), Status>> = HashMap::new();
        let mut passed = Vec::with_capacity(msgs.len());
        for (i, msg) in msgs.into_iter().enumerate() {
            match self.admit(caller, &msg, &mut keys).await {
                Ok((conv, author)) => passed.push((i, msg, conv, author)),
                Err(status) => answers[i] = Some(Err(status)),
            }
        }
        // First-hand (a link: the caller is the author, the TLS handshake
        // proved its key) is stored unchecked and checked off the path
        // before it is ever served; second-hand is checked before it is
        // stored.
        let deferred = self.check_signatures && source == Source::Link;
        if self.check_signatures && !deferred && !passed.is_empty() {
            let good = if passed.len() < VERIFY_IN_PLACE {
                // In place, the usual case (a message alone): no copies.
                let items: Vec<(PublicKey, &ChatMessage)> =
                    passed.iter().map(|p| (*caller, &p.1)).collect();
                verify_messages(&items)
            } else {
                verify_off_runtime(*caller, passed.iter().map(|p| p.1.clone()).collect()).await
            };
            passed = passed
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
                .collect();
        }
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
                // Mail was written while its author sat in the room and this
                // peer rested there; the author may be gone now. It is taken
                // for a room this peer keeps, written by the author's key.
                Conversation::Room(room) if source == Source::Mailbox => {
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
        if !admitted.is_empty() {
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
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(Status::internal("no answer"))))
            .collect()
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

/// How messages reached this peer: the admission differs only in who must
/// be in a room now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// From its author, over a link (or `Deliver`).
    Link,
    /// From the router's mailbox, deposited by its author while this peer
    /// was away.
    Mailbox,
}

impl Source {
    /// The metrics' label.
    fn label(self) -> &'static str {
        match self {
            Source::Link => "link",
            Source::Mailbox => "mailbox",
        }
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

/// A link's answer for one message, as `Deliver` would have given it.
fn link_result(answer: Result<DeliverResponse, Status>) -> LinkResult {
    match answer {
        Ok(resp) => LinkResult {
            code: Code::Ok as i32,
            error: String::new(),
            stored: resp.stored,
            away: resp.away,
        },
        Err(status) => LinkResult {
            code: status.code() as i32,
            error: status.message().to_owned(),
            stored: false,
            away: String::new(),
        },
    }
}

/// The key that called, as its link proved it.
fn caller<T>(req: &Request<T>) -> Result<PublicKey, Status> {
    crate::tls::caller(req).ok_or_else(|| {
        Status::unauthenticated("no caller key: parley links are TLS with a certificate")
    })
}

/// One `PullHistory` stream's state: where its reading of the store is,
/// and what it read but has not handed over yet (at most one store read).
struct Pages {
    store: Store,
    conversation: String,
    have: Vec<VectorEntry>,
    /// Most messages per page, as the caller asked (within `MAX_PAGE`).
    page: usize,
    /// Where the next store read starts; `None` once the store gave all.
    cursor: Option<PullCursor>,
    pending: VecDeque<ChatMessage>,
    /// The largest message met so far (encoded bytes): sizes store reads
    /// so that one read is about a page. Only messages larger than any met
    /// before can make a read bigger (the first read guesses 1 KiB each).
    largest: Option<usize>,
    /// This stream's place under the caps, given back when it is dropped.
    _permit: StreamPermit,
}

impl Pages {
    /// The next page, read from the store if nothing read is left; `None`
    /// at the end (or after an error, which is the last item).
    async fn next_page(&mut self) -> Option<Result<HistoryPage, Status>> {
        loop {
            if !self.pending.is_empty() {
                return Some(Ok(self.take_page()));
            }
            let cursor = self.cursor.take()?;
            let guess = self.largest.unwrap_or(FIRST_GUESS_BYTES).max(1);
            let want = (PAGE_BYTES / guess).clamp(1, self.page);
            let read = self
                .store
                .missing_page(&self.conversation, self.have.clone(), None, cursor, want)
                .await;
            match read {
                Ok((batch, next)) => {
                    self.cursor = next;
                    let largest = batch.iter().map(prost::Message::encoded_len).max();
                    self.largest = self.largest.max(largest);
                    self.pending.extend(batch);
                }
                Err(err) => return Some(Err(Status::from(err))),
            }
        }
    }

    /// Up to `page` messages of what was read, cut at `PAGE_BYTES` so no
    /// page (and no frame) is large; at least one message.
    fn take_page(&mut self) -> HistoryPage {
        let mut messages = Vec::new();
        let mut bytes = 0;
        while let Some(m) = self.pending.front() {
            let len = prost::Message::encoded_len(m);
            if !messages.is_empty() && (bytes + len > PAGE_BYTES || messages.len() >= self.page) {
                break;
            }
            bytes += len;
            messages.extend(self.pending.pop_front());
        }
        HistoryPage { messages }
    }
}

type PageStream = Pin<Box<dyn Stream<Item = Result<HistoryPage, Status>> + Send>>;
type AckStream = Pin<Box<dyn Stream<Item = Result<LinkAck, Status>> + Send>>;

#[tonic::async_trait]
impl Chat for ChatService {
    async fn deliver(
        &self,
        req: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req
            .into_inner()
            .message
            .ok_or_else(|| Status::invalid_argument("missing message"))?;
        // A batch of one: the same checks and the same store job as a link's.
        let answer = self.take(&caller, vec![msg]).await.pop();
        answer
            .unwrap_or_else(|| Err(Status::internal("no answer")))
            .map(Response::new)
    }

    type LinkStream = AckStream;

    async fn link(
        &self,
        req: Request<Streaming<LinkBatch>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let caller = caller(&req)?;
        let mut batches = req.into_inner();
        let (tx, rx) = mpsc::channel(LINK_ACKS);
        let svc = self.clone();
        // One batch at a time, in order: the next waits in the transport
        // (and grows at the sender) while this one is checked and stored.
        self.tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = svc.stop.cancelled() => return,
                    b = batches.message() => b,
                };
                let batch = match next {
                    Ok(Some(batch)) => batch,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, caller = %caller, "link ended");
                        return;
                    }
                };
                if batch.messages.len() > MAX_LINK_BATCH {
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "a link batch holds at most {MAX_LINK_BATCH} messages"
                        ))))
                        .await;
                    return;
                }
                svc.metrics.link_batch(batch.messages.len());
                let results = svc
                    .take(&caller, batch.messages)
                    .await
                    .into_iter()
                    .map(link_result)
                    .collect();
                if tx.send(Ok(LinkAck { results })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_version(
        &self,
        req: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let conv = Conversation::parse_key(&req.conversation)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_access(&conv, &caller).await?;
        let v = self.store.version(&req.conversation).await?;
        if !req.digest.is_empty() && req.digest == digest(&v.vector) {
            return Ok(Response::new(GetVersionResponse {
                version: v.count,
                vector: Vec::new(),
                same: true,
            }));
        }
        Ok(Response::new(GetVersionResponse {
            version: v.count,
            vector: v.vector,
            same: false,
        }))
    }

    type PullHistoryStream = PageStream;

    async fn pull_history(
        &self,
        req: Request<PullHistoryRequest>,
    ) -> Result<Response<Self::PullHistoryStream>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let conv = Conversation::parse_key(&req.conversation)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_access(&conv, &caller).await?;
        // Only a caller with a right to read takes a place under the caps.
        let permit = self.pulls.acquire(&caller)?;
        let pages = Pages {
            store: self.store.clone(),
            page: (req.page_size as usize).clamp(1, MAX_PAGE),
            conversation: req.conversation,
            have: req.have,
            cursor: Some(PullCursor::default()),
            pending: VecDeque::new(),
            largest: None,
            _permit: permit,
        };
        // A page is read from the store only when the transport asks for
        // the next one, which it does only as the caller reads (HTTP/2 flow
        // control): a stream nobody reads holds a page, not the history.
        let stream = futures::stream::unfold(pages, |mut pages| async move {
            pages.next_page().await.map(|page| (page, pages))
        })
        .take_until(self.stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {}))
    }
}
