//! The peer survives: crashes, absences, router restarts, partitions, wiped
//! data directories. In-process router and peers on 127.0.0.1:0; every test
//! asserts the final histories message by message.

mod common;

use std::time::Duration;

use common::{ids, peer_behind_proxy, until_members, TestPeer, TestRouter};
use parley::message::now_ms;
use parley::names::Room;
use parley::peer::session::SessionError;
use parley::peer::{PeerError, PeerEvent};
use parley::proto::FindRequest;

const TTL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_killed_peer_restarts_reclaims_its_nick_and_catches_up() {
    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    let a = TestPeer::start_in(router.addr, "a", a_dir.clone())
        .await
        .unwrap();
    let b = TestPeer::start(&router, "b").await;
    a.join("#r").await;
    b.join("#r").await;
    for i in 0..5 {
        b.say("#r", &format!("before {i}")).await;
    }
    a.say("#r", "from a").await;
    a.wait_for("#r", 6).await;
    let incarnation = a.peer.incarnation();

    // Crash: no logout, the lease still runs.
    a.peer.stop_now().await;
    drop(a);
    for i in 0..5 {
        let r = b.say("#r", &format!("while down {i}")).await;
        assert_eq!(r.pending, ["a"], "a is down: {r:?}");
    }

    // Restarted on its data directory: the nick comes back at once.
    let a = TestPeer::start_in(router.addr, "a", a_dir).await.unwrap();
    assert_eq!(a.peer.incarnation(), incarnation, "same identity");
    let j = a.join("#r").await;
    assert_eq!(j.version, 12, "11 messages and the room's creation");
    assert_eq!(ids(&a.history("#r").await), ids(&b.history("#r").await));
    // And it keeps chatting with its old counters.
    let r = a.say("#r", "back").await;
    assert_eq!(r.message.seq, 3, "after the room's creation and \"from a\"");
    assert_eq!(
        ids(&b.wait_for("#r", 12).await),
        ids(&a.history("#r").await)
    );
    a.stop().await;
    b.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_stranger_cannot_take_a_live_nick() {
    let router = TestRouter::start(TTL).await;
    let a = TestPeer::start(&router, "alice").await;
    let tmp = tempfile::tempdir().unwrap();
    let err = TestPeer::start_in(router.addr, "ALICE", tmp.path().join("x"))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, PeerError::Session(SessionError::NickTaken(_))),
        "{err:?}"
    );
    // Alice is untouched, her key still the one bound to the nick.
    let mut c = router.client().await;
    let probe = common::login_as(
        &mut c,
        &parley::identity::Identity::generate(),
        "probe",
        "127.0.0.1:9",
    )
    .await
    .unwrap();
    let found = c
        .find(FindRequest {
            name: "alice".into(),
            token: probe.token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.members[0].address, a.peer.listen_addr().to_string());
    assert_eq!(found.key, a.peer.key().to_vec());
    a.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_private_message_to_an_offline_nick_arrives_when_it_logs_in() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    let r = alice.tell("bob", "waiting for you").await;
    assert!(r.delivered.is_empty());
    assert_eq!(r.pending, ["bob"]);
    alice.tell("bob", "and this too").await;

    let mut bob = TestPeer::start(&router, "bob").await;
    let (m1, _) = bob.next_message().await;
    let (m2, _) = bob.next_message().await;
    assert_eq!(
        (m1.body.as_str(), m2.body.as_str()),
        ("waiting for you", "and this too")
    );
    assert_eq!(
        ids(&bob.history("@alice+bob").await),
        ids(&alice.history("@alice+bob").await)
    );
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

/// A backlog far larger than one link batch's share of a round trip:
/// every message owed reaches the member when it logs in, none twice.
#[tokio::test]
async fn a_backlog_of_hundreds_reaches_a_member_when_it_logs_in() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    for i in 0..300 {
        let r = alice.tell("bob", &format!("owed {i}")).await;
        assert_eq!(r.pending, ["bob"]);
    }
    let bob = TestPeer::start(&router, "bob").await;
    let held = bob.wait_for("@alice+bob", 300).await;
    let bodies: Vec<String> = held.iter().map(|m| m.body.clone()).collect();
    let want: Vec<String> = (0..300).map(|i| format!("owed {i}")).collect();
    assert_eq!(bodies, want);
    assert_eq!(ids(&held), ids(&alice.history("@alice+bob").await));
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn an_outbox_survives_a_sender_restart() {
    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("alice");
    let alice = TestPeer::start_in(router.addr, "alice", dir.clone())
        .await
        .unwrap();
    alice.tell("bob", "kept on disk").await;
    alice.stop().await;

    let alice = TestPeer::start_in(router.addr, "alice", dir).await.unwrap();
    let mut bob = TestPeer::start(&router, "bob").await;
    let (m, _) = bob.next_message().await;
    assert_eq!(m.body, "kept on disk");
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn the_chat_goes_on_through_a_router_restart() {
    let ttl = Duration::from_secs(2);
    let router = TestRouter::start(ttl).await;
    let addr = router.addr;
    let peers = [
        TestPeer::start(&router, "a").await,
        TestPeer::start(&router, "b").await,
        TestPeer::start(&router, "c").await,
    ];
    for p in &peers {
        p.join("#r").await;
    }
    for p in &peers {
        p.say("#r", &format!("before from {}", p.peer.nick())).await;
    }

    router.stop().await;
    // The router is gone: peers still reach each other directly.
    for p in &peers {
        let r = p.say("#r", &format!("during from {}", p.peer.nick())).await;
        assert_eq!(r.delivered.len(), 2, "{r:?}");
    }

    // Back, empty, on the same port: the peers log in and rejoin by
    // themselves.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let router = TestRouter::start_on(listener, ttl).await;
    until_members(&router.addr.to_string(), "#r", 3, Duration::from_secs(10)).await;
    for p in &peers {
        let r = p.say("#r", &format!("after from {}", p.peer.nick())).await;
        assert_eq!(r.delivered.len(), 2, "{r:?}");
    }
    let reference = peers[0].wait_for("#r", 9).await;
    assert_eq!(reference.len(), 9);
    for p in &peers {
        assert_eq!(ids(&p.wait_for("#r", 9).await), ids(&reference));
    }
    for p in peers {
        p.stop().await;
    }
    router.stop().await;
}

#[tokio::test]
async fn a_member_that_rejoins_holds_what_it_missed_before_joined() {
    let router = TestRouter::start(TTL).await;
    let a = TestPeer::start(&router, "a").await;
    let b = TestPeer::start(&router, "b").await;
    let c = TestPeer::start(&router, "c").await;
    for p in [&a, &b, &c] {
        p.join("#r").await;
    }
    b.say("#r", "hello").await;
    let room = Room::parse("#r").unwrap();
    b.peer.leave(&room, "").await.unwrap();
    for i in 0..50 {
        a.say("#r", &format!("a {i}")).await;
        c.say("#r", &format!("c {i}")).await;
    }
    let j = b.join("#r").await;
    assert_eq!(j.version, 102, "101 messages and the room's creation");
    // Held at the moment `joined` is reported, not later.
    assert_eq!(ids(&b.history("#r").await), ids(&a.history("#r").await));
    for p in [a, b, c] {
        p.stop().await;
    }
    router.stop().await;
}

#[tokio::test]
async fn a_skipped_sequence_number_is_repaired_without_a_join() {
    let router = TestRouter::start(TTL).await;
    let a = TestPeer::start(&router, "a").await;
    let mut b = TestPeer::start(&router, "b").await;
    a.join("#r").await;
    b.join("#r").await;
    // a stores three messages that never reach b (as if lost on the way)...
    for i in 0..3 {
        a.peer
            .store()
            .append_own(
                "#r",
                "a",
                a.peer.incarnation(),
                &format!("lost {i}"),
                now_ms(),
                vec![],
            )
            .await
            .unwrap();
    }
    // ...then the fourth arrives, with seq 5 (a's seq 1 is the room's
    // creation): b sees the gap and pulls it.
    let r = a.say("#r", "fourth").await;
    assert_eq!(r.message.seq, 5);
    let h = b.wait_for("#r", 4).await;
    assert_eq!(ids(&h), ids(&a.history("#r").await));
    let mut shown = Vec::new();
    for _ in 0..4 {
        shown.push(b.next_message().await.0.seq);
    }
    shown.sort();
    assert_eq!(shown, [2, 3, 4, 5], "repaired messages are shown too");
    a.stop().await;
    b.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn members_cut_off_from_each_other_end_with_the_same_union() {
    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, pa) = peer_behind_proxy(&router, "a", tmp.path().join("a")).await;
    let (mut b, pb) = peer_behind_proxy(&router, "b", tmp.path().join("b")).await;
    a.join("#r").await;
    b.join("#r").await;
    a.say("#r", "before").await;
    b.wait_for("#r", 1).await;

    pa.cut();
    pb.cut();
    for i in 0..10 {
        let r = a.say("#r", &format!("a alone {i}")).await;
        assert_eq!(r.pending, ["b"]);
        let r = b.say("#r", &format!("b alone {i}")).await;
        assert_eq!(r.pending, ["a"]);
    }
    pa.heal();
    pb.heal();

    let ha = a.wait_for("#r", 21).await;
    let hb = b.wait_for("#r", 21).await;
    assert_eq!(ids(&ha), ids(&hb), "the same union in the same order");
    // Each side saw the other's messages arrive after its own later ones.
    for p in [&mut a, &mut b] {
        let mut late = 0;
        while let Ok(ev) = p.events.try_recv() {
            if let PeerEvent::Message { late: true, .. } = ev {
                late += 1;
            }
        }
        assert!(late > 0, "{} showed nothing late", p.peer.nick());
    }
    a.stop().await;
    b.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_wiped_peer_comes_back_as_a_new_incarnation() {
    let ttl = Duration::from_secs(2);
    let router = TestRouter::start(ttl).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let a = TestPeer::start_in(router.addr, "a", dir.clone())
        .await
        .unwrap();
    let b = TestPeer::start(&router, "b").await;
    let c = TestPeer::start(&router, "c").await;
    for p in [&a, &b, &c] {
        p.join("#r").await;
    }
    for i in 0..3 {
        a.say("#r", &format!("old a {i}")).await;
    }
    let old = a.peer.incarnation();
    a.peer.stop_now().await;
    drop(a);
    // The history is lost; the identity key was kept elsewhere (a backup).
    let key = std::fs::read(dir.join("identity.key")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    until_members(&router.addr.to_string(), "a", 0, Duration::from_secs(10)).await;

    // Another key cannot have the nick, even with its lease gone.
    let err = TestPeer::start_in(router.addr, "a", tmp.path().join("impostor"))
        .await
        .err()
        .expect("another key is refused");
    assert!(
        matches!(err, PeerError::Session(SessionError::NickTaken(_))),
        "{err:?}"
    );

    std::fs::create_dir_all(&dir).unwrap();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("identity.key"))
            .unwrap();
        f.write_all(&key).unwrap();
    }
    let a = TestPeer::start_in(router.addr, "a", dir).await.unwrap();
    assert_ne!(a.peer.incarnation(), old);
    let j = a.join("#r").await;
    assert_eq!(
        j.version, 4,
        "its old messages (and the room's creation) come back from the others"
    );
    for i in 0..3 {
        let r = a.say("#r", &format!("new a {i}")).await;
        assert_eq!(r.message.seq, (i + 1) as u64, "counters restart at 1");
        assert_eq!(r.delivered.len(), 2);
    }
    for p in [&b, &c] {
        let h = p.wait_for("#r", 6).await;
        assert_eq!(h.len(), 6, "new messages are not taken for old ones");
        assert_eq!(ids(&h), ids(&a.history("#r").await));
    }
    for p in [a, b, c] {
        p.stop().await;
    }
    router.stop().await;
}
