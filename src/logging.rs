//! Logging for the binaries: tracing to stderr, filtered by `RUST_LOG`
//! (default `info` for parley, `warn` for everything else). Stdout is kept
//! for what the user or a script reads.

use std::io::IsTerminal;

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
