//! Issue 23, attack 2: a member whose `PullHistory` stalls (or serves
//! garbage) cannot hold a newcomer's join for the pull deadline. Eve runs a
//! hostile chat server under her own key and session, claims a history far
//! ahead of everyone's, and never serves it; the joiner abandons her within
//! seconds, takes the honest member's history, and leaves her out of its
//! later syncs for a while.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use parley::identity::Identity;
use parley::names::Room;
use parley::proto::chat_server::{Chat, ChatServer};
use parley::proto::*;
use tonic::{Request, Response, Status, Streaming};

/// Well below the 60 s pull deadline a stalled pull would hold a join for.
const JOIN_WITHIN: Duration = Duration::from_secs(20);
/// Messages of the honest history.
const HISTORY: usize = 30;

/// How eve's `PullHistory` misbehaves.
const NEVER_ANSWERS: u8 = 0;
const NEVER_SENDS: u8 = 1;
const GARBAGE: u8 = 2;

/// Eve's hostile chat service: a huge version, nothing (or garbage) served.
#[derive(Clone)]
struct Hostile {
    mode: Arc<AtomicU8>,
    versions: Arc<AtomicU64>,
    pulls: Arc<AtomicU64>,
}

type Pages = std::pin::Pin<Box<dyn futures::Stream<Item = Result<HistoryPage, Status>> + Send>>;
type Acks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<LinkAck, Status>> + Send>>;

#[tonic::async_trait]
impl Chat for Hostile {
    async fn deliver(
        &self,
        _req: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        Ok(Response::new(DeliverResponse::default()))
    }

    type LinkStream = Acks;

    async fn link(
        &self,
        _req: Request<Streaming<LinkBatch>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        Err(Status::unimplemented("no links here"))
    }

    async fn get_version(
        &self,
        req: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        self.versions.fetch_add(1, Ordering::SeqCst);
        // Ahead of everyone: a million messages of an author nobody holds.
        let _ = req;
        Ok(Response::new(GetVersionResponse {
            version: 1_000_000,
            vector: vec![VectorEntry {
                author: "eve".into(),
                incarnation: 7,
                seq: 1_000_000,
            }],
            same: false,
        }))
    }

    type PullHistoryStream = Pages;

    async fn pull_history(
        &self,
        req: Request<PullHistoryRequest>,
    ) -> Result<Response<Self::PullHistoryStream>, Status> {
        self.pulls.fetch_add(1, Ordering::SeqCst);
        let conv = req.into_inner().conversation;
        match self.mode.load(Ordering::SeqCst) {
            NEVER_ANSWERS => futures::future::pending().await,
            NEVER_SENDS => Ok(Response::new(Box::pin(futures::stream::pending()))),
            _ => {
                // Messages in the honest member's name with signatures
                // that check against nobody's key, and one from another
                // conversation; then silence.
                let mut page = Vec::new();
                for seq in 1..=50 {
                    page.push(ChatMessage {
                        conversation: conv.clone(),
                        author: "alice".into(),
                        incarnation: 99,
                        seq,
                        lamport: seq,
                        sent_at_ms: parley::message::now_ms(),
                        body: format!("forged {seq}"),
                        signature: vec![7; 64],
                        kind: 0,
                    });
                }
                page.push(ChatMessage {
                    conversation: "#elsewhere".into(),
                    ..page[0].clone()
                });
                let first = futures::stream::iter([Ok(HistoryPage { messages: page })]);
                Ok(Response::new(Box::pin(futures::StreamExt::chain(
                    first,
                    futures::stream::pending(),
                ))))
            }
        }
    }

    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {}))
    }
}

/// Eve's server on 127.0.0.1:0, its TLS presenting her key; stops when the
/// returned sender is dropped or fired.
async fn serve_hostile(
    eve: &Identity,
    hostile: Hostile,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = parley::net::bind_loopback().await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = parley::tls::Tls::new(eve).unwrap().incoming(listener);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(ChatServer::new(hostile))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    (addr, stop)
}

/// Joins `room` as `p`, within [`JOIN_WITHIN`].
async fn join_in_time(p: &TestPeer, room: &str) {
    let room = Room::parse(room).unwrap();
    tokio::time::timeout(JOIN_WITHIN, p.peer.join(&room))
        .await
        .unwrap_or_else(|_| panic!("{}'s join was held {JOIN_WITHIN:?}", p.peer.nick()))
        .unwrap();
}

#[tokio::test]
async fn a_stalling_or_lying_member_does_not_hold_a_join() {
    // Sessions outlive the test: eve sends no heartbeats.
    let router = TestRouter::start(Duration::from_secs(120)).await;
    let alice = TestPeer::start(&router, "alice").await;
    alice.join("#den").await;
    for i in 0..HISTORY {
        alice.say("#den", &format!("history {i}")).await;
    }

    // Eve: her own key, her own hostile server, her own session, a member.
    let eve = Identity::generate();
    let hostile = Hostile {
        mode: Arc::new(AtomicU8::new(NEVER_ANSWERS)),
        versions: Arc::new(AtomicU64::new(0)),
        pulls: Arc::new(AtomicU64::new(0)),
    };
    let (eve_addr, stop_eve) = serve_hostile(&eve, hostile.clone()).await;
    let mut c = router.client().await;
    let login = login_as(&mut c, &eve, "eve", &eve_addr).await.unwrap();
    c.join_room(JoinRoomRequest {
        token: login.token.clone(),
        room: "#den".into(),
        creation: None,
        creator_key: Vec::new(),
    })
    .await
    .unwrap();

    // Her pull never answers the call: bob still joins in time, with the
    // honest history.
    let bob = TestPeer::start(&router, "bob").await;
    join_in_time(&bob, "#den").await;
    assert_eq!(bob.history("#den").await.len(), HISTORY);
    let tried = hostile.pulls.load(Ordering::SeqCst);
    assert!(tried >= 1, "bob's join never asked eve");

    // A second sync of bob's (he leaves and joins again) asks eve her
    // version, and leaves her out of its pulls: she is skipped for now.
    let den = Room::parse("#den").unwrap();
    bob.peer.leave(&den, "").await.unwrap();
    let (asked, pulls) = (
        hostile.versions.load(Ordering::SeqCst),
        bob.peer.sync_stats().pulls,
    );
    join_in_time(&bob, "#den").await;
    assert!(
        hostile.versions.load(Ordering::SeqCst) > asked,
        "the second join asked eve's version"
    );
    assert_eq!(
        hostile.pulls.load(Ordering::SeqCst),
        tried,
        "a sync after the stall pulled from eve again"
    );
    assert_eq!(bob.peer.sync_stats().pulls, pulls, "nothing was pulled");

    // Her pull answers and then sends nothing: carol joins in time.
    hostile.mode.store(NEVER_SENDS, Ordering::SeqCst);
    let carol = TestPeer::start(&router, "carol").await;
    join_in_time(&carol, "#den").await;
    assert_eq!(carol.history("#den").await.len(), HISTORY);

    // Her pull serves a page of forgeries, then nothing: dave joins in
    // time, and holds none of them.
    hostile.mode.store(GARBAGE, Ordering::SeqCst);
    let dave = TestPeer::start(&router, "dave").await;
    join_in_time(&dave, "#den").await;
    let held = dave.history("#den").await;
    assert_eq!(held.len(), HISTORY);
    assert!(held.iter().all(|m| !m.body.starts_with("forged")));

    let _ = stop_eve.send(());
    for p in [alice, bob, carol, dave] {
        p.stop().await;
    }
    router.stop().await;
}
