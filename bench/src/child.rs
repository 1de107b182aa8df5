//! What a bench child process runs: the bench re-executes itself (so a
//! `cargo run --bin bench` needs no other binary built) as a router or as a
//! member peer. Either prints one line, `ready <addr>`, on stdout once it
//! serves, then runs until its stdin closes (the bench ended or died) or a
//! signal arrives.

use std::path::PathBuf;

use parley::names::{Nick, Room};
use tokio::io::AsyncReadExt;

use crate::node::{self, READY};

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

/// A router on a free loopback port, its registry in memory or in etcd at
/// `etcd`, served in the foreground until the bench is gone.
pub async fn serve_router(etcd: Vec<String>, data_dir: std::path::PathBuf) -> anyhow::Result<()> {
    let listener = node::listener().await?;
    let addr = listener.local_addr()?;
    let registry = node::registry(&etcd, &data_dir).await?;
    ready(addr);
    let identity = parley::identity::Identity::generate();
    parley::router::serve(
        listener,
        registry,
        &identity,
        node::router_limits(),
        until_stopped(),
    )
    .await?;
    Ok(())
}

/// A member peer: logs in, joins `rooms`, then serves deliveries.
pub async fn serve_peer(
    nick: Nick,
    router: String,
    rooms: Vec<Room>,
    data_dir: PathBuf,
    unsigned: bool,
) -> anyhow::Result<()> {
    let peer = node::start_peer(&nick, &router, data_dir, &rooms, unsigned).await?;
    ready(peer.listen_addr());
    until_stopped().await;
    peer.shutdown().await;
    Ok(())
}
