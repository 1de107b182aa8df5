//! Sealed mailboxes: lines to someone offline wait, sealed, at the router,
//! and reach them when they come back, even with the sender gone. Real
//! routers and peers on 127.0.0.1:0 (in-process, or the binaries where a
//! `kill -9` is the point); every test checks the histories line by line.

mod common;

use std::time::Duration;

use common::{ids, Proc, TestPeer, TestRouter};
use parley::peer::PeerEvent;

const TTL: Duration = Duration::from_secs(10);

/// An in-process router whose mailboxes allow what `mail` says.
async fn router_with(mail: parley::router::MailLimits) -> TestRouter {
    TestRouter::start_with(
        parley::net::bind_loopback().await.unwrap(),
        parley::registry::MemoryOptions::new(TTL),
        parley::router::RouterLimits {
            mail,
            ..Default::default()
        },
    )
    .await
}

/// Starts `nick` on its data directory under `root` (its nick bound, its
/// mailbox key published), waits for its first drain, and stops it:
/// someone who has been online once and is away now.
async fn online_once(router: &TestRouter, root: &std::path::Path, nick: &str) {
    let mut p = TestPeer::start_in(router.addr, nick, root.join(nick))
        .await
        .unwrap();
    assert_eq!(mailbox_event(&mut p).await, (0, 0), "nothing waited");
    p.stop().await;
}

/// Waits for the peer's `Mailbox` event: (delivered, expired).
async fn mailbox_event(p: &mut TestPeer) -> (usize, u64) {
    p.next_event(Duration::from_secs(10), |e| match e {
        PeerEvent::Mailbox { delivered, expired } => Some((delivered, expired)),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn private_lines_reach_a_recipient_never_online_with_the_sender() {
    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    // Bob has logged in once (his nick is bound, his mailbox key known),
    // and logged out.
    online_once(&router, tmp.path(), "bob").await;

    let alice = TestPeer::start_in(router.addr, "alice", tmp.path().join("alice"))
        .await
        .unwrap();
    for i in 0..3 {
        let r = alice.tell("bob", &format!("night {i}")).await;
        assert_eq!(r.pending, ["bob"]);
    }
    let sent = alice.history("@alice+bob").await;
    // Alice quits at once: what she owes bob is deposited before she goes.
    alice.stop().await;

    let mut bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    assert_eq!(mailbox_event(&mut bob).await, (3, 0));
    let got = bob.history("@alice+bob").await;
    assert_eq!(ids(&got), ids(&sent), "every line, once, in order");
    assert_eq!(
        got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["night 0", "night 1", "night 2"]
    );
    // The mailbox is empty now: a restart finds nothing more.
    bob.stop().await;
    let mut bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    assert_eq!(mailbox_event(&mut bob).await, (0, 0));
    assert_eq!(bob.history("@alice+bob").await.len(), 3);
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn room_lines_reach_a_member_who_rested_while_they_were_written() {
    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut alice = TestPeer::start_in(router.addr, "alice", tmp.path().join("alice"))
        .await
        .unwrap();
    let mut bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    let carol = TestPeer::start_in(router.addr, "carol", tmp.path().join("carol"))
        .await
        .unwrap();
    for p in [&alice, &bob, &carol] {
        p.join("#night").await;
    }
    mailbox_event(&mut bob).await;
    bob.stop().await;
    // Alice sees bob quit; he rests in the room, so her lines owe him.
    alice
        .next_event(Duration::from_secs(10), |e| match e {
            PeerEvent::Presence {
                nick,
                change: parley::peer::Presence::Quit,
                ..
            } if nick == "bob" => Some(()),
            _ => None,
        })
        .await;
    let r = alice.say("#night", "probe").await;
    assert!(
        r.pending.iter().any(|n| n == "bob"),
        "bob never rests: {r:?}"
    );
    alice.say("#night", "while bob sleeps").await;
    carol.say("#night", "carol too").await;
    let want = ids(&carol
        .wait_for("#night", carol.history("#night").await.len())
        .await);
    alice.stop().await;
    carol.stop().await;

    let mut bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    let (delivered, _) = mailbox_event(&mut bob).await;
    assert!(
        delivered >= 3,
        "probe(s), alice's and carol's lines: {delivered}"
    );
    let got = bob.history("#night").await;
    assert_eq!(ids(&got), want, "bob holds what carol holds, in order");
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn the_routers_files_hold_no_body_in_the_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("router");
    let key = tmp.path().join("router.key");
    let data_arg = data.to_str().unwrap().to_owned();
    let (router, addr2) =
        Proc::router_with("127.0.0.1:0", 10, &key, &["--data-dir", &data_arg]).await;
    let mut bob = Proc::peer(&addr2, "bob", &tmp.path().join("bob"), &[]).await;
    assert_eq!(bob.event("mailbox").await["count"], 0);
    bob.quit().await;
    let mut alice = Proc::peer(&addr2, "alice", &tmp.path().join("alice"), &[]).await;
    let secret = "the-password-is-swordfish-4711";
    alice.send(&format!("/msg bob {secret}")).await;
    alice.event("sent").await;
    alice.quit().await;

    // Every file under the router's data directory, WAL included.
    let mut seen = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        seen += bytes.len();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the body in the clear",
            path.display()
        );
    }
    assert!(seen > 0, "the router wrote its files");

    let mut bob = Proc::peer(&addr2, "bob", &tmp.path().join("bob"), &[]).await;
    assert_eq!(bob.event("mailbox").await["count"], 1);
    let h = bob.history("@alice").await;
    assert_eq!(h, [("alice".to_owned(), 1, secret.to_owned())]);
    bob.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn a_deposit_over_quota_is_refused_and_the_line_stays_owed() {
    let router = router_with(parley::router::MailLimits {
        quota: parley::mailbox::Quota {
            count: 2,
            bytes: 1 << 20,
        },
        ..Default::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    online_once(&router, tmp.path(), "bob").await;

    let mut alice = TestPeer::start_in(router.addr, "alice", tmp.path().join("alice"))
        .await
        .unwrap();
    for i in 0..3 {
        alice.tell("bob", &format!("line {i}")).await;
    }
    // Two fit; the third is refused, said once, and stays owed.
    let notice = alice
        .next_event(Duration::from_secs(10), |e| match e {
            PeerEvent::Notice(n) if n.contains("keeps no more for bob") => Some(n),
            _ => None,
        })
        .await;
    assert!(notice.contains("1 message(s) stay owed"), "{notice}");
    let owed = alice.peer.store().outbox_for("bob", 100).await.unwrap();
    assert_eq!(
        owed.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["line 2"]
    );

    // Bob comes back while alice is online: two from the mailbox, the
    // third straight from alice's outbox.
    let mut bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    assert_eq!(mailbox_event(&mut bob).await, (2, 0));
    let got = bob.wait_for("@alice+bob", 3).await;
    assert_eq!(ids(&got), ids(&alice.history("@alice+bob").await));
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn forged_envelopes_are_refused_and_removed() {
    use parley::identity::Identity;
    use parley::proto::{DepositRequest, FindRequest};
    use parley::seal::{seal, MailboxKey};
    use prost::Message as _;

    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    mailbox_event(&mut bob).await;
    let alice = TestPeer::start_in(router.addr, "alice", tmp.path().join("alice"))
        .await
        .unwrap();
    let alice_key = alice.peer.key();
    // Bob knows alice's key (they talked).
    alice.tell("bob", "hello").await;
    bob.wait_for("@alice+bob", 1).await;
    alice.stop().await;
    bob.stop().await;

    // Mallory holds a key and a nick of her own, and deposits for bob.
    let mallory = Identity::generate();
    // A link of another key, with mallory's token, is refused.
    let mut stranger = router.client().await;
    let mut c = common::router_client_as(&router.addr.to_string(), &mallory);
    let token = common::login_as(&mut c, &mallory, "mallory", "127.0.0.1:9")
        .await
        .unwrap()
        .token;
    let found = c
        .find(FindRequest {
            name: "bob".into(),
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let bob_key = parley::identity::PublicKey::from_bytes(&found.key).unwrap();
    let to = MailboxKey {
        key: found.mailbox_key,
        signature: found.mailbox_signature,
    };
    assert!(to.check(&bob_key));
    let me = mallory.public();
    let line = |author: &str, body: &str, seq: u64| parley::proto::ChatMessage {
        conversation: format!("@{}+bob", author),
        author: author.into(),
        incarnation: 1,
        seq,
        lamport: 100 + seq,
        sent_at_ms: parley::message::now_ms(),
        body: body.into(),
        signature: vec![0; 64],
        kind: 0,
    };
    // A message in alice's name (not mallory's key): refused.
    let mut as_alice = line("alice", "I am alice", 2);
    mallory.sign_message(&mut as_alice);
    // Mallory's own message with a signature that does not check.
    let mut bad_sig = line("mallory", "bad signature", 1);
    mallory.sign_message(&mut bad_sig);
    bad_sig.body = "changed after signing".into();
    // Random bytes, and a seal claiming another depositor (alice's key in
    // the AAD): neither opens.
    let junk = vec![7u8; 200];
    let wrong_aad = seal(
        &to,
        &bob_key,
        &alice_key,
        &line("mallory", "x", 3).encode_to_vec(),
    )
    .unwrap();
    // One good line from mallory, so the drain is seen to take what is sound.
    let mut good = line("mallory", "a fair line", 1);
    good.conversation = "@bob+mallory".into();
    mallory.sign_message(&mut good);
    let mut bad_sig_fixed = bad_sig.clone();
    bad_sig_fixed.conversation = "@bob+mallory".into();
    let envelopes = vec![
        seal(&to, &bob_key, &me, &as_alice.encode_to_vec()).unwrap(),
        seal(&to, &bob_key, &me, &bad_sig_fixed.encode_to_vec()).unwrap(),
        junk,
        wrong_aad,
        seal(&to, &bob_key, &me, &good.encode_to_vec()).unwrap(),
    ];
    let r = c
        .deposit(DepositRequest {
            token: token.clone(),
            recipient: "bob".into(),
            recipient_key: bob_key.to_vec(),
            envelopes,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.stored, r.code), (5, 0));
    let refused = stranger
        .drain(parley::proto::DrainRequest {
            token: token.clone(),
            limit: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    let mut bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    assert_eq!(mailbox_event(&mut bob).await, (1, 0), "only the fair line");
    let refused = bob
        .next_event(Duration::from_secs(10), |e| match e {
            PeerEvent::Notice(n) if n.contains("were refused") => Some(n),
            _ => None,
        })
        .await;
    assert!(refused.starts_with("4 envelope(s)"), "{refused}");
    assert_eq!(bob.bodies("@bob+mallory").await, ["a fair line"]);
    assert_eq!(
        bob.bodies("@alice+bob").await,
        ["hello"],
        "nothing in alice's name"
    );
    // Everything was acknowledged: the mailbox is empty.
    bob.stop().await;
    let mut bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    assert_eq!(mailbox_event(&mut bob).await, (0, 0));
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_router_killed_between_deposit_and_drain_keeps_the_mail() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("router");
    let data_arg = data.to_str().unwrap().to_owned();
    let key = tmp.path().join("router.key");
    let (router, addr) =
        Proc::router_with("127.0.0.1:0", 10, &key, &["--data-dir", &data_arg]).await;
    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &[]).await;
    assert_eq!(bob.event("mailbox").await["count"], 0);
    bob.quit().await;
    let mut alice = Proc::peer(&addr, "alice", &tmp.path().join("alice"), &[]).await;
    for i in 0..5 {
        alice.send(&format!("/msg bob kept {i}")).await;
        let sent = alice.event("sent").await;
        assert_eq!(sent["pending"][0], "bob");
    }
    alice.quit().await;
    // No clean shutdown: what the router answered for is on its disk.
    router.kill9().await;
    let (router, _) = Proc::router_with(&addr, 10, &key, &["--data-dir", &data_arg]).await;
    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &[]).await;
    assert_eq!(bob.event("mailbox").await["count"], 5);
    let h = bob.history("@alice").await;
    let want: Vec<(String, u64, String)> = (0..5)
        .map(|i| ("alice".to_owned(), i + 1, format!("kept {i}")))
        .collect();
    assert_eq!(h, want);
    bob.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn a_recipient_killed_mid_drain_gets_every_line_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("router");
    let data_arg = data.to_str().unwrap().to_owned();
    let key = tmp.path().join("router.key");
    let (router, addr) =
        Proc::router_with("127.0.0.1:0", 10, &key, &["--data-dir", &data_arg]).await;
    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &[]).await;
    bob.event("mailbox").await;
    bob.quit().await;
    // More than one drain's worth (256), written fast.
    const N: u64 = 600;
    let mut alice = Proc::peer(&addr, "alice", &tmp.path().join("alice"), &[]).await;
    for i in 0..N {
        alice.send(&format!("/msg bob n{i}")).await;
    }
    for _ in 0..N {
        alice.event("sent").await;
    }
    alice.quit().await;

    // Killed as soon as the first drained line shows.
    let mut bob = Proc::spawn_peer(&addr, "bob", &tmp.path().join("bob"), &[]);
    bob.event("message").await;
    bob.kill9().await;

    let mut bob = Proc::peer(&addr, "bob", &tmp.path().join("bob"), &[]).await;
    let rest = bob.event("mailbox").await["count"].as_u64().unwrap();
    assert!(rest < N, "part was taken before the kill: {rest} left");
    let h = bob.history("@alice").await;
    let want: Vec<(String, u64, String)> = (0..N)
        .map(|i| ("alice".to_owned(), i + 1, format!("n{i}")))
        .collect();
    assert_eq!(h, want, "every line once, in order");
    bob.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn envelopes_past_the_age_limit_are_removed_and_counted() {
    let started = tokio::time::Instant::now();
    let router = router_with(parley::router::MailLimits {
        max_age: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    online_once(&router, tmp.path(), "bob").await;
    let alice = TestPeer::start_in(router.addr, "alice", tmp.path().join("alice"))
        .await
        .unwrap();
    alice.tell("bob", "too late").await;
    alice.tell("bob", "also too late").await;
    alice.stop().await;
    // The router's first sweep runs 5 s after it starts.
    tokio::time::sleep_until(started + Duration::from_secs(7)).await;
    let mut bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    assert_eq!(mailbox_event(&mut bob).await, (0, 2));
    assert!(bob.history("@alice+bob").await.is_empty());
    // Told once: the count was acknowledged.
    bob.stop().await;
    let mut bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    assert_eq!(mailbox_event(&mut bob).await, (0, 0));
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn bad_deposits_get_clear_errors_and_change_nothing() {
    use parley::identity::Identity;
    use parley::proto::{AckRequest, DepositRequest, DrainRequest, LoginRequest};
    use tonic::Code;

    let router = TestRouter::start(TTL).await;
    let addr = router.addr.to_string();
    let (bob_id, eve) = (Identity::generate(), Identity::generate());
    let mut bob = common::router_client_as(&addr, &bob_id);
    let bob_token = common::login_as(&mut bob, &bob_id, "bob", "127.0.0.1:9")
        .await
        .unwrap()
        .token;
    let mut c = common::router_client_as(&addr, &eve);
    let token = common::login_as(&mut c, &eve, "eve", "127.0.0.1:9")
        .await
        .unwrap()
        .token;
    let bob_key = bob_id.public().to_vec();
    let good = vec![9u8; 100];
    let cases: Vec<(&str, DepositRequest, Code)> = vec![
        (
            "no such nick",
            DepositRequest {
                recipient: "nobody".into(),
                recipient_key: bob_key.clone(),
                envelopes: vec![good.clone()],
                ..Default::default()
            },
            Code::NotFound,
        ),
        (
            "sealed to another key than the nick's",
            DepositRequest {
                recipient: "bob".into(),
                recipient_key: eve.public().to_vec(),
                envelopes: vec![good.clone()],
                ..Default::default()
            },
            Code::FailedPrecondition,
        ),
        (
            "a key that is no key",
            DepositRequest {
                recipient: "bob".into(),
                recipient_key: vec![1, 2, 3],
                envelopes: vec![good.clone()],
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "a bad nick",
            DepositRequest {
                recipient: "bob smith".into(),
                recipient_key: bob_key.clone(),
                envelopes: vec![good.clone()],
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "an envelope too short to be a seal",
            DepositRequest {
                recipient: "bob".into(),
                recipient_key: bob_key.clone(),
                envelopes: vec![good.clone(), vec![1; 10]],
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "too many envelopes",
            DepositRequest {
                recipient: "bob".into(),
                recipient_key: bob_key.clone(),
                envelopes: vec![vec![1u8; 60]; parley::router::MAX_DEPOSIT + 1],
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, mut req, code) in cases {
        req.token = token.clone();
        let err = c.deposit(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(!err.message().is_empty(), "{what}: a reason");
    }
    // A login whose mailbox key is not signed by its key is refused, and
    // logs nobody in.
    let challenge = c
        .login_challenge(parley::proto::ChallengeRequest::default())
        .await
        .unwrap()
        .into_inner()
        .challenge;
    let mut req: LoginRequest =
        parley::router_client::login_request(&eve, "eve2", "127.0.0.1:9", challenge);
    req.mailbox_signature[0] ^= 1;
    let err = c.user_login(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Nothing was deposited: bob's mailbox is empty.
    let r = bob
        .drain(DrainRequest {
            token: bob_token.clone(),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.envelopes.is_empty() && r.expired == 0, "{r:?}");
    // Acks of ids that are not bob's (or not ids) change nothing either.
    bob.ack(AckRequest {
        token: bob_token,
        ids: vec!["../x".into(), "99999".into()],
        expired: 5,
    })
    .await
    .unwrap();
    router.stop().await;
}

#[tokio::test]
async fn a_member_online_but_unreachable_is_told_of_its_mail_by_a_heartbeat() {
    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut bob, to_bob) = common::peer_behind_proxy(&router, "bob", tmp.path().join("bob")).await;
    mailbox_event(&mut bob).await;
    let alice = common::peer_with(router.addr, "alice", tmp.path().join("alice"), |c| {
        c.deposit_after = Duration::from_secs(2);
    })
    .await;
    alice.tell("bob", "before the cut").await;
    bob.wait_for("@alice+bob", 1).await;
    // Bob's chat service is cut off; his session with the router is not.
    to_bob.cut();
    let r = alice.tell("bob", "while cut off").await;
    assert_eq!(r.pending, ["bob"]);
    // Silent past deposit_after, bob is owed it through his mailbox, and
    // his heartbeat tells him it is there.
    let (delivered, _) = bob
        .next_event(Duration::from_secs(20), |e| match e {
            PeerEvent::Mailbox { delivered, expired } => Some((delivered, expired)),
            _ => None,
        })
        .await;
    assert_eq!(delivered, 1);
    assert_eq!(
        ids(&bob.history("@alice+bob").await),
        ids(&alice.history("@alice+bob").await)
    );
    assert!(alice
        .peer
        .store()
        .outbox_for("bob", 10)
        .await
        .unwrap()
        .is_empty());
    to_bob.heal();
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}
