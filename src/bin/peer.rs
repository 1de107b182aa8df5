//! `peer`: the program a person runs to chat.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use parley::client::{Client, Front};
use parley::logging::HeldLog;
use parley::names::{Nick, Room};
use parley::peer::{Peer, PeerConfig};
use parley::terminal::screen::Tui;
use parley::terminal::{spawn_input, Colour, Output};
use tokio::sync::mpsc;

/// A parley peer: chat with others directly, history kept locally.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = format!(
        "Once running, type a message, or a command (/help shows these again):\n{}",
        parley::terminal::HELP
    )
)]
struct Args {
    /// Your nick: 1-32 of A-Z a-z 0-9 _ -.
    #[arg(long, value_parser = |s: &str| Nick::parse(s))]
    nick: Nick,
    /// The router's address; several, comma separated, are tried in
    /// order: when one stops answering the peer moves to the next (routers
    /// sharing one registry in etcd).
    #[arg(
        long,
        value_name = "ADDR[,ADDR...]",
        default_value = "127.0.0.1:50051",
        value_delimiter = ',',
        value_parser = router_addr
    )]
    router: Vec<String>,
    /// The router's key fingerprint (SHA256:..., the second line the router
    /// prints); with several routers, one per router in the same order, or
    /// one for all. Without it the key met on first contact is pinned.
    #[arg(long, value_name = "FINGERPRINT[,...]", value_delimiter = ',', value_parser = |s: &str| parley::identity::parse_fingerprint(s))]
    router_key: Vec<String>,
    /// Where this peer's chat service listens; port 0 takes a free port.
    /// IPv6 in brackets: [::1]:0. Listening on every address (0.0.0.0 or
    /// [::]) needs --advertise.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The address others reach this peer at (HOST:PORT), if not the
    /// --listen address: behind a proxy or a port forward, or listening on
    /// 0.0.0.0. The router dials it back at login; when nothing answers
    /// there, others reach this peer through the router.
    #[arg(long, value_parser = advertise_addr)]
    advertise: Option<String>,
    /// History, identity and lock (default: $XDG_DATA_HOME or
    /// ~/.local/share, under parley/NICK).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A room to join at start (repeatable).
    #[arg(long = "join", value_parser = |s: &str| Room::parse(s))]
    join: Vec<Room>,
    /// One JSON object per line on stdout, for scripts.
    #[arg(long)]
    json: bool,
    /// Lines, not the full screen, even on a terminal: one stream of
    /// every conversation, with a line editor (as pipes get without it).
    #[arg(long, conflicts_with = "json")]
    plain: bool,
    /// Log to stderr even on a terminal (where logs otherwise go to
    /// peer.log in the data directory, so they never write over the chat);
    /// the chat is then in lines, as with --plain.
    #[arg(long)]
    log_stderr: bool,
    /// Seconds between comparisons of history with the other members of
    /// each conversation (anti-entropy; jittered). Decimals work: 0.5.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = sync_interval)]
    sync_interval: Duration,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics;
    /// port 0 takes a free port (the log says which). Plain HTTP: keep it
    /// on an address only the scraper reaches.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

fn sync_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.1..=86_400.0).contains(&secs) {
        return Err("the sync interval is 0.1 to 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn advertise_addr(s: &str) -> Result<String, String> {
    parley::names::check_address(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn default_data_dir(nick: &Nick) -> Result<PathBuf, String> {
    let home = parley::store::data_home().map_err(|e| format!("{e}: pass --data-dir"))?;
    Ok(home.join(nick.key()))
}

/// The log file's name in the data directory, when the peer runs on a
/// terminal.
const LOG_FILE: &str = "peer.log";

fn main() -> ExitCode {
    let args = Args::parse();
    // A person chatting on a terminal: log lines would land in the middle
    // of the line being typed, so they go to a file (held in memory until
    // the data directory exists). Scripts (--json, pipes) keep stderr.
    let on_terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let log = if on_terminal && !args.json && !args.log_stderr {
        Some(parley::logging::init_held())
    } else {
        parley::logging::init();
        None
    };
    parley::logging::run("peer", run(args, log))
}

/// Removes `dir`, made by a start that failed, so a failed start leaves
/// nothing behind. Only under its lock: a peer that took the directory
/// meanwhile keeps it.
async fn remove_fresh_dir(dir: &Path) {
    let Ok(lock) = parley::store::lock_data_dir(dir) else {
        return;
    };
    // The failed peer's history store may still be closing its files.
    for _ in 0..20 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => break,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
            Err(err) => {
                tracing::debug!(dir = %dir.display(), cause = %err, "cannot remove the data directory yet");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    drop(lock);
}

/// The full screen for a person at a terminal that can draw one; lines
/// for scripts (`--json`), pipes, `--plain` and `TERM=dumb`.
fn front(json: bool, plain: bool) -> (Option<mpsc::Receiver<String>>, Front) {
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if !json && !plain && !dumb && terminal {
        match Tui::start(Colour::detect(true) == Colour::On) {
            Ok(tui) => return (None, Front::Screen(Box::new(tui))),
            Err(err) => tracing::warn!(cause = %err, "no full screen; lines instead"),
        }
    }
    let (lines, printer) = spawn_input(json);
    (Some(lines), Front::Lines(printer))
}

/// `--router`'s addresses are HOST:PORT: a port alone would be looked up
/// as a host name and fail later with a puzzling hint.
fn router_addr(s: &str) -> Result<String, String> {
    if s.parse::<u16>().is_ok() {
        return Err(format!(
            "{s} is a port alone: give HOST:PORT, e.g. 127.0.0.1:{s}"
        ));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_owned()),
        _ => Err(format!("{s} is not HOST:PORT (e.g. 127.0.0.1:50051)")),
    }
}

async fn run(args: Args, log: Option<HeldLog>) -> Result<(), String> {
    if args.listen.ip().is_unspecified() && args.advertise.is_none() {
        return Err(format!(
            "--listen {} takes connections on every address, so it cannot tell others which \
             one reaches you: add --advertise HOST:{} (this machine's address as others see \
             it)",
            args.listen,
            if args.listen.port() == 0 {
                "PORT".to_owned()
            } else {
                args.listen.port().to_string()
            }
        ));
    }
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => default_data_dir(&args.nick)?,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let fresh = !data_dir.exists();
    let mut config = PeerConfig::new(args.nick.clone(), String::new(), listener, data_dir.clone());
    config.routers = args.router;
    config.advertise = args.advertise;
    config.sync_interval = args.sync_interval;
    config.router_keys = args.router_key;
    config.metrics = args.metrics;
    let log_file = data_dir.join(LOG_FILE);
    let (peer, events) = match Peer::start(config).await {
        Ok(started) => started,
        Err(err) => {
            if fresh {
                if let Some(log) = &log {
                    log.discard();
                }
                remove_fresh_dir(&data_dir).await;
            } else if let Some(log) = &log {
                // What led up to the failure, for whoever reads the log.
                let _ = log.to_file(&log_file);
            }
            return Err(err.to_string());
        }
    };
    if let Some(log) = &log {
        // Still before the chat: one line on stderr is fine here.
        if let Err(err) = log.to_file(&log_file) {
            eprintln!(
                "peer: cannot write the log file {}: {err}; logging nothing",
                log_file.display()
            );
        }
    }
    // Logs on stderr would write over a full screen: lines then.
    let (lines, front) = front(args.json, args.plain || args.log_stderr);
    let mut client = Client::new(peer.clone(), front);
    client.load_ignored().await;
    client.show(Output::Ready {
        nick: peer.nick().to_string(),
        listen: peer.listen_addr().to_string(),
        reachable: peer.reachable(),
    });
    for room in &args.join {
        client.handle_line(&format!("/join {room}")).await;
    }
    // `/quit MESSAGE` tells the others MESSAGE as this peer logs out.
    let parting = client.run(lines, events, parley::shutdown::signal()).await;
    peer.quit(&parting).await;
    Ok(())
}
