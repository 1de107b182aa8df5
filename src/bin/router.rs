//! `router`: the registry every peer logs in to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use parley::mailbox::Quota;
use parley::metrics::{MetricsServer, RouterMetrics};
use parley::registry::{
    EtcdRegistry, MemoryOptions, MemoryRegistry, Registry, MIN_LEASE_TTL, REGISTRY_FILE,
};
use parley::router::{BindingRate, MailLimits, RelayLimits, RelayStats, RouterLimits};
use tokio_util::sync::CancellationToken;

/// The parley router: who is online and who sits in which room.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 takes a free port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// The address peers reach this router at (HOST:PORT), told to others
    /// as the relay of a peer nobody can dial; default: the address each
    /// peer dialed, which is wrong behind a port forward.
    #[arg(long, value_parser = |s: &str| parley::names::check_address(s).map(|()| s.to_owned()).map_err(|e| e.to_string()))]
    advertise: Option<String>,
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
    /// Where the in-memory registry keeps nick bindings and room owners
    /// across restarts (the file registry.sqlite3), and mailboxes (the
    /// file mailbox.sqlite3). Default: the key file's directory. Not used
    /// with --etcd, which keeps both in etcd.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Days a key may go unseen before its nicks are released.
    #[arg(long, default_value_t = 365, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..=36500))]
    binding_ttl_days: u64,
    /// New nicks one source address may bind at once ...
    #[arg(long, default_value_t = BindingRate::default().burst, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    new_nick_burst: u32,
    /// ... and then one per this many seconds.
    #[arg(long, default_value_t = BindingRate::default().every.as_secs(), value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    new_nick_every: u64,
    /// Logins one source address may complete within 30 s (a login
    /// challenge's life).
    #[arg(long, default_value_t = parley::router::USED_PER_SOURCE as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    logins_per_address: u64,
    /// Peers nobody can dial that may hold a reservation here at once
    /// (others reach them through this router).
    #[arg(long, default_value_t = RelayLimits::default().reservations as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(0..))]
    relay_reservations: u64,
    /// Relay circuits open at once to one reserved peer.
    #[arg(long, default_value_t = RelayLimits::default().circuits as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    relay_circuits: u64,
    /// Bytes one relay circuit carries (both ways) before it is closed and
    /// the peers open another; at least 1 MiB, so a circuit always carries
    /// a few of the links' batches (128 KiB at most) and makes progress.
    #[arg(long, default_value_t = RelayLimits::default().circuit_bytes, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(parley::router::MIN_CIRCUIT_BYTES..))]
    relay_circuit_bytes: u64,
    /// Seconds one relay circuit lasts before it is closed and the peers
    /// open another.
    #[arg(long, default_value_t = RelayLimits::default().circuit_time.as_secs(), value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    relay_circuit_secs: u64,
    /// Envelopes one mailbox may hold (sealed mail for an offline
    /// recipient); a deposit past it is refused and the message stays
    /// owed at its sender.
    #[arg(long, default_value_t = MailLimits::default().quota.count, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    mailbox_count: u64,
    /// Bytes of envelopes one mailbox may hold.
    #[arg(long, default_value_t = MailLimits::default().quota.bytes, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(parley::router::MAX_ENVELOPE as u64..))]
    mailbox_bytes: u64,
    /// Envelopes one sender's key may deposit at once (all mailboxes
    /// together) ...
    #[arg(long, default_value_t = MailLimits::default().rate.burst, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    mailbox_burst: u32,
    /// ... and then one per this many milliseconds.
    #[arg(long, default_value_t = MailLimits::default().rate.every.as_millis() as u64, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    mailbox_every_ms: u64,
    /// Days an envelope waits before it is removed unread (its recipient
    /// is told how many were).
    #[arg(long, default_value_t = MailLimits::default().max_age.as_secs() / 86400, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..=3650))]
    mailbox_days: u64,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics;
    /// port 0 takes a free port (the log says which). Plain HTTP: keep it
    /// on an address only the scraper reaches.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
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
    let metrics_server = match args.metrics {
        Some(at) => Some(
            MetricsServer::bind(at)
                .await
                .map_err(|e| anyhow::anyhow!("cannot serve metrics on {at}: {e}"))?,
        ),
        None => None,
    };
    let ttl = Duration::from_secs(args.lease_ttl);
    let binding_ttl = Duration::from_secs(args.binding_ttl_days * 24 * 3600);
    let registry: Arc<dyn Registry> = if args.etcd.is_empty() {
        let dir = match args.data_dir {
            Some(d) => d,
            None => key_file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), PathBuf::from),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        Arc::new(MemoryRegistry::with(MemoryOptions {
            lease_ttl: ttl,
            file: Some(dir.join(REGISTRY_FILE)),
            binding_ttl,
        })?)
    } else {
        Arc::new(
            EtcdRegistry::connect(&args.etcd, ttl)
                .await?
                .with_binding_ttl(binding_ttl),
        )
    };
    println!("router listening on {addr}");
    println!("router key {}", identity.public().fingerprint());
    let limits = RouterLimits {
        new_nicks: BindingRate {
            burst: args.new_nick_burst,
            every: Duration::from_secs(args.new_nick_every),
        },
        logins_per_source: usize::try_from(args.logins_per_address).unwrap_or(usize::MAX),
        advertise: args.advertise,
        relay: RelayLimits {
            reservations: usize::try_from(args.relay_reservations).unwrap_or(usize::MAX),
            circuits: usize::try_from(args.relay_circuits).unwrap_or(usize::MAX),
            circuit_bytes: args.relay_circuit_bytes,
            circuit_time: Duration::from_secs(args.relay_circuit_secs),
        },
        mail: MailLimits {
            quota: Quota {
                count: args.mailbox_count,
                bytes: args.mailbox_bytes,
            },
            rate: BindingRate {
                burst: args.mailbox_burst,
                every: Duration::from_millis(args.mailbox_every_ms),
            },
            max_age: Duration::from_secs(args.mailbox_days * 24 * 3600),
        },
    };
    let stats = Arc::<RelayStats>::default();
    let metrics = RouterMetrics::new(stats.clone());
    let stop_metrics = CancellationToken::new();
    let metrics_task = metrics_server
        .map(|server| tokio::spawn(server.run(metrics.registry(), stop_metrics.clone())));
    let served = parley::router::serve_metered(
        listener,
        registry,
        &identity,
        limits,
        stats,
        metrics,
        parley::shutdown::signal(),
    )
    .await;
    stop_metrics.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    served?;
    Ok(())
}
