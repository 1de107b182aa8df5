//! How the bench starts its routers and peers, the same way wherever they
//! run (in this process or in a child): the router's registry and lease,
//! the listener, a peer started and joined, and the line a child prints
//! once it serves.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parley::names::{Nick, Room};
use parley::peer::{Peer, PeerConfig, PeerEvent};
use parley::registry::{MemoryRegistry, Registry};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Lease of the bench's router: the default a person's router uses.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// The line a child prints once it serves.
pub const READY: &str = "ready ";

/// A free port on loopback, for a router or a peer.
pub async fn listener() -> anyhow::Result<TcpListener> {
    parley::net::bind_loopback()
        .await
        .context("cannot listen on 127.0.0.1")
}

/// What the bench's router serves: an in-memory registry with its lease.
pub fn registry() -> anyhow::Result<Arc<dyn Registry>> {
    Ok(Arc::new(MemoryRegistry::new(LEASE_TTL)?))
}

/// Starts a peer with the library's defaults, logged in to `router` and
/// joined to `rooms`, its events drained. `unsigned`: a peer that neither
/// signs nor checks, for the `private-unsigned` comparison only.
pub async fn start_peer(
    nick: &Nick,
    router: &str,
    data_dir: PathBuf,
    rooms: &[Room],
    unsigned: bool,
) -> anyhow::Result<Peer> {
    let mut config = PeerConfig::new(nick.clone(), router, listener().await?, data_dir);
    config.unsigned = unsigned;
    let (peer, events) = Peer::start(config)
        .await
        .with_context(|| format!("cannot start peer {nick}"))?;
    drain(events);
    for room in rooms {
        peer.join(room)
            .await
            .with_context(|| format!("{nick} cannot join {room}"))?;
    }
    Ok(peer)
}

/// Reads and drops a peer's events, so its queue never fills (a full queue
/// drops events and counts them). Ends when the peer does.
fn drain(mut events: mpsc::Receiver<PeerEvent>) {
    tokio::spawn(async move { while events.recv().await.is_some() {} });
}
