//! What a bench child process runs: the bench re-executes itself (so a
//! `cargo run --bin bench` needs no other binary built) as a router or as a
//! member peer. Either prints one line, `ready <addr>`, on stdout once it
//! serves, then runs until its stdin closes (the bench ended or died) or a
//! signal arrives. The router also answers each line `relay` on its stdin
//! with one line of what its relay has done (see [`RELAY`]).

use std::path::PathBuf;
use std::sync::Arc;

use parley::names::{Nick, Room};
use parley::router::{RelayCounts, RelayStats};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::node::{self, READY};

/// The question a router child answers on stdout, and its answer's
/// prefix: `relay <reversals> <circuits opened>`.
pub const RELAY: &str = "relay";

/// The router child's answer to [`RELAY`].
fn relay_line(c: &RelayCounts) -> String {
    format!("{RELAY} {} {}", c.reversals, c.circuits_opened)
}

/// Reads an answer of [`relay_line`]: reversals and circuits opened (the
/// other counts 0).
pub fn parse_relay_line(line: &str) -> Option<RelayCounts> {
    let mut words = line.strip_prefix(RELAY)?.split_whitespace();
    let reversals = words.next()?.parse().ok()?;
    let circuits_opened = words.next()?.parse().ok()?;
    Some(RelayCounts {
        reversals,
        circuits_opened,
        ..RelayCounts::default()
    })
}

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

/// One line on stdout, flushed: the parent waits for it. If it cannot be
/// written the parent times out and reports this child's log.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn ready(addr: impl std::fmt::Display) {
    say(&format!("{READY}{addr}"));
}

/// Answers every [`RELAY`] line on stdin with the relay's counts; resolves
/// when stdin reaches its end (or fails), as [`parent_gone`] does.
async fn answer_until_gone(stats: Arc<RelayStats>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == RELAY {
            say(&relay_line(&stats.counts()));
        }
    }
}

/// A router on a free loopback port, its registry in memory or in etcd at
/// `etcd`, served in the foreground until the bench is gone.
pub async fn serve_router(etcd: Vec<String>, data_dir: std::path::PathBuf) -> anyhow::Result<()> {
    let listener = node::listener().await?;
    let addr = listener.local_addr()?;
    let registry = node::registry(&etcd, &data_dir).await?;
    ready(addr);
    let identity = parley::identity::Identity::generate();
    let stats = Arc::<RelayStats>::default();
    let stopped = {
        let stats = stats.clone();
        async move {
            tokio::select! {
                _ = answer_until_gone(stats) => {}
                _ = parley::shutdown::signal() => {}
            }
        }
    };
    parley::router::serve_counted(
        listener,
        registry,
        &identity,
        node::router_limits(),
        stats,
        stopped,
    )
    .await?;
    Ok(())
}

/// A member peer: logs in, joins `rooms`, then serves deliveries. A
/// [`node::Kind::Walled`] one the router found reachable never prints its
/// ready line: it exits with the error, which the parent reports.
pub async fn serve_peer(
    nick: Nick,
    router: String,
    rooms: Vec<Room>,
    data_dir: PathBuf,
    kind: node::Kind,
) -> anyhow::Result<()> {
    let peer = node::start_peer(&nick, &router, data_dir, &rooms, kind).await?;
    ready(peer.listen_addr());
    until_stopped().await;
    peer.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_line_reads_back() {
        let counts = RelayCounts {
            reversals: 3,
            circuits_opened: 7,
            ..RelayCounts::default()
        };
        let line = relay_line(&counts);
        assert_eq!(line, "relay 3 7");
        assert_eq!(parse_relay_line(&line), Some(counts));
        assert_eq!(parse_relay_line("ready 127.0.0.1:1"), None);
        assert_eq!(parse_relay_line("relay 3"), None);
    }
}
