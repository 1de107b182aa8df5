//! The bundled benchmark end to end: the real `bench` binary with few
//! messages, members as processes and in-process. Checks that it runs and
//! reports, never how fast (targets are the benchmark's own business).

use std::process::Command;

const ROWS: [&str; 9] = [
    "floor",
    "private",
    "private-unsigned",
    "private-both",
    "room-3",
    "room-20",
    "room-3-two-senders",
    "throughput-private",
    "throughput-room-20",
];

fn run_bench(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let svg = tmp.path().join("bench.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--messages", "20", "--room-size", "4", "--quiet", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}\n{stdout}");

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = doc["scenarios"].as_array().unwrap();
    assert_eq!(rows.len(), ROWS.len(), "{doc:#}");
    for name in ROWS {
        // The table: a line starting with the name, with positive figures.
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{stdout}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        let msgs: usize = cells[2].parse().unwrap();
        let failed: usize = cells[3].parse().unwrap();
        assert!(msgs > 0 && failed == 0, "{line}");

        // The JSON row of the same name holds the same figures.
        let row = rows
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in the JSON"));
        assert_eq!(row["messages"].as_u64(), Some(msgs as u64), "{row}");
        for field in [
            "mean_us",
            "p50_us",
            "p90_us",
            "p99_us",
            "max_us",
            "msgs_per_s",
            "vs_floor",
        ] {
            let v = row[field].as_f64().unwrap_or(0.0);
            assert!(v > 0.0, "{name}.{field} = {v}");
        }
        let msgs_per_s = row["msgs_per_s"].as_f64().unwrap();
        // name, members, msgs, failed, five "<n> <unit>" latencies, msgs/s.
        let shown: f64 = cells[14].parse().unwrap();
        assert!((msgs_per_s.round() - shown).abs() <= 1.0, "{line} vs {row}");
    }
    // Signatures' cost is stated against the unsigned pair of the same run.
    let targets = doc["targets"].as_array().unwrap();
    assert!(
        targets.iter().any(|t| t["scenario"] == "private"
            && t["what"].as_str().unwrap().contains("private-unsigned")
            && t["value"].as_f64().unwrap() > 0.0),
        "{targets:?}"
    );
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.contains("<svg") && picture.contains("room-3-two-senders"));
}

#[test]
fn bench_with_members_as_processes() {
    run_bench(&[]);
}

#[test]
fn bench_in_process() {
    run_bench(&["--in-process"]);
}
