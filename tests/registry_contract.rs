//! One contract, two registries: every test here runs against the
//! in-memory registry and against the etcd registry (a real etcd server;
//! those are `#[ignore = "needs etcd"]`). Each fixture has two handles, `a`
//! and `b`: for etcd, two registries over one etcd, as two routers are; for
//! memory, the same registry twice.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parley::identity::{Identity, PublicKey};
use parley::names::{Nick, Room, MAX_PARTING_CHARS};
use parley::registry::{
    Creation, Departure, EventKind, EventStream, MemoryRegistry, Presence, Registry, RegistryError,
    RoomInfo,
};

const TTL: Duration = Duration::from_secs(3);

struct Fixture {
    a: Arc<dyn Registry>,
    b: Arc<dyn Registry>,
    etcd: Option<common::etcd::Etcd>,
}

async fn memory() -> Fixture {
    let r: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(TTL).unwrap());
    Fixture {
        a: r.clone(),
        b: r,
        etcd: None,
    }
}

async fn etcd() -> Fixture {
    let etcd = common::etcd::Etcd::start().await;
    Fixture {
        a: Arc::new(etcd.registry(TTL).await),
        b: Arc::new(etcd.registry(TTL).await),
        etcd: Some(etcd),
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
    a_room_lives_while_it_has_members_and_its_owner_stays,
    a_nick_is_bound_to_its_first_key,
    the_join_that_makes_the_room_names_its_owner,
    a_later_creation_dated_earlier_does_not_replace_the_owner,
    only_the_owner_deletes_and_members_are_told,
    a_watch_carries_only_what_its_session_needs,
    a_lease_without_heartbeats_runs_out,
    a_login_taking_over_a_session_ends_it_as_a_quit,
    parting_messages_reach_the_other_routers_watchers,
    of_racing_logins_with_one_nick_one_key_wins,
    of_racing_creators_of_one_room_one_creates_it,
    a_key_holds_a_bounded_number_of_nicks,
    a_relayed_users_router_is_told_wherever_it_is_seen,
    a_sessions_presence_is_kept_with_it_and_goes_with_it,
);

/// With a binding TTL of a second: the two registries, built for it.
mod binding_ttl {
    use super::*;

    const BINDING_TTL: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn in_memory() {
        let r: Arc<dyn Registry> = Arc::new(
            MemoryRegistry::with(parley::registry::MemoryOptions {
                binding_ttl: BINDING_TTL,
                ..parley::registry::MemoryOptions::new(TTL)
            })
            .unwrap(),
        );
        let f = Fixture {
            a: r.clone(),
            b: r,
            etcd: None,
        };
        a_key_unseen_past_the_binding_ttl_loses_its_nicks(f).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs etcd"]
    async fn over_etcd() {
        let etcd = common::etcd::Etcd::start().await;
        let f = Fixture {
            a: Arc::new(etcd.registry(TTL).await.with_binding_ttl(BINDING_TTL)),
            b: Arc::new(etcd.registry(TTL).await.with_binding_ttl(BINDING_TTL)),
            etcd: Some(etcd),
        };
        a_key_unseen_past_the_binding_ttl_loses_its_nicks(f).await;
    }
}

/// A key holds at most `MAX_NICKS_PER_KEY` nicks; its own stay its own.
async fn a_key_holds_a_bounded_number_of_nicks(f: Fixture) {
    use parley::registry::MAX_NICKS_PER_KEY;
    let k = key("eve");
    for i in 0..MAX_NICKS_PER_KEY {
        let r = if i % 2 == 0 { &f.a } else { &f.b };
        r.login(&nick(&format!("eve{i}")), "127.0.0.1:7000", &k)
            .await
            .unwrap();
    }
    let err =
        f.b.login(&nick("eve-more"), "127.0.0.1:7000", &k)
            .await
            .unwrap_err();
    assert_eq!(err, RegistryError::TooManyNicks(MAX_NICKS_PER_KEY));
    f.a.login(&nick("eve0"), "127.0.0.1:7000", &k)
        .await
        .unwrap();
}

/// A nick whose key goes unseen (no login, no logout) past the binding
/// TTL, held by no session, goes to the next key that claims it.
async fn a_key_unseen_past_the_binding_ttl_loses_its_nicks(f: Fixture) {
    let t = login(&f.a, "alice").await;
    f.a.logout(&t, "").await.unwrap();
    let err =
        f.b.login(&nick("alice"), "127.0.0.1:7000", &key("mallory"))
            .await
            .unwrap_err();
    assert_eq!(err, RegistryError::KeyMismatch("alice".into()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.b.login(&nick("alice"), "127.0.0.1:7000", &key("mallory"))
        .await
        .unwrap();
    // Now mallory's, freshly seen: alice's key is refused in its turn.
    let err =
        f.a.login(&nick("alice"), "127.0.0.1:7000", &key("alice"))
            .await
            .unwrap_err();
    assert_eq!(err, RegistryError::KeyMismatch("alice".into()));
}

fn key(n: &str) -> PublicKey {
    id(n).public()
}

fn id(n: &str) -> Identity {
    let mut seed = [0u8; 32];
    for (i, b) in n.to_ascii_lowercase().bytes().enumerate().take(32) {
        seed[i] = b;
    }
    seed[31] ^= 0x5a;
    Identity::from_seed(seed)
}

fn nick(s: &str) -> Nick {
    Nick::parse(s).unwrap()
}

fn room(s: &str) -> Room {
    Room::parse(s).unwrap()
}

async fn login(r: &Arc<dyn Registry>, n: &str) -> String {
    r.login(&nick(n), "127.0.0.1:7000", &key(n))
        .await
        .unwrap()
        .token
}

/// The next event of `w` (5 s at most).
async fn next(w: &mut EventStream) -> EventKind {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream goes on")
        .expect("not lagged")
        .kind
}

/// Whether `w` stays quiet for a moment.
async fn quiet(w: &mut EventStream) -> Option<EventKind> {
    tokio::time::timeout(Duration::from_millis(300), w.next())
        .await
        .ok()
        .flatten()
        .map(|e| e.unwrap().kind)
}

async fn a_relayed_users_router_is_told_wherever_it_is_seen(f: Fixture) {
    let b = login(&f.b, "bob").await;
    let mut watch = f.b.watch(&b, &[nick("alice")]).await.unwrap();
    // alice follows bob back, so bob's watch carries her login.
    let a =
        f.a.login_with(
            &nick("alice"),
            "10.0.0.7:7000",
            &key("alice"),
            "10.0.0.1:50051",
        )
        .await
        .unwrap()
        .token;
    let _alices = f.a.watch(&a, &[nick("bob")]).await.unwrap();
    let me = f.a.session(&a).await.unwrap();
    assert_eq!(me.relay, "10.0.0.1:50051");
    assert_eq!(me.key, key("alice"));
    // A relay address is checked as an address is.
    let err =
        f.a.login_with(
            &nick("carol"),
            "10.0.0.8:7000",
            &key("carol"),
            "not an address",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::InvalidName(_)), "{err:?}");
    // Every record others read carries it: a lookup, the users, a room.
    let found = f.b.find_user(&b, &nick("alice")).await.unwrap();
    assert_eq!(found.online.unwrap().relay, "10.0.0.1:50051");
    let users = f.b.list_users(&b).await.unwrap();
    let alice = users.iter().find(|m| m.nick == "alice").unwrap();
    assert_eq!(alice.relay, "10.0.0.1:50051");
    f.a.join(&a, &room("#walls"), None).await.unwrap();
    let s = f.b.join(&b, &room("#walls"), None).await.unwrap();
    let alice = s.members.iter().find(|m| m.nick == "alice").unwrap();
    assert_eq!(alice.relay, "10.0.0.1:50051");
    let bob = s.members.iter().find(|m| m.nick == "bob").unwrap();
    assert_eq!(bob.relay, "", "a plain login is reached directly");
    let online = loop {
        if let EventKind::UserOnline(m) = next(&mut watch).await {
            if m.nick == "alice" {
                break m;
            }
        }
    };
    assert_eq!(online.relay, "10.0.0.1:50051");
}

async fn a_room_lives_while_it_has_members_and_its_owner_stays(f: Fixture) {
    let a = login(&f.a, "alice").await;
    let b = login(&f.b, "bob").await;
    let s = f.a.join(&a, &room("#Rust"), None).await.unwrap();
    assert!(s.created);
    assert_eq!((s.owner.as_str(), s.name.as_str()), ("alice", "#Rust"));
    let s = f.b.join(&b, &room("#rust"), None).await.unwrap();
    assert!(!s.created);
    let nicks: Vec<_> = s.members.iter().map(|m| m.nick.as_str()).collect();
    assert_eq!(nicks, ["alice", "bob"]);
    assert_eq!(
        f.b.join(&b, &room("#rust"), None)
            .await
            .unwrap()
            .members
            .len(),
        2
    );
    assert_eq!(
        f.a.list_rooms(&a).await.unwrap(),
        vec![RoomInfo {
            name: "#Rust".into(),
            members: 2,
            owner: "alice".into()
        }]
    );
    f.a.leave(&a, &room("#rust"), "").await.unwrap();
    assert_eq!(f.b.list_rooms(&b).await.unwrap()[0].owner, "alice");
    assert_eq!(
        f.a.leave(&a, &room("#rust"), "").await.unwrap_err(),
        RegistryError::NotMember("#rust".into())
    );
    f.b.leave(&b, &room("#rust"), "").await.unwrap();
    assert!(f.a.find_room(&a, &room("#rust")).await.unwrap().is_none());
    assert!(f.a.list_rooms(&a).await.unwrap().is_empty());
}

async fn a_nick_is_bound_to_its_first_key(f: Fixture) {
    let first =
        f.a.login(&nick("alice"), "127.0.0.1:7001", &key("alice"))
            .await
            .unwrap();
    assert!(!first.reclaimed);
    let other =
        f.b.login(&nick("Alice"), "127.0.0.1:7002", &key("mallory"))
            .await
            .unwrap_err();
    assert_eq!(other, RegistryError::KeyMismatch("Alice".into()));
    // Bound while offline too.
    f.a.logout(&first.token, "").await.unwrap();
    let other =
        f.b.login(&nick("alice"), "127.0.0.1:7002", &key("mallory"))
            .await
            .unwrap_err();
    assert!(matches!(other, RegistryError::KeyMismatch(_)), "{other:?}");
    // The same key comes back, and takes over a live session.
    let back =
        f.b.login(&nick("alice"), "127.0.0.1:7003", &key("alice"))
            .await
            .unwrap();
    let again =
        f.a.login(&nick("alice"), "127.0.0.1:7004", &key("alice"))
            .await
            .unwrap();
    assert!(again.reclaimed);
    assert_eq!(
        f.a.heartbeat(&back.token).await.unwrap_err(),
        RegistryError::Unauthenticated
    );
    let found = f.b.find_user(&again.token, &nick("ALICE")).await.unwrap();
    assert_eq!(found.online.unwrap().address, "127.0.0.1:7004");
    assert_eq!(found.key, Some(key("alice")));
    let never = f.b.find_user(&again.token, &nick("nobody")).await.unwrap();
    assert_eq!((never.online, never.key), (None, None));
}

fn creation(owner: &str, sent_at_ms: i64) -> Creation {
    Creation {
        owner: owner.into(),
        key: key(owner),
        order: (sent_at_ms, owner.to_ascii_lowercase(), 1, 1),
    }
}

async fn the_join_that_makes_the_room_names_its_owner(f: Fixture) {
    // Bob makes the record, showing alice's creation event (a restarted
    // router, or a new etcd): alice owns the room.
    let b = login(&f.a, "bob").await;
    let s =
        f.a.join(&b, &room("#rust"), Some(&creation("alice", 100)))
            .await
            .unwrap();
    assert!(s.created);
    assert_eq!(s.owner, "alice");
    // A later join, through the other router, cannot name another.
    let c = login(&f.b, "carol").await;
    let s =
        f.b.join(&c, &room("#rust"), Some(&creation("carol", 200)))
            .await
            .unwrap();
    assert_eq!(s.owner, "alice");
    // Made with no event shown, or with one whose author is bound to
    // another key: the caller owns it.
    let s = f.b.join(&c, &room("#go"), None).await.unwrap();
    assert_eq!(s.owner, "carol");
    let forged = Creation {
        key: key("mallory"),
        ..creation("bob", 10)
    };
    let s = f.a.join(&c, &room("#c"), Some(&forged)).await.unwrap();
    assert_eq!(s.owner, "carol");
    let err = f.a.delete_room(&b, &room("#c")).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotOwner { .. }), "{err:?}");
}

/// Issue 23, attack 4: a member signs a creation event of her own, dated
/// before the real one, and shows it at a join. The owner stays, on both
/// routers, and she cannot delete the room.
async fn a_later_creation_dated_earlier_does_not_replace_the_owner(f: Fixture) {
    let a = login(&f.a, "alice").await;
    let s =
        f.a.join(&a, &room("#rust"), Some(&creation("alice", 100)))
            .await
            .unwrap();
    assert!(s.created);
    let e = login(&f.b, "eve").await;
    let s =
        f.b.join(&e, &room("#rust"), Some(&creation("eve", 50)))
            .await
            .unwrap();
    assert!(!s.created);
    assert_eq!(s.owner, "alice");
    let d = login(&f.a, "dave").await;
    let s =
        f.a.join(&d, &room("#rust"), Some(&creation("eve", i64::MIN)))
            .await
            .unwrap();
    assert_eq!(s.owner, "alice");
    for r in [&f.a, &f.b] {
        let found = r.find_room(&e, &room("#rust")).await.unwrap().unwrap();
        assert_eq!(found.owner, "alice");
    }
    let err = f.b.delete_room(&e, &room("#rust")).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::NotOwner { ref owner, .. } if owner == "alice"),
        "{err:?}"
    );
    f.a.delete_room(&a, &room("#rust")).await.unwrap();
    assert!(f.b.find_room(&e, &room("#rust")).await.unwrap().is_none());
}

async fn only_the_owner_deletes_and_members_are_told(f: Fixture) {
    let a = login(&f.a, "alice").await;
    let b = login(&f.b, "bob").await;
    f.a.join(&a, &room("#rust"), None).await.unwrap();
    f.b.join(&b, &room("#rust"), None).await.unwrap();
    let mut events = f.b.watch(&b, &[]).await.unwrap();
    let err = f.b.delete_room(&b, &room("#rust")).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotOwner { .. }), "{err:?}");
    f.a.delete_room(&a, &room("#RUST")).await.unwrap();
    assert!(f.b.find_room(&b, &room("#rust")).await.unwrap().is_none());
    assert_eq!(
        next(&mut events).await,
        EventKind::RoomDeleted {
            room: "#rust".into(),
            by: "alice".into()
        }
    );
    assert_eq!(
        f.b.leave(&b, &room("#rust"), "").await.unwrap_err(),
        RegistryError::NotMember("#rust".into())
    );
}

async fn a_watch_carries_only_what_its_session_needs(f: Fixture) {
    let a = login(&f.a, "alice").await;
    f.a.join(&a, &room("#rust"), None).await.unwrap();
    let mut w = f.a.watch(&a, &[nick("Dave")]).await.unwrap();
    // Carol, on the other router, shares nothing with alice.
    let c = login(&f.b, "carol").await;
    f.b.join(&c, &room("#go"), None).await.unwrap();
    assert_eq!(quiet(&mut w).await, None);
    // Bob joins alice's room through the other router.
    let b = login(&f.b, "bob").await;
    f.b.join(&b, &room("#rust"), None).await.unwrap();
    match next(&mut w).await {
        EventKind::MemberJoined { room, member } => {
            assert_eq!((room.as_str(), member.nick.as_str()), ("#rust", "bob"));
        }
        other => panic!("{other:?}"),
    }
    // Dave shares no room but is followed, and follows alice back (a
    // private partner), through the other router: his watch naming her
    // tells her he is online (his login came before it).
    let d = login(&f.b, "dave").await;
    drop(f.b.watch(&d, &[nick("alice")]).await.unwrap());
    match next(&mut w).await {
        EventKind::UserOnline(m) => assert_eq!(m.nick, "dave"),
        other => panic!("{other:?}"),
    }
    f.b.logout(&d, "").await.unwrap();
    match next(&mut w).await {
        EventKind::UserOffline(m) => assert_eq!(m.nick, "dave"),
        other => panic!("{other:?}"),
    }
    // Bob leaves the room and comes back: a leave, not a quit.
    f.b.leave(&b, &room("#rust"), "").await.unwrap();
    let e = next(&mut w).await;
    assert!(
        matches!(&e, EventKind::MemberLeft { member, departure: Departure::Left, .. } if member.nick == "bob"),
        "{e:?}"
    );
    f.b.join(&b, &room("#rust"), None).await.unwrap();
    assert!(
        matches!(next(&mut w).await, EventKind::MemberJoined { member, .. } if member.nick == "bob")
    );
    // Bob logs out: he leaves the room as a quit, then goes offline.
    f.b.logout(&b, "").await.unwrap();
    let mut seen = vec![next(&mut w).await, next(&mut w).await];
    seen.sort_by_key(|k| matches!(k, EventKind::UserOffline(_)));
    assert!(
        matches!(&seen[0], EventKind::MemberLeft { member, departure: Departure::Quit, .. } if member.nick == "bob"),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[1], EventKind::UserOffline(m) if m.nick == "bob"),
        "{seen:?}"
    );
    f.b.logout(&c, "").await.unwrap();
    assert_eq!(quiet(&mut w).await, None);
    // Alice's own end ends her stream.
    f.a.logout(&a, "").await.unwrap();
    let e = next(&mut w).await;
    assert!(
        matches!(&e, EventKind::MemberLeft { member, departure: Departure::Quit, .. } if member.nick == "alice"),
        "{e:?}"
    );
    assert!(matches!(next(&mut w).await, EventKind::UserOffline(m) if m.nick == "alice"));
    let end = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
}

async fn a_lease_without_heartbeats_runs_out(f: Fixture) {
    let a = login(&f.a, "alice").await;
    let b = login(&f.b, "bob").await;
    f.a.join(&a, &room("#r"), None).await.unwrap();
    f.b.join(&b, &room("#r"), None).await.unwrap();
    let mut w = f.a.watch(&a, &[]).await.unwrap();
    // Alice beats; bob does not.
    let started = tokio::time::Instant::now();
    let deadline = started + TTL * 3;
    let gone = loop {
        f.a.heartbeat(&a).await.unwrap();
        let bob = f.a.find_user(&a, &nick("bob")).await.unwrap();
        if bob.online.is_none() {
            break started.elapsed();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        gone >= TTL - Duration::from_millis(500),
        "gone after {gone:?}"
    );
    assert_eq!(
        f.b.heartbeat(&b).await.unwrap_err(),
        RegistryError::Unauthenticated
    );
    // A lease that ran out is a timeout, not a quit.
    let mut seen = vec![next(&mut w).await, next(&mut w).await];
    seen.sort_by_key(|k| matches!(k, EventKind::UserOffline(_)));
    assert!(
        matches!(&seen[0], EventKind::MemberLeft { member, departure: Departure::TimedOut, message, .. } if member.nick == "bob" && message.is_empty()),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[1], EventKind::UserOffline(m) if m.nick == "bob"),
        "{seen:?}"
    );
    // The binding outlives the lease.
    assert_eq!(
        f.a.find_user(&a, &nick("bob")).await.unwrap().key,
        Some(key("bob"))
    );
}

async fn a_login_taking_over_a_session_ends_it_as_a_quit(f: Fixture) {
    let a = login(&f.a, "alice").await;
    let old = login(&f.b, "bob").await;
    f.a.join(&a, &room("#r"), None).await.unwrap();
    f.b.join(&old, &room("#r"), None).await.unwrap();
    let mut w = f.a.watch(&a, &[]).await.unwrap();
    // Bob's key logs in again through the other router: his old session
    // ends at once, and that is no timeout.
    let new =
        f.a.login(&nick("bob"), "127.0.0.1:7100", &key("bob"))
            .await
            .unwrap();
    assert!(new.reclaimed);
    let mut seen = vec![next(&mut w).await, next(&mut w).await];
    seen.sort_by_key(|k| matches!(k, EventKind::UserOffline(_)));
    assert!(
        matches!(&seen[0], EventKind::MemberLeft { member, departure: Departure::Quit, message, .. } if member.nick == "bob" && member.address == "127.0.0.1:7000" && message.is_empty()),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[1], EventKind::UserOffline(m) if m.nick == "bob"),
        "{seen:?}"
    );
    assert_eq!(
        f.b.heartbeat(&old).await.unwrap_err(),
        RegistryError::Unauthenticated
    );
}

async fn parting_messages_reach_the_other_routers_watchers(f: Fixture) {
    let a = login(&f.a, "alice").await;
    let b = login(&f.b, "bob").await;
    for r in ["#rust", "#go"] {
        f.a.join(&a, &room(r), None).await.unwrap();
        f.b.join(&b, &room(r), None).await.unwrap();
    }
    let mut w = f.a.watch(&a, &[]).await.unwrap();
    let left = |e: &EventKind| match e {
        EventKind::MemberLeft {
            room,
            member,
            departure,
            message,
        } => Some((
            room.clone(),
            member.nick.clone(),
            *departure,
            message.clone(),
        )),
        _ => None,
    };
    let said =
        |r: &str, d: Departure, m: &str| Some((r.to_string(), "bob".to_string(), d, m.to_string()));
    // Bob leaves through the other router: alice hears what he said. Then
    // he comes back and goes again, saying the longest message there is,
    // then nothing: nothing of an earlier leave is left over.
    let longest = "é".repeat(MAX_PARTING_CHARS);
    for message in ["see ya", longest.as_str(), ""] {
        f.b.leave(&b, &room("#go"), message).await.unwrap();
        let e = next(&mut w).await;
        assert_eq!(left(&e), said("#go", Departure::Left, message), "{e:?}");
        f.b.join(&b, &room("#go"), None).await.unwrap();
        let e = next(&mut w).await;
        assert!(
            matches!(&e, EventKind::MemberJoined { member, .. } if member.nick == "bob"),
            "{e:?}"
        );
    }
    // Bad parting messages are refused, and nothing changes: bob is still
    // in both rooms, still online, and alice hears nothing.
    let too_long = "x".repeat(MAX_PARTING_CHARS + 1);
    for bad in [too_long.as_str(), "bye\u{1b}[2J", "two\nlines"] {
        let err = f.b.leave(&b, &room("#rust"), bad).await.unwrap_err();
        assert!(matches!(err, RegistryError::InvalidName(_)), "{err:?}");
        let err = f.b.logout(&b, bad).await.unwrap_err();
        assert!(matches!(err, RegistryError::InvalidName(_)), "{err:?}");
    }
    assert_eq!(quiet(&mut w).await, None);
    f.b.heartbeat(&b).await.unwrap();
    for r in ["#rust", "#go"] {
        let s = f.a.find_room(&a, &room(r)).await.unwrap().unwrap();
        let nicks: Vec<_> = s.members.iter().map(|m| m.nick.as_str()).collect();
        assert_eq!(nicks, ["alice", "bob"], "{r}");
    }
    // Bob logs out through the other router: a quit in each room, saying
    // what he said, then offline.
    f.b.logout(&b, "bye all").await.unwrap();
    let mut seen = vec![next(&mut w).await, next(&mut w).await, next(&mut w).await];
    seen.sort_by_key(|k| (matches!(k, EventKind::UserOffline(_)), left(k).map(|l| l.0)));
    assert_eq!(
        left(&seen[0]),
        said("#go", Departure::Quit, "bye all"),
        "{seen:?}"
    );
    assert_eq!(
        left(&seen[1]),
        said("#rust", Departure::Quit, "bye all"),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[2], EventKind::UserOffline(m) if m.nick == "bob"),
        "{seen:?}"
    );
    // No mark outlives its leave or its session.
    if let Some(etcd) = &f.etcd {
        assert_eq!(etcd.keys("part/").await, Vec::<String>::new());
        assert_eq!(etcd.keys("quit/").await, Vec::<String>::new());
    }
}

async fn of_racing_logins_with_one_nick_one_key_wins(f: Fixture) {
    let tries = (0..8).map(|i| {
        let r = if i % 2 == 0 { f.a.clone() } else { f.b.clone() };
        async move {
            r.login(&nick("race"), "127.0.0.1:7000", &key(&format!("k{i}")))
                .await
        }
    });
    let results = futures::future::join_all(tries).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, RegistryError::KeyMismatch(_))));
}

async fn of_racing_creators_of_one_room_one_creates_it(f: Fixture) {
    let mut tokens = Vec::new();
    for i in 0..8 {
        let r = if i % 2 == 0 { &f.a } else { &f.b };
        tokens.push((r.clone(), login(r, &format!("u{i}")).await));
    }
    let joins = tokens
        .iter()
        .map(|(r, t)| async move { r.join(t, &room("#race"), None).await.unwrap() });
    let snaps = futures::future::join_all(joins).await;
    assert_eq!(snaps.iter().filter(|s| s.created).count(), 1);
    let owners: std::collections::HashSet<_> = snaps.iter().map(|s| s.owner.clone()).collect();
    assert_eq!(owners.len(), 1, "{owners:?}");
    let (r, t) = &tokens[0];
    let s = r.find_room(t, &room("#race")).await.unwrap().unwrap();
    assert_eq!(s.members.len(), 8);
}

/// `/away` and idle time: told through one router, seen through the other;
/// a bad message changes nothing; a new session of the key starts with
/// none; a logout takes it away.
async fn a_sessions_presence_is_kept_with_it_and_goes_with_it(f: Fixture) {
    let a = login(&f.a, "alice").await;
    let b = login(&f.b, "bob").await;
    f.b.join(&b, &room("#r"), None).await.unwrap();
    f.b.join(&b, &room("#Go"), None).await.unwrap();
    let none = f.a.user_presence(&a, &nick("BOB")).await.unwrap().unwrap();
    assert_eq!(none.presence, Presence::default());
    assert_eq!(none.rooms, ["#Go", "#r"]);

    let lunch = Presence {
        away: "gone to lunch".into(),
        active_ms: Some(1_700_000_000_000),
    };
    f.b.set_presence(&b, &lunch).await.unwrap();
    let seen = f.a.user_presence(&a, &nick("bob")).await.unwrap().unwrap();
    assert_eq!(seen.presence, lunch);
    assert_eq!(
        f.a.away_users(&a).await.unwrap(),
        [("bob".to_string(), "gone to lunch".to_string())]
    );

    let long = Presence {
        away: "x".repeat(MAX_PARTING_CHARS + 1),
        active_ms: None,
    };
    assert!(matches!(
        f.b.set_presence(&b, &long).await,
        Err(RegistryError::InvalidName(_))
    ));
    let seen = f.a.user_presence(&a, &nick("bob")).await.unwrap().unwrap();
    assert_eq!(seen.presence, lunch, "a refused presence changes nothing");
    assert_eq!(
        f.b.set_presence("no-such-token", &lunch).await,
        Err(RegistryError::Unauthenticated)
    );

    // A new session of bob's key: the old one's presence went with it.
    let b2 =
        f.a.login(&nick("bob"), "127.0.0.1:7100", &key("bob"))
            .await
            .unwrap();
    let fresh =
        f.b.user_presence(&b2.token, &nick("bob"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(fresh.presence, Presence::default());
    assert!(f.a.away_users(&a).await.unwrap().is_empty());
    f.a.set_presence(&b2.token, &lunch).await.unwrap();
    f.a.logout(&b2.token, "").await.unwrap();
    assert_eq!(f.b.user_presence(&a, &nick("bob")).await.unwrap(), None);
    assert!(f.b.away_users(&a).await.unwrap().is_empty());
}
