//! Terminal input and output.
//!
//! Input is read on a dedicated std thread (reading stdin blocks, and must not
//! hold a tokio worker) and handed over a channel, one line at a time; the
//! channel closes at end of input, Ctrl-D or Ctrl-C, which the caller takes as
//! `/quit`. When a person sits at a terminal (and `--json` is off) the thread
//! runs a rustyline editor, and the [`Printer`] goes through the editor's
//! external printer so a message arriving mid-typing is printed above the
//! prompt instead of through the half-typed line. Otherwise lines go straight
//! to stdout, one per event, flushed, for scripts.
//!
//! Known rustyline 17 limit (kkawakam/rustyline#976, #629): with an external
//! printer, keys that arrive in one burst (a paste, an IME) after the first
//! wait in a buffer until the next key press. Typing by hand is unaffected.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

use super::command::{parse, Command};
use super::output::Output;

/// Lines waiting between the input thread and the peer; typing is slow, a
/// pipe can be fast, and a full channel just makes the reader wait.
const INPUT_BUFFER: usize = 64;

/// The prompt shown by the line editor.
const PROMPT: &str = "> ";

type SharedExternal = Arc<Mutex<Box<dyn ExternalPrinter + Send>>>;

/// Writes [`Output`] events to the terminal: a cheap `Clone`, shareable
/// between tasks. Never panics; a closed stdout (broken pipe) is logged at
/// debug and otherwise ignored.
#[derive(Clone)]
pub struct Printer {
    json: bool,
    /// The line editor's printer, when one is reading the terminal.
    external: Option<SharedExternal>,
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer")
            .field("json", &self.json)
            .field("external", &self.external.is_some())
            .finish()
    }
}

impl Printer {
    /// A printer that writes to stdout: JSON lines, or human lines.
    pub fn stdout(json: bool) -> Printer {
        Printer {
            json,
            external: None,
        }
    }

    /// Whether this printer writes JSON lines.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// The text [`Printer::print`] writes for `out`, without the final
    /// newline; `None` when there is nothing to show.
    pub fn render(&self, out: &Output) -> Option<String> {
        let text = if self.json {
            out.to_json()
        } else {
            out.to_human()
        };
        (!text.is_empty()).then_some(text)
    }

    /// Prints one event. Through the line editor this hands the text to the
    /// editor thread, which takes it at once while it waits for keys; it can
    /// wait briefly if the editor is busy, but never on the network.
    pub fn print(&self, out: &Output) {
        let Some(mut text) = self.render(out) else {
            return;
        };
        text.push('\n');
        if let Some(external) = &self.external {
            // A poisoned lock only means another print panicked mid-way; the
            // printer inside is still usable.
            let mut printer = external.lock().unwrap_or_else(|p| p.into_inner());
            match printer.print(text) {
                Ok(()) => return,
                // The editor is gone or the terminal refused: fall back to
                // stdout below rather than lose the line.
                Err(err) => {
                    tracing::debug!(cause = %err, "external printer failed");
                    text = self.render(out).unwrap_or_default() + "\n";
                }
            }
        }
        let mut stdout = std::io::stdout().lock();
        if let Err(err) = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            tracing::debug!(cause = %err, "could not write to stdout");
        }
    }
}

/// Starts reading input on its own thread. Returns the lines as they come
/// (the channel closes at end of input, Ctrl-D or Ctrl-C) and the printer to
/// use for all output.
///
/// With a terminal on stdin and `json` off, lines are read with a rustyline
/// editor (history, editing keys) and printing goes through it; otherwise
/// stdin is read line by line, as a script would write it.
pub fn spawn_input(json: bool) -> (mpsc::Receiver<String>, Printer) {
    let (tx, rx) = mpsc::channel(INPUT_BUFFER);
    if !json && std::io::stdin().is_terminal() {
        match DefaultEditor::new() {
            Ok(mut editor) => {
                // The printer must come from the editor before the editor
                // moves into its thread; without one (stdout not a terminal),
                // the editor still reads and output goes to stdout.
                let external = match editor.create_external_printer() {
                    Ok(p) => {
                        let boxed: Box<dyn ExternalPrinter + Send> = Box::new(p);
                        Some(Arc::new(Mutex::new(boxed)))
                    }
                    Err(err) => {
                        tracing::debug!(cause = %err, "no external printer; printing to stdout");
                        None
                    }
                };
                if spawn_thread("parley-editor", move || edit_loop(editor, tx)) {
                    return (rx, Printer { json, external });
                }
                // No thread means no reader: the closed channel says quit.
                return (rx, Printer::stdout(json));
            }
            Err(err) => {
                tracing::debug!(cause = %err, "no line editor; reading stdin plainly");
            }
        }
    }
    spawn_thread("parley-stdin", move || {
        read_loop(std::io::stdin().lock(), tx)
    });
    (rx, Printer::stdout(json))
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    match std::thread::Builder::new().name(name.into()).spawn(f) {
        Ok(_) => true,
        Err(err) => {
            tracing::error!(cause = %err, thread = name, "could not start the input thread");
            false
        }
    }
}

fn edit_loop(mut editor: DefaultEditor, tx: mpsc::Sender<String>) {
    loop {
        match editor.readline(PROMPT) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    if let Err(err) = editor.add_history_entry(line.as_str()) {
                        tracing::debug!(cause = %err, "could not add to history");
                    }
                }
                // After `/quit` no prompt is drawn again: it would stay on
                // the screen after the peer is gone.
                let quit = matches!(parse(&line), Ok(Some(Command::Quit)));
                if tx.blocking_send(line).is_err() || quit {
                    return; // the peer stopped listening, or is stopping
                }
            }
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => return,
            Err(err) => {
                tracing::debug!(cause = %err, "line editor failed; ending input");
                return;
            }
        }
    }
}

/// Reads `input` line by line until end of input, sending each line without
/// its line ending. Bytes that are not UTF-8 are replaced rather than ending
/// the input.
fn read_loop(mut input: impl BufRead, tx: mpsc::Sender<String>) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\r', '\n']).to_owned();
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::debug!(cause = %err, "could not read stdin; ending input");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_is_cheap_to_share() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Printer>();
    }

    #[test]
    fn render_picks_the_mode_and_skips_empty_lines() {
        let err = Output::error("boom");
        assert_eq!(
            Printer::stdout(true).render(&err).as_deref(),
            Some(r#"{"type":"error","message":"boom"}"#)
        );
        assert_eq!(
            Printer::stdout(false).render(&err).as_deref(),
            Some("!! boom")
        );
        let quiet = Output::Sent {
            conversation: "#r".into(),
            author_seq: 1,
            delivered: vec![],
            pending: vec![],
        };
        assert_eq!(Printer::stdout(false).render(&quiet), None);
        assert!(Printer::stdout(true).render(&quiet).is_some());
    }

    #[test]
    fn read_loop_sends_lines_and_closes_at_eof() {
        let input: &[u8] = b"/join #rust\r\nhello  \n\xffbad\nlast";
        let (tx, mut rx) = mpsc::channel(8);
        read_loop(input, tx);
        let mut got = Vec::new();
        while let Ok(line) = rx.try_recv() {
            got.push(line);
        }
        assert_eq!(got, ["/join #rust", "hello  ", "\u{FFFD}bad", "last"]);
        assert!(rx.try_recv().is_err(), "channel closed at end of input");
    }

    #[tokio::test]
    async fn input_thread_does_not_block_the_runtime() {
        // A reader thread feeding a slow consumer: blocking_send waits on the
        // std thread, the runtime keeps running.
        let (tx, mut rx) = mpsc::channel(1);
        let data: Vec<u8> = (0..100)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        std::thread::spawn(move || read_loop(std::io::Cursor::new(data), tx));
        let mut n = 0;
        while let Some(line) = rx.recv().await {
            assert_eq!(line, format!("line {n}"));
            n += 1;
            tokio::task::yield_now().await;
        }
        assert_eq!(n, 100);
    }
}
