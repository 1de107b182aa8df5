//! How the bench starts its routers and peers, the same way wherever they
//! run (in this process or in a child): the router's registry and lease,
//! the listener, a peer started and joined, the line a child prints once
//! it serves, and the run's suffix of every nick and room.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parley::names::{Nick, Room};
use parley::peer::{Peer, PeerConfig, PeerEvent};
use parley::registry::{EtcdRegistry, MemoryOptions, MemoryRegistry, Registry};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Lease of the bench's router: the default a person's router uses.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// The bench's router takes every login and new nick it is given: one
/// address (loopback) logs in thousands of fresh nicks in seconds here,
/// which a person's router refuses past its per-address limits. Its
/// mailboxes likewise take every envelope `mailbox` deposits (a person's
/// router takes 1,000 at once from one sender, then ten a second, and
/// 10,000 a mailbox); the age limit is the default.
pub fn router_limits() -> parley::router::RouterLimits {
    parley::router::RouterLimits {
        new_nicks: parley::router::BindingRate {
            burst: u32::MAX,
            every: Duration::from_millis(1),
        },
        logins_per_source: usize::MAX,
        mail: parley::router::MailLimits {
            quota: parley::mailbox::Quota {
                count: 1 << 32,
                bytes: 1 << 42,
            },
            rate: parley::router::BindingRate {
                burst: u32::MAX,
                every: Duration::from_millis(1),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The line a child prints once it serves.
pub const READY: &str = "ready ";

/// A free port on loopback, for a router or a peer.
pub async fn listener() -> anyhow::Result<TcpListener> {
    parley::net::bind_loopback()
        .await
        .context("cannot listen on 127.0.0.1")
}

/// What the bench's router serves, with its lease: an in-memory registry
/// keeping its file in `dir`, as `router` does, or the one kept in etcd at
/// `etcd` when that is not empty.
pub async fn registry(etcd: &[String], dir: &std::path::Path) -> anyhow::Result<Arc<dyn Registry>> {
    if etcd.is_empty() {
        Ok(Arc::new(MemoryRegistry::with(MemoryOptions {
            file: Some(dir.join(parley::registry::REGISTRY_FILE)),
            ..MemoryOptions::new(LEASE_TTL)
        })?))
    } else {
        Ok(Arc::new(connect_etcd(etcd).await?))
    }
}

/// The registry in etcd at `endpoints`; the error is one line naming them.
pub async fn connect_etcd(endpoints: &[String]) -> anyhow::Result<EtcdRegistry> {
    EtcdRegistry::connect(endpoints, LEASE_TTL)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace('\n', " ")))
}

/// 8 hex digits, different in every run: the suffix of every nick and
/// room the bench uses. A registry in etcd outlives the run and binds each
/// nick to its first key forever, so a nick of an earlier run (a new key
/// now) would be refused; rooms of an earlier run may still list members
/// whose leases have not run out.
pub fn run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // The std hasher's keys are random per process; the clock and the pid
    // make two runs differ even if they were not.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}

/// What kind of peer the bench starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Signs and checks, reachable at its listener: every row but two.
    Signed,
    /// Neither signs nor checks: the `private-unsigned` pair only.
    Unsigned,
    /// Signs and checks, but advertises a loopback address nothing listens
    /// at, so the router's dial-back at login fails and the peer is
    /// unreachable: others reach it by connection reversal or a relay
    /// circuit (`private-reversed`, `private-relayed`).
    Walled,
}

/// A loopback address nothing listens at: a port bound, then let go. A
/// listener that later takes the same port is another peer's, whose key
/// the router's dial-back would refuse: still unreachable.
async fn dead_address() -> anyhow::Result<String> {
    let l = listener().await?;
    Ok(l.local_addr()?.to_string())
}

/// Starts a peer with the library's defaults, logged in to `router` and
/// joined to `rooms`, its events drained. A [`Kind::Walled`] peer the
/// router could dial back all the same is an error (and is shut down): a
/// row meant for a reversed or relayed path must not measure a direct one.
pub async fn start_peer(
    nick: &Nick,
    router: &str,
    data_dir: PathBuf,
    rooms: &[Room],
    kind: Kind,
) -> anyhow::Result<Peer> {
    let mut config = PeerConfig::new(nick.clone(), router, listener().await?, data_dir);
    match kind {
        Kind::Signed => {}
        Kind::Unsigned => config.unsigned = true,
        Kind::Walled => config.advertise = Some(dead_address().await?),
    }
    let advertised = config.advertise.clone();
    let (peer, events) = Peer::start(config)
        .await
        .with_context(|| format!("cannot start peer {nick}"))?;
    drain(events);
    if kind == Kind::Walled && peer.reachable() {
        peer.shutdown().await;
        anyhow::bail!(
            "{nick} was started walled (advertising {}, where nothing listens) but the \
             router found it reachable: its row would measure a direct path",
            advertised.as_deref().unwrap_or("?")
        );
    }
    for room in rooms {
        peer.join(room)
            .await
            .with_context(|| format!("{nick} cannot join {room}"))?;
    }
    Ok(peer)
}

/// Starts a signed peer with the library's defaults, logged in to `router`
/// and in no room, as [`start_peer`] does, but keeps its events for the
/// caller, who must read them or drop the receiver (a full queue drops
/// events). Also returns when `Peer::start` returned: `mailbox` times its
/// member's drain from there.
pub async fn start_peer_keeping_events(
    nick: &Nick,
    router: &str,
    data_dir: PathBuf,
) -> anyhow::Result<(Peer, mpsc::Receiver<PeerEvent>, Instant)> {
    let config = PeerConfig::new(nick.clone(), router, listener().await?, data_dir);
    let (peer, events) = Peer::start(config)
        .await
        .with_context(|| format!("cannot start peer {nick}"))?;
    Ok((peer, events, Instant::now()))
}

/// Reads and drops a peer's events, so its queue never fills (a full queue
/// drops events and counts them). Ends when the peer does.
fn drain(mut events: mpsc::Receiver<PeerEvent>) {
    tokio::spawn(async move { while events.recv().await.is_some() {} });
}
