//! `/nick NEW`: the key's binding moves to the new nick, a signed nick-change
//! event goes to each room, private partners follow the key. The registry's
//! half runs against both registries (etcd's `#[ignore = "needs etcd"]`);
//! the peers' half against a real router and real peers on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{chat_client_as, TestPeer, TestRouter};
use futures::StreamExt;
use parley::identity::{Identity, PublicKey};
use parley::message::now_ms;
use parley::names::{Nick, Room};
use parley::peer::{PeerError, PeerEvent};
use parley::proto::{ChatMessage, DeliverRequest, Kind};
use parley::registry::{EventKind, EventStream, MemoryRegistry, Registry, RegistryError};
use tonic::Code;

const TTL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The registry's contract, over both registries.
// ---------------------------------------------------------------------------

struct Fixture {
    a: Arc<dyn Registry>,
    b: Arc<dyn Registry>,
    _etcd: Option<common::etcd::Etcd>,
}

async fn memory() -> Fixture {
    let r: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(TTL).unwrap());
    Fixture {
        a: r.clone(),
        b: r,
        _etcd: None,
    }
}

async fn etcd() -> Fixture {
    let etcd = common::etcd::Etcd::start().await;
    Fixture {
        a: Arc::new(etcd.registry(TTL).await),
        b: Arc::new(etcd.registry(TTL).await),
        _etcd: Some(etcd),
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::memory().await).await;
                }
            )*
        }
        mod over_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs etcd"]
                async fn $name() {
                    super::$name(super::etcd().await).await;
                }
            )*
        }
    };
}

contract!(
    a_change_moves_the_binding_the_session_and_its_rooms,
    a_refused_change_changes_nothing,
);

fn key(n: &str) -> PublicKey {
    let mut seed = [0u8; 32];
    for (i, b) in n.bytes().enumerate().take(31) {
        seed[i] = b;
    }
    seed[31] = 0x17;
    Identity::from_seed(seed).public()
}

fn nick(s: &str) -> Nick {
    Nick::parse(s).unwrap()
}

fn room(s: &str) -> Room {
    Room::parse(s).unwrap()
}

async fn next(w: &mut EventStream) -> EventKind {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream goes on")
        .expect("not lagged")
        .kind
}

async fn a_change_moves_the_binding_the_session_and_its_rooms(f: Fixture) {
    let alice =
        f.a.login(&nick("alice"), "127.0.0.1:7001", &key("alice"))
            .await
            .unwrap()
            .token;
    let bob =
        f.b.login(&nick("bob"), "127.0.0.1:7002", &key("bob"))
            .await
            .unwrap()
            .token;
    f.a.join(&alice, &room("#rust"), None).await.unwrap();
    f.b.join(&bob, &room("#rust"), None).await.unwrap();
    let mut watch = f.a.watch(&alice, &[]).await.unwrap();

    let before = f.b.change_nick(&bob, &nick("Robert")).await.unwrap();
    assert_eq!(before.nick, "bob");
    // One event says it: not an offline, online, left and joined.
    match next(&mut watch).await {
        EventKind::NickChanged { old, member } => {
            assert_eq!(old, "bob");
            assert_eq!(member.nick, "Robert");
            assert_eq!(member.key, key("bob"));
            assert_eq!(member.address, "127.0.0.1:7002");
        }
        other => panic!("not a nick change: {other:?}"),
    }
    // The session is Robert's now, in the same room.
    assert_eq!(f.a.session(&bob).await.unwrap().nick, "Robert");
    let snap =
        f.a.find_room(&alice, &room("#rust"))
            .await
            .unwrap()
            .unwrap();
    let mut members: Vec<String> = snap.members.into_iter().map(|m| m.nick).collect();
    members.sort();
    assert_eq!(members, ["Robert", "alice"]);
    // The binding moved: robert is the key's, bob is nobody's.
    let robert = f.a.find_user(&alice, &nick("robert")).await.unwrap();
    assert_eq!(robert.key, Some(key("bob")));
    assert_eq!(robert.online.map(|m| m.nick), Some("Robert".into()));
    let gone = f.b.find_user(&alice, &nick("bob")).await.unwrap();
    assert_eq!((gone.online, gone.key), (None, None));
    assert_eq!(f.a.binding(&nick("bob")).await.unwrap(), None);
    // Anyone may take bob now; robert stays the key's.
    f.a.login(&nick("bob"), "127.0.0.1:7003", &key("carol"))
        .await
        .unwrap();
    let err =
        f.b.login(&nick("robert"), "127.0.0.1:7004", &key("carol"))
            .await
            .unwrap_err();
    assert_eq!(err, RegistryError::KeyMismatch("robert".into()));
    // Leaving under the new nick works: the membership moved too.
    f.b.leave(&bob, &room("#rust"), "").await.unwrap();
}

async fn a_refused_change_changes_nothing(f: Fixture) {
    let alice =
        f.a.login(&nick("alice"), "127.0.0.1:7001", &key("alice"))
            .await
            .unwrap()
            .token;
    let bob =
        f.b.login(&nick("bob"), "127.0.0.1:7002", &key("bob"))
            .await
            .unwrap()
            .token;
    f.b.join(&bob, &room("#rust"), None).await.unwrap();
    // Another key's nick, online or not.
    let err = f.b.change_nick(&bob, &nick("ALICE")).await.unwrap_err();
    assert_eq!(err, RegistryError::KeyMismatch("ALICE".into()));
    f.a.logout(&alice, "").await.unwrap();
    let err = f.b.change_nick(&bob, &nick("alice")).await.unwrap_err();
    assert!(matches!(err, RegistryError::KeyMismatch(_)), "{err:?}");
    // The key's own other nick, held by another session of it.
    let other =
        f.a.login(&nick("bobby"), "127.0.0.1:7005", &key("bob"))
            .await
            .unwrap()
            .token;
    let err = f.b.change_nick(&bob, &nick("bobby")).await.unwrap_err();
    assert_eq!(err, RegistryError::NickTaken("bobby".into()));
    // Nothing moved.
    let me = f.a.session(&bob).await.unwrap();
    assert_eq!(me.nick, "bob");
    let found = f.a.find_user(&other, &nick("bob")).await.unwrap();
    assert_eq!(found.key, Some(key("bob")));
    assert!(found.online.is_some());
    assert_eq!(
        f.a.binding(&nick("alice")).await.unwrap(),
        Some(key("alice"))
    );
    let snap = f.b.find_room(&bob, &room("#rust")).await.unwrap().unwrap();
    assert_eq!(
        snap.members.into_iter().map(|m| m.nick).collect::<Vec<_>>(),
        ["bob"]
    );
    // An unknown token is refused as any session call is.
    let err = f.a.change_nick("nope", &nick("zed")).await.unwrap_err();
    assert_eq!(err, RegistryError::Unauthenticated);
}

// ---------------------------------------------------------------------------
// Peers on loopback.
// ---------------------------------------------------------------------------

/// The identity key a test peer keeps in its data directory.
fn identity_of(p: &TestPeer) -> Identity {
    Identity::load_or_create(&p.dir.join("identity.key")).unwrap()
}

/// Events already queued at `p`, without waiting.
fn queued(p: &mut TestPeer) -> Vec<PeerEvent> {
    let mut out = Vec::new();
    while let Ok(ev) = p.events.try_recv() {
        out.push(ev);
    }
    out
}

#[tokio::test]
async fn bob_becomes_robert_and_everyone_follows_the_key() {
    let router = TestRouter::start(TTL).await;
    let mut alice = TestPeer::start(&router, "alice").await;
    let mut bob = TestPeer::start(&router, "bob").await;
    alice.join("#rust").await;
    bob.join("#rust").await;
    // Alice meets bob's key.
    bob.say("#rust", "hi, bob here").await;
    let (m, _) = alice.next_message().await;
    assert_eq!(m.author, "bob");

    let change = bob.peer.change_nick(&nick("robert")).await.unwrap();
    assert_eq!(
        (change.old.as_str(), change.new.as_str()),
        ("bob", "robert")
    );
    assert_eq!(change.rooms, ["#rust"]);
    assert!(change.unsent.is_empty(), "{change:?}");
    assert_eq!(bob.peer.nick().as_str(), "robert");

    let (r, old, new) = alice
        .next_event(Duration::from_secs(10), |ev| match ev {
            PeerEvent::NickChanged { room, old, new } => Some((room, old, new)),
            _ => None,
        })
        .await;
    assert_eq!(
        (r.as_str(), old.as_str(), new.as_str()),
        ("#rust", "bob", "robert")
    );
    // Kept in the room's history, signed by the key, for late joiners.
    let all = alice.peer.store().all("#rust").await.unwrap();
    let events: Vec<&ChatMessage> = all.iter().filter(|m| m.kind == Kind::Nick as i32).collect();
    assert_eq!(events.len(), 1, "{all:?}");
    assert_eq!(
        (events[0].author.as_str(), events[0].body.as_str()),
        ("robert", "bob")
    );
    assert!(alice.peer.same_person(&nick("bob"), &nick("Robert")));
    assert!(!alice.peer.same_person(&nick("alice"), &nick("robert")));

    // Robert's next line comes from robert.
    let sent = bob.say("#rust", "robert now").await;
    assert_eq!(sent.delivered, ["alice"]);
    let (m, _) = alice.next_message().await;
    assert_eq!(
        (m.author.as_str(), m.body.as_str()),
        ("robert", "robert now")
    );

    // Private lines both ways, with no warning about robert's key.
    let sent = alice.tell("robert", "hi robert").await;
    assert_eq!(sent.delivered, ["robert"]);
    let (m, _) = bob.next_message().await;
    assert_eq!(
        (m.author.as_str(), m.conversation.as_str()),
        ("alice", "@alice+robert")
    );
    let sent = bob.tell("alice", "hi alice").await;
    assert_eq!(sent.delivered, ["alice"]);
    let (m, _) = alice.next_message().await;
    assert_eq!((m.author.as_str(), m.body.as_str()), ("robert", "hi alice"));
    let warned: Vec<PeerEvent> = queued(&mut alice)
        .into_iter()
        .filter(|e| matches!(e, PeerEvent::Warning { .. } | PeerEvent::Forged { .. }))
        .collect();
    assert!(warned.is_empty(), "{warned:?}");

    // The binding moved: a newcomer takes bob, nobody else takes robert.
    let carol = TestPeer::start(&router, "bob").await;
    assert_eq!(carol.peer.nick().as_str(), "bob");
    let tmp = tempfile::tempdir().unwrap();
    let err = TestPeer::start_in(router.addr, "robert", tmp.path().join("x"))
        .await
        .err()
        .expect("robert is another key's");
    assert!(err.to_string().contains("taken"), "{err}");
    // A change to a nick bound to another key is refused and changes
    // nothing.
    let err = carol.peer.change_nick(&nick("Robert")).await.unwrap_err();
    assert!(
        matches!(&err, PeerError::NickTaken(n) if n == "Robert"),
        "{err:?}"
    );
    assert_eq!(carol.peer.nick().as_str(), "bob");
    let whois = alice.peer.whois(&nick("robert")).await.unwrap();
    assert_eq!(whois.key, Some(identity_of(&bob).public()));
    let whois = alice.peer.whois(&nick("bob")).await.unwrap();
    assert_eq!(whois.key, Some(identity_of(&carol).public()));

    carol.stop().await;
    alice.stop().await;
    bob.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_forged_nick_change_is_refused() {
    let router = TestRouter::start(TTL).await;
    let mut alice = TestPeer::start(&router, "alice").await;
    let bob = TestPeer::start(&router, "bob").await;
    let mallory = TestPeer::start(&router, "mallory").await;
    for p in [&alice, &bob, &mallory] {
        p.join("#rust").await;
    }
    bob.say("#rust", "hi, bob here").await;
    let (m, _) = alice.next_message().await;
    assert_eq!(m.author, "bob");

    // Mallory, under her own nick and key, claims to have been bob.
    let key = identity_of(&mallory);
    let mut forged = ChatMessage {
        conversation: "#rust".into(),
        author: "mallory".into(),
        incarnation: mallory.peer.incarnation(),
        seq: 1,
        lamport: 10,
        sent_at_ms: now_ms(),
        body: "bob".into(),
        signature: Vec::new(),
        kind: Kind::Nick as i32,
    };
    key.sign_message(&mut forged);
    let mut raw = chat_client_as(&alice.peer.listen_addr().to_string(), &key);
    let err = raw
        .deliver(DeliverRequest {
            message: Some(forged.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Nothing stored, nothing learnt, nothing told.
    let all = alice.peer.store().all("#rust").await.unwrap();
    assert!(all.iter().all(|m| m.kind != Kind::Nick as i32), "{all:?}");
    assert!(!alice.peer.same_person(&nick("bob"), &nick("mallory")));
    let told: Vec<PeerEvent> = queued(&mut alice)
        .into_iter()
        .filter(|e| matches!(e, PeerEvent::NickChanged { .. }))
        .collect();
    assert!(told.is_empty(), "{told:?}");

    // The same claim about a nick alice never met is the author's word
    // alone: kept, but it makes nobody the same person.
    forged.body = "zed".into();
    key.sign_message(&mut forged);
    raw.deliver(DeliverRequest {
        message: Some(forged),
    })
    .await
    .unwrap();
    assert!(!alice.peer.same_person(&nick("zed"), &nick("mallory")));

    alice.stop().await;
    bob.stop().await;
    mallory.stop().await;
    router.stop().await;
}
