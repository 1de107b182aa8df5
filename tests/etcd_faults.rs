//! The etcd registry when etcd fails under it: a member (the leader) dies,
//! etcd goes away and comes back, every router goes away. And the router
//! binary started against an etcd that is not there. All but the last need
//! the `etcd` binary and are `#[ignore = "needs etcd"]`.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parley::identity::{Identity, PublicKey};
use parley::names::{Nick, Room};
use parley::registry::{EventKind, Registry, RegistryError};

use common::etcd::Etcd;

fn id(n: &str) -> Identity {
    use sha2::Digest;
    let seed: [u8; 32] = sha2::Sha256::digest(n.to_ascii_lowercase()).into();
    Identity::from_seed(seed)
}

fn key(n: &str) -> PublicKey {
    id(n).public()
}

fn nick(s: &str) -> Nick {
    Nick::parse(s).unwrap()
}

fn room(s: &str) -> Room {
    Room::parse(s).unwrap()
}

async fn login(r: &dyn Registry, n: &str) -> String {
    r.login(&nick(n), "127.0.0.1:7000", &key(n))
        .await
        .unwrap()
        .token
}

/// With one member of three down (the leader, killed), callers see no
/// errors: every call rides out the election, and sessions kept alive by
/// heartbeats stay alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn killing_the_leader_of_three_loses_no_call_and_no_session() {
    const TTL: Duration = Duration::from_secs(4);
    let mut etcd = Etcd::cluster(3).await;
    let a: Arc<dyn Registry> = Arc::new(etcd.registry(TTL).await);
    let b: Arc<dyn Registry> = Arc::new(etcd.registry(TTL).await);
    let alice = login(&*a, "alice").await;
    let bob = login(&*b, "bob").await;
    a.join(&alice, &room("#rust"), None).await.unwrap();
    b.join(&bob, &room("#rust"), None).await.unwrap();

    let killed = etcd.kill_leader().await;
    let started = Instant::now();
    let mut errors = Vec::new();
    let mut rounds = 0;
    // A couple of leases' worth of traffic through both routers.
    while started.elapsed() < TTL * 2 {
        rounds += 1;
        let r = format!("#r{rounds}");
        let results = [
            a.heartbeat(&alice).await.map(|_| ()),
            b.heartbeat(&bob).await.map(|_| ()),
            b.join(&bob, &room(&r), None).await.map(|_| ()),
            a.join(&alice, &room(&r), None).await.map(|_| ()),
            b.leave(&bob, &room(&r), "").await,
            b.find_user(&bob, &nick("alice")).await.and_then(|u| {
                u.online
                    .map(|_| ())
                    .ok_or_else(|| RegistryError::InvalidArgument("alice offline".into()))
            }),
            // A key of its own each: a key holds at most a few nicks.
            a.login(
                &nick(&format!("u{rounds}")),
                "127.0.0.1:7001",
                &key(&format!("u{rounds}")),
            )
            .await
            .map(|_| ()),
        ];
        errors.extend(results.into_iter().filter_map(Result::err));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        errors.is_empty(),
        "after killing member {killed}: {errors:?}"
    );
    assert!(rounds >= 5, "only {rounds} rounds in {:?}", TTL * 2);
    // Both sessions lived through it, as both routers see.
    for (r, t) in [(&a, &alice), (&b, &bob)] {
        let s = r.find_room(t, &room("#rust")).await.unwrap().unwrap();
        let nicks: Vec<_> = s.members.iter().map(|m| m.nick.as_str()).collect();
        assert_eq!(nicks, ["alice", "bob"]);
    }
    let r = format!("#r{rounds}");
    let s = b.find_room(&bob, &room(&r)).await.unwrap().unwrap();
    assert_eq!(s.members.len(), 1, "{s:?}");
}

/// etcd stopped: calls fail with `Unavailable`, within a bounded time.
/// Started again on the same ports and data: the registry serves again by
/// itself, its watch resumed, and the session that was there is still
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_registry_over_a_stopped_etcd_is_unavailable_then_recovers() {
    const TTL: Duration = Duration::from_secs(3);
    let mut etcd = Etcd::start().await;
    let a: Arc<dyn Registry> = Arc::new(etcd.registry(TTL).await);
    let b: Arc<dyn Registry> = Arc::new(etcd.registry(TTL).await);
    let alice = login(&*a, "alice").await;
    a.join(&alice, &room("#rust"), None).await.unwrap();
    let mut events = a.watch(&alice, &[]).await.unwrap();

    etcd.stop(0);
    let started = Instant::now();
    let (who, go) = (nick("alice"), room("#go"));
    let (beat, found, joined) = tokio::join!(
        a.heartbeat(&alice),
        a.find_user(&alice, &who),
        a.join(&alice, &go, None),
    );
    let took = started.elapsed();
    for r in [beat.map(|_| ()), found.map(|_| ()), joined.map(|_| ())] {
        match r {
            Err(RegistryError::Unavailable(m)) => assert!(m.contains("etcd"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(took < Duration::from_secs(8), "took {took:?} to give up");
    let err = b
        .login(&nick("bob"), "127.0.0.1:7000", &key("bob"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err:?}");

    etcd.restart(0).await;
    // etcd extends every lease when it comes back: alice's session lived.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match a.heartbeat(&alice).await {
            Ok(_) => break,
            Err(RegistryError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("after the restart: {e:?}"),
        }
    }
    // A change made through the other router reaches this router's
    // mirror and alice's watch: the watch of etcd was opened again.
    let bob = login(&*b, "bob").await;
    b.join(&bob, &room("#rust"), None).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event within 5 s")
        .expect("the watch goes on")
        .expect("not lagged");
    assert!(
        matches!(&seen.kind, EventKind::MemberJoined { member, .. } if member.nick == "bob"),
        "{seen:?}"
    );
    let found = a.find_user(&alice, &nick("bob")).await.unwrap();
    assert!(found.online.is_some());
    let s = a.find_room(&alice, &room("#rust")).await.unwrap().unwrap();
    assert_eq!(s.members.len(), 2);
}

/// What the registry binds outlives every router: with all of them gone
/// and every session run out, a fresh one still knows the nick's key and
/// the room's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn bindings_and_owners_outlive_every_router() {
    const TTL: Duration = Duration::from_secs(2);
    let etcd = Etcd::start().await;
    {
        let a = etcd.registry(TTL).await;
        let b = etcd.registry(TTL).await;
        let alice = login(&a, "alice").await;
        let bob = login(&b, "bob").await;
        a.join(&alice, &room("#Rust"), None).await.unwrap();
        let s = b.join(&bob, &room("#rust"), None).await.unwrap();
        assert_eq!(s.owner, "alice");
    }
    // Both routers dropped; their sessions run out in etcd.
    etcd.until_no_sessions(TTL * 3).await;
    let c = etcd.registry(TTL).await;
    let carol = login(&c, "carol").await;
    let found = c.find_user(&carol, &nick("alice")).await.unwrap();
    assert_eq!(found.online, None, "alice's lease ran out");
    assert_eq!(found.key, Some(key("alice")));
    let err = c
        .login(&nick("Alice"), "127.0.0.1:7000", &key("mallory"))
        .await
        .unwrap_err();
    assert_eq!(err, RegistryError::KeyMismatch("Alice".into()));
    // The room shows no members, so it is not listed, but joining it
    // finds its owner.
    assert!(c.find_room(&carol, &room("#rust")).await.unwrap().is_none());
    let s = c.join(&carol, &room("#rust"), None).await.unwrap();
    assert!(!s.created);
    assert_eq!((s.owner.as_str(), s.name.as_str()), ("alice", "#Rust"));
    let err = c.delete_room(&carol, &room("#rust")).await.unwrap_err();
    assert!(
        matches!(&err, RegistryError::NotOwner { owner, .. } if owner == "alice"),
        "{err:?}"
    );
}

/// Writes outside the registry's prefix move etcd's revision without any
/// event the registry watches: a lookup must not wait them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn writes_outside_the_prefix_do_not_stall_lookups() {
    let etcd = Etcd::start().await;
    let a = etcd.registry(Duration::from_secs(5)).await;
    let alice = login(&a, "alice").await;
    let mut other = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap();
    for i in 0..3 {
        other
            .put("/another/app", format!("{i}"), None)
            .await
            .unwrap();
        let started = Instant::now();
        let found = a.find_user(&alice, &nick("alice")).await.unwrap();
        assert!(found.online.is_some());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "lookup {i} took {took:?}");
    }
}

/// A TCP relay to `target` that can cut every connection it carries at
/// once: requests already sent are applied by etcd, their answers lost.
struct Relay {
    url: String,
    cut: tokio::sync::broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(target_url: &str) -> Relay {
        let target = target_url.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (cut, _) = tokio::sync::broadcast::channel(16);
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Relay { url, cut, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.cut.send(());
    }
}

/// Connections to etcd cut again and again under a router: calls are
/// retried, some after etcd applied them and the answer was lost, and
/// every answer is still the one a single run gives (a fresh nick is not
/// "reclaimed", a new room is "created", a member's leave, an owner's
/// delete and a logout succeed; a leave's parting message reaches the
/// room once, and no parting mark is left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn calls_retried_after_a_lost_answer_answer_as_if_run_once() {
    const TTL: Duration = Duration::from_secs(5);
    let etcd = Etcd::start().await;
    let relay = Relay::to(&etcd.members[0].client_url).await;
    let a = parley::registry::EtcdRegistry::connect(std::slice::from_ref(&relay.url), TTL)
        .await
        .unwrap();
    let b = etcd.registry(TTL).await;
    let witness = login(&b, "witness").await;
    let mut seen = b.watch(&witness, &[]).await.unwrap();
    let cut = relay.cut.clone();
    let cutter = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(rand::random_range(20..120))).await;
            let _ = cut.send(());
        }
    });
    for i in 0..10 {
        let n = format!("u{i}");
        let r = room(&format!("#room{i}"));
        let s = a
            .login(&nick(&n), "127.0.0.1:7000", &key(&n))
            .await
            .unwrap();
        assert!(!s.reclaimed, "{n}: a fresh nick reclaimed");
        let made = a.join(&s.token, &r, None).await.unwrap();
        assert!(made.created, "{r}: not created by its first joiner");
        assert_eq!(made.owner, n);
        b.heartbeat(&witness).await.unwrap();
        let joined = b.join(&witness, &r, None).await.unwrap();
        assert!(!joined.created);
        a.leave(&s.token, &r, "see ya").await.unwrap();
        // The witness hears the leave, with its message, through the other
        // registry: the first time the member leaves the room.
        let said = loop {
            let e = tokio::time::timeout(Duration::from_secs(10), seen.next())
                .await
                .expect("the leave within 10 s")
                .expect("the watch goes on")
                .expect("not lagged");
            match e.kind {
                EventKind::MemberLeft {
                    room,
                    member,
                    departure,
                    message,
                } if member.nick == n && room == r.as_str() => break (departure, message),
                _ => continue,
            }
        };
        assert_eq!(
            said,
            (parley::registry::Departure::Left, "see ya".to_string()),
            "{n}"
        );
        a.join(&s.token, &r, None).await.unwrap();
        let again = a
            .login(&nick(&n), "127.0.0.1:7001", &key(&n))
            .await
            .unwrap();
        assert!(again.reclaimed, "{n}: the live session was not taken over");
        a.heartbeat(&again.token).await.unwrap();
        a.delete_room(&again.token, &r).await.unwrap();
        assert!(b.find_room(&witness, &r).await.unwrap().is_none());
        // A logout (its quit mark, then its revocation) run again is one.
        a.logout(&again.token, "bye").await.unwrap();
        assert!(b
            .find_user(&witness, &nick(&n))
            .await
            .unwrap()
            .online
            .is_none());
    }
    cutter.abort();
    // Every mark went with what it spoke for.
    assert_eq!(etcd.keys("part/").await, Vec::<String>::new());
    assert_eq!(etcd.keys("quit/").await, Vec::<String>::new());
}

/// `router --etcd` with etcd not there: one line on stderr naming the
/// endpoints, exit code 1, within a few seconds. Needs no etcd: the
/// endpoints are loopback ports nobody listens on.
#[test]
fn the_router_exits_at_once_when_etcd_is_unreachable() {
    let closed = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let endpoints = format!("http://{},http://{}", closed(), closed());
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_router"))
        .args(["--listen", "127.0.0.1:0", "--etcd", &endpoints])
        .arg("--key-file")
        .arg(dir.path().join("router.key"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the router was still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("router: "), "{stderr}");
    assert!(lines[0].contains("etcd"), "{stderr}");
    assert!(lines[0].contains(&endpoints), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "it must not claim to serve"
    );
}
