//! Peers behind walls (issue 24): real `router` and `peer` processes in
//! network namespaces, some hosts behind an nftables wall that drops
//! inbound connections as a home router does (tests/common/netns.rs). A
//! walled peer cannot be dialled; it reaches the others, and they it,
//! through a relay circuit its router keeps for it.
//!
//! Every test needs root, `ip` and `nft`: `#[ignore = "needs root and
//! netns"]`; the failover test also needs the `etcd` binary. Each test
//! first proves its walls hold, so none passes through a leak.

mod common;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use common::netns::{etcd_in, peer_in, router_in, Lan, Wall::*};
use common::Proc;
use tokio::time::Instant;

/// How soon a line must arrive once sent.
const WITHIN: Duration = Duration::from_secs(5);
/// How long a whole test may take: each wait in it is bounded, and so is
/// their sum.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Runs a test's body, failing the test if it takes over `limit`. The
/// body owns the Lan and the processes: on a timeout they are dropped, so
/// killed and removed.
async fn bounded(limit: Duration, body: impl Future<Output = ()>) {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("the test took over {limit:?}"));
}

/// A peer's nick and process.
struct P {
    nick: &'static str,
    proc: Proc,
}

/// Starts `nick` inside `host` on the data directory `root/nick`; checks
/// whether the router found it reachable (false behind a wall).
async fn peer(
    lan: &Lan,
    host: &str,
    routers: &str,
    nick: &'static str,
    root: &Path,
    reachable: bool,
) -> P {
    let (proc, ready) = peer_in(lan, host, routers, nick, &root.join(nick), &[]).await;
    assert_eq!(
        ready["reachable"],
        serde_json::json!(reachable),
        "{nick} on {host}: {ready}"
    );
    P { nick, proc }
}

/// The first event of `p`'s that `is_it` takes, waiting at most `within`:
/// it may have come already, skipped while the test waited for another
/// (a message arriving while its reader waited for its own `sent`). The
/// events passed over stay in `skipped`. `what` names it in the failure.
async fn take(
    p: &mut P,
    is_it: impl Fn(&serde_json::Value) -> bool,
    within: Duration,
    what: &str,
) -> serde_json::Value {
    if let Some(i) = p.proc.skipped.iter().position(&is_it) {
        return p.proc.skipped.remove(i);
    }
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Any type: is_it decides.
        match p.proc.event_within_any(left).await {
            Some(e) if is_it(&e) => return e,
            Some(e) => p.proc.skipped.push(e),
            None => panic!(
                "{}: {what} not within {within:?}; seen meanwhile: {:?}",
                p.nick, p.proc.skipped
            ),
        }
    }
}

/// Waits (at most `within`) for the message carrying `body` to reach `to`;
/// checks it is in `conv`, from `from`.
async fn arrives(to: &mut P, conv: &str, from: &str, body: &str, within: Duration) {
    let what = format!("{body:?} from {from}");
    let is_it = |e: &serde_json::Value| e["type"] == "message" && e["body"] == body;
    let m = take(to, is_it, within, &what).await;
    assert_eq!(
        (m["conversation"].as_str(), m["from"].as_str()),
        (Some(conv), Some(from)),
        "{}: {m}",
        to.nick
    );
}

/// Waits (at most `within`) for `p`'s next `sent` event, for `conv`: the
/// line is stored, and owed to whoever did not get it yet.
async fn stored(p: &mut P, conv: &str, within: Duration) -> serde_json::Value {
    let sent = take(p, |e| e["type"] == "sent", within, "a sent event").await;
    assert_eq!(sent["conversation"], conv, "{}: {sent}", p.nick);
    sent
}

/// `from` writes `body` privately to `to`; it arrives within `within`.
async fn private(from: &mut P, to: &mut P, body: &str, within: Duration) {
    let started = Instant::now();
    from.proc.send(&format!("/msg {} {body}", to.nick)).await;
    stored(from, &format!("@{}", to.nick), within).await;
    let left = within.saturating_sub(started.elapsed());
    arrives(to, &format!("@{}", from.nick), from.nick, body, left).await;
}

/// `p` joins `room` (within [`WITHIN`]).
async fn join(p: &mut P, room: &str) {
    p.proc.send(&format!("/join {room}")).await;
    let j = take(p, |e| e["type"] == "joined", WITHIN, "joined").await;
    assert_eq!(j["room"], room, "{}: {j}", p.nick);
}

/// `from` says `body` in `room`; it reaches `to` within `within`.
async fn say(from: &mut P, to: &mut P, room: &str, body: &str, within: Duration) {
    let started = Instant::now();
    // A plain line goes to the current conversation: make it the room.
    from.proc.send(&format!("/switch {room}")).await;
    from.proc.send(body).await;
    stored(from, room, within).await;
    let left = within.saturating_sub(started.elapsed());
    arrives(to, room, from.nick, body, left).await;
}

/// Both sides hold the same private conversation, in the same order.
async fn same_private_history(a: &mut P, b: &mut P) -> Vec<(String, u64, String)> {
    let ha = a.proc.history(&format!("@{}", b.nick)).await;
    let hb = b.proc.history(&format!("@{}", a.nick)).await;
    assert_eq!(ha, hb, "{} and {} disagree", a.nick, b.nick);
    ha
}

#[test]
#[ignore = "needs root and netns"]
fn the_wall_drops_inbound_and_lets_outbound_through() {
    let lan = Lan::new(&[
        ("srv", Open),
        ("home", Walled),
        ("cafe", Open),
        ("flat", Walled),
    ]);
    lan.assert_walled("home", "srv");
    lan.assert_walled("flat", "cafe");
    lan.assert_walled("flat", "srv");
    lan.assert_open("srv", "home");
    lan.assert_open("cafe", "srv");
    lan.assert_open("srv", "flat");
    assert_ne!(lan.ip("home"), lan.ip("flat"));
    // The check is no formality: a wall taken down fails it.
    lan.remove_wall("flat");
    let leak = std::panic::catch_unwind(|| lan.assert_walled("flat", "srv"));
    assert!(leak.is_err(), "a missing wall went unnoticed");
    lan.assert_open("flat", "srv");

    let gone = |names: &[String]| {
        names
            .iter()
            .all(|ns| !Path::new(&format!("/var/run/netns/{ns}")).exists())
    };
    let names = lan.namespaces();
    assert_eq!(names.len(), 5, "a hub and four hosts: {names:?}");
    assert!(names
        .iter()
        .all(|ns| Path::new(&format!("/var/run/netns/{ns}")).exists()));
    drop(lan);
    assert!(gone(&names), "left behind: {names:?}");

    // A test that panics leaves nothing behind either.
    let mut names = Vec::new();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lan = Lan::new(&[("srv", Open), ("home", Walled)]);
        names = lan.namespaces();
        panic!("a test failing on purpose, with its Lan up");
    }));
    assert!(panicked.is_err());
    assert_eq!(names.len(), 3);
    assert!(gone(&names), "left behind by a panic: {names:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and netns"]
async fn walled_and_open_peers_talk_both_ways() {
    bounded(TEST_LIMIT, async {
        let lan = Lan::new(&[("srv", Open), ("home", Walled), ("office", Open)]);
        lan.assert_walled("home", "srv");
        lan.assert_open("office", "srv");
        let tmp = tempfile::tempdir().unwrap();
        let (_router, addr) = router_in(&lan, "srv", &[]).await;
        let mut alice = peer(&lan, "home", &addr, "alice", tmp.path(), false).await;
        let mut bob = peer(&lan, "office", &addr, "bob", tmp.path(), true).await;

        // First contact from the open side: bob cannot dial alice.
        private(&mut bob, &mut alice, "hello from the open side", WITHIN).await;
        private(
            &mut alice,
            &mut bob,
            "hello back from behind the wall",
            WITHIN,
        )
        .await;

        // A fresh pair, first contact from the walled side.
        let mut carol = peer(&lan, "home", &addr, "carol", tmp.path(), false).await;
        let mut dave = peer(&lan, "office", &addr, "dave", tmp.path(), true).await;
        private(&mut carol, &mut dave, "hello from behind the wall", WITHIN).await;
        private(
            &mut dave,
            &mut carol,
            "hello back from the open side",
            WITHIN,
        )
        .await;

        // A room with a walled and an open member.
        join(&mut alice, "#r").await;
        join(&mut bob, "#r").await;
        say(
            &mut alice,
            &mut bob,
            "#r",
            "in #r from behind the wall",
            WITHIN,
        )
        .await;
        say(
            &mut bob,
            &mut alice,
            "#r",
            "in #r from the open side",
            WITHIN,
        )
        .await;
        same_private_history(&mut alice, &mut bob).await;
        same_private_history(&mut carol, &mut dave).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and netns"]
async fn two_walled_peers_talk() {
    bounded(TEST_LIMIT, async {
        let lan = Lan::new(&[("srv", Open), ("home1", Walled), ("home2", Walled)]);
        lan.assert_walled("home1", "srv");
        lan.assert_walled("home2", "srv");
        let tmp = tempfile::tempdir().unwrap();
        let (_router, addr) = router_in(&lan, "srv", &[]).await;
        let mut alice = peer(&lan, "home1", &addr, "alice", tmp.path(), false).await;
        let mut carol = peer(&lan, "home2", &addr, "carol", tmp.path(), false).await;

        private(&mut alice, &mut carol, "hello carol, wall to wall", WITHIN).await;
        private(&mut carol, &mut alice, "hello alice, wall to wall", WITHIN).await;
        join(&mut alice, "#r").await;
        join(&mut carol, "#r").await;
        say(&mut alice, &mut carol, "#r", "in #r from alice", WITHIN).await;
        say(&mut carol, &mut alice, "#r", "in #r from carol", WITHIN).await;
        same_private_history(&mut alice, &mut carol).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and netns"]
async fn a_walled_peer_restarts_on_its_data_directory() {
    bounded(TEST_LIMIT, async {
        let lan = Lan::new(&[("srv", Open), ("home", Walled), ("office", Open)]);
        lan.assert_walled("home", "srv");
        let tmp = tempfile::tempdir().unwrap();
        let (_router, addr) = router_in(&lan, "srv", &[]).await;
        let mut alice = peer(&lan, "home", &addr, "alice", tmp.path(), false).await;
        let mut bob = peer(&lan, "office", &addr, "bob", tmp.path(), true).await;
        private(&mut bob, &mut alice, "before the restart", WITHIN).await;
        private(&mut alice, &mut bob, "before the restart, back", WITHIN).await;

        alice.proc.terminate().await;
        // Written while she is away: stored at bob's, owed to her.
        bob.proc.send("/msg alice while you were away").await;
        stored(&mut bob, "@alice", WITHIN).await;

        // Back on the same data directory, on a new port, still walled.
        let mut alice = peer(&lan, "home", &addr, "alice", tmp.path(), false).await;
        // The owed line comes with her return (the outbox, not a new
        // send: allowed more than a fresh line).
        arrives(&mut alice, "@bob", "bob", "while you were away", WITHIN * 2).await;
        private(&mut alice, &mut bob, "after the restart", WITHIN).await;
        private(&mut bob, &mut alice, "after the restart, back", WITHIN).await;

        let h = same_private_history(&mut alice, &mut bob).await;
        let bodies: Vec<&str> = h.iter().map(|(_, _, b)| b.as_str()).collect();
        assert_eq!(
            bodies,
            [
                "before the restart",
                "before the restart, back",
                "while you were away",
                "after the restart",
                "after the restart, back"
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and netns"]
async fn the_relay_router_dies_and_the_peers_fail_over() {
    /// How long failover may take: the dead router's lease (3 s) runs
    /// out, the peers log in at the other and reserve a relay there.
    const FAILOVER: Duration = Duration::from_secs(20);
    // etcd's start and the failover on top of the usual waits.
    bounded(TEST_LIMIT + FAILOVER, async {
        let lan = Lan::new(&[
            ("db", Open),
            ("r1", Open),
            ("r2", Open),
            ("home1", Walled),
            ("home2", Walled),
        ]);
        lan.assert_walled("home1", "r1");
        lan.assert_walled("home2", "r1");
        let tmp = tempfile::tempdir().unwrap();
        let etcd = etcd_in(&lan, "db").await;
        let shared = ["--etcd", etcd.url.as_str(), "--lease-ttl", "3"];
        let (r1, a1) = router_in(&lan, "r1", &shared).await;
        let (_r2, a2) = router_in(&lan, "r2", &shared).await;
        let routers = format!("{a1},{a2}");
        let mut alice = peer(&lan, "home1", &routers, "alice", tmp.path(), false).await;
        let mut carol = peer(&lan, "home2", &routers, "carol", tmp.path(), false).await;
        private(&mut alice, &mut carol, "before, from alice", WITHIN).await;
        private(&mut carol, &mut alice, "before, from carol", WITHIN).await;

        // Both logged in at r1, the first, which relays for them.
        r1.kill9().await;
        let killed = Instant::now();
        alice.proc.send("/msg carol during, from alice").await;
        carol.proc.send("/msg alice during, from carol").await;
        // Acknowledged: each stored by its writer.
        stored(&mut alice, "@carol", FAILOVER).await;
        stored(&mut carol, "@alice", FAILOVER).await;
        let left = FAILOVER.saturating_sub(killed.elapsed());
        arrives(&mut carol, "@alice", "alice", "during, from alice", left).await;
        let left = FAILOVER.saturating_sub(killed.elapsed());
        arrives(&mut alice, "@carol", "carol", "during, from carol", left).await;

        // Settled on r2: lines go as quickly as before.
        private(&mut alice, &mut carol, "after, from alice", WITHIN).await;
        private(&mut carol, &mut alice, "after, from carol", WITHIN).await;

        let h = same_private_history(&mut alice, &mut carol).await;
        let mut bodies: Vec<&str> = h.iter().map(|(_, _, b)| b.as_str()).collect();
        // The two lines written during the failover may be in either order.
        bodies[2..4].sort_unstable();
        assert_eq!(
            bodies,
            [
                "before, from alice",
                "before, from carol",
                "during, from alice",
                "during, from carol",
                "after, from alice",
                "after, from carol"
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and netns"]
async fn a_circuit_past_its_byte_limit_is_closed_and_nothing_is_lost() {
    /// Lines sent, and the size of each: 1.35 MB through circuits of the
    /// smallest limit a router takes, 1 MiB.
    const LINES: usize = 150;
    const SIZE: usize = 9000;
    bounded(TEST_LIMIT, async {
        let lan = Lan::new(&[("srv", Open), ("home1", Walled), ("home2", Walled)]);
        lan.assert_walled("home1", "srv");
        lan.assert_walled("home2", "srv");
        let tmp = tempfile::tempdir().unwrap();
        let (_router, addr) = router_in(&lan, "srv", &["--relay-circuit-bytes", "1048576"]).await;
        let mut alice = peer(&lan, "home1", &addr, "alice", tmp.path(), false).await;
        let mut carol = peer(&lan, "home2", &addr, "carol", tmp.path(), false).await;

        let sent: Vec<String> = (0..LINES)
            .map(|i| {
                let head = format!("line {i:03} ");
                format!("{head}{}", "x".repeat(SIZE - head.len()))
            })
            .collect();
        for body in &sent {
            alice.proc.send(&format!("/msg carol {body}")).await;
        }
        // Every line once, in order, while circuits are closed and opened.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < LINES {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(m) = carol.proc.event_within("message", left).await else {
                panic!("carol got {} of {LINES} lines within 30 s", got.len());
            };
            assert_eq!(m["from"], "alice", "{m}");
            got.push(m["body"].as_str().unwrap().to_owned());
        }
        assert_eq!(got, sent, "every line exactly once, in order");
        // And nothing more: no line comes a second time.
        let again = carol
            .proc
            .event_within("message", Duration::from_secs(1))
            .await;
        assert!(again.is_none(), "a line came again: {again:?}");
        let h = carol.proc.history("@alice").await;
        let bodies: Vec<String> = h.into_iter().map(|(_, _, b)| b).collect();
        assert_eq!(bodies, sent);
    })
    .await;
}
