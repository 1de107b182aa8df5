//! Convergence: every online member ends with every message another member
//! holds, without anyone sending again — through a router that cannot
//! answer, a crash between commit and fan-out, an author gone for good, a
//! restart, and a long sync after a new login.

mod common;

use std::time::Duration;

use common::{
    login_as, peer_behind_proxy_with, peer_with, router_client, until_members, Proc, Proxy,
    TestPeer, TestRouter,
};
use parley::identity::Identity;
use parley::peer::PeerEvent;
use parley::proto::{FindRequest, HeartbeatRequest};
use parley::store::Store;

const TTL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_member_whose_router_cannot_answer_still_gets_the_message() {
    let router = TestRouter::start(TTL).await;
    // Bob reaches the router only through this proxy.
    let to_router = Proxy::start(router.addr).await;
    let tmp = tempfile::tempdir().unwrap();
    let alice = TestPeer::start(&router, "alice").await;
    let bob = peer_with(to_router.addr, "bob", tmp.path().join("bob"), |_| {}).await;
    let carol = TestPeer::start(&router, "carol").await;
    alice.join("#r").await;
    bob.join("#r").await;

    // Bob loses the router, then carol joins: bob never hears of her, and
    // cannot ask whether she is a member.
    to_router.cut();
    carol.join("#r").await;
    let sent = carol.say("#r", "hello from the newcomer").await;
    assert_eq!(sent.delivered, ["alice"], "{sent:?}");
    assert_eq!(sent.pending, ["bob"], "{sent:?}");
    // "Cannot tell now" is not a refusal: carol still owes it to bob. A
    // refusal would end the row in the background just after the send, so
    // this negative check gives that a bounded moment; no event marks it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let owed = carol.peer.store().outbox_for("bob", 10).await.unwrap();
    assert_eq!(owed.len(), 1, "carol forgot what she owes bob");

    to_router.heal();
    let held = bob.wait_for("#r", 1).await;
    assert_eq!(held[0].body, "hello from the newcomer");
    for p in [alice, bob, carol] {
        p.stop().await;
    }
    router.stop().await;
}

#[tokio::test]
async fn a_crash_between_commit_and_fan_out_leaves_the_message_owed() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let alice_dir = tmp.path().join("alice");
    let mut alice = Proc::peer(&addr, "alice", &alice_dir, &[]).await;
    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &[]).await;

    // Bob freezes: alice's Deliver hangs until its deadline, and alice is
    // killed while it does, after her commit.
    bob.signal("STOP");
    alice.send("/msg bob are you there").await;
    // Her commit is not visible from outside (the history is locked to
    // her); her Deliver waits up to 2 s, so 400 ms is inside the window.
    tokio::time::sleep(Duration::from_millis(400)).await;
    alice.kill9().await;

    let store = {
        let path = alice_dir.join("history.db");
        tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .unwrap()
            .unwrap()
    };
    let owed = store.outbox_for("bob", 10).await.unwrap();
    assert_eq!(owed.len(), 1, "the message is not owed to bob");
    assert_eq!(owed[0].body, "are you there");
    drop(store);

    // Alice comes back; bob thaws: he gets it without anyone sending again.
    bob.signal("CONT");
    let mut alice = Proc::peer(&addr, "alice", &alice_dir, &[]).await;
    let m = bob.event("message").await;
    assert_eq!(m["body"], "are you there");
    assert_eq!(m["from"], "alice");
    alice.send("/quit").await;
    alice.quit().await;
    bob.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn a_message_one_member_got_reaches_the_others_after_its_author_is_gone() {
    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let every = Duration::from_secs(1);
    let fast = |c: &mut parley::peer::PeerConfig| c.sync_interval = every;
    let alice = peer_with(router.addr, "alice", tmp.path().join("alice"), fast).await;
    let bob = peer_with(router.addr, "bob", tmp.path().join("bob"), fast).await;
    // Others reach carol only through a proxy, which is cut below.
    let (mut carol, to_carol) =
        peer_behind_proxy_with(&router, "carol", tmp.path().join("carol"), fast).await;
    for p in [&alice, &bob, &carol] {
        p.join("#r").await;
    }

    to_carol.cut();
    let sent = alice.say("#r", "only bob hears this").await;
    assert_eq!(sent.delivered, ["bob"], "{sent:?}");
    assert_eq!(sent.pending, ["carol"], "{sent:?}");
    // The author dies for good, its outbox with it.
    alice.peer.stop_now().await;
    to_carol.heal();

    // Within one sync interval (jittered up to 1.2x, plus the pull).
    let (pulled, _) = carol
        .next_event(every * 3, |ev| match ev {
            PeerEvent::Message { msg, late } => Some((msg, late)),
            _ => None,
        })
        .await;
    assert_eq!(pulled.body, "only bob hears this");
    assert_eq!(carol.history("#r").await[0].body, "only bob hears this");
    bob.stop().await;
    carol.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_peer_restarted_after_quit_is_back_in_its_rooms_with_what_it_missed() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let bob_dir = tmp.path().join("bob");
    let mut alice = Proc::peer(&addr, "alice", &tmp.path().join("alice"), &["--join", "#r"]).await;
    alice.event("joined").await;
    let mut bob = Proc::peer(&addr, "bob", &bob_dir, &["--join", "#r"]).await;
    bob.event("joined").await;
    bob.send("/quit").await;
    bob.quit().await;

    for i in 0..3 {
        alice.send(&format!("while bob was away {i}")).await;
        alice.event("sent").await;
    }
    // No --join: bob is back in #r because he was in it.
    let mut bob = Proc::peer(&addr, "bob", &bob_dir, &[]).await;
    let back = bob.event("back").await;
    assert_eq!(back["room"], "#r");
    assert_eq!(back["new"], 3);
    let held = bob.history("#r").await;
    assert_eq!(held.len(), 3, "{held:?}");
    until_members(&addr, "#r", 2, Duration::from_secs(5)).await;
    // And the room goes on live, in the room he is back in.
    alice.send("welcome back").await;
    let sent = alice.event("sent").await;
    assert_eq!(sent["delivered"], serde_json::json!(["bob"]));
    let m = bob.event("message").await;
    assert_eq!(m["body"], "welcome back");
    bob.send("thanks").await;
    let sent = bob.event("sent").await;
    assert_eq!(sent["conversation"], "#r");
    alice.quit().await;
    bob.quit().await;
    router.terminate().await;
}

/// A peer address that accepts connections and never answers: a frozen
/// member, as far as anyone calling it can tell.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = parley::net::bind_loopback().await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_long_sync_after_a_new_login_does_not_let_the_lease_lapse() {
    let lease = Duration::from_secs(2);
    let router = TestRouter::start(lease).await;
    let addr = router.addr;
    let tmp = tempfile::tempdir().unwrap();
    let rooms = ["#r1", "#r2", "#r3", "#r4"];
    let p = peer_with(addr, "p", tmp.path().join("p"), |_| {}).await;
    for r in rooms {
        p.join(r).await;
    }
    // Q sits in every room, but whoever calls it waits for nothing: each
    // of P's room syncs after its new login waits out a version query.
    let (hole, hole_task) = black_hole().await;
    let q = peer_with(addr, "q", tmp.path().join("q"), |c| {
        c.advertise = Some(hole.to_string())
    })
    .await;
    for r in rooms {
        q.join(r).await;
    }

    // The router restarts empty: both log in again and rejoin. It stays
    // down long enough for the watch loops to back off past its return, so
    // the heartbeat loops are the ones that find the session gone.
    router.stop().await;
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let router = TestRouter::start_on(listener, lease).await;
    until_members(&addr.to_string(), "#r4", 2, Duration::from_secs(10)).await;

    // P's syncs take ~1 s per room; its lease (2 s) must never lapse
    // meanwhile.
    // Looking p up takes a session of its own, kept alive by heartbeats.
    let mut client = router_client(&addr.to_string());
    let token = login_as(
        &mut client,
        &Identity::generate(),
        "observer",
        "127.0.0.1:9",
    )
    .await
    .unwrap()
    .token;
    let until = tokio::time::Instant::now() + 3 * lease;
    while tokio::time::Instant::now() < until {
        client
            .heartbeat(HeartbeatRequest {
                token: token.clone(),
            })
            .await
            .unwrap();
        let found = client
            .find(FindRequest {
                name: "p".into(),
                token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .found;
        assert!(found, "p's lease lapsed during its syncs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.stop().await;
    q.stop().await;
    hole_task.abort();
    router.stop().await;
}

#[tokio::test]
async fn a_restarted_in_process_peer_says_it_is_back() {
    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let alice = TestPeer::start(&router, "alice").await;
    let bob = peer_with(router.addr, "bob", tmp.path().join("bob"), |_| {}).await;
    alice.join("#r").await;
    bob.join("#r").await;
    bob.stop().await;
    alice.say("#r", "one").await;
    alice.say("#r", "two").await;
    let mut bob = peer_with(router.addr, "bob", tmp.path().join("bob"), |_| {}).await;
    let back = bob
        .next_event(Duration::from_secs(10), |ev| match ev {
            PeerEvent::Back { room, new } => Some((room, new)),
            _ => None,
        })
        .await;
    assert_eq!((back.0.as_str(), back.1), ("#r", 2));
    assert_eq!(bob.history("#r").await.len(), 2);
    assert_eq!(
        bob.peer
            .rooms_in()
            .iter()
            .map(|r| r.key())
            .collect::<Vec<_>>(),
        ["#r"]
    );
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}
