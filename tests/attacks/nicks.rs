//! Attacks 5 and 7: nicks squatted for ever, and a restart of the
//! in-memory router that forgot every binding.

use std::time::Duration;

use parley::identity::Identity;
use parley::proto::*;
use parley::registry::{MemoryOptions, MAX_NICKS_PER_KEY, REGISTRY_FILE};
use parley::router::{BindingRate, RouterLimits};
use tonic::Code;

use crate::common::*;

/// Eve binds as many nicks as she can, first with one key, then with a
/// fresh key per nick: the key stops at its bound, the address at its
/// rate; nicks already bound still log in; and a key unseen past the
/// binding TTL loses its nicks.
#[tokio::test]
async fn nicks_cost_something_and_expire() {
    let binding_ttl = Duration::from_secs(2);
    let router = TestRouter::start_with(
        net_listener().await,
        MemoryOptions {
            binding_ttl,
            ..MemoryOptions::new(Duration::from_secs(2))
        },
        RouterLimits {
            // 40 at once, then one per 2 s: the claim of a released nick
            // at the end is a binding anew, paid from a refilled bucket.
            new_nicks: BindingRate {
                burst: 40,
                every: Duration::from_secs(2),
            },
            ..RouterLimits::default()
        },
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let alice = TestPeer::start_in(router.addr, "alice", tmp.path().join("alice"))
        .await
        .unwrap();

    let eve = Identity::generate();
    let mut c = router.client().await;
    let mut bound = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..20 {
        let nick = format!("eve{i}");
        match login_as(&mut c, &eve, &nick, "127.0.0.1:9").await {
            Ok(login) => {
                bound.push(nick);
                tokens.push(login.token);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("nicks"), "{status:?}");
            }
        }
    }
    assert_eq!(bound.len(), MAX_NICKS_PER_KEY, "{bound:?}");
    // Her own nicks stay hers.
    let again = login_as(&mut c, &eve, &bound[0], "127.0.0.1:9")
        .await
        .unwrap();
    tokens[0] = again.token;

    // A fresh key per nick: stopped by the address's rate.
    let mut more = 0;
    let mut refused = None;
    for i in 0..2000 {
        match login_as(
            &mut c,
            &Identity::generate(),
            &format!("squat{i}"),
            "127.0.0.1:9",
        )
        .await
        {
            Ok(_) => more += 1,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("2000 fresh nicks from one address were all bound");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("new nicks"), "{refused:?}");
    assert!(more < 40 + 2, "{more} nicks bound past the first key's");
    // Alice, bound already, comes back as ever: no new binding to pay.
    alice.stop().await;
    let alice = TestPeer::start_in(router.addr, "alice", tmp.path().join("alice"))
        .await
        .unwrap();

    // Eve's nicks are hers while her key is seen; once she is gone and her
    // key goes unseen past the binding TTL, another key may claim them.
    let other = Identity::generate();
    let err = login_as(&mut c, &other, &bound[1], "127.0.0.1:9")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    for token in tokens {
        c.user_logout(LogoutRequest {
            token,
            message: String::new(),
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(binding_ttl + Duration::from_secs(1)).await;
    let freed = login_as(&mut c, &other, &bound[1], "127.0.0.1:9").await;
    assert!(
        freed.is_ok(),
        "an unseen key's nick was not released: {freed:?}"
    );
    alice.stop().await;
    router.stop().await;
}

/// The in-memory router keeps bindings and owners in its file: after a
/// restart, whoever logs in first as `alice` with another key is refused,
/// the real alice gets her nick, and her room is still hers.
#[tokio::test]
async fn a_restart_forgets_sessions_not_bindings() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(REGISTRY_FILE);
    let options = || MemoryOptions {
        file: Some(file.clone()),
        ..MemoryOptions::new(Duration::from_secs(2))
    };
    let router =
        TestRouter::start_with(net_listener().await, options(), RouterLimits::default()).await;
    let addr = router.addr;
    let alice_dir = tmp.path().join("alice");
    let alice = TestPeer::start_in(addr, "alice", alice_dir.clone())
        .await
        .unwrap();
    assert!(alice.join("#hall").await.created);
    alice.stop().await;
    router.stop().await;

    let router = TestRouter::start_with(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        options(),
        RouterLimits::default(),
    )
    .await;
    // Eve, first in after the restart, with a key of her own.
    let eve = Identity::generate();
    let mut c = router.client().await;
    let err = login_as(&mut c, &eve, "Alice", "127.0.0.1:9")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let eve_login = login_as(&mut c, &eve, "eve", "127.0.0.1:9").await.unwrap();
    // Her own #hall, made first after the restart, is not hers.
    let joined = c
        .join_room(JoinRoomRequest {
            token: eve_login.token.clone(),
            room: "#hall".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!joined.created);
    assert_eq!(joined.owner, "alice");
    let err = c
        .delete_room(DeleteRoomRequest {
            token: eve_login.token,
            room: "#hall".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The real alice comes back on her data directory, and owns her room.
    let alice = TestPeer::start_in(addr, "alice", alice_dir).await.unwrap();
    let hall = parley::names::Room::parse("#hall").unwrap();
    alice.join("#hall").await;
    alice.peer.delete_room(&hall).await.unwrap();
    alice.stop().await;
    router.stop().await;
}

async fn net_listener() -> tokio::net::TcpListener {
    parley::net::bind_loopback().await.unwrap()
}
