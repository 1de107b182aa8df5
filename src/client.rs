//! The terminal client: reads commands, drives a [`Peer`], and prints what
//! happens as [`Output`] events. It owns the one piece of state a person has
//! that the peer does not: the current conversation.

use tokio::sync::mpsc;

use crate::names::{private_key, Conversation, Nick, Room};
use crate::peer::{Peer, PeerEvent, SendReport};
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

/// The client's state: the peer and the current conversation.
pub struct Client {
    peer: Peer,
    printer: Printer,
    current: Option<Target>,
}

impl Client {
    pub fn new(peer: Peer, printer: Printer) -> Client {
        Client {
            peer,
            printer,
            current: None,
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
            tokio::select! {
                _ = &mut stop => break,
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
                self.print(Output::info(format!(
                    "now talking to @{nick} ({n} messages in history)"
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
        if !self.printer.is_json() {
            // A person sees their own line in the conversation too.
            self.print(Output::Message(view(
                self.peer.nick(),
                &report.message,
                false,
            )));
        }
        self.print(Output::Sent {
            conversation: shown,
            author_seq: report.message.seq,
            delivered: report.delivered,
            pending: report.pending,
        });
        Ok(())
    }
}
