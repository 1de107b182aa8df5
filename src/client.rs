//! The terminal client: reads commands, drives a [`Peer`], and prints what
//! happens as [`Output`] events. It owns the state a person has that the
//! peer does not: the conversations, the current one, and the rooms'
//! members (for Tab).

use std::collections::HashMap;

use tokio::sync::mpsc;

use crate::names::{private_key, Conversation, Nick, Room};
use crate::peer::{Peer, PeerEvent, Presence, SendReport};
use crate::proto::{ChatMessage, Kind};
use crate::terminal::{
    action_body, mentions, parse, Command, MessageView, Output, Printer, RoomView, Target, Window,
    DEFAULT_PROMPT, HELP,
};

/// Messages `/history` shows when no N is given.
const DEFAULT_HISTORY: usize = 20;

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
}

impl Windows {
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
        self.add(t.clone());
        self.current = Some(t);
    }

    /// `t` is closed (left, deleted): it stops being current.
    pub fn close(&mut self, t: &Target) {
        let key = target_key(t);
        self.open.retain(|o| target_key(o) != key);
        self.unread.remove(&key);
        if self.current.as_ref().is_some_and(|c| target_key(c) == key) {
            self.current = None;
        }
    }

    /// A message arrived in the conversation shown as `shown` (`#rust`,
    /// `@bob`): one more unread unless it is current or `mine`. A private
    /// conversation not open yet is opened (not made current).
    pub fn arrived(&mut self, shown: &str, mine: bool) {
        let target = if let Some(nick) = shown.strip_prefix('@') {
            Nick::parse(nick).ok().map(Target::Nick)
        } else {
            Room::parse(shown).ok().map(Target::Room)
        };
        let Some(t) = target else { return };
        let key = target_key(&t);
        if self.current.as_ref().is_some_and(|c| target_key(c) == key) {
            return;
        }
        if matches!(t, Target::Nick(_)) {
            self.add(t);
        } else if !self.open.iter().any(|o| target_key(o) == key) {
            return;
        }
        if !mine {
            *self.unread.entry(key).or_default() += 1;
        }
    }

    /// `/switch`: makes the named or N-th conversation current.
    pub fn switch(&mut self, to: &Window) -> Result<Target, String> {
        let t = match to {
            Window::Number(n) => self.open.get(n - 1).cloned().ok_or_else(|| {
                format!(
                    "no conversation {n}: you are in {}; /switch lists them",
                    self.open.len()
                )
            })?,
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
        Ok(t)
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
        let mut s = String::from("conversations (/switch N or /switch NAME):");
        for (i, t) in self.open.iter().enumerate() {
            let key = target_key(t);
            let mut line = format!("\n{} {}", i + 1, target_name(t));
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

/// The client's state: the peer, the conversations and the rooms' members.
pub struct Client {
    peer: Peer,
    printer: Printer,
    windows: Windows,
    /// Room key → its members as last heard, for Tab.
    members: HashMap<String, Vec<String>>,
    /// Nick key → the away message last shown for it: a person is told
    /// once, not on every line they write to someone away.
    away_shown: HashMap<String, String>,
    /// The parting message of the `/quit` that ended the client.
    parting: String,
}

impl Client {
    pub fn new(peer: Peer, printer: Printer) -> Client {
        Client {
            peer,
            printer,
            windows: Windows::default(),
            members: HashMap::new(),
            away_shown: HashMap::new(),
            parting: String::new(),
        }
    }

    fn print(&self, out: Output) {
        self.printer.print(&out);
    }

    /// The conversations and which is current.
    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// Tells the line editor the prompt and the names Tab completes.
    fn update_screen(&self) {
        if !self.printer.has_editor() {
            return;
        }
        self.printer.set_prompt(&self.windows.prompt());
        let mut names = self.windows.names();
        if let Some(Target::Room(r)) = self.windows.current() {
            names.extend(self.members.get(&r.key()).into_iter().flatten().cloned());
        }
        for r in self.peer.rooms_in() {
            names.push(r.to_string());
        }
        names.retain(|n| !n.eq_ignore_ascii_case(self.peer.nick().as_str()));
        self.printer.set_names(names);
    }

    /// Runs until `/quit`, end of input, or `stop` resolves. Returns the
    /// parting message of a `/quit MESSAGE` (empty for none, and when the
    /// client ended otherwise), for the logout: [`Peer::quit`].
    pub async fn run(
        mut self,
        mut lines: mpsc::Receiver<String>,
        mut events: mpsc::Receiver<PeerEvent>,
        stop: impl std::future::Future<Output = ()>,
    ) -> String {
        tokio::pin!(stop);
        // The editor draws its first prompt once the rooms of `--join` are
        // joined, so it names the current one.
        self.update_screen();
        self.printer.line_done();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                line = lines.recv() => {
                    let Some(line) = line else { break };
                    let go_on = self.handle_line(&line).await;
                    self.printer.line_done();
                    if !go_on {
                        break;
                    }
                }
                Some(event) = events.recv() => {
                    self.show_event(event);
                    self.update_screen();
                }
            }
        }
        self.parting
    }

    fn show_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Message { msg, late } => {
                let v = view(&self.peer.nick(), &msg, late);
                let mine = v.from.eq_ignore_ascii_case(self.peer.nick().as_str());
                self.windows.arrived(&v.conversation, mine);
                self.print(Output::Message(v))
            }
            PeerEvent::Left { room, reason } => {
                if let Ok(r) = Room::parse(&room) {
                    self.windows.close(&Target::Room(r));
                }
                self.print(Output::Left { room, reason });
            }
            PeerEvent::Back { room, new } => {
                // Back after a restart: the room is where lines go, unless
                // the person already picked somewhere else.
                if let Ok(r) = Room::parse(&room) {
                    if self.windows.current().is_none() {
                        self.windows.focus(Target::Room(r));
                    } else {
                        self.windows.add(Target::Room(r));
                    }
                }
                self.print(Output::Back { room, new });
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
            // Shown by its Message (kind "nick"); the terminal's rewrite
            // renders it.
            PeerEvent::NickChanged { .. } => {}
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
                self.windows.close(&Target::Room(room.clone()));
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
                self.print(Output::info(format!("now talking in {}", target_name(&t))));
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
                self.print(Output::Users { users });
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
                self.windows.close(&Target::Room(room.clone()));
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
    async fn show_missed(&self, room: &Room, new: usize, version: u64) {
        if new == 0 || self.printer.is_json() {
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
        self.print(Output::info(format!("{new} new {since}{more}")));
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
        let json = self.printer.is_json();
        if !json {
            // A person sees their own line in the conversation too.
            self.print(Output::Message(view(
                &self.peer.nick(),
                &report.message,
                false,
            )));
        }
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
            pending: report.pending,
        };
        if json || unseen.is_none() {
            self.print(sent);
        }
        self.windows.add(target.clone());
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
        w.arrived("#rust", false);
        w.arrived("#rust", false);
        w.arrived("#go", false);
        w.arrived("#rust", true);
        w.arrived("#nowhere", false);
        assert_eq!(w.prompt(), "[#go] (2 unread) ");
        // A private message opens its conversation, not current.
        w.arrived("@bob", false);
        assert_eq!(w.prompt(), "[#go] (3 unread) ");
        assert_eq!(
            w.list(),
            "conversations (/switch N or /switch NAME):\n1 #rust (2 unread)\n2 #go (current)\n3 @bob (1 unread)"
        );
        // Switching clears that one's count.
        let t = w.switch(&Window::Number(1)).unwrap();
        assert_eq!(t, room("#rust"));
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
        w.arrived("#go", false);
        assert_eq!(w.prompt(), "(1 unread) > ");
    }
}
