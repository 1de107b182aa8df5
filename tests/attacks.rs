//! The attacks the identity work closes, each mounted with a raw client (or
//! a hostile peer presenting a valid certificate of its own) against real
//! routers and peers on loopback, and shown refused with the victim's
//! history unchanged.

mod common;

// Issue 23: an insider (her own key, her own router session) cannot lock
// others out, stall, exhaust, seize or squat. One file per attack.
#[path = "attacks/joins.rs"]
mod joins;
#[path = "attacks/login.rs"]
mod login;
#[path = "attacks/memory.rs"]
mod memory;
#[path = "attacks/nicks.rs"]
mod nicks;
#[path = "attacks/presence.rs"]
mod presence;
#[path = "attacks/rooms.rs"]
mod rooms;

use std::time::Duration;

use common::{chat_client_as, login_as, router_client, until_members, TestPeer, TestRouter};
use parley::identity::Identity;
use parley::message::now_ms;
use parley::peer::PeerEvent;
use parley::proto::*;
use tonic::Code;

const TTL: Duration = Duration::from_secs(10);

fn message(conv: &str, author: &str, seq: u64, lamport: u64, body: &str) -> ChatMessage {
    ChatMessage {
        conversation: conv.into(),
        author: author.into(),
        incarnation: 42,
        seq,
        lamport,
        sent_at_ms: now_ms(),
        body: body.into(),
        signature: Vec::new(),
        kind: 0,
    }
}

/// Mallory, logged in under her own nick and key.
async fn mallory(router: &TestRouter) -> (Identity, String) {
    let id = Identity::generate();
    let mut c = router.client().await;
    let login = login_as(&mut c, &id, "mallory", "127.0.0.1:9")
        .await
        .unwrap();
    (id, login.token)
}

#[tokio::test]
async fn nobody_delivers_in_another_name_or_takes_their_sequence_number() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    let mut bob = TestPeer::start(&router, "bob").await;
    let (mallory, _) = mallory(&router).await;
    let bob_addr = bob.peer.listen_addr().to_string();
    let mut raw = chat_client_as(&bob_addr, &mallory);

    // Written in Alice's name, signed by Mallory's key.
    let mut forged = message("@alice+bob", "alice", 1, 1, "send me your password");
    forged.incarnation = alice.peer.incarnation();
    mallory.sign_message(&mut forged);
    let err = raw
        .deliver(DeliverRequest {
            message: Some(forged.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Unsigned, or signed by nobody's key: refused all the same.
    forged.signature = vec![0; 64];
    let err = raw
        .deliver(DeliverRequest {
            message: Some(forged),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(bob.history("@alice+bob").await.is_empty());

    // Alice's real first message takes seq 1 and is held.
    let sent = alice.tell("bob", "hi bob").await;
    assert_eq!(sent.message.seq, 1);
    assert_eq!(sent.delivered, ["bob"]);
    let (got, _) = bob.next_message().await;
    assert_eq!(got.body, "hi bob");
    let held = bob.history("@alice+bob").await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].body, "hi bob");
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

/// Mallory's forgery's arrival at bob: the event that says it failed its
/// check after it was taken, with the key that sent it.
async fn forged_event(bob: &mut TestPeer) -> (ChatMessage, Option<parley::identity::PublicKey>) {
    bob.next_event(Duration::from_secs(10), |ev| match ev {
        PeerEvent::Forged { msg, key } => Some((msg, key)),
        _ => None,
    })
    .await
}

/// What the peer behind `raw` answers when asked its version of `conv`.
async fn version_of(
    raw: &mut parley::proto::chat_client::ChatClient<tonic::transport::Channel>,
    conv: &str,
) -> GetVersionResponse {
    raw.get_version(GetVersionRequest {
        conversation: conv.into(),
        digest: Vec::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// A message from its author's own link is taken on the link's word (the
/// TLS handshake proved the key) and its signature checked after: one that
/// does not check is removed, never served, and the key flagged.
#[tokio::test]
async fn a_bad_signature_from_its_own_author_is_removed_and_the_key_flagged() {
    let router = TestRouter::start(TTL).await;
    let mut bob = TestPeer::start(&router, "bob").await;
    let (mallory, _) = mallory(&router).await;
    let mut raw = chat_client_as(&bob.peer.listen_addr().to_string(), &mallory);
    let mut m = message("@bob+mallory", "mallory", 1, 1, "signed");
    mallory.sign_message(&mut m);
    m.body = "changed after signing".into();
    let taken = raw
        .deliver(DeliverRequest { message: Some(m) })
        .await
        .unwrap()
        .into_inner();
    assert!(taken.stored, "{taken:?}");
    let (msg, key) = forged_event(&mut bob).await;
    assert_eq!(msg.body, "changed after signing");
    assert_eq!(key, Some(mallory.public()));
    assert!(bob.history("@bob+mallory").await.is_empty());
    // Never served: neither counted in a version nor handed over by a pull.
    let v = version_of(&mut raw, "@bob+mallory").await;
    assert_eq!((v.version, v.vector.len()), (0, 0), "{v:?}");
    let mut pages = raw
        .pull_history(PullHistoryRequest {
            conversation: "@bob+mallory".into(),
            have: Vec::new(),
            page_size: 100,
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(page) = pages.message().await.unwrap() {
        assert!(page.messages.is_empty(), "{page:?}");
    }
    // The seq is free again: the message as signed is taken and kept.
    let mut good = message("@bob+mallory", "mallory", 1, 1, "signed");
    mallory.sign_message(&mut good);
    let taken = raw
        .deliver(DeliverRequest {
            message: Some(good),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(taken.stored);
    bob.wait_for("@bob+mallory", 1).await;
    assert_eq!(bob.bodies("@bob+mallory").await, ["signed"]);
    bob.stop().await;
    router.stop().await;
}

/// The check after storing outlives a crash: what a peer took unchecked
/// and had not checked when it stopped is checked when it starts again,
/// and only what checks is kept and served.
#[tokio::test]
async fn a_check_a_crash_cut_short_runs_at_the_next_start() {
    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bob");
    let bob = TestPeer::start_in(router.addr, "bob", dir.clone())
        .await
        .unwrap();
    let (mallory, _) = mallory(&router).await;
    bob.stop().await;
    // As bob's history holds them when he stops between taking two
    // messages from mallory's link and checking them.
    let mut good = message("@bob+mallory", "mallory", 1, 1, "good");
    mallory.sign_message(&mut good);
    let mut bad = message("@bob+mallory", "mallory", 2, 2, "signed");
    mallory.sign_message(&mut bad);
    bad.body = "changed after signing".into();
    let store = parley::store::Store::open(&dir.join(parley::peer::HISTORY_FILE)).unwrap();
    store
        .insert_unchecked(vec![good, bad], *mallory.public().as_bytes())
        .await
        .unwrap();
    drop(store);

    let mut bob = TestPeer::start_in(router.addr, "bob", dir).await.unwrap();
    let (msg, key) = forged_event(&mut bob).await;
    assert_eq!((msg.seq, key), (2, Some(mallory.public())));
    assert_eq!(bob.bodies("@bob+mallory").await, ["good"]);
    let mut raw = chat_client_as(&bob.peer.listen_addr().to_string(), &mallory);
    let v = version_of(&mut raw, "@bob+mallory").await;
    assert_eq!(v.version, 1, "{v:?}");
    bob.stop().await;
    router.stop().await;
}

/// A link batch is judged message by message, as `Deliver` judges one: in
/// one batch, a message in another's name and one changed after signing
/// are refused with Deliver's codes, and the good ones around them are
/// stored. A repeat is held already; a batch past the limit ends the link.
#[tokio::test]
async fn a_link_batch_is_judged_message_by_message() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    let mut bob = TestPeer::start(&router, "bob").await;
    let (mallory, _) = mallory(&router).await;
    let mut raw = chat_client_as(&bob.peer.listen_addr().to_string(), &mallory);

    let signed = |seq: u64, body: &str| {
        let mut m = message("@bob+mallory", "mallory", seq, seq, body);
        mallory.sign_message(&mut m);
        m
    };
    let mut forged = message("@alice+bob", "alice", 1, 1, "in alice's name");
    forged.incarnation = alice.peer.incarnation();
    mallory.sign_message(&mut forged);
    let mut changed = signed(2, "as signed");
    changed.body = "changed after signing".into();
    let batch = vec![
        signed(1, "one"),
        forged,
        changed,
        signed(2, "two"),
        signed(3, "three"),
    ];

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = raw
        .link(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(LinkBatch { messages: batch }).await.unwrap();
    let ack = acks.message().await.unwrap().expect("an answer");
    let codes: Vec<Code> = ack.results.iter().map(|r| Code::from_i32(r.code)).collect();
    // The one changed after signing comes from its author's own link: it
    // is taken, so the honest seq 2 after it is a repeat, until the check
    // that follows removes it.
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::PermissionDenied,
            Code::Ok,
            Code::Ok,
            Code::Ok
        ],
        "{ack:?}"
    );
    let stored: Vec<bool> = ack.results.iter().map(|r| r.stored).collect();
    assert_eq!(stored, [true, false, true, false, true], "{ack:?}");
    assert!(!ack.results[1].error.is_empty());
    let (msg, _) = forged_event(&mut bob).await;
    assert_eq!(msg.body, "changed after signing");
    assert_eq!(bob.bodies("@bob+mallory").await, ["one", "three"]);
    assert!(bob.history("@alice+bob").await.is_empty());
    tx.send(LinkBatch {
        messages: vec![signed(2, "two")],
    })
    .await
    .unwrap();
    let ack = acks.message().await.unwrap().expect("an answer");
    assert!(ack.results[0].stored, "{ack:?}");
    assert_eq!(bob.bodies("@bob+mallory").await, ["one", "two", "three"]);

    // The same message again, on the same link: held already.
    tx.send(LinkBatch {
        messages: vec![signed(1, "one")],
    })
    .await
    .unwrap();
    let ack = acks.message().await.unwrap().expect("an answer");
    assert_eq!(ack.results.len(), 1);
    assert_eq!(Code::from_i32(ack.results[0].code), Code::Ok);
    assert!(!ack.results[0].stored);

    // Past the limit: the link ends, and nothing of that batch is stored.
    let too_many = (0..1025).map(|i| signed(4 + i, "more")).collect();
    tx.send(LinkBatch { messages: too_many }).await.unwrap();
    let err = acks.message().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(bob.history("@bob+mallory").await.len(), 3);
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn private_and_room_history_is_read_only_by_those_with_a_right() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    let bob = TestPeer::start(&router, "bob").await;
    alice.join("#inner").await;
    bob.join("#inner").await;
    alice.tell("bob", "private").await;
    alice.say("#inner", "members only").await;
    bob.wait_for("@alice+bob", 1).await;
    bob.wait_for("#inner", 1).await;

    let (mallory, _) = mallory(&router).await;
    let mut raw = chat_client_as(&bob.peer.listen_addr().to_string(), &mallory);
    for conv in ["@alice+bob", "#inner"] {
        let err = raw
            .pull_history(PullHistoryRequest {
                conversation: conv.into(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("{conv} was served to a stranger"));
        assert_eq!(err.code(), Code::PermissionDenied, "{conv}: {err:?}");
        let err = raw
            .get_version(GetVersionRequest {
                conversation: conv.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{conv}: {err:?}");
    }
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_clock_far_ahead_is_refused_and_cannot_pin_anyones_counters() {
    let router = TestRouter::start(TTL).await;
    let bob = TestPeer::start(&router, "bob").await;
    let (mallory, _) = mallory(&router).await;
    let mut raw = chat_client_as(&bob.peer.listen_addr().to_string(), &mallory);
    for (seq, lamport) in [(1, u64::MAX), (u64::MAX, 1)] {
        let mut m = message("@bob+mallory", "mallory", seq, lamport, "far ahead");
        mallory.sign_message(&mut m);
        let err = raw
            .deliver(DeliverRequest { message: Some(m) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    assert!(bob.history("@bob+mallory").await.is_empty());
    let mut m = message("@bob+mallory", "mallory", 1, 1, "plausible");
    mallory.sign_message(&mut m);
    raw.deliver(DeliverRequest { message: Some(m) })
        .await
        .unwrap();
    let sent = bob.tell("mallory", "reply").await;
    assert_eq!((sent.message.seq, sent.message.lamport), (1, 2));
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn the_router_answers_lookups_only_within_a_session_and_never_in_clear() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    let mut c = router_client(&router.addr.to_string());
    let err = c
        .find(FindRequest {
            name: "alice".into(),
            token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c.list_users(ListUsersRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c.list_rooms(ListRoomsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A login whose signature is not the key's is refused.
    let challenge = c
        .login_challenge(ChallengeRequest::default())
        .await
        .unwrap()
        .into_inner()
        .challenge;
    let mut req = parley::router_client::login_request(
        &Identity::generate(),
        "eve",
        "127.0.0.1:9",
        challenge,
    );
    req.key = Identity::generate().public().to_vec();
    let err = c.user_login(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Plain HTTP/2 gets nowhere: neither the router nor a peer speaks it.
    for addr in [
        router.addr.to_string(),
        alice.peer.listen_addr().to_string(),
    ] {
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .connect_lazy();
        let err = parley::proto::chat_client::ChatClient::new(plain)
            .ping(PingRequest {})
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::Ok);
    }
    alice.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_peer_connects_only_to_the_key_the_registry_gives() {
    let router = TestRouter::start(TTL).await;
    let bob = TestPeer::start(&router, "bob").await;
    // Someone who knows Bob's address but not his key: the link is refused
    // by the client's own check when it expects another key.
    let tls = parley::tls::Tls::new(&Identity::generate()).unwrap();
    let addr = bob.peer.listen_addr().to_string();
    let expect = parley::tls::Expect::key(&Identity::generate().public());
    let channel = tls.channel(parley::net::endpoint(&addr).unwrap(), &addr, expect.clone());
    let err = parley::proto::chat_client::ChatClient::new(channel)
        .ping(PingRequest {})
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let refusal = expect.refused().expect("a refusal is recorded");
    assert_eq!(refusal.got, bob.peer.key().fingerprint());
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_known_nick_with_a_new_key_is_refused_until_trusted() {
    let router = TestRouter::start(Duration::from_secs(2)).await;
    let alice = TestPeer::start(&router, "alice").await;
    let tmp = tempfile::tempdir().unwrap();
    let bob = TestPeer::start_in(router.addr, "bob", tmp.path().join("b1"))
        .await
        .unwrap();
    alice.tell("bob", "first").await;
    bob.wait_for("@alice+bob", 1).await;
    bob.stop().await;
    common::until_members(&router.addr.to_string(), "bob", 0, Duration::from_secs(10)).await;

    // The router is restarted (it forgets bindings), and "bob" comes back
    // with another key.
    let port = router.addr;
    router.stop().await;
    let router = TestRouter::start_on(
        tokio::net::TcpListener::bind(port).await.unwrap(),
        Duration::from_secs(2),
    )
    .await;
    let mut alice = alice;
    let mut other = TestPeer::start_in(router.addr, "bob", tmp.path().join("b2"))
        .await
        .unwrap();
    // Alice's outbox waits: nothing goes to the new key.
    let r = alice.tell("bob", "second").await;
    assert!(r.delivered.is_empty(), "{r:?}");
    let warning = alice
        .next_event(Duration::from_secs(10), |e| match e {
            parley::peer::PeerEvent::Warning { nick, text } => Some((nick, text)),
            _ => None,
        })
        .await;
    assert_eq!(warning.0, "bob");
    assert!(warning.1.contains("/trust bob"), "{}", warning.1);
    assert!(other.history("@alice+bob").await.is_empty());
    // Its messages are refused too.
    let sent = other.tell("alice", "it is me, really").await;
    assert!(sent.delivered.is_empty(), "{sent:?}");
    assert!(alice
        .history("@alice+bob")
        .await
        .iter()
        .all(|m| m.body != "it is me, really"));

    // Accepted: the waiting message goes, and his arrive.
    let key = alice
        .peer
        .trust(&parley::names::Nick::parse("bob").unwrap())
        .await
        .unwrap();
    assert_eq!(key, other.peer.key());
    // The waiting message arrives at the next outbox retry.
    other
        .next_event(Duration::from_secs(10), |e| match e {
            parley::peer::PeerEvent::Message { msg, .. } if msg.body == "second" => Some(()),
            _ => None,
        })
        .await;
    assert!(other
        .history("@alice+bob")
        .await
        .iter()
        .any(|m| m.body == "second"));
    alice.stop().await;
    other.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_rooms_creator_owns_it_after_a_router_restart_whoever_rejoins_first() {
    let ttl = Duration::from_secs(2);
    let router = TestRouter::start(ttl).await;
    let addr = router.addr;
    let tmp = tempfile::tempdir().unwrap();
    let alice_dir = tmp.path().join("alice");
    let alice = TestPeer::start_in(addr, "alice", alice_dir.clone())
        .await
        .unwrap();
    let bob = TestPeer::start(&router, "bob").await;
    assert!(alice.join("#club").await.created);
    bob.join("#club").await;
    // The creation is the room's first event, signed by alice, and every
    // member holds it.
    let held = bob.peer.store().all("#club").await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].kind, Kind::Created as i32);
    assert_eq!(held[0].author, "alice");

    // Alice is away; the router restarts empty and bob rejoins first.
    alice.stop().await;
    router.stop().await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let router = TestRouter::start_on(listener, ttl).await;
    until_members(&addr.to_string(), "#club", 1, Duration::from_secs(10)).await;
    let mut c = router.client().await;
    let (_, token) = mallory(&router).await;
    let found = c
        .find(FindRequest {
            name: "#club".into(),
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.owner, "alice");

    // Bob's join made the room's record, showing alice's creation: that
    // named the owner. Mallory joins showing a creation of her own, dated
    // before alice's: the owner stays. One whose signature does not check
    // is refused outright, and she is not let in by it.
    let mallory_id = Identity::generate();
    let mut c2 = router.client().await;
    let m2 = login_as(&mut c2, &mallory_id, "mallory2", "127.0.0.1:9")
        .await
        .unwrap();
    let mut own = message("#club", "mallory2", 1, 1, "#club");
    own.kind = Kind::Created as i32;
    own.sent_at_ms = held[0].sent_at_ms - 60_000;
    mallory_id.sign_message(&mut own);
    let mut broken = own.clone();
    broken.sent_at_ms = 1;
    let err = c2
        .join_room(JoinRoomRequest {
            token: m2.token.clone(),
            room: "#club".into(),
            creation: Some(broken),
            creator_key: mallory_id.public().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let joined = c2
        .join_room(JoinRoomRequest {
            token: m2.token.clone(),
            room: "#club".into(),
            creation: Some(own),
            creator_key: mallory_id.public().to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.owner, "alice");
    assert_eq!(joined.members.len(), 2, "bob and mallory2");

    // Bob cannot delete it; alice, back on her data directory, can.
    let club = parley::names::Room::parse("#club").unwrap();
    assert!(bob.peer.delete_room(&club).await.is_err());
    let alice = TestPeer::start_in(addr, "alice", alice_dir).await.unwrap();
    until_members(&addr.to_string(), "#club", 3, Duration::from_secs(10)).await;
    alice.peer.delete_room(&club).await.unwrap();
    let gone = c
        .find(FindRequest {
            name: "#club".into(),
            token,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!gone.found);
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_private_history_keeps_only_its_two_parties_lines() {
    let router = TestRouter::start(TTL).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("alice");
    let alice = TestPeer::start_in(router.addr, "alice", dir.clone())
        .await
        .unwrap();
    let bob = TestPeer::start(&router, "bob").await;
    let carol = TestPeer::start(&router, "carol").await;
    alice.tell("bob", "hello bob").await;
    let conv = "@alice+bob";
    bob.wait_for(conv, 1).await;
    // Bob stuffs their private history with a line that carol really
    // signed, in a conversation she is no party to, and a line of his own
    // that alice has not seen yet.
    let signed_by = |p: &TestPeer, lamport: u64, body: &str| {
        let mut m = message(conv, p.peer.nick().as_str(), 1, lamport, body);
        m.incarnation = p.peer.incarnation();
        Identity::load_or_create(&p.dir.join(parley::peer::KEY_FILE))
            .unwrap()
            .sign_message(&mut m);
        m
    };
    let stray = signed_by(&carol, 2, "carol was never here");
    let own = signed_by(&bob, 3, "a line alice missed");
    bob.peer
        .store()
        .insert_many(vec![stray, own])
        .await
        .unwrap();

    // Alice comes back and catches up on her private conversations from
    // bob: his line is taken, carol's is not.
    alice.stop().await;
    let alice = TestPeer::start_in(router.addr, "alice", dir).await.unwrap();
    let h = alice.wait_for(conv, 2).await;
    let bodies: Vec<&str> = h.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["hello bob", "a line alice missed"]);
    // Both lines came in one page, judged and stored together: the stray
    // one was refused, not late.
    let h = alice.history(conv).await;
    assert_eq!(h.len(), 2, "{h:?}");
    for p in [alice, bob, carol] {
        p.stop().await;
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_reporting_a_huge_version_cannot_hand_a_newcomer_forged_history() {
    let router = TestRouter::start(TTL).await;
    let alice = TestPeer::start(&router, "alice").await;
    let mallory = TestPeer::start(&router, "mallory").await;
    alice.join("#town").await;
    mallory.join("#town").await;
    let real = alice.say("#town", "the real one").await;
    mallory.wait_for("#town", 1).await;
    // Mallory stuffs her own history: hundreds of messages in alice's name
    // (signed by a key that is not alice's, or not at all), so that she
    // reports the highest version and a newcomer pulls from her.
    let other = Identity::generate();
    let mut forged = Vec::new();
    for seq in real.message.seq + 1..=400 {
        let mut m = message("#town", "alice", seq, seq + 1, "forged in alice's name");
        m.incarnation = alice.peer.incarnation();
        if seq % 2 == 0 {
            other.sign_message(&mut m);
        }
        forged.push(m);
    }
    mallory.peer.store().insert_many(forged).await.unwrap();
    assert!(mallory.history("#town").await.len() > 300);

    let carol = TestPeer::start(&router, "carol").await;
    carol.join("#town").await;
    assert_eq!(carol.bodies("#town").await, ["the real one"]);
    // Alice's real next message is taken, not shadowed by a forgery.
    let r = alice.say("#town", "second").await;
    assert_eq!(r.message.seq, real.message.seq + 1);
    let h = carol.wait_for("#town", 2).await;
    assert_eq!(h[1].body, "second");
    for p in [alice, mallory, carol] {
        p.stop().await;
    }
    router.stop().await;
}
