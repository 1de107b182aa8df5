//! What a bench child process runs: the bench re-executes itself (so a
//! `cargo run --bin bench` needs no other binary built) as a router or as a
//! member peer. Either prints one line, `ready <addr>`, on stdout once it
//! serves, then runs until its stdin closes (the bench ended or died) or a
//! signal arrives.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use parley::names::{Nick, Room};
use parley::peer::{Peer, PeerConfig};
use parley::registry::MemoryRegistry;
use tokio::io::AsyncReadExt;

use crate::node::{drain, LEASE_TTL, READY};

/// Resolves when stdin reaches its end (or fails): the parent is gone, so a
/// child never outlives the bench, even one killed with SIGKILL.
async fn parent_gone() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Runs until the parent goes away or Ctrl-C / SIGTERM.
async fn until_stopped() {
    tokio::select! {
        _ = parent_gone() => {}
        _ = parley::shutdown::signal() => {}
    }
}

fn ready(addr: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // The parent waits for this line; if it cannot be written the parent
    // times out and reports this child's log.
    let _ = writeln!(out, "{READY}{addr}");
    let _ = out.flush();
}

/// A router over an in-memory registry on a free loopback port.
pub async fn serve_router() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let registry = MemoryRegistry::new(LEASE_TTL)?;
    ready(addr);
    parley::router::serve(listener, Arc::new(registry), until_stopped()).await?;
    Ok(())
}

/// A member peer: logs in, joins `rooms`, then serves deliveries.
pub async fn serve_peer(
    nick: Nick,
    router: String,
    rooms: Vec<Room>,
    data_dir: PathBuf,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let (peer, events) = Peer::start(PeerConfig {
        nick,
        router,
        listener,
        data_dir,
        advertise: None,
    })
    .await?;
    let drain = drain(events);
    for room in &rooms {
        peer.join(room).await?;
    }
    ready(peer.listen_addr());
    until_stopped().await;
    peer.shutdown().await;
    drain.abort();
    Ok(())
}
