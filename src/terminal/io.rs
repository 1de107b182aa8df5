//! Terminal input and output.
//!
//! Input is read on a dedicated std thread (reading stdin blocks, and must not
//! hold a tokio worker) and handed over a channel, one line at a time; the
//! channel closes at end of input, Ctrl-D or Ctrl-C, which the caller takes as
//! `/quit` (Ctrl-C on a half-typed line first asks, and keeps the line). When a person sits at a terminal (and `--json` is off) the thread
//! runs a rustyline editor; otherwise lines go straight to stdout, one per
//! event, flushed, for scripts.
//!
//! Printing while a line is being typed: rustyline 17's external printer
//! loses keys that arrive in one burst (a paste without bracketed paste, an
//! input method, typing over a slow ssh): it waits on the terminal's file
//! descriptor while the rest of the burst sits in its own read buffer, so
//! only the first key shows and Enter waits for the next key press
//! (kkawakam/rustyline#976). So no external printer is made, and the editor
//! reads every buffered key at once; the [`Printer`] instead clears the input
//! line itself, writes the event, and redraws the prompt and the half-typed
//! line where they were, in one write. The editor tells it what is on the
//! line (through its helper, on every change), so the redraw matches what
//! rustyline believes is on the screen. A burst of several lines needs
//! rustyline's `buffer-redux` feature: without it, keys read past the first
//! Enter are dropped with the reader at the end of that line.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};
use tokio::sync::mpsc;

use super::command::{parse, Command, COMMANDS};
use super::output::{Colour, Output};

/// Lines waiting between the input thread and the peer; typing is slow, a
/// pipe can be fast, and a full channel just makes the reader wait.
const INPUT_BUFFER: usize = 64;

/// The prompt before any conversation is current.
pub const DEFAULT_PROMPT: &str = "> ";

/// How long the editor waits, after a line, for the peer to have acted on
/// it before drawing the next prompt (which may name a new conversation).
const ACK_WAIT: Duration = Duration::from_secs(5);

/// What the screen holds around the line being typed, shared between the
/// editor thread and the printer.
#[derive(Debug)]
struct Screen {
    /// The editor is inside `readline`: a prompt and a line are on screen.
    editing: bool,
    /// The prompt of the current `readline`.
    shown_prompt: String,
    /// The prompt for the next `readline`.
    prompt: String,
    /// The line being typed and the cursor's byte offset in it.
    line: String,
    pos: usize,
    /// Terminal width, as the editor last measured it.
    cols: usize,
    /// What Tab completes besides commands: nicks and rooms.
    names: Vec<String>,
    /// The terminal itself, written in one call per event.
    out: Option<File>,
}

type SharedScreen = Arc<Mutex<Screen>>;

fn lock(screen: &SharedScreen) -> std::sync::MutexGuard<'_, Screen> {
    // A poisoned lock only means a print panicked mid-way; the state is
    // still usable.
    screen.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes [`Output`] events to the terminal: a cheap `Clone`, shareable
/// between tasks. Never panics; a closed stdout (broken pipe) is logged at
/// debug and otherwise ignored.
#[derive(Clone)]
pub struct Printer {
    json: bool,
    /// Nick colours and mention highlights in human lines.
    colour: Colour,
    /// The line editor's screen, when one is reading the terminal.
    screen: Option<SharedScreen>,
    /// Tells the editor a line was acted on.
    ack: Option<Arc<Mutex<std_mpsc::Sender<()>>>>,
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer")
            .field("json", &self.json)
            .field("editor", &self.screen.is_some())
            .finish()
    }
}

impl Printer {
    /// A printer that writes to stdout: JSON lines, or human lines (in
    /// colour on a terminal, see [`Colour::detect`]).
    pub fn stdout(json: bool) -> Printer {
        Printer {
            json,
            colour: Colour::detect(!json && std::io::stdout().is_terminal()),
            screen: None,
            ack: None,
        }
    }

    /// Whether this printer writes JSON lines.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Whether a line editor reads the terminal (a prompt is shown).
    pub fn has_editor(&self) -> bool {
        self.screen.is_some()
    }

    /// The text [`Printer::print`] writes for `out`, without the final
    /// newline; `None` when there is nothing to show.
    pub fn render(&self, out: &Output) -> Option<String> {
        let text = if self.json {
            out.to_json()
        } else {
            out.to_human_in(self.colour)
        };
        (!text.is_empty()).then_some(text)
    }

    /// The prompt for the next line (`[#rust] `); shown from the next line
    /// on. Nothing happens without a line editor.
    pub fn set_prompt(&self, prompt: &str) {
        if let Some(screen) = &self.screen {
            lock(screen).prompt = prompt.to_owned();
        }
    }

    /// Nicks and rooms that Tab completes.
    pub fn set_names(&self, names: Vec<String>) {
        if let Some(screen) = &self.screen {
            lock(screen).names = names;
        }
    }

    /// Says the last line read was acted on: the editor draws the next
    /// prompt (with what the line changed) only then.
    pub fn line_done(&self) {
        if let Some(ack) = &self.ack {
            let _ = ack.lock().unwrap_or_else(|p| p.into_inner()).send(());
        }
    }

    /// Prints one event. With a line editor, the prompt and the half-typed
    /// line are cleared, the event written, and both drawn again below it.
    pub fn print(&self, out: &Output) {
        let Some(mut text) = self.render(out) else {
            return;
        };
        text.push('\n');
        if let Some(screen) = &self.screen {
            let mut screen = lock(screen);
            let mut buf = String::new();
            if screen.editing {
                let (cursor_row, _) = position(
                    &screen.shown_prompt,
                    &screen.line[..screen.pos],
                    screen.cols,
                );
                buf.push('\r');
                if cursor_row > 0 {
                    buf.push_str(&format!("\x1b[{cursor_row}A"));
                }
                buf.push_str("\x1b[J");
                buf.push_str(&text);
                redraw(
                    &mut buf,
                    &screen.shown_prompt,
                    &screen.line,
                    screen.pos,
                    screen.cols,
                );
            } else {
                buf = text;
            }
            if let Some(file) = screen.out.as_mut() {
                if let Err(err) = file.write_all(buf.as_bytes()).and_then(|()| file.flush()) {
                    tracing::debug!(cause = %err, "could not write to the terminal");
                }
                return;
            }
            text = buf;
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

/// Where the cursor stands (row, column from the prompt's first row) after
/// `prompt` then `text`, wrapping at `cols` as rustyline does.
fn position(prompt: &str, text: &str, cols: usize) -> (usize, usize) {
    let cols = cols.max(1);
    let (mut row, mut col) = (0, 0);
    for c in prompt.chars().chain(text.chars()) {
        if c == '\n' {
            row += 1;
            col = 0;
            continue;
        }
        // The width rustyline itself counts with (unicode-width).
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        col += w;
        if col > cols {
            row += 1;
            col = w;
        }
    }
    if col == cols {
        row += 1;
        col = 0;
    }
    (row, col)
}

/// Appends the prompt and line to `buf`, the cursor left at byte `pos` of
/// the line, as rustyline would draw them.
fn redraw(buf: &mut String, prompt: &str, line: &str, pos: usize, cols: usize) {
    buf.push_str(prompt);
    buf.push_str(line);
    let end = position(prompt, line, cols);
    let cursor = position(prompt, &line[..pos.min(line.len())], cols);
    if end.1 == 0 && end.0 > 0 && !line.ends_with('\n') {
        buf.push('\n');
    }
    if end.0 > cursor.0 {
        buf.push_str(&format!("\x1b[{}A", end.0 - cursor.0));
    }
    if cursor != end {
        buf.push('\r');
        if cursor.1 > 0 {
            buf.push_str(&format!("\x1b[{}C", cursor.1));
        }
    }
}

/// The editor's helper: it follows the line being typed (for the printer's
/// redraw) and completes commands, nicks and rooms.
struct Follow {
    screen: SharedScreen,
}

impl Follow {
    fn seen(&self, line: &str, pos: usize) {
        let mut screen = lock(&self.screen);
        if screen.line != line || screen.pos != pos {
            screen.line = line.to_owned();
            screen.pos = pos;
        }
    }
}

impl Hinter for Follow {
    type Hint = String;
    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<String> {
        self.seen(line, pos);
        None
    }
}

impl Highlighter for Follow {
    fn highlight_char(&self, line: &str, pos: usize, _kind: CmdKind) -> bool {
        self.seen(line, pos);
        false
    }
    fn highlight<'l>(&self, line: &'l str, pos: usize) -> Cow<'l, str> {
        self.seen(line, pos);
        Cow::Borrowed(line)
    }
}

impl Validator for Follow {}

impl Completer for Follow {
    type Candidate = String;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let names = lock(&self.screen).names.clone();
        Ok(complete(line, pos, &names))
    }
}

impl Helper for Follow {}

/// What Tab offers at byte `pos` of `line`: the word's start and the
/// candidates. The first word of a line starting with `/` is a command;
/// any other word is a nick or room name (`names`), case ignored.
pub fn complete(line: &str, pos: usize, names: &[String]) -> (usize, Vec<String>) {
    let pos = pos.min(line.len());
    let start = line[..pos]
        .rfind(char::is_whitespace)
        .map(|i| i + line[i..].chars().next().map_or(1, char::len_utf8))
        .unwrap_or(0);
    let word = &line[start..pos];
    let matches = |c: &str| c.len() >= word.len() && c[..word.len()].eq_ignore_ascii_case(word);
    let mut out: Vec<String> = if start == 0 && word.starts_with('/') {
        COMMANDS
            .iter()
            .filter(|c| matches(c))
            .map(|c| format!("{c} "))
            .collect()
    } else {
        let bare = word.strip_prefix('@').unwrap_or(word);
        let at = if word.starts_with('@') { "@" } else { "" };
        names
            .iter()
            .filter(|n| {
                let n = n.as_str();
                // `@` names a person: never `@#rust`.
                !(at == "@" && n.starts_with('#'))
                    && n.len() >= bare.len()
                    && n.is_char_boundary(bare.len())
                    && n[..bare.len()].eq_ignore_ascii_case(bare)
            })
            .map(|n| {
                // A nick first on a line is addressed, IRC style.
                let tail = if start == 0 && !n.starts_with('#') && at.is_empty() {
                    ": "
                } else {
                    " "
                };
                format!("{at}{n}{tail}")
            })
            .collect()
    };
    if word.is_empty() && start == 0 {
        out.clear();
    }
    out.sort();
    out.dedup();
    (start, out)
}

/// Starts reading input on its own thread. Returns the lines as they come
/// (the channel closes at end of input, Ctrl-D or Ctrl-C) and the printer to
/// use for all output.
///
/// With a terminal on stdin and `json` off, lines are read with a rustyline
/// editor (history, editing keys, Tab) and printing goes around it;
/// otherwise stdin is read line by line, as a script would write it.
pub fn spawn_input(json: bool) -> (mpsc::Receiver<String>, Printer) {
    let (tx, rx) = mpsc::channel(INPUT_BUFFER);
    if !json && std::io::stdin().is_terminal() {
        let config = rustyline::Config::builder()
            .completion_type(rustyline::CompletionType::List)
            .build();
        match Editor::<Follow, DefaultHistory>::with_config(config) {
            Ok(mut editor) => {
                // Our own handle on the terminal: one write per event, so
                // the editor's writes never land in the middle of one.
                let out = if std::io::stdout().is_terminal() {
                    std::io::stdout()
                        .as_fd()
                        .try_clone_to_owned()
                        .ok()
                        .map(File::from)
                } else {
                    None
                };
                let cols = editor.dimensions().map_or(80, |(c, _)| usize::from(c));
                let screen = Arc::new(Mutex::new(Screen {
                    editing: false,
                    shown_prompt: String::new(),
                    prompt: DEFAULT_PROMPT.to_owned(),
                    line: String::new(),
                    pos: 0,
                    cols,
                    names: Vec::new(),
                    out,
                }));
                editor.set_helper(Some(Follow {
                    screen: screen.clone(),
                }));
                let (ack_tx, ack_rx) = std_mpsc::channel();
                let thread_screen = screen.clone();
                if spawn_thread("parley-editor", move || {
                    edit_loop(editor, thread_screen, ack_rx, tx)
                }) {
                    let printer = Printer {
                        screen: Some(screen),
                        ack: Some(Arc::new(Mutex::new(ack_tx))),
                        ..Printer::stdout(json)
                    };
                    return (rx, printer);
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

fn edit_loop(
    mut editor: Editor<Follow, DefaultHistory>,
    screen: SharedScreen,
    acks: std_mpsc::Receiver<()>,
    tx: mpsc::Sender<String>,
) {
    // The first prompt waits for the client to be ready (rooms given with
    // `--join` joined), so it names the current conversation.
    let _ = acks.recv_timeout(ACK_WAIT);
    // A half-typed line that Ctrl-C would have dropped, offered again.
    let mut kept: Option<(String, usize)> = None;
    loop {
        let cols = editor.dimensions().map(|(c, _)| usize::from(c));
        let prompt = {
            let mut s = lock(&screen);
            s.editing = true;
            s.shown_prompt = s.prompt.clone();
            s.line.clear();
            s.pos = 0;
            if let Some(cols) = cols {
                s.cols = cols;
            }
            s.shown_prompt.clone()
        };
        let asked = kept.is_some();
        let read = match kept.take() {
            Some((line, pos)) => {
                let (left, right) = line.split_at(pos);
                editor.readline_with_initial(&prompt, (left, right))
            }
            None => editor.readline(&prompt),
        };
        // The accepted line stays on the screen as typed; from here until
        // the next prompt, events print plainly.
        let half = {
            let mut s = lock(&screen);
            s.editing = false;
            (std::mem::take(&mut s.line), s.pos)
        };
        match read {
            Ok(line) => {
                if !line.trim().is_empty() {
                    if let Err(err) = editor.add_history_entry(line.as_str()) {
                        tracing::debug!(cause = %err, "could not add to history");
                    }
                }
                // After `/quit` no prompt is drawn again: it would stay on
                // the screen after the peer is gone.
                let quit = matches!(parse(&line), Ok(Some(Command::Quit(_))));
                while acks.try_recv().is_ok() {}
                if tx.blocking_send(line).is_err() || quit {
                    return; // the peer stopped listening, or is stopping
                }
                // The next prompt says what this line changed (`/join`
                // names the room); a slow command only delays it.
                let _ = acks.recv_timeout(ACK_WAIT);
            }
            // Ctrl-C on a half-typed line asks first: the line comes back,
            // and a second Ctrl-C quits.
            Err(ReadlineError::Interrupted) if !asked && !half.0.trim().is_empty() => {
                let pos = if half.0.is_char_boundary(half.1) {
                    half.1
                } else {
                    half.0.len()
                };
                // rustyline has ended the line already.
                write_plain(&screen, &format!("{CTRL_C_AGAIN}\n"));
                kept = Some((half.0, pos));
            }
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => return,
            Err(err) => {
                tracing::debug!(cause = %err, "line editor failed; ending input");
                return;
            }
        }
    }
}

/// What Ctrl-C on a half-typed line says before it would drop it.
pub const CTRL_C_AGAIN: &str = "-- Ctrl-C again quits; Enter sends the line, Ctrl-U clears it";

/// Writes `text` to the terminal while no line is being edited.
fn write_plain(screen: &SharedScreen, text: &str) {
    let mut screen = lock(screen);
    let result = match screen.out.as_mut() {
        Some(file) => file.write_all(text.as_bytes()).and_then(|()| file.flush()),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
        }
    };
    if let Err(err) = result {
        tracing::debug!(cause = %err, "could not write to the terminal");
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
    fn tab_completes_commands_nicks_and_rooms() {
        let names: Vec<String> = ["#rust", "#go", "bob", "Bella"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(complete("/jo", 3, &names), (0, vec!["/join ".to_owned()]));
        assert_eq!(
            complete("/w", 2, &names).1,
            ["/wc ", "/who ", "/whois ", "/window "]
        );
        assert_eq!(
            complete("/join #r", 8, &names),
            (6, vec!["#rust ".to_owned()])
        );
        assert_eq!(complete("b", 1, &names).1, ["Bella: ", "bob: "]);
        assert_eq!(complete("hi bo", 5, &names), (3, vec!["bob ".to_owned()]));
        assert_eq!(complete("/msg @bo", 8, &names).1, ["@bob "]);
        // `@` names a person: rooms are not offered after it.
        assert_eq!(complete("/switch @", 9, &names).1, ["@Bella ", "@bob "]);
        assert!(complete("", 0, &names).1.is_empty());
    }

    #[test]
    fn redraw_puts_the_cursor_back_where_it_was() {
        // One row, cursor at the end: nothing to move.
        let mut buf = String::new();
        redraw(&mut buf, "[#r] ", "hello", 5, 80);
        assert_eq!(buf, "[#r] hello");
        // Cursor two characters back.
        let mut buf = String::new();
        redraw(&mut buf, "> ", "hello", 3, 80);
        assert_eq!(buf, "> hello\r\x1b[5C");
        // Wrapped over two rows of 10, cursor on the first.
        let mut buf = String::new();
        redraw(&mut buf, "> ", "abcdefghijkl", 2, 10);
        assert_eq!(buf, "> abcdefghijkl\x1b[1A\r\x1b[4C");
        assert_eq!(position("> ", "abcdefgh", 10), (1, 0));
        assert_eq!(position("> ", "日本", 10), (0, 6));
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
