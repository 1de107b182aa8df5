//! What the bench's routers and peers share, wherever they run (in this
//! process or in a child): the router's lease, the line a child prints once
//! it serves, and how a peer's events are dropped.

use std::time::Duration;

use parley::peer::PeerEvent;
use tokio::sync::mpsc;

/// Lease of the bench's router: the default a person's router uses.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// The line a child prints once it serves.
pub const READY: &str = "ready ";

/// Reads and drops a peer's events, so the unbounded queue does not grow
/// with every message (and inflate the memory figures).
pub fn drain(mut events: mpsc::UnboundedReceiver<PeerEvent>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while events.recv().await.is_some() {} })
}
