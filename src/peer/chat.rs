//! The `Chat` service every peer serves: `Deliver` stores one message,
//! `GetVersion` and `PullHistory` let others sync from this peer.
//!
//! Every call is judged by the caller's key, which its TLS link proved
//! (never by a name in the request): a `Deliver` must come from the key the
//! author's nick is bound to and carry that key's signature; a private
//! conversation is read only by its other party, a room only by members.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use super::away::Away;
use super::events::{Events, PeerEvent};
use super::rooms::Rooms;
use super::session::Session;
use crate::identity::PublicKey;
use crate::message::valid_message;
use crate::names::{Conversation, Nick, Room};
use crate::net::Peers;
use crate::proto::chat_server::Chat;
use crate::proto::*;
use crate::store::{PullCursor, Store, StoreError};
use crate::sync::{digest, KeyOf, Syncer};

/// Most messages a history page carries, whatever the requester asks.
const MAX_PAGE: usize = 1000;
/// Bytes of bodies per page: keeps every frame far below the size limit.
const PAGE_BYTES: usize = 1024 * 1024;

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
/// messages and gaps go. Not the peer itself.
pub(super) struct ChatService {
    /// Off only in `bench`'s comparison (see `PeerConfig::unsigned`).
    pub(super) check_signatures: bool,
    pub(super) store: Store,
    pub(super) session: Session,
    pub(super) rooms: Rooms,
    pub(super) sync: Syncer,
    pub(super) peers: Peers,
    pub(super) events: Events,
    /// Told to whoever writes privately while the person is away.
    pub(super) away: Away,
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
}

/// The key that called, as its link proved it.
fn caller<T>(req: &Request<T>) -> Result<PublicKey, Status> {
    crate::tls::caller(req).ok_or_else(|| {
        Status::unauthenticated("no caller key: parley links are TLS with a certificate")
    })
}

type PageStream = Pin<Box<dyn Stream<Item = Result<HistoryPage, Status>> + Send>>;

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
        let conv = valid_message(&msg).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let me = self.me();
        let author =
            Nick::parse(&msg.author).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if author.key() == me.key() {
            return Err(Status::invalid_argument(
                "a message from this peer's own nick",
            ));
        }
        // Deliver carries the caller's own messages only: whatever name it
        // writes, the key decides, and the signature must be that key's.
        self.is_key_of(author.as_str(), &caller).await?;
        if self.check_signatures && !caller.verify_message(&msg) {
            tracing::warn!(author = %msg.author, caller = %caller, conversation = %msg.conversation, seq = msg.seq, "refused a message whose signature does not check");
            return Err(Status::invalid_argument(
                "the message's signature does not check against its author's key",
            ));
        }
        match &conv {
            Conversation::Room(room) => self.check_room(room, &author).await?,
            Conversation::Private(..) => {
                if !conv.is_party(me) || !conv.is_party(&author) {
                    return Err(Status::permission_denied(
                        "not a party to that private conversation",
                    ));
                }
                // A new partner may share no room: follow its presence.
                self.session.follow(&author);
            }
        }
        let inserted = self.store.insert(msg.clone()).await?;
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
        Ok(Response::new(DeliverResponse {
            stored: inserted.new,
            away: away.unwrap_or_default(),
        }))
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
        let page = (req.page_size as usize).clamp(1, MAX_PAGE);
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel(4);
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            let mut cursor = PullCursor::default();
            loop {
                let batch = tokio::select! {
                    _ = stop.cancelled() => return,
                    b = store.missing_page(&req.conversation, req.have.clone(), None, std::mem::take(&mut cursor), page) => b,
                };
                let (batch, next) = match batch {
                    Ok(b) => b,
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                };
                let last = next.is_none();
                cursor = next.unwrap_or_default();
                // Split by size so no frame nears the transport's limit.
                let mut messages = Vec::new();
                let mut bytes = 0;
                for m in batch {
                    bytes += m.body.len() + 64;
                    messages.push(m);
                    if bytes >= PAGE_BYTES {
                        let full = HistoryPage {
                            messages: std::mem::take(&mut messages),
                        };
                        if tx.send(Ok(full)).await.is_err() {
                            return;
                        }
                        bytes = 0;
                    }
                }
                if !messages.is_empty() && tx.send(Ok(HistoryPage { messages })).await.is_err() {
                    return;
                }
                if last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {}))
    }
}
