//! Peers chatting in-process: a real router and real peers on 127.0.0.1:0,
//! each with its own SQLite history.

mod common;

use std::time::Duration;

use common::{chat_client_as, ids, login_as, TestPeer, TestRouter};
use parley::identity::Identity;
use parley::names::{Nick, Room};
use parley::proto::{DeliverRequest, JoinRoomRequest, LogoutRequest, PullHistoryRequest};
use tokio_stream::StreamExt;

const TTL: Duration = Duration::from_secs(10);

/// The identity key a test peer keeps in its data directory: what a raw
/// client presents to speak as that peer.
fn identity_of(p: &TestPeer) -> Identity {
    let path = p.dir.join("identity.key");
    assert!(path.exists(), "{} holds no identity key", p.dir.display());
    Identity::load_or_create(&path).unwrap()
}

#[tokio::test]
async fn private_chat_both_ways() {
    let router = TestRouter::start(TTL).await;
    let mut alice = TestPeer::start(&router, "alice").await;
    let mut bob = TestPeer::start(&router, "Bob").await;

    let sent = alice.tell("bob", "hi bob").await;
    assert_eq!(sent.delivered, ["bob"]);
    assert!(sent.pending.is_empty());
    let (m, late) = bob.next_message().await;
    assert_eq!(
        (m.author.as_str(), m.body.as_str(), late),
        ("alice", "hi bob", false)
    );
    assert_eq!(m.conversation, "@alice+bob");
    assert_eq!(m.seq, 1);

    let sent = bob.tell("ALICE", "hi alice").await;
    assert_eq!(sent.delivered, ["ALICE"]);
    let (m, _) = alice.next_message().await;
    assert_eq!((m.author.as_str(), m.body.as_str()), ("Bob", "hi alice"));
    // Bob's reply comes after Alice's message in the one shared order.
    assert!(m.lamport > 1);

    let a = alice.history("@alice+bob").await;
    let b = bob.history("@alice+bob").await;
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].body, "hi bob");
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn room_chat_among_five() {
    let router = TestRouter::start(TTL).await;
    let mut peers = Vec::new();
    for n in ["p0", "p1", "p2", "p3", "p4"] {
        peers.push(TestPeer::start(&router, n).await);
    }
    for (i, p) in peers.iter().enumerate() {
        let j = p.join("#five").await;
        assert_eq!(j.created, i == 0);
        assert_eq!(j.members.len(), i + 1);
    }
    for (i, p) in peers.iter().enumerate() {
        let r = p.say("#five", &format!("hello from p{i}")).await;
        assert_eq!(r.delivered.len(), 4, "{r:?}");
        assert!(r.pending.is_empty());
    }
    let first = peers[0].wait_for("#five", 5).await;
    for p in &peers {
        let h = p.wait_for("#five", 5).await;
        assert_eq!(ids(&h), ids(&first), "{} differs", p.peer.nick());
    }
    // Every peer saw the four messages of the others live.
    for (i, p) in peers.iter_mut().enumerate() {
        let mut from = Vec::new();
        for _ in 0..4 {
            from.push(p.next_message().await.0.author);
        }
        from.sort();
        let expected: Vec<String> = (0..5)
            .filter(|j| *j != i)
            .map(|j| format!("p{j}"))
            .collect();
        assert_eq!(from, expected);
    }
    for p in peers {
        p.stop().await;
    }
    router.stop().await;
}

#[tokio::test]
async fn late_joiner_gets_the_full_history_in_the_same_order() {
    let router = TestRouter::start(TTL).await;
    let a = TestPeer::start(&router, "a").await;
    let b = TestPeer::start(&router, "b").await;
    a.join("#hist").await;
    for i in 0..20 {
        a.say("#hist", &format!("early {i}")).await;
    }
    // b joins after 20 messages, then 10 more arrive.
    let j = b.join("#hist").await;
    assert_eq!(j.version, 21, "20 messages and the room's creation");
    for i in 0..10 {
        a.say("#hist", &format!("later {i}")).await;
        b.say("#hist", &format!("reply {i}")).await;
    }
    let ha = a.wait_for("#hist", 40).await;
    assert_eq!(ids(&b.wait_for("#hist", 40).await), ids(&ha));

    // c joins last: it must pull everything, and b (which holds 40 while a
    // is gone) is the only source.
    a.peer.stop_now().await;
    let c = TestPeer::start(&router, "c").await;
    let j = c.join("#hist").await;
    assert_eq!(
        j.version, 41,
        "joined reports the version after sync (40 and the room's creation)"
    );
    let hc = c.history("#hist").await;
    assert_eq!(ids(&hc), ids(&ha), "same messages, same order");
    assert_eq!(hc[0].body, "early 0");
    b.stop().await;
    c.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn joiner_pulls_from_the_member_with_the_highest_version() {
    let router = TestRouter::start(TTL).await;
    let a = TestPeer::start(&router, "a").await;
    let b = TestPeer::start(&router, "b").await;
    a.join("#v").await;
    b.join("#v").await;
    for i in 0..5 {
        a.say("#v", &format!("both {i}")).await;
    }
    // b leaves; a writes 5 more that only a holds.
    b.peer.leave(&Room::parse("#v").unwrap(), "").await.unwrap();
    for i in 0..5 {
        a.say("#v", &format!("only a {i}")).await;
    }
    b.join("#v").await;
    let c = TestPeer::start(&router, "c").await;
    let j = c.join("#v").await;
    assert_eq!(j.version, 11, "10 messages and the room's creation");
    assert_eq!(ids(&c.history("#v").await), ids(&a.history("#v").await));
    for p in [a, b, c] {
        p.stop().await;
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_leave_identical_histories() {
    let router = TestRouter::start(TTL).await;
    let mut peers = Vec::new();
    for n in ["s0", "s1", "s2", "r0"] {
        let p = TestPeer::start(&router, n).await;
        p.join("#busy").await;
        peers.push(p);
    }
    let peers = std::sync::Arc::new(peers);
    let mut tasks = Vec::new();
    for s in 0..3 {
        let peers = peers.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let r = peers[s].say("#busy", &format!("s{s} m{i}")).await;
                assert!(r.pending.is_empty(), "{r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let reference = peers[3].wait_for("#busy", 600).await;
    assert_eq!(reference.len(), 600);
    for p in peers.iter() {
        let h = p.wait_for("#busy", 600).await;
        assert_eq!(ids(&h), ids(&reference), "{} differs", p.peer.nick());
    }
    // Each sender's own messages keep their order (s0's seq 1 is the
    // room's creation).
    for s in 0..3 {
        let mine: Vec<u64> = reference
            .iter()
            .filter(|m| m.author == format!("s{s}"))
            .map(|m| m.seq)
            .collect();
        let first = if s == 0 { 2 } else { 1 };
        assert_eq!(mine, (first..first + 200).collect::<Vec<u64>>());
    }
    let peers = std::sync::Arc::try_unwrap(peers).ok().unwrap();
    for p in peers {
        p.stop().await;
    }
    router.stop().await;
}

#[tokio::test]
async fn same_text_twice_is_two_messages_and_a_retried_deliver_is_stored_once() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    let bob = TestPeer::start(&router, "bob").await;
    alice.tell("bob", "same").await;
    alice.tell("bob", "same").await;
    let h = bob.wait_for("@alice+bob", 2).await;
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].seq, h[1].seq), (1, 2));
    assert_eq!(h[0].body, h[1].body);

    // Replay the first message at bob, as a sender retrying would (over a
    // link presenting alice's key).
    let mut client = chat_client_as(&bob.peer.listen_addr().to_string(), &identity_of(&alice));
    let again = client
        .deliver(DeliverRequest {
            message: Some(h[0].clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.stored);
    assert_eq!(bob.history("@alice+bob").await.len(), 2);
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_pull_of_five_thousand_messages_comes_in_pages() {
    let router = TestRouter::start(TTL).await;
    let a = TestPeer::start(&router, "a").await;
    a.join("#big").await;
    let sends: Vec<_> = (0..5000)
        .map(|i| {
            let p = a.peer.clone();
            async move {
                p.send_room(&Room::parse("#big").unwrap(), &format!("message {i}"))
                    .await
                    .unwrap()
            }
        })
        .collect();
    futures::future::join_all(sends).await;
    assert_eq!(a.history("#big").await.len(), 5000);

    // Straight at the wire: the pull arrives in several pages. A room's
    // history is served only to members: the raw puller joins first
    // (nothing is expected to call its address).
    let puller = Identity::generate();
    let mut rc = router.client().await;
    let token = login_as(&mut rc, &puller, "puller", "127.0.0.1:9")
        .await
        .unwrap()
        .token;
    rc.join_room(JoinRoomRequest {
        token: token.clone(),
        room: "#big".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut client = chat_client_as(&a.peer.listen_addr().to_string(), &puller);
    let mut pages = client
        .pull_history(PullHistoryRequest {
            conversation: "#big".into(),
            have: vec![],
            page_size: 500,
        })
        .await
        .unwrap()
        .into_inner();
    let mut sizes = Vec::new();
    while let Some(p) = pages.next().await {
        sizes.push(p.unwrap().messages.len());
    }
    assert_eq!(sizes.iter().sum::<usize>(), 5001, "and the room's creation");
    assert!(sizes.len() >= 10, "{sizes:?}");
    assert!(sizes.iter().all(|s| *s <= 500));
    rc.user_logout(LogoutRequest {
        token,
        ..Default::default()
    })
    .await
    .unwrap();

    // And through the join of a new member.
    let b = TestPeer::start(&router, "b").await;
    let j = b.join("#big").await;
    assert_eq!(j.version, 5001, "and the room's creation");
    assert_eq!(ids(&b.history("#big").await), ids(&a.history("#big").await));
    a.stop().await;
    b.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn bad_deliveries_are_refused_and_nothing_is_stored() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    let bob = TestPeer::start(&router, "bob").await;
    bob.join("#in").await;
    // Deliveries from alice's own key, signed by it: what is refused below
    // is refused for what the message says, not for who sent it.
    let alice_id = identity_of(&alice);
    let bob_addr = bob.peer.listen_addr().to_string();
    let mut client = chat_client_as(&bob_addr, &alice_id);
    let msg = |conv: &str, author: &str, body: &str| {
        let mut m = parley::proto::ChatMessage {
            conversation: conv.into(),
            author: author.into(),
            incarnation: 7,
            seq: 1,
            lamport: 1,
            sent_at_ms: 0,
            body: body.into(),
            signature: Vec::new(),
            kind: 0,
        };
        alice_id.sign_message(&mut m);
        m
    };
    let cases = [
        (msg("#out", "alice", "hi"), tonic::Code::FailedPrecondition),
        (msg("#in", "alice", "hi"), tonic::Code::PermissionDenied),
        (
            msg("@alice+carol", "alice", "hi"),
            tonic::Code::PermissionDenied,
        ),
        (msg("@alice+bob", "alice", ""), tonic::Code::InvalidArgument),
        (
            msg("@alice+bob", "al ice", "hi"),
            tonic::Code::InvalidArgument,
        ),
        (msg("#IN", "alice", "hi"), tonic::Code::InvalidArgument),
    ];
    for (m, code) in cases {
        let err = client
            .deliver(DeliverRequest {
                message: Some(m.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{m:?}: {err:?}");
    }
    // A good message of alice's, but from another key.
    let err = chat_client_as(&bob_addr, &Identity::generate())
        .deliver(DeliverRequest {
            message: Some(msg("@alice+bob", "alice", "hi")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // (One from alice's own key whose signature does not check is taken
    // and then removed: tests/attacks.rs.)
    // Only the room bob joined (its creation event) is held.
    assert_eq!(bob.peer.store().conversations().await.unwrap(), ["#in"]);
    assert!(bob.history("#in").await.is_empty());
    // Too long a body is refused by the sender before anything is stored.
    let long = "x".repeat(10_001);
    assert!(alice
        .peer
        .send_private(&Nick::parse("bob").unwrap(), &long)
        .await
        .is_err());
    assert!(alice.peer.store().conversations().await.unwrap().is_empty());
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}
