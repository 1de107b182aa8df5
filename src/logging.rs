//! How the binaries start: tracing to stderr, filtered by `RUST_LOG`
//! (default `info` for parley, `warn` for everything else), and their async
//! main on a tokio runtime. Stdout is kept for what the user or a script
//! reads.

use std::fmt::Display;
use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,parley=info"));
    // A second init (tests calling binaries' code) is harmless: ignore it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Initialises logging and runs a binary's async `main` on a multi-threaded
/// runtime. An error is printed once, to stderr, after the program's name,
/// and becomes exit code 1.
pub fn run_main<E: Display>(name: &str, main: impl Future<Output = Result<(), E>>) -> ExitCode {
    init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{name}: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err}");
            ExitCode::FAILURE
        }
    }
}
