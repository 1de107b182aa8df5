//! Bad input over the network: oversized frames, deliveries from authors the
//! peer does not know, expired tokens, and bytes that are not gRPC at all.
//! Each is refused with a clear status (or the connection is dropped), nothing
//! is stored, and the servers go on serving.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{chat_client_as, login_as, TestPeer, TestRouter};
use parley::identity::Identity;
use parley::proto::chat_client::ChatClient;
use parley::proto::router_client::RouterClient;
use parley::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::Code;

const TTL: Duration = Duration::from_secs(10);

/// Well over both servers' request limits (router 64 KiB, peer 256 KiB).
const OVERSIZED: usize = 300 * 1024;

/// Logs `nick` in at `address` as `id`; returns the session token.
async fn login(c: &mut RouterClient<Channel>, id: &Identity, nick: &str, address: &str) -> String {
    login_as(c, id, nick, address).await.unwrap().token
}

/// A chat client of `peer`, over a link presenting `id`.
fn chat_client(peer: &TestPeer, id: &Identity) -> ChatClient<Channel> {
    chat_client_as(&peer.peer.listen_addr().to_string(), id)
}

/// A message of `author`, signed by `id` (the key `author` is bound to).
fn message(id: &Identity, conv: &str, author: &str, seq: u64, body: String) -> ChatMessage {
    let mut msg = ChatMessage {
        conversation: conv.into(),
        author: author.into(),
        incarnation: 0x5eed,
        seq,
        lamport: seq,
        sent_at_ms: 0,
        body,
        signature: Vec::new(),
        kind: 0,
    };
    id.sign_message(&mut msg);
    msg
}

/// The gRPC codes tonic gives a request over the decoding limit.
fn too_big(code: Code) -> bool {
    matches!(code, Code::OutOfRange | Code::ResourceExhausted)
}

#[tokio::test]
async fn oversized_frames_are_refused_and_change_nothing() {
    let router = TestRouter::start(TTL).await;
    let mut c = router.client().await;

    // Router: a login and a join far over its 64 KiB request limit.
    let err = c
        .user_login(LoginRequest {
            nick: "mallory".into(),
            address: "127.0.0.1:7001".into(),
            signature: vec![7; OVERSIZED],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(too_big(err.code()), "{err:?}");
    assert!(!err.message().is_empty(), "{err:?}");
    let token = login(&mut c, &Identity::generate(), "carol", "127.0.0.1:7002").await;
    let err = c
        .join_room(JoinRoomRequest {
            token: token.clone(),
            room: format!("#{}", "r".repeat(OVERSIZED)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(too_big(err.code()), "{err:?}");
    // Nothing changed: only carol is online, no room exists, and the same
    // connection still serves.
    let users = c
        .list_users(ListUsersRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let nicks: Vec<_> = users.users.iter().map(|u| u.nick.as_str()).collect();
    assert_eq!(nicks, ["carol"]);
    let rooms = c
        .list_rooms(ListRoomsRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rooms.rooms.is_empty(), "{rooms:?}");

    // Peer: a Deliver over its 256 KiB request limit, from a real member
    // (alice, logged in and joined at the router with her own key; nothing
    // is expected to call her address).
    let alice_id = Identity::generate();
    let alice = login(&mut c, &alice_id, "alice", "127.0.0.1:9").await;
    let bob = TestPeer::start(&router, "bob").await;
    c.join_room(JoinRoomRequest {
        token: alice.clone(),
        room: "#big".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    bob.join("#big").await;
    let mut chat = chat_client(&bob, &alice_id);
    let err = chat
        .deliver(DeliverRequest {
            message: Some(message(
                &alice_id,
                "#big",
                "alice",
                1,
                "x".repeat(OVERSIZED),
            )),
        })
        .await
        .unwrap_err();
    assert!(too_big(err.code()), "{err:?}");
    // Under the frame limit but over the body limit: refused by the rules.
    let err = chat
        .deliver(DeliverRequest {
            message: Some(message(&alice_id, "#big", "alice", 1, "x".repeat(100_000))),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("too long"), "{err:?}");
    assert!(bob.peer.store().conversations().await.unwrap().is_empty());

    // The same connection still takes a good message.
    let ok = chat
        .deliver(DeliverRequest {
            message: Some(message(&alice_id, "#big", "alice", 1, "small".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.stored);
    let held = bob.history("#big").await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].body, "small");

    c.user_logout(LogoutRequest {
        token: alice,
        ..Default::default()
    })
    .await
    .unwrap();
    bob.stop().await;
    router.stop().await;
}

/// A TCP proxy that holds everything the server sends back for `delay`
/// (bytes keep their order): a peer behind it sees its router's `Watch`
/// events late, while its calls still get through.
struct SlowReplies {
    addr: std::net::SocketAddr,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowReplies {
    async fn start(target: std::net::SocketAddr) -> SlowReplies {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let delay = delay.clone();
                let (mut in_r, mut in_w) = inbound.into_split();
                let (mut out_r, mut out_w) = outbound.into_split();
                conns.spawn(async move {
                    let _ = tokio::io::copy(&mut in_r, &mut out_w).await;
                });
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                conns.spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut last = tokio::time::Instant::now();
                    while let Ok(n @ 1..) = out_r.read(&mut buf).await {
                        let d = Duration::from_millis(delay.load(Ordering::SeqCst));
                        last = last.max(tokio::time::Instant::now() + d);
                        if tx.send((last, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                });
                conns.spawn(async move {
                    while let Some((due, bytes)) = rx.recv().await {
                        tokio::time::sleep_until(due).await;
                        if in_w.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SlowReplies {
            addr,
            delay_ms,
            task,
        }
    }

    fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for SlowReplies {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection task.
        self.task.abort();
    }
}

#[tokio::test]
async fn an_author_is_accepted_only_if_the_router_shows_them_in_the_room() {
    let router = TestRouter::start(TTL).await;
    // Bob reaches the router through a proxy that will hold the router's
    // replies and events back.
    let proxy = SlowReplies::start(router.addr).await;
    let tmp = tempfile::tempdir().unwrap();
    let bob = TestPeer::start_in(proxy.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    bob.join("#room").await;
    let mut raw = router.client().await;
    // The raw members need an address; nothing is expected to call it.
    let parked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let parked = parked.local_addr().unwrap().to_string();

    // Members who joined at the router a moment ago: bob cannot have seen
    // their Watch event yet (it is held back 500 ms), so he must look the
    // room up again at the router before refusing.
    proxy.set_delay(Duration::from_millis(500));
    for i in 1..=3u64 {
        let nick = format!("carol{i}");
        let id = Identity::generate();
        let token = login(&mut raw, &id, &nick, &parked).await;
        raw.join_room(JoinRoomRequest {
            token,
            room: "#room".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let resp = chat_client(&bob, &id)
            .deliver(DeliverRequest {
                message: Some(message(
                    &id,
                    "#room",
                    &nick,
                    1,
                    format!("hello from {nick}"),
                )),
            })
            .await
            .unwrap_or_else(|e| panic!("{nick} joined but was refused: {e:?}"))
            .into_inner();
        assert!(resp.stored);
    }

    // Online but never joined: refused, whatever the router is asked.
    let dave = Identity::generate();
    login(&mut raw, &dave, "dave", &parked).await;
    // Joined another room only.
    let erin_id = Identity::generate();
    let erin = login(&mut raw, &erin_id, "erin", &parked).await;
    raw.join_room(JoinRoomRequest {
        token: erin,
        room: "#elsewhere".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Never logged in: no key is bound to the nick at all.
    let nobody = Identity::generate();
    for (author, id) in [("dave", &dave), ("erin", &erin_id), ("nobody", &nobody)] {
        let err = chat_client(&bob, id)
            .deliver(DeliverRequest {
                message: Some(message(id, "#room", author, 1, "let me in".into())),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{author}: {err:?}");
        assert!(err.message().contains(author), "{err:?}");
    }

    // Only the members' messages are held.
    let held = bob.history("#room").await;
    let authors: Vec<_> = held.iter().map(|m| m.author.as_str()).collect();
    assert_eq!(held.len(), 3, "{authors:?}");
    assert!(
        authors.iter().all(|a| a.starts_with("carol")),
        "{authors:?}"
    );
    assert_eq!(
        bob.peer.store().conversations().await.unwrap(),
        ["#room".to_string()]
    );

    bob.stop().await;
    drop(proxy);
    router.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_unauthenticated() {
    let router = TestRouter::start(Duration::from_secs(2)).await;
    let mut c = router.client().await;
    let token = login(&mut c, &Identity::generate(), "alice", "127.0.0.1:7001").await;
    c.heartbeat(HeartbeatRequest {
        token: token.clone(),
    })
    .await
    .unwrap();
    // Listing users takes a live session: an observer's, kept alive.
    let observer = login(&mut c, &Identity::generate(), "observer", "127.0.0.1:7002").await;
    // Wait for the lease to end: alice leaves the list of users.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        c.heartbeat(HeartbeatRequest {
            token: observer.clone(),
        })
        .await
        .unwrap();
        let users = c
            .list_users(ListUsersRequest {
                token: observer.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let nicks: Vec<_> = users.users.iter().map(|u| u.nick.as_str()).collect();
        if nicks == ["observer"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease of 2 s still alive after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = c
        .heartbeat(HeartbeatRequest {
            token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!err.message().is_empty());
    let err = c
        .join_room(JoinRoomRequest {
            token: token.clone(),
            room: "#late".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = c
        .watch(WatchRequest {
            token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Nothing was created by the refused join.
    let rooms = c
        .list_rooms(ListRoomsRequest { token: observer })
        .await
        .unwrap()
        .into_inner();
    assert!(rooms.rooms.is_empty(), "{rooms:?}");
    router.stop().await;
}

/// Bytes that are not a gRPC conversation.
fn garbage_payloads() -> Vec<(&'static str, Vec<u8>)> {
    // Deterministic noise (an LCG), so a failure is reproducible.
    let mut x: u32 = 0x1234_5678;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    let mut bad_frame = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // A frame header claiming 16 MiB of an unknown type, then noise.
    bad_frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xee, 0x00, 0x00, 0x00, 0x00, 0x01]);
    bad_frame.extend_from_slice(&noise[..4096]);
    vec![
        ("noise", noise),
        ("http1", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()),
        ("http1-post", b"POST /parley.v1.Chat/Deliver HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\0\0\0\0\0".to_vec()),
        ("preface+bad-frame", bad_frame),
    ]
}

/// Writes `bytes` to `addr` and reads until the server closes the
/// connection; the server must close it (or reset it) within 10 s.
async fn send_and_expect_close(addr: std::net::SocketAddr, what: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may close before reading everything: a failed write is a
    // refusal too.
    let _ = s.write_all(bytes).await;
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{addr}: {what} left the connection open");
}

#[tokio::test]
async fn garbage_on_the_wire_leaves_router_and_peer_serving() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    // Links opened (by a first call: channels connect lazily) before the
    // garbage arrives.
    let mut rc = router.client().await;
    let probe_id = Identity::generate();
    login(&mut rc, &probe_id, "probe", "127.0.0.1:9").await;
    let mut pc = chat_client(&alice, &Identity::generate());
    pc.ping(PingRequest {}).await.unwrap();

    for addr in [router.addr, alice.peer.listen_addr()] {
        // A half-open connection that stops mid-preface, held open the whole
        // time: it must not block anyone else.
        let mut stuck = TcpStream::connect(addr).await.unwrap();
        stuck.write_all(b"PRI * HTTP/2.0\r\n\r\nSM").await.unwrap();
        // And one that sends a single byte.
        let mut stuck2 = TcpStream::connect(addr).await.unwrap();
        stuck2.write_all(b"P").await.unwrap();

        for (what, bytes) in garbage_payloads() {
            send_and_expect_close(addr, what, &bytes).await;
        }
        // A truncated preface, then the client goes away.
        {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }

        // Fresh gRPC connections are served while the stuck ones are open.
        let mut fresh_router = router.client().await;
        let token = login_as(&mut fresh_router, &probe_id, "probe", "127.0.0.1:9")
            .await
            .expect("router serves a new connection")
            .token;
        fresh_router
            .list_rooms(ListRoomsRequest { token })
            .await
            .expect("router serves a new connection");
        chat_client(&alice, &Identity::generate())
            .ping(PingRequest {})
            .await
            .expect("peer serves a new connection");
        drop((stuck, stuck2));
    }

    // The connections opened before the garbage still work, and the peer is
    // still registered and chatting.
    let token = login(&mut rc, &probe_id, "probe", "127.0.0.1:9").await;
    rc.list_users(ListUsersRequest { token }).await.unwrap();
    pc.ping(PingRequest {}).await.unwrap();
    let mut bob = TestPeer::start(&router, "bob").await;
    alice.join("#after").await;
    bob.join("#after").await;
    alice.say("#after", "still here").await;
    let (m, _) = bob.next_message().await;
    assert_eq!(m.body, "still here");

    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}
