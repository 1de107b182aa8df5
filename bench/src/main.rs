//! `bench`: how fast parley is. Starts its own router and peers on
//! loopback, runs the scenarios of the design parley comes from, and prints
//! a table: latency percentiles, throughput, the ratio to the figures that
//! design reported and to the floor (a bare tonic call on the same
//! loopback), and peak memory.
//!
//! # Layout
//!
//! - [`scenario`]: the scenarios, a run's options, what a run measured.
//! - [`run`]: a run: the cluster started, messages sent and timed.
//! - [`cluster`]: the router and member peers on loopback, as child
//!   processes or in this process, and the senders.
//! - [`child`]: what this executable runs when re-run as a child.
//! - [`history`]: `join-100k`'s history, written into its holders' stores,
//!   and its floor.
//! - [`node`]: what routers and peers share wherever they run.
//! - [`stats`]: latency summaries.
//! - [`report`]: the table and the JSON file.
//! - [`svg`]: the latency by percentile as a picture.
//! - [`output`]: the `--json` and `--svg` files, checked before the run
//!   and written after the table is printed.

mod child;
mod cluster;
mod history;
mod node;
mod output;
mod report;
mod run;
mod scenario;
mod stats;
mod svg;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use parley::names::{Nick, Room};

use crate::output::{Output, Outputs};
use crate::scenario::{Options, Report, Scenario};

/// Benchmark parley on loopback: latency and throughput of private and room
/// messages, against a bare gRPC call (the floor) and the figures of the
/// Python design parley comes from.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// A scenario to run (repeatable; default all): floor, login, join,
    /// private, private-unsigned, private-reversed, private-relayed,
    /// mailbox, private-both, room-3, room-20, room-100, room-3-two-senders,
    /// throughput (= throughput-private and throughput-room-20), join-100k.
    /// login: one login of a fresh nick at the router; join: one JoinRoom
    /// into a room another session holds; private-reversed: to a member
    /// the router cannot dial back (reached by connection reversal);
    /// private-relayed: between two such peers (through the router's relay
    /// circuit); mailbox: per message, the deposit plus its share of the
    /// drain (a private line to a member that is offline, sealed into its
    /// mailbox at the router, drained when it starts again; not with
    /// --etcd, whose mailboxes are not written yet); join-100k: a new member
    /// pulls a history of 100x --messages messages.
    #[arg(long = "scenario", value_name = "NAME", value_parser = |s: &str| Scenario::select(s))]
    scenarios: Vec<Vec<Scenario>>,
    /// Messages per sender and scenario, and logins or joins for login
    /// and join (throughput sends 10x this).
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Members of the room-20 room, the sender included.
    #[arg(long, default_value_t = 20)]
    room_size: usize,
    /// Bytes of each message body (1-10000).
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    payload: usize,
    /// Run every peer and the router in this process instead of starting
    /// the members as separate processes.
    #[arg(long)]
    in_process: bool,
    /// The router keeps its registry in etcd at these endpoints (comma
    /// separated, e.g. http://127.0.0.1:23790) instead of in memory.
    /// Every nick and room carries a per-run suffix, so runs never collide
    /// with what earlier runs left in etcd.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Write every figure as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw every scenario's latency by percentile (log scales) as SVG to
    /// FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Also print the performance targets each row is held to, met or
    /// missed (the --json file holds them either way).
    #[arg(long)]
    targets: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(subcommand)]
    child: Option<Child>,
}

/// What the bench runs in its own child processes (hidden from --help).
#[derive(Subcommand)]
enum Child {
    #[command(name = "__router", hide = true)]
    Router {
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// Where the in-memory registry keeps its file.
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    #[command(name = "__peer", hide = true)]
    Peer {
        #[arg(long, value_parser = |s: &str| Nick::parse(s))]
        nick: Nick,
        #[arg(long)]
        router: String,
        #[arg(long = "join", value_parser = |s: &str| Room::parse(s))]
        join: Vec<Room>,
        #[arg(long)]
        data_dir: PathBuf,
        /// Neither sign nor check (the private-unsigned comparison).
        #[arg(long, conflicts_with = "walled")]
        unsigned: bool,
        /// Advertise a loopback address nothing listens at, so the router
        /// finds this peer unreachable (private-reversed, private-relayed);
        /// exits with an error, never ready, if it is found reachable.
        #[arg(long)]
        walled: bool,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // Quiet by default: the progress bar and the table are the output.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    // The output files are opened before anything starts: a path that
    // cannot be written is one line and exit code 1, no router nor peer
    // started. (None for the children: they write no file.)
    let mut outputs = match &args.child {
        Some(_) => Outputs {
            json: None,
            svg: None,
        },
        None => match Outputs::open(args.json.as_deref(), args.svg.as_deref()) {
            Ok(outputs) => outputs,
            Err(err) => {
                eprintln!("bench: {err:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    let show_targets = args.targets;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("bench: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match args.child {
            Some(Child::Router { etcd, data_dir }) => {
                child::serve_router(etcd, data_dir).await.map(|()| None)
            }
            Some(Child::Peer {
                nick,
                router,
                join,
                data_dir,
                unsigned,
                walled,
            }) => {
                let kind = match (unsigned, walled) {
                    (true, _) => node::Kind::Unsigned,
                    (_, true) => node::Kind::Walled,
                    _ => node::Kind::Signed,
                };
                child::serve_peer(nick, router, join, data_dir, kind)
                    .await
                    .map(|()| None)
            }
            None => {
                let options = Options {
                    scenarios: args.scenarios.into_iter().flatten().collect(),
                    messages: args.messages,
                    room_size: args.room_size,
                    payload: args.payload,
                    in_process: args.in_process,
                    etcd: args.etcd,
                    quiet: args.quiet,
                };
                // Ctrl-C drops the run: every child is killed on drop and
                // the temporary data directories are removed.
                tokio::select! {
                    report = run::run(options) => report.map(Some),
                    _ = parley::shutdown::signal() => Err(Interrupted.into()),
                }
            }
        }
    });
    // Don't wait for peers' background tasks: the run is over.
    runtime.shutdown_background();
    match outcome {
        Ok(Some(report)) => {
            // The table first, whatever becomes of the files.
            print!("{}", report::table(&report, show_targets));
            if write_outputs(&report, &mut outputs) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(err) if err.is::<Interrupted>() => {
            eprintln!("bench: interrupted; every process it started is stopped");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the files asked for and says where each went on stdout
/// (`json: /abs/path`; a path longer than the line is left whole, so that
/// line alone may pass 100 columns), or why it did not on stderr. Whether
/// every file was written.
fn write_outputs(report: &Report, outputs: &mut Outputs) -> bool {
    let mut ok = true;
    let mut write = |label: &str, out: Option<&mut Output>, text: anyhow::Result<String>| {
        let Some(out) = out else { return };
        match text.and_then(|text| out.write(text.as_bytes())) {
            Ok(path) => println!("{label}: {}", path.display()),
            Err(err) => {
                eprintln!("bench: {err:#}");
                ok = false;
            }
        }
    };
    write("json", outputs.json.as_mut(), report::json(report));
    write("svg", outputs.svg.as_mut(), svg::render(report));
    ok
}

/// Ctrl-C or SIGTERM during a run.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;
