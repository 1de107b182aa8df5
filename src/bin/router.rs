//! `router`: the registry every peer logs in to.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use parley::registry::{MemoryRegistry, MIN_LEASE_TTL};

/// The parley router: who is online and who sits in which room.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 takes a free port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Seconds a lease lasts without a heartbeat (at least 2).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(MIN_LEASE_TTL.as_secs()..=3600))]
    lease_ttl: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    parley::logging::run_main("router", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let registry = MemoryRegistry::new(Duration::from_secs(args.lease_ttl))?;
    println!("router listening on {addr}");
    parley::router::serve(listener, Arc::new(registry), parley::shutdown::signal()).await?;
    Ok(())
}
