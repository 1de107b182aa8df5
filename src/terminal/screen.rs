//! The full-screen terminal, in the manner of irssi: a window per
//! conversation with its own scrollback, a title line with the room's
//! topic, a status bar (time, nick, window, activity), a nick list beside a
//! room, and an input line with history and Tab.
//!
//! [`Screen`] is the state and the drawing, with no terminal of its own
//! (tests draw it on ratatui's `TestBackend`); [`Tui`] puts it on the real
//! terminal (raw mode, the alternate screen) and gives it back on drop.

use std::collections::{HashMap, VecDeque};
use std::io::{Stdout, Write};

use chrono::Local;
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::{Frame, Terminal};
use unicode_width::UnicodeWidthChar;

use super::io::complete;
use super::output::{clean, clock, nick_colour, MessageView, Output};

/// Lines a window keeps; older ones are dropped (the history keeps them).
const SCROLLBACK: usize = 5_000;
/// Lines the input history keeps.
const INPUT_HISTORY: usize = 500;
/// The nick list is shown only when the screen is at least this wide.
const NICKLIST_MIN_COLS: u16 = 50;

/// One window's scrollback.
#[derive(Default)]
struct Buffer {
    lines: VecDeque<Line<'static>>,
    /// Rows scrolled back from the bottom (0: following new lines).
    scroll: usize,
}

/// What a key did, for the client to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// Nothing beyond the screen itself (editing, scrolling).
    None,
    /// Enter: the line typed.
    Line(String),
    /// Alt-N: go to window N (from 1).
    Window(usize),
    /// Ctrl-C once: the line is kept; say what a second one does.
    Interrupt,
    /// Ctrl-C twice in a row.
    Quit,
}

/// What the status bar shows besides the windows: `[time] [nick]
/// [N:name] [Act: ...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub nick: String,
    /// The current window's number and name (`1:(status)`, `2:#rust`).
    pub number: usize,
    pub name: String,
    /// Windows with unread lines: number, and whether one names the reader.
    pub activity: Vec<(usize, bool)>,
    /// The current room's topic, for the title line.
    pub topic: String,
    /// The current room's members, when it is a room (the nick list).
    pub members: Option<Vec<String>>,
    /// What the input line is prefixed with: `[#rust]`.
    pub prompt: String,
}

/// The input line: text, cursor, history.
#[derive(Default)]
struct Input {
    text: Vec<char>,
    cursor: usize,
    history: Vec<String>,
    /// Where Up/Down is in the history; `None` when editing a new line.
    browsing: Option<usize>,
    /// The new line put aside while browsing.
    draft: Vec<char>,
}

impl Input {
    fn string(&self) -> String {
        self.text.iter().collect()
    }

    fn set(&mut self, s: &str) {
        self.text = s.chars().collect();
        self.cursor = self.text.len();
    }

    fn take(&mut self) -> String {
        let line = self.string();
        if !line.trim().is_empty() && self.history.last() != Some(&line) {
            self.history.push(line.clone());
            if self.history.len() > INPUT_HISTORY {
                self.history.remove(0);
            }
        }
        self.text.clear();
        self.cursor = 0;
        self.browsing = None;
        line
    }

    fn insert(&mut self, c: char) {
        self.text.insert(self.cursor, c);
        self.cursor += 1;
    }

    fn up(&mut self) {
        let at = match self.browsing {
            None if self.history.is_empty() => return,
            None => {
                self.draft = std::mem::take(&mut self.text);
                self.history.len() - 1
            }
            Some(0) => return,
            Some(i) => i - 1,
        };
        self.browsing = Some(at);
        let line = self.history[at].clone();
        self.set(&line);
    }

    fn down(&mut self) {
        let Some(i) = self.browsing else { return };
        if i + 1 < self.history.len() {
            self.browsing = Some(i + 1);
            let line = self.history[i + 1].clone();
            self.set(&line);
        } else {
            self.browsing = None;
            self.text = std::mem::take(&mut self.draft);
            self.cursor = self.text.len();
        }
    }

    /// Deletes the word before the cursor (Ctrl-W).
    fn delete_word(&mut self) {
        let mut start = self.cursor;
        while start > 0 && self.text[start - 1].is_whitespace() {
            start -= 1;
        }
        while start > 0 && !self.text[start - 1].is_whitespace() {
            start -= 1;
        }
        self.text.drain(start..self.cursor);
        self.cursor = start;
    }

    /// Tab: completes the word before the cursor from `names` (and the
    /// commands); several candidates extend it to what they share.
    fn complete(&mut self, names: &[String]) -> Vec<String> {
        let line = self.string();
        let pos: usize = self.text[..self.cursor].iter().map(|c| c.len_utf8()).sum();
        let (start, candidates) = complete(&line, pos, names);
        let Some(first) = candidates.first() else {
            return candidates;
        };
        let shared = if candidates.len() == 1 {
            first.clone()
        } else {
            let mut shared = first.trim_end().to_owned();
            for c in &candidates[1..] {
                while !c.to_lowercase().starts_with(&shared.to_lowercase()) {
                    shared.pop();
                }
            }
            shared
        };
        let word_chars = line[start..pos].chars().count();
        if shared.chars().count() >= word_chars {
            let head: String = line[..start].to_owned();
            let tail: String = line[pos..].to_owned();
            let text = format!("{head}{shared}{tail}");
            self.text = text.chars().collect();
            self.cursor = head.chars().count() + shared.chars().count();
        }
        if candidates.len() > 1 {
            candidates
        } else {
            Vec::new()
        }
    }
}

/// Everything on the screen but the terminal.
pub struct Screen {
    colour: bool,
    /// Window key (`""` for the status window, `#rust`, `@bob`) → lines.
    buffers: HashMap<String, Buffer>,
    input: Input,
    /// Whether the nick list shows beside a room.
    pub nicklist: bool,
    /// The last Ctrl-C was the key before this one.
    interrupted: bool,
    /// Columns of the text area at the last draw: how many rows a new line
    /// takes, to keep a scrolled-back view still.
    text_cols: u16,
    /// Text area rows at the last draw: a page.
    text_rows: u16,
}

impl Screen {
    pub fn new(colour: bool) -> Screen {
        Screen {
            colour,
            buffers: HashMap::new(),
            input: Input::default(),
            nicklist: true,
            interrupted: false,
            text_cols: 80,
            text_rows: 20,
        }
    }

    /// Adds `out` to the window `key`.
    pub fn show(&mut self, key: &str, out: &Output) {
        let lines = self.lines_of(out);
        self.push(key, lines);
    }

    /// Adds a marker line to the window `key`: `--- TEXT ---` across it.
    pub fn marker(&mut self, key: &str, text: &str) {
        let style = self.style(Style::default().fg(Color::Yellow), Modifier::BOLD);
        let line = Line::from(Span::styled(format!("─── {text} ───"), style));
        self.push(key, vec![line]);
    }

    fn push(&mut self, key: &str, lines: Vec<Line<'static>>) {
        if lines.is_empty() {
            return;
        }
        let cols = usize::from(self.text_cols.max(1));
        let buffer = self.buffers.entry(key.to_owned()).or_default();
        for line in lines {
            if buffer.scroll > 0 {
                // Scrolled back: the view stays where it was.
                buffer.scroll += wrap(&line, cols).len();
            }
            buffer.lines.push_back(line);
        }
        while buffer.lines.len() > SCROLLBACK {
            buffer.lines.pop_front();
        }
    }

    /// A window's lines move to another key (a nick changed).
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(b) = self.buffers.remove(from) {
            self.buffers.insert(to.to_owned(), b);
        }
    }

    /// Forgets a closed window's lines.
    pub fn forget(&mut self, key: &str) {
        self.buffers.remove(key);
    }

    /// Whether the window `key` has been scrolled back.
    pub fn scrolled(&self, key: &str) -> bool {
        self.buffers.get(key).is_some_and(|b| b.scroll > 0)
    }

    /// Handles a key for the window `key`, with `names` for Tab. Returns
    /// what the client must do, and any completion candidates to show.
    pub fn key(&mut self, key: &str, ev: KeyEvent, names: &[String]) -> (KeyAction, Vec<String>) {
        if ev.kind == KeyEventKind::Release {
            return (KeyAction::None, Vec::new());
        }
        let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
        let alt = ev.modifiers.contains(KeyModifiers::ALT);
        let was_interrupted = std::mem::take(&mut self.interrupted);
        let page = usize::from(self.text_rows.saturating_sub(1).max(1));
        let input = &mut self.input;
        match ev.code {
            KeyCode::Char('c') if ctrl => {
                if was_interrupted {
                    return (KeyAction::Quit, Vec::new());
                }
                self.interrupted = true;
                return (KeyAction::Interrupt, Vec::new());
            }
            KeyCode::Char(d @ '1'..='9') if alt => {
                return (KeyAction::Window(d as usize - '0' as usize), Vec::new())
            }
            KeyCode::Char('0') if alt => return (KeyAction::Window(10), Vec::new()),
            KeyCode::Enter => return (KeyAction::Line(input.take()), Vec::new()),
            KeyCode::Tab => {
                let shown = input.complete(names);
                return (KeyAction::None, shown);
            }
            KeyCode::Char('u') if ctrl => {
                input.text.drain(..input.cursor);
                input.cursor = 0;
            }
            KeyCode::Char('k') if ctrl => input.text.truncate(input.cursor),
            KeyCode::Char('w') if ctrl => input.delete_word(),
            KeyCode::Char('a') if ctrl => input.cursor = 0,
            KeyCode::Char('e') if ctrl => input.cursor = input.text.len(),
            KeyCode::Char(c) if !ctrl && !alt => input.insert(c),
            KeyCode::Backspace if input.cursor > 0 => {
                input.cursor -= 1;
                input.text.remove(input.cursor);
            }
            KeyCode::Delete if input.cursor < input.text.len() => {
                input.text.remove(input.cursor);
            }
            KeyCode::Left => input.cursor = input.cursor.saturating_sub(1),
            KeyCode::Right => input.cursor = (input.cursor + 1).min(input.text.len()),
            KeyCode::Home => input.cursor = 0,
            KeyCode::End => input.cursor = input.text.len(),
            KeyCode::Up => input.up(),
            KeyCode::Down => input.down(),
            KeyCode::PageUp => {
                let b = self.buffers.entry(key.to_owned()).or_default();
                // Clamped to the top at the next draw.
                b.scroll += page;
            }
            KeyCode::PageDown => {
                let b = self.buffers.entry(key.to_owned()).or_default();
                b.scroll = b.scroll.saturating_sub(page);
            }
            _ => {}
        }
        (KeyAction::None, Vec::new())
    }

    /// Handles a pasted text: typed, with line breaks as spaces.
    pub fn paste(&mut self, text: &str) {
        for c in text.chars() {
            self.input
                .insert(if c == '\n' || c == '\r' { ' ' } else { c });
        }
    }

    /// The lines `out` shows as in a window. A message leaves out its
    /// conversation (the window is it); other events read as in line mode.
    fn lines_of(&self, out: &Output) -> Vec<Line<'static>> {
        match out {
            Output::Message(m) => self.message_lines(m),
            other => {
                let text = other.to_human();
                let style = match other {
                    Output::Error { .. } | Output::Warning { .. } => {
                        self.style(Style::default().fg(Color::Red), Modifier::BOLD)
                    }
                    _ => self.style(Style::default().fg(Color::Cyan), Modifier::empty()),
                };
                text.lines()
                    .map(|l| Line::from(Span::styled(l.to_owned(), style)))
                    .collect()
            }
        }
    }

    fn message_lines(&self, m: &MessageView) -> Vec<Line<'static>> {
        let at = Span::raw(format!("{} ", clock(m.sent_at_ms)));
        let nick_style = self.style(
            Style::default().fg(sgr_colour(nick_colour(&m.from))),
            Modifier::empty(),
        );
        let from = Span::styled(clean(&m.from), nick_style);
        let event = self.style(Style::default().fg(Color::Cyan), Modifier::empty());
        match m.kind.as_deref() {
            Some("created") => {
                return vec![Line::from(vec![
                    at,
                    Span::styled("-- ", event),
                    from,
                    Span::styled(format!(" created {}", clean(&m.body)), event),
                ])]
            }
            Some("topic") => {
                return vec![Line::from(vec![
                    at,
                    Span::styled("-- ", event),
                    from,
                    Span::styled(
                        format!(
                            " changed the topic to: {}",
                            clean(&m.body).replace('\n', " ")
                        ),
                        event,
                    ),
                ])]
            }
            Some("nick") => {
                return vec![Line::from(vec![
                    at,
                    Span::styled(
                        format!("-- {} is now known as ", clean(&m.body).replace('\n', " ")),
                        event,
                    ),
                    from,
                ])]
            }
            _ => {}
        }
        let late = if m.late { "[late] " } else { "" };
        let (mut head, text) = match super::command::action_text(&m.body) {
            Some(action) => (
                vec![at, Span::raw(format!("{late}* ")), from, Span::raw(" ")],
                action,
            ),
            None => (
                vec![at, Span::raw("<"), from, Span::raw(format!("> {late}"))],
                m.body.as_str(),
            ),
        };
        let indent: usize = head.iter().map(|s| s.width()).sum();
        let body_style = if m.mention {
            self.style(Style::default().fg(Color::Yellow), Modifier::BOLD)
        } else {
            Style::default()
        };
        let mut lines = Vec::new();
        for (i, l) in clean(text).split('\n').enumerate() {
            let body = Span::styled(l.to_owned(), body_style);
            if i == 0 {
                head.push(body);
                lines.push(Line::from(std::mem::take(&mut head)));
            } else {
                lines.push(Line::from(vec![Span::raw(" ".repeat(indent)), body]));
            }
        }
        lines
    }

    /// `style` in colour; without colour, only `fallback`'s attributes
    /// (bold, reverse), which NO_COLOR allows.
    fn style(&self, style: Style, fallback: Modifier) -> Style {
        if self.colour {
            style.add_modifier(fallback)
        } else {
            Style::default().add_modifier(fallback)
        }
    }

    /// Draws everything: the window `key` with `status`.
    pub fn draw(&mut self, frame: &mut Frame<'_>, key: &str, status: &Status) {
        let area = frame.area();
        let [title, main, bar, input] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(1),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(area);
        let bar_style = if self.colour {
            Style::default().bg(Color::Blue).fg(Color::White)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        };
        let title_text = if status.topic.is_empty() {
            format!(" parley — {}", status.name)
        } else {
            format!(
                " {}: {}",
                status.name,
                clean(&status.topic).replace('\n', " ")
            )
        };
        frame.render_widget(
            Paragraph::new(Line::from(title_text)).style(bar_style),
            title,
        );
        let (text_area, list_area) = match &status.members {
            Some(_) if self.nicklist && main.width >= NICKLIST_MIN_COLS => {
                let width = status
                    .members
                    .iter()
                    .flatten()
                    .map(|n| n.chars().count() as u16 + 2)
                    .max()
                    .unwrap_or(8)
                    .clamp(8, 18);
                let [t, l] = Layout::horizontal([Constraint::Min(10), Constraint::Length(width)])
                    .areas(main);
                (t, Some(l))
            }
            _ => (main, None),
        };
        self.draw_text(frame, key, text_area);
        if let (Some(area), Some(members)) = (list_area, &status.members) {
            self.draw_nicklist(frame, area, members);
        }
        frame.render_widget(
            Paragraph::new(self.status_line(key, status)).style(bar_style),
            bar,
        );
        self.draw_input(frame, input, &status.prompt);
    }

    fn draw_text(&mut self, frame: &mut Frame<'_>, key: &str, area: Rect) {
        self.text_cols = area.width;
        self.text_rows = area.height;
        let rows_wanted = usize::from(area.height);
        let cols = usize::from(area.width.max(1));
        let Some(buffer) = self.buffers.get_mut(key) else {
            return;
        };
        // Wrap from the newest line back, only as far as the view needs.
        let mut rows: VecDeque<Line<'static>> = VecDeque::new();
        let need = rows_wanted + buffer.scroll;
        for line in buffer.lines.iter().rev() {
            for row in wrap(line, cols).into_iter().rev() {
                rows.push_front(row);
            }
            if rows.len() >= need {
                break;
            }
        }
        // Never past the top.
        let max_scroll = rows.len().saturating_sub(rows_wanted);
        buffer.scroll = buffer.scroll.min(max_scroll);
        let end = rows.len() - buffer.scroll;
        let start = end.saturating_sub(rows_wanted);
        let shown: Vec<Line<'static>> = rows.range(start..end).cloned().collect();
        // Lines sit at the bottom, as in irssi, when there are few.
        let pad = rows_wanted.saturating_sub(shown.len());
        let area = Rect {
            y: area.y + pad as u16,
            height: area.height - pad as u16,
            ..area
        };
        frame.render_widget(Paragraph::new(shown), area);
    }

    fn draw_nicklist(&self, frame: &mut Frame<'_>, area: Rect, members: &[String]) {
        let mut sorted = members.to_vec();
        sorted.sort_by_key(|n| n.to_ascii_lowercase());
        let mut lines: Vec<Line<'static>> = sorted
            .iter()
            .take(usize::from(area.height))
            .map(|n| {
                let style = self.style(
                    Style::default().fg(sgr_colour(nick_colour(n))),
                    Modifier::empty(),
                );
                Line::from(vec![Span::raw("│"), Span::styled(clean(n), style)])
            })
            .collect();
        while lines.len() < usize::from(area.height) {
            lines.push(Line::from("│"));
        }
        frame.render_widget(Paragraph::new(lines), area);
    }

    fn status_line(&self, key: &str, status: &Status) -> Line<'static> {
        let now = Local::now().format("%H:%M").to_string();
        let mut spans = vec![Span::raw(format!(
            " [{now}] [{}] [{}:{}]",
            status.nick, status.number, status.name
        ))];
        if !status.activity.is_empty() {
            spans.push(Span::raw(" [Act: "));
            for (i, (n, mention)) in status.activity.iter().enumerate() {
                if i > 0 {
                    spans.push(Span::raw(","));
                }
                // A window whose lines name the reader: marked, and bold.
                if *mention {
                    spans.push(Span::styled(
                        format!("{n}!"),
                        self.style(Style::default().fg(Color::Magenta), Modifier::BOLD),
                    ));
                } else {
                    spans.push(Span::raw(n.to_string()));
                }
            }
            spans.push(Span::raw("]"));
        }
        if self.scrolled(key) {
            spans.push(Span::raw(" -- more --"));
        }
        Line::from(spans)
    }

    fn draw_input(&self, frame: &mut Frame<'_>, area: Rect, prompt: &str) {
        let prompt = format!("{prompt} ");
        let prompt_cols: usize = prompt.chars().filter_map(|c| c.width()).sum();
        let width = usize::from(area.width);
        let room = width.saturating_sub(prompt_cols + 1).max(1);
        // Scrolled sideways so the cursor is always in view.
        let widths: Vec<usize> = self
            .input
            .text
            .iter()
            .map(|c| c.width().unwrap_or(0))
            .collect();
        let mut first = 0;
        while widths[first..self.input.cursor].iter().sum::<usize>() >= room {
            first += 1;
        }
        let mut shown = String::new();
        let mut used = 0;
        for (c, w) in self.input.text[first..].iter().zip(&widths[first..]) {
            if used + w > room {
                break;
            }
            shown.push(*c);
            used += w;
        }
        let cursor_col = prompt_cols + widths[first..self.input.cursor].iter().sum::<usize>();
        frame.render_widget(Paragraph::new(Line::from(prompt + &shown)), area);
        frame.set_cursor_position((
            area.x + (cursor_col.min(width.saturating_sub(1)) as u16),
            area.y,
        ));
    }
}

/// Splits `line` into rows of at most `cols` columns, keeping its styles.
fn wrap(line: &Line<'static>, cols: usize) -> Vec<Line<'static>> {
    let mut rows = Vec::new();
    let mut row: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for span in &line.spans {
        let mut piece = String::new();
        for c in span.content.chars() {
            let w = c.width().unwrap_or(0);
            if used + w > cols && used > 0 {
                if !piece.is_empty() {
                    row.push(Span::styled(std::mem::take(&mut piece), span.style));
                }
                rows.push(Line::from(std::mem::take(&mut row)));
                used = 0;
            }
            piece.push(c);
            used += w;
        }
        if !piece.is_empty() {
            row.push(Span::styled(piece, span.style));
        }
    }
    rows.push(Line::from(row));
    rows
}

/// ratatui's colour for one of the SGR codes [`nick_colour`] gives.
fn sgr_colour(code: u8) -> Color {
    match code {
        31 => Color::Red,
        32 => Color::Green,
        33 => Color::Yellow,
        34 => Color::Blue,
        35 => Color::Magenta,
        36 => Color::Cyan,
        91 => Color::LightRed,
        92 => Color::LightGreen,
        93 => Color::LightYellow,
        94 => Color::LightBlue,
        95 => Color::LightMagenta,
        _ => Color::LightCyan,
    }
}

/// The screen on the real terminal: raw mode and the alternate screen
/// while it lives, the terminal as it was after (also on a panic).
pub struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    pub screen: Screen,
}

impl Tui {
    /// Takes over the terminal. Fails (and leaves it as it was) when it is
    /// no terminal raw mode works on.
    pub fn start(colour: bool) -> std::io::Result<Tui> {
        crossterm::terminal::enable_raw_mode()?;
        let mut out = std::io::stdout();
        if let Err(err) = crossterm::execute!(
            out,
            crossterm::terminal::EnterAlternateScreen,
            crossterm::event::EnableBracketedPaste
        ) {
            let _ = crossterm::terminal::disable_raw_mode();
            return Err(err);
        }
        // A panic must not leave a raw, alternate screen behind: the
        // message would be unreadable.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        let terminal = match Terminal::new(CrosstermBackend::new(out)) {
            Ok(t) => t,
            Err(err) => {
                restore();
                return Err(err);
            }
        };
        Ok(Tui {
            terminal,
            screen: Screen::new(colour),
        })
    }

    /// Draws the window `key` with `status`.
    pub fn draw(&mut self, key: &str, status: &Status) {
        let screen = &mut self.screen;
        if let Err(err) = self.terminal.draw(|f| screen.draw(f, key, status)) {
            tracing::warn!(cause = %err, "cannot draw the screen");
        }
    }

    /// A resize, or Ctrl-L: everything drawn again from nothing.
    pub fn redraw_all(&mut self) {
        let _ = self.terminal.clear();
    }

    /// Rings the bell and sets the terminal's title: a mention, or a new
    /// private line.
    pub fn alert(&mut self, title: &str) {
        let backend = self.terminal.backend_mut();
        let _ = crossterm::execute!(backend, crossterm::terminal::SetTitle(clean(title)));
        let _ = backend.write_all(b"\x07");
        let _ = Backend::flush(backend);
    }

    /// Sets the title back to plain `title`.
    pub fn title(&mut self, title: &str) {
        let backend = self.terminal.backend_mut();
        let _ = crossterm::execute!(backend, crossterm::terminal::SetTitle(clean(title)));
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        restore();
        let _ = self.terminal.show_cursor();
    }
}

/// Gives the terminal back: the normal screen, cooked mode.
fn restore() {
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::event::DisableBracketedPaste,
        crossterm::terminal::LeaveAlternateScreen
    );
    let _ = crossterm::terminal::disable_raw_mode();
}

/// Whether `ev` asks for the screen to be drawn again from nothing.
pub fn is_redraw(ev: &Event) -> bool {
    match ev {
        Event::Resize(..) => true,
        Event::Key(k) => {
            k.code == KeyCode::Char('l') && k.modifiers.contains(KeyModifiers::CONTROL)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    fn text(screen: &mut Screen, key: &str, status: &Status, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| screen.draw(f, key, status)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect()
    }

    fn info(s: &str) -> Output {
        Output::info(s)
    }

    fn press(screen: &mut Screen, code: KeyCode) -> KeyAction {
        screen
            .key("", KeyEvent::new(code, KeyModifiers::NONE), &[])
            .0
    }

    #[test]
    fn lines_wrap_scroll_back_and_stay_put_while_scrolled() {
        let mut s = Screen::new(false);
        let status = Status {
            nick: "alice".into(),
            number: 2,
            name: "#rust".into(),
            prompt: "[#rust]".into(),
            ..Status::default()
        };
        for i in 0..30 {
            s.show("#rust", &info(&format!("line {i}")));
        }
        let rows = text(&mut s, "#rust", &status, 40, 10);
        // 10 rows: title, 7 of text, status, input.
        assert!(rows[7].starts_with("-- line 29"), "{rows:#?}");
        assert!(rows[1].starts_with("-- line 23"), "{rows:#?}");
        assert!(rows[8].contains("[alice] [2:#rust]"), "{rows:#?}");
        assert!(!rows[8].contains("more"));
        // PageUp: a page back, marked in the status bar.
        press(&mut s, KeyCode::PageUp);
        s.key(
            "#rust",
            KeyEvent::new(KeyCode::PageUp, KeyModifiers::NONE),
            &[],
        );
        let rows = text(&mut s, "#rust", &status, 40, 10);
        assert!(rows[7].starts_with("-- line 23"), "{rows:#?}");
        assert!(rows[8].contains("-- more --"), "{rows:#?}");
        // A new line does not move what is read.
        s.show("#rust", &info("line 30"));
        let again = text(&mut s, "#rust", &status, 40, 10);
        assert_eq!(again[1..8], rows[1..8]);
        // Past the top: clamped to the first line.
        for _ in 0..10 {
            s.key(
                "#rust",
                KeyEvent::new(KeyCode::PageUp, KeyModifiers::NONE),
                &[],
            );
        }
        let rows = text(&mut s, "#rust", &status, 40, 10);
        assert!(rows[1].starts_with("-- line 0 "), "{rows:#?}");
        for _ in 0..20 {
            s.key(
                "#rust",
                KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE),
                &[],
            );
        }
        let rows = text(&mut s, "#rust", &status, 40, 10);
        assert!(rows[7].starts_with("-- line 30"), "{rows:#?}");
        assert!(!rows[8].contains("more"));
        // A long line wraps at the width, whatever the width.
        s.show("#rust", &info(&"x".repeat(50)));
        let rows = text(&mut s, "#rust", &status, 30, 10);
        assert_eq!(rows[6], format!("-- {}", "x".repeat(27)));
        assert_eq!(rows[7].trim_end(), "x".repeat(23));
    }

    #[test]
    fn the_input_line_edits_keeps_history_and_completes() {
        let mut s = Screen::new(false);
        for c in "hello wrld".chars() {
            press(&mut s, KeyCode::Char(c));
        }
        for _ in 0..3 {
            press(&mut s, KeyCode::Left);
        }
        press(&mut s, KeyCode::Char('o'));
        assert_eq!(
            press(&mut s, KeyCode::Enter),
            KeyAction::Line("hello world".into())
        );
        assert_eq!(
            press(&mut s, KeyCode::Enter),
            KeyAction::Line(String::new())
        );
        press(&mut s, KeyCode::Up);
        assert_eq!(s.input.string(), "hello world");
        press(&mut s, KeyCode::Down);
        assert_eq!(s.input.string(), "");
        // Tab: one candidate completes; a nick first on the line is
        // addressed.
        let names = vec!["bob".to_owned(), "#rust".to_owned()];
        press(&mut s, KeyCode::Char('b'));
        s.key("", KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE), &names);
        assert_eq!(s.input.string(), "bob: ");
        // Ctrl-C keeps the line once; twice quits.
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(s.key("", ctrl_c, &[]).0, KeyAction::Interrupt);
        assert_eq!(s.input.string(), "bob: ");
        assert_eq!(s.key("", ctrl_c, &[]).0, KeyAction::Quit);
        let alt3 = KeyEvent::new(KeyCode::Char('3'), KeyModifiers::ALT);
        assert_eq!(s.key("", alt3, &[]).0, KeyAction::Window(3));
    }

    #[test]
    fn the_status_bar_marks_mentions_and_the_nick_list_hides() {
        let mut s = Screen::new(false);
        let mut status = Status {
            nick: "alice".into(),
            number: 2,
            name: "#rust".into(),
            activity: vec![(3, false), (4, true)],
            topic: "all about lifetimes".into(),
            members: Some(vec!["bob".into(), "alice".into()]),
            prompt: "[#rust]".into(),
        };
        let rows = text(&mut s, "#rust", &status, 60, 8);
        assert!(rows[0].contains("#rust: all about lifetimes"), "{rows:#?}");
        assert!(rows[6].contains("[Act: 3,4!]"), "{rows:#?}");
        // The nick list, sorted, at the right.
        assert!(rows[1].ends_with("│alice  "), "{rows:#?}");
        assert!(rows[2].ends_with("│bob    "), "{rows:#?}");
        s.nicklist = false;
        let rows = text(&mut s, "#rust", &status, 60, 8);
        assert!(!rows[1].contains('│'), "{rows:#?}");
        // A private window has none.
        s.nicklist = true;
        status.members = None;
        let rows = text(&mut s, "@bob", &status, 60, 8);
        assert!(!rows[1].contains('│'), "{rows:#?}");
    }
}
