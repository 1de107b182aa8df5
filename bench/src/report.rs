//! The run's results for people (a table on stdout) and for machines (a
//! JSON file), and the targets checked against the floor.

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
        // The tail: p99 at most `limit` times the row's own p50.
        let tail = |limit: f64| {
            let value = if r.summary.p50_us > 0.0 {
                r.summary.p99_us / r.summary.p50_us
            } else {
                0.0
            };
            Target {
                scenario: r.scenario.name(),
                what: format!("p99 at most {limit}x its p50"),
                limit,
                value,
                met: value > 0.0 && value <= limit,
            }
        };
        let rate = |limit: f64| Target {
            scenario: r.scenario.name(),
            what: format!("at least {limit:.0} messages/s"),
            limit,
            value: r.msgs_per_s(),
            met: r.msgs_per_s() >= limit,
        };
        // Issue 26's targets: TLS and signatures on (first-hand messages
        // authenticated by the link, their signatures checked off the
        // path), ratios to the floor of the same run.
        match r.scenario {
            Scenario::Private => {
                out.push(p50(2.0));
                out.push(tail(3.0));
            }
            Scenario::Room3 => {
                out.push(p50(2.5));
                out.push(tail(3.0));
            }
            Scenario::Room20 => out.push(p50(8.0)),
            Scenario::Room100 => out.push(p50(50.0)),
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
                        what: "p50 at most 1.15x private-unsigned".into(),
                        limit: 1.15,
                        value,
                        met: value > 0.0 && value <= 1.15,
                    });
                }
            }
            // Issue 24's targets: the paths to peers nobody can dial, as
            // ratios to the direct `private` pair of the same run (none
            // when it did not run).
            Scenario::PrivateReversed => out.extend(vs_private(report, r, 1.5)),
            Scenario::PrivateRelayed => out.extend(vs_private(report, r, 2.5)),
            // Set from their first measurements, in memory; see the README.
            // A login is two calls, a signature and its check: 2.9-3.6x
            // the floor. A join is one call.
            Scenario::Login if report.options.etcd.is_empty() => out.push(p50(4.0)),
            Scenario::Join if report.options.etcd.is_empty() => out.push(p50(2.0)),
            // Over its own floor (the rows copied between two files): first
            // measured at 17x, then 7-10x once a page's signatures were
            // checked in one batch while the one before is stored.
            Scenario::Join100k => out.push(Target {
                scenario: r.scenario.name(),
                what: "p50 at most 10x copying the rows".into(),
                limit: 10.0,
                value: vs,
                met: vs > 0.0 && vs <= 10.0,
            }),
            Scenario::ThroughputPrivate => out.push(rate(25_000.0)),
            Scenario::ThroughputRoom20 => out.push(rate(2_500.0)),
            _ => {}
        }
    }
    out
}

/// `r`'s p50 at most `limit` times `private`'s of the same run; None when
/// `private` did not run.
fn vs_private(report: &Report, r: &ScenarioResult, limit: f64) -> Option<Target> {
    let direct = report
        .results
        .iter()
        .find(|s| s.scenario == Scenario::Private)?;
    let value = if direct.summary.p50_us > 0.0 {
        r.summary.p50_us / direct.summary.p50_us
    } else {
        0.0
    };
    Some(Target {
        scenario: r.scenario.name(),
        what: format!("p50 at most {limit}x private"),
        limit,
        value,
        met: value > 0.0 && value <= limit,
    })
}

/// `mailbox`'s p50 over `private`'s p50 of the same run: what a line to
/// someone offline costs (deposit plus its share of the drain, per
/// message) against one to someone online. None unless both ran.
pub fn mailbox_vs_private(report: &Report) -> Option<f64> {
    let find = |s: Scenario| report.results.iter().find(|r| r.scenario == s);
    let (mailbox, private) = (find(Scenario::Mailbox)?, find(Scenario::Private)?);
    (private.summary.p50_us > 0.0).then(|| mailbox.summary.p50_us / private.summary.p50_us)
}

/// p50 as a multiple of the row's floor: its own where it has one
/// (`join-100k`: the rows copied between two files), else the Ping's p50.
/// 0 when there is no floor.
pub fn vs_floor(report: &Report, r: &ScenarioResult) -> f64 {
    let floor = r.own_floor_us.unwrap_or(report.floor_p50_us);
    if floor > 0.0 {
        r.summary.p50_us / floor
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

/// Columns every line on stdout fits in (counted in chars: `µ` is one).
/// Only what has no space to break at can exceed it: a very long etcd
/// URL, CPU name or output path.
pub const WIDTH: usize = 100;

/// The table, the notes under it, the target lines (only with
/// `show_targets`: `--targets`) and the memory lines, as printed on
/// stdout, every line at most [`WIDTH`] columns. The table keeps the
/// essential columns; mean, p90, max and the speed-up over the reported
/// figure are in the JSON only. The targets are in the JSON always, on
/// stdout only when asked for: someone who wants to see how fast it is
/// need not first read which of the design's goals it misses.
pub fn table(report: &Report, show_targets: bool) -> String {
    table_on(report, &machine(), show_targets)
}

fn table_on(report: &Report, m: &Machine, show_targets: bool) -> String {
    let o = &report.options;
    let mut s = String::new();
    let mut say = |line: &str| {
        for l in wrap(line, WIDTH) {
            s.push_str(&l);
            s.push('\n');
        }
    };
    say(&format!(
        "parley bench: {} messages per scenario ({}x for throughput), {}-byte bodies",
        o.messages, THROUGHPUT_FACTOR, o.payload
    ));
    say(if o.in_process {
        "processes: the router and every peer in the bench process (--in-process)"
    } else {
        "processes: the router and every member a child process; the senders in the bench"
    });
    say(&format!("machine: {} cores, {}, {}", m.cores, m.cpu, m.os));
    say(&format!("registry: {}", o.registry()));
    say("");
    let (lines, has_reported) = rows(report);
    for line in &lines {
        say(line);
    }
    say("");
    say("latency: from the send call until every member has stored the message and acknowledged;");
    say("x floor: p50 over the p50 of a bare gRPC Ping on the same loopback;");
    if has_reported {
        say("reported: the Python design's mean. Only in the --json file: mean, p90, max, speed-up.");
    } else {
        say(
            "Only in the --json file: mean, p90, max, the Python design's reported mean, speed-up.",
        );
    }
    let ran = |sc: Scenario| report.results.iter().any(|r| r.scenario == sc);
    if ran(Scenario::Login) {
        say("login: LoginChallenge, signature, UserLogin of a nick never used before, over a kept TLS channel; logged out after, untimed.");
    }
    if ran(Scenario::Join) {
        say("join: JoinRoom of a logged-in session into one room another session holds; left after, untimed.");
    }
    if ran(Scenario::PrivateReversed) {
        say("private-reversed: private, from the same sender to a member the router cannot dial back (it advertises an address nothing listens at): the member dials the sender (connection reversal).");
    }
    if ran(Scenario::PrivateRelayed) {
        say("private-relayed: private between two peers the router cannot dial back: through the router's relay circuit, their own TLS end to end.");
    }
    if ran(Scenario::Mailbox) {
        say("mailbox: per message, the deposit plus its share of the drain. The sender of private writes one private line to a member that is offline (started once, then shut down): the deposit, from the send call until the sender's outbox owes the member nothing (the router acknowledged the sealed envelope); after the row's lines the member starts again (in the bench process) and drains its mailbox: from its start returning until its mailbox event, shared over every line drained, warm-up included.");
    }
    if let Some(x) = mailbox_vs_private(report) {
        say(&format!(
            "mailbox: {x:.2}x private (deposit plus drain, per message; p50 over private's p50)"
        ));
    }
    if let Some(r) = report
        .results
        .iter()
        .find(|r| r.scenario == Scenario::Join100k)
    {
        say(&format!(
            "join-100k: a new member joins a room whose history ({} messages, one author's, signed) {} members hold, and pulls it all; p50 = time to joined; x floor: over copying the same rows between two SQLite files on this disk ({}).",
            r.messages,
            r.members - 1,
            fmt_us(r.own_floor_us.unwrap_or(0.0))
        ));
    }
    if ran(Scenario::Login) || ran(Scenario::Join) {
        say(&format!(
            "login, join: calls to the router ({}), one after another; msgs = calls, msgs/s = calls per second of timed calls.",
            o.registry()
        ));
    }
    if show_targets {
        for t in targets(report) {
            let value = if t.scenario.starts_with("throughput") {
                format!("{:.0} msgs/s", t.value)
            } else {
                format!("{:.2}x", t.value)
            };
            say(&format!(
                "target {:<20} {:<34} {:>14}  {}",
                t.scenario,
                t.what,
                value,
                if t.met { "met" } else { "MISSED" }
            ));
        }
    }
    let sig = &report.signatures;
    say(&format!(
        "signatures here, one core, {}-byte bodies: sign {}, strict check {} (a message alone), {} each in a batch of {} (a pull, a busy link)",
        o.payload,
        fmt_us(sig.sign_us),
        fmt_us(sig.check_us),
        fmt_us(sig.batch_check_us),
        crate::stats::BATCH
    ));
    say(&if o.in_process {
        format!(
            "peak memory (VmHWM): bench process {} (the router, every peer, the senders)",
            fmt_kib(report.bench_peak_kib)
        )
    } else {
        format!(
            "peak memory (VmHWM): router {}, peer {} (largest member), bench {} (senders)",
            fmt_kib(report.router_peak_kib),
            fmt_kib(report.peer_peak_kib),
            fmt_kib(report.bench_peak_kib)
        )
    });
    say(&format!("run took {:.1} s", report.total.as_secs_f64()));
    s
}

/// The table's header, rule and rows, and whether the `reported` column is
/// in it: it is the first to go when the rows would not fit [`WIDTH`].
fn rows(report: &Report) -> (Vec<String>, bool) {
    let header = [
        "scenario", "members", "msgs", "failed", "p50", "p99", "msgs/s", "x floor", "reported",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in &report.results {
        let sm = &r.summary;
        cells.push(vec![
            r.scenario.name().to_owned(),
            if r.scenario.has_members() {
                r.members.to_string()
            } else {
                "-".into()
            },
            r.messages.to_string(),
            r.failed.to_string(),
            fmt_us(sm.p50_us),
            fmt_us(sm.p99_us),
            format!("{:.0}", r.msgs_per_s()),
            format!("{:.2}", vs_floor(report, r)),
            r.scenario
                .reported_ms()
                .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    // All columns two apart; else without `reported`; else one apart.
    let fits = |columns: usize, gap: usize| {
        widths[..columns].iter().sum::<usize>() + gap * (columns - 1) <= WIDTH
    };
    let all = header.len();
    let (columns, gap) = if fits(all, 2) {
        (all, 2)
    } else if fits(all - 1, 2) {
        (all - 1, 2)
    } else {
        (all - 1, 1)
    };
    let mut lines = Vec::new();
    for (i, row) in cells.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate().take(columns) {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(gap + pad));
                line.push_str(cell);
            }
        }
        lines.push(line.trim_end().to_owned());
        if i == 0 {
            let total = widths[..columns].iter().sum::<usize>() + gap * (columns - 1);
            lines.push("-".repeat(total));
        }
    }
    (lines, columns == all)
}

/// `line` broken at spaces into lines of at most `width` chars, the
/// continuation lines indented by two. A word longer than a line is broken
/// after its commas (a list of URLs) if it has any, else left whole and
/// over `width`.
pub fn wrap(line: &str, width: usize) -> Vec<String> {
    const INDENT: &str = "  ";
    if line.chars().count() <= width {
        return vec![line.to_owned()];
    }
    // Pieces to place, each with whether a space goes before it.
    let mut pieces: Vec<(&str, bool)> = Vec::new();
    for word in line.split(' ').filter(|w| !w.is_empty()) {
        if word.chars().count() <= width - INDENT.len() {
            pieces.push((word, true));
            continue;
        }
        let mut first = true;
        for part in word.split_inclusive(',') {
            pieces.push((part, first));
            first = false;
        }
    }
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut cur_len = 0;
    for (piece, spaced) in pieces {
        let len = piece.chars().count();
        let sep = usize::from(spaced && cur_len > 0 && !cur.ends_with(' '));
        let empty = cur.trim().is_empty();
        if !empty && cur_len + sep + len > width {
            out.push(cur);
            cur = INDENT.to_owned();
            cur_len = INDENT.len();
        } else if sep == 1 {
            cur.push(' ');
            cur_len += 1;
        }
        cur.push_str(piece);
        cur_len += len;
    }
    out.push(cur);
    out
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
    /// The row's own floor, µs, where vs_floor is not over the Ping's p50
    /// (join-100k: the rows copied between two SQLite files); else null.
    own_floor_us: Option<f64>,
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
    /// What one signature costs here (µs): sign_us, check_us,
    /// batch_check_us.
    signatures: crate::stats::SignatureCost,
    targets: Vec<Target>,
    /// mailbox's p50 over private's p50 of the same run (deposit plus its
    /// share of the drain, per message); null unless both ran.
    mailbox_vs_private: Option<f64>,
    peak_memory: JsonMemory,
    machine: Machine,
    config: JsonConfig,
    parley_version: &'static str,
    total_s: f64,
}

/// Every figure, as JSON text.
pub fn json(report: &Report) -> anyhow::Result<String> {
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
            own_floor_us: r.own_floor_us,
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
        signatures: report.signatures,
        targets: targets(report),
        mailbox_vs_private: mailbox_vs_private(report),
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
    Ok(serde_json::to_string_pretty(&json)? + "\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::scenario::Options;
    use crate::stats::Summary;

    /// A report of every scenario with figures as wide as they come.
    fn wide_report(options: Options) -> Report {
        let results = Scenario::ALL
            .into_iter()
            .map(|scenario| ScenarioResult {
                scenario,
                messages: 100_000,
                delivered: 99_990,
                failed: 10,
                senders: 2,
                members: 1000,
                in_flight: IN_FLIGHT,
                wall: Duration::from_millis(3),
                summary: Summary {
                    count: 99_990,
                    mean_us: 123_456_789.0,
                    p50_us: 987_654_321.0,
                    p90_us: 999_999.0,
                    p99_us: 1_234_567_890.0,
                    max_us: 9_876_543_210.0,
                },
                samples: Vec::new(),
                own_floor_us: (scenario == Scenario::Join100k).then_some(1.0),
            })
            .collect();
        Report {
            options,
            run_id: "x".into(),
            results,
            floor_p50_us: 1.0,
            signatures: crate::stats::SignatureCost {
                sign_us: 123_456.0,
                check_us: 123_456.0,
                batch_check_us: 123_456.0,
            },
            router_peak_kib: Some(123_456_789),
            peer_peak_kib: Some(123_456_789),
            bench_peak_kib: Some(123_456_789),
            total: Duration::from_secs(12_345),
        }
    }

    fn assert_fits(text: &str) {
        for line in text.lines() {
            let n = line.chars().count();
            assert!(n <= WIDTH, "{n} columns: {line}\n{text}");
        }
    }

    #[test]
    fn the_table_fits_even_with_wide_figures() {
        let machine = Machine {
            cores: 128,
            cpu: "Intel(R) Xeon(R) Platinum 8480+ Sapphire Rapids 56-Core Processor @ 2.00GHz"
                .into(),
            os: "linux 6.18.44-a-rather-long-kernel-release-name".into(),
        };
        let etcd = Options {
            etcd: (1..=4)
                .map(|i| format!("http://etcd-{i}.example.internal:23790"))
                .collect(),
            messages: 100_000,
            ..Options::default()
        };
        for options in [
            Options::default(),
            Options {
                in_process: true,
                ..Options::default()
            },
            etcd,
        ] {
            // With the target lines, the widest the table gets.
            let text = table_on(&wide_report(options), &machine, true);
            assert_fits(&text);
            assert!(text.contains("\nfloor "), "{text}");
        }
    }

    #[test]
    fn the_reported_column_goes_when_the_rows_would_not_fit() {
        let report = wide_report(Options::default());
        let (lines, has_reported) = rows(&report);
        // 1000 members, 100000 msgs, seconds and a huge x floor.
        assert!(lines[0].contains("x floor"), "{lines:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH));
        if !has_reported {
            assert!(!lines[0].contains("reported"));
        }
    }

    #[test]
    fn the_walled_rows_are_held_to_private_of_the_same_run() {
        let mut report = wide_report(Options::default());
        let set_p50 = |report: &mut Report, s: Scenario, us: f64| {
            let r = report.results.iter_mut().find(|r| r.scenario == s).unwrap();
            r.summary.p50_us = us;
        };
        set_p50(&mut report, Scenario::Private, 400.0);
        set_p50(&mut report, Scenario::PrivateReversed, 560.0);
        set_p50(&mut report, Scenario::PrivateRelayed, 1200.0);
        let all = targets(&report);
        let find = |name: &str| all.iter().find(|t| t.scenario == name).unwrap();
        let reversed = find("private-reversed");
        assert_eq!(reversed.what, "p50 at most 1.5x private");
        assert!((reversed.value - 1.4).abs() < 1e-9 && reversed.met);
        let relayed = find("private-relayed");
        assert_eq!(relayed.what, "p50 at most 2.5x private");
        assert!((relayed.value - 3.0).abs() < 1e-9 && !relayed.met);
        // Without `private` in the run there is nothing to compare with.
        report.results.retain(|r| r.scenario != Scenario::Private);
        let all = targets(&report);
        assert!(!all.iter().any(|t| t.scenario.starts_with("private-re")));
    }

    #[test]
    fn the_mailbox_row_is_shown_against_private_of_the_same_run() {
        let mut report = wide_report(Options::default());
        for r in report.results.iter_mut() {
            match r.scenario {
                Scenario::Private => r.summary.p50_us = 400.0,
                Scenario::Mailbox => r.summary.p50_us = 1000.0,
                _ => {}
            }
        }
        let x = mailbox_vs_private(&report).unwrap();
        assert!((x - 2.5).abs() < 1e-9, "{x}");
        let text = table_on(&report, &machine(), false);
        assert!(
            text.contains("\nmailbox: 2.50x private (deposit plus drain, per message"),
            "{text}"
        );
        assert!(
            text.contains("\nmailbox: per message, the deposit plus its share of the drain."),
            "{text}"
        );
        // Not a target: nothing is held to a limit.
        assert!(!targets(&report).iter().any(|t| t.scenario == "mailbox"));
        let doc: serde_json::Value = serde_json::from_str(&json(&report).unwrap()).unwrap();
        assert!((doc["mailbox_vs_private"].as_f64().unwrap() - 2.5).abs() < 1e-9);
        // Without `private` in the run there is nothing to compare with.
        report.results.retain(|r| r.scenario != Scenario::Private);
        assert!(mailbox_vs_private(&report).is_none());
        assert!(!table_on(&report, &machine(), false).contains("x private (deposit"));
        let doc: serde_json::Value = serde_json::from_str(&json(&report).unwrap()).unwrap();
        assert!(doc["mailbox_vs_private"].is_null());
    }

    #[test]
    fn target_lines_only_when_asked_for() {
        let report = wide_report(Options::default());
        let is_target = |l: &&str| l.starts_with("target ");
        let quiet = table_on(&report, &machine(), false);
        assert_eq!(quiet.lines().filter(is_target).count(), 0, "{quiet}");
        let loud = table_on(&report, &machine(), true);
        assert_eq!(
            loud.lines().filter(is_target).count(),
            targets(&report).len(),
            "{loud}"
        );
        // Nothing else differs.
        let rest: Vec<&str> = loud.lines().filter(|l| !is_target(l)).collect();
        assert_eq!(rest, quiet.lines().collect::<Vec<_>>());
    }

    /// The keys of a JSON object, sorted.
    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        k.sort_unstable();
        k
    }

    #[test]
    fn the_json_keeps_its_fields_and_its_targets() {
        // The file's shape is for machines: whatever the table shows (with
        // or without --targets), these stay.
        let report = wide_report(Options::default());
        let doc: serde_json::Value = serde_json::from_str(&json(&report).unwrap()).unwrap();
        assert_eq!(
            keys(&doc),
            [
                "config",
                "floor_p50_us",
                "machine",
                "mailbox_vs_private",
                "parley_version",
                "peak_memory",
                "scenarios",
                "signatures",
                "targets",
                "total_s"
            ]
        );
        assert_eq!(
            keys(&doc["scenarios"][0]),
            [
                "delivered",
                "failed",
                "in_flight",
                "max_us",
                "mean_us",
                "members",
                "messages",
                "msgs_per_s",
                "name",
                "own_floor_us",
                "p50_us",
                "p90_us",
                "p99_us",
                "reported_us",
                "senders",
                "speedup_vs_reported",
                "vs_floor",
                "wall_s"
            ]
        );
        let targets = doc["targets"].as_array().unwrap();
        assert_eq!(targets.len(), super::targets(&report).len());
        assert_eq!(
            keys(&targets[0]),
            ["limit", "met", "scenario", "value", "what"]
        );
        assert_eq!(
            keys(&doc["config"]),
            [
                "etcd_endpoints",
                "in_flight",
                "in_process",
                "messages",
                "payload_bytes",
                "registry",
                "room_size",
                "run_id",
                "throughput_messages",
                "warmup"
            ]
        );
        assert_eq!(
            keys(&doc["peak_memory"]),
            [
                "bench_peak_kib",
                "in_process",
                "peer_peak_kib",
                "router_peak_kib"
            ]
        );
    }

    #[test]
    fn wrap_breaks_at_spaces_then_commas() {
        let line = "word ".repeat(30);
        let wrapped = wrap(line.trim_end(), 40);
        assert!(wrapped.len() > 1);
        assert!(
            wrapped.iter().all(|l| l.chars().count() <= 40),
            "{wrapped:?}"
        );
        assert!(wrapped[1..].iter().all(|l| l.starts_with("  w")));
        assert_eq!(
            wrapped.join(" ").split_whitespace().count(),
            30,
            "{wrapped:?}"
        );
        let urls = format!("registry: etcd at {}", ["http://a.example:1"; 5].join(","));
        let wrapped = wrap(&urls, 40);
        assert!(
            wrapped.iter().all(|l| l.chars().count() <= 40),
            "{wrapped:?}"
        );
        assert_eq!(wrapped.concat().replace(' ', ""), urls.replace(' ', ""));
        // Short lines and unbreakable words are left alone.
        assert_eq!(wrap("short", 40), ["short"]);
        let long = "x".repeat(50);
        assert_eq!(wrap(&long, 40), [long]);
    }
}
