//! Attack 6: presence leaks. A `Watch` that names `alice` and `bob` in
//! `follow` carried their online/offline events, with their addresses, to
//! a stranger who shares nothing with them.

use std::time::Duration;

use parley::identity::Identity;
use parley::proto::registry_event::Kind;
use parley::proto::*;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::common::*;

async fn session(
    router: &TestRouter,
    nick: &str,
) -> (parley::proto::router_client::RouterClient<Channel>, String) {
    let mut c = router.client().await;
    let token = login_as(&mut c, &Identity::generate(), nick, "127.0.0.1:9")
        .await
        .unwrap()
        .token;
    (c, token)
}

async fn watch(
    c: &mut parley::proto::router_client::RouterClient<Channel>,
    token: &str,
    follow: &[&str],
) -> Streaming<RegistryEvent> {
    c.watch(WatchRequest {
        token: token.into(),
        follow: follow.iter().map(|n| n.to_string()).collect(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// The next event's kind, within a bound.
async fn next(stream: &mut Streaming<RegistryEvent>) -> Kind {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the stream goes on")
        .kind
        .expect("an event has a kind")
}

#[tokio::test]
async fn a_watch_carries_presence_only_to_those_who_share_something() {
    let router = TestRouter::start(Duration::from_secs(10)).await;
    // Alice and bob are private partners: each follows the other.
    let (mut alice, alice_token) = session(&router, "alice").await;
    let (mut bob, bob_token) = session(&router, "bob").await;
    let mut alice_sees = watch(&mut alice, &alice_token, &["bob"]).await;
    let _bob_sees = watch(&mut bob, &bob_token, &["alice"]).await;
    // Eve and dave share a room; eve also names alice and bob.
    let (mut eve, eve_token) = session(&router, "eve").await;
    let (mut dave, dave_token) = session(&router, "dave").await;
    for (c, token) in [(&mut eve, &eve_token), (&mut dave, &dave_token)] {
        c.join_room(JoinRoomRequest {
            token: token.clone(),
            room: "#side".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut eve_sees = watch(&mut eve, &eve_token, &["alice", "bob", "dave"]).await;

    // Bob goes, then dave leaves the room eve shares with him.
    bob.user_logout(LogoutRequest {
        token: bob_token,
        message: String::new(),
    })
    .await
    .unwrap();
    dave.leave_room(LeaveRoomRequest {
        token: dave_token.clone(),
        room: "#side".into(),
        message: String::new(),
    })
    .await
    .unwrap();

    // Alice heard bob come online when his watch named her back, and
    // hears him go.
    match next(&mut alice_sees).await {
        Kind::UserOnline(m) => assert_eq!(m.nick, "bob"),
        other => panic!("alice saw {other:?}"),
    }
    match next(&mut alice_sees).await {
        Kind::UserOffline(m) => assert_eq!(m.nick, "bob"),
        other => panic!("alice saw {other:?}"),
    }
    // Eve's first event is dave leaving: events come in revision order, so
    // bob's going, had it reached her, would have come first.
    match next(&mut eve_sees).await {
        Kind::MemberLeft(m) => {
            assert_eq!(m.member.map(|m| m.nick).as_deref(), Some("dave"))
        }
        other => panic!("eve saw {other:?} before dave's leaving"),
    }
    // Dave shared a room with her until now: his going is hers to see.
    dave.user_logout(LogoutRequest {
        token: dave_token,
        message: String::new(),
    })
    .await
    .unwrap();
    // ... but he left the room and never followed her: nothing of it; a
    // new member of her room is the next thing she hears.
    let (mut carol, carol_token) = session(&router, "carol").await;
    carol
        .join_room(JoinRoomRequest {
            token: carol_token,
            room: "#side".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    match next(&mut eve_sees).await {
        Kind::MemberJoined(m) => {
            assert_eq!(m.member.map(|m| m.nick).as_deref(), Some("carol"))
        }
        other => panic!("eve saw {other:?} before carol's joining"),
    }
    router.stop().await;
}
