//! Peers nobody can dial, on loopback: a peer that advertises an address
//! where nothing answers is what a firewall or NAT makes of it, as far as
//! the router's dial-back and every sender can tell. (tests/reach.rs does
//! the same behind a real firewall, in network namespaces.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{login_as, peer_with, TestPeer, TestRouter};
use parley::identity::Identity;
use parley::proto::router_client::RouterClient;
use parley::proto::{incoming, ReachRequest, ReserveRequest};
use parley::registry::MemoryOptions;
use parley::router::{RelayLimits, RouterLimits};
use parley::tls::Expect;
use tonic::transport::Channel;
use tonic::Code;

/// A loopback address where nothing listens (bound, then released).
async fn nowhere() -> SocketAddr {
    let l = parley::net::bind_loopback().await.unwrap();
    l.local_addr().unwrap()
}

/// A peer advertising an address nobody answers at.
async fn walled(router: &TestRouter, nick: &str, dir: &tempfile::TempDir) -> TestPeer {
    let dead = nowhere().await.to_string();
    let p = peer_with(router.addr, nick, dir.path().join(nick), move |c| {
        c.advertise = Some(dead)
    })
    .await;
    assert!(!p.peer.reachable(), "{nick} should be found unreachable");
    p
}

async fn open(router: &TestRouter, nick: &str, dir: &tempfile::TempDir) -> TestPeer {
    let p = peer_with(router.addr, nick, dir.path().join(nick), |_| {}).await;
    assert!(p.peer.reachable(), "{nick} should be found reachable");
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_nobody_can_dial_is_reached_by_a_reversal() {
    let router = TestRouter::start(Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let alice = walled(&router, "alice", &dir).await;
    let bob = open(&router, "bob", &dir).await;
    // First contact from the side that can be dialed.
    let sent = bob.tell("alice", "hello behind your wall").await;
    assert!(sent.pending.is_empty(), "{sent:?}");
    assert_eq!(
        alice.wait_for("@alice+bob", 1).await[0].body,
        "hello behind your wall"
    );
    alice.tell("bob", "hello back").await;
    assert_eq!(bob.wait_for("@alice+bob", 2).await.len(), 2);
    let counts = router.relay_counts();
    assert!(counts.reversals >= 1, "{counts:?}");
    assert_eq!(
        counts.circuits_opened, 0,
        "a reversal needs no circuit: {counts:?}"
    );
    // A room, both ways.
    alice.join("#wall").await;
    bob.join("#wall").await;
    bob.say("#wall", "from outside").await;
    alice.say("#wall", "from inside").await;
    assert_eq!(alice.wait_for("#wall", 2).await.len(), 2);
    assert_eq!(bob.wait_for("#wall", 2).await.len(), 2);
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_peers_nobody_can_dial_talk_through_a_circuit() {
    let router = TestRouter::start(Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let alice = walled(&router, "alice", &dir).await;
    let carol = walled(&router, "carol", &dir).await;
    let sent = alice.tell("carol", "through the router").await;
    assert!(sent.pending.is_empty(), "{sent:?}");
    carol.tell("alice", "and back").await;
    assert_eq!(carol.wait_for("@alice+carol", 2).await.len(), 2);
    assert_eq!(alice.wait_for("@alice+carol", 2).await.len(), 2);
    alice.join("#walls").await;
    carol.join("#walls").await;
    alice.say("#walls", "one").await;
    carol.say("#walls", "two").await;
    assert_eq!(alice.wait_for("#walls", 2).await.len(), 2);
    assert_eq!(carol.wait_for("#walls", 2).await.len(), 2);
    let counts = router.relay_counts();
    assert!(counts.circuits_opened >= 2, "one each way: {counts:?}");
    assert!(counts.bytes > 0, "{counts:?}");
    assert_eq!(counts.reservations, 2, "{counts:?}");
    alice.stop().await;
    carol.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_circuit_past_its_byte_limit_is_closed_and_nothing_is_lost() {
    let router = TestRouter::start_with(
        parley::net::bind_loopback().await.unwrap(),
        MemoryOptions::new(Duration::from_secs(10)),
        RouterLimits {
            relay: RelayLimits {
                circuit_bytes: parley::router::MIN_CIRCUIT_BYTES,
                ..RelayLimits::default()
            },
            ..RouterLimits::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let alice = walled(&router, "alice", &dir).await;
    let carol = walled(&router, "carol", &dir).await;
    let n = 150;
    for i in 0..n {
        // Each line ~9 KB: 1.35 MB in all, past one circuit's 1 MiB.
        alice
            .tell("carol", &format!("{i:03} {}", "x".repeat(8996)))
            .await;
    }
    // Each line arrives as an event: wait for them, not for a poll.
    let mut carol = carol;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for _ in 0..n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        carol
            .next_event(left, |ev| match ev {
                parley::peer::PeerEvent::Message { msg, .. } if msg.author == "alice" => Some(()),
                _ => None,
            })
            .await;
    }
    let got = carol.history("@alice+carol").await;
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "every line once, in order"
    );
    let counts = router.relay_counts();
    assert!(counts.circuits_limited >= 1, "{counts:?}");
    assert!(counts.circuits_opened >= 2, "{counts:?}");
    alice.stop().await;
    carol.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dial_back_needs_the_peers_own_key() {
    // alice advertises bob's address: something answers there, but with
    // bob's key, so alice is not reachable there.
    let router = TestRouter::start(Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let bob = open(&router, "bob", &dir).await;
    let bobs = bob.peer.listen_addr().to_string();
    let alice = peer_with(router.addr, "alice", dir.path().join("alice"), move |c| {
        c.advertise = Some(bobs)
    })
    .await;
    assert!(!alice.peer.reachable());
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_router_dials_back_only_the_ip_the_login_comes_from() {
    // bob serves, with his own key, on 127.0.0.2, and logs in from
    // 127.0.0.1: the router does not dial an IP other than the caller's
    // (nobody can aim it at a third party), so bob counts as relayed
    // although his address would answer.
    let router = TestRouter::start(Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let bob = common::peer_on(router.addr, "bob", dir.path().join("bob"), listener).await;
    assert!(bob.peer.advertised().starts_with("127.0.0.2:"));
    assert!(!bob.peer.reachable());
    bob.stop().await;
    router.stop().await;
}

/// A router client presenting `id` on its links.
fn client_as(router: &TestRouter, id: &Identity) -> RouterClient<Channel> {
    let tls = parley::tls::Tls::new(id).unwrap();
    parley::router_client::client(&tls, &router.addr.to_string(), Expect::first_seen()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reservations_reversals_and_circuits_refuse_what_is_not_theirs() {
    let router = TestRouter::start_with(
        parley::net::bind_loopback().await.unwrap(),
        MemoryOptions::new(Duration::from_secs(10)),
        RouterLimits {
            relay: RelayLimits {
                reservations: 1,
                ..RelayLimits::default()
            },
            ..RouterLimits::default()
        },
    )
    .await;
    let (alice, eve) = (Identity::generate(), Identity::generate());
    let mut a = client_as(&router, &alice);
    let mut e = client_as(&router, &eve);
    let a_token = login_as(&mut a, &alice, "alice", "127.0.0.1:9")
        .await
        .unwrap()
        .token;
    let e_token = login_as(&mut e, &eve, "eve", "127.0.0.1:9")
        .await
        .unwrap()
        .token;

    // A reservation is held by the session's own key only.
    let err = e
        .reserve(ReserveRequest {
            token: a_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut held = a
        .reserve(ReserveRequest { token: a_token })
        .await
        .unwrap()
        .into_inner();
    assert!(
        held.message().await.unwrap().is_some(),
        "the reservation is confirmed"
    );
    // One reservation is this router's limit.
    let err = e
        .reserve(ReserveRequest { token: e_token })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(router.relay_counts().reservations_refused, 1);

    let ask = |nick: &str, address: &str, nonce: usize| ReachRequest {
        target: alice.public().to_vec(),
        nick: nick.into(),
        address: address.into(),
        nonce: vec![7; nonce],
    };
    // Asks to be dialed: only with a nick bound to the asker's key, only
    // at the asker's own IP, with a proper nonce.
    let err = e.reach(ask("alice", "127.0.0.1:9", 16)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = e.reach(ask("eve", "192.0.2.1:9", 16)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = e.reach(ask("eve", "127.0.0.1:9", 3)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut to_eve = ask("alice", "127.0.0.1:9", 16);
    to_eve.target = eve.public().to_vec();
    let err = a.reach(to_eve).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "eve holds no reservation: {err:?}"
    );
    e.reach(ask("eve", "127.0.0.1:9", 16)).await.unwrap();
    // alice is told to dial eve back.
    let told = held.message().await.unwrap().unwrap();
    assert!(
        matches!(told.kind, Some(incoming::Kind::Dial(ref d)) if d.key == eve.public().to_vec()),
        "{told:?}"
    );

    // Circuits: to a reserved key only, asked for by a nick bound to the
    // asker's key.
    let tls = parley::tls::Tls::new(&eve).unwrap();
    let at = router.addr.to_string();
    let err = parley::relay::connect(&tls, &at, alice.public().as_bytes(), "alice")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("not bound"), "{err}");
    let err = parley::relay::connect(&tls, &at, eve.public().as_bytes(), "eve")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("no reservation"), "{err}");
    // Taking a circuit nobody offered this key.
    let err = parley::relay::accept(&tls, &at, 12345).await.err().unwrap();
    assert!(err.to_string().contains("no such circuit"), "{err}");
    // A reserved peer that never takes its circuit: the opener is told.
    let err = parley::relay::connect(&tls, &at, alice.public().as_bytes(), "eve")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("did not take"), "{err}");
    assert!(router.relay_counts().circuits_refused >= 3);
    drop(held);
    router.stop().await;
}
