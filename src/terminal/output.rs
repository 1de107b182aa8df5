//! Everything the peer shows, as one enum with two renderings: a JSON line
//! (`--json`, for scripts and the test harness) and a line for a person.
//!
//! The JSON field names are a contract with scripts: change them only with
//! the scripts. `type` names the event; the other fields are the variant's.

use std::fmt::Write as _;

use chrono::{Local, TimeZone};
use serde::{Deserialize, Serialize};

/// One message as shown: in a `message` event and in `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// `#room` or `@nick`, as the reader sees the conversation.
    pub conversation: String,
    pub from: String,
    pub body: String,
    pub author_seq: u64,
    pub lamport: u64,
    /// The author's wall-clock send time, milliseconds since the Unix epoch.
    pub sent_at_ms: i64,
    /// Arrived after later messages were already shown (written in a partition).
    pub late: bool,
    /// Absent for a line someone wrote; `"created"` for a room's creation
    /// event (its author owns the room), `"topic"` for a new topic (the body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Someone else's message that names the reader's nick; absent when not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mention: bool,
}

/// One room in a `rooms` listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    pub room: String,
    /// How many members it has.
    pub members: u32,
    pub owner: String,
}

/// An event for the terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Output {
    /// The peer is up: its nick and the address it listens on.
    Ready {
        nick: String,
        listen: String,
        /// Whether the router could dial this peer back; when not, others
        /// reach it through the router.
        reachable: bool,
    },
    /// A message, received or sent; a newtype so its fields sit beside `type`.
    Message(MessageView),
    /// A message we sent was stored; who has it and who will get it later.
    Sent {
        conversation: String,
        author_seq: u64,
        delivered: Vec<String>,
        pending: Vec<String>,
    },
    /// We joined a room; `version` is how many messages of it we hold.
    Joined {
        room: String,
        members: Vec<String>,
        version: u64,
        created: bool,
    },
    Left {
        room: String,
        reason: String,
    },
    /// This peer's mailbox at the router was drained: `count` messages
    /// waited there for it (and are now in its history); `expired` more
    /// were removed unread at the router's age limit. Said once at start
    /// (counts may be 0) and after each later drain that brought any.
    Mailbox {
        count: usize,
        expired: u64,
    },
    /// A restarted peer is back in a room it was in; `new` messages were
    /// sent there while it was away (and are now in its history).
    Back {
        room: String,
        new: usize,
    },
    Who {
        room: String,
        members: Vec<String>,
    },
    Rooms {
        rooms: Vec<RoomView>,
    },
    Users {
        /// Every online nick, as before.
        users: Vec<String>,
        /// Those of them marked away: nick → away message.
        #[serde(default)]
        away: std::collections::BTreeMap<String, String>,
    },
    History {
        conversation: String,
        messages: Vec<MessageView>,
    },
    Error {
        message: String,
    },
    /// A notice for a person: help text, "now talking to @bob", and the like.
    Info {
        message: String,
    },
    /// Something the person must act on: `nick` came back with another key.
    Warning {
        nick: String,
        message: String,
    },
    /// `/whois`: what is known of a nick. Keys are fingerprints
    /// (`SHA256:...`); empty when unknown.
    Whois {
        nick: String,
        /// Where it is online now; empty when offline.
        address: String,
        /// The key the router binds the nick to.
        key: String,
        /// The key this peer first met it with.
        known: String,
        /// A changed key waiting for `/trust`.
        pending: String,
        /// Its away message; empty when not away (or offline).
        #[serde(default)]
        away: String,
        /// The rooms it sits in (online only).
        #[serde(default)]
        rooms: Vec<String>,
        /// Seconds since it last sent a line; null when unknown.
        #[serde(default)]
        idle_secs: Option<u64>,
    },
    /// `/reach`: what the router's new dial-back of `address` found.
    Reachable {
        address: String,
        reachable: bool,
    },
    /// `/trust`: `nick`'s key `key` is trusted from now on.
    Trusted {
        nick: String,
        key: String,
    },
    /// Someone else came into or went out of a room this peer is in:
    /// `event` is `joined`, `left` (they left the room), `quit` (they
    /// logged out) or `timeout` (their lease ran out: their peer stopped
    /// answering). `message`: the parting message of a `left` or a `quit`,
    /// absent when they gave none (and always for `joined` and `timeout`).
    Presence {
        room: String,
        nick: String,
        event: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
    },
    /// A room's topic: on `/topic` and after a join. Empty `topic` (and
    /// `by`) when none was ever set.
    Topic {
        room: String,
        topic: String,
        by: String,
        set_at_ms: i64,
    },
    /// `nick` answered a private message saying its person is away.
    Away {
        nick: String,
        message: String,
    },
    /// The router: `state` is `lost` (none could be reached; the peer keeps
    /// retrying) or `back` (one answers again). Once each per outage.
    Router {
        state: String,
    },
}

impl Output {
    /// Shorthand for an `error` event.
    pub fn error(message: impl Into<String>) -> Output {
        Output::Error {
            message: message.into(),
        }
    }

    /// Shorthand for an `info` event.
    pub fn info(message: impl Into<String>) -> Output {
        Output::Info {
            message: message.into(),
        }
    }

    /// The event as one JSON line, without the newline.
    pub fn to_json(&self) -> String {
        // Only strings, numbers, bools and vectors of them: serialising cannot
        // fail, but a printer must never panic, so fall back to an error event.
        serde_json::to_string(self).unwrap_or_else(|err| {
            tracing::warn!(cause = %err, "could not serialise output");
            r#"{"type":"error","message":"internal: could not serialise output"}"#.to_owned()
        })
    }

    /// The event for a person, without a trailing newline; may span several
    /// lines (history, help), and is empty when there is nothing worth saying
    /// (a message that reached everyone).
    pub fn to_human(&self) -> String {
        self.to_human_in(Colour::Off)
    }

    /// [`Output::to_human`], with nicks coloured and mentions highlighted
    /// when `colour` is on.
    pub fn to_human_in(&self, colour: Colour) -> String {
        match self {
            Output::Ready {
                nick,
                listen,
                reachable: true,
            } => format!("-- you are {nick}, listening on {listen}; /help lists commands"),
            Output::Ready {
                nick,
                listen,
                reachable: false,
            } => format!(
                "-- you are {nick}, listening on {listen}; /help lists commands\n\
                 -- the router cannot reach you there (a firewall or NAT): others reach you \
                 through the router"
            ),
            Output::Message(m) => message_line(m, colour),
            Output::Sent { pending, .. } if pending.is_empty() => String::new(),
            Output::Sent { pending, .. } => format!(
                "-- stored; not delivered yet to {}: they will get it when they are back online",
                clean(&pending.join(", "))
            ),
            Output::Joined {
                room,
                members,
                version,
                created,
            } => {
                let count = plural(members.len(), "member", "members");
                let list = if members.is_empty() {
                    String::new()
                } else {
                    format!(": {}", members.join(", "))
                };
                let history = plural(*version as usize, "message", "messages");
                let new = if *created { " (new room)" } else { "" };
                clean(&format!(
                    "-- joined {room}{new} ({count}{list}; history: {history})"
                ))
            }
            Output::Left { room, reason } if reason.is_empty() || reason == "left" => {
                clean(&format!("-- you left {room}"))
            }
            Output::Left { room, reason } if reason == "deleted" => {
                clean(&format!("-- you deleted {room}"))
            }
            Output::Left { room, reason } => clean(&format!("-- left {room} ({reason})")),
            Output::Presence {
                room,
                nick,
                event,
                message,
            } => clean(&match (event.as_str(), message.is_empty()) {
                ("joined", _) => format!("-- {nick} has joined {room}"),
                // IRC's parting messages: `has left #go (see ya)`, and,
                // the room already in brackets, `has quit (#go): bye`.
                ("left", true) => format!("-- {nick} has left {room}"),
                ("left", false) => format!("-- {nick} has left {room} ({message})"),
                ("quit", true) => format!("-- {nick} has quit ({room})"),
                ("quit", false) => format!("-- {nick} has quit ({room}): {message}"),
                ("timeout", _) => format!("-- {nick} has timed out ({room})"),
                (other, true) => format!("-- {nick} {other} {room}"),
                (other, false) => format!("-- {nick} {other} {room}: {message}"),
            })
            // One line, whatever another peer's router let through.
            .replace('\n', " "),
            Output::Router { state } => match state.as_str() {
                "lost" => "-- lost the router, retrying".into(),
                "back" => "-- router back".into(),
                other => clean(&format!("-- router {other}")),
            },
            Output::Back { room, new } => clean(&format!("-- back in {room} ({new} new)")),
            Output::Mailbox {
                count: 0,
                expired: 0,
            } => String::new(),
            Output::Mailbox { count: 0, expired } => format!(
                "-- {} for you expired unread at the router",
                plural(
                    usize::try_from(*expired).unwrap_or(usize::MAX),
                    "message",
                    "messages"
                )
            ),
            Output::Mailbox { count, expired } => {
                let mut line = if *count == 1 {
                    "-- 1 message waited for you".to_owned()
                } else {
                    format!("-- {count} messages waited for you")
                };
                if *expired > 0 {
                    let _ = write!(
                        line,
                        "; {} for you expired unread at the router",
                        plural(
                            usize::try_from(*expired).unwrap_or(usize::MAX),
                            "message",
                            "messages"
                        )
                    );
                }
                line
            }
            Output::Topic { room, topic, .. } if topic.is_empty() => {
                clean(&format!("-- {room} has no topic; /topic TEXT sets one"))
            }
            Output::Topic {
                room,
                topic,
                by,
                set_at_ms,
            } => clean(&format!(
                "-- topic of {room}: {topic} (set by {by}, {})",
                when(*set_at_ms)
            )),
            Output::Away { nick, message } => clean(&format!("-- {nick} is away: {message}")),
            Output::Who { room, members } if members.is_empty() => {
                clean(&format!("-- {room}: no members"))
            }
            Output::Who { room, members } => clean(&format!(
                "-- {room}: {}: {}",
                plural(members.len(), "member", "members"),
                members.join(", ")
            )),
            Output::Rooms { rooms } if rooms.is_empty() => {
                "-- no rooms yet; /join #name makes one".into()
            }
            Output::Rooms { rooms } => {
                let mut s = format!("-- {}:", plural(rooms.len(), "room", "rooms"));
                for r in rooms {
                    let _ = write!(
                        s,
                        "\n   {} ({}, owner {})",
                        r.room,
                        plural(r.members as usize, "member", "members"),
                        r.owner
                    );
                }
                clean(&s)
            }
            Output::Warning { message, .. } => clean(&format!("!! {message}")),
            Output::Reachable {
                address,
                reachable: true,
            } => clean(&format!(
                "-- the router reaches you at {address}: others dial you directly"
            )),
            Output::Reachable {
                address,
                reachable: false,
            } => clean(&format!(
                "-- the router cannot reach you at {address} (a firewall or NAT): others \
                 reach you through the router"
            )),
            Output::Whois {
                nick,
                address,
                key,
                known,
                pending,
                away,
                rooms,
                idle_secs,
            } => {
                let or = |s: &str, none: &str| {
                    if s.is_empty() {
                        none.to_owned()
                    } else {
                        s.to_owned()
                    }
                };
                let mut s = format!(
                    "-- {nick}: {}\n   key {}",
                    or(address, "offline"),
                    or(key, "(never logged in)")
                );
                if !away.is_empty() {
                    let _ = write!(s, "\n   away: {away}");
                }
                if !rooms.is_empty() {
                    let _ = write!(s, "\n   in {}", rooms.join(", "));
                }
                if let Some(idle) = idle_secs {
                    let _ = write!(s, "\n   idle {}", idle_text(*idle));
                }
                if !known.is_empty() && known != key {
                    let _ = write!(s, "\n   first met with key {known}");
                }
                if !pending.is_empty() {
                    let _ = write!(
                        s,
                        "\n   came back with key {pending}: /trust {nick} accepts it"
                    );
                }
                clean(&s)
            }
            Output::Trusted { nick, key } => {
                clean(&format!("-- trusting {nick}'s key {key} from now on"))
            }
            Output::Users { users, .. } if users.is_empty() => "-- no users online".into(),
            Output::Users { users, away } => clean(&format!(
                "-- {} online: {}",
                plural(users.len(), "user", "users"),
                users
                    .iter()
                    .map(|u| match away.get(u) {
                        Some(why) => format!("{u} (away: {why})"),
                        None => u.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Output::History {
                conversation,
                messages,
            } if messages.is_empty() => clean(&format!("-- no history for {conversation}")),
            Output::History {
                conversation,
                messages,
            } => {
                let mut s = clean(&format!(
                    "-- history of {conversation}: last {}",
                    plural(messages.len(), "message", "messages")
                ));
                for m in messages {
                    s.push('\n');
                    s.push_str(&message_line(m, colour));
                }
                s
            }
            Output::Error { message } => prefix_lines("!! ", message),
            Output::Info { message } => prefix_lines("-- ", message),
        }
    }
}

/// Whether human lines carry colour: on for a person's terminal, off for
/// pipes, `NO_COLOR` and `TERM=dumb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    On,
    Off,
}

impl Colour {
    /// On when `stdout_is_terminal`, unless `NO_COLOR` is set (to
    /// anything: no-color.org) or `TERM` is `dumb`.
    pub fn detect(stdout_is_terminal: bool) -> Colour {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if stdout_is_terminal && !no_color && !dumb {
            Colour::On
        } else {
            Colour::Off
        }
    }
}

/// SGR colours a nick may get: the six hues and their bright forms, never
/// black or white, which vanish on one background or the other.
const NICK_COLOURS: [u8; 12] = [31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96];
/// Bold and reverse video: a line that names the reader.
const MENTION: &str = "\x1b[1;7m";
const RESET: &str = "\x1b[0m";

/// The SGR colour of `nick`: the same for one nick in any case, on every
/// run and every machine (it is taken from a SHA-256 of the folded nick).
pub fn nick_colour(nick: &str) -> u8 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(nick.to_ascii_lowercase().as_bytes());
    NICK_COLOURS[usize::from(digest[0]) % NICK_COLOURS.len()]
}

/// `nick`, cleaned, in its colour when `colour` is on.
fn paint(nick: &str, colour: Colour) -> String {
    match colour {
        Colour::On => format!("\x1b[{}m{}{RESET}", nick_colour(nick), clean(nick)),
        Colour::Off => clean(nick),
    }
}

/// `12:03 #rust <bob> hello`, with `[late]` before the body of a late one.
fn message_line(m: &MessageView, colour: Colour) -> String {
    let at = clock(m.sent_at_ms);
    let conv = clean(&m.conversation);
    let from = paint(&m.from, colour);
    match m.kind.as_deref() {
        Some("created") => return format!("{at} {conv} -- {from} created {}", clean(&m.body)),
        Some("topic") => {
            return format!(
                "{at} {conv} -- {from} changed the topic to: {}",
                clean(&m.body).replace('\n', " ")
            )
        }
        // The author is the new nick; the body, the old.
        Some("nick") => {
            return format!(
                "{at} {conv} -- {} is now known as {from}",
                clean(&m.body).replace('\n', " ")
            )
        }
        _ => {}
    }
    let late = if m.late { "[late] " } else { "" };
    // Continuation lines of a multi-line body are indented under the body so
    // they cannot be mistaken for a message of their own; the indent counts
    // what the head shows, not its colour codes.
    let (head, shown, text) = match super::command::action_text(&m.body) {
        // IRC's `/me`: `* alice waves`.
        Some(action) => (
            format!("{at} {conv} {late}* {from} "),
            format!("{at} {conv} {late}* {} ", clean(&m.from)),
            action,
        ),
        None => (
            format!("{at} {conv} <{from}> {late}"),
            format!("{at} {conv} <{}> {late}", clean(&m.from)),
            m.body.as_str(),
        ),
    };
    let indent = " ".repeat(shown.chars().count());
    let cleaned = clean(text);
    let lines = cleaned.split('\n').map(|l| match colour {
        // Each line is marked on its own, after its indent: a terminal may
        // not carry the attribute across a line break.
        Colour::On if m.mention => format!("{MENTION}{l}{RESET}"),
        _ => l.to_owned(),
    });
    head + &lines.collect::<Vec<_>>().join(&format!("\n{indent}"))
}

/// Whether `body` names `nick` as a word (any case): `bob: hi` and
/// `thanks, Bob!` do, `bobby` does not.
pub fn mentions(body: &str, nick: &str) -> bool {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let lower = body.to_ascii_lowercase();
    let nick = nick.to_ascii_lowercase();
    if nick.is_empty() {
        return false;
    }
    lower.match_indices(&nick).any(|(i, _)| {
        let before = lower[..i].chars().next_back();
        let after = lower[i + nick.len()..].chars().next();
        !before.is_some_and(is_name) && !after.is_some_and(is_name)
    })
}

/// `HH:MM` today, `YYYY-MM-DD HH:MM` on another day.
fn when(ms: i64) -> String {
    match Local.timestamp_millis_opt(ms).single() {
        Some(t) if t.date_naive() == Local::now().date_naive() => t.format("%H:%M").to_string(),
        Some(t) => t.format("%Y-%m-%d %H:%M").to_string(),
        None => "??:??".into(),
    }
}

/// `HH:MM` in local time; `??:??` for a time chrono cannot represent.
pub(super) fn clock(ms: i64) -> String {
    match Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%H:%M").to_string(),
        None => "??:??".into(),
    }
}

/// An idle time as IRC clients show it: `3m 12s`, `2h 5m`, `4d 1h`.
fn idle_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn prefix_lines(prefix: &str, text: &str) -> String {
    clean(text)
        .lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Text from other peers reaches a person's terminal: control characters
/// (escape sequences could move the cursor or retitle the window) are
/// replaced; newlines stay, tabs become a space.
pub(super) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' => '\n',
            '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn view(late: bool) -> MessageView {
        MessageView {
            conversation: "#rust".into(),
            from: "bob".into(),
            body: "hello  there".into(),
            author_seq: 7,
            lamport: 42,
            sent_at_ms: 1_700_000_000_000,
            late,
            kind: None,
            mention: false,
        }
    }

    fn json_of(out: &Output) -> Value {
        let line = out.to_json();
        assert!(!line.contains('\n'), "one line: {line}");
        serde_json::from_str(&line).expect("valid JSON")
    }

    #[test]
    fn message_json_has_exactly_the_contract_fields() {
        let v = json_of(&Output::Message(view(true)));
        assert_eq!(
            v,
            json!({
                "type": "message", "conversation": "#rust", "from": "bob",
                "body": "hello  there", "author_seq": 7, "lamport": 42,
                "sent_at_ms": 1_700_000_000_000i64, "late": true
            })
        );
    }

    #[test]
    fn other_json_shapes() {
        let cases = [
            (
                Output::Ready {
                    nick: "alice".into(),
                    listen: "127.0.0.1:7001".into(),
                    reachable: false,
                },
                json!({"type": "ready", "nick": "alice", "listen": "127.0.0.1:7001", "reachable": false}),
            ),
            (
                Output::Reachable {
                    address: "198.51.100.4:7000".into(),
                    reachable: true,
                },
                json!({"type": "reachable", "address": "198.51.100.4:7000", "reachable": true}),
            ),
            (
                Output::Sent {
                    conversation: "#rust".into(),
                    author_seq: 3,
                    delivered: vec!["bob".into()],
                    pending: vec!["carol".into()],
                },
                json!({"type": "sent", "conversation": "#rust", "author_seq": 3,
                       "delivered": ["bob"], "pending": ["carol"]}),
            ),
            (
                Output::Joined {
                    room: "#rust".into(),
                    members: vec!["a".into(), "b".into()],
                    version: 12,
                    created: false,
                },
                json!({"type": "joined", "room": "#rust", "members": ["a", "b"],
                       "version": 12, "created": false}),
            ),
            (
                Output::Left {
                    room: "#rust".into(),
                    reason: "deleted".into(),
                },
                json!({"type": "left", "room": "#rust", "reason": "deleted"}),
            ),
            (
                Output::Who {
                    room: "#rust".into(),
                    members: vec!["a".into()],
                },
                json!({"type": "who", "room": "#rust", "members": ["a"]}),
            ),
            (
                Output::Rooms {
                    rooms: vec![RoomView {
                        room: "#rust".into(),
                        members: 3,
                        owner: "alice".into(),
                    }],
                },
                json!({"type": "rooms", "rooms": [{"room": "#rust", "members": 3, "owner": "alice"}]}),
            ),
            (
                Output::Users {
                    users: vec!["a".into(), "b".into()],
                    away: [("b".to_string(), "lunch".to_string())].into(),
                },
                json!({"type": "users", "users": ["a", "b"], "away": {"b": "lunch"}}),
            ),
            (
                Output::Whois {
                    nick: "bob".into(),
                    address: "127.0.0.1:1".into(),
                    key: "SHA256:k".into(),
                    known: "SHA256:k".into(),
                    pending: String::new(),
                    away: "lunch".into(),
                    rooms: vec!["#rust".into()],
                    idle_secs: Some(192),
                },
                json!({"type": "whois", "nick": "bob", "address": "127.0.0.1:1",
                       "key": "SHA256:k", "known": "SHA256:k", "pending": "",
                       "away": "lunch", "rooms": ["#rust"], "idle_secs": 192}),
            ),
            (
                Output::History {
                    conversation: "@bob".into(),
                    messages: vec![view(false)],
                },
                json!({"type": "history", "conversation": "@bob", "messages": [{
                    "conversation": "#rust", "from": "bob", "body": "hello  there",
                    "author_seq": 7, "lamport": 42, "sent_at_ms": 1_700_000_000_000i64,
                    "late": false
                }]}),
            ),
            (
                Output::error("boom"),
                json!({"type": "error", "message": "boom"}),
            ),
            (Output::info("hi"), json!({"type": "info", "message": "hi"})),
            (
                Output::Presence {
                    room: "#rust".into(),
                    nick: "bob".into(),
                    event: "quit".into(),
                    message: String::new(),
                },
                json!({"type": "presence", "room": "#rust", "nick": "bob", "event": "quit"}),
            ),
            (
                Output::Presence {
                    room: "#rust".into(),
                    nick: "bob".into(),
                    event: "left".into(),
                    message: "see ya".into(),
                },
                json!({"type": "presence", "room": "#rust", "nick": "bob", "event": "left",
                       "message": "see ya"}),
            ),
            (
                Output::Router {
                    state: "lost".into(),
                },
                json!({"type": "router", "state": "lost"}),
            ),
            (
                Output::Topic {
                    room: "#rust".into(),
                    topic: "fearless".into(),
                    by: "bob".into(),
                    set_at_ms: 5,
                },
                json!({"type": "topic", "room": "#rust", "topic": "fearless", "by": "bob", "set_at_ms": 5}),
            ),
            (
                Output::Away {
                    nick: "bob".into(),
                    message: "lunch".into(),
                },
                json!({"type": "away", "nick": "bob", "message": "lunch"}),
            ),
            (
                Output::Message(MessageView {
                    mention: true,
                    kind: Some("topic".into()),
                    ..view(false)
                }),
                json!({"type": "message", "conversation": "#rust", "from": "bob",
                       "body": "hello  there", "author_seq": 7, "lamport": 42,
                       "sent_at_ms": 1_700_000_000_000i64, "late": false,
                       "kind": "topic", "mention": true}),
            ),
        ];
        for (out, want) in cases {
            assert_eq!(json_of(&out), want, "{out:?}");
            // And it reads back: scripts written in Rust can use the same type.
            let back: Output = serde_json::from_str(&out.to_json()).expect("round trip");
            assert_eq!(back, out);
        }
    }

    #[test]
    fn human_message_lines() {
        let hhmm = clock(1_700_000_000_000);
        assert_eq!(hhmm.len(), 5);
        assert_eq!(hhmm.as_bytes()[2], b':');
        let line = Output::Message(view(false)).to_human();
        assert_eq!(line, format!("{hhmm} #rust <bob> hello  there"));
        let late = Output::Message(view(true)).to_human();
        assert_eq!(late, format!("{hhmm} #rust <bob> [late] hello  there"));
        let private = Output::Message(MessageView {
            conversation: "@bob".into(),
            ..view(false)
        });
        assert_eq!(
            private.to_human(),
            format!("{hhmm} @bob <bob> hello  there")
        );
    }

    #[test]
    fn an_action_reads_as_irc_shows_it() {
        let hhmm = clock(1_700_000_000_000);
        let m = Output::Message(MessageView {
            from: "alice".into(),
            body: "\u{1}ACTION waves\u{1}".into(),
            ..view(false)
        });
        assert_eq!(m.to_human(), format!("{hhmm} #rust * alice waves"));
        // Scripts see the body as sent.
        assert_eq!(json_of(&m)["body"], "\u{1}ACTION waves\u{1}");
    }

    #[test]
    fn a_creation_event_reads_as_one_and_says_so_in_json() {
        let hhmm = clock(1_700_000_000_000);
        let m = Output::Message(MessageView {
            from: "alice".into(),
            body: "#Rust".into(),
            kind: Some("created".into()),
            ..view(false)
        });
        assert_eq!(m.to_human(), format!("{hhmm} #rust -- alice created #Rust"));
        assert_eq!(json_of(&m)["kind"], "created");
    }

    #[test]
    fn topics_and_away_read_as_irc_shows_them() {
        let hhmm = clock(1_700_000_000_000);
        let m = Output::Message(MessageView {
            body: "all about\nlifetimes".into(),
            kind: Some("topic".into()),
            ..view(false)
        });
        assert_eq!(
            m.to_human(),
            format!("{hhmm} #rust -- bob changed the topic to: all about lifetimes")
        );
        let topic = |topic: &str, by: &str| Output::Topic {
            room: "#rust".into(),
            topic: topic.into(),
            by: by.into(),
            set_at_ms: 1_700_000_000_000,
        };
        assert_eq!(
            topic("", "").to_human(),
            "-- #rust has no topic; /topic TEXT sets one"
        );
        let day = Local
            .timestamp_millis_opt(1_700_000_000_000)
            .single()
            .unwrap()
            .format("%Y-%m-%d %H:%M");
        assert_eq!(
            topic("fearless", "bob").to_human(),
            format!("-- topic of #rust: fearless (set by bob, {day})")
        );
        // Set today: the time alone.
        let now = crate::message::now_ms();
        let today = Output::Topic {
            room: "#rust".into(),
            topic: "fearless".into(),
            by: "bob".into(),
            set_at_ms: now,
        };
        assert_eq!(
            today.to_human(),
            format!("-- topic of #rust: fearless (set by bob, {})", clock(now))
        );
        let away = Output::Away {
            nick: "bob".into(),
            message: "lunch\u{1b}[2J".into(),
        };
        assert_eq!(away.to_human(), "-- bob is away: lunch\u{FFFD}[2J");
    }

    #[test]
    fn nicks_have_stable_colours_and_mentions_stand_out() {
        // Stable: one nick, any case, one colour, from a fixed palette.
        assert_eq!(nick_colour("bob"), nick_colour("BoB"));
        assert!(NICK_COLOURS.contains(&nick_colour("bob")));
        let all: std::collections::HashSet<u8> = [
            "alice", "bob", "carol", "dave", "eve", "mallory", "trent", "peggy",
        ]
        .iter()
        .map(|n| nick_colour(n))
        .collect();
        assert!(all.len() > 3, "nicks spread over the palette: {all:?}");
        let c = nick_colour("bob");
        let plain = Output::Message(view(false));
        assert_eq!(
            plain.to_human_in(Colour::On),
            format!(
                "{} #rust <\x1b[{c}mbob\x1b[0m> hello  there",
                clock(1_700_000_000_000)
            )
        );
        // Off: exactly the plain line.
        assert_eq!(plain.to_human_in(Colour::Off), plain.to_human());
        let mention = Output::Message(MessageView {
            mention: true,
            body: "alice:\nlook".into(),
            ..view(false)
        });
        let line = mention.to_human_in(Colour::On);
        assert!(line.contains("\x1b[1;7malice:\x1b[0m"), "{line:?}");
        assert!(line.contains("\x1b[1;7mlook\x1b[0m"), "{line:?}");
        // The continuation indent counts what is shown, not colour codes.
        let second = line.lines().nth(1).unwrap();
        let shown_head = format!("{} #rust <bob> ", clock(1_700_000_000_000));
        assert!(
            second.starts_with(&" ".repeat(shown_head.len())),
            "{second:?}"
        );
        assert!(
            !second.starts_with(&" ".repeat(shown_head.len() + 1)),
            "{second:?}"
        );
        // A nick with control characters is cleaned inside its colour.
        let evil = Output::Message(MessageView {
            from: "b\u{1b}[2Jb".into(),
            ..view(false)
        });
        assert!(!evil.to_human_in(Colour::On).contains("\u{1b}[2J"));
    }

    #[test]
    fn a_mention_is_the_nick_as_a_word() {
        assert!(mentions("alice: hi", "alice"));
        assert!(mentions("thanks, Alice!", "alice"));
        assert!(mentions("ALICE", "alice"));
        assert!(mentions("hey @alice.", "alice"));
        assert!(!mentions("malice", "alice"));
        assert!(!mentions("alice_bot says", "alice"));
        assert!(!mentions("alice-2 says", "alice"));
        assert!(!mentions("nothing here", "alice"));
        assert!(mentions("bobby and bob", "bob"));
        assert!(mentions("é bob é", "bob"));
        assert!(!mentions("", "bob"));
        assert!(!mentions("bob", ""));
    }

    #[test]
    fn human_lines_neutralise_control_characters() {
        let m = MessageView {
            body: "a\u{1b}[2Jb\nc".into(),
            ..view(false)
        };
        let line = Output::Message(m).to_human();
        assert!(!line.contains('\u{1b}'), "{line:?}");
        let mut lines = line.lines();
        assert!(lines
            .next()
            .is_some_and(|l| l.ends_with("<bob> a\u{FFFD}[2Jb")));
        assert!(lines
            .next()
            .is_some_and(|l| l.trim_start() == "c" && l.starts_with("   ")));
    }

    #[test]
    fn human_sent_speaks_only_when_someone_is_missing() {
        let sent = |pending: Vec<String>| Output::Sent {
            conversation: "#rust".into(),
            author_seq: 1,
            delivered: vec!["bob".into()],
            pending,
        };
        assert_eq!(sent(vec![]).to_human(), "");
        assert_eq!(
            sent(vec!["carol".into(), "dave".into()]).to_human(),
            "-- stored; not delivered yet to carol, dave: they will get it when they are back online"
        );
    }

    #[test]
    fn the_mailbox_says_what_waited_and_what_expired() {
        let m = |count, expired| Output::Mailbox { count, expired };
        assert_eq!(m(0, 0).to_human(), "", "nothing waited: nothing said");
        assert_eq!(m(1, 0).to_human(), "-- 1 message waited for you");
        assert_eq!(m(3, 0).to_human(), "-- 3 messages waited for you");
        assert_eq!(
            m(3, 2).to_human(),
            "-- 3 messages waited for you; 2 messages for you expired unread at the router"
        );
        assert_eq!(
            m(0, 1).to_human(),
            "-- 1 message for you expired unread at the router"
        );
        assert_eq!(
            m(3, 0).to_json(),
            r#"{"type":"mailbox","count":3,"expired":0}"#
        );
    }

    #[test]
    fn human_whois_and_users_show_away_rooms_and_idle() {
        let whois = Output::Whois {
            nick: "bob".into(),
            address: "127.0.0.1:1".into(),
            key: "SHA256:k".into(),
            known: "SHA256:k".into(),
            pending: String::new(),
            away: "gone to lunch".into(),
            rooms: vec!["#rust".into(), "#go".into()],
            idle_secs: Some(192),
        };
        assert_eq!(
            whois.to_human(),
            "-- bob: 127.0.0.1:1\n   key SHA256:k\n   away: gone to lunch\n   in #rust, #go\n   idle 3m 12s"
        );
        let users = Output::Users {
            users: vec!["alice".into(), "bob".into(), "carol".into()],
            away: [("bob".to_string(), "lunch".to_string())].into(),
        };
        assert_eq!(
            users.to_human(),
            "-- 3 users online: alice, bob (away: lunch), carol"
        );
        assert_eq!(idle_text(5), "5s");
        assert_eq!(idle_text(3 * 3600 + 61), "3h 1m");
        assert_eq!(idle_text(2 * 86400 + 3600), "2d 1h");
    }

    #[test]
    fn human_errors_and_notices() {
        assert_eq!(
            Output::error("no such room #x").to_human(),
            "!! no such room #x"
        );
        assert_eq!(Output::info("a\nb").to_human(), "-- a\n-- b");
        let joined = Output::Joined {
            room: "#rust".into(),
            members: vec!["a".into(), "b".into(), "c".into()],
            version: 42,
            created: false,
        };
        assert_eq!(
            joined.to_human(),
            "-- joined #rust (3 members: a, b, c; history: 42 messages)"
        );
        let new = Output::Joined {
            room: "#new".into(),
            members: vec!["me".into()],
            version: 0,
            created: true,
        };
        assert_eq!(
            new.to_human(),
            "-- joined #new (new room) (1 member: me; history: 0 messages)"
        );
        let history = Output::History {
            conversation: "#rust".into(),
            messages: vec![view(false), view(true)],
        };
        assert_eq!(history.to_human().lines().count(), 3);
        let one = Output::Joined {
            room: "#r".into(),
            members: vec!["a".into(), "b".into()],
            version: 1,
            created: false,
        };
        assert_eq!(
            one.to_human(),
            "-- joined #r (2 members: a, b; history: 1 message)"
        );
    }

    #[test]
    fn leaving_reads_as_irc_does() {
        let left = |reason: &str| {
            Output::Left {
                room: "#rust".into(),
                reason: reason.into(),
            }
            .to_human()
        };
        assert_eq!(left("left"), "-- you left #rust");
        assert_eq!(left(""), "-- you left #rust");
        assert_eq!(left("deleted"), "-- you deleted #rust");
        assert_eq!(left("deleted by a"), "-- left #rust (deleted by a)");
        let said = |event: &str, message: &str| {
            Output::Presence {
                room: "#rust".into(),
                nick: "bob".into(),
                event: event.into(),
                message: message.into(),
            }
            .to_human()
        };
        let presence = |event: &str| said(event, "");
        assert_eq!(presence("joined"), "-- bob has joined #rust");
        assert_eq!(presence("left"), "-- bob has left #rust");
        assert_eq!(presence("quit"), "-- bob has quit (#rust)");
        assert_eq!(presence("timeout"), "-- bob has timed out (#rust)");
        // Parting messages, as IRC shows them.
        assert_eq!(said("left", "see ya"), "-- bob has left #rust (see ya)");
        assert_eq!(said("quit", "bye all"), "-- bob has quit (#rust): bye all");
        // What another peer says reaches the screen cleaned.
        assert_eq!(
            said("quit", "bye\u{1b}[2J\nall"),
            "-- bob has quit (#rust): bye\u{FFFD}[2J all"
        );
        let router = |state: &str| {
            Output::Router {
                state: state.into(),
            }
            .to_human()
        };
        assert_eq!(router("lost"), "-- lost the router, retrying");
        assert_eq!(router("back"), "-- router back");
    }
}
