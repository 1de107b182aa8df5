//! The terminal client: reads commands, drives a [`Peer`], and prints what
//! happens as [`Output`] events. It owns the state a person has that the
//! peer does not: the current conversation, and the departures it waits on
//! a moment to tell a quit from a part.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::names::{private_key, Conversation, Nick, Room};
use crate::peer::{Peer, PeerEvent, Presence, SendReport};
use crate::proto::{ChatMessage, Kind};
use crate::terminal::{parse, Command, MessageView, Output, Printer, RoomView, Target, HELP};

/// Messages `/history` shows when no N is given.
const DEFAULT_HISTORY: usize = 20;

/// Turns a stored message into what is shown, from `me`'s side.
pub fn view(me: &Nick, m: &ChatMessage, late: bool) -> MessageView {
    let conversation = Conversation::parse_key(&m.conversation)
        .map(|c| c.display_for(me))
        .unwrap_or_else(|_| m.conversation.clone());
    MessageView {
        conversation,
        from: m.author.clone(),
        body: m.body.clone(),
        author_seq: m.seq,
        lamport: m.lamport,
        sent_at_ms: m.sent_at_ms,
        late,
        kind: match Kind::try_from(m.kind) {
            Ok(Kind::Text) => None,
            Ok(Kind::Created) => Some("created".into()),
            Err(_) => Some(format!("unknown {}", m.kind)),
        },
    }
}

/// How long someone's leaving a room waits for their going offline, so a
/// quit reads `has quit` once instead of `has left` then nothing: the router
/// reports the two as separate events, in either order.
pub const QUIT_WINDOW: Duration = Duration::from_millis(400);

/// Leaves not shown yet, and who went offline a moment ago.
#[derive(Default)]
struct Departures {
    /// (when to show it as a plain leave, room, nick), oldest first.
    leaving: Vec<(Instant, String, String)>,
    /// Nick key → when it went offline.
    gone: HashMap<String, Instant>,
}

fn presence(room: String, nick: String, event: &str) -> Output {
    Output::Presence {
        room,
        nick,
        event: event.into(),
    }
}

impl Departures {
    /// `nick` left `room`: a quit at once if it just went offline, else
    /// held until [`QUIT_WINDOW`] says it was a leave.
    fn left(&mut self, room: String, nick: String, now: Instant) -> Option<Output> {
        let gone = self
            .gone
            .get(&nick.to_ascii_lowercase())
            .is_some_and(|at| now.duration_since(*at) < QUIT_WINDOW);
        if gone {
            return Some(presence(room, nick, "quit"));
        }
        self.leaving.push((now + QUIT_WINDOW, room, nick));
        None
    }

    /// `nick` went offline: its held leaves were a quit.
    fn offline(&mut self, nick: &str, now: Instant) -> Vec<Output> {
        self.gone
            .retain(|_, at| now.duration_since(*at) < QUIT_WINDOW);
        self.gone.insert(nick.to_ascii_lowercase(), now);
        self.take(|n| n.eq_ignore_ascii_case(nick), "quit")
    }

    /// `nick` joined somewhere: a leave held for it comes first, as a leave.
    fn joined(&mut self, nick: &str) -> Vec<Output> {
        self.take(|n| n.eq_ignore_ascii_case(nick), "left")
    }

    /// The held leaves whose wait is over, as leaves.
    fn due(&mut self, now: Instant) -> Vec<Output> {
        let (due, keep) = std::mem::take(&mut self.leaving)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.leaving = keep;
        due.into_iter()
            .map(|(_, room, nick)| presence(room, nick, "left"))
            .collect()
    }

    fn next_due(&self) -> Option<Instant> {
        self.leaving.iter().map(|(at, _, _)| *at).min()
    }

    fn take(&mut self, pick: impl Fn(&str) -> bool, event: &str) -> Vec<Output> {
        let (taken, keep) = std::mem::take(&mut self.leaving)
            .into_iter()
            .partition(|(_, _, nick)| pick(nick));
        self.leaving = keep;
        taken
            .into_iter()
            .map(|(_, room, nick)| presence(room, nick, event))
            .collect()
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The client's state: the peer, the current conversation and the
/// departures not shown yet.
pub struct Client {
    peer: Peer,
    printer: Printer,
    current: Option<Target>,
    departures: Departures,
}

impl Client {
    pub fn new(peer: Peer, printer: Printer) -> Client {
        Client {
            peer,
            printer,
            current: None,
            departures: Departures::default(),
        }
    }

    fn print(&self, out: Output) {
        self.printer.print(&out);
    }

    /// Runs until `/quit`, end of input, or `stop` resolves.
    pub async fn run(
        mut self,
        mut lines: mpsc::Receiver<String>,
        mut events: mpsc::Receiver<PeerEvent>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            let due = self.departures.next_due();
            tokio::select! {
                _ = &mut stop => break,
                _ = until(due) => {
                    for out in self.departures.due(Instant::now()) {
                        self.print(out);
                    }
                }
                line = lines.recv() => {
                    let Some(line) = line else { break };
                    if !self.handle_line(&line).await {
                        break;
                    }
                }
                Some(event) = events.recv() => self.show_event(event),
            }
        }
    }

    fn show_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Message { msg, late } => {
                self.print(Output::Message(view(self.peer.nick(), &msg, late)))
            }
            PeerEvent::Left { room, reason } => {
                if matches!(&self.current, Some(Target::Room(r)) if r.key() == room.to_ascii_lowercase())
                {
                    self.current = None;
                }
                self.print(Output::Left { room, reason });
            }
            PeerEvent::Back { room, new } => {
                // Back after a restart: the room is where lines go, unless
                // the person already picked somewhere else.
                if self.current.is_none() {
                    if let Ok(r) = Room::parse(&room) {
                        self.current = Some(Target::Room(r));
                    }
                }
                self.print(Output::Back { room, new });
            }
            PeerEvent::Notice(message) => self.print(Output::info(message)),
            PeerEvent::Presence {
                room,
                nick,
                change: Presence::Joined,
            } => {
                for out in self.departures.joined(&nick) {
                    self.print(out);
                }
                self.print(presence(room, nick, "joined"));
            }
            PeerEvent::Presence {
                room,
                nick,
                change: Presence::Left,
            } => {
                if let Some(out) = self.departures.left(room, nick, Instant::now()) {
                    self.print(out);
                }
            }
            PeerEvent::Offline { nick } => {
                for out in self.departures.offline(&nick, Instant::now()) {
                    self.print(out);
                }
            }
            PeerEvent::Router { up } => self.print(Output::Router {
                state: if up { "back" } else { "lost" }.into(),
            }),
            PeerEvent::Warning { nick, text } => self.print(Output::Warning {
                nick,
                message: text,
            }),
        }
    }

    /// Handles one input line; false means quit.
    pub async fn handle_line(&mut self, line: &str) -> bool {
        let cmd = match parse(line) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return true,
            Err(err) => {
                self.print(Output::error(err.to_string()));
                return true;
            }
        };
        if matches!(cmd, Command::Quit) {
            return false;
        }
        if let Err(message) = self.execute(cmd).await {
            self.print(Output::error(message));
        }
        true
    }

    fn current_room(&self, room: Option<Room>, usage: &str) -> Result<Room, String> {
        match (room, &self.current) {
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
                self.current = Some(Target::Room(room));
                self.print(Output::Joined {
                    room: j.room,
                    members: j.members,
                    version: j.version,
                    created: j.created,
                });
            }
            Command::Leave(room) => {
                let room = self.current_room(room, "/leave #room")?;
                peer.leave(&room).await.map_err(|e| e.to_string())?;
                if matches!(&self.current, Some(Target::Room(r)) if r.key() == room.key()) {
                    self.current = None;
                }
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
                self.current = Some(Target::Nick(nick));
            }
            Command::Who(room) => {
                let room = self.current_room(room, "/who #room")?;
                let members = peer.who(&room).await.map_err(|e| e.to_string())?;
                self.print(Output::Who {
                    room: room.to_string(),
                    members,
                });
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
                    .or_else(|| self.current.clone())
                    .ok_or("no current conversation: /history #room or /history @nick")?;
                let (key, shown) = self.conversation(&target);
                let msgs = peer
                    .history(&key, limit.unwrap_or(DEFAULT_HISTORY))
                    .await
                    .map_err(|e| e.to_string())?;
                let me = peer.nick().clone();
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
            Command::Trust(nick) => {
                let key = peer.trust(&nick).await.map_err(|e| e.to_string())?;
                self.print(Output::Trusted {
                    nick: nick.to_string(),
                    key: key.fingerprint(),
                });
            }
            Command::Delete(room) => {
                peer.delete_room(&room).await.map_err(|e| e.to_string())?;
                if matches!(&self.current, Some(Target::Room(r)) if r.key() == room.key()) {
                    self.current = None;
                }
                self.print(Output::Left {
                    room: room.to_string(),
                    reason: "deleted".into(),
                });
            }
            Command::Help => self.print(Output::info(HELP)),
            Command::Quit => {}
            Command::Say(body) => {
                let target = self
                    .current
                    .clone()
                    .ok_or("no current conversation: /join #room or /query NICK first")?;
                self.send(&target, &body).await?;
            }
        }
        Ok(())
    }

    /// The canonical key and the shown name of a target.
    fn conversation(&self, target: &Target) -> (String, String) {
        match target {
            Target::Room(r) => (r.key(), r.key()),
            Target::Nick(n) => (private_key(self.peer.nick(), n), format!("@{n}")),
        }
    }

    async fn send(&mut self, target: &Target, body: &str) -> Result<(), String> {
        let report: SendReport = match target {
            Target::Room(r) => self.peer.send_room(r, body).await,
            Target::Nick(n) => self.peer.send_private(n, body).await,
        }
        .map_err(|e| e.to_string())?;
        let (_, shown) = self.conversation(target);
        let json = self.printer.is_json();
        if !json {
            // A person sees their own line in the conversation too.
            self.print(Output::Message(view(
                self.peer.nick(),
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
        let sent = Output::Sent {
            conversation: shown,
            author_seq: report.message.seq,
            delivered: report.delivered,
            pending: report.pending,
        };
        if json || unseen.is_none() {
            self.print(sent);
        }
        if let Some(n) = unseen {
            self.print(Output::info(format!(
                "nobody called {n} has been seen; the message will wait for them"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        // Offsets from one base: the test reads them, nothing sleeps.
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    fn events(outs: Vec<Output>) -> Vec<(String, String, String)> {
        outs.into_iter()
            .map(|o| match o {
                Output::Presence { room, nick, event } => (room, nick, event),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn one(room: &str, nick: &str, event: &str) -> (String, String, String) {
        (room.into(), nick.into(), event.into())
    }

    #[test]
    fn a_leave_then_going_offline_is_one_quit_per_room() {
        let mut d = Departures::default();
        assert!(d.left("#a".into(), "bob".into(), at(0)).is_none());
        assert!(d.left("#b".into(), "bob".into(), at(1)).is_none());
        assert!(d.left("#a".into(), "carol".into(), at(2)).is_none());
        assert_eq!(
            events(d.offline("BOB", at(5))),
            [one("#a", "bob", "quit"), one("#b", "bob", "quit")]
        );
        // Carol only left: shown as a leave once the window is over.
        assert!(d.due(at(100)).is_empty());
        assert_eq!(
            events(d.due(at(2) + QUIT_WINDOW)),
            [one("#a", "carol", "left")]
        );
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn going_offline_then_the_leave_is_a_quit_too() {
        let mut d = Departures::default();
        assert!(d.offline("bob", at(0)).is_empty());
        assert_eq!(
            events(
                d.left("#a".into(), "bob".into(), at(10))
                    .into_iter()
                    .collect()
            ),
            [one("#a", "bob", "quit")]
        );
        // Long after, a leave is a leave again.
        assert!(d
            .left("#a".into(), "bob".into(), at(10) + QUIT_WINDOW)
            .is_none());
        assert_eq!(d.next_due(), Some(at(10) + QUIT_WINDOW * 2));
    }

    #[test]
    fn a_rejoin_shows_the_held_leave_first() {
        let mut d = Departures::default();
        assert!(d.left("#a".into(), "bob".into(), at(0)).is_none());
        assert_eq!(events(d.joined("bob")), [one("#a", "bob", "left")]);
        assert!(d.due(at(0) + QUIT_WINDOW).is_empty());
    }
}
