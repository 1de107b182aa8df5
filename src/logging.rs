//! How the binaries start: tracing filtered by `RUST_LOG` (default `info`
//! for parley, `warn` for everything else), and their async main on a tokio
//! runtime. Stdout is kept for what the user or a script reads.
//!
//! Logs go to stderr ([`init`]), or, for a peer a person chats in on a
//! terminal, to a log file ([`init_held`]): a log line must never land in
//! the middle of the line being typed. The file is in the data directory,
//! which may not exist until the peer has started, so lines are held in
//! memory until [`HeldLog::to_file`] says where they go.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Bytes of log held in memory before a log file is open; past that, lines
/// are dropped (and counted in the file once it opens).
pub const HELD_BYTES: usize = 256 * 1024;

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,parley=info"))
}

/// Logs to stderr.
pub fn init() {
    // A second init (tests calling binaries' code) is harmless: ignore it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

enum Sink {
    /// Lines waiting for a place, and how many bytes were dropped.
    Held(Vec<u8>, usize),
    File(File),
    /// Nowhere (the file could not be opened, or a failed start).
    Dropped,
}

/// Where a peer's log lines go: held in memory, then a file. Cheap to
/// clone; every clone is the same sink.
#[derive(Clone)]
pub struct HeldLog {
    sink: Arc<Mutex<Sink>>,
}

impl HeldLog {
    /// A sink that holds what it is given (not installed as the logger:
    /// [`init_held`] does that).
    pub fn new() -> HeldLog {
        HeldLog {
            sink: Arc::new(Mutex::new(Sink::Held(Vec::new(), 0))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on lines go to `path` (created if need be, appended to);
    /// the lines held so far are written first. On an error nothing more
    /// is kept, and the error says why.
    pub fn to_file(&self, path: &Path) -> std::io::Result<()> {
        let mut sink = self.lock();
        let opened = OpenOptions::new().create(true).append(true).open(path);
        let mut file = match opened {
            Ok(f) => f,
            Err(err) => {
                *sink = Sink::Dropped;
                return Err(err);
            }
        };
        if let Sink::Held(held, dropped) = &*sink {
            let mut written = file.write_all(held);
            if *dropped > 0 {
                written = written.and_then(|()| {
                    writeln!(
                        file,
                        "({dropped} bytes of log dropped before this file was opened)"
                    )
                });
            }
            if let Err(err) = written {
                *sink = Sink::Dropped;
                return Err(err);
            }
        }
        *sink = Sink::File(file);
        Ok(())
    }

    /// Forgets what is held and keeps nothing more.
    pub fn discard(&self) {
        *self.lock() = Sink::Dropped;
    }

    /// The bytes held so far (for tests).
    pub fn held(&self) -> Vec<u8> {
        match &*self.lock() {
            Sink::Held(held, _) => held.clone(),
            _ => Vec::new(),
        }
    }
}

impl Default for HeldLog {
    fn default() -> Self {
        HeldLog::new()
    }
}

impl Write for HeldLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut *self.lock() {
            Sink::Held(held, dropped) => {
                if held.len() + buf.len() <= HELD_BYTES {
                    held.extend_from_slice(buf);
                } else {
                    *dropped += buf.len();
                }
            }
            // A log file that cannot be written must not stop the peer.
            Sink::File(file) => {
                let _ = file.write_all(buf);
            }
            Sink::Dropped => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Sink::File(file) = &mut *self.lock() {
            let _ = file.flush();
        }
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for HeldLog {
    type Writer = HeldLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Logs to a [`HeldLog`] (no colours: it ends in a file), returned so the
/// caller can say where the file is once it may be created.
pub fn init_held() -> HeldLog {
    let log = HeldLog::new();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(log.clone())
        .with_ansi(false)
        .try_init();
    log
}

/// Initialises logging to stderr and runs a binary's async `main` on a
/// multi-threaded runtime. An error is printed once, to stderr, after the
/// program's name, and becomes exit code 1.
pub fn run_main<E: Display>(name: &str, main: impl Future<Output = Result<(), E>>) -> ExitCode {
    init();
    run(name, main)
}

/// [`run_main`] without initialising logging (the caller did).
pub fn run<E: Display>(name: &str, main: impl Future<Output = Result<(), E>>) -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lines_reach_the_file_first_then_the_rest_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.log");
        std::fs::write(&path, "from before\n").unwrap();
        let mut log = HeldLog::new();
        log.write_all(b"held 1\n").unwrap();
        log.write_all(b"held 2\n").unwrap();
        assert_eq!(log.held(), b"held 1\nheld 2\n");
        log.to_file(&path).unwrap();
        log.write_all(b"after\n").unwrap();
        log.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "from before\nheld 1\nheld 2\nafter\n"
        );
    }

    #[test]
    fn holding_is_bounded_and_says_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.log");
        let mut log = HeldLog::new();
        let line = vec![b'x'; 1000];
        for _ in 0..(HELD_BYTES / 1000 + 5) {
            log.write_all(&line).unwrap();
        }
        assert!(log.held().len() <= HELD_BYTES);
        log.to_file(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("bytes of log dropped before this file was opened)\n"));
    }

    #[test]
    fn a_discarded_or_unopenable_log_keeps_nothing_and_never_fails_a_write() {
        let mut log = HeldLog::new();
        log.write_all(b"x\n").unwrap();
        log.discard();
        assert!(log.held().is_empty());
        log.write_all(b"y\n").unwrap();
        let mut log = HeldLog::new();
        assert!(log.to_file(Path::new("/nonexistent/dir/peer.log")).is_err());
        log.write_all(b"z\n").unwrap();
    }
}
