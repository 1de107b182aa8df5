//! Insider attacks (issue 23): see tests/attacks.rs.
//!
//! Attack 4: a member seizes a room she did not create, live. She signs a
//! creation event of her own, dated before the real one, and shows it at a
//! join, hands it to members, or serves it to a newcomer. The router's owner
//! is decided once, when the room's record is made; a peer keeps one creation
//! event per room, the one by the owner the router names.

use std::time::Duration;

use parley::identity::Identity;
use parley::proto::*;
use tonic::Code;

use crate::common::{chat_client_as, login_as, until_members, TestPeer, TestRouter};

const TTL: Duration = Duration::from_secs(10);
/// How much earlier than the real one the forged creation is dated.
const EARLIER_MS: i64 = 3_600_000;

/// The creation events a peer holds for `conv`.
async fn creations(p: &TestPeer, conv: &str) -> Vec<ChatMessage> {
    let mut all = p.peer.store().all(conv).await.unwrap();
    all.retain(|m| m.kind == Kind::Created as i32);
    all
}

/// Waits (10 s at most) until `p` holds a creation event for `conv`.
async fn until_created(p: &TestPeer, conv: &str) -> Vec<ChatMessage> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held = creations(p, conv).await;
        if !held.is_empty() || tokio::time::Instant::now() >= deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_member_cannot_seize_a_room_live_with_an_earlier_creation_event() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    let bob = TestPeer::start(&router, "bob").await;
    assert!(alice.join("#club").await.created);
    bob.join("#club").await;
    let real = creations(&alice, "#club").await;
    assert_eq!(real.len(), 1, "{real:?}");
    let real = real[0].clone();
    assert_eq!(creations(&bob, "#club").await, std::slice::from_ref(&real));

    // Eve: her own key, her own session, and a creation event of her own
    // signed with it, dated an hour before alice's.
    let eve = Identity::generate();
    let mut c = router.client().await;
    let token = login_as(&mut c, &eve, "eve", "127.0.0.1:9")
        .await
        .unwrap()
        .token;
    let mut forged = ChatMessage {
        conversation: "#club".into(),
        author: "eve".into(),
        incarnation: 42,
        seq: 1,
        lamport: 1,
        sent_at_ms: real.sent_at_ms - EARLIER_MS,
        body: "#club".into(),
        signature: Vec::new(),
        kind: Kind::Created as i32,
    };
    eve.sign_message(&mut forged);

    // Shown at a join: she is let in, but alice stays the owner.
    let joined = c
        .join_room(JoinRoomRequest {
            token: token.clone(),
            room: "#club".into(),
            creation: Some(forged.clone()),
            creator_key: eve.public().to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!joined.created);
    assert_eq!(joined.owner, "alice");
    assert_eq!(joined.members.len(), 3, "{joined:?}");
    let found = c
        .find(FindRequest {
            name: "#club".into(),
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.owner, "alice");
    let err = c
        .delete_room(DeleteRoomRequest {
            token: token.clone(),
            room: "#club".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Handed to bob over Deliver, and to alice over a link: refused.
    let mut to_bob = chat_client_as(&bob.peer.listen_addr().to_string(), &eve);
    let err = to_bob
        .deliver(DeliverRequest {
            message: Some(forged.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut to_alice = chat_client_as(&alice.peer.listen_addr().to_string(), &eve);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut acks = to_alice
        .link(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(LinkBatch {
        messages: vec![forged.clone()],
    })
    .await
    .unwrap();
    let ack = acks.message().await.unwrap().expect("an answer");
    assert_eq!(ack.results.len(), 1);
    assert_eq!(
        Code::from_i32(ack.results[0].code),
        Code::PermissionDenied,
        "{ack:?}"
    );
    assert!(!ack.results[0].stored);

    // A newcomer after her holds the real one only, as every member does.
    let carol = TestPeer::start(&router, "carol").await;
    carol.join("#club").await;
    for p in [&alice, &bob, &carol] {
        assert_eq!(
            creations(p, "#club").await,
            std::slice::from_ref(&real),
            "{}",
            p.peer.nick()
        );
    }
    // The owner is still the owner.
    alice
        .peer
        .delete_room(&parley::names::Room::parse("#club").unwrap())
        .await
        .unwrap();
    drop(tx);
    for p in [alice, bob, carol] {
        p.stop().await;
    }
    router.stop().await;
}

/// Eve runs a real peer whose history holds her own creation event of the
/// room, dated before the real one; she joins showing it and serves it to
/// whoever pulls from her. A newcomer who pulls from her alone (alice is
/// away) does not keep it: the router names alice the owner. When alice is
/// back, the newcomer takes hers.
#[tokio::test]
async fn a_newcomer_keeps_only_the_creation_event_of_the_owner_the_router_names() {
    let router = TestRouter::start(TTL).await;
    let addr = router.addr;
    let tmp = tempfile::tempdir().unwrap();
    let alice_dir = tmp.path().join("alice");
    let alice = TestPeer::start_in(addr, "alice", alice_dir.clone())
        .await
        .unwrap();
    assert!(alice.join("#club").await.created);
    let real = creations(&alice, "#club").await;
    assert_eq!(real.len(), 1, "{real:?}");
    let real = real[0].clone();

    // Eve writes her creation into her own history (signed with her key)
    // before she joins, so her peer shows it to the router and serves it.
    let eve = TestPeer::start(&router, "eve").await;
    let forged = eve
        .peer
        .store()
        .append_own_kind(
            "#club",
            "eve",
            eve.peer.incarnation(),
            (Kind::Created, "#club"),
            real.sent_at_ms - EARLIER_MS,
            vec![],
        )
        .await
        .unwrap();
    eve.join("#club").await;
    // Her peer (honest code) pulled alice's and refused it: a history
    // keeps the first creation event it held.
    assert_eq!(
        creations(&eve, "#club").await,
        std::slice::from_ref(&forged)
    );
    let mut c = router.client().await;
    let probe = Identity::generate();
    let token = login_as(&mut c, &probe, "probe", "127.0.0.1:9")
        .await
        .unwrap()
        .token;
    let owner = |token: String| {
        let mut c = c.clone();
        async move {
            c.find(FindRequest {
                name: "#club".into(),
                token,
            })
            .await
            .unwrap()
            .into_inner()
            .owner
        }
    };
    assert_eq!(owner(token.clone()).await, "alice");

    // Alice is away; carol joins and can pull from eve alone.
    alice.stop().await;
    until_members(&addr.to_string(), "#club", 1, Duration::from_secs(10)).await;
    let carol = TestPeer::start(&router, "carol").await;
    carol.join("#club").await;
    assert!(creations(&carol, "#club").await.is_empty());

    // Alice is back: carol takes the real one, and only it.
    let alice = TestPeer::start_in(addr, "alice", alice_dir).await.unwrap();
    assert_eq!(
        until_created(&carol, "#club").await,
        std::slice::from_ref(&real)
    );
    assert_eq!(creations(&alice, "#club").await, [real]);
    assert_eq!(owner(token).await, "alice");
    for p in [alice, eve, carol] {
        p.stop().await;
    }
    router.stop().await;
}
