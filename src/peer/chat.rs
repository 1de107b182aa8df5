//! The `Chat` service every peer serves: `Deliver` stores one message,
//! `GetVersion` and `PullHistory` let others sync from this peer.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{valid_message, Peer, PeerEvent};
use crate::names::{Conversation, Nick};
use crate::proto::chat_server::Chat;
use crate::proto::*;
use crate::store::{OrderKey, StoreError};

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

pub(super) struct ChatService {
    peer: Peer,
}

impl ChatService {
    pub(super) fn new(peer: Peer) -> ChatService {
        ChatService { peer }
    }

    /// Refuses conversations this peer has no part in: a private one must
    /// name this peer and the requester; `requester` may be empty only for
    /// rooms.
    fn check_access(&self, conv: &Conversation, requester: &str) -> Result<(), Status> {
        if let Conversation::Private(..) = conv {
            let requester = Nick::parse(requester)
                .map_err(|e| Status::invalid_argument(format!("requester: {e}")))?;
            if !conv.is_party(&self.peer.inner.nick) || !conv.is_party(&requester) {
                return Err(Status::permission_denied(
                    "not a party to that private conversation",
                ));
            }
        }
        Ok(())
    }
}

type PageStream = Pin<Box<dyn Stream<Item = Result<HistoryPage, Status>> + Send>>;

#[tonic::async_trait]
impl Chat for ChatService {
    async fn deliver(
        &self,
        req: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let msg = req
            .into_inner()
            .message
            .ok_or_else(|| Status::invalid_argument("missing message"))?;
        let conv = valid_message(&msg).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let peer = &self.peer;
        let me = &peer.inner.nick;
        let author =
            Nick::parse(&msg.author).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if author.key() == me.key() {
            return Err(Status::invalid_argument(
                "a message from this peer's own nick",
            ));
        }
        match &conv {
            Conversation::Room(room) => {
                if !peer.inner.world.in_room(room.as_str()) {
                    return Err(Status::failed_precondition(format!(
                        "not a member of {room}"
                    )));
                }
                if !peer.inner.world.is_member(room.as_str(), author.as_str())
                    && !peer.confirm_member(room.as_str(), author.as_str()).await
                {
                    return Err(Status::permission_denied(format!(
                        "{author} is not a member of {room}"
                    )));
                }
            }
            Conversation::Private(..) => {
                if !conv.is_party(me) || !conv.is_party(&author) {
                    return Err(Status::permission_denied(
                        "not a party to that private conversation",
                    ));
                }
            }
        }
        let inserted = peer.inner.store.insert(msg.clone()).await?;
        if inserted.gap {
            peer.repair_gap(&msg);
        }
        if inserted.new {
            peer.emit(PeerEvent::Message {
                msg,
                late: inserted.late,
            });
        }
        Ok(Response::new(DeliverResponse {
            stored: inserted.new,
        }))
    }

    async fn get_version(
        &self,
        req: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        let req = req.into_inner();
        let conv = Conversation::parse_key(&req.conversation)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_access(&conv, &req.requester)?;
        let v = self.peer.inner.store.version(&req.conversation).await?;
        Ok(Response::new(GetVersionResponse {
            version: v.count,
            vector: v.vector,
        }))
    }

    type PullHistoryStream = PageStream;

    async fn pull_history(
        &self,
        req: Request<PullHistoryRequest>,
    ) -> Result<Response<Self::PullHistoryStream>, Status> {
        let req = req.into_inner();
        let conv = Conversation::parse_key(&req.conversation)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_access(&conv, &req.requester)?;
        let page = (req.page_size as usize).clamp(1, MAX_PAGE);
        let store = self.peer.inner.store.clone();
        let (tx, rx) = mpsc::channel(4);
        let stop = self.peer.inner.stop.clone();
        self.peer.inner.tasks.spawn(async move {
            let mut after: Option<OrderKey> = None;
            loop {
                let batch = tokio::select! {
                    _ = stop.cancelled() => return,
                    b = store.missing(&req.conversation, req.have.clone(), after.clone(), page) => b,
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                };
                let last = batch.len() < page;
                after = batch.last().map(OrderKey::of);
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
