//! A run of the benchmark: starts the cluster, sends through the senders,
//! times every message. What it measured goes back to `main`, which
//! prints the table and writes the files (see [`crate::output`]).
//!
//! The latency of one message runs from the send call until every member
//! has stored it and acknowledged: a member's `Deliver` answers only after
//! its store's commit, so `send_room` / `send_private` returning with no
//! pending recipient means exactly that. A message with a pending recipient
//! counts as failed.
//!
//! Senders are [`Peer`]s in this process, driven through the same API the
//! `peer` binary drives. The other members are child processes (this same
//! executable, re-run as [`crate::child::serve_peer`]) unless `in_process`
//! is set. Scenarios with two senders keep both in this process.
//!
//! `login` and `join` time calls to the router instead, over one kept TLS
//! channel as a peer keeps to its router: they measure the registry
//! (in memory or in etcd), which messages never touch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parley::names::{private_key, Nick, Room, MAX_BODY_CHARS};
use parley::peer::{Peer, PeerEvent};

use crate::cluster::{self, Cluster, MemberSpec};
use crate::history;
use crate::node::{self, Kind, LEASE_TTL};
use crate::scenario::{
    Options, Report, Scenario, ScenarioResult, HISTORY_FACTOR, HOLDERS, IN_FLIGHT, ROOM_100,
    THROUGHPUT_FACTOR, WARMUP,
};
use crate::stats::{self, micros, summarise};

/// Latencies gathered by one or more senders.
#[derive(Default)]
struct Samples {
    lat_us: Vec<f64>,
    failed: usize,
    first_error: Option<String>,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.lat_us.extend(other.lat_us);
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Where a sender sends.
#[derive(Clone)]
enum Target {
    Private(Nick),
    Room(Room),
}

/// Sends one message; Ok(latency) when every member stored it.
async fn send_one(peer: &Peer, target: &Target, body: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let sent = match target {
        Target::Private(nick) => peer.send_private(nick, body).await,
        Target::Room(room) => peer.send_room(room, body).await,
    };
    let took = start.elapsed();
    match sent {
        Ok(r) if r.pending.is_empty() => Ok(took),
        Ok(r) => Err(format!(
            "not acknowledged by {} (kept in the outbox)",
            r.pending.join(", ")
        )),
        Err(err) => Err(err.to_string()),
    }
}

fn record(samples: &mut Samples, outcome: Result<Duration, String>) {
    match outcome {
        Ok(d) => samples.lat_us.push(micros(d)),
        Err(e) => {
            samples.failed += 1;
            samples.first_error.get_or_insert(e);
        }
    }
}

/// `WARMUP` unmeasured sends.
async fn warm_up(peer: &Peer, target: &Target, body: &str) {
    for _ in 0..WARMUP {
        if let Err(err) = send_one(peer, target, body).await {
            tracing::debug!(cause = %err, "warm-up message failed");
        }
    }
}

/// Most time [`settle`] waits for a room to take a message whole.
const SETTLE_FOR: Duration = Duration::from_secs(30);

/// Sends unmeasured messages until one is acknowledged by every member, for
/// at most [`SETTLE_FOR`]. Many members starting at once can stall a
/// 2-core machine past the send deadline; a member that missed a message
/// is skipped for [`parley::net::DOWN_FOR`] (its messages are owed, not
/// lost), and the timed messages must not fall into that window.
async fn settle(peer: &Peer, target: &Target, body: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_FOR;
    loop {
        match send_one(peer, target, body).await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                bail!("no message reached every member within {SETTLE_FOR:?}: {err}")
            }
            Err(err) => {
                tracing::debug!(cause = %err, "settling: not every member took it yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// `n` sends one after another.
async fn sequential(
    peer: &Peer,
    target: &Target,
    body: &str,
    n: usize,
    bar: &ProgressBar,
) -> Samples {
    let mut samples = Samples::default();
    samples.lat_us.reserve(n);
    for _ in 0..n {
        record(&mut samples, send_one(peer, target, body).await);
        bar.inc(1);
    }
    samples
}

/// Two senders at once, each sending `n` one after another.
async fn two_sequential(
    a: (&Peer, &Target),
    b: (&Peer, &Target),
    body: &str,
    n: usize,
    bar: &ProgressBar,
) -> Samples {
    let (mut x, y) = tokio::join!(
        sequential(a.0, a.1, body, n, bar),
        sequential(b.0, b.1, body, n, bar)
    );
    x.merge(y);
    x
}

/// `n` sends, `IN_FLIGHT` at a time, over the same peer.
async fn concurrent(
    peer: &Peer,
    target: &Target,
    body: &str,
    n: usize,
    bar: &ProgressBar,
) -> Samples {
    let next = Arc::new(AtomicUsize::new(0));
    let body: Arc<str> = Arc::from(body);
    let tasks: Vec<_> = (0..IN_FLIGHT.min(n.max(1)))
        .map(|_| {
            let (peer, target, body, next, bar) = (
                peer.clone(),
                target.clone(),
                body.clone(),
                next.clone(),
                bar.clone(),
            );
            tokio::spawn(async move {
                let mut samples = Samples::default();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    record(&mut samples, send_one(&peer, &target, &body).await);
                    bar.inc(1);
                }
                samples
            })
        })
        .collect();
    let mut all = Samples::default();
    for joined in futures::future::join_all(tasks).await {
        match joined {
            Ok(s) => all.merge(s),
            Err(err) => {
                all.failed += 1;
                all.first_error
                    .get_or_insert(format!("send task failed: {err}"));
            }
        }
    }
    all
}

/// Pings `addr` (a peer's chat service: `Ping` has an empty handler) over
/// one kept channel of the kind messages use (TLS with a key on each side),
/// `n` times one after another.
async fn floor(addr: &str, n: usize, bar: &ProgressBar) -> anyhow::Result<Samples> {
    let tls = parley::tls::Tls::new(&parley::identity::Identity::generate())?;
    let channel = tls.channel(
        parley::net::endpoint(addr)?,
        addr,
        parley::tls::Expect::first_seen(),
    );
    let mut client = parley::proto::chat_client::ChatClient::new(channel);
    let mut samples = Samples::default();
    for i in 0..WARMUP + n {
        let start = Instant::now();
        let pinged = client.ping(parley::proto::PingRequest {}).await;
        let took = start.elapsed();
        if i < WARMUP {
            continue;
        }
        record(
            &mut samples,
            pinged.map(|_| took).map_err(|s| s.to_string()),
        );
        bar.inc(1);
    }
    Ok(samples)
}

/// A room of the run: `#NAME-RUN`.
fn room(name: &str, run: &str) -> Room {
    Room::parse(&format!("#{name}-{run}")).expect("the bench's room names follow the rules")
}

/// A nick of the run: `NAME-RUN` (at most 32 characters: `NAME` short).
fn nick(name: &str, run: &str) -> Nick {
    Nick::parse(&format!("{name}-{run}")).expect("the bench's nicks follow the rules")
}

/// Members started at once when room-100's members start.
const START_WAVE: usize = 16;

/// Where the sessions of `login` and `join` say they listen. Nothing
/// serves there and nothing dials it: no peer shares a room with them or
/// follows them.
const NOWHERE: &str = "127.0.0.1:9";

/// `login` or `join`: `n` calls to the router at `addr`, one after another,
/// after `WARMUP` unmeasured ones, over one kept TLS channel of the kind a
/// peer keeps to its router. Returns the samples and the sum of the timed
/// calls (the rate's wall time: the untimed logouts and leaves between
/// calls are left out).
///
/// - `login`: LoginChallenge, the signature over it, UserLogin: as a peer
///   logs in. Every measured login is of a nick never used before
///   (`login-I-RUN`, each with a new key), and is logged out right after,
///   untimed; the warm-up logs one nick in and out again. So a run binds
///   `n + 1` nicks in the registry, forever in etcd.
/// - `join`: one session (`join-h-RUN`) holds `#join-RUN`; another
///   (`join-j-RUN`) joins it, is answered both members, and leaves again,
///   untimed, `n` times: the join of an existing room, the same in either
///   registry (the in-memory one drops an empty room, etcd keeps it).
async fn router_calls(
    scenario: Scenario,
    addr: &str,
    run: &str,
    n: usize,
    bar: &ProgressBar,
) -> anyhow::Result<(Samples, Duration)> {
    use parley::identity::Identity;
    use parley::proto::{HeartbeatRequest, JoinRoomRequest, LeaveRoomRequest, LogoutRequest};
    let tls = parley::tls::Tls::new(&Identity::generate())?;
    let router = parley::router_client::client(&tls, addr, parley::tls::Expect::first_seen())?;
    // Each call on a clone of the one client (the same channel), as the
    // peer's session does; the futures own what they need.
    let logout = |token: String| {
        let mut r = router.clone();
        async move {
            r.user_logout(LogoutRequest {
                token,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|s| format!("UserLogout: {s}"))
        }
    };
    let heartbeat = |token: String| {
        let mut r = router.clone();
        async move {
            r.heartbeat(HeartbeatRequest { token })
                .await
                .map(|_| ())
                .map_err(|s| format!("Heartbeat: {s}"))
        }
    };
    let join = |token: String, room: String| {
        let mut r = router.clone();
        async move {
            r.join_room(JoinRoomRequest {
                token,
                room,
                creation: None,
                creator_key: Vec::new(),
            })
            .await
            .map(|j| j.into_inner())
            .map_err(|s| format!("JoinRoom: {s}"))
        }
    };
    let leave = |token: String, room: String| {
        let mut r = router.clone();
        async move {
            r.leave_room(LeaveRoomRequest {
                token,
                room,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|s| format!("LeaveRoom: {s}"))
        }
    };
    // One login, timed from the challenge's request to the token.
    macro_rules! login {
        ($id:expr, $nick:expr) => {{
            let nick = $nick.to_string();
            let start = Instant::now();
            // No dial-back: nothing serves at NOWHERE, and the row times
            // the registry's login.
            let token = parley::router_client::login(router.clone(), $id, &nick, NOWHERE, false)
                .await
                .map(|l| l.token)
                .map_err(|s| format!("login: {s}"));
            token.map(|t| (t, start.elapsed()))
        }};
    }

    let mut samples = Samples::default();
    let mut timed = Duration::ZERO;
    match scenario {
        Scenario::Login => {
            let warm_id = Identity::generate();
            let warm = nick("login-w", run);
            for i in 0..WARMUP + n {
                let measured = i >= WARMUP;
                let outcome = if measured {
                    let id = Identity::generate();
                    login!(&id, nick(&format!("login-{}", i - WARMUP), run))
                } else {
                    login!(&warm_id, warm)
                };
                let outcome = match outcome {
                    Ok((token, took)) => logout(token).await.map(|()| took),
                    Err(e) => Err(e),
                };
                if measured {
                    if let Ok(took) = &outcome {
                        timed += *took;
                    }
                    record(&mut samples, outcome);
                    bar.inc(1);
                } else if let Err(err) = outcome {
                    tracing::debug!(cause = %err, "warm-up login failed");
                }
            }
        }
        Scenario::Join => {
            let room = room("join", run).to_string();
            let (holder_id, joiner_id) = (Identity::generate(), Identity::generate());
            let (holder, _) = login!(&holder_id, nick("join-h", run))
                .map_err(|e| anyhow::anyhow!("join: cannot log the room's holder in: {e}"))?;
            let (joiner, _) = login!(&joiner_id, nick("join-j", run))
                .map_err(|e| anyhow::anyhow!("join: cannot log the joiner in: {e}"))?;
            join(holder.clone(), room.clone())
                .await
                .map_err(|e| anyhow::anyhow!("join: the holder cannot create {room}: {e}"))?;
            // Both leases kept, untimed, however long the run takes.
            let mut beat = Instant::now();
            for i in 0..WARMUP + n {
                if beat.elapsed() >= LEASE_TTL / 3 {
                    for token in [&holder, &joiner] {
                        if let Err(err) = heartbeat(token.clone()).await {
                            tracing::warn!(cause = %err, "join: heartbeat failed");
                        }
                    }
                    beat = Instant::now();
                }
                let start = Instant::now();
                let joined = join(joiner.clone(), room.clone()).await;
                let took = start.elapsed();
                let outcome = match joined {
                    Ok(j) if j.members.len() == 2 && !j.created => {
                        leave(joiner.clone(), room.clone()).await.map(|()| took)
                    }
                    Ok(j) => Err(format!(
                        "JoinRoom answered {} members (created: {}), not the holder and the joiner",
                        j.members.len(),
                        j.created
                    )),
                    Err(e) => Err(e),
                };
                if i >= WARMUP {
                    if let Ok(took) = &outcome {
                        timed += *took;
                    }
                    record(&mut samples, outcome);
                    bar.inc(1);
                } else if let Err(err) = outcome {
                    tracing::debug!(cause = %err, "warm-up join failed");
                }
            }
            for token in [holder, joiner] {
                if let Err(err) = logout(token).await {
                    tracing::debug!(cause = %err, "join: logout failed");
                }
            }
        }
        other => unreachable!("{} is not a router call", other.name()),
    }
    Ok((samples, timed))
}

/// Most time one `mailbox` line may stay owed before the row fails: the
/// outbox retries a refused or failed deposit only after 30 s.
const DEPOSIT_WITHIN: Duration = Duration::from_secs(30);
/// Most time `mailbox`'s member may take from its start to its mailbox
/// event.
const DRAIN_WITHIN: Duration = Duration::from_secs(120);

/// One private line from `sender` to `to`, who is offline: Ok(the
/// deposit's time), from the `send_private` call until the sender's outbox
/// owes `to` nothing. The router's acknowledgement is seen by polling
/// `store().outbox_for(to, 1)` in a tight loop, `tokio::task::yield_now()`
/// between polls (each poll is a query on the store's thread, so the
/// clock includes up to one poll after the row ended). The inner Err: the
/// line was not stored (a failed message); the outer: the row cannot go on
/// (the line stays owed, or went to `to` directly).
async fn deposit_one(
    sender: &Peer,
    to: &Nick,
    body: &str,
) -> anyhow::Result<Result<Duration, String>> {
    let start = Instant::now();
    let report = match sender.send_private(to, body).await {
        Ok(r) => r,
        Err(err) => return Ok(Err(err.to_string())),
    };
    anyhow::ensure!(
        report.delivered.is_empty(),
        "mailbox: {to} took the line directly: it is online, so the row would not measure its mailbox"
    );
    loop {
        let owed = sender
            .store()
            .outbox_for(to.as_str(), 1)
            .await
            .with_context(|| format!("mailbox: cannot read what {} owes {to}", sender.nick()))?;
        if owed.is_empty() {
            return Ok(Ok(start.elapsed()));
        }
        if start.elapsed() > DEPOSIT_WITHIN {
            bail!(
                "mailbox: a line to {to} is still owed {DEPOSIT_WITHIN:?} after it was sent: \
                 the router did not acknowledge its deposit (see RUST_LOG=info)"
            );
        }
        tokio::task::yield_now().await;
    }
}

/// Reads a peer's events until its `PeerEvent::Mailbox`, for at most
/// `within`: when it came, and its `delivered` and `expired`. None if it did
/// not come in time or the peer stopped first. The events are dropped
/// after (a full queue only drops events).
async fn mailbox_event(
    mut events: tokio::sync::mpsc::Receiver<PeerEvent>,
    within: Duration,
) -> Option<(Instant, usize, u64)> {
    tokio::time::timeout(within, async {
        while let Some(event) = events.recv().await {
            if let PeerEvent::Mailbox { delivered, expired } = event {
                return Some((Instant::now(), delivered, expired));
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// `mailbox`: per message, the deposit plus its share of the drain. A
/// member (`mbox-RUN`) starts once in this process, so its nick is bound
/// and its mailbox key published, and shuts down once it has told its
/// first drain (of an empty mailbox: it must be); `sender` writes it
/// [`WARMUP`] unmeasured lines, then `n` timed ones, each timed by
/// [`deposit_one`]. The member then starts again on its data directory,
/// in this process whatever `--in-process` says, its events kept, and the
/// drain is timed from `Peer::start` returning until its
/// `PeerEvent::Mailbox` event, which must count every line deposited
/// (warm-up included); its history must then hold every one. Each
/// message's sample is its deposit plus the drain over the lines drained.
/// Returns the samples and their sum (the row's wall time); the member
/// shuts down after.
async fn mailbox(
    cluster: &Cluster,
    sender: &Peer,
    run: &str,
    (n, body): (usize, &str),
    bar: &ProgressBar,
) -> anyhow::Result<(Samples, Duration)> {
    let member = nick("mbox", run);
    let router = cluster.router_addr.as_str();
    bar.set_message("mailbox: its member starts once and shuts down");
    let (first, events, _) =
        node::start_peer_keeping_events(&member, router, cluster.data_dir(&member))
            .await
            .context("mailbox")?;
    // Up once its first drain (of an empty mailbox) is told: its session's
    // loops have started by then, and a shutdown does not cut them short.
    let up = mailbox_event(events, DRAIN_WITHIN).await;
    first.shutdown().await;
    match up {
        Some((_, 0, _)) => {}
        Some((_, delivered, _)) => {
            bail!("mailbox: {member}'s mailbox held {delivered} line(s) before any was sent")
        }
        None => {
            bail!("mailbox: {member} had no mailbox event within {DRAIN_WITHIN:?} of its start")
        }
    }
    bar.set_message(Scenario::Mailbox.name());

    let mut deposited = 0;
    for _ in 0..WARMUP {
        match deposit_one(sender, &member, body).await? {
            Ok(_) => deposited += 1,
            Err(err) => tracing::debug!(cause = %err, "warm-up line failed"),
        }
    }
    let mut samples = Samples::default();
    let mut deposits = Vec::with_capacity(n);
    for _ in 0..n {
        let outcome = deposit_one(sender, &member, body).await?;
        if let Ok(took) = &outcome {
            deposits.push(*took);
            deposited += 1;
        } else {
            record(&mut samples, outcome);
        }
        bar.inc(1);
    }

    bar.set_message("mailbox: its member starts again and drains its mailbox");
    let (peer, events, started) =
        node::start_peer_keeping_events(&member, router, cluster.data_dir(&member))
            .await
            .context("mailbox: cannot start the member again")?;
    let drained = mailbox_event(events, DRAIN_WITHIN).await;
    let checked = async {
        let Some((at, delivered, expired)) = drained else {
            bail!("mailbox: {member} had no mailbox event within {DRAIN_WITHIN:?} of its start")
        };
        let drain = at.duration_since(started);
        anyhow::ensure!(
            delivered == deposited,
            "mailbox: {member} drained {delivered} line(s) ({expired} expired) of the {deposited} deposited"
        );
        let conv = private_key(&sender.nick(), &member);
        let history = peer
            .history(&conv, deposited + 1)
            .await
            .with_context(|| format!("mailbox: cannot read {member}'s history"))?;
        let held = history
            .iter()
            .filter(|m| m.author.eq_ignore_ascii_case(sender.nick().as_str()))
            .count();
        anyhow::ensure!(
            held == deposited,
            "mailbox: {member}'s history holds {held} of the {deposited} lines deposited"
        );
        Ok::<_, anyhow::Error>(drain)
    }
    .await;
    bar.set_message(Scenario::Mailbox.name());
    peer.shutdown().await;
    let drain = checked?;
    let share = drain / deposited.max(1) as u32;
    tracing::debug!(
        ?drain,
        deposited,
        ?share,
        "mailbox: the member drained its mailbox"
    );
    let mut timed = Duration::ZERO;
    for took in deposits {
        timed += took + share;
        record(&mut samples, Ok(took + share));
    }
    Ok((samples, timed))
}

/// What `join-100k` measured.
struct Pulled {
    /// The join, timed from the call to its end (the `joined` event).
    took: Duration,
    /// Messages the join brought in.
    new: usize,
    /// Copying the same rows between two SQLite files.
    floor: Duration,
}

/// `join-100k`: writes a history of `count` messages of `room` into the
/// stores of [`HOLDERS`] new members (`hNN-RUN`; the first is its author),
/// measures the floor on those files, starts the holders (each joins
/// `room`), then times one new peer (`pull-j-RUN`, in this process) joining
/// `room` and pulling all of it. The joiner logs out after.
async fn join_history(
    cluster: &mut Cluster,
    room: &Room,
    run: &str,
    (count, body): (usize, &str),
    bar: &ProgressBar,
) -> anyhow::Result<Pulled> {
    let holders: Vec<Nick> = (1..=HOLDERS)
        .map(|i| nick(&format!("h{i:02}"), run))
        .collect();
    let dirs: Vec<_> = holders.iter().map(|h| cluster.data_dir(h)).collect();
    let conversation = room.key();
    history::seed(
        (&holders[0], &dirs[0]),
        &dirs[1..],
        &conversation,
        count,
        body,
        bar,
    )
    .await?;
    bar.set_message("join-100k: the floor (the rows copied between two files)");
    let (from, to, conv) = (
        dirs[1].clone(),
        cluster.scratch("join-100k-floor.db"),
        conversation.clone(),
    );
    let (floor, copied) =
        tokio::task::spawn_blocking(move || history::copy_floor(&from, &to, &conv)).await??;
    anyhow::ensure!(
        copied as usize == count,
        "join-100k: the floor copied {copied} of {count} messages"
    );
    bar.set_message("join-100k: starting its holders");
    let specs = holders
        .iter()
        .map(|h| MemberSpec {
            nick: h.clone(),
            rooms: vec![room.clone()],
            kind: Kind::Signed,
        })
        .collect();
    cluster.add_members(specs).await?;
    bar.set_message("join-100k: a new member pulls the history");
    let joiner = nick("pull-j", run);
    let peer = node::start_peer(
        &joiner,
        &cluster.router_addr,
        cluster.data_dir(&joiner),
        &[],
        Kind::Signed,
    )
    .await?;
    let start = Instant::now();
    let joined = peer.join(room).await;
    let took = start.elapsed();
    peer.shutdown().await;
    let joined = joined.with_context(|| format!("{joiner} cannot join {room}"))?;
    // The history, and whatever events of the room the holders wrote on
    // joining (its creation).
    anyhow::ensure!(
        joined.new >= count,
        "join-100k: the join brought in {} of the {count} messages",
        joined.new
    );
    bar.inc(count as u64);
    Ok(Pulled {
        took,
        new: joined.new,
        floor,
    })
}

/// Runs the benchmark. The progress bar goes to stderr unless `quiet`.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    if options.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if options.room_size < 2 {
        bail!("--room-size must be at least 2 (the sender and one member)");
    }
    if options.payload == 0 || options.payload > MAX_BODY_CHARS {
        bail!(
            "--payload must be 1 to {} bytes (a message body's limit)",
            MAX_BODY_CHARS
        );
    }
    // An etcd that does not answer ends the run here, in one line, before
    // any router or peer starts.
    if !options.etcd.is_empty() {
        drop(node::connect_etcd(&options.etcd).await?);
    }
    let run_id = node::run_id();
    let run = run_id.as_str();
    let mut selected = if options.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        options.scenarios.clone()
    };
    // The floor is measured in every run: every row is shown against it.
    selected.push(Scenario::Floor);
    selected.sort();
    selected.dedup();
    let has = |s: Scenario| selected.contains(&s);

    let room3 = room("room-3", run);
    let room20 = room("room-20", run);
    let room100 = room("room-100", run);
    let room3two = room("room-3-two", run);
    let room_history = room("join-100k", run);
    let needs_room20 = has(Scenario::Room20) || has(Scenario::ThroughputRoom20);
    // m01 is the private partner, in every room, and the floor's server.
    let mut members_needed = 1;
    if has(Scenario::Room3) {
        members_needed = members_needed.max(2);
    }
    if needs_room20 {
        members_needed = members_needed.max(options.room_size - 1);
    }
    // room-100's members beyond these start only when it runs (see
    // `Scenario::Room100`); these join its room from the start.
    let specs: Vec<MemberSpec> = (1..=members_needed)
        .map(|i| {
            let mut rooms = Vec::new();
            if has(Scenario::Room3) && i <= 2 {
                rooms.push(room3.clone());
            }
            if needs_room20 && i < options.room_size {
                rooms.push(room20.clone());
            }
            if has(Scenario::Room3TwoSenders) && i == 1 {
                rooms.push(room3two.clone());
            }
            if has(Scenario::Room100) {
                rooms.push(room100.clone());
            }
            MemberSpec {
                nick: nick(&format!("m{i:02}"), run),
                rooms,
                kind: Kind::Signed,
            }
        })
        .collect();
    // The unsigned pair has a member of its own: no peer both signs and not.
    let mut specs = specs;
    if has(Scenario::PrivateUnsigned) {
        specs.push(MemberSpec {
            nick: nick("u01", run),
            rooms: Vec::new(),
            kind: Kind::Unsigned,
        });
    }
    // So has the member nobody can dial, whom both walled rows reach.
    if has(Scenario::PrivateReversed) || has(Scenario::PrivateRelayed) {
        specs.push(MemberSpec {
            nick: nick("w01", run),
            rooms: Vec::new(),
            kind: Kind::Walled,
        });
    }

    let later: Vec<MemberSpec> = if has(Scenario::Room100) {
        (members_needed + 1..ROOM_100)
            .map(|i| MemberSpec {
                nick: nick(&format!("m{i:02}"), run),
                rooms: vec![room100.clone()],
                kind: Kind::Signed,
            })
            .collect()
    } else {
        Vec::new()
    };

    let bar = progress_bar(&options, &selected);
    // On a quiet machine: nothing else of the run has started yet.
    bar.set_message("timing signatures");
    let signatures = tokio::task::spawn_blocking({
        let (n, payload) = (options.messages, options.payload);
        move || stats::signature_cost(n, payload)
    })
    .await??;
    bar.set_message("starting router and peers");
    let mut cluster = Cluster::start(options.in_process, &options.etcd, specs).await?;
    let measured = measure_all(
        &options,
        &selected,
        &mut cluster,
        &bar,
        run,
        ([room3, room20, room100, room3two, room_history], later),
    )
    .await;
    let (router_peak_kib, peer_peak_kib) = cluster.peak_memory_kib();
    let bench_peak_kib = cluster::own_vm_hwm_kib();
    bar.set_message("stopping");
    cluster.stop().await;
    bar.finish_and_clear();
    let results = measured?;
    let floor_p50_us = results
        .iter()
        .find(|r| r.scenario == Scenario::Floor)
        .map_or(0.0, |r| r.summary.p50_us);
    let report = Report {
        options,
        run_id,
        results,
        floor_p50_us,
        signatures,
        router_peak_kib,
        peer_peak_kib,
        bench_peak_kib,
        total: started.elapsed(),
    };
    Ok(report)
}

fn progress_bar(options: &Options, selected: &[Scenario]) -> ProgressBar {
    let total: usize = selected
        .iter()
        .map(|s| {
            let per_sender = if s.is_throughput() {
                options.messages * THROUGHPUT_FACTOR
            } else if *s == Scenario::Join100k {
                options.messages * HISTORY_FACTOR
            } else {
                options.messages
            };
            let senders = match s {
                Scenario::PrivateBoth | Scenario::Room3TwoSenders => 2,
                _ => 1,
            };
            per_sender * senders
        })
        .sum();
    let target = if options.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The way a walled row's messages must have gone, as the router's relay
/// counts show it.
#[derive(Clone, Copy)]
enum Path {
    /// At least one reversal (the channel's connection), no circuit.
    Reversed,
    /// At least one circuit.
    Relayed,
}

impl Path {
    /// Whether the relay's counts over the row (warm-up included: the
    /// channel is made on its first message) show this path; an error
    /// naming what they show instead. Catches a reversal that did not
    /// arrive in time, after which the sender opens a circuit instead.
    fn check(
        self,
        scenario: Scenario,
        before: parley::router::RelayCounts,
        after: parley::router::RelayCounts,
    ) -> anyhow::Result<()> {
        let reversals = after.reversals.saturating_sub(before.reversals);
        let circuits = after.circuits_opened.saturating_sub(before.circuits_opened);
        let ok = match self {
            Path::Reversed => reversals >= 1 && circuits == 0,
            Path::Relayed => circuits >= 1,
        };
        tracing::debug!(
            scenario = scenario.name(),
            reversals,
            circuits,
            "the router's relay over the row"
        );
        anyhow::ensure!(
            ok,
            "{}: the router asked for {reversals} reversal(s) and opened {circuits} \
             circuit(s) during the row, so its messages did not go {}",
            scenario.name(),
            match self {
                Path::Reversed => "by a reversal alone",
                Path::Relayed => "through a relay circuit",
            }
        );
        Ok(())
    }
}

async fn measure_all(
    options: &Options,
    selected: &[Scenario],
    cluster: &mut Cluster,
    bar: &ProgressBar,
    run: &str,
    ([room3, room20, room100, room3two, room_history], mut later): ([Room; 5], Vec<MemberSpec>),
) -> anyhow::Result<Vec<ScenarioResult>> {
    let has = |s: Scenario| selected.contains(&s);
    let m01 = cluster.members[0].nick.clone();
    let m01_addr = cluster.members[0].addr.clone();
    let u01 = nick("u01", run);
    let w01 = nick("w01", run);
    let router_addr = cluster.router_addr.clone();

    // The senders join after the members, so each join's snapshot lists
    // every member; then they join again, so each sees the other sender too.
    let mut a_rooms = Vec::new();
    if has(Scenario::Room3) {
        a_rooms.push(room3.clone());
    }
    if has(Scenario::Room20) || has(Scenario::ThroughputRoom20) {
        a_rooms.push(room20.clone());
    }
    if has(Scenario::Room100) {
        a_rooms.push(room100.clone());
    }
    if has(Scenario::Room3TwoSenders) {
        a_rooms.push(room3two.clone());
    }
    let a = cluster
        .add_sender(nick("bench-a", run), &a_rooms, Kind::Signed)
        .await?;
    let u = if has(Scenario::PrivateUnsigned) {
        Some(
            cluster
                .add_sender(nick("bench-u", run), &[], Kind::Unsigned)
                .await?,
        )
    } else {
        None
    };
    let w = if has(Scenario::PrivateRelayed) {
        Some(
            cluster
                .add_sender(nick("bench-w", run), &[], Kind::Walled)
                .await?,
        )
    } else {
        None
    };
    let b = if has(Scenario::PrivateBoth) || has(Scenario::Room3TwoSenders) {
        let b_rooms: Vec<Room> = a_rooms
            .iter()
            .filter(|r| **r == room3two)
            .cloned()
            .collect();
        Some(
            cluster
                .add_sender(nick("bench-b", run), &b_rooms, Kind::Signed)
                .await?,
        )
    } else {
        None
    };
    for r in a_rooms.iter().filter(|r| **r == room3two) {
        a.join(r).await.context("bench-a cannot rejoin")?;
    }

    let body = "x".repeat(options.payload);
    let n = options.messages;
    let mut results = Vec::new();
    for &scenario in selected {
        bar.set_message(scenario.name());
        let mut senders = 1;
        let mut in_flight = 1;
        let mut members = 2;
        // The router calls' wall time: the sum of the timed calls.
        let mut timed_wall = None;
        // join-100k's messages and its own floor.
        let mut pulled = None;
        // The walled rows: the path they must have taken, and the relay's
        // counts before them.
        let mut path = None;
        let start;
        let samples = match scenario {
            Scenario::Floor => {
                start = Instant::now();
                floor(&m01_addr, n, bar).await?
            }
            Scenario::Login | Scenario::Join => {
                // No conversation: the table shows "-", the JSON null.
                members = 0;
                start = Instant::now();
                let (samples, timed) = router_calls(scenario, &router_addr, run, n, bar).await?;
                timed_wall = Some(timed);
                samples
            }
            Scenario::Private => {
                let t = Target::Private(m01.clone());
                warm_up(&a, &t, &body).await;
                start = Instant::now();
                sequential(&a, &t, &body, n, bar).await
            }
            Scenario::PrivateUnsigned => {
                let u = u.as_ref().expect("bench-u starts for private-unsigned");
                let t = Target::Private(u01.clone());
                warm_up(u, &t, &body).await;
                start = Instant::now();
                sequential(u, &t, &body, n, bar).await
            }
            Scenario::PrivateReversed => {
                // A sender nobody can dial would open a circuit instead.
                anyhow::ensure!(
                    a.reachable(),
                    "private-reversed: the sender {} was found unreachable; the row would \
                     measure a relay circuit, not a reversal",
                    a.nick()
                );
                path = Some((Path::Reversed, cluster.relay_counts().await?));
                let t = Target::Private(w01.clone());
                warm_up(&a, &t, &body).await;
                start = Instant::now();
                sequential(&a, &t, &body, n, bar).await
            }
            Scenario::PrivateRelayed => {
                let w = w.as_ref().expect("bench-w starts for private-relayed");
                anyhow::ensure!(
                    !w.reachable(),
                    "private-relayed: the walled sender {} was found reachable at a later login",
                    w.nick()
                );
                path = Some((Path::Relayed, cluster.relay_counts().await?));
                let t = Target::Private(w01.clone());
                warm_up(w, &t, &body).await;
                start = Instant::now();
                sequential(w, &t, &body, n, bar).await
            }
            Scenario::Mailbox => {
                start = Instant::now();
                let (samples, timed) = mailbox(cluster, &a, run, (n, &body), bar).await?;
                timed_wall = Some(timed);
                samples
            }
            Scenario::PrivateBoth => {
                let b = b.as_ref().expect("bench-b starts for private-both");
                let (ta, tb) = (
                    Target::Private(b.nick().clone()),
                    Target::Private(a.nick().clone()),
                );
                warm_up(&a, &ta, &body).await;
                warm_up(b, &tb, &body).await;
                senders = 2;
                start = Instant::now();
                two_sequential((&a, &ta), (b, &tb), &body, n, bar).await
            }
            Scenario::Room3 => {
                let t = Target::Room(room3.clone());
                warm_up(&a, &t, &body).await;
                members = 3;
                start = Instant::now();
                sequential(&a, &t, &body, n, bar).await
            }
            Scenario::Room20 => {
                let t = Target::Room(room20.clone());
                warm_up(&a, &t, &body).await;
                members = options.room_size;
                start = Instant::now();
                sequential(&a, &t, &body, n, bar).await
            }
            Scenario::Join100k => {
                members = HOLDERS + 1;
                start = Instant::now();
                let count = n * HISTORY_FACTOR;
                let p = join_history(cluster, &room_history, run, (count, &body), bar).await?;
                timed_wall = Some(p.took);
                pulled = Some((count, p.new, micros(p.floor)));
                Samples {
                    lat_us: vec![micros(p.took)],
                    ..Samples::default()
                }
            }
            Scenario::Room100 => {
                bar.set_message("room-100: starting its other members");
                // In waves: 80 processes starting at once on 2 cores can
                // keep the router from taking a connection within the
                // peers' connect timeout (seen: "no router at").
                while !later.is_empty() {
                    let wave: Vec<MemberSpec> =
                        later.drain(..later.len().min(START_WAVE)).collect();
                    cluster.add_members(wave).await?;
                }
                // Joined again, the sender's picture lists every member.
                a.join(&room100).await.context("bench-a cannot rejoin")?;
                let t = Target::Room(room100.clone());
                settle(&a, &t, &body).await.context("room-100")?;
                bar.set_message(scenario.name());
                warm_up(&a, &t, &body).await;
                members = ROOM_100;
                start = Instant::now();
                sequential(&a, &t, &body, n, bar).await
            }
            Scenario::Room3TwoSenders => {
                let b = b.as_ref().expect("bench-b starts for room-3-two-senders");
                let t = Target::Room(room3two.clone());
                warm_up(&a, &t, &body).await;
                warm_up(b, &t, &body).await;
                senders = 2;
                members = 3;
                start = Instant::now();
                two_sequential((&a, &t), (b, &t), &body, n, bar).await
            }
            Scenario::ThroughputPrivate | Scenario::ThroughputRoom20 => {
                let t = if scenario == Scenario::ThroughputPrivate {
                    Target::Private(m01.clone())
                } else {
                    members = options.room_size;
                    Target::Room(room20.clone())
                };
                warm_up(&a, &t, &body).await;
                in_flight = IN_FLIGHT;
                start = Instant::now();
                concurrent(&a, &t, &body, n * THROUGHPUT_FACTOR, bar).await
            }
        };
        let wall = timed_wall.unwrap_or_else(|| start.elapsed());
        if let Some((want, before)) = path {
            let after = cluster.relay_counts().await?;
            want.check(scenario, before, after)?;
        }
        if let Some(err) = &samples.first_error {
            tracing::warn!(
                scenario = scenario.name(),
                failed = samples.failed,
                "messages failed; the first: {err}"
            );
        }
        let Samples {
            mut lat_us, failed, ..
        } = samples;
        let summary = summarise(&mut lat_us);
        let (messages, delivered, own_floor_us) = match pulled {
            Some((count, new, floor)) => (count, new.min(count), Some(floor)),
            None => (lat_us.len() + failed, lat_us.len(), None),
        };
        results.push(ScenarioResult {
            scenario,
            messages,
            delivered,
            own_floor_us,
            failed,
            senders,
            members,
            in_flight,
            wall,
            summary,
            samples: lat_us,
        });
    }
    Ok(results)
}
