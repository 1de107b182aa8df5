//! The terminal client: reads commands, drives a [`Peer`], and prints what
//! happens as [`Output`] events. It owns the state a person has that the
//! peer does not: the conversations, the current one, and the rooms'
//! members (for Tab).

use std::collections::{HashMap, HashSet};

use crossterm::event::Event;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::names::{private_key, Conversation, Nick, Room};
use crate::peer::{Peer, PeerEvent, Presence, SendReport};
use crate::proto::{ChatMessage, Kind};
use crate::terminal::screen::{is_redraw, KeyAction, Status, Tui};
use crate::terminal::{
    action_body, mentions, parse, Command, MessageView, Output, Printer, RoomView, Target, Window,
    DEFAULT_PROMPT, HELP,
};

/// The next line of the line front; never, for the screen.
async fn next_line(lines: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match lines {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next terminal event of the screen; never, for the line front.
async fn next_key(
    keys: &mut Option<crossterm::event::EventStream>,
) -> Option<std::io::Result<Event>> {
    use futures::StreamExt;
    match keys {
        Some(k) => k.next().await,
        None => std::future::pending().await,
    }
}

/// Messages `/history` shows when no N is given.
const DEFAULT_HISTORY: usize = 20;

/// Lines `/lastlog` shows at most: the newest that match.
const LASTLOG_SHOWN: usize = 100;

/// Missed messages shown on joining a room; older ones by `/history`.
pub const MISSED_SHOWN: usize = 20;

/// The canonical key of a target: what tells two conversations apart.
fn target_key(t: &Target) -> String {
    match t {
        Target::Room(r) => r.key(),
        Target::Nick(n) => format!("@{}", n.key()),
    }
}

/// How a target is shown: `#rust`, `@bob`.
fn target_name(t: &Target) -> String {
    match t {
        Target::Room(r) => r.to_string(),
        Target::Nick(n) => format!("@{n}"),
    }
}

/// The conversations a person is in (rooms joined, private ones opened or
/// written to), which one is current, and how many messages each has that
/// arrived while it was not: IRC's windows, for a line-mode client.
#[derive(Debug, Default)]
pub struct Windows {
    open: Vec<Target>,
    current: Option<Target>,
    /// Key → messages unread.
    unread: HashMap<String, usize>,
    /// Keys of windows with an unread line that names the reader.
    mentioned: HashSet<String>,
    /// Window 1 is the status window (the full screen's numbering, as
    /// irssi's); conversations count from 2. Without it, from 1.
    status: bool,
}

/// The key of the window a conversation shown as `shown` (`#rust`, `@bob`)
/// is in; `None` for anything else.
pub fn window_key(shown: &str) -> Option<String> {
    shown_target(shown).map(|t| target_key(&t))
}

fn shown_target(shown: &str) -> Option<Target> {
    if let Some(nick) = shown.strip_prefix('@') {
        Nick::parse(nick).ok().map(Target::Nick)
    } else {
        Room::parse(shown).ok().map(Target::Room)
    }
}

impl Windows {
    /// Windows numbered as on the full screen: 1 is the status window.
    pub fn with_status() -> Windows {
        Windows {
            status: true,
            ..Windows::default()
        }
    }

    /// The current window's key: `""` for none (the status window).
    pub fn current_key(&self) -> String {
        self.current.as_ref().map(target_key).unwrap_or_default()
    }

    /// Whether a conversation with this key is open.
    pub fn is_open(&self, key: &str) -> bool {
        self.open.iter().any(|o| target_key(o) == key)
    }

    /// The current window's number and name: `1:(status)`, `2:#rust`.
    pub fn current_number(&self) -> (usize, String) {
        let first = if self.status { 2 } else { 1 };
        match &self.current {
            None => (1, "(status)".into()),
            Some(c) => {
                let key = target_key(c);
                let i = self
                    .open
                    .iter()
                    .position(|o| target_key(o) == key)
                    .unwrap_or(0);
                (i + first, target_name(c))
            }
        }
    }

    /// The status bar's `Act:`: numbers of windows with unread lines, and
    /// whether one of them names the reader.
    pub fn activity(&self) -> Vec<(usize, bool)> {
        let first = if self.status { 2 } else { 1 };
        self.open
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let key = target_key(t);
                self.unread
                    .get(&key)
                    .map(|_| (i + first, self.mentioned.contains(&key)))
            })
            .collect()
    }

    /// The current conversation.
    pub fn current(&self) -> Option<&Target> {
        self.current.as_ref()
    }

    /// Adds `t` to the open conversations (at the end), if it is not there.
    pub fn add(&mut self, t: Target) {
        let key = target_key(&t);
        if !self.open.iter().any(|o| target_key(o) == key) {
            self.open.push(t);
        }
    }

    /// Opens `t` and makes it current; its unread count is cleared.
    pub fn focus(&mut self, t: Target) {
        self.unread.remove(&target_key(&t));
        self.mentioned.remove(&target_key(&t));
        self.add(t.clone());
        self.current = Some(t);
    }

    /// The window `from` becomes `to` (a nick changed), in its place;
    /// false when `from` is not open or `to` is already.
    pub fn rename(&mut self, from: &Target, to: Target) -> bool {
        let (old, new) = (target_key(from), target_key(&to));
        if self.is_open(&new) {
            return false;
        }
        let Some(slot) = self.open.iter_mut().find(|o| target_key(o) == old) else {
            return false;
        };
        *slot = to.clone();
        if let Some(n) = self.unread.remove(&old) {
            self.unread.insert(new.clone(), n);
        }
        if self.mentioned.remove(&old) {
            self.mentioned.insert(new);
        }
        if self.current.as_ref().is_some_and(|c| target_key(c) == old) {
            self.current = Some(to);
        }
        true
    }

    /// `t` is closed (left, deleted): it stops being current.
    pub fn close(&mut self, t: &Target) {
        let key = target_key(t);
        self.open.retain(|o| target_key(o) != key);
        self.unread.remove(&key);
        self.mentioned.remove(&key);
        if self.current.as_ref().is_some_and(|c| target_key(c) == key) {
            self.current = None;
        }
    }

    /// A message arrived in the conversation shown as `shown` (`#rust`,
    /// `@bob`): one more unread unless it is current or `mine`, marked when
    /// it names the reader (`mention`). A private conversation not open yet
    /// is opened; made current when none is, so a reply typed next goes to
    /// its author. Returns whether it opened one.
    pub fn arrived(&mut self, shown: &str, mine: bool, mention: bool) -> bool {
        let Some(t) = shown_target(shown) else {
            return false;
        };
        let key = target_key(&t);
        if self.current.as_ref().is_some_and(|c| target_key(c) == key) {
            return false;
        }
        let mut opened = false;
        if matches!(t, Target::Nick(_)) {
            opened = !self.is_open(&key);
            self.add(t.clone());
            if self.current.is_none() && !mine {
                self.focus(t);
                return opened;
            }
        } else if !self.is_open(&key) {
            return false;
        }
        if !mine {
            *self.unread.entry(key.clone()).or_default() += 1;
            if mention {
                self.mentioned.insert(key);
            }
        }
        opened
    }

    /// `/switch`: makes the named or N-th conversation current; `None`
    /// for the status window.
    pub fn switch(&mut self, to: &Window) -> Result<Option<Target>, String> {
        let t = match to {
            Window::Number(1) if self.status => {
                self.current = None;
                return Ok(None);
            }
            Window::Number(n) => {
                let first = if self.status { 2 } else { 1 };
                n.checked_sub(first)
                    .and_then(|i| self.open.get(i))
                    .cloned()
                    .ok_or_else(|| match self.status {
                        true => format!(
                            "no window {n}: there are {}; /switch lists them",
                            self.open.len() + 1
                        ),
                        false => format!(
                            "no conversation {n}: you are in {}; /switch lists them",
                            self.open.len()
                        ),
                    })?
            }
            Window::Target(t) => {
                let key = target_key(t);
                match self.open.iter().find(|o| target_key(o) == key) {
                    Some(o) => o.clone(),
                    None => {
                        return Err(match t {
                            Target::Room(r) => format!("you are not in {r}: /join {r}"),
                            Target::Nick(n) => {
                                format!("no conversation with @{n}: /query {n} opens one")
                            }
                        })
                    }
                }
            }
        };
        self.focus(t.clone());
        Ok(Some(t))
    }

    /// Unread messages outside the current conversation.
    pub fn unread_total(&self) -> usize {
        self.unread.values().sum()
    }

    /// The prompt: `[#rust] `, `[@bob] (3 unread) `, or `> `.
    pub fn prompt(&self) -> String {
        let unread = match self.unread_total() {
            0 => String::new(),
            n => format!("({n} unread) "),
        };
        match &self.current {
            Some(t) => format!("[{}] {unread}", target_name(t)),
            None if unread.is_empty() => DEFAULT_PROMPT.to_owned(),
            None => format!("{unread}> "),
        }
    }

    /// `/switch` alone: the numbered list.
    pub fn list(&self) -> String {
        if self.open.is_empty() {
            return "no conversations: /join #room or /query NICK".into();
        }
        let first = if self.status { 2 } else { 1 };
        let mut s = String::from("conversations (/switch N or /switch NAME):");
        if self.status {
            s.push_str("\n1 (status)");
            if self.current.is_none() {
                s.push_str(" (current)");
            }
        }
        for (i, t) in self.open.iter().enumerate() {
            let key = target_key(t);
            let mut line = format!("\n{} {}", i + first, target_name(t));
            if self.current.as_ref().is_some_and(|c| target_key(c) == key) {
                line.push_str(" (current)");
            }
            if let Some(n) = self.unread.get(&key) {
                line.push_str(&format!(" ({n} unread)"));
            }
            s.push_str(&line);
        }
        s
    }

    /// Room and nick names open, for Tab.
    fn names(&self) -> Vec<String> {
        self.open
            .iter()
            .map(|t| match t {
                Target::Room(r) => r.to_string(),
                Target::Nick(n) => n.to_string(),
            })
            .collect()
    }
}

/// Turns a stored message into what is shown, from `me`'s side.
pub fn view(me: &Nick, m: &ChatMessage, late: bool) -> MessageView {
    let conversation = Conversation::parse_key(&m.conversation)
        .map(|c| c.display_for(me))
        .unwrap_or_else(|_| m.conversation.clone());
    let kind = Kind::try_from(m.kind);
    let mention = kind == Ok(Kind::Text)
        && !m.author.eq_ignore_ascii_case(me.as_str())
        && mentions(&m.body, me.as_str());
    MessageView {
        conversation,
        from: m.author.clone(),
        body: m.body.clone(),
        author_seq: m.seq,
        lamport: m.lamport,
        sent_at_ms: m.sent_at_ms,
        late,
        kind: match kind {
            Ok(Kind::Text) => None,
            Ok(Kind::Created) => Some("created".into()),
            Ok(Kind::Topic) => Some("topic".into()),
            Ok(Kind::Nick) => Some("nick".into()),
            Err(_) => Some(format!("unknown {}", m.kind)),
        },
        mention,
    }
}

/// A room's topic event as shown; `None` is "no topic".
fn topic_of(room: &Room, event: Option<ChatMessage>) -> Output {
    let (topic, by, set_at_ms) =
        event.map_or_else(Default::default, |m| (m.body, m.author, m.sent_at_ms));
    Output::Topic {
        room: room.to_string(),
        topic,
        by,
        set_at_ms,
    }
}

fn presence(room: String, nick: String, event: &str, message: String) -> Output {
    Output::Presence {
        room,
        nick,
        event: event.into(),
        message,
    }
}

/// Where the client shows things: lines on stdout (`--json`, pipes,
/// `--plain`), or the full screen.
pub enum Front {
    Lines(Printer),
    Screen(Box<Tui>),
}

/// The client's state: the peer, the conversations and the rooms' members.
pub struct Client {
    peer: Peer,
    front: Front,
    windows: Windows,
    /// Room key → its members as last heard, for Tab and the nick list.
    members: HashMap<String, Vec<String>>,
    /// Room key → its topic, for the full screen's title line.
    topics: HashMap<String, String>,
    /// Nick key → the away message last shown for it: a person is told
    /// once, not on every line they write to someone away.
    away_shown: HashMap<String, String>,
    /// Nick keys whose lines are not shown (`/ignore`); they are stored.
    ignored: HashSet<String>,
    /// Tab's candidates, as last told to the line editor or screen.
    names: Vec<String>,
    /// The parting message of the `/quit` that ended the client.
    parting: String,
}

impl Client {
    pub fn new(peer: Peer, front: Front) -> Client {
        let windows = match front {
            Front::Screen(_) => Windows::with_status(),
            Front::Lines(_) => Windows::default(),
        };
        Client {
            peer,
            front,
            windows,
            members: HashMap::new(),
            topics: HashMap::new(),
            away_shown: HashMap::new(),
            ignored: HashSet::new(),
            names: Vec::new(),
            parting: String::new(),
        }
    }

    fn is_json(&self) -> bool {
        matches!(&self.front, Front::Lines(p) if p.is_json())
    }

    /// Shows `out`: a line on stdout, or in its window on the screen (the
    /// conversation's, else the current one).
    fn print(&mut self, out: Output) {
        match &out {
            Output::Message(m) if self.ignored.contains(&m.from.to_ascii_lowercase()) => return,
            // The title line shows the topic as last heard or set.
            Output::Topic { room, topic, .. } => {
                self.topics.insert(room.to_ascii_lowercase(), topic.clone());
            }
            Output::Message(m) if m.kind.as_deref() == Some("topic") => {
                self.topics
                    .insert(m.conversation.to_ascii_lowercase(), m.body.clone());
            }
            _ => {}
        }
        let key = self.window_of(&out);
        match &mut self.front {
            Front::Lines(p) => p.print(&out),
            Front::Screen(t) => t.screen.show(&key, &out),
        }
    }

    /// Takes up who was ignored when the peer last ran.
    pub async fn load_ignored(&mut self) {
        match self.peer.ignored().await {
            Ok(list) => self.ignored = list.into_iter().collect(),
            Err(err) => tracing::warn!(cause = %err, "cannot read who is ignored"),
        }
    }

    /// Keeps who is ignored in the history's file.
    async fn keep_ignored(&self) -> Result<(), String> {
        let mut list: Vec<String> = self.ignored.iter().cloned().collect();
        list.sort();
        self.peer
            .set_ignored(&list)
            .await
            .map_err(|e| format!("cannot keep who is ignored: {e}"))
    }

    /// The window an event belongs in on the full screen.
    fn window_of(&self, out: &Output) -> String {
        let current = self.windows.current_key();
        let open = |shown: &str| window_key(shown).filter(|k| self.windows.is_open(k));
        let found = match out {
            Output::Message(m) => open(&m.conversation),
            Output::Sent { conversation, .. } => open(conversation),
            Output::Joined { room, .. }
            | Output::Back { room, .. }
            | Output::Topic { room, .. }
            | Output::Presence { room, .. }
            | Output::Who { room, .. } => open(room),
            Output::Away { nick, .. } => open(&format!("@{nick}")),
            // Not about any one conversation: the status window.
            Output::Ready { .. }
            | Output::Mailbox { .. }
            | Output::Router { .. }
            | Output::Left { .. } => Some(String::new()),
            _ => None,
        };
        found.unwrap_or(current)
    }

    /// Shows `out` (in the status window, on the full screen).
    pub fn show(&mut self, out: Output) {
        self.print(out);
    }

    /// The conversations and which is current.
    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// Tells the line editor (or the screen) the prompt and the names Tab
    /// completes, and draws the screen.
    fn update_screen(&mut self) {
        let mut names = self.windows.names();
        if let Some(Target::Room(r)) = self.windows.current() {
            names.extend(self.members.get(&r.key()).into_iter().flatten().cloned());
        }
        for r in self.peer.rooms_in() {
            names.push(r.to_string());
        }
        names.retain(|n| !n.eq_ignore_ascii_case(self.peer.nick().as_str()));
        match &mut self.front {
            Front::Lines(p) => {
                if p.has_editor() {
                    p.set_prompt(&self.windows.prompt());
                    p.set_names(names.clone());
                }
            }
            Front::Screen(_) => self.draw(),
        }
        self.names = names;
    }

    /// Draws the full screen, if that is the front.
    fn draw(&mut self) {
        let (number, name) = self.windows.current_number();
        let key = self.windows.current_key();
        let (topic, members) = match self.windows.current() {
            Some(Target::Room(r)) => (
                self.topics.get(&r.key()).cloned().unwrap_or_default(),
                Some(self.members.get(&r.key()).cloned().unwrap_or_default()),
            ),
            _ => (String::new(), None),
        };
        let status = Status {
            nick: self.peer.nick().to_string(),
            number,
            name: name.clone(),
            activity: self.windows.activity(),
            topic,
            members,
            prompt: match self.windows.current() {
                Some(_) => format!("[{name}]"),
                None => "[(status)]".into(),
            },
        };
        if let Front::Screen(t) = &mut self.front {
            t.draw(&key, &status);
        }
    }

    /// Runs until `/quit`, end of input, or `stop` resolves. Returns the
    /// parting message of a `/quit MESSAGE` (empty for none, and when the
    /// client ended otherwise), for the logout: [`Peer::quit`]. `lines`
    /// is the line front's input; the screen reads its own keys.
    pub async fn run(
        mut self,
        mut lines: Option<mpsc::Receiver<String>>,
        mut events: mpsc::Receiver<PeerEvent>,
        stop: impl std::future::Future<Output = ()>,
    ) -> String {
        tokio::pin!(stop);
        let mut keys = match self.front {
            Front::Screen(_) => Some(crossterm::event::EventStream::new()),
            Front::Lines(_) => None,
        };
        // The status bar's clock.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The editor draws its first prompt once the rooms of `--join` are
        // joined, so it names the current one.
        self.update_screen();
        self.line_done();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                line = next_line(&mut lines) => {
                    let Some(line) = line else { break };
                    let go_on = self.handle_line(&line).await;
                    self.line_done();
                    if !go_on {
                        break;
                    }
                }
                Some(event) = events.recv() => {
                    self.show_event(event).await;
                    self.update_screen();
                }
                ev = next_key(&mut keys) => {
                    match ev {
                        Some(Ok(ev)) => {
                            if !self.on_key(ev).await {
                                break;
                            }
                        }
                        Some(Err(err)) => {
                            tracing::warn!(cause = %err, "cannot read the terminal");
                            break;
                        }
                        None => break,
                    }
                }
                _ = tick.tick(), if keys.is_some() => self.draw(),
            }
        }
        self.parting
    }

    fn line_done(&self) {
        if let Front::Lines(p) = &self.front {
            p.line_done();
        }
    }

    /// A key (or a resize, a paste) on the full screen; false means quit.
    async fn on_key(&mut self, ev: Event) -> bool {
        let Front::Screen(t) = &mut self.front else {
            return true;
        };
        if is_redraw(&ev) {
            t.redraw_all();
            self.draw();
            return true;
        }
        let key = self.windows.current_key();
        let (action, candidates) = match ev {
            Event::Key(k) => t.screen.key(&key, k, &self.names),
            Event::Paste(text) => {
                t.screen.paste(&text);
                (KeyAction::None, Vec::new())
            }
            _ => (KeyAction::None, Vec::new()),
        };
        if candidates.len() > 1 {
            let list = candidates
                .iter()
                .map(|c| c.trim_end())
                .collect::<Vec<_>>()
                .join(" ");
            t.screen.show(&key, &Output::info(list));
        }
        let go_on = match action {
            KeyAction::None => true,
            KeyAction::Line(line) => self.handle_line(&line).await,
            KeyAction::Window(n) => {
                match self.windows.switch(&Window::Number(n)) {
                    Ok(_) => self.seen_current(),
                    Err(message) => self.print(Output::error(message)),
                }
                true
            }
            KeyAction::Interrupt => {
                self.print(Output::info(
                    "Ctrl-C again quits; Enter sends the line, Ctrl-U clears it",
                ));
                true
            }
            KeyAction::Quit => false,
        };
        self.update_screen();
        go_on
    }

    /// The current window was looked at: the title stops calling.
    fn seen_current(&mut self) {
        let title = format!("parley: {}", self.peer.nick());
        if let Front::Screen(t) = &mut self.front {
            t.title(&title);
        }
    }

    async fn show_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Message { msg, late } => {
                let v = view(&self.peer.nick(), &msg, late);
                let mine = v.from.eq_ignore_ascii_case(self.peer.nick().as_str());
                if self.ignored.contains(&v.from.to_ascii_lowercase()) {
                    return;
                }
                let opened = self.windows.arrived(&v.conversation, mine, v.mention);
                // The bell and the title: a line naming the reader, or a
                // new private conversation.
                if !mine && (v.mention || opened) {
                    let title = format!("parley: {} in {}", v.from, v.conversation);
                    if let Front::Screen(t) = &mut self.front {
                        t.alert(&title);
                    }
                }
                self.print(Output::Message(v))
            }
            PeerEvent::Left { room, reason } => {
                if let Ok(r) = Room::parse(&room) {
                    self.close_window(&Target::Room(r));
                }
                self.print(Output::Left { room, reason });
            }
            PeerEvent::Back { room, new } => {
                // Back after a restart: the room is where lines go, unless
                // the person already picked somewhere else.
                if let Ok(r) = Room::parse(&room) {
                    if self.windows.current().is_none() {
                        self.windows.focus(Target::Room(r.clone()));
                    } else {
                        self.windows.add(Target::Room(r.clone()));
                    }
                    self.print(Output::Back {
                        room: room.clone(),
                        new,
                    });
                    if let Ok(Some(t)) = self.peer.topic(&r).await {
                        self.topics.insert(r.key(), t.body);
                    }
                    if let Ok(members) = self.peer.who(&r).await {
                        self.members.insert(r.key(), members);
                    }
                    // What came meanwhile, under a marker, as `/join` shows it.
                    self.show_missed(&r, new, new as u64 + 1).await;
                } else {
                    self.print(Output::Back { room, new });
                }
            }
            PeerEvent::Notice(message) => self.print(Output::info(message)),
            PeerEvent::Mailbox { delivered, expired } => self.print(Output::Mailbox {
                count: delivered,
                expired,
            }),
            PeerEvent::Presence {
                room,
                nick,
                change: Presence::Joined,
                message,
            } => {
                let list = self.members.entry(room.to_ascii_lowercase()).or_default();
                if !list.iter().any(|n| n.eq_ignore_ascii_case(&nick)) {
                    list.push(nick.clone());
                }
                self.print(presence(room, nick, "joined", message));
            }
            PeerEvent::Presence {
                room,
                nick,
                change,
                message,
            } => {
                if let Some(list) = self.members.get_mut(&room.to_ascii_lowercase()) {
                    list.retain(|n| !n.eq_ignore_ascii_case(&nick));
                }
                let event = match change {
                    Presence::Quit => "quit",
                    Presence::TimedOut => "timeout",
                    // (Joined is the arm above.)
                    Presence::Left | Presence::Joined => "left",
                };
                self.print(presence(room, nick, event, message));
            }
            // Shown by its Message (kind "nick"); here the lists follow.
            PeerEvent::NickChanged { room, old, new } => {
                if let Some(list) = self.members.get_mut(&room.to_ascii_lowercase()) {
                    for n in list.iter_mut() {
                        if n.eq_ignore_ascii_case(&old) {
                            *n = new.clone();
                        }
                    }
                }
                // A private window follows the person (the key), not the
                // name: lines typed there go to the new nick.
                if let (Ok(old), Ok(new)) = (Nick::parse(&old), Nick::parse(&new)) {
                    if self.peer.same_person(&old, &new) {
                        self.rename_window(&old, &new);
                    }
                }
            }
            PeerEvent::Router { up } => self.print(Output::Router {
                state: if up { "back" } else { "lost" }.into(),
            }),
            PeerEvent::Warning { nick, text } => self.print(Output::Warning {
                nick,
                message: text,
            }),
            PeerEvent::Forged { msg, key } => {
                let key = key.map(|k| k.fingerprint()).unwrap_or_default();
                let message = format!(
                    "a line from {} in {} failed its signature check and was removed; the key that sent it ({key}) is flagged",
                    msg.author,
                    view(&self.peer.nick(), &msg, false).conversation,
                );
                self.print(Output::Warning {
                    nick: msg.author,
                    message,
                });
            }
        }
    }

    /// The private window with `old`, if open, is now `new`'s, with its
    /// lines and its place.
    fn rename_window(&mut self, old: &Nick, new: &Nick) {
        let (from, to) = (Target::Nick(old.clone()), Target::Nick(new.clone()));
        if !self.windows.rename(&from, to.clone()) {
            return;
        }
        if let Front::Screen(t) = &mut self.front {
            t.screen.rename(&target_key(&from), &target_key(&to));
        }
    }

    /// Closes a conversation's window (and forgets its lines on screen).
    fn close_window(&mut self, t: &Target) {
        self.windows.close(t);
        if let Front::Screen(s) = &mut self.front {
            s.screen.forget(&target_key(t));
        }
    }

    /// Handles one input line; false means quit (with the parting message
    /// [`Client::run`] returns).
    pub async fn handle_line(&mut self, line: &str) -> bool {
        let cmd = match parse(line) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return true,
            Err(err) => {
                self.print(Output::error(err.to_string()));
                return true;
            }
        };
        if let Command::Quit(message) = cmd {
            self.parting = message.unwrap_or_default();
            return false;
        }
        if let Err(message) = self.execute(cmd).await {
            self.print(Output::error(message));
        }
        self.update_screen();
        true
    }

    fn current_room(&self, room: Option<Room>, usage: &str) -> Result<Room, String> {
        match (room, self.windows.current()) {
            (Some(r), _) => Ok(r),
            (None, Some(Target::Room(r))) => Ok(r.clone()),
            _ => Err(format!("no current room: {usage}")),
        }
    }

    async fn execute(&mut self, cmd: Command) -> Result<(), String> {
        let peer = self.peer.clone();
        match cmd {
            Command::Join(room) => {
                let j = peer.join(&room).await.map_err(|e| e.to_string())?;
                self.windows.focus(Target::Room(room.clone()));
                self.members.insert(room.key(), j.members.clone());
                self.print(Output::Joined {
                    room: j.room.clone(),
                    members: j.members,
                    version: j.version,
                    created: j.created,
                });
                // As IRC does on joining: the topic, when there is one.
                if let Some(t) = peer.topic(&room).await.map_err(|e| e.to_string())? {
                    self.print(topic_of(&room, Some(t)));
                }
                self.show_missed(&room, j.new, j.version).await;
            }
            Command::Leave(room, message) => {
                let room = self.current_room(room, "/leave #room")?;
                peer.leave(&room, message.as_deref().unwrap_or_default())
                    .await
                    .map_err(|e| e.to_string())?;
                self.close_window(&Target::Room(room.clone()));
                self.print(Output::Left {
                    room: room.to_string(),
                    reason: "left".into(),
                });
            }
            Command::Msg(nick, body) => {
                let target = Target::Nick(nick);
                self.send(&target, &body).await?;
            }
            Command::Query(nick) => {
                let n = peer.open_private(&nick).await.map_err(|e| e.to_string())?;
                let s = if n == 1 { "" } else { "s" };
                self.print(Output::info(format!(
                    "now talking to @{nick} ({n} message{s} in history)"
                )));
                self.windows.focus(Target::Nick(nick));
            }
            Command::Switch(None) => self.print(Output::info(self.windows.list())),
            Command::Switch(Some(to)) => {
                let t = self.windows.switch(&to)?;
                self.seen_current();
                // On the screen the window itself shows where you are.
                if let (Some(t), Front::Lines(_)) = (&t, &self.front) {
                    self.print(Output::info(format!("now talking in {}", target_name(t))));
                }
            }
            Command::Close => {
                let t = self
                    .windows
                    .current()
                    .cloned()
                    .ok_or("the status window stays open: /quit leaves the chat")?;
                if let Target::Room(room) = &t {
                    peer.leave(room, "").await.map_err(|e| e.to_string())?;
                }
                self.close_window(&t);
                if let Target::Room(room) = t {
                    self.print(Output::Left {
                        room: room.to_string(),
                        reason: "left".into(),
                    });
                }
            }
            Command::NickList => match &mut self.front {
                Front::Screen(t) => t.screen.nicklist = !t.screen.nicklist,
                Front::Lines(_) => {
                    return Err(
                        "the nick list is part of the full screen; /who lists a room's members"
                            .into(),
                    )
                }
            },
            Command::Ignore(None) => {
                let mut list: Vec<&String> = self.ignored.iter().collect();
                list.sort();
                let text = if list.is_empty() {
                    "nobody is ignored".to_owned()
                } else {
                    let names: Vec<&str> = list.iter().map(|s| s.as_str()).collect();
                    format!("ignoring: {}", names.join(", "))
                };
                self.print(Output::info(text));
            }
            Command::Ignore(Some(nick)) => {
                self.ignored.insert(nick.key());
                self.keep_ignored().await?;
                self.print(Output::info(format!(
                    "ignoring {nick}: their lines are kept but not shown; /unignore {nick} shows them"
                )));
            }
            Command::Unignore(nick) => {
                if !self.ignored.remove(&nick.key()) {
                    return Err(format!("{nick} is not ignored"));
                }
                self.keep_ignored().await?;
                self.print(Output::info(format!("no longer ignoring {nick}")));
            }
            Command::Lastlog(text) => {
                let found = peer
                    .lastlog(&text, LASTLOG_SHOWN)
                    .await
                    .map_err(|e| e.to_string())?;
                let me = peer.nick().clone();
                self.print(Output::History {
                    conversation: format!("lastlog {text}"),
                    messages: found.iter().map(|m| view(&me, m, false)).collect(),
                });
            }
            Command::Nick(new) => {
                let change = peer.change_nick(&new).await.map_err(|e| e.to_string())?;
                let mut text = format!("you are now known as {}", change.new);
                for (room, why) in &change.unsent {
                    text.push_str(&format!("\n{room} was not told yet: {why}"));
                }
                self.print(Output::info(text));
                for room in change
                    .rooms
                    .iter()
                    .chain(change.unsent.iter().map(|(r, _)| r))
                {
                    if let Some(list) = self.members.get_mut(&room.to_ascii_lowercase()) {
                        for n in list.iter_mut() {
                            if n.eq_ignore_ascii_case(&change.old) {
                                *n = change.new.clone();
                            }
                        }
                    }
                }
            }
            Command::Me(text) => {
                let target = self
                    .windows
                    .current()
                    .cloned()
                    .ok_or("no current conversation: /join #room or /query NICK first")?;
                self.send(&target, &action_body(&text)).await?;
            }
            Command::Who(room) => {
                let room = self.current_room(room, "/who #room")?;
                let members = peer.who(&room).await.map_err(|e| e.to_string())?;
                self.print(Output::Who {
                    room: room.to_string(),
                    members,
                });
            }
            Command::Topic { room, text: None } => {
                let room = self.current_room(room, "/topic #room")?;
                let t = peer.topic(&room).await.map_err(|e| e.to_string())?;
                self.print(topic_of(&room, t));
            }
            Command::Topic {
                room,
                text: Some(text),
            } => {
                let room = self.current_room(room, "/topic #room TEXT")?;
                let report = peer
                    .set_topic(&room, &text)
                    .await
                    .map_err(|e| e.to_string())?;
                self.sent(&Target::Room(room), report).await;
            }
            Command::Away(message) => {
                peer.set_away(message.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                self.print(Output::info(match message {
                    Some(m) => format!("you are marked as away: {m}"),
                    None => "you are no longer marked as away".into(),
                }));
            }
            Command::Rooms => {
                let rooms = peer.rooms().await.map_err(|e| e.to_string())?;
                self.print(Output::Rooms {
                    rooms: rooms
                        .into_iter()
                        .map(|r| RoomView {
                            room: r.name,
                            members: r.members,
                            owner: r.owner,
                        })
                        .collect(),
                });
            }
            Command::Users => {
                let users = peer.users().await.map_err(|e| e.to_string())?;
                let away = users
                    .iter()
                    .filter_map(|u| Some((u.nick.clone(), u.away.clone()?)))
                    .collect();
                self.print(Output::Users {
                    users: users.into_iter().map(|u| u.nick).collect(),
                    away,
                });
            }
            Command::History { target, limit } => {
                let target = target
                    .or_else(|| self.windows.current().cloned())
                    .ok_or("no current conversation: /history #room or /history @nick")?;
                let (key, shown) = self.conversation(&target);
                let msgs = peer
                    .history(&key, limit.unwrap_or(DEFAULT_HISTORY))
                    .await
                    .map_err(|e| e.to_string())?;
                let me = peer.nick();
                self.print(Output::History {
                    conversation: shown,
                    messages: msgs.iter().map(|m| view(&me, m, false)).collect(),
                });
            }
            Command::Whois(nick) => {
                let w = peer.whois(&nick).await.map_err(|e| e.to_string())?;
                let fp = |k: Option<crate::identity::PublicKey>| {
                    k.map(|k| k.fingerprint()).unwrap_or_default()
                };
                self.print(Output::Whois {
                    nick: w.nick,
                    address: w.address.unwrap_or_default(),
                    key: fp(w.key),
                    known: fp(w.known),
                    pending: fp(w.pending),
                    away: w.away.unwrap_or_default(),
                    rooms: w.rooms,
                    idle_secs: w.idle_secs,
                });
            }
            Command::Reach => {
                let reachable = peer.recheck_reach().await.map_err(|e| e.to_string())?;
                self.print(Output::Reachable {
                    address: peer.advertised(),
                    reachable,
                });
            }
            Command::Trust(nick) => {
                let key = peer.trust(&nick).await.map_err(|e| e.to_string())?;
                self.print(Output::Trusted {
                    nick: nick.to_string(),
                    key: key.fingerprint(),
                });
            }
            Command::Delete(room) => {
                peer.delete_room(&room).await.map_err(|e| e.to_string())?;
                self.close_window(&Target::Room(room.clone()));
                self.print(Output::Left {
                    room: room.to_string(),
                    reason: "deleted".into(),
                });
            }
            Command::Help => self.print(Output::info(HELP)),
            Command::Quit(_) => {}
            Command::Say(body) => {
                let target = self
                    .windows
                    .current()
                    .cloned()
                    .ok_or("no current conversation: /join #room or /query NICK first")?;
                self.send(&target, &body).await?;
            }
        }
        Ok(())
    }

    /// On a person's screen, after joining: the last messages the join
    /// brought in (at most [`MISSED_SHOWN`]), under a line saying how many.
    /// Scripts (`--json`) read them with `/history`.
    async fn show_missed(&mut self, room: &Room, new: usize, version: u64) {
        if new == 0 || self.is_json() {
            return;
        }
        let Ok(msgs) = self.peer.history(&room.key(), new.min(MISSED_SHOWN)).await else {
            return;
        };
        let since = if version as usize > new {
            "since you left"
        } else {
            "before you came"
        };
        let more = if new > msgs.len() {
            format!("; the last {}, older by /history {room} {new}", msgs.len())
        } else {
            String::new()
        };
        let text = format!("{new} new {since}{more}");
        match &mut self.front {
            // A marker line across the window, as irssi's.
            Front::Screen(t) => t.screen.marker(&room.key(), &text),
            Front::Lines(_) => self.print(Output::info(text)),
        }
        let me = self.peer.nick();
        for m in &msgs {
            self.print(Output::Message(view(&me, m, false)));
        }
    }

    /// The canonical key and the shown name of a target.
    fn conversation(&self, target: &Target) -> (String, String) {
        match target {
            Target::Room(r) => (r.key(), r.key()),
            Target::Nick(n) => (private_key(&self.peer.nick(), n), format!("@{n}")),
        }
    }

    async fn send(&mut self, target: &Target, body: &str) -> Result<(), String> {
        let report: SendReport = match target {
            Target::Room(r) => self.peer.send_room(r, body).await,
            Target::Nick(n) => self.peer.send_private(n, body).await,
        }
        .map_err(|e| e.to_string())?;
        self.sent(target, report).await;
        Ok(())
    }

    /// Shows what a send did: the line itself (to a person), who lacks it,
    /// and who is away.
    async fn sent(&mut self, target: &Target, report: SendReport) {
        let (_, shown) = self.conversation(target);
        let json = self.is_json();
        self.windows.add(target.clone());
        if !json {
            // A person sees their own line in the conversation too.
            let own = view(&self.peer.nick(), &report.message, false);
            // On the screen, sent from another window (`/msg`): said there
            // too, or it would seem to vanish.
            if matches!(self.front, Front::Screen(_))
                && self.windows.current_key() != target_key(target)
            {
                self.print(Output::info(format!(
                    "to {}: {}",
                    own.conversation,
                    own.body.replace('\n', " ")
                )));
            }
            self.print(Output::Message(own));
        }
        // Who came back with another key gets nothing until /trust: not
        // "when they are back online".
        let (changed, pending): (Vec<String>, Vec<String>) = if json {
            (Vec::new(), report.pending.clone())
        } else {
            report
                .pending
                .iter()
                .cloned()
                .partition(|n| self.peer.key_changed(n))
        };
        // A nick the router never bound is most likely a typo: say so
        // plainly (the message waits all the same).
        let unseen = match target {
            Target::Nick(n) if !report.pending.is_empty() => {
                matches!(self.peer.whois(n).await, Ok(w) if w.key.is_none()).then_some(n)
            }
            _ => None,
        };
        // One who took it and said nothing is back: a later away is new.
        for nick in &report.delivered {
            if !report.away.iter().any(|(n, _)| n == nick) {
                self.away_shown.remove(&nick.to_ascii_lowercase());
            }
        }
        let sent = Output::Sent {
            conversation: shown,
            author_seq: report.message.seq,
            delivered: report.delivered,
            pending,
        };
        if json || unseen.is_none() {
            self.print(sent);
        }
        for nick in changed {
            self.print(Output::Warning {
                message: format!(
                    "not sent to {nick} yet: {nick} now presents another key than the one you \
                     first met; check with them, then /trust {nick}, and it goes"
                ),
                nick,
            });
        }
        if let Some(n) = unseen {
            self.print(Output::info(format!(
                "nobody called {n} has been seen; the message will wait for them"
            )));
        }
        for (nick, message) in report.away {
            // Scripts hear it every time; a person once per message.
            let key = nick.to_ascii_lowercase();
            if json || self.away_shown.get(&key) != Some(&message) {
                self.away_shown.insert(key, message.clone());
                self.print(Output::Away { nick, message });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> Target {
        Target::Room(Room::parse(s).unwrap())
    }

    #[test]
    fn windows_switch_count_unread_and_show_in_the_prompt() {
        let mut w = Windows::default();
        assert_eq!(w.prompt(), "> ");
        w.focus(room("#rust"));
        w.focus(room("#go"));
        assert_eq!(w.prompt(), "[#go] ");
        // Elsewhere: counted; here, or mine: not.
        w.arrived("#rust", false, false);
        w.arrived("#rust", false, false);
        w.arrived("#go", false, false);
        w.arrived("#rust", true, false);
        w.arrived("#nowhere", false, false);
        assert_eq!(w.prompt(), "[#go] (2 unread) ");
        // A private message opens its conversation, not current.
        w.arrived("@bob", false, false);
        assert_eq!(w.prompt(), "[#go] (3 unread) ");
        assert_eq!(
            w.list(),
            "conversations (/switch N or /switch NAME):\n1 #rust (2 unread)\n2 #go (current)\n3 @bob (1 unread)"
        );
        // Switching clears that one's count.
        let t = w.switch(&Window::Number(1)).unwrap();
        assert_eq!(t, Some(room("#rust")));
        assert_eq!(w.prompt(), "[#rust] (1 unread) ");
        w.switch(&Window::Target(Target::Nick(Nick::parse("BOB").unwrap())))
            .unwrap();
        assert_eq!(w.prompt(), "[@bob] ");
        assert!(w.switch(&Window::Number(4)).is_err());
        let e = w.switch(&Window::Target(room("#elsewhere"))).unwrap_err();
        assert_eq!(e, "you are not in #elsewhere: /join #elsewhere");
        // Leaving the current one: no current, the prompt says so.
        w.close(&Target::Nick(Nick::parse("bob").unwrap()));
        assert_eq!(w.prompt(), "> ");
        w.arrived("#go", false, false);
        assert_eq!(w.prompt(), "(1 unread) > ");
    }

    #[test]
    fn a_private_line_opens_its_window_and_becomes_current_when_none_is() {
        let mut w = Windows::with_status();
        assert_eq!(w.current_number(), (1, "(status)".into()));
        // Nothing current: a new private line opens its window and makes
        // it current, so the reply typed next goes to its author.
        assert!(w.arrived("@bob", false, false));
        assert_eq!(w.current_key(), "@bob");
        assert_eq!(w.current_number(), (2, "@bob".into()));
        w.focus(room("#rust"));
        // Another: opened, not current; counted, a mention marked.
        assert!(w.arrived("@carol", false, true));
        assert!(!w.arrived("@carol", false, false));
        w.arrived("@bob", false, false);
        assert_eq!(w.activity(), vec![(2, false), (4, true)]);
        assert_eq!(w.current_number(), (3, "#rust".into()));
        // Window 1 is the status window; conversations count from 2.
        assert_eq!(w.switch(&Window::Number(1)).unwrap(), None);
        assert_eq!(w.current_key(), "");
        assert_eq!(
            w.switch(&Window::Number(4)).unwrap(),
            Some(Target::Nick(Nick::parse("carol").unwrap()))
        );
        assert_eq!(w.activity(), vec![(2, false)]);
        assert!(w.switch(&Window::Number(5)).is_err());
    }
}
