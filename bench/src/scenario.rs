//! What a run is made of: the scenarios, the options a run takes, and what
//! it measured (one row per scenario, and the whole report).

use std::time::Duration;

use crate::stats::{SignatureCost, Summary};

/// Unmeasured messages each sender sends before a scenario's clock starts:
/// channels connect and member lists settle on them.
pub const WARMUP: usize = 10;
/// Members of the `room-100` room, the sender included: every member its
/// own process (or, with `--in-process`, its own peer in this one), with
/// its own store and chat service.
pub const ROOM_100: usize = 100;
/// Members holding `join-100k`'s history before the joiner comes.
pub const HOLDERS: usize = 3;
/// `join-100k`'s history holds this many times `--messages` (100,000 at
/// the default 1000).
pub const HISTORY_FACTOR: usize = 100;
/// Sends kept in flight by the throughput scenarios.
pub const IN_FLIGHT: usize = 128;
/// Throughput scenarios send this many times `--messages`, so the run is
/// long enough for a steady rate.
pub const THROUGHPUT_FACTOR: usize = 10;

/// One scenario of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// A bare `Ping` on a kept channel: the wire's own cost.
    Floor,
    /// One login at the router (LoginChallenge, then a signed UserLogin)
    /// of a nick never used before, over a kept channel; logged out after,
    /// untimed.
    Login,
    /// One JoinRoom of a logged-in session into one room another session
    /// holds; left after, untimed.
    Join,
    Private,
    /// `private` between two peers that neither sign nor check: what
    /// signatures cost, measured in the same run.
    PrivateUnsigned,
    /// `private` from the same sender to a member the router cannot dial
    /// back (it advertises a loopback address nothing listens at): the
    /// sender reaches it by connection reversal (the member dials the
    /// sender, which runs its TLS client over that connection).
    PrivateReversed,
    /// `private` between two peers the router cannot dial back: through
    /// the relay circuit the router splices (their own TLS end to end).
    PrivateRelayed,
    /// Per message, the deposit plus its share of the drain. The sender of
    /// `private` (bench-a) writes one private line to a member that is
    /// offline (started once, so its nick is bound and its mailbox key
    /// published, then shut down): the deposit is timed from the
    /// `send_private` call until the sender's outbox owes that member
    /// nothing (the row's end is seen by polling
    /// `store().outbox_for(member, 1)` in a tight loop, a
    /// `tokio::task::yield_now()` between polls). After the [`WARMUP`]
    /// unmeasured lines and the measured ones, the member starts again on
    /// its data directory, in the bench process, and the drain is timed
    /// from `Peer::start` returning until its `PeerEvent::Mailbox` event;
    /// each message's sample is its deposit plus the drain over the lines
    /// drained (warm-up included). The event must count every line
    /// deposited, and the member's history must then hold every one.
    Mailbox,
    PrivateBoth,
    Room3,
    Room20,
    Room3TwoSenders,
    ThroughputPrivate,
    ThroughputRoom20,
    /// A new member joins a room whose history (100 x `--messages`
    /// messages, one author's, signed) [`HOLDERS`] members hold, and pulls
    /// all of it; timed to its join's end, against copying the same rows
    /// between two SQLite files. Its holders start just before it.
    Join100k,
    /// One sender and 99 members: the largest group the design serves.
    /// Last: the members only it needs start just before it, so their
    /// background work (heartbeats, anti-entropy) weighs on no other row.
    Room100,
}

impl Scenario {
    pub const ALL: [Scenario; 16] = [
        Scenario::Floor,
        Scenario::Login,
        Scenario::Join,
        Scenario::Private,
        Scenario::PrivateUnsigned,
        Scenario::PrivateReversed,
        Scenario::PrivateRelayed,
        Scenario::Mailbox,
        Scenario::PrivateBoth,
        Scenario::Room3,
        Scenario::Room20,
        Scenario::Room3TwoSenders,
        Scenario::ThroughputPrivate,
        Scenario::ThroughputRoom20,
        Scenario::Join100k,
        Scenario::Room100,
    ];

    /// The row's name, in the table and the JSON file.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Floor => "floor",
            Scenario::Login => "login",
            Scenario::Join => "join",
            Scenario::Private => "private",
            Scenario::PrivateUnsigned => "private-unsigned",
            Scenario::PrivateReversed => "private-reversed",
            Scenario::PrivateRelayed => "private-relayed",
            Scenario::Mailbox => "mailbox",
            Scenario::PrivateBoth => "private-both",
            Scenario::Room3 => "room-3",
            Scenario::Room20 => "room-20",
            Scenario::Room100 => "room-100",
            Scenario::Room3TwoSenders => "room-3-two-senders",
            Scenario::ThroughputPrivate => "throughput-private",
            Scenario::ThroughputRoom20 => "throughput-room-20",
            Scenario::Join100k => "join-100k",
        }
    }

    /// What the Python design reported (mean ms per message), if anything.
    pub fn reported_ms(self) -> Option<f64> {
        match self {
            Scenario::Private => Some(4.0),
            Scenario::PrivateBoth => Some(6.0),
            Scenario::Room3 => Some(6.88),
            Scenario::Room3TwoSenders => Some(10.0),
            _ => None,
        }
    }

    /// The rows a `--scenario NAME` selects: a row's name, or `throughput`
    /// for both throughput rows.
    pub fn select(name: &str) -> Result<Vec<Scenario>, String> {
        if name == "throughput" {
            return Ok(vec![
                Scenario::ThroughputPrivate,
                Scenario::ThroughputRoom20,
            ]);
        }
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .map(|s| vec![s])
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "no scenario {name:?}; one of {}, throughput",
                    names.join(", ")
                )
            })
    }

    /// A call to the router rather than a message: no conversation, so no
    /// members (the table shows "-").
    pub fn is_registry_call(self) -> bool {
        matches!(self, Scenario::Login | Scenario::Join)
    }

    /// Whether the row has members to show: not the floor (a bare call to
    /// one member) nor the router calls.
    pub fn has_members(self) -> bool {
        !(self == Scenario::Floor || self.is_registry_call())
    }

    pub fn is_throughput(self) -> bool {
        matches!(
            self,
            Scenario::ThroughputPrivate | Scenario::ThroughputRoom20
        )
    }
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rows to run; empty means all. The floor is measured in every run.
    pub scenarios: Vec<Scenario>,
    pub messages: usize,
    /// Members of the `room-20` room, the sender included.
    pub room_size: usize,
    /// Bytes of each message body.
    pub payload: usize,
    pub in_process: bool,
    /// etcd endpoints the router keeps its registry at; empty: in memory.
    pub etcd: Vec<String>,
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scenarios: Vec::new(),
            messages: 1000,
            room_size: 20,
            payload: 100,
            in_process: false,
            etcd: Vec::new(),
            quiet: false,
        }
    }
}

/// One row: what was sent and how long it took.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    /// Measured messages sent (all senders together); logins or joins
    /// for the router calls; for `join-100k`, the history's messages.
    pub messages: usize,
    /// Of those, stored and acknowledged by every member (for
    /// `join-100k`, brought in by the join).
    pub delivered: usize,
    pub failed: usize,
    pub senders: usize,
    /// Members of the conversation, senders included.
    pub members: usize,
    /// Sends kept in flight per sender.
    pub in_flight: usize,
    /// Wall time of the measured sends. For the router calls, the sum of
    /// the timed calls only (the untimed logouts and leaves between them
    /// are left out), so their rate is 1 / mean; for `mailbox`, the sum of
    /// its samples (the deposits and their shares of the drain; the
    /// member's start is left out), so its rate is 1 / mean too.
    pub wall: Duration,
    pub summary: Summary,
    /// Latencies of delivered messages (µs), sorted; for `join-100k`, the
    /// time of each join.
    pub samples: Vec<f64>,
    /// The row's own floor (µs) where a Ping is not the measure: for
    /// `join-100k`, copying the same rows between two SQLite files.
    pub own_floor_us: Option<f64>,
}

impl ScenarioResult {
    pub fn msgs_per_s(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.delivered as f64 / secs
        } else {
            0.0
        }
    }
}

impl Options {
    /// The registry the router keeps, in words: `in-memory` or `etcd at
    /// URL,URL`.
    pub fn registry(&self) -> String {
        if self.etcd.is_empty() {
            "in-memory".into()
        } else {
            format!("etcd at {}", self.etcd.join(","))
        }
    }
}

/// Everything a run measured.
pub struct Report {
    pub options: Options,
    /// This run's suffix of every nick and room (see [`crate::node::run_id`]).
    pub run_id: String,
    pub results: Vec<ScenarioResult>,
    /// p50 of the floor, µs.
    pub floor_p50_us: f64,
    /// What a signature costs here, measured before the cluster starts.
    pub signatures: SignatureCost,
    /// Peak resident memory, KiB: the router process, the largest member
    /// process, this process (the senders; everything with `in_process`).
    pub router_peak_kib: Option<u64>,
    pub peer_peak_kib: Option<u64>,
    pub bench_peak_kib: Option<u64>,
    /// Wall time of the whole run, set-up and tear-down included.
    pub total: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_the_table_order_and_names_are_unique() {
        // A run sorts what it selects: `ALL` must be in the enum's order.
        let mut sorted = Scenario::ALL;
        sorted.sort();
        assert_eq!(sorted, Scenario::ALL);
        let mut names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Scenario::ALL.len());
        let at = |s: Scenario| Scenario::ALL.iter().position(|x| *x == s).unwrap();
        assert_eq!(
            at(Scenario::PrivateReversed),
            at(Scenario::PrivateUnsigned) + 1
        );
        assert_eq!(
            at(Scenario::PrivateRelayed),
            at(Scenario::PrivateReversed) + 1
        );
        assert_eq!(at(Scenario::Mailbox), at(Scenario::PrivateRelayed) + 1);
        assert_eq!(Scenario::Mailbox.name(), "mailbox");
        assert_eq!(Scenario::select("mailbox"), Ok(vec![Scenario::Mailbox]));
    }

    #[test]
    fn the_walled_rows_are_selected_alone() {
        assert_eq!(
            Scenario::select("private-reversed"),
            Ok(vec![Scenario::PrivateReversed])
        );
        assert_eq!(
            Scenario::select("private-relayed"),
            Ok(vec![Scenario::PrivateRelayed])
        );
        let err = Scenario::select("private-walled").unwrap_err();
        assert!(err.contains("private-reversed, private-relayed"), "{err}");
    }
}
