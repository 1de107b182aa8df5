//! Input lines, parsed the way IRC clients do: `/name args` is a command, any
//! other line is a message to the current conversation, and `//text` sends
//! `/text` literally.
//!
//! The parser only checks what it can see on the line (names, body length,
//! counts); whether a room exists or a nick is online is the peer's business.

use crate::names::{check_body, check_parting, NameError, Nick, Room};

/// Where `/history` looks: a room, or the private conversation with a nick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Room(Room),
    Nick(Nick),
}

/// Which conversation `/switch` goes to: one by name, or the N-th of the
/// list `/switch` shows (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    Target(Target),
    Number(usize),
}

/// The body of a `/me` action: IRC's CTCP ACTION.
pub fn action_body(text: &str) -> String {
    format!("\u{1}ACTION {text}\u{1}")
}

/// The action text of a CTCP ACTION body, if `body` is one.
pub fn action_text(body: &str) -> Option<&str> {
    body.strip_prefix("\u{1}ACTION ")
        .map(|rest| rest.strip_suffix('\u{1}').unwrap_or(rest))
}

/// Every command name, aliases included, for Tab completion.
pub const COMMANDS: &[&str] = &[
    "/away",
    "/close",
    "/delete",
    "/exit",
    "/help",
    "/history",
    "/ignore",
    "/j",
    "/join",
    "/lastlog",
    "/leave",
    "/list",
    "/me",
    "/msg",
    "/names",
    "/nick",
    "/nicklist",
    "/part",
    "/q",
    "/query",
    "/quit",
    "/reach",
    "/rooms",
    "/switch",
    "/topic",
    "/trust",
    "/unignore",
    "/users",
    "/wc",
    "/who",
    "/whois",
    "/window",
];

/// One parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/join #room`
    Join(Room),
    /// `/leave [#room [MESSAGE]]`, alias `/part`; no room means the current
    /// one. MESSAGE, the parting message (IRC's), is told to the room's
    /// members: `-- alice has left #go (see ya)`. It needs its room first.
    Leave(Option<Room>, Option<String>),
    /// `/msg NICK TEXT`
    Msg(Nick, String),
    /// `/query NICK`: make the private conversation with NICK the current one.
    Query(Nick),
    /// `/who [#room]`, alias `/names`
    Who(Option<Room>),
    /// `/me ACTION`: an action in the current conversation, sent as a CTCP
    /// ACTION body (`\u{1}ACTION waves\u{1}`), shown as `* alice waves`.
    Me(String),
    /// `/switch [#room|@nick|N]`, alias `/window`: make a conversation you
    /// are in the current one; without an argument, list them.
    Switch(Option<Window>),
    /// `/topic [#room] [TEXT]`: with TEXT, set the room's topic (the
    /// current room by default); without, show it.
    Topic {
        room: Option<Room>,
        text: Option<String>,
    },
    /// `/away [MESSAGE]`: marked away with MESSAGE (told to whoever writes
    /// privately), or back without one.
    Away(Option<String>),
    /// `/rooms`, alias `/list`
    Rooms,
    /// `/users`
    Users,
    /// `/history [#room|@nick] [N]`
    History {
        target: Option<Target>,
        limit: Option<usize>,
    },
    /// `/delete #room`
    Delete(Room),
    /// `/whois NICK`: the nick's key fingerprint, known and bound.
    Whois(Nick),
    /// `/trust NICK`: accept the new key a known nick came back with.
    Trust(Nick),
    /// `/reach`: ask the router to dial this peer back again (after
    /// opening a port).
    Reach,
    /// `/help`
    Help,
    /// `/close`: close the current window (leaving its room, for a room).
    Close,
    /// `/nicklist`: show or hide the room's nick list (the windowed screen).
    NickList,
    /// `/ignore [NICK]`: hide NICK's lines from now on; alone, list who is
    /// ignored.
    Ignore(Option<Nick>),
    /// `/unignore NICK`
    Unignore(Nick),
    /// `/lastlog TEXT`: the local history's lines that hold TEXT (words,
    /// as SQLite's full-text search reads them), newest last.
    Lastlog(String),
    /// `/nick NEW`: be known as NEW from now on (the key stays).
    Nick(Nick),
    /// `/quit [MESSAGE]`, alias `/exit`: MESSAGE, the parting message, is
    /// told to the members of every room: `-- alice has quit (#go): bye`.
    Quit(Option<String>),
    /// Any line not starting with `/`: a message to the current conversation.
    Say(String),
}

/// One line per command, shown by `/help`.
pub const HELP: &str = "\
/join #room              join a room (created if new) and talk there (alias /j)
/leave [#room [MESSAGE]] leave a room, the current one by default, saying MESSAGE (alias /part)
/msg NICK TEXT           send a private message to NICK
/query NICK              talk privately to NICK from now on (alias /q)
/switch [#room|@nick|N]  go to a window: a conversation you are in, or N; alone, list them (alias /window)
/close                   close the current window (leaving its room, for a room)
/me ACTION               say what you do: * you ACTION
/who [#room]             list a room's members, the current room by default (alias /names)
/topic [#room] [TEXT]    show a room's topic, or set it to TEXT
/away [MESSAGE]          be away: MESSAGE is told to whoever writes to you; alone, be back
/rooms                   list the rooms (alias /list)
/users                   list the users online
/history [#room|@nick] [N]  show the last N messages of a conversation
/lastlog TEXT            search your whole history for TEXT
/ignore [NICK]           hide NICK's lines (alone, list who is ignored); /unignore NICK shows them again
/nick NEW                be known as NEW from now on (your key and history stay)
/nicklist                show or hide the nick list beside a room (full-screen mode)
/delete #room            delete a room you own
/whois NICK              show NICK's address and key fingerprint
/trust NICK              accept the new key NICK came back with (check with them first)
/reach                   ask the router to dial you back again (after opening a port)
/help                    show this help
/quit [MESSAGE]          leave the chat, saying MESSAGE in your rooms (alias /exit)
TEXT                     send TEXT to the current room or nick (//TEXT sends /TEXT)";

const USAGE_JOIN: &str = "/join #room";
const USAGE_ME: &str = "/me ACTION";
const USAGE_SWITCH: &str = "/switch [#room|@nick|N]";
const USAGE_MSG: &str = "/msg NICK TEXT";
const USAGE_QUERY: &str = "/query NICK";
const USAGE_WHO: &str = "/who [#room]";
const USAGE_ROOMS: &str = "/rooms";
const USAGE_USERS: &str = "/users";
const USAGE_HISTORY: &str = "/history [#room|@nick] [N]";
const USAGE_DELETE: &str = "/delete #room";
const USAGE_WHOIS: &str = "/whois NICK";
const USAGE_TRUST: &str = "/trust NICK";
const USAGE_HELP: &str = "/help";
const USAGE_REACH: &str = "/reach";
const USAGE_CLOSE: &str = "/close";
const USAGE_NICKLIST: &str = "/nicklist";
const USAGE_IGNORE: &str = "/ignore [NICK]";
const USAGE_UNIGNORE: &str = "/unignore NICK";
const USAGE_LASTLOG: &str = "/lastlog TEXT";
const USAGE_NICK: &str = "/nick NEW";

/// Why a line could not be parsed; the message is meant for the person typing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command name, without its slash.
    #[error("unknown command /{0}: /help lists commands")]
    Unknown(String),
    /// A required argument is missing; holds the usage.
    #[error("missing argument: usage: {0}")]
    Missing(&'static str),
    /// More arguments than the command takes; holds the usage.
    #[error("too many arguments: usage: {0}")]
    Extra(&'static str),
    /// A nick or room name that breaks the naming rules.
    #[error("{0}")]
    Name(NameError),
    /// A message body that is empty or over the length limit.
    #[error("{0}")]
    Body(NameError),
    /// A parting message (`/part`, `/quit`) over the length limit or with
    /// control characters.
    #[error("{0}")]
    Parting(NameError),
    /// `/history` was given a count that is not a positive integer.
    #[error("invalid count {0:?}: N must be a positive integer; usage: {USAGE_HISTORY}")]
    BadCount(String),
    /// An argument of the wrong kind, e.g. `/history bob` (nicks take `@` there).
    #[error("unexpected argument {arg:?}: usage: {usage}")]
    BadArgument { arg: String, usage: &'static str },
}

/// Parses one input line. `Ok(None)` for a blank line (only whitespace).
pub fn parse(line: &str) -> Result<Option<Command>, CommandError> {
    // Only the line ending is dropped: a message keeps its spaces as typed.
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    if line.starts_with("//") {
        // IRC habit: `//etc` sends "/etc".
        return say(&line[1..]).map(Some);
    }
    let Some(rest) = line.strip_prefix('/') else {
        return say(line).map(Some);
    };
    // The name runs from the slash to the first whitespace: `/ join` is no command.
    let (name, args) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let command = match name.to_ascii_lowercase().as_str() {
        // irssi's habit: `/join rust` is `/join #rust`.
        "join" | "j" => Command::Join(bare_room(one(args, USAGE_JOIN)?)?),
        // IRC's parting message comes after the room.
        "leave" | "part" => match split_word(args) {
            ("", _) => Command::Leave(None, None),
            (name, message) => Command::Leave(Some(room(name)?), parting(message)?),
        },
        "msg" => {
            let (who, text) = split_word(args);
            if who.is_empty() || text.trim().is_empty() {
                return Err(CommandError::Missing(USAGE_MSG));
            }
            check_body(text).map_err(CommandError::Body)?;
            Command::Msg(nick(who)?, text.to_owned())
        }
        "query" | "q" => Command::Query(nick(one(args, USAGE_QUERY)?)?),
        "me" => {
            let text = args.trim_start();
            if text.trim().is_empty() {
                return Err(CommandError::Missing(USAGE_ME));
            }
            let body = action_body(text);
            check_body(&body).map_err(CommandError::Body)?;
            Command::Me(text.to_owned())
        }
        "switch" | "window" => {
            Command::Switch(optional(args, USAGE_SWITCH)?.map(window).transpose()?)
        }
        "who" | "names" => Command::Who(optional(args, USAGE_WHO)?.map(room).transpose()?),
        "topic" => topic(args)?,
        "away" => match args.trim() {
            "" => Command::Away(None),
            _ => {
                let text = args.trim_start();
                check_body(text).map_err(CommandError::Body)?;
                Command::Away(Some(text.to_owned()))
            }
        },
        "rooms" | "list" => {
            none(args, USAGE_ROOMS)?;
            Command::Rooms
        }
        "users" => {
            none(args, USAGE_USERS)?;
            Command::Users
        }
        "history" => history(args)?,
        "delete" => Command::Delete(room(one(args, USAGE_DELETE)?)?),
        "whois" => Command::Whois(nick(one(args, USAGE_WHOIS)?)?),
        "trust" => Command::Trust(nick(one(args, USAGE_TRUST)?)?),
        "reach" => {
            none(args, USAGE_REACH)?;
            Command::Reach
        }
        "help" => {
            none(args, USAGE_HELP)?;
            Command::Help
        }
        "close" | "wc" => {
            none(args, USAGE_CLOSE)?;
            Command::Close
        }
        "nicklist" => {
            none(args, USAGE_NICKLIST)?;
            Command::NickList
        }
        "ignore" => Command::Ignore(optional(args, USAGE_IGNORE)?.map(nick).transpose()?),
        "unignore" => Command::Unignore(nick(one(args, USAGE_UNIGNORE)?)?),
        "lastlog" => {
            let text = args.trim();
            if text.is_empty() {
                return Err(CommandError::Missing(USAGE_LASTLOG));
            }
            check_body(text).map_err(CommandError::Body)?;
            Command::Lastlog(text.to_owned())
        }
        "nick" => Command::Nick(nick(one(args, USAGE_NICK)?)?),
        // `/quit bye all`: the rest of the line is the parting message.
        "quit" | "exit" => Command::Quit(parting(args.trim_start())?),
        _ => return Err(CommandError::Unknown(name.to_owned())),
    };
    Ok(Some(command))
}

/// `/topic [#room] [TEXT]`: a first word that starts with `#` names the
/// room (as IRC reads it); the rest, if any, is the new topic.
fn topic(args: &str) -> Result<Command, CommandError> {
    let (first, rest) = split_word(args);
    let (room, text) = if first.starts_with('#') {
        (Some(self::room(first)?), rest)
    } else {
        (None, args.trim_start())
    };
    if text.trim().is_empty() {
        return Ok(Command::Topic { room, text: None });
    }
    check_body(text).map_err(CommandError::Body)?;
    Ok(Command::Topic {
        room,
        text: Some(text.to_owned()),
    })
}

/// A parting message as typed (the text after the command or its room):
/// none when blank, refused as the router would refuse it.
fn parting(text: &str) -> Result<Option<String>, CommandError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    check_parting(text).map_err(CommandError::Parting)?;
    Ok(Some(text.to_owned()))
}

fn say(text: &str) -> Result<Command, CommandError> {
    check_body(text).map_err(CommandError::Body)?;
    Ok(Command::Say(text.to_owned()))
}

/// Splits off the first whitespace-separated word; the rest keeps its inner
/// and trailing spaces, only the separating whitespace is dropped.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

fn none(args: &str, usage: &'static str) -> Result<(), CommandError> {
    match args.split_whitespace().next() {
        None => Ok(()),
        Some(_) => Err(CommandError::Extra(usage)),
    }
}

fn optional<'a>(args: &'a str, usage: &'static str) -> Result<Option<&'a str>, CommandError> {
    let mut words = args.split_whitespace();
    let first = words.next();
    if words.next().is_some() {
        return Err(CommandError::Extra(usage));
    }
    Ok(first)
}

fn one<'a>(args: &'a str, usage: &'static str) -> Result<&'a str, CommandError> {
    optional(args, usage)?.ok_or(CommandError::Missing(usage))
}

fn room(s: &str) -> Result<Room, CommandError> {
    Room::parse(s).map_err(CommandError::Name)
}

/// A room name where the `#` may be left out (`/join rust`).
fn bare_room(s: &str) -> Result<Room, CommandError> {
    if s.starts_with('#') {
        room(s)
    } else {
        room(&format!("#{s}"))
    }
}

/// A nick, with an optional leading `@` (the way `/history` and the prompt
/// show private conversations), so `/msg @bob hi` works too.
fn nick(s: &str) -> Result<Nick, CommandError> {
    Nick::parse(s.strip_prefix('@').unwrap_or(s)).map_err(CommandError::Name)
}

/// `/switch`'s argument: `#room`, `@nick` or a bare nick, or a number.
fn window(word: &str) -> Result<Window, CommandError> {
    // Digits alone are a window number; a nick of digits alone is `@123`.
    if word.chars().all(|c| c.is_ascii_digit()) {
        return match word.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Window::Number(n)),
            _ => Err(CommandError::BadArgument {
                arg: word.to_owned(),
                usage: USAGE_SWITCH,
            }),
        };
    }
    if word.starts_with('#') {
        return Ok(Window::Target(Target::Room(room(word)?)));
    }
    Ok(Window::Target(Target::Nick(nick(word)?)))
}

/// `/history [#room|@nick] [N]`, the two in either order.
fn history(args: &str) -> Result<Command, CommandError> {
    let mut target = None;
    let mut limit = None;
    for word in args.split_whitespace() {
        if word.starts_with('#') || word.starts_with('@') {
            if target.is_some() {
                return Err(CommandError::Extra(USAGE_HISTORY));
            }
            target = Some(if word.starts_with('#') {
                Target::Room(room(word)?)
            } else {
                Target::Nick(nick(word)?)
            });
        } else if word.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') {
            if limit.is_some() {
                return Err(CommandError::Extra(USAGE_HISTORY));
            }
            match word.parse::<usize>() {
                Ok(n) if n > 0 => limit = Some(n),
                _ => return Err(CommandError::BadCount(word.to_owned())),
            }
        } else {
            return Err(CommandError::BadArgument {
                arg: word.to_owned(),
                usage: USAGE_HISTORY,
            });
        }
    }
    Ok(Command::History { target, limit })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::MAX_BODY_CHARS;

    fn ok(line: &str) -> Command {
        match parse(line) {
            Ok(Some(c)) => c,
            other => panic!("{:?} gave {other:.200?}", short(line)),
        }
    }

    fn err(line: &str) -> CommandError {
        match parse(line) {
            Err(e) => e,
            other => panic!("{:?} gave {other:.200?}, expected an error", short(line)),
        }
    }

    /// Keeps failure messages readable for the 10,000-character cases.
    fn short(line: &str) -> String {
        line.chars().take(60).collect()
    }

    fn r(s: &str) -> Room {
        Room::parse(s).unwrap()
    }

    fn n(s: &str) -> Nick {
        Nick::parse(s).unwrap()
    }

    #[test]
    fn blank_lines_are_nothing() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("\n"), Ok(None));
        assert_eq!(parse("\r\n"), Ok(None));
        assert_eq!(parse("    "), Ok(None));
        assert_eq!(parse(" \t \r\n"), Ok(None));
    }

    #[test]
    fn plain_text_is_said_as_typed() {
        assert_eq!(ok("hello"), Command::Say("hello".into()));
        assert_eq!(ok("hello\r\n"), Command::Say("hello".into()));
        assert_eq!(
            ok("  two  spaces  "),
            Command::Say("  two  spaces  ".into())
        );
        assert_eq!(ok("a/b"), Command::Say("a/b".into()));
    }

    #[test]
    fn double_slash_sends_a_literal_slash() {
        assert_eq!(ok("//join #x"), Command::Say("/join #x".into()));
        assert_eq!(ok("//"), Command::Say("/".into()));
        assert_eq!(ok("///"), Command::Say("//".into()));
    }

    #[test]
    fn every_command() {
        assert_eq!(ok("/join #rust"), Command::Join(r("#rust")));
        assert_eq!(ok("/leave"), Command::Leave(None, None));
        assert_eq!(ok("/leave #rust"), Command::Leave(Some(r("#rust")), None));
        assert_eq!(ok("/msg bob hi"), Command::Msg(n("bob"), "hi".into()));
        assert_eq!(ok("/query bob"), Command::Query(n("bob")));
        assert_eq!(ok("/who"), Command::Who(None));
        assert_eq!(ok("/who #rust"), Command::Who(Some(r("#rust"))));
        assert_eq!(ok("/rooms"), Command::Rooms);
        assert_eq!(ok("/users"), Command::Users);
        assert_eq!(ok("/delete #rust"), Command::Delete(r("#rust")));
        assert_eq!(ok("/whois bob"), Command::Whois(n("bob")));
        assert_eq!(ok("/reach"), Command::Reach);
        assert_eq!(ok("/trust @bob"), Command::Trust(n("bob")));
        assert_eq!(err("/trust"), CommandError::Missing(USAGE_TRUST));
        assert_eq!(ok("/help"), Command::Help);
        assert_eq!(ok("/quit"), Command::Quit(None));
        assert_eq!(ok("/quit\r\n"), Command::Quit(None));
    }

    #[test]
    fn topic_and_away() {
        let topic = |room: Option<&str>, text: Option<&str>| Command::Topic {
            room: room.map(r),
            text: text.map(str::to_owned),
        };
        assert_eq!(ok("/topic"), topic(None, None));
        assert_eq!(ok("/topic #rust"), topic(Some("#rust"), None));
        assert_eq!(ok("/topic #rust  "), topic(Some("#rust"), None));
        assert_eq!(
            ok("/topic #rust borrow  checker"),
            topic(Some("#rust"), Some("borrow  checker"))
        );
        assert_eq!(
            ok("/topic all about  lifetimes"),
            topic(None, Some("all about  lifetimes"))
        );
        assert!(matches!(err("/topic #bad!room x"), CommandError::Name(_)));
        assert!(matches!(
            err(&format!("/topic {}", "x".repeat(10_001))),
            CommandError::Body(_)
        ));
        assert_eq!(ok("/away"), Command::Away(None));
        assert_eq!(ok("/away   "), Command::Away(None));
        assert_eq!(
            ok("/away gone to lunch"),
            Command::Away(Some("gone to lunch".into()))
        );
        assert!(matches!(
            err(&format!("/away {}", "x".repeat(10_001))),
            CommandError::Body(_)
        ));
    }

    #[test]
    fn parting_messages_are_carried() {
        let quit = |m: &str| Command::Quit(Some(m.into()));
        let part = |room: &str, m: &str| Command::Leave(Some(r(room)), Some(m.into()));
        assert_eq!(ok("/quit bye all"), quit("bye all"));
        assert_eq!(ok("/quit   bye  all\r\n"), quit("bye  all"));
        assert_eq!(ok("/quit   "), Command::Quit(None));
        assert_eq!(ok("/part #go see ya"), part("#go", "see ya"));
        assert_eq!(ok("/part\t#go\t see  ya"), part("#go", "see  ya"));
        assert_eq!(ok("/leave #a #b"), part("#a", "#b"));
        assert_eq!(ok("/part #go   "), Command::Leave(Some(r("#go")), None));
        assert_eq!(ok("/part   "), Command::Leave(None, None));
        // A message needs its room first: a word without `#` is a bad name,
        // not "leave whatever is current".
        assert!(matches!(err("/part see ya"), CommandError::Name(_)));
        // The router's limits, told at once: 300 characters, one line of
        // plain text.
        let max = "é".repeat(crate::names::MAX_PARTING_CHARS);
        assert_eq!(ok(&format!("/quit {max}")), quit(&max));
        for line in [
            format!("/quit {max}x"),
            format!("/part #go {max}x"),
            "/quit bye\tall".into(),
            "/part #go see\u{1b}[2J".into(),
        ] {
            let e = err(&line);
            assert!(
                matches!(e, CommandError::Parting(_)),
                "{}: {e:?}",
                short(&line)
            );
        }
        assert!(err(&format!("/exit {max}x"))
            .to_string()
            .contains("at most 300"));
    }

    #[test]
    fn irc_short_aliases() {
        assert_eq!(ok("/j #rust"), Command::Join(r("#rust")));
        assert_eq!(ok("/q bob"), Command::Query(n("bob")));
        assert_eq!(ok("/exit"), Command::Quit(None));
        assert_eq!(ok("/EXIT see you"), Command::Quit(Some("see you".into())));
        assert_eq!(ok("/names"), Command::Who(None));
        assert_eq!(ok("/names #rust"), Command::Who(Some(r("#rust"))));
        assert_eq!(ok("/me waves  at all"), Command::Me("waves  at all".into()));
        assert_eq!(err("/me  "), CommandError::Missing(USAGE_ME));
        assert_eq!(ok("/switch"), Command::Switch(None));
        assert_eq!(
            ok("/switch #go"),
            Command::Switch(Some(Window::Target(Target::Room(r("#go")))))
        );
        assert_eq!(
            ok("/window @bob"),
            Command::Switch(Some(Window::Target(Target::Nick(n("bob")))))
        );
        assert_eq!(
            ok("/switch bob"),
            Command::Switch(Some(Window::Target(Target::Nick(n("bob")))))
        );
        assert_eq!(ok("/window 2"), Command::Switch(Some(Window::Number(2))));
        // A nick may start with digits; digits alone are a number.
        assert_eq!(
            ok("/switch 7of9"),
            Command::Switch(Some(Window::Target(Target::Nick(n("7of9")))))
        );
        assert_eq!(
            ok("/switch @0"),
            Command::Switch(Some(Window::Target(Target::Nick(n("0")))))
        );
        assert!(matches!(err("/window 0"), CommandError::BadArgument { .. }));
        assert_eq!(err("/switch #a #b"), CommandError::Extra(USAGE_SWITCH));
        for c in COMMANDS {
            assert!(
                !matches!(parse(&format!("{c} #x 1")), Err(CommandError::Unknown(_))),
                "{c}"
            );
        }
    }

    #[test]
    fn actions_are_ctcp_bodies() {
        let body = action_body("waves");
        assert_eq!(body, "\u{1}ACTION waves\u{1}");
        assert_eq!(action_text(&body), Some("waves"));
        assert_eq!(action_text("waves"), None);
        assert_eq!(action_text("\u{1}ACTION cut"), Some("cut"));
    }

    #[test]
    fn aliases() {
        assert_eq!(ok("/part"), Command::Leave(None, None));
        assert_eq!(ok("/part #rust"), Command::Leave(Some(r("#rust")), None));
        assert_eq!(ok("/list"), Command::Rooms);
    }

    #[test]
    fn commands_ignore_case() {
        assert_eq!(ok("/JOIN #Rust"), Command::Join(r("#Rust")));
        assert_eq!(ok("/Part"), Command::Leave(None, None));
        assert_eq!(ok("/MSG Bob hi"), Command::Msg(n("Bob"), "hi".into()));
        assert_eq!(ok("/LIST"), Command::Rooms);
        assert_eq!(ok("/Quit"), Command::Quit(None));
    }

    #[test]
    fn msg_keeps_the_text_as_typed() {
        assert_eq!(
            ok("/msg bob  hello   there  \r\n"),
            Command::Msg(n("bob"), "hello   there  ".into())
        );
        assert_eq!(ok("/msg\tbob\tx y"), Command::Msg(n("bob"), "x y".into()));
        assert_eq!(ok("/msg @bob hi"), Command::Msg(n("bob"), "hi".into()));
        assert_eq!(ok("/query @bob"), Command::Query(n("bob")));
    }

    #[test]
    fn history_forms() {
        let h = |target, limit| Command::History { target, limit };
        assert_eq!(ok("/history"), h(None, None));
        assert_eq!(ok("/history 50"), h(None, Some(50)));
        assert_eq!(
            ok("/history #r 20"),
            h(Some(Target::Room(r("#r"))), Some(20))
        );
        assert_eq!(
            ok("/history 20 #r"),
            h(Some(Target::Room(r("#r"))), Some(20))
        );
        assert_eq!(ok("/history @bob"), h(Some(Target::Nick(n("bob"))), None));
        assert_eq!(
            ok("/HISTORY @bob 5"),
            h(Some(Target::Nick(n("bob"))), Some(5))
        );
    }

    #[test]
    fn unknown_commands_are_named() {
        let e = err("/frobnicate now");
        assert_eq!(e, CommandError::Unknown("frobnicate".into()));
        let msg = e.to_string();
        assert!(
            msg.contains("/frobnicate") && msg.contains("/help lists commands"),
            "{msg}"
        );
        assert!(matches!(err("/"), CommandError::Unknown(_)));
        assert!(matches!(err("/ join"), CommandError::Unknown(_)));
    }

    #[test]
    fn missing_arguments_give_the_usage() {
        assert_eq!(err("/join"), CommandError::Missing(USAGE_JOIN));
        assert_eq!(err("/msg"), CommandError::Missing(USAGE_MSG));
        assert_eq!(err("/msg bob"), CommandError::Missing(USAGE_MSG));
        assert_eq!(err("/msg bob    "), CommandError::Missing(USAGE_MSG));
        assert_eq!(err("/query"), CommandError::Missing(USAGE_QUERY));
        assert_eq!(err("/delete "), CommandError::Missing(USAGE_DELETE));
        assert_eq!(
            err("/msg bob").to_string(),
            "missing argument: usage: /msg NICK TEXT"
        );
    }

    #[test]
    fn extra_arguments_are_refused() {
        assert_eq!(err("/join #a #b"), CommandError::Extra(USAGE_JOIN));
        assert_eq!(err("/query bob carol"), CommandError::Extra(USAGE_QUERY));
        assert_eq!(err("/who #a #b"), CommandError::Extra(USAGE_WHO));
        assert_eq!(err("/rooms x"), CommandError::Extra(USAGE_ROOMS));
        assert_eq!(err("/list x"), CommandError::Extra(USAGE_ROOMS));
        assert_eq!(err("/users x"), CommandError::Extra(USAGE_USERS));
        assert_eq!(err("/delete #a #b"), CommandError::Extra(USAGE_DELETE));
        assert_eq!(err("/help me"), CommandError::Extra(USAGE_HELP));
        assert_eq!(err("/history #a #b"), CommandError::Extra(USAGE_HISTORY));
        assert_eq!(err("/history 1 2"), CommandError::Extra(USAGE_HISTORY));
        assert!(err("/rooms x").to_string().contains("usage: /rooms"));
    }

    #[test]
    fn bad_names_use_the_naming_rules() {
        for line in [
            "/join rust!",
            "/join #",
            "/join #a.b",
            "/leave nope",
            "/who bob",
            "/delete #a!",
        ] {
            let e = err(line);
            assert!(matches!(e, CommandError::Name(_)), "{line}: {e:?}");
        }
        let e = err("/msg b@d hi");
        assert!(matches!(e, CommandError::Name(_)), "{e:?}");
        assert_eq!(e.to_string(), Nick::parse("b@d").unwrap_err().to_string());
        assert!(matches!(err("/query #rust"), CommandError::Name(_)));
        assert!(matches!(err("/history #"), CommandError::Name(_)));
        assert!(matches!(err("/history @"), CommandError::Name(_)));
        assert!(err("/leave rust").to_string().contains("starts with '#'"));
    }

    #[test]
    fn window_commands_and_irssi_habits() {
        // irssi adds the `#` to /join.
        assert_eq!(ok("/join rust"), Command::Join(r("#rust")));
        assert_eq!(ok("/j #rust"), Command::Join(r("#rust")));
        assert_eq!(ok("/close"), Command::Close);
        assert_eq!(ok("/wc"), Command::Close);
        assert_eq!(err("/close now"), CommandError::Extra(USAGE_CLOSE));
        assert_eq!(ok("/nicklist"), Command::NickList);
        assert_eq!(ok("/ignore"), Command::Ignore(None));
        assert_eq!(ok("/ignore @Bob"), Command::Ignore(Some(n("Bob"))));
        assert_eq!(err("/ignore a b"), CommandError::Extra(USAGE_IGNORE));
        assert_eq!(ok("/unignore bob"), Command::Unignore(n("bob")));
        assert_eq!(err("/unignore"), CommandError::Missing(USAGE_UNIGNORE));
        assert_eq!(
            ok("/lastlog  borrow checker "),
            Command::Lastlog("borrow checker".into())
        );
        assert_eq!(err("/lastlog  "), CommandError::Missing(USAGE_LASTLOG));
        assert_eq!(ok("/nick robert"), Command::Nick(n("robert")));
        assert!(matches!(err("/nick rob ert"), CommandError::Extra(_)));
        assert!(matches!(err("/nick b@d"), CommandError::Name(_)));
        assert_eq!(ok("/window 3"), Command::Switch(Some(Window::Number(3))));
    }

    #[test]
    fn history_counts_are_positive_integers() {
        for n in ["0", "-5", "+", "1.5", "99999999999999999999999999", "3x"] {
            let e = err(&format!("/history {n}"));
            assert_eq!(e, CommandError::BadCount(n.into()), "{n}");
        }
        assert!(err("/history 0").to_string().contains("positive integer"));
        assert!(matches!(
            err("/history bob"),
            CommandError::BadArgument { .. }
        ));
    }

    #[test]
    fn bodies_are_bounded() {
        let max = "x".repeat(MAX_BODY_CHARS);
        let over = "x".repeat(MAX_BODY_CHARS + 1);
        assert_eq!(ok(&max), Command::Say(max.clone()));
        assert!(matches!(err(&over), CommandError::Body(_)));
        assert!(err(&over).to_string().contains("too long"));
        assert_eq!(
            ok(&format!("/msg bob {max}")),
            Command::Msg(n("bob"), max.clone())
        );
        assert!(matches!(
            err(&format!("/msg bob {over}")),
            CommandError::Body(_)
        ));
        // Characters, not bytes: 10,000 two-byte characters are fine.
        let wide = "é".repeat(MAX_BODY_CHARS);
        assert_eq!(ok(&wide), Command::Say(wide.clone()));
        // The `//` escape counts the text after one slash.
        let escaped = format!("//{}", "x".repeat(MAX_BODY_CHARS - 1));
        assert_eq!(ok(&escaped), Command::Say(escaped[1..].to_owned()));
        assert!(matches!(err(&format!("/{escaped}")), CommandError::Body(_)));
    }

    #[test]
    fn help_has_a_line_per_command() {
        for name in [
            "/join", "/leave", "/part", "/msg", "/query", "/who", "/rooms", "/list", "/users",
            "/history", "/delete", "/help", "/quit", "/switch", "/me", "/names", "/exit", "/j",
            "/q", "/window", "/topic", "/away",
        ] {
            assert!(HELP.contains(name), "{name}");
        }
    }
}
