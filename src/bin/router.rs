//! `router`: the registry every peer logs in to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use parley::registry::{EtcdRegistry, MemoryRegistry, Registry, MIN_LEASE_TTL};

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
    /// The router's identity key (made, mode 0600, if absent). Peers pin
    /// it on first contact, so keep it across restarts. Default:
    /// $XDG_DATA_HOME or ~/.local/share, under parley/router.key.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Keep the registry in etcd at these endpoints (comma separated, e.g.
    /// http://10.0.0.5:2379,http://10.0.0.6:2379), shared by every router
    /// given the same. Without it the registry lives in this process. etcd
    /// must answer at start (within a few seconds) or the router exits;
    /// while it is away later, calls fail with UNAVAILABLE until it is back.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    etcd: Vec<String>,
}

fn default_key_file() -> anyhow::Result<PathBuf> {
    let home = parley::store::data_home().map_err(|e| anyhow::anyhow!("{e}: pass --key-file"))?;
    Ok(home.join("router.key"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    parley::logging::run_main("router", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let key_file = match args.key_file {
        Some(f) => f,
        None => default_key_file()?,
    };
    if let Some(dir) = key_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let identity = parley::identity::Identity::load_or_create(&key_file)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let ttl = Duration::from_secs(args.lease_ttl);
    let registry: Arc<dyn Registry> = if args.etcd.is_empty() {
        Arc::new(MemoryRegistry::new(ttl)?)
    } else {
        Arc::new(EtcdRegistry::connect(&args.etcd, ttl).await?)
    };
    println!("router listening on {addr}");
    println!("router key {}", identity.public().fingerprint());
    parley::router::serve(listener, registry, &identity, parley::shutdown::signal()).await?;
    Ok(())
}
