//! Latency summaries: mean and nearest-rank percentiles over one scenario's
//! samples.

use std::time::Duration;

/// One scenario's latencies, summarised, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    pub count: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Microseconds, with the sub-microsecond part kept.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Sorts `samples` (µs) in place and summarises them; all zeros when empty.
pub fn summarise(samples: &mut [f64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    samples.sort_by(f64::total_cmp);
    let sum: f64 = samples.iter().sum();
    Summary {
        count: samples.len(),
        mean_us: sum / samples.len() as f64,
        p50_us: percentile(samples, 50.0),
        p90_us: percentile(samples, 90.0),
        p99_us: percentile(samples, 99.0),
        max_us: samples[samples.len() - 1],
    }
}

/// Nearest-rank percentile of sorted, non-empty samples: the smallest sample
/// with at least `p`% of the samples at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut s: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let sum = summarise(&mut s);
        assert_eq!(sum.count, 100);
        assert_eq!(sum.p50_us, 50.0);
        assert_eq!(sum.p90_us, 90.0);
        assert_eq!(sum.p99_us, 99.0);
        assert_eq!(sum.max_us, 100.0);
        assert!((sum.mean_us - 50.5).abs() < 1e-9);
    }

    #[test]
    fn one_and_none() {
        assert_eq!(summarise(&mut []), Summary::default());
        let s = summarise(&mut [7.0]);
        assert_eq!((s.p50_us, s.p99_us, s.max_us), (7.0, 7.0, 7.0));
    }
}

/// What one signature costs on this machine, on one core: what every
/// message pays at its sender and its receiver, measured in the same run.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct SignatureCost {
    /// Signing one message (µs, mean).
    pub sign_us: f64,
    /// Checking one strictly, as a message that arrives alone is (µs, mean).
    pub check_us: f64,
    /// Checking one within a batch of [`BATCH`], as a pull's pages and a
    /// busy link's batches are (µs per signature, mean).
    pub batch_check_us: f64,
}

/// The batch `signature_cost` times.
pub const BATCH: usize = 256;

/// Times signing and checking `n` messages of `payload` bytes (a few tenths
/// of a second at the default 1000).
pub fn signature_cost(n: usize, payload: usize) -> anyhow::Result<SignatureCost> {
    use parley::identity::{verify_messages, Identity};
    use parley::proto::ChatMessage;
    use std::time::Instant;
    let id = Identity::generate();
    let key = id.public();
    let n = n.max(1);
    let mut msgs: Vec<ChatMessage> = (0..n.max(BATCH) as u64)
        .map(|seq| ChatMessage {
            conversation: "#bench".into(),
            author: "bench".into(),
            incarnation: 1,
            seq: seq + 1,
            lamport: seq + 1,
            sent_at_ms: 1,
            body: "x".repeat(payload),
            ..ChatMessage::default()
        })
        .collect();
    let start = Instant::now();
    for m in msgs.iter_mut() {
        id.sign_message(m);
    }
    let sign_us = micros(start.elapsed()) / msgs.len() as f64;
    let start = Instant::now();
    let good = msgs
        .iter()
        .take(n)
        .filter(|m| key.verify_message(m))
        .count();
    let check_us = micros(start.elapsed()) / n as f64;
    let batch: Vec<_> = msgs.iter().take(BATCH).map(|m| (key, m)).collect();
    let start = Instant::now();
    let rounds = n.div_ceil(BATCH).max(1);
    let mut batch_good = 0;
    for _ in 0..rounds {
        batch_good += verify_messages(&batch).iter().filter(|ok| **ok).count();
    }
    let batch_check_us = micros(start.elapsed()) / (rounds * BATCH) as f64;
    // Every one was signed by that key: a refusal means the timing timed
    // the wrong thing.
    anyhow::ensure!(
        good == n && batch_good == rounds * BATCH,
        "timing signatures: {good} of {n} checked alone, {batch_good} of {} in batches",
        rounds * BATCH
    );
    Ok(SignatureCost {
        sign_us,
        check_us,
        batch_check_us,
    })
}
