//! Names: nicks, rooms and conversations, the rules they follow, and the
//! case-folded keys under which they are compared and stored.
//!
//! A nick is 1–32 of `A-Z a-z 0-9 _ -`; a room is `#` followed by 1–64 of the
//! same. Names compare without case (`Alice` is `alice`), and are shown as
//! their owner first wrote them.

use std::fmt;

/// Longest nick, in characters.
pub const MAX_NICK: usize = 32;
/// Longest room name after the `#`, in characters.
pub const MAX_ROOM: usize = 64;
/// Longest message body, in characters.
pub const MAX_BODY_CHARS: usize = 10_000;
/// Longest parting message (of a leave or a quit), in characters.
pub const MAX_PARTING_CHARS: usize = 300;

/// A name that breaks the rules, with a message that says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

impl NameError {
    pub fn new(msg: impl Into<String>) -> NameError {
        NameError(msg.into())
    }
}

fn allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn check_chars(kind: &str, shown: &str, part: &str, max: usize) -> Result<(), NameError> {
    if part.is_empty() || part.len() > max || !part.chars().all(allowed_char) {
        return Err(NameError(format!(
            "invalid {kind} {shown:?}: use 1-{max} characters of A-Z a-z 0-9 _ -"
        )));
    }
    Ok(())
}

/// A valid nick, kept as written; [`Nick::key`] is its case-folded form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nick(String);

impl Nick {
    pub fn parse(s: &str) -> Result<Nick, NameError> {
        check_chars("nick", s, s, MAX_NICK)?;
        Ok(Nick(s.to_owned()))
    }

    /// The nick as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form every comparison uses.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// The nick a peer goes by now, shared by the parts that speak for it: a
/// nick change (`/nick`) sets it once and every holder sees the new one.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct NickCell(std::sync::Arc<std::sync::RwLock<Nick>>);

impl NickCell {
    pub fn new(nick: Nick) -> NickCell {
        NickCell(std::sync::Arc::new(std::sync::RwLock::new(nick)))
    }

    /// The nick now.
    pub fn get(&self) -> Nick {
        // A plain value: a panic elsewhere cannot leave it half-written.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, nick: Nick) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = nick;
    }
}

impl fmt::Display for Nick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid room name, `#` included, kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Room(String);

impl Room {
    pub fn parse(s: &str) -> Result<Room, NameError> {
        let Some(rest) = s.strip_prefix('#') else {
            return Err(NameError(format!(
                "invalid room {s:?}: a room starts with '#', then 1-{MAX_ROOM} characters of A-Z a-z 0-9 _ -"
            )));
        };
        check_chars("room", s, rest, MAX_ROOM)?;
        Ok(Room(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form, `#` included: also the room's conversation key.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name handed to `Find`: a nick or a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    Nick(Nick),
    Room(Room),
}

impl Name {
    pub fn parse(s: &str) -> Result<Name, NameError> {
        if s.starts_with('#') {
            Room::parse(s).map(Name::Room)
        } else {
            Nick::parse(s).map(Name::Nick)
        }
    }
}

/// The canonical key of the private conversation between two nicks: the same
/// on both sides, whoever computes it.
pub fn private_key(a: &Nick, b: &Nick) -> String {
    let (a, b) = (a.key(), b.key());
    if a <= b {
        format!("@{a}+{b}")
    } else {
        format!("@{b}+{a}")
    }
}

/// A conversation, as stored and sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Conversation {
    Room(Room),
    /// A private chat; the two nicks, case-folded and sorted.
    Private(String, String),
}

impl Conversation {
    /// Parses a canonical key as sent on the wire (`#room` or `@a+b`).
    pub fn parse_key(key: &str) -> Result<Conversation, NameError> {
        if key.starts_with('#') {
            let room = Room::parse(key)?;
            if room.key() != key {
                return Err(NameError(format!(
                    "invalid conversation {key:?}: room keys are lowercase"
                )));
            }
            return Ok(Conversation::Room(room));
        }
        let bad = || {
            NameError(format!(
                "invalid conversation {key:?}: expected #room or @nick+nick (lowercase, sorted)"
            ))
        };
        let pair = key.strip_prefix('@').ok_or_else(bad)?;
        let (a, b) = pair.split_once('+').ok_or_else(bad)?;
        let (na, nb) = (Nick::parse(a)?, Nick::parse(b)?);
        if na.key() != a || nb.key() != b || a >= b {
            return Err(bad());
        }
        Ok(Conversation::Private(a.to_owned(), b.to_owned()))
    }

    /// The canonical key.
    pub fn key(&self) -> String {
        match self {
            Conversation::Room(r) => r.key(),
            Conversation::Private(a, b) => format!("@{a}+{b}"),
        }
    }

    /// Whether `nick` may take part in this conversation as a private party.
    pub fn is_party(&self, nick: &Nick) -> bool {
        match self {
            Conversation::Room(_) => false,
            Conversation::Private(a, b) => {
                let k = nick.key();
                *a == k || *b == k
            }
        }
    }

    /// How `me` sees this conversation: `#room`, or `@other`.
    pub fn display_for(&self, me: &Nick) -> String {
        match self {
            Conversation::Room(r) => r.key(),
            Conversation::Private(a, b) => {
                if *a == me.key() {
                    format!("@{b}")
                } else {
                    format!("@{a}")
                }
            }
        }
    }
}

/// Checks a message body: 1 to 10,000 characters.
pub fn check_body(body: &str) -> Result<(), NameError> {
    if body.is_empty() {
        return Err(NameError("empty message: nothing to send".into()));
    }
    let n = body.chars().count();
    if n > MAX_BODY_CHARS {
        return Err(NameError(format!(
            "message too long: {n} characters, at most {MAX_BODY_CHARS}"
        )));
    }
    Ok(())
}

/// Checks a parting message, the one a leave or a quit carries to the
/// room's members: at most 300 characters and one line, with no control
/// characters (they would reach others' terminals). Empty is none.
pub fn check_parting(message: &str) -> Result<(), NameError> {
    let n = message.chars().count();
    if n > MAX_PARTING_CHARS {
        return Err(NameError(format!(
            "parting message too long: {n} characters, at most {MAX_PARTING_CHARS}"
        )));
    }
    if let Some(c) = message.chars().find(|c| c.is_control()) {
        return Err(NameError(format!(
            "parting message holds a control character ({}): use one line of plain text",
            c.escape_unicode()
        )));
    }
    Ok(())
}

/// Checks a chat address: `host:port` that parses as a socket address or a
/// plain host name with a port.
pub fn check_address(addr: &str) -> Result<(), NameError> {
    let bad = || {
        NameError(format!(
            "invalid address {addr:?}: expected host:port, e.g. 127.0.0.1:7000"
        ))
    };
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return if sa.port() != 0 { Ok(()) } else { Err(bad()) };
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicks_follow_the_rules() {
        assert!(Nick::parse("alice").is_ok());
        assert!(Nick::parse("A_b-9").is_ok());
        assert!(Nick::parse(&"x".repeat(32)).is_ok());
        assert!(Nick::parse(&"x".repeat(33)).is_err());
        assert!(Nick::parse("").is_err());
        assert!(Nick::parse("#alice").is_err());
        assert!(Nick::parse("@alice").is_err());
        assert!(Nick::parse("al ice").is_err());
        assert!(Nick::parse("élan").is_err());
        let err = Nick::parse("a b").unwrap_err().to_string();
        assert!(err.contains("A-Z a-z 0-9 _ -"), "{err}");
    }

    #[test]
    fn names_compare_without_case() {
        let a = Nick::parse("Alice").unwrap();
        let b = Nick::parse("aLICE").unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(a.as_str(), "Alice");
        assert_eq!(Room::parse("#Rust").unwrap().key(), "#rust");
    }

    #[test]
    fn rooms_follow_the_rules() {
        assert!(Room::parse("#rust").is_ok());
        assert!(Room::parse("rust").is_err());
        assert!(Room::parse("#").is_err());
        assert!(Room::parse(&format!("#{}", "r".repeat(64))).is_ok());
        assert!(Room::parse(&format!("#{}", "r".repeat(65))).is_err());
        assert!(Room::parse("##rust").is_err());
    }

    #[test]
    fn private_keys_are_the_same_on_both_sides() {
        let a = Nick::parse("Bob").unwrap();
        let b = Nick::parse("alice").unwrap();
        assert_eq!(private_key(&a, &b), "@alice+bob");
        assert_eq!(private_key(&b, &a), "@alice+bob");
        let c = Conversation::parse_key("@alice+bob").unwrap();
        assert_eq!(c.display_for(&a), "@alice");
        assert_eq!(c.display_for(&b), "@bob");
        assert!(Conversation::parse_key("@bob+alice").is_err());
        assert!(Conversation::parse_key("@Alice+bob").is_err());
        assert!(Conversation::parse_key("#Rust").is_err());
        assert!(Conversation::parse_key("rust").is_err());
    }

    #[test]
    fn bodies_are_bounded() {
        assert!(check_body("").is_err());
        assert!(check_body("hi").is_ok());
        assert!(check_body(&"é".repeat(10_000)).is_ok());
        assert!(check_body(&"x".repeat(10_001)).is_err());
    }

    #[test]
    fn parting_messages_are_one_short_line() {
        assert!(check_parting("").is_ok());
        assert!(check_parting("see ya (back soon)").is_ok());
        assert!(check_parting(&"é".repeat(300)).is_ok());
        let long = check_parting(&"x".repeat(301)).unwrap_err().to_string();
        assert!(long.contains("too long") && long.contains("300"), "{long}");
        for bad in ["two\nlines", "tab\there", "esc\u{1b}[2J", "nul\0", "\u{85}"] {
            let e = check_parting(bad).unwrap_err().to_string();
            assert!(e.contains("control character"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn addresses_are_host_port() {
        assert!(check_address("127.0.0.1:7000").is_ok());
        assert!(check_address("[::1]:7000").is_ok());
        assert!(check_address("localhost:7000").is_ok());
        assert!(check_address("localhost").is_err());
        assert!(check_address("127.0.0.1:0").is_err());
        assert!(check_address("a b:80").is_err());
        assert!(check_address("").is_err());
    }
}
