//! Several routers over one registry in etcd: real `router` processes
//! (each with its own key) over a real etcd server, peers in this process.
//! Every test needs the `etcd` binary: `#[ignore = "needs etcd"]`.

mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::{peer_with, Proc, TestPeer};
use parley::identity::Identity;
use parley::peer::PeerEvent;

/// The routers' lease: etcd's smallest is 2 s.
const TTL_SECS: u64 = 2;
const TTL: Duration = Duration::from_secs(TTL_SECS);

/// A router process over `etcd`, with a key of its own in `dir`.
async fn router(etcd: &Etcd, dir: &std::path::Path, name: &str) -> (Proc, String) {
    let endpoints = etcd.endpoints().join(",");
    Proc::router_with(
        "127.0.0.1:0",
        TTL_SECS,
        &dir.join(format!("{name}.key")),
        &["--etcd", &endpoints],
    )
    .await
}

/// A peer talking to `routers` in that order.
async fn peer(routers: &[&str], nick: &str, root: &std::path::Path) -> TestPeer {
    let first: std::net::SocketAddr = routers[0].parse().unwrap();
    let routers: Vec<String> = routers.iter().map(|r| r.to_string()).collect();
    peer_with(first, nick, root.join(nick), move |c| {
        c.routers = routers;
        c.sync_interval = Duration::from_secs(1);
    })
    .await
}

fn bodies(p: &[parley::proto::ChatMessage]) -> Vec<String> {
    p.iter().map(|m| m.body.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn peers_on_two_routers_chat_privately_and_in_rooms() {
    let etcd = Etcd::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (ra, a) = router(&etcd, tmp.path(), "a").await;
    let (rb, b) = router(&etcd, tmp.path(), "b").await;
    let alice = peer(&[&a], "alice", tmp.path()).await;
    let mut bob = peer(&[&b], "bob", tmp.path()).await;
    let carol = peer(&[&b], "carol", tmp.path()).await;

    // Alice, on router A, finds bob, who logged in at router B.
    let r = alice.tell("bob", "hello across routers").await;
    assert_eq!(r.delivered, ["bob"], "{r:?}");
    let (msg, _) = bob.next_message().await;
    assert_eq!(msg.body, "hello across routers");
    let r = bob.tell("alice", "hi back").await;
    assert_eq!(r.delivered, ["alice"]);
    assert_eq!(
        bodies(&alice.wait_for("@alice+bob", 2).await),
        ["hello across routers", "hi back"]
    );

    // One room, members on both routers.
    let made = alice.join("#mixed").await;
    assert!(made.created);
    let joined = bob.join("#mixed").await;
    assert!(!joined.created);
    assert_eq!(joined.members.len(), 2, "{joined:?}");
    carol.join("#mixed").await;
    let r = carol.say("#mixed", "from B to A and B").await;
    let mut got = r.delivered.clone();
    got.sort();
    assert_eq!(got, ["alice", "bob"], "{r:?}");
    let r = alice.say("#mixed", "from A").await;
    assert_eq!(r.delivered.len(), 2, "{r:?}");
    for p in [&alice, &bob, &carol] {
        assert_eq!(
            bodies(&p.wait_for("#mixed", 2).await),
            ["from B to A and B", "from A"]
        );
    }
    for p in [alice, bob, carol] {
        p.stop().await;
    }
    ra.terminate().await;
    rb.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_killed_routers_peers_fail_over_and_keep_chatting() {
    let etcd = Etcd::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (ra, a) = router(&etcd, tmp.path(), "a").await;
    let (rb, b) = router(&etcd, tmp.path(), "b").await;
    // Alice and carol start on A, bob on B; each knows both.
    let mut alice = peer(&[&a, &b], "alice", tmp.path()).await;
    let mut bob = peer(&[&b, &a], "bob", tmp.path()).await;
    let carol = peer(&[&a, &b], "carol", tmp.path()).await;
    alice.join("#ops").await;
    bob.join("#ops").await;
    carol.join("#ops").await;
    assert_eq!(alice.say("#ops", "before").await.delivered.len(), 2);

    ra.kill9().await;
    let killed = tokio::time::Instant::now();

    // Messages go on at once: they never touch the router, and a member
    // that could not be reached is owed from the outbox.
    let mut sent = vec!["before".to_string()];
    for i in 0..10 {
        let body = format!("during {i}");
        alice.say("#ops", &body).await;
        sent.push(body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Within two leases alice's session lives on at B: bob, who watches
    // through B, never sees her go offline, and a new private partner
    // can find her through B.
    tokio::time::sleep((TTL * 2).saturating_sub(killed.elapsed())).await;
    let dave = peer(&[&b], "dave", tmp.path()).await;
    let r = dave.tell("alice", "are you there?").await;
    assert_eq!(r.delivered, ["alice"], "{r:?}");
    let r = dave.tell("carol", "and you?").await;
    assert_eq!(r.delivered, ["carol"], "{r:?}");
    let r = carol.say("#ops", "after").await;
    let mut to = r.delivered.clone();
    to.sort();
    assert_eq!(to, ["alice", "bob"], "{r:?}");
    sent.push("after".into());
    // No message lost, in one order everywhere.
    for p in [&alice, &bob, &carol] {
        assert_eq!(bodies(&p.wait_for("#ops", sent.len()).await), sent);
    }
    // Nobody left the room or fell offline on the way.
    while let Ok(ev) = bob.events.try_recv() {
        if let PeerEvent::Left { room, reason } = &ev {
            panic!("bob left {room}: {reason}");
        }
    }
    while let Ok(ev) = alice.events.try_recv() {
        if let PeerEvent::Left { room, reason } = &ev {
            panic!("alice left {room}: {reason}");
        }
    }
    // Alice pinned each router's own key.
    let known = std::fs::read_to_string(alice.dir.join("known_keys")).unwrap();
    assert!(known.contains(&format!("router@{a}")), "{known}");
    assert!(known.contains(&format!("router@{b}")), "{known}");
    for p in [alice, bob, carol, dave] {
        p.stop().await;
    }
    rb.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn nick_bindings_and_room_owners_outlive_every_router() {
    let etcd = Etcd::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (ra, a) = router(&etcd, tmp.path(), "a").await;
    let (rb, b) = router(&etcd, tmp.path(), "b").await;
    let alice = peer(&[&a], "alice", tmp.path()).await;
    let bob = peer(&[&b], "bob", tmp.path()).await;
    assert!(alice.join("#keep").await.created);
    bob.join("#keep").await;
    alice.stop().await;
    bob.stop().await;
    ra.terminate().await;
    rb.terminate().await;
    // Every session ends while no router runs.
    etcd.until_no_sessions(TTL * 3).await;

    let (rc, c) = router(&etcd, tmp.path(), "c").await;
    // Another key cannot take alice's nick, although she is offline and
    // this router never met her.
    let mallory = Identity::generate();
    let mut client = common::router_client(&c);
    let err = common::login_as(&mut client, &mallory, "alice", "127.0.0.1:9")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    // Carol, with no history of the room, rejoins it first: alice still
    // owns it.
    let carol = peer(&[&c], "carol", tmp.path()).await;
    let joined = carol.join("#keep").await;
    assert!(!joined.created, "{joined:?}");
    let rooms = carol.peer.rooms().await.unwrap();
    let keep = rooms
        .iter()
        .find(|r| r.name == "#keep")
        .expect("#keep listed");
    assert_eq!(keep.owner, "alice");
    let refused = carol
        .peer
        .delete_room(&parley::names::Room::parse("#keep").unwrap())
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // Alice, back with her key, takes her nick at once.
    let alice = TestPeer::start_in(c.parse().unwrap(), "alice", tmp.path().join("alice"))
        .await
        .unwrap();
    carol.stop().await;
    alice.stop().await;
    rc.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn peers_notice_nothing_when_the_etcd_leader_dies() {
    let mut etcd = Etcd::cluster(3).await;
    let tmp = tempfile::tempdir().unwrap();
    let (ra, a) = router(&etcd, tmp.path(), "a").await;
    let (rb, b) = router(&etcd, tmp.path(), "b").await;
    let mut alice = peer(&[&a, &b], "alice", tmp.path()).await;
    let mut bob = peer(&[&b, &a], "bob", tmp.path()).await;
    alice.join("#calm").await;
    bob.join("#calm").await;
    let room = parley::names::Room::parse("#calm").unwrap();

    let killed = etcd.kill_leader().await;
    // Two leases of chat and router calls: every message delivered, every
    // router call answered, through both routers.
    let mut sent = Vec::new();
    let until = tokio::time::Instant::now() + TTL * 2;
    let mut i = 0;
    while tokio::time::Instant::now() < until {
        let (from, to) = if i % 2 == 0 {
            (&alice, "bob")
        } else {
            (&bob, "alice")
        };
        let body = format!("calm {i}");
        let r = from.say("#calm", &body).await;
        assert_eq!(r.delivered, [to], "{r:?}");
        sent.push(body);
        let members = from.peer.who(&room).await;
        assert_eq!(members.as_ref().map(Vec::len).ok(), Some(2), "{members:?}");
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in [&alice, &bob] {
        assert_eq!(bodies(&p.wait_for("#calm", sent.len()).await), sent);
    }
    // Neither session was lost: no new login, nobody left the room.
    for p in [&mut alice, &mut bob] {
        while let Ok(ev) = p.events.try_recv() {
            match &ev {
                PeerEvent::Left { .. } => panic!("{}: {ev:?}", p.peer.nick()),
                PeerEvent::Notice(n) if n.contains("logged in") => {
                    panic!("{} (etcd member {killed} killed): {n}", p.peer.nick())
                }
                _ => {}
            }
        }
    }
    for p in [alice, bob] {
        p.stop().await;
    }
    ra.terminate().await;
    rb.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn mail_deposited_through_one_router_is_drained_through_another() {
    let etcd = Etcd::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (ra, a) = router(&etcd, tmp.path(), "a").await;
    let (rb, b) = router(&etcd, tmp.path(), "b").await;
    let mailbox = |e| match e {
        PeerEvent::Mailbox { delivered, expired } => Some((delivered, expired)),
        _ => None,
    };
    let mut bob = peer(&[&b], "bob", tmp.path()).await;
    assert_eq!(
        bob.next_event(Duration::from_secs(10), mailbox).await,
        (0, 0)
    );
    bob.stop().await;

    let alice = peer(&[&a], "alice", tmp.path()).await;
    for i in 0..3 {
        let r = alice.tell("bob", &format!("via A {i}")).await;
        assert_eq!(r.pending, ["bob"]);
    }
    let sent = alice.history("@alice+bob").await;
    alice.stop().await;
    let boxed = mail_keys(&etcd).await;
    assert_eq!(boxed.len(), 3, "three envelopes in etcd: {boxed:?}");
    // Router A is gone before bob comes back: the mail lives in etcd.
    ra.kill9().await;

    let mut bob = peer(&[&b], "bob", tmp.path()).await;
    assert_eq!(
        bob.next_event(Duration::from_secs(10), mailbox).await,
        (3, 0)
    );
    assert_eq!(
        common::ids(&bob.history("@alice+bob").await),
        common::ids(&sent)
    );
    assert!(
        mail_keys(&etcd).await.is_empty(),
        "drained envelopes are deleted"
    );
    bob.stop().await;
    rb.terminate().await;
}

/// The envelopes' keys in etcd (under the mail prefix, beside the
/// registry's).
async fn mail_keys(etcd: &Etcd) -> Vec<String> {
    etcd.keys_at(&format!("{}box/", parley::mailbox::MAIL_PREFIX))
        .await
}
