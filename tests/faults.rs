//! Faults with the real binaries: SIGKILL, SIGSTOP, a router killed and
//! restarted, a partition, a corrupt history, a full disk. Everything on
//! loopback, bounded in count and time.

mod common;

use std::time::Duration;

use common::{free_port, until_members, Proc, Proxy};
use serde_json::Value;

type History = Vec<(String, u64, String)>;

/// Waits (at most 20 s) until every peer's history of `conv` equals the
/// first one's and holds `n` messages; returns it.
async fn until_agreed(peers: &mut [&mut Proc], conv: &str, n: usize) -> History {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut hs = Vec::new();
        for p in peers.iter_mut() {
            hs.push(p.history(conv).await);
        }
        if hs.iter().all(|h| h.len() == n && *h == hs[0]) {
            return hs.swap_remove(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "histories never agreed on {n} messages: {:?}",
            hs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_peer_killed_mid_burst_keeps_every_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (_router, addr) = Proc::router(10).await;
    let a_dir = tmp.path().join("a");
    let mut a = Proc::peer(&addr, "a", &a_dir, &["--join", "#r"]).await;
    a.event("joined").await;
    let mut b = Proc::peer(&addr, "b", &tmp.path().join("b"), &["--join", "#r"]).await;
    b.event("joined").await;

    // 400 messages queued on a's stdin at once; kill it after 100 acks.
    let burst: String = (0..400).map(|i| format!("burst {i}\n")).collect();
    a.send(burst.trim_end()).await;
    let mut acked = Vec::new();
    while acked.len() < 100 {
        let sent = a.event("sent").await;
        acked.push(sent["author_seq"].as_u64().unwrap());
    }
    a.kill9().await;

    // Restarted on its data directory: every acknowledged message is there.
    let mut a = Proc::peer(&addr, "a", &a_dir, &["--join", "#r"]).await;
    a.event("joined").await;
    let held = a.history("#r").await;
    for seq in &acked {
        assert!(
            held.iter().any(|(from, s, _)| from == "a" && s == seq),
            "acknowledged message a/{seq} lost"
        );
    }
    // After sync the members agree (a pushes what it stored but never sent).
    let n = held.len();
    assert!(n >= 100);
    let agreed = until_agreed(&mut [&mut a, &mut b], "#r", n).await;
    let seqs: Vec<u64> = agreed.iter().map(|(_, s, _)| *s).collect();
    // a's seq 1 is the room's creation.
    assert_eq!(
        seqs,
        (2..=n as u64 + 1).collect::<Vec<_>>(),
        "no gaps, in order"
    );
    a.quit().await;
    b.quit().await;
}

#[tokio::test]
async fn the_room_survives_a_router_killed_and_restarted_on_its_port() {
    let tmp = tempfile::tempdir().unwrap();
    let lease = 2;
    let (router, addr) = Proc::router(lease).await;
    let mut router = Some(router);
    let mut peers = Vec::new();
    for n in ["a", "b", "c"] {
        let mut p = Proc::peer(&addr, n, &tmp.path().join(n), &["--join", "#r"]).await;
        p.event("joined").await;
        peers.push(p);
    }
    let mut sent = 0;
    for round in ["before", "during", "after"] {
        if round == "during" {
            if let Some(r) = router.take() {
                r.kill9().await;
            }
        }
        if round == "after" {
            let (restarted, again) = Proc::router_on(&addr, lease).await;
            assert_eq!(again, addr);
            router = Some(restarted);
            // Within two leases (plus slack for a loaded machine) everyone
            // is back in the room by itself.
            until_members(&addr, "#r", 3, Duration::from_secs(2 * lease + 4)).await;
        }
        for p in peers.iter_mut() {
            for i in 0..10 {
                p.send(&format!("{round} {i}")).await;
                let s = p.event("sent").await;
                assert_eq!(strs(&s["delivered"]).len(), 2, "{round}: {s}");
                sent += 1;
            }
        }
    }
    let [a, b, c] = &mut peers[..] else {
        unreachable!()
    };
    let agreed = until_agreed(&mut [a, b, c], "#r", sent).await;
    assert_eq!(agreed.len(), 90);
    for p in peers {
        p.quit().await;
    }
    drop(router);
}

#[tokio::test]
async fn a_frozen_member_does_not_stall_senders_and_catches_up_after() {
    let tmp = tempfile::tempdir().unwrap();
    let lease = 2;
    let (_router, addr) = Proc::router(lease).await;
    let mut a = Proc::peer(&addr, "a", &tmp.path().join("a"), &["--join", "#r"]).await;
    a.event("joined").await;
    let mut b = Proc::peer(&addr, "b", &tmp.path().join("b"), &["--join", "#r"]).await;
    b.event("joined").await;
    let mut c = Proc::peer(&addr, "c", &tmp.path().join("c"), &["--join", "#r"]).await;
    c.event("joined").await;

    c.signal("STOP");
    for i in 0..20 {
        a.send(&format!("while frozen {i}")).await;
        // Each send ends (the 10 s line timeout would fail it otherwise):
        // deadlines, then the outbox, keep the sender going.
        let s = a.event("sent").await;
        assert_eq!(strs(&s["delivered"]), ["b"], "{s}");
        // c is pending until its lease runs out; then it is no member.
        assert!(strs(&s["pending"]).iter().all(|n| n == "c"), "{s}");
    }
    // The frozen member's lease runs out: it leaves the room.
    until_members(&addr, "#r", 2, Duration::from_secs(3 * lease)).await;
    b.send("after c left").await;
    b.event("sent").await;

    c.signal("CONT");
    until_members(&addr, "#r", 3, Duration::from_secs(3 * lease + 5)).await;
    let agreed = until_agreed(&mut [&mut a, &mut b, &mut c], "#r", 21).await;
    assert_eq!(agreed.last().unwrap().2, "after c left");
    for p in [a, b, c] {
        p.quit().await;
    }
}

#[tokio::test]
async fn two_sides_of_a_partition_end_with_the_union_in_one_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (_router, addr) = Proc::router(10).await;
    // a and b are reached only through proxies: cutting both, they cannot
    // reach each other (nor can c reach them), while the router sees all.
    // Each proxy is aimed before its peer logs in, so the router's
    // dial-back finds the peer through it: reachable through the proxy
    // only, and cut off when it is cut.
    let pa = Proxy::unaimed().await;
    let pb = Proxy::unaimed().await;
    let mut procs = Vec::new();
    for (n, proxy) in [("a", Some(&pa)), ("b", Some(&pb)), ("c", None)] {
        let mut extra = vec!["--join", "#r"];
        let (adv, listen);
        if let Some(p) = proxy {
            let port = free_port();
            listen = format!("127.0.0.1:{port}");
            p.aim(listen.parse().unwrap());
            adv = p.addr.to_string();
            extra.extend(["--advertise", adv.as_str(), "--listen", listen.as_str()]);
        }
        let mut p = Proc::spawn_peer(&addr, n, &tmp.path().join(n), &extra);
        let ready = p.event("ready").await;
        assert_eq!(ready["reachable"], true, "{ready}");
        p.event("joined").await;
        procs.push(p);
    }
    let [a, b, c] = &mut procs[..] else {
        unreachable!()
    };
    a.send("before").await;
    a.event("sent").await;

    pa.cut();
    pb.cut();
    for i in 0..10 {
        a.send(&format!("a cut off {i}")).await;
        let s = a.event("sent").await;
        assert!(strs(&s["pending"]).contains(&"b".to_owned()), "{s}");
        b.send(&format!("b cut off {i}")).await;
        let s = b.event("sent").await;
        assert!(strs(&s["pending"]).contains(&"a".to_owned()), "{s}");
    }
    for i in 0..5 {
        c.send(&format!("c {i}")).await;
        c.event("sent").await;
    }
    pa.heal();
    pb.heal();
    let agreed = until_agreed(&mut [a, b, c], "#r", 26).await;
    assert_eq!(agreed[0].2, "before");
    // And a saw some of b's messages arrive late.
    let late = a
        .skipped
        .iter()
        .filter(|e| e["type"] == "message" && e["late"] == true)
        .count();
    assert!(late > 0, "partitioned messages are marked late");
    for p in procs {
        p.quit().await;
    }
}

#[tokio::test]
async fn a_corrupt_history_is_refused_by_name_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("history.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&file, &garbage).unwrap();

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["--nick", "a", "--router", "127.0.0.1:1", "--data-dir"])
        .arg(&dir)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(file.to_str().unwrap()),
        "names the file: {err}"
    );
    assert!(err.contains("corrupt"), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "never overwritten");
}

#[tokio::test]
async fn a_full_disk_fails_sends_clearly_and_loses_nothing_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let (_router, addr) = Proc::router(10).await;
    let dir = tmp.path().join("a");
    // Files this peer writes may not grow past 256 KiB: writes beyond fail
    // as on a full disk (SIGXFSZ ignored, so the write returns an error).
    let script = format!(
        "trap '' XFSZ; exec prlimit --fsize=262144 -- '{}' --nick a --router {addr} \
         --data-dir '{}' --json --join '#solo'",
        env!("CARGO_BIN_EXE_peer"),
        dir.display()
    );
    let mut a = Proc::spawn("sh", &["-c", &script]);
    a.event("ready").await;
    a.event("joined").await;
    let mut acked = Vec::new();
    let mut error = None;
    for i in 0..2000 {
        a.send(&format!("filling {i} {}", "x".repeat(200))).await;
        loop {
            let line = a.line().await.expect("peer still running");
            let v: Value = serde_json::from_str(&line).unwrap();
            match v["type"].as_str() {
                Some("sent") => {
                    acked.push(v["author_seq"].as_u64().unwrap());
                    break;
                }
                Some("error") => {
                    error = Some(v["message"].as_str().unwrap().to_owned());
                    break;
                }
                _ => {}
            }
        }
        if error.is_some() {
            break;
        }
    }
    let error = error.expect("the size limit was reached");
    assert!(
        error.contains("history.db"),
        "a clear error naming the file: {error}"
    );
    assert!(!acked.is_empty());
    a.kill9().await;

    // Without the limit: every acknowledged message is still there.
    let mut a = Proc::peer(&addr, "a", &dir, &[]).await;
    let held = a.history("#solo").await;
    let seqs: Vec<u64> = held.iter().map(|(_, s, _)| *s).collect();
    for s in &acked {
        assert!(seqs.contains(s), "acknowledged message {s} lost");
    }
    a.quit().await;
}
