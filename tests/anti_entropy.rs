//! What anti-entropy costs when nothing is missing: a 20-member room, every
//! peer comparing histories every second. Asserts the shape (one small
//! exchange per member per period, no pulls); prints the figures the README
//! quotes:
//!
//! cargo test --release --test anti_entropy -- --nocapture

mod common;

use std::time::{Duration, Instant};

use common::{peer_with, TestRouter};
use parley::sync::SyncCounts;

const MEMBERS: usize = 20;
const PERIOD: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(6);

/// CPU time (user + system) this process has used, from /proc; None where
/// there is no /proc.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

fn total(counts: &[SyncCounts]) -> SyncCounts {
    counts
        .iter()
        .fold(SyncCounts::default(), |a, c| SyncCounts {
            queries: a.queries + c.queries,
            query_bytes: a.query_bytes + c.query_bytes,
            pulls: a.pulls + c.pulls,
            pulled: a.pulled + c.pulled,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_twenty_member_room_costs_one_small_exchange_per_member_per_period() {
    let router = TestRouter::start(Duration::from_secs(10)).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    for i in 0..MEMBERS {
        let nick = format!("m{i}");
        let p = peer_with(router.addr, &nick, tmp.path().join(&nick), |c| {
            c.sync_interval = PERIOD
        })
        .await;
        p.join("#big").await;
        peers.push(p);
    }
    // Some history everyone holds, so the vectors are not empty.
    for p in peers.iter().take(5) {
        p.say("#big", "hello").await;
    }
    for p in &peers {
        p.wait_for("#big", 5).await;
    }
    // Let the joins' own syncs and a first round settle.
    tokio::time::sleep(2 * PERIOD).await;

    let before: Vec<SyncCounts> = peers.iter().map(|p| p.peer.sync_stats()).collect();
    let (cpu0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(WINDOW).await;
    let (cpu1, elapsed) = (cpu_time(), t0.elapsed());
    let after: Vec<SyncCounts> = peers.iter().map(|p| p.peer.sync_stats()).collect();

    let (b, a) = (total(&before), total(&after));
    let periods = elapsed.as_secs_f64() / PERIOD.as_secs_f64();
    let queries = (a.queries - b.queries) as f64 / periods;
    let bytes = (a.query_bytes - b.query_bytes) as f64 / periods;
    let cpu = cpu0
        .zip(cpu1)
        .map(|(c0, c1)| (c1 - c0).as_secs_f64() * 1000.0 / periods);
    println!(
        "anti-entropy, {MEMBERS}-member room, nothing missing, per period: \
         {queries:.0} version queries ({:.1} per member), {bytes:.0} bytes on the wire \
         ({:.0} per query, protobuf payloads), {} pulls, CPU {} for all {MEMBERS} peers",
        queries / MEMBERS as f64,
        bytes / queries.max(1.0),
        a.pulls - b.pulls,
        cpu.map_or("n/a".into(), |ms| format!("{ms:.1} ms")),
    );
    // One exchange with each other member per period (the period is
    // jittered 0.8-1.2x), nothing pulled, and each exchange small.
    let per_member = queries / MEMBERS as f64;
    let others = (MEMBERS - 1) as f64;
    assert!(
        per_member > others * 0.6 && per_member < others * 1.4,
        "{per_member:.1} queries per member per period"
    );
    assert_eq!(a.pulls, b.pulls, "a quiet room pulled something");
    assert!(
        bytes / queries < 120.0,
        "{:.0} bytes per query",
        bytes / queries
    );
    for p in peers {
        p.stop().await;
    }
    router.stop().await;
}
