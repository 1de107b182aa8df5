//! The real binaries: a `router` process and `peer` processes in `--json`
//! mode, driven over pipes as a script would.

mod common;

use std::time::{Duration, Instant};

use common::{Proc, Proxy};

#[tokio::test]
async fn private_chat_between_peer_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_router, addr) = Proc::router(10).await;
    let mut a = Proc::peer(&addr, "alice", &tmp.path().join("a"), &[]).await;
    let mut b = Proc::peer(&addr, "bob", &tmp.path().join("b"), &[]).await;

    a.send("/msg bob hello bob").await;
    let sent = a.event("sent").await;
    assert_eq!(sent["conversation"], "@bob");
    assert_eq!(sent["author_seq"], 1);
    assert_eq!(sent["delivered"], serde_json::json!(["bob"]));
    assert_eq!(sent["pending"], serde_json::json!([]));
    let m = b.event("message").await;
    assert_eq!(m["conversation"], "@alice");
    assert_eq!(m["from"], "alice");
    assert_eq!(m["body"], "hello bob");
    assert_eq!(m["late"], false);

    b.send("/query alice").await;
    b.send("hi   alice, spaces kept").await;
    let m = a.event("message").await;
    assert_eq!(m["conversation"], "@bob");
    assert_eq!(m["body"], "hi   alice, spaces kept");

    a.send("/history @bob").await;
    let h = a.event("history").await;
    let bodies: Vec<_> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, ["hello bob", "hi   alice, spaces kept"]);

    // Bad input: an error line, and the peer carries on.
    a.send("/nonsense").await;
    let e = a.event("error").await;
    assert!(e["message"].as_str().unwrap().contains("/help"));
    a.send(&format!("/msg bob {}", "x".repeat(10_001))).await;
    let e = a.event("error").await;
    assert!(e["message"].as_str().unwrap().contains("10000"), "{e}");
    a.send("/users").await;
    let u = a.event("users").await;
    assert_eq!(u["users"], serde_json::json!(["alice", "bob"]));
    a.quit().await;
    b.quit().await;
}

#[tokio::test]
async fn room_chat_between_peer_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_router, addr) = Proc::router(10).await;
    let mut a = Proc::peer(&addr, "a", &tmp.path().join("a"), &["--join", "#rust"]).await;
    let j = a.event("joined").await;
    assert_eq!(j["room"], "#rust");
    assert_eq!(j["created"], true);
    a.send("first").await;
    a.event("sent").await;

    let mut b = Proc::peer(&addr, "b", &tmp.path().join("b"), &["--join", "#RUST"]).await;
    let j = b.event("joined").await;
    assert_eq!(j["created"], false);
    assert_eq!(
        j["version"], 2,
        "b synced a's message (and the room's creation) before joined"
    );
    assert_eq!(j["members"], serde_json::json!(["a", "b"]));
    let mut c = Proc::peer(&addr, "c", &tmp.path().join("c"), &["--join", "#rust"]).await;
    c.event("joined").await;

    b.send("from b").await;
    let sent = b.event("sent").await;
    let mut delivered: Vec<String> = sent["delivered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["a", "c"]);
    for p in [&mut a, &mut c] {
        let m = p.event("message").await;
        assert_eq!(
            (m["conversation"].as_str(), m["from"].as_str()),
            (Some("#rust"), Some("b"))
        );
        assert_eq!(m["body"], "from b");
    }

    c.send("/who").await;
    let w = c.event("who").await;
    assert_eq!(w["members"], serde_json::json!(["a", "b", "c"]));
    c.send("/rooms").await;
    let r = c.event("rooms").await;
    assert_eq!(
        r["rooms"],
        serde_json::json!([{"room": "#rust", "members": 3, "owner": "a"}])
    );
    // Only the owner deletes; the others are told.
    c.send("/delete #rust").await;
    c.event("error").await;
    a.send("/delete #rust").await;
    let l = a.event("left").await;
    assert_eq!(l["room"], "#rust");
    let l = b.event("left").await;
    assert_eq!(l["room"], "#rust");
    assert!(l["reason"].as_str().unwrap().contains("deleted by a"));
    for p in [a, b, c] {
        p.quit().await;
    }
}

/// Runs the peer binary to its exit; returns (exit code, stderr).
async fn peer_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.stdout.is_empty(), "nothing on stdout");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_peer_that_cannot_start_says_why_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();

    // No router: the line names the address and how to start one.
    let (code, err) = peer_exit(&[
        "--nick",
        "a",
        "--router",
        "127.0.0.1:1",
        "--data-dir",
        &dir("x"),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("127.0.0.1:1") && err.contains("router --listen"),
        "{err}"
    );
    assert!(
        !tmp.path().join("x").exists(),
        "a failed start leaves no data directory behind"
    );

    // Several routers, none answering: one line naming every one.
    let (code, err) = peer_exit(&[
        "--nick",
        "a",
        "--router",
        "127.0.0.1:1,127.0.0.1:2",
        "--data-dir",
        &dir("x2"),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("no router answers at any of 127.0.0.1:1,127.0.0.1:2"),
        "{err}"
    );

    let (_router, addr) = Proc::router(10).await;
    let _alice = Proc::peer(&addr, "alice", &tmp.path().join("alice"), &[]).await;

    // The nick is held by someone else.
    let (code, err) = peer_exit(&[
        "--nick",
        "Alice",
        "--router",
        &addr,
        "--data-dir",
        &dir("y"),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("taken"), "{err}");
    assert!(!tmp.path().join("y").exists());

    // A second peer on a data directory in use: refused by the lock.
    let (code, err) = peer_exit(&[
        "--nick",
        "bob",
        "--router",
        &addr,
        "--data-dir",
        &dir("alice"),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("in use"), "{err}");
    // A directory that was there before a failed start stays.
    assert!(tmp.path().join("alice").join("history.db").exists());

    // A bad nick is refused before anything starts.
    let (code, err) = peer_exit(&["--nick", "no spaces", "--router", &addr]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("A-Z a-z 0-9 _ -"), "{err}");

    // Every address, and no word of which one reaches it: refused, with
    // what to add.
    let (code, err) = peer_exit(&[
        "--nick",
        "carol",
        "--router",
        &addr,
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        &dir("z"),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("--advertise HOST:PORT"), "{err}");
    assert!(!tmp.path().join("z").exists());
}

/// A peer listening on every address with --advertise, and peers and a
/// router over IPv6: each found reachable, lines delivered directly.
#[tokio::test]
async fn every_address_with_advertise_and_ipv6_work() {
    let tmp = tempfile::tempdir().unwrap();
    let (_router, addr) = Proc::router_on("[::1]:0", 10).await;
    assert!(addr.starts_with("[::1]:"), "{addr}");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("0.0.0.0:{port}");
    let advertise = format!("127.0.0.1:{port}");
    // alice listens on every address and advertises 127.0.0.1: the router
    // (on 127.0.0.1, the IP she comes from) dials that back and finds her.
    let (_router4, addr4) = Proc::router(10).await;
    let mut a = Proc::spawn_peer(
        &addr4,
        "alice",
        &tmp.path().join("a"),
        &["--listen", &listen, "--advertise", &advertise],
    );
    let ready = a.event("ready").await;
    assert_eq!(ready["reachable"], true, "{ready}");
    drop(a);

    let mut b = Proc::spawn_peer(
        &addr,
        "bob",
        &tmp.path().join("b"),
        &["--listen", "[::1]:0"],
    );
    let ready = b.event("ready").await;
    assert_eq!(ready["reachable"], true, "{ready}");
    let mut c = Proc::spawn_peer(
        &addr,
        "carol",
        &tmp.path().join("c"),
        &["--listen", "[::1]:0"],
    );
    assert_eq!(c.event("ready").await["reachable"], true);
    b.send("/msg carol over v6").await;
    let m = c.event("message").await;
    assert_eq!(m["body"], "over v6");
}

/// A frozen peer (SIGSTOP) never finishes HTTP/2's graceful close of its
/// connection; the router's shutdown is bounded, so SIGTERM still ends it.
#[tokio::test]
async fn a_router_stops_on_sigterm_while_a_peer_is_frozen() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    // Joined, the peer holds a Watch stream open on the router.
    let mut peer = Proc::peer(&addr, "frozen", &tmp.path().join("f"), &["--join", "#r"]).await;
    peer.event("joined").await;
    peer.signal("STOP");
    let started = Instant::now();
    router.terminate_within(Duration::from_secs(6)).await;
    println!("router exited {:?} after SIGTERM", started.elapsed());
    peer.signal("CONT");
    peer.kill9().await;
}

/// A peer killed outright stops heartbeating: when its lease runs out the
/// others hear a timeout, not a quit (a `/quit` is one: see
/// `joins_parts_and_quits_are_presence_events`).
#[tokio::test]
async fn a_killed_peer_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    // The shortest lease the router takes: the timeout comes within 2 s.
    let (router, addr) = Proc::router(2).await;
    let mut a = Proc::peer(&addr, "a", &tmp.path().join("a"), &["--join", "#rust"]).await;
    a.event("joined").await;
    let mut b = Proc::peer(&addr, "b", &tmp.path().join("b"), &["--join", "#rust"]).await;
    b.event("joined").await;
    let e = a.event("presence").await;
    assert_eq!(
        (e["nick"].as_str(), e["event"].as_str()),
        (Some("b"), Some("joined"))
    );
    b.kill9().await;
    let e = a.event("presence").await;
    assert_eq!(
        e,
        serde_json::json!({"type": "presence", "room": "#rust", "nick": "b", "event": "timeout"})
    );
    a.quit().await;
    router.terminate().await;
}

/// The `presence` events of `p` seen so far (skipped ones included) that
/// name `nick`.
fn presence_of(p: &Proc, nick: &str) -> Vec<serde_json::Value> {
    p.skipped
        .iter()
        .filter(|e| e["type"] == "presence" && e["nick"] == nick)
        .cloned()
        .collect()
}

#[tokio::test]
async fn joins_parts_and_quits_are_presence_events() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut a = Proc::peer(&addr, "a", &tmp.path().join("a"), &["--join", "#rust"]).await;
    a.event("joined").await;
    let mut b = Proc::peer(&addr, "b", &tmp.path().join("b"), &["--join", "#rust"]).await;
    b.event("joined").await;
    let p = a.event("presence").await;
    assert_eq!(
        p,
        serde_json::json!({"type": "presence", "room": "#rust", "nick": "b", "event": "joined"})
    );

    let mut c = Proc::peer(&addr, "c", &tmp.path().join("c"), &["--join", "#rust"]).await;
    c.event("joined").await;
    for p in [&mut a, &mut b] {
        let e = p.event("presence").await;
        assert_eq!(
            (e["nick"].as_str(), e["event"].as_str()),
            (Some("c"), Some("joined"))
        );
    }
    // A part with a parting message: the others see a leave, saying it.
    c.send("/part #rust see ya").await;
    let l = c.event("left").await;
    assert_eq!(
        (l["room"].as_str(), l["reason"].as_str()),
        (Some("#rust"), Some("left"))
    );
    for p in [&mut a, &mut b] {
        let e = p.event("presence").await;
        assert_eq!(
            e,
            serde_json::json!({"type": "presence", "room": "#rust", "nick": "c", "event": "left",
                               "message": "see ya"})
        );
    }
    // A parting message the router would refuse is refused at once, and
    // nothing happens: a is still in the room.
    a.send(&format!("/part #rust {}", "x".repeat(301))).await;
    let err = a.event("error").await;
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 300")),
        "{err}"
    );
    // A quit (with a message) is one quit per room, saying it, not a
    // leave, nor a timeout.
    b.send("/quit bye all").await;
    b.quit().await;
    let e = a.event("presence").await;
    assert_eq!(
        e,
        serde_json::json!({"type": "presence", "room": "#rust", "nick": "b", "event": "quit",
                           "message": "bye all"})
    );
    // c, in no room with anyone, hears nothing of b's quit; a never hears
    // of itself.
    c.send("/users").await;
    c.event("users").await;
    assert!(
        presence_of(&c, "b").iter().all(|e| e["event"] == "joined"),
        "{:?}",
        c.skipped
    );
    a.send("/users").await;
    a.event("users").await;
    assert!(presence_of(&a, "a").is_empty(), "{:?}", a.skipped);
    assert!(
        a.skipped
            .iter()
            .all(|e| e["type"] != "error" && e["type"] != "left"),
        "{:?}",
        a.skipped
    );
    a.quit().await;
    c.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn losing_the_router_and_getting_it_back_are_router_events() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut a = Proc::peer(&addr, "a", &tmp.path().join("a"), &["--join", "#r"]).await;
    a.event("joined").await;
    router.kill9().await;
    let lost = a.event("router").await;
    assert_eq!(lost, serde_json::json!({"type": "router", "state": "lost"}));
    // Heartbeats keep failing meanwhile; still one event per outage.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (router, _) = Proc::router_on(&addr, 10).await;
    let back = a.event("router").await;
    assert_eq!(back, serde_json::json!({"type": "router", "state": "back"}));
    // Logged in again and back in the room: the router shows it.
    common::until_members(&addr, "#r", 1, Duration::from_secs(15)).await;
    a.send("/who #r").await;
    let w = a.event("who").await;
    assert_eq!(w["members"], serde_json::json!(["a"]));
    assert!(
        a.skipped.iter().all(|e| e["type"] != "router"),
        "one lost and one back: {:?}",
        a.skipped
    );
    a.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn a_message_to_a_nick_never_seen_says_so_and_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut a = Proc::peer(&addr, "a", &tmp.path().join("a"), &[]).await;
    a.send("/msg nobdy hi there").await;
    let sent = a.event("sent").await;
    assert_eq!(sent["pending"], serde_json::json!(["nobdy"]));
    let info = a.event("info").await;
    assert_eq!(
        info["message"],
        "nobody called nobdy has been seen; the message will wait for them"
    );

    // Someone seen before and offline now: queued, without that line.
    let b = Proc::peer(&addr, "b", &tmp.path().join("b"), &[]).await;
    b.quit().await;
    common::until_members(&addr, "b", 0, Duration::from_secs(10)).await;
    a.send("/msg b see you later").await;
    let sent = a.event("sent").await;
    assert_eq!(sent["pending"], serde_json::json!(["b"]));
    a.send("/users").await;
    a.event("users").await;
    assert!(
        a.skipped.iter().all(|e| e["type"] != "info"),
        "{:?}",
        a.skipped
    );

    // And the message to the typo'd nick waits for it: nobdy logs in.
    let mut n = Proc::peer(&addr, "nobdy", &tmp.path().join("n"), &[]).await;
    let m = n.event("message").await;
    assert_eq!(m["body"], "hi there");
    a.quit().await;
    n.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn help_lists_the_slash_commands() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_peer"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for c in [
        "/join", "/switch", "/me", "/names", "/exit", "/quit", "/history",
    ] {
        assert!(text.contains(c), "{c} missing from --help:\n{text}");
    }
}

#[tokio::test]
async fn switch_and_me_in_json_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut a = Proc::peer(
        &addr,
        "a",
        &tmp.path().join("a"),
        &["--join", "#one", "--join", "#two"],
    )
    .await;
    a.event("joined").await;
    a.event("joined").await;
    let mut b = Proc::peer(&addr, "b", &tmp.path().join("b"), &["--join", "#one"]).await;
    b.event("joined").await;
    // #two is current: /switch goes back to #one without rejoining.
    a.send("/switch #one").await;
    let i = a.event("info").await;
    assert_eq!(i["message"], "now talking in #one");
    a.send("/me waves").await;
    let sent = a.event("sent").await;
    assert_eq!(sent["conversation"], "#one");
    let m = b.event("message").await;
    assert_eq!(m["body"], "\u{1}ACTION waves\u{1}");
    // By number, in the order joined; a bad one is an error.
    a.send("/window 2").await;
    let i = a.event("info").await;
    assert_eq!(i["message"], "now talking in #two");
    a.send("/switch 3").await;
    let e = a.event("error").await;
    assert!(
        e["message"].as_str().unwrap().contains("no conversation 3"),
        "{e}"
    );
    a.send("/j #three").await;
    let j = a.event("joined").await;
    assert_eq!(j["room"], "#three");
    a.send("/names").await;
    let w = a.event("who").await;
    assert_eq!(w["room"], "#three");
    a.send("/exit").await;
    a.quit().await;
    b.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn a_topic_lives_in_the_history_and_outlives_the_router() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut a = Proc::peer(&addr, "a", &tmp.path().join("a"), &["--join", "#rust"]).await;
    a.event("joined").await;
    a.send("/topic").await;
    assert_eq!(
        a.event("topic").await,
        serde_json::json!({"type": "topic", "room": "#rust", "topic": "", "by": "", "set_at_ms": 0})
    );
    a.send("/topic fearless  concurrency").await;
    let sent = a.event("sent").await;
    assert_eq!(sent["conversation"], "#rust");

    // A new router knows nothing of it; the history does.
    router.terminate().await;
    let (router, _) = Proc::router_on(&addr, 10).await;
    common::until_members(&addr, "#rust", 1, Duration::from_secs(15)).await;
    let mut b = Proc::peer(&addr, "b", &tmp.path().join("b"), &["--join", "#rust"]).await;
    b.event("joined").await;
    let t = b.event("topic").await;
    assert_eq!(
        (t["room"].as_str(), t["topic"].as_str(), t["by"].as_str()),
        (Some("#rust"), Some("fearless  concurrency"), Some("a"))
    );
    assert!(t["set_at_ms"].as_i64().unwrap() > 0, "{t}");

    // Set again, by another member, with the room named: everyone in the
    // room sees the change as a topic event.
    b.send("/topic #rust zero-cost abstractions").await;
    b.event("sent").await;
    let m = a.event("message").await;
    assert_eq!(
        (m["kind"].as_str(), m["from"].as_str(), m["body"].as_str()),
        (Some("topic"), Some("b"), Some("zero-cost abstractions"))
    );
    a.send("/topic #rust").await;
    let t = a.event("topic").await;
    assert_eq!(
        (t["topic"].as_str(), t["by"].as_str()),
        (Some("zero-cost abstractions"), Some("b"))
    );
    // Outside a room there is nothing to set; bad names are refused.
    a.send("/topic #nowhere a b").await;
    let e = a.event("error").await;
    assert!(e["message"].as_str().unwrap().contains("#nowhere"), "{e}");
    a.send("/topic #bad!name x").await;
    a.event("error").await;
    a.send("/topic").await;
    assert_eq!(a.event("topic").await["topic"], "zero-cost abstractions");
    a.quit().await;
    b.quit().await;
    router.terminate().await;
}

#[tokio::test]
async fn away_is_told_to_whoever_writes_privately() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut a = Proc::peer(&addr, "a", &tmp.path().join("a"), &["--join", "#r"]).await;
    a.event("joined").await;
    let mut b = Proc::peer(&addr, "b", &tmp.path().join("b"), &["--join", "#r"]).await;
    b.event("joined").await;
    b.send("/away gone  fishing").await;
    assert_eq!(
        b.event("info").await["message"],
        "you are marked as away: gone  fishing"
    );
    a.send("/msg b are you there?").await;
    let sent = a.event("sent").await;
    assert_eq!(sent["delivered"], serde_json::json!(["b"]));
    assert_eq!(
        a.event("away").await,
        serde_json::json!({"type": "away", "nick": "b", "message": "gone  fishing"})
    );
    // The message itself arrived all the same.
    assert_eq!(b.event("message").await["body"], "are you there?");
    // A room message is not answered with it.
    a.send("/switch #r").await;
    a.event("info").await;
    a.send("hello room").await;
    a.event("sent").await;
    // A line that names b is a mention for b; one that does not, not.
    let m = b.event("message").await;
    assert_eq!(m["body"], "hello room");
    assert!(m.get("mention").is_none(), "{m}");
    a.send("B: look here").await;
    a.event("sent").await;
    let m = b.event("message").await;
    assert_eq!(
        (m["body"].as_str(), m["mention"].as_bool()),
        (Some("B: look here"), Some(true))
    );
    // Back: private messages are no longer answered with it.
    b.send("/away").await;
    assert_eq!(
        b.event("info").await["message"],
        "you are no longer marked as away"
    );
    a.send("/msg b now?").await;
    a.event("sent").await;
    a.send("/users").await;
    a.event("users").await;
    let aways: Vec<_> = a.skipped.iter().filter(|e| e["type"] == "away").collect();
    assert!(aways.is_empty(), "{aways:?}");
    a.quit().await;
    b.quit().await;
    router.terminate().await;
}

/// A peer found unreachable asks again with `/reach` once its port is open
/// (here: the proxy at its advertised address is aimed at it): the router
/// finds it, the peer logs in again, and it is dialed directly from then.
#[tokio::test]
async fn reach_asks_the_router_to_dial_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (_router, addr) = Proc::router(10).await;
    let door = Proxy::unaimed().await;
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let advertise = door.addr.to_string();
    let mut a = Proc::spawn_peer(
        &addr,
        "alice",
        &tmp.path().join("a"),
        &["--listen", &listen, "--advertise", &advertise],
    );
    assert_eq!(a.event("ready").await["reachable"], false);
    a.send("/reach").await;
    let r = a.event("reachable").await;
    assert_eq!(r["reachable"], false, "{r}");
    assert_eq!(r["address"], advertise.as_str());

    door.aim(listen.parse().unwrap());
    a.send("/reach").await;
    let r = a.event("reachable").await;
    assert_eq!(r["reachable"], true, "{r}");
    let mut b = Proc::peer(&addr, "bob", &tmp.path().join("b"), &[]).await;
    b.send("/msg alice through the open door").await;
    let m = a.event("message").await;
    assert_eq!(m["body"], "through the open door");
    a.send("/msg bob and back").await;
    assert_eq!(b.event("message").await["body"], "and back");
}

/// `/whois` of a peer process: the JSON event.
async fn whois(p: &mut Proc, nick: &str) -> serde_json::Value {
    p.send(&format!("/whois {nick}")).await;
    p.event("whois").await
}

/// `/away` reaches the router: `/whois` shows it with the rooms and an idle
/// time that grows and drops after a line; `/users` marks the away; a too
/// long message changes nothing; `/away` alone clears it; a login after a
/// router restart tells it again.
#[tokio::test]
async fn whois_and_users_show_away_rooms_and_idle_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (router, addr) = Proc::router(10).await;
    let mut a = Proc::peer(&addr, "alice", &tmp.path().join("a"), &["--join", "#rust"]).await;
    a.event("joined").await;
    let mut b = Proc::peer(
        &addr,
        "bob",
        &tmp.path().join("b"),
        &["--join", "#rust", "--join", "#go"],
    )
    .await;
    b.event("joined").await;
    b.event("joined").await;

    let w = whois(&mut a, "bob").await;
    assert_eq!(w["away"], "");
    assert_eq!(w["idle_secs"], serde_json::Value::Null, "no line yet: {w}");
    // Every room: the router lists every room and its members to any
    // session (/list, /who), so whois hides none either.
    assert_eq!(w["rooms"], serde_json::json!(["#go", "#rust"]));
    assert!(w["key"].as_str().unwrap().starts_with("SHA256:"), "{w}");

    b.send("/away gone to lunch").await;
    b.event("info").await;
    b.send("hello").await;
    b.event("sent").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let w = whois(&mut a, "bob").await;
    assert_eq!(w["away"], "gone to lunch");
    let before = w["idle_secs"].as_u64().expect("idle known after a line");
    assert!(before >= 2, "{w}");
    // A line resets it (told at once; polled, as the telling is async).
    b.send("again").await;
    b.event("sent").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let w = whois(&mut a, "bob").await;
        if w["idle_secs"].as_u64().is_some_and(|i| i < before) {
            break;
        }
        assert!(Instant::now() < deadline, "idle never dropped: {w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    a.send("/users").await;
    let u = a.event("users").await;
    assert_eq!(u["users"], serde_json::json!(["alice", "bob"]));
    assert_eq!(u["away"], serde_json::json!({"bob": "gone to lunch"}));

    // Too long: refused, and the old message stands.
    b.send(&format!("/away {}", "x".repeat(301))).await;
    let e = b.event("error").await;
    assert!(e["message"].as_str().unwrap().contains("300"), "{e}");
    assert_eq!(whois(&mut a, "bob").await["away"], "gone to lunch");

    b.send("/away").await;
    b.event("info").await;
    assert_eq!(whois(&mut a, "bob").await["away"], "");
    a.send("/users").await;
    assert_eq!(a.event("users").await["away"], serde_json::json!({}));

    // A new router knows nothing: bob's next login tells it again.
    b.send("/away back soon").await;
    b.event("info").await;
    router.kill9().await;
    let (router, _) = Proc::router_on(&addr, 10).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.send("/whois bob").await;
        let ev = loop {
            let line = a.line().await.expect("alice still running");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            // While the router is coming back /whois may fail: asked again.
            if v["type"] == "whois" || v["type"] == "error" {
                break v;
            }
        };
        if ev["away"] == "back soon" {
            break;
        }
        assert!(Instant::now() < deadline, "away not told again: {ev}");
    }
    a.quit().await;
    b.quit().await;
    router.terminate().await;
}
