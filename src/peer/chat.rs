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

use std::collections::VecDeque;
use std::pin::Pin;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Request, Response, Status, Streaming};

use super::intake::{Intake, Source};
use super::limits::{PullLimits, StreamPermit};
use super::session::Session;
use crate::identity::PublicKey;
use crate::names::{Conversation, Nick};
use crate::net::Peers;
use crate::proto::chat_server::Chat;
use crate::proto::*;
use crate::store::{PullCursor, Store, StoreError};
use crate::sync::digest;

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
    /// Takes what others hand over (`Deliver`, links).
    pub(super) intake: Intake,
    pub(super) store: Store,
    pub(super) session: Session,
    pub(super) peers: Peers,
    /// Caps on the `PullHistory` streams open at once.
    pub(super) pulls: PullLimits,
    pub(super) stop: CancellationToken,
    pub(super) tasks: TaskTracker,
}

impl ChatService {
    fn me(&self) -> Nick {
        self.session.nick()
    }

    /// Refuses a caller with no right to `conv`: a private conversation is
    /// read only by its other party, a room only by its members.
    async fn check_access(&self, conv: &Conversation, caller: &PublicKey) -> Result<(), Status> {
        match conv {
            Conversation::Private(a, b) => {
                if !conv.is_party(&self.me()) {
                    return Err(Status::permission_denied(
                        "not a party to that private conversation",
                    ));
                }
                let other = if *a == self.me().key() { b } else { a };
                self.intake.is_key_of(other, caller).await
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
                        .keys()
                        .believe(&m.nick, caller)
                        .map_err(|e| Status::permission_denied(e.to_string())),
                    None => Err(Status::permission_denied(format!(
                        "the calling key is not a member of {room}"
                    ))),
                }
            }
        }
    }
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
        let answer = self
            .intake
            .take(Source::Link, &caller, vec![msg])
            .await
            .pop();
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
                svc.intake.metrics.link_batch(batch.messages.len());
                let results = svc
                    .intake
                    .take(Source::Link, &caller, batch.messages)
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
        // What arrived before this question is checked first, so that the
        // answer counts it (nothing unchecked is ever counted).
        self.intake.checks.settle().await;
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
        // As for a version: what arrived before the pull is checked first.
        self.intake.checks.settle().await;
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
