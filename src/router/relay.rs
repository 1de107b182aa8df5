//! The router's relay, for peers nobody can dial: a peer the router could
//! not dial back holds a reservation here (a `Reserve` stream); others ask
//! through it to be dialed (`Reach`, a connection reversal) or open a
//! circuit (a relay connection, see [`crate::relay`]) that the router
//! splices to one the reserved peer opens. What crosses a circuit is the
//! two peers' own TLS: the router counts bytes, never reads them.
//!
//! Bounded in the manner of libp2p's circuit relay v2: reservations per
//! router, circuits per reservation, and bytes and duration per circuit;
//! a circuit past a limit is closed (both sides see its end and open
//! another), and counters say what happened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::identity::PublicKey;
use crate::names::Nick;
use crate::proto::{self, circuit_open, incoming, CircuitOpen, CircuitReply};
use crate::registry::Registry;
use crate::relay::{read_frame, write_frame, OPEN_TIMEOUT};
use crate::tls::{Io, TlsConn};

/// The fewest bytes a circuit may be allowed: a few of the links' largest
/// batches (128 KiB, two in flight) and a handshake. A circuit closed
/// before one batch is answered would be opened again and closed again
/// with that batch forever.
pub const MIN_CIRCUIT_BYTES: u64 = 1024 * 1024;

/// What a router's relay allows; the defaults are `router`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once.
    pub reservations: usize,
    /// Circuits open at once to one reserved peer.
    pub circuits: usize,
    /// Bytes one circuit carries, both ways together (at least
    /// [`MIN_CIRCUIT_BYTES`]; less is taken as that).
    pub circuit_bytes: u64,
    /// How long one circuit lasts.
    pub circuit_time: Duration,
}

impl Default for RelayLimits {
    /// libp2p's relay v2 keeps circuits tiny (128 KiB, 2 min) because they
    /// only bootstrap a hole punch; here a circuit is the path itself, so
    /// it carries a conversation's worth before the peers open another.
    fn default() -> Self {
        RelayLimits {
            reservations: 1024,
            circuits: 16,
            circuit_bytes: 64 * 1024 * 1024,
            circuit_time: Duration::from_secs(3600),
        }
    }
}

/// What the relay has done, as counters.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub reservations: AtomicU64,
    pub reservations_refused: AtomicU64,
    pub reversals: AtomicU64,
    pub circuits_opened: AtomicU64,
    pub circuits_refused: AtomicU64,
    pub circuits_open: AtomicU64,
    /// Circuits closed by their byte or time limit.
    pub circuits_limited: AtomicU64,
    pub bytes: AtomicU64,
}

/// A copy of [`RelayStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounts {
    pub reservations: u64,
    pub reservations_refused: u64,
    pub reversals: u64,
    pub circuits_opened: u64,
    pub circuits_refused: u64,
    pub circuits_open: u64,
    pub circuits_limited: u64,
    pub bytes: u64,
}

impl RelayStats {
    pub fn counts(&self) -> RelayCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayCounts {
            reservations: get(&self.reservations),
            reservations_refused: get(&self.reservations_refused),
            reversals: get(&self.reversals),
            circuits_opened: get(&self.circuits_opened),
            circuits_refused: get(&self.circuits_refused),
            circuits_open: get(&self.circuits_open),
            circuits_limited: get(&self.circuits_limited),
            bytes: get(&self.bytes),
        }
    }
}

/// The relay's figures, read at every scrape (`crate::metrics`).
impl prometheus_client::collector::Collector for RelayStats {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let c = self.counts();
        let counters = [
            (
                "relay_reservations",
                "Relay reservations granted.",
                c.reservations,
            ),
            (
                "relay_reservations_refused",
                "Relay reservations refused: the relay was full.",
                c.reservations_refused,
            ),
            (
                "relay_reversals",
                "Connection reversals asked of reserved peers.",
                c.reversals,
            ),
            (
                "relay_circuits_opened",
                "Relay circuits spliced.",
                c.circuits_opened,
            ),
            (
                "relay_circuits_refused",
                "Relay circuits refused (no reservation, its limit, no answer).",
                c.circuits_refused,
            ),
            (
                "relay_circuits_limited",
                "Relay circuits closed by their byte or time limit.",
                c.circuits_limited,
            ),
            ("relay_bytes", "Bytes relayed, both ways.", c.bytes),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let open = ConstGauge::new(i64::try_from(c.circuits_open).unwrap_or(i64::MAX));
        open.encode(encoder.encode_descriptor(
            "relay_circuits_open",
            "Relay circuits open now.",
            None,
            open.metric_type(),
        )?)
    }
}

/// What a reservation stream carries to its peer, queued at most this
/// many: past it, new asks are refused until the peer catches up.
const RESERVATION_QUEUE: usize = 64;
/// Bytes read at once from one side of a circuit.
const CHUNK: usize = 16 * 1024;

/// Where a reservation's asks go.
type Asks = mpsc::Sender<Result<proto::Incoming, Status>>;

struct Reservation {
    id: u64,
    tx: Asks,
    circuits: Arc<AtomicUsize>,
}

struct Pending {
    target: [u8; 32],
    io: oneshot::Sender<Io>,
}

/// The relay of one router. Cheap to share behind an `Arc`.
pub struct Relay {
    limits: RelayLimits,
    stats: Arc<RelayStats>,
    registry: Arc<dyn Registry>,
    reservations: Mutex<HashMap<[u8; 32], Reservation>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    stop: CancellationToken,
}

type Stream = mpsc::Receiver<Result<proto::Incoming, Status>>;

impl Relay {
    pub fn new(
        limits: RelayLimits,
        registry: Arc<dyn Registry>,
        stats: Arc<RelayStats>,
        stop: CancellationToken,
    ) -> Relay {
        let limits = RelayLimits {
            circuit_bytes: limits.circuit_bytes.max(MIN_CIRCUIT_BYTES),
            ..limits
        };
        Relay {
            limits,
            stats,
            registry,
            reservations: Mutex::default(),
            pending: Mutex::default(),
            next: AtomicU64::new(1),
            stop,
        }
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Holds a reservation for `key`, told as reachable at `relay`: the
    /// stream its peer reads. A new reservation of the same key replaces
    /// the old one (a new session).
    pub fn reserve(self: &Arc<Self>, key: PublicKey, relay: &str) -> Result<Stream, Status> {
        let (tx, rx) = mpsc::channel(RESERVATION_QUEUE);
        let id = self.id();
        {
            let mut held = lock(&self.reservations);
            if !held.contains_key(key.as_bytes()) && held.len() >= self.limits.reservations {
                self.stats
                    .reservations_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%key, "reservation refused: the relay is full");
                return Err(Status::resource_exhausted(format!(
                    "this router holds {} reservations, its limit; try another router",
                    self.limits.reservations
                )));
            }
            let first = proto::Incoming {
                kind: Some(incoming::Kind::Reserved(proto::Reserved {
                    relay: relay.to_owned(),
                    circuits: u32::try_from(self.limits.circuits).unwrap_or(u32::MAX),
                    circuit_bytes: self.limits.circuit_bytes,
                    circuit_ms: u64::try_from(self.limits.circuit_time.as_millis())
                        .unwrap_or(u64::MAX),
                })),
            };
            // The queue is new and empty.
            let _ = tx.try_send(Ok(first));
            let old = held.insert(
                *key.as_bytes(),
                Reservation {
                    id,
                    tx: tx.clone(),
                    circuits: Arc::default(),
                },
            );
            if old.is_none() {
                self.stats.reservations.fetch_add(1, Ordering::Relaxed);
            }
        }
        tracing::info!(%key, "reservation held");
        // The reservation ends with its stream (the peer went away, or a
        // newer one replaced it).
        let relay = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => {}
                _ = relay.stop.cancelled() => {}
            }
            let mut held = lock(&relay.reservations);
            if held.get(key.as_bytes()).is_some_and(|r| r.id == id) {
                held.remove(key.as_bytes());
                relay.stats.reservations.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(%key, "reservation ended");
            }
        });
        Ok(rx)
    }

    fn reservation(&self, key: &PublicKey) -> Option<(Asks, Arc<AtomicUsize>)> {
        lock(&self.reservations)
            .get(key.as_bytes())
            .map(|r| (r.tx.clone(), r.circuits.clone()))
    }

    /// Asks the peer reserved as `target` to dial `caller` at `address`
    /// with `nonce` (a connection reversal).
    pub fn reach(
        &self,
        caller: PublicKey,
        target: &PublicKey,
        address: &str,
        nonce: Vec<u8>,
    ) -> Result<(), Status> {
        let Some((tx, _)) = self.reservation(target) else {
            return Err(Status::not_found(
                "no reservation for that key at this router",
            ));
        };
        let ask = proto::Incoming {
            kind: Some(incoming::Kind::Dial(proto::DialBack {
                address: address.to_owned(),
                key: caller.to_vec(),
                nonce,
            })),
        };
        tx.try_send(Ok(ask))
            .map_err(|_| Status::resource_exhausted("the peer has too many asks waiting"))?;
        self.stats.reversals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Serves one relay connection: opens or takes a circuit, then (on the
    /// opening side) carries bytes between the two until one ends or a
    /// limit is reached.
    pub async fn handle(self: Arc<Self>, conn: TlsConn) {
        let caller = conn.caller().key;
        let mut io: Io = Box::new(conn);
        let open = tokio::time::timeout(OPEN_TIMEOUT, read_frame::<CircuitOpen>(&mut io)).await;
        let open = match open {
            Ok(Ok(open)) => open,
            _ => {
                tracing::debug!(%caller, "a relay connection sent no circuit request");
                return;
            }
        };
        match open.kind {
            Some(circuit_open::Kind::Connect(target)) => {
                self.connect(io, caller, &target, &open.nick).await
            }
            Some(circuit_open::Kind::Accept(id)) => self.accept(io, caller, id).await,
            None => {
                let _ = reply(&mut io, Code::InvalidArgument, "an empty circuit request").await;
            }
        }
    }

    async fn accept(&self, mut io: Io, caller: PublicKey, id: u64) {
        let pending = lock(&self.pending).remove(&id);
        match pending {
            Some(p) if p.target == *caller.as_bytes() => {
                // The opening side answers both and carries the bytes.
                let _ = p.io.send(io);
            }
            Some(_) | None => {
                let _ = reply(&mut io, Code::NotFound, "no such circuit for this key").await;
            }
        }
    }

    async fn connect(&self, mut io: Io, caller: PublicKey, target: &[u8], nick: &str) {
        let refused = |code: Code, why: String| {
            self.stats.circuits_refused.fetch_add(1, Ordering::Relaxed);
            (code, why)
        };
        let checked = async {
            let target = PublicKey::from_bytes(target)
                .map_err(|e| refused(Code::InvalidArgument, format!("target key: {e}")))?;
            let nick =
                Nick::parse(nick).map_err(|e| refused(Code::InvalidArgument, e.to_string()))?;
            // Insiders only: the caller's link key is the key its nick is
            // bound to.
            match self.registry.binding(&nick).await {
                Ok(Some(bound)) if bound == caller => {}
                Ok(_) => {
                    return Err(refused(
                        Code::PermissionDenied,
                        format!("{nick} is not bound to this link's key"),
                    ))
                }
                Err(err) => return Err(refused(Code::Unavailable, err.to_string())),
            }
            let Some((tx, circuits)) = self.reservation(&target) else {
                return Err(refused(
                    Code::NotFound,
                    "no reservation for that key at this router".into(),
                ));
            };
            if circuits.fetch_add(1, Ordering::AcqRel) >= self.limits.circuits {
                circuits.fetch_sub(1, Ordering::AcqRel);
                return Err(refused(
                    Code::ResourceExhausted,
                    format!(
                        "the peer has {} circuits open, the limit",
                        self.limits.circuits
                    ),
                ));
            }
            Ok((target, tx, circuits))
        };
        let (target, tx, circuits) = match checked.await {
            Ok(ok) => ok,
            Err((code, why)) => {
                tracing::debug!(%caller, %why, "circuit refused");
                let _ = reply(&mut io, code, &why).await;
                return;
            }
        };
        let _slot = Release(circuits);
        let id = self.id();
        let (taken, arrives) = oneshot::channel();
        lock(&self.pending).insert(
            id,
            Pending {
                target: *target.as_bytes(),
                io: taken,
            },
        );
        let offer = proto::Incoming {
            kind: Some(incoming::Kind::Circuit(proto::CircuitOffer {
                id,
                from: caller.to_vec(),
            })),
        };
        let other = if tx.try_send(Ok(offer)).is_ok() {
            tokio::time::timeout(OPEN_TIMEOUT, arrives)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        lock(&self.pending).remove(&id);
        let Some(mut other) = other else {
            self.stats.circuits_refused.fetch_add(1, Ordering::Relaxed);
            let _ = reply(
                &mut io,
                Code::Unavailable,
                "the peer did not take the circuit",
            )
            .await;
            return;
        };
        if reply(&mut io, Code::Ok, "").await.is_err()
            || reply(&mut other, Code::Ok, "").await.is_err()
        {
            return;
        }
        self.stats.circuits_opened.fetch_add(1, Ordering::Relaxed);
        self.stats.circuits_open.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%caller, to = %target, id, "circuit open");
        let limited = splice(io, other, &self.limits, &self.stats, &self.stop).await;
        self.stats.circuits_open.fetch_sub(1, Ordering::Relaxed);
        if limited {
            self.stats.circuits_limited.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%caller, to = %target, id, "circuit closed at its limit");
        } else {
            tracing::debug!(%caller, to = %target, id, "circuit closed");
        }
    }
}

/// Gives a circuit's slot in its reservation back when dropped.
struct Release(Arc<AtomicUsize>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn reply(io: &mut Io, code: Code, why: &str) -> std::io::Result<()> {
    write_frame(
        io,
        &CircuitReply {
            code: code as i32,
            error: why.to_owned(),
        },
    )
    .await
}

/// Carries bytes both ways between `a` and `b` until either ends, the
/// circuit's bytes or time run out, or the router stops. True when a
/// limit ended it.
async fn splice(
    a: Io,
    b: Io,
    limits: &RelayLimits,
    stats: &RelayStats,
    stop: &CancellationToken,
) -> bool {
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let used = AtomicU64::new(0);
    let over = CancellationToken::new();
    let both = async {
        tokio::join!(
            pump(ar, bw, &used, limits.circuit_bytes, stats, &over),
            pump(br, aw, &used, limits.circuit_bytes, stats, &over),
        )
    };
    tokio::select! {
        (x, y) = both => x || y,
        _ = tokio::time::sleep(limits.circuit_time) => true,
        _ = stop.cancelled() => false,
    }
}

/// One direction of a circuit. Ends the other direction as it ends; true
/// when it ended because the circuit's bytes ran out.
async fn pump(
    mut from: tokio::io::ReadHalf<Io>,
    mut to: tokio::io::WriteHalf<Io>,
    used: &AtomicU64,
    limit: u64,
    stats: &RelayStats,
    over: &CancellationToken,
) -> bool {
    let mut buf = vec![0u8; CHUNK];
    let mut limited = false;
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => n,
            _ = over.cancelled() => break,
        };
        let n = match n {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let total = used.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > limit {
            limited = true;
            break;
        }
        stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            break;
        }
    }
    over.cancel();
    let _ = to.shutdown().await;
    limited
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
