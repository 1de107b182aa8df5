//! Attack 1: nobody can log in. `LoginChallenge` needs no session, and a
//! router that kept every challenge it handed out in a bounded table was
//! locked by one client asking for challenges in a loop.

use std::time::Duration;

use futures::future::join_all;
use parley::identity::Identity;
use parley::proto::*;
use tonic::Code;

use crate::common::*;

/// More challenges than the old table held (65,536).
const FLOOD: usize = 70_000;
const TASKS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_login_challenges_locks_nobody_out() {
    let router = TestRouter::start(Duration::from_secs(10)).await;
    // Eve: a key and a session of her own.
    let eve = Identity::generate();
    let mut c = router.client().await;
    login_as(&mut c, &eve, "eve", "127.0.0.1:9").await.unwrap();

    // She asks for challenges and never uses them, over one connection.
    let flood = (0..TASKS).map(|_| {
        let mut c = c.clone();
        async move {
            let mut refused = 0;
            for _ in 0..FLOOD / TASKS + 1 {
                if let Err(status) = c.login_challenge(ChallengeRequest::default()).await {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    refused += 1;
                }
            }
            refused
        }
    });
    let refused: usize = join_all(flood).await.into_iter().sum();
    assert_eq!(refused, 0, "challenges were refused to the flooder herself");

    // A new person logs in at once, and so does a peer.
    let mut other = router.client().await;
    let alice = Identity::generate();
    let login = login_as(&mut other, &alice, "alice", "127.0.0.1:9").await;
    assert!(login.is_ok(), "a login after the flood: {login:?}");
    let bob = TestPeer::start(&router, "bob").await;
    assert!(bob.peer.key() != eve.public());

    // A challenge is good once: the same signed login again is refused.
    let challenge = other
        .login_challenge(ChallengeRequest::default())
        .await
        .unwrap()
        .into_inner()
        .challenge;
    let req = parley::router_client::login_request(&alice, "alice", "127.0.0.1:9", challenge);
    other.user_login(req.clone()).await.unwrap();
    let err = other.user_login(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    bob.stop().await;
    router.stop().await;
}
