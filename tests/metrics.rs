//! `--metrics`: a router and peers serving Prometheus figures as
//! OpenMetrics text over plain HTTP. Real routers and peers on 127.0.0.1
//! (in-process, and the binaries for the flags), scraped with a raw HTTP
//! request; every scrape is checked line by line against the text format,
//! then the figures are checked to move with what the peers do.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, peer_with, Proc, TestPeer};
use parley::identity::Identity;
use parley::metrics::CONTENT_TYPE_OPENMETRICS;
use parley::peer::PeerEvent;
use parley::registry::{MemoryOptions, MemoryRegistry};
use parley::router::{RouterHandle, RouterLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TTL: Duration = Duration::from_secs(10);

/// `GET /metrics` at `addr` over a fresh connection: the body, once the
/// status and content type are checked.
async fn scrape(addr: SocketAddr) -> String {
    let ask = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).expect("a UTF-8 answer")
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .expect("an answer within 10 s");
    let (head, body) = answer.split_once("\r\n\r\n").expect("headers, then a body");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type").then(|| v.trim())
        })
        .expect("a content type");
    assert_eq!(content_type, CONTENT_TYPE_OPENMETRICS);
    check_exposition(body);
    body.to_owned()
}

/// One sample line: name, labels, value.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",...} value` (no timestamp: none is exposed here); None if
/// the line is not one.
fn sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => (name, labels(rest.strip_suffix('}')?)?),
    };
    is_name(name).then(|| Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `k="v",k="v"`, values with `\\`, `\"` and `\n` escapes.
fn labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        if !is_name(key) {
            return None;
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    _ => return None,
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key.to_owned(), value));
        s = &rest[end + 1..];
        s = match s.strip_prefix(',') {
            Some(more) if !more.is_empty() => more,
            Some(_) => return None,
            None if s.is_empty() => s,
            None => return None,
        };
    }
    Some(out)
}

/// Checks `text` is OpenMetrics text as this project exposes it: every
/// line a `# HELP`, `# TYPE` or `# UNIT` of a family, or a sample of the
/// family declared last (its name the family's, or the family's with a
/// suffix its type allows) with a numeric value; `# EOF` last, once.
fn check_exposition(text: &str) {
    let body = text
        .strip_suffix("# EOF\n")
        .unwrap_or_else(|| panic!("the exposition ends with # EOF:\n{text}"));
    let mut family: Option<(String, String)> = None;
    let mut samples = 0;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (what, name) = (parts.next(), parts.next());
            let arg = parts.next().unwrap_or_default();
            let name = name.filter(|n| is_name(n));
            match (what, name) {
                (Some("TYPE"), Some(name)) => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "gaugehistogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                    ];
                    assert!(known.contains(&arg), "an unknown type: {line}");
                    family = Some((name.to_owned(), arg.to_owned()));
                }
                (Some("HELP"), Some(_)) | (Some("UNIT"), Some(_)) => {}
                _ => panic!("not a descriptor: {line:?}"),
            }
            continue;
        }
        let s = sample(line).unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let (name, kind) = family
            .as_ref()
            .unwrap_or_else(|| panic!("a sample before any TYPE: {line}"));
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "summary" => &["", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        let suffix = s.name.strip_prefix(name.as_str());
        assert!(
            suffix.is_some_and(|x| suffixes.contains(&x)),
            "{line}: not a sample of {name} ({kind})"
        );
        assert!(!s.value.is_nan(), "{line}");
        samples += 1;
    }
    assert!(samples > 0, "no samples:\n{text}");
}

/// The value of the sample `name` (as exposed: a counter's name ends in
/// `_total`) with exactly `labels`, in any order; None if absent.
fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(sample)
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
        })
        .map(|s| s.value)
}

/// The sum of every sample `name`, whatever its labels (0 if none).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(sample)
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Scrapes `addr` until the sample `name` with `labels` is `want` (10 s
/// at most): what is counted once a reply is sent, or a stream ends, may
/// come a moment after the test sees its effect.
async fn until_value(addr: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr).await;
        let got = counter(&text, name, labels);
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} is {got:?}, not {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metered_router() -> RouterHandle {
    RouterHandle::spawn_metered(
        parley::net::bind_loopback().await.unwrap(),
        Arc::new(MemoryRegistry::with(MemoryOptions::new(TTL)).unwrap()),
        Identity::generate(),
        RouterLimits::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

async fn metered_peer(router: &RouterHandle, nick: &str, root: &std::path::Path) -> TestPeer {
    peer_with(router.addr(), nick, root.join(nick), |c| {
        c.metrics = Some("127.0.0.1:0".parse().unwrap())
    })
    .await
}

#[tokio::test]
async fn a_router_and_its_peers_expose_figures_that_move_with_the_chat() {
    let router = metered_router().await;
    let at_router = router.metrics_addr().expect("the router serves metrics");
    let before = scrape(at_router).await;
    assert_eq!(total(&before, "parley_router_logins_total"), 0.0);
    for family in [
        "parley_router_sessions",
        "parley_router_relay_bytes_total",
        "parley_router_relay_circuits_open",
        "parley_router_mailbox_deposited_total",
        "parley_router_mailbox_expired_total",
    ] {
        assert_eq!(counter(&before, family, &[]), Some(0.0), "{family}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let alice = metered_peer(&router, "alice", tmp.path()).await;
    let mut bob = metered_peer(&router, "bob", tmp.path()).await;
    let (at_alice, at_bob) = (
        alice.peer.metrics_addr().expect("alice serves metrics"),
        bob.peer.metrics_addr().expect("bob serves metrics"),
    );
    assert_ne!(at_alice, at_bob);
    let quiet = scrape(at_alice).await;
    assert_eq!(
        counter(&quiet, "parley_peer_messages_out_total", &[]),
        Some(0.0)
    );
    for source in ["link", "pull", "mailbox"] {
        let labels = [("source", source)];
        assert_eq!(
            counter(&quiet, "parley_peer_messages_in_total", &labels),
            Some(0.0)
        );
    }
    assert!(counter(&quiet, "parley_peer_outbox_recipients", &[]).is_some());

    alice.join("#metrics").await;
    bob.join("#metrics").await;
    alice.say("#metrics", "in the room").await;
    alice.tell("bob", "in private").await;
    bob.wait_for("#metrics", 1).await;
    bob.wait_for("@alice+bob", 1).await;

    until_value(at_router, "parley_router_sessions", &[], 2.0).await;
    let r = scrape(at_router).await;
    assert_eq!(total(&r, "parley_router_logins_total"), 2.0, "{r}");
    assert!(counter(&r, "parley_router_joins_total", &[]) >= Some(2.0));

    let a = scrape(at_alice).await;
    assert!(
        counter(&a, "parley_peer_messages_out_total", &[]) >= Some(2.0),
        "{a}"
    );
    assert!(
        counter(&a, "parley_peer_deliveries_total", &[("result", "stored")]) >= Some(2.0),
        "{a}"
    );
    assert!(counter(&a, "parley_peer_link_batch_sent_count", &[]) >= Some(1.0));
    // Alice's link to bob stays open until it idles (a minute).
    assert!(
        counter(&a, "parley_peer_links", &[("state", "open")]) >= Some(1.0),
        "{a}"
    );
    assert!(counter(&a, "parley_peer_channels", &[]) >= Some(1.0));
    assert!(counter(&a, "parley_peer_outbox_recipients", &[]).is_some());
    // Bob joined after alice made the room: he pulled its creation from her.
    let b = scrape(at_bob).await;
    assert!(
        counter(&b, "parley_peer_messages_in_total", &[("source", "pull")]) >= Some(1.0),
        "{b}"
    );
    // Alice's lines came first-hand, over her link: taken, committed, and
    // their signatures checked after, off the path.
    assert!(
        counter(&b, "parley_peer_messages_in_total", &[("source", "link")]) >= Some(2.0),
        "{b}"
    );
    assert!(counter(&b, "parley_peer_link_batch_received_count", &[]) >= Some(1.0));
    assert!(counter(&b, "parley_peer_commit_seconds_count", &[]) >= Some(1.0));
    until_value(at_bob, "parley_peer_deferred_checked_total", &[], 2.0).await;
    let b = scrape(at_bob).await;
    assert_eq!(
        counter(&b, "parley_peer_deferred_failed_total", &[]),
        Some(0.0)
    );
    assert_eq!(counter(&b, "parley_peer_deferred_queue", &[]), Some(0.0));

    // Bob goes; what alice tells him waits, sealed, at the router, and
    // reaches him when he is back.
    bob.stop().await;
    let r = alice.tell("bob", "while you were out").await;
    assert_eq!(r.pending, ["bob"]);
    until_value(at_router, "parley_router_mailbox_deposited_total", &[], 1.0).await;
    until_value(at_router, "parley_router_sessions", &[], 1.0).await;
    let r = scrape(at_router).await;
    assert_eq!(counter(&r, "parley_router_logouts_total", &[]), Some(1.0));
    bob = TestPeer::start_in(router.addr(), "bob", tmp.path().join("bob"))
        .await
        .unwrap();
    let delivered = bob
        .next_event(Duration::from_secs(10), |e| match e {
            PeerEvent::Mailbox { delivered, .. } => Some(delivered),
            _ => None,
        })
        .await;
    assert_eq!(delivered, 1);
    until_value(at_router, "parley_router_mailbox_acked_total", &[], 1.0).await;
    let r = scrape(at_router).await;
    assert_eq!(
        counter(&r, "parley_router_mailbox_drained_total", &[]),
        Some(1.0)
    );
    assert_eq!(total(&r, "parley_router_logins_total"), 3.0);
    assert_eq!(bob.peer.metrics_addr(), None, "no metrics unless asked for");

    bob.stop().await;
    alice.stop().await;
    router.stop().await.unwrap();
    // Stopped with what served them.
    for addr in [at_router, at_alice, at_bob] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr}"
        );
    }
}

#[tokio::test]
async fn one_process_keeps_one_registry_per_peer() {
    let router = metered_router().await;
    let tmp = tempfile::tempdir().unwrap();
    let alice = metered_peer(&router, "alice", tmp.path()).await;
    let bob = metered_peer(&router, "bob", tmp.path()).await;
    alice.tell("bob", "one").await;
    bob.wait_for("@alice+bob", 1).await;
    let (a, b) = (
        scrape(alice.peer.metrics_addr().unwrap()).await,
        scrape(bob.peer.metrics_addr().unwrap()).await,
    );
    assert!(counter(&a, "parley_peer_messages_out_total", &[]) >= Some(1.0));
    assert_eq!(
        counter(&b, "parley_peer_messages_out_total", &[]),
        Some(0.0),
        "bob sent nothing: alice's figures are hers"
    );
    bob.stop().await;
    alice.stop().await;
    router.stop().await.unwrap();
}

#[tokio::test]
async fn the_binaries_serve_metrics_and_refuse_an_address_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("router.key");
    let at_router: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics_arg = at_router.to_string();
    let (router, addr) =
        Proc::router_with("127.0.0.1:0", 10, &key, &["--metrics", &metrics_arg]).await;
    let text = scrape(at_router).await;
    assert!(
        counter(&text, "parley_router_sessions", &[]).is_some(),
        "{text}"
    );

    // The peer's ready event is the same with --metrics.
    let at_peer: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let peer_arg = at_peer.to_string();
    let mut dave = Proc::spawn_peer(
        &addr,
        "dave",
        &tmp.path().join("dave"),
        &["--metrics", &peer_arg],
    );
    let ready = dave.event("ready").await;
    let mut fields: Vec<&str> = ready
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["listen", "nick", "reachable", "type"]);
    let text = scrape(at_peer).await;
    assert!(
        counter(&text, "parley_peer_messages_out_total", &[]).is_some(),
        "{text}"
    );
    until_value(
        at_router,
        "parley_router_logins_total",
        &[("reach", "direct")],
        1.0,
    )
    .await;

    // An address taken is a startup error, said plainly, and a failed
    // peer leaves no data directory behind.
    let taken = |bin: &str, args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        async move {
            tokio::time::timeout(Duration::from_secs(10), cmd.output())
                .await
                .expect("exits within 10 s")
                .unwrap()
        }
    };
    let fresh = tmp.path().join("erin");
    let out = taken(
        env!("CARGO_BIN_EXE_peer"),
        [
            "--nick",
            "erin",
            "--router",
            &addr,
            "--data-dir",
            fresh.to_str().unwrap(),
            "--json",
            "--metrics",
            &peer_arg,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot serve metrics on {at_peer}")),
        "{stderr}"
    );
    assert!(!fresh.exists(), "a failed start leaves nothing");
    let out = taken(
        env!("CARGO_BIN_EXE_router"),
        [
            "--listen",
            "127.0.0.1:0",
            "--key-file",
            key.to_str().unwrap(),
            "--data-dir",
            tmp.path().join("router2").to_str().unwrap(),
            "--metrics",
            &metrics_arg,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot serve metrics on {at_router}")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no listening line: {out:?}");

    dave.quit().await;
    router.terminate().await;
}

#[test]
fn the_checker_refuses_what_is_not_the_text_format() {
    let good = "# TYPE a counter\n# HELP a help\na_total{k=\"v\\\"\"} 1\n# EOF\n";
    check_exposition(good);
    assert_eq!(counter(good, "a_total", &[("k", "v\"")]), Some(1.0));
    assert_eq!(counter(good, "a_total", &[]), None);
    for bad in [
        "# TYPE a counter\na_total 1\n",
        "# TYPE a counter\na_total one\n# EOF\n",
        "# TYPE a counter\nb_total 1\n# EOF\n",
        "# TYPE a counter\na_total{k=v} 1\n# EOF\n",
        "a 1\n# EOF\n",
        "# TYPE a gauge\na 1\n# EOF\n# EOF\n",
    ] {
        let refused = std::panic::catch_unwind(|| check_exposition(bad));
        assert!(refused.is_err(), "{bad:?}");
    }
}
