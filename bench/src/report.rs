//! The run's results for people (a table on stdout) and for machines (a
//! JSON file), and the targets checked against the floor.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::scenario::{Report, Scenario, ScenarioResult, IN_FLIGHT, THROUGHPUT_FACTOR, WARMUP};

/// A target the benchmark checks on every run (never a timed test).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub scenario: &'static str,
    /// What is compared, in words.
    pub what: String,
    pub limit: f64,
    pub value: f64,
    pub met: bool,
}

/// The targets of the scenarios this run measured.
pub fn targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    for r in &report.results {
        let vs = vs_floor(report, r);
        let p50 = |limit: f64| Target {
            scenario: r.scenario.name(),
            what: format!("p50 at most {limit}x the floor"),
            limit,
            value: vs,
            met: vs > 0.0 && vs <= limit,
        };
        match r.scenario {
            Scenario::Private => out.push(p50(2.0)),
            Scenario::Room3 => out.push(p50(3.0)),
            Scenario::Room20 => out.push(p50(10.0)),
            Scenario::PrivateUnsigned => {
                // What signing and checking add, both pairs in this run.
                let signed = report
                    .results
                    .iter()
                    .find(|s| s.scenario == Scenario::Private);
                if let Some(signed) = signed {
                    let unsigned = r.summary.p50_us;
                    let value = if unsigned > 0.0 {
                        signed.summary.p50_us / unsigned
                    } else {
                        0.0
                    };
                    out.push(Target {
                        scenario: Scenario::Private.name(),
                        what: "p50 at most 1.3x private-unsigned".into(),
                        limit: 1.3,
                        value,
                        met: value > 0.0 && value <= 1.3,
                    });
                }
            }
            Scenario::ThroughputPrivate => out.push(Target {
                scenario: r.scenario.name(),
                what: "at least 20000 messages/s".into(),
                limit: 20_000.0,
                value: r.msgs_per_s(),
                met: r.msgs_per_s() >= 20_000.0,
            }),
            _ => {}
        }
    }
    out
}

/// p50 as a multiple of the floor's p50 (0 when there is no floor).
pub fn vs_floor(report: &Report, r: &ScenarioResult) -> f64 {
    if report.floor_p50_us > 0.0 {
        r.summary.p50_us / report.floor_p50_us
    } else {
        0.0
    }
}

/// How many times faster than the reported mean (None where nothing was
/// reported).
pub fn speedup(r: &ScenarioResult) -> Option<f64> {
    let reported_us = r.scenario.reported_ms()? * 1000.0;
    (r.summary.mean_us > 0.0).then(|| reported_us / r.summary.mean_us)
}

/// A latency for people: µs below a millisecond, then ms, then s.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn fmt_kib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// The machine the run is on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub os: String,
}

pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!(" {}", s.trim()))
        .unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        os: format!("{}{kernel}", std::env::consts::OS),
    }
}

/// The table (and the targets and memory lines) as printed on stdout.
pub fn table(report: &Report) -> String {
    let o = &report.options;
    let m = machine();
    let mut s = String::new();
    let mode = if o.in_process {
        "all peers in this process (--in-process)"
    } else {
        "members as separate processes"
    };
    let _ = writeln!(
        s,
        "parley bench: {} messages per scenario ({}x for throughput), {}-byte bodies, {mode}",
        o.messages, THROUGHPUT_FACTOR, o.payload
    );
    let _ = writeln!(s, "machine: {} cores, {}, {}", m.cores, m.cpu, m.os);
    let _ = writeln!(s, "registry: {}", o.registry());
    let _ = writeln!(s);
    let header = [
        "scenario", "members", "msgs", "failed", "mean", "p50", "p90", "p99", "max", "msgs/s",
        "x floor", "reported", "speed-up",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in &report.results {
        let sm = &r.summary;
        rows.push(vec![
            r.scenario.name().to_owned(),
            if r.scenario.has_members() {
                r.members.to_string()
            } else {
                "-".into()
            },
            r.messages.to_string(),
            r.failed.to_string(),
            fmt_us(sm.mean_us),
            fmt_us(sm.p50_us),
            fmt_us(sm.p90_us),
            fmt_us(sm.p99_us),
            fmt_us(sm.max_us),
            format!("{:.0}", r.msgs_per_s()),
            format!("{:.2}", vs_floor(report, r)),
            r.scenario
                .reported_ms()
                .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
            speedup(r).map_or_else(|| "-".into(), |x| format!("{x:.0}x")),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str("  ");
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(s, "{}", "-".repeat(total));
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "latency: from the send call until every member has stored the message and acknowledged;"
    );
    let _ = writeln!(
        s,
        "x floor: p50 over the p50 of a bare gRPC Ping on the same loopback; reported: the Python design's mean."
    );
    let ran = |sc: Scenario| report.results.iter().any(|r| r.scenario == sc);
    if ran(Scenario::Login) {
        let _ = writeln!(
            s,
            "login: LoginChallenge, signature, UserLogin of a nick never used before, over a kept TLS channel; logged out after, untimed."
        );
    }
    if ran(Scenario::Join) {
        let _ = writeln!(
            s,
            "join: JoinRoom of a logged-in session into one room another session holds; left after, untimed."
        );
    }
    if ran(Scenario::Login) || ran(Scenario::Join) {
        let _ = writeln!(
            s,
            "login, join: calls to the router ({}), one after another; msgs = calls, msgs/s = calls per second of timed calls.",
            o.registry()
        );
    }
    for t in targets(report) {
        let value = if t.scenario == "throughput-private" {
            format!("{:.0} msgs/s", t.value)
        } else {
            format!("{:.2}x", t.value)
        };
        let _ = writeln!(
            s,
            "target {:<20} {:<34} {:>14}  {}",
            t.scenario,
            t.what,
            value,
            if t.met { "met" } else { "MISSED" }
        );
    }
    let peer_note = if o.in_process {
        "in-process: the bench process holds everything".to_owned()
    } else {
        format!(
            "router {}, peer {} (largest member process)",
            fmt_kib(report.router_peak_kib),
            fmt_kib(report.peer_peak_kib)
        )
    };
    let _ = writeln!(
        s,
        "peak memory (VmHWM): {peer_note}, bench process {} (senders)",
        fmt_kib(report.bench_peak_kib)
    );
    let _ = writeln!(s, "run took {:.1} s", report.total.as_secs_f64());
    s
}

#[derive(Serialize)]
struct JsonRow {
    name: &'static str,
    messages: usize,
    mean_us: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
    msgs_per_s: f64,
    vs_floor: f64,
    delivered: usize,
    failed: usize,
    senders: usize,
    /// null for the router calls (login, join): no conversation.
    members: Option<usize>,
    in_flight: usize,
    wall_s: f64,
    reported_us: Option<f64>,
    speedup_vs_reported: Option<f64>,
}

#[derive(Serialize)]
struct JsonMemory {
    router_peak_kib: Option<u64>,
    peer_peak_kib: Option<u64>,
    bench_peak_kib: Option<u64>,
    /// With --in-process only the bench process exists: its figure holds
    /// the router and every peer.
    in_process: bool,
}

#[derive(Serialize)]
struct JsonConfig {
    /// "in-memory" or "etcd".
    registry: &'static str,
    /// The etcd endpoints (empty in memory).
    etcd_endpoints: Vec<String>,
    /// The suffix of this run's nicks and rooms.
    run_id: String,
    messages: usize,
    throughput_messages: usize,
    room_size: usize,
    payload_bytes: usize,
    in_process: bool,
    in_flight: usize,
    warmup: usize,
}

#[derive(Serialize)]
struct JsonReport {
    scenarios: Vec<JsonRow>,
    floor_p50_us: f64,
    targets: Vec<Target>,
    peak_memory: JsonMemory,
    machine: Machine,
    config: JsonConfig,
    parley_version: &'static str,
    total_s: f64,
}

/// Every figure, as JSON, to `path`.
pub fn write_json(report: &Report, path: &Path) -> anyhow::Result<()> {
    let o = &report.options;
    let rows = report
        .results
        .iter()
        .map(|r| JsonRow {
            name: r.scenario.name(),
            messages: r.messages,
            mean_us: r.summary.mean_us,
            p50_us: r.summary.p50_us,
            p90_us: r.summary.p90_us,
            p99_us: r.summary.p99_us,
            max_us: r.summary.max_us,
            msgs_per_s: r.msgs_per_s(),
            vs_floor: vs_floor(report, r),
            delivered: r.delivered,
            failed: r.failed,
            senders: r.senders,
            members: (!r.scenario.is_registry_call()).then_some(r.members),
            in_flight: r.in_flight,
            wall_s: r.wall.as_secs_f64(),
            reported_us: r.scenario.reported_ms().map(|ms| ms * 1000.0),
            speedup_vs_reported: speedup(r),
        })
        .collect();
    let json = JsonReport {
        scenarios: rows,
        floor_p50_us: report.floor_p50_us,
        targets: targets(report),
        peak_memory: JsonMemory {
            router_peak_kib: report.router_peak_kib,
            peer_peak_kib: report.peer_peak_kib,
            bench_peak_kib: report.bench_peak_kib,
            in_process: o.in_process,
        },
        machine: machine(),
        config: JsonConfig {
            registry: if o.etcd.is_empty() {
                "in-memory"
            } else {
                "etcd"
            },
            etcd_endpoints: o.etcd.clone(),
            run_id: report.run_id.clone(),
            messages: o.messages,
            throughput_messages: o.messages * THROUGHPUT_FACTOR,
            room_size: o.room_size,
            payload_bytes: o.payload,
            in_process: o.in_process,
            in_flight: IN_FLIGHT,
            warmup: WARMUP,
        },
        parley_version: env!("CARGO_PKG_VERSION"),
        total_s: report.total.as_secs_f64(),
    };
    let text = serde_json::to_string_pretty(&json)?;
    std::fs::write(path, text + "\n")?;
    Ok(())
}
