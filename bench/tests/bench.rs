//! The bundled benchmark end to end: the real `bench` binary with few
//! messages, members as processes and in-process, the registry in memory
//! and (ignored unless asked: it needs the `etcd` binary) in a real etcd.
//! Checks that it runs and reports sane figures, never how fast (targets
//! are the benchmark's own business).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every row of a default run, in the table's order.
const ROWS: [&str; 16] = [
    "floor",
    "login",
    "join",
    "private",
    "private-unsigned",
    "private-reversed",
    "private-relayed",
    "mailbox",
    "private-both",
    "room-3",
    "room-20",
    "room-3-two-senders",
    "throughput-private",
    "throughput-room-20",
    "join-100k",
    "room-100",
];

/// `--messages` of every run here.
const MESSAGES: usize = 20;

/// Held by every full run: two benches at once (the test harness runs
/// tests in parallel) put 200 peers on 2 cores, and starved peers miss the
/// deadlines the bench itself counts as failures.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a run printed and wrote.
struct Run {
    stdout: String,
    doc: serde_json::Value,
}

/// Runs the bench with `extra` and checks every row of `rows`: in the
/// table, in the JSON, the same figures, all of them sane.
fn run_bench(extra: &[&str], rows: &[&str]) -> Run {
    // A run that failed (panicked) still leaves the lock usable.
    let _one = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let svg = tmp.path().join("bench.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--messages", &MESSAGES.to_string()])
        .args(["--room-size", "4", "--quiet", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}\n{stdout}");

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let json_rows = doc["scenarios"].as_array().unwrap();
    let names: Vec<&str> = json_rows
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, rows, "{doc:#}");
    let floor_p50 = doc["floor_p50_us"].as_f64().unwrap();
    assert!(floor_p50 > 0.0, "{doc:#}");
    for &name in rows {
        // The table: a line starting with the name, with positive figures.
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{stdout}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        // name, members, msgs, failed, p50 and p99 ("<n> <unit>" each),
        // msgs/s, x floor, reported ("-" or "<n> ms").
        assert!(cells.len() == 11 || cells.len() == 12, "{line}");
        let msgs: usize = cells[2].parse().unwrap();
        let failed: usize = cells[3].parse().unwrap();
        assert!(msgs > 0 && failed == 0, "{line}");
        let router_call = name == "login" || name == "join";
        if router_call || name == "floor" {
            assert_eq!(cells[1], "-", "{line}");
        } else {
            assert!(cells[1].parse::<usize>().unwrap() >= 2, "{line}");
        }
        let one_sender_private = [
            "private",
            "private-unsigned",
            "private-reversed",
            "private-relayed",
            "mailbox",
        ];
        if router_call || name == "floor" || one_sender_private.contains(&name) {
            assert_eq!(msgs, MESSAGES, "{line}");
        }

        // The JSON row of the same name holds the same figures.
        let row = json_rows.iter().find(|r| r["name"] == name).unwrap();
        assert_eq!(row["messages"].as_u64(), Some(msgs as u64), "{row}");
        assert_eq!(row["delivered"].as_u64(), Some(msgs as u64), "{row}");
        assert_eq!(row["failed"].as_u64(), Some(0), "{row}");
        let f = |field: &str| {
            let v = row[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}.{field} missing: {row}"));
            assert!(v > 0.0 && v.is_finite(), "{name}.{field} = {v}");
            v
        };
        let (mean, p50, p90, p99, max) = (
            f("mean_us"),
            f("p50_us"),
            f("p90_us"),
            f("p99_us"),
            f("max_us"),
        );
        assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "{row}");
        assert!(mean <= max, "{row}");
        // Nothing on loopback takes a minute.
        assert!(max < 60e6, "{row}");
        let vs_floor = f("vs_floor");
        // join-100k is measured against its own floor: the same rows
        // copied between two SQLite files; every other row against the Ping.
        let own_floor = row["own_floor_us"].as_f64();
        assert_eq!(own_floor.is_some(), name == "join-100k", "{row}");
        let floor = own_floor.unwrap_or(floor_p50);
        assert!(floor > 0.0, "{row}");
        assert!((vs_floor - p50 / floor).abs() < 1e-6 * vs_floor, "{row}");
        let msgs_per_s = f("msgs_per_s");
        f("wall_s");
        // p50 and p99 as shown (2 decimals of ms or s, whole µs).
        for (at, us) in [(4, p50), (6, p99)] {
            let shown = latency_us(cells[at], cells[at + 1]);
            assert!(
                (us - shown).abs() <= 0.006 * us.max(1000.0),
                "{line} vs {row}"
            );
        }
        let shown: f64 = cells[8].parse().unwrap();
        assert!((msgs_per_s.round() - shown).abs() <= 1.0, "{line} vs {row}");
        let shown_vs: f64 = cells[9].parse().unwrap();
        assert!((vs_floor - shown_vs).abs() <= 0.006, "{line} vs {row}");
        if router_call {
            // One call after another, their rate over the timed calls only.
            assert!(row["members"].is_null(), "{row}");
            let one_over_mean = 1e6 / mean;
            assert!(
                (msgs_per_s - one_over_mean).abs() <= 0.01 * one_over_mean,
                "{row}"
            );
        } else {
            assert!(row["members"].as_u64().unwrap() >= 2, "{row}");
        }
        if name == "join-100k" {
            // A history of 100x --messages, held by 3 members, all of it
            // pulled by the joiner in the one timed join.
            assert_eq!(msgs, 100 * MESSAGES, "{line}");
            assert_eq!(row["members"].as_u64(), Some(4), "{row}");
            assert_eq!(row["p50_us"], row["max_us"], "one join: {row}");
            let wall = row["wall_s"].as_f64().unwrap();
            assert!((wall * 1e6 - p50).abs() <= 1e-6 * p50, "{row}");
            assert!(stdout.contains("\njoin-100k: "), "{stdout}");
        }
        if name == "room-100" {
            // A hundred members, whatever --room-size says.
            assert_eq!(row["members"].as_u64(), Some(100), "{row}");
            assert_eq!(cells[1], "100", "{line}");
        }
    }
    // What a signature costs here, timed in the same run.
    for field in ["sign_us", "check_us", "batch_check_us"] {
        let v = doc["signatures"][field].as_f64().unwrap_or(0.0);
        assert!(v > 0.0 && v < 100_000.0, "signatures.{field} = {v}");
    }
    assert!(stdout.contains("\nsignatures here, one core, "), "{stdout}");
    if rows.contains(&"login") || rows.contains(&"join") {
        assert!(
            stdout.contains("\nlogin: ") && stdout.contains("\njoin: "),
            "{stdout}"
        );
    }
    if rows.contains(&"private-unsigned") {
        // Signatures' cost is stated against the unsigned pair of the run.
        let targets = doc["targets"].as_array().unwrap();
        assert!(
            targets.iter().any(|t| t["scenario"] == "private"
                && t["what"].as_str().unwrap().contains("private-unsigned")
                && t["value"].as_f64().unwrap() > 0.0),
            "{targets:?}"
        );
    }
    // The paths to peers nobody can dial are held to the direct pair.
    for (name, limit) in [("private-reversed", 1.5), ("private-relayed", 2.5)] {
        if rows.contains(&name) && rows.contains(&"private") {
            let targets = doc["targets"].as_array().unwrap();
            let t = targets
                .iter()
                .find(|t| t["scenario"] == name)
                .unwrap_or_else(|| panic!("no {name} target: {targets:?}"));
            assert_eq!(t["what"], format!("p50 at most {limit}x private"), "{t}");
            assert!(t["value"].as_f64().unwrap() > 0.0, "{t}");
            assert!(stdout.contains(&format!("\n{name}: ")), "{stdout}");
        }
    }
    // The mailbox row is described, and shown against private of the run.
    if rows.contains(&"mailbox") {
        assert!(
            stdout.contains("\nmailbox: per message, the deposit plus its share of the drain."),
            "{stdout}"
        );
        let vs = doc["mailbox_vs_private"].as_f64();
        if rows.contains(&"private") {
            assert!(vs.is_some_and(|x| x > 0.0), "{doc:#}");
            assert!(
                stdout.contains("x private (deposit plus drain, per message"),
                "{stdout}"
            );
        } else {
            assert!(vs.is_none(), "{doc:#}");
        }
    }
    // Every line of stdout fits 100 columns (chars: µ is one), the
    // header, rule, rows, legend, targets and memory lines alike.
    for l in stdout.lines() {
        assert!(
            l.chars().count() <= 100,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    // The last lines say where the files went, as absolute paths.
    let tail: Vec<&str> = stdout.lines().rev().take(2).collect();
    let abs = |p: &std::path::Path| std::fs::canonicalize(p).unwrap();
    assert_eq!(
        tail[1],
        format!("json: {}", abs(&json).display()),
        "{stdout}"
    );
    assert_eq!(tail[0], format!("svg: {}", abs(&svg).display()), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
    // The targets: on stdout only with --targets, in the JSON always.
    let target_lines = stdout.lines().filter(|l| l.starts_with("target ")).count();
    let json_targets = doc["targets"].as_array().map_or(0, Vec::len);
    assert!(json_targets > 0, "{doc:#}");
    if extra.contains(&"--targets") {
        assert_eq!(target_lines, json_targets, "{stdout}");
    } else {
        assert_eq!(target_lines, 0, "{stdout}");
    }
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.contains("<svg"));
    for name in rows {
        assert!(
            picture.contains(&format!("{name}  p50")),
            "{name} not drawn"
        );
    }
    // The legend names every row that ran, in order, and nothing else.
    let legend: Vec<&str> = picture
        .lines()
        .filter(|l| l.starts_with(r#"<text class="legend""#))
        .filter_map(|l| l.split('>').nth(1)?.split("  ").next())
        .collect();
    assert_eq!(legend, rows, "{picture}");
    Run { stdout, doc }
}

/// A latency as the table shows it (`412 µs`, `1.23 ms`, `2.50 s`), in µs.
fn latency_us(n: &str, unit: &str) -> f64 {
    let n: f64 = n.parse().unwrap();
    match unit {
        "µs" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        other => panic!("unit {other}"),
    }
}

/// The registry the run says it measured, in the table and in the JSON.
fn assert_registry(run: &Run, line: &str, kind: &str) {
    assert!(
        run.stdout.lines().any(|l| l == format!("registry: {line}")),
        "{}",
        run.stdout
    );
    assert_eq!(run.doc["config"]["registry"], kind, "{:#}", run.doc);
}

#[test]
fn bench_with_members_as_processes() {
    let run = run_bench(&[], &ROWS);
    assert_registry(&run, "in-memory", "in-memory");
}

#[test]
fn bench_in_process() {
    // And the target lines asked for (the other run checks they are not
    // printed unasked).
    let run = run_bench(&["--in-process", "--targets"], &ROWS);
    assert_registry(&run, "in-memory", "in-memory");
}

#[test]
fn bench_says_so_when_etcd_does_not_answer() {
    // A port nothing listens on (bound, then let go).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--etcd", &url, "--messages", "5", "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "no scenario ran");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("bench: ") && lines[0].contains(&format!("etcd at {url}")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Runs the bench (default scenarios and messages: a run of seconds) with
/// `args`, expecting it to stop at once on a bad output path: exit code
/// 1, nothing on stdout, one line on stderr naming `path`.
fn refused(args: &[&std::ffi::OsStr], path: &std::path::Path) -> String {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("bench: "), "{stderr}");
    assert!(lines[0].contains(&path.display().to_string()), "{stderr}");
    // A run of every scenario at the default 1000 messages takes many
    // seconds (and starting the router and 20 peers alone takes more than
    // this): the path is refused before any of it.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    stderr
}

#[test]
fn bench_refuses_a_bad_svg_path_before_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    // Its directory does not exist.
    let svg = tmp.path().join("no-such-dir").join("bench.svg");
    let json = tmp.path().join("bench.json");
    let stderr = refused(
        &[
            "--json".as_ref(),
            json.as_ref(),
            "--svg".as_ref(),
            svg.as_ref(),
        ],
        &svg,
    );
    assert!(
        stderr.contains("--svg") && stderr.contains("does not exist"),
        "{stderr}"
    );
    // The JSON file, fine but never written, is not left behind.
    assert!(!json.exists());
    // A directory.
    let stderr = refused(&["--svg".as_ref(), tmp.path().as_ref()], tmp.path());
    assert!(stderr.contains("is a directory"), "{stderr}");
    // A file where a directory should be.
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let under = file.join("bench.svg");
    refused(&["--svg".as_ref(), under.as_ref()], &under);
}

#[test]
fn bench_refuses_an_unwritable_json_directory() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("read-only");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(dir.join("probe"), "").is_ok() {
        eprintln!("skipped: permissions do not bind here (root)");
        return;
    }
    let json = dir.join("bench.json");
    let stderr = refused(&["--json".as_ref(), json.as_ref()], &json);
    assert!(stderr.contains("not writable"), "{stderr}");
}

#[test]
fn bench_prints_the_table_when_the_svg_cannot_be_written_after_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    let json = tmp.path().join("bench.json");
    let svg = dir.join("bench.svg");
    let child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--scenario", "private", "--messages", "500", "--quiet"])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The file is there once checked, before the run; then its directory
    // goes, so writing it after the run fails.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !svg.exists() {
        assert!(Instant::now() < deadline, "{} never created", svg.display());
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some("private")),
        "{stdout}"
    );
    // The JSON went where asked; the svg line is not there.
    let json_line = format!("json: {}", std::fs::canonicalize(&json).unwrap().display());
    assert_eq!(stdout.lines().last(), Some(json_line.as_str()), "{stdout}");
    assert!(!stdout.contains("svg: "), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(&svg.display().to_string()), "{stderr}");
}

/// How long etcd may take to answer once started.
const ETCD_HEALTHY_WITHIN: Duration = Duration::from_secs(15);

/// A one-member etcd on free loopback ports (never 2379/2380), its data
/// in a temporary directory; killed on drop.
struct Etcd {
    url: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Etcd {
        // Both ports held at once, so they differ; let go for etcd to take.
        let (client, peer) = {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let b = TcpListener::bind("127.0.0.1:0").unwrap();
            (
                a.local_addr().unwrap().port(),
                b.local_addr().unwrap().port(),
            )
        };
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let dir = tempfile::Builder::new()
            .prefix("parley-bench-etcd-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "bench"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "parley-bench-test"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("etcd runs (apt-get install etcd-server)");
        let etcd = Etcd { url, child, dir };
        etcd.wait_healthy(client);
        etcd
    }

    /// Waits until etcd's `/health` says so; panics with its log if it
    /// does not within `ETCD_HEALTHY_WITHIN`.
    fn wait_healthy(&self, port: u16) {
        let deadline = Instant::now() + ETCD_HEALTHY_WITHIN;
        while !healthy(port) {
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.path().join("etcd.log"));
                panic!(
                    "etcd at {} not healthy within {ETCD_HEALTHY_WITHIN:?}:\n{}",
                    self.url,
                    log.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the etcd on `port` answers `GET /health` with health true.
fn healthy(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

fn etcd_run(etcd: &Etcd, extra: &[&str]) -> Run {
    let mut args = vec![
        "--etcd",
        etcd.url.as_str(),
        "--scenario",
        "login",
        "--scenario",
        "join",
        "--scenario",
        "private",
    ];
    args.extend_from_slice(extra);
    let run = run_bench(&args, &["floor", "login", "join", "private"]);
    assert_registry(&run, &format!("etcd at {}", etcd.url), "etcd");
    assert_eq!(
        run.doc["config"]["etcd_endpoints"],
        serde_json::json!([etcd.url]),
        "{:#}",
        run.doc
    );
    run
}

#[test]
#[ignore = "needs etcd"]
fn bench_with_the_registry_in_etcd() {
    let etcd = Etcd::start();
    // Twice on one etcd: what the first run bound (every nick, forever)
    // must not refuse the second's logins.
    let first = etcd_run(&etcd, &[]);
    let second = etcd_run(&etcd, &[]);
    assert_ne!(
        first.doc["config"]["run_id"], second.doc["config"]["run_id"],
        "two runs, one suffix"
    );
    // The router in the bench process, on the same etcd.
    etcd_run(&etcd, &["--in-process"]);
    drop(etcd);
}
