//! The registry: who is online (nick → chat address, under a lease) and who
//! sits in which room. It owns sessions, leases, rooms and the stream of
//! changes, behind one trait so the in-memory registry and a shared one
//! (etcd) are interchangeable. It knows nothing of gRPC.

mod durable;
mod etcd;
mod memory;
mod watcher;

pub use durable::REGISTRY_FILE;
pub(crate) use etcd::TICK as ETCD_TICK;
pub use etcd::{EtcdRegistry, PREFIX as ETCD_PREFIX};
pub use memory::{MemoryOptions, MemoryRegistry};

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;

use crate::identity::PublicKey;
use crate::mailbox::MailStore;
use crate::names::{NameError, Nick, Room};

/// Shortest lease a registry accepts: etcd's own floor, so every registry
/// takes the same values.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

/// Most nicks one watch may follow.
pub const MAX_FOLLOW: usize = 1024;

/// Most nicks one key may hold: a person, a bot or two of theirs. A key
/// past it is refused new nicks (its own stay its own).
pub const MAX_NICKS_PER_KEY: usize = 4;

/// How long a key may go unseen (no session begun or ended) before its
/// nicks are released, as NickServ expires nicks: a year.
pub const BINDING_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A session token: 128 random bits, hex encoded.
pub type Token = String;

/// A user as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The nick as written at login.
    pub nick: String,
    /// host:port of the user's chat service.
    pub address: String,
    /// The key the nick is bound to; the chat service presents it.
    pub key: PublicKey,
    /// Empty when the router could dial the user's address back; else the
    /// router (host:port) holding its reservation, through which others
    /// reach it.
    pub relay: String,
}

/// What the registry knows of a nick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserLookup {
    /// The user, while online.
    pub online: Option<Member>,
    /// The key the nick is bound to, online or not.
    pub key: Option<PublicKey>,
}

/// What a session has told of its person (`SetPresence`): kept with the
/// session only, gone when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    /// The away message; empty when the person is not away.
    #[serde(default)]
    pub away: String,
    /// When the person last sent a line, by the registry's wall clock (ms);
    /// `None` when not told.
    #[serde(default)]
    pub active_ms: Option<i64>,
}

/// An online user's presence and the rooms it sits in (`Find` of a nick).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPresence {
    pub presence: Presence,
    /// Its rooms, as first written, sorted without case.
    pub rooms: Vec<String>,
}

/// What a login hands back.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: Token,
    pub nick: String,
    pub lease_ttl: Duration,
    /// The login took the nick over from a live session of the same key.
    pub reclaimed: bool,
}

/// A room's creation event as a member's history shows it: its author owns
/// the room. The router checks the event's signature against `key` before
/// a registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creation {
    /// The author, as written in the event.
    pub owner: String,
    pub key: PublicKey,
    /// Send time, author (lowercased), incarnation, seq: of two creation
    /// events for one room the smaller counts, as it does at the peers.
    pub order: (i64, String, u64, u64),
}

/// A room and its members, as of `revision`.
#[derive(Debug, Clone)]
pub struct RoomSnapshot {
    pub name: String,
    pub owner: String,
    pub members: Vec<Member>,
    pub created: bool,
    pub revision: u64,
}

/// One line of `ListRooms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub name: String,
    pub members: u32,
    pub owner: String,
}

/// One change in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Grows by one with every change.
    pub revision: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    UserOnline(Member),
    UserOffline(Member),
    MemberJoined {
        room: String,
        member: Member,
    },
    /// `departure`: whether the member left the room, or its session
    /// ended, and how. `message`: the parting message of a leave or a
    /// quit (empty for none); a timeout has none.
    MemberLeft {
        room: String,
        member: Member,
        departure: Departure,
        message: String,
    },
    RoomDeleted {
        room: String,
        by: String,
    },
    /// A session's nick changed from `old` to `member.nick`; it sits in
    /// the same rooms under the new one. Told to those who share a room
    /// with it and to its followers (of either nick), once.
    NickChanged {
        old: String,
        member: Member,
    },
}

/// Why a member is no longer in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It left the room; its session goes on.
    Left,
    /// Its session ended on purpose: a logout, or a new login of the same
    /// key taking the nick over.
    Quit,
    /// Its lease ran out: the peer stopped heartbeating (crashed, cut off).
    TimedOut,
}

/// The events a watcher receives. It ends when the watcher's session ends;
/// an error item means the watcher fell behind and must rebuild its picture.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, RegistryError>> + Send>>;

/// Errors of the registry layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("nick {0:?} is already in use")]
    NickTaken(String),
    #[error("nick {0:?} belongs to another key")]
    KeyMismatch(String),
    #[error("this key already holds {0} nicks, the most one key may hold")]
    TooManyNicks(usize),
    #[error("unknown or expired session token: log in again")]
    Unauthenticated,
    #[error("no room {0}")]
    NoSuchRoom(String),
    #[error("not a member of {0}")]
    NotMember(String),
    #[error("only the owner of {room} ({owner}) may delete it")]
    NotOwner { room: String, owner: String },
    #[error("watcher fell behind by {0} events; watch again")]
    Lagged(u64),
    /// The backing store (etcd) cannot be reached or failed.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

/// The registry every router serves. Implementations are safe under
/// concurrent calls: of two racing logins for one nick, or two racing
/// creators of one room, exactly one wins.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// How long a lease lasts without a heartbeat.
    fn lease_ttl(&self) -> Duration;

    /// Claims `nick` for `address` as `key` (the caller has proven it holds
    /// it). A nick is bound to the first key that claims it for as long as
    /// the registry lasts (and the key is seen within its binding TTL):
    /// another key is refused; the same key takes over a live session,
    /// which then ends. A key holds at most [`MAX_NICKS_PER_KEY`] nicks.
    async fn login(
        &self,
        nick: &Nick,
        address: &str,
        key: &PublicKey,
    ) -> Result<Session, RegistryError> {
        self.login_with(nick, address, key, "").await
    }

    /// [`Registry::login`] of a user others reach through the router at
    /// `relay` (empty: directly at `address`).
    async fn login_with(
        &self,
        nick: &Nick,
        address: &str,
        key: &PublicKey,
        relay: &str,
    ) -> Result<Session, RegistryError>;

    /// Moves the session's nick to `new` (IRC's NICK): the key's binding
    /// of the old nick goes to `new` (so a change never grows the key's
    /// count, and the old nick is free for anyone after), the session and
    /// its memberships carry on under `new`, and watchers get one
    /// [`EventKind::NickChanged`]. A `new` already bound to the same key
    /// (another of its nicks) is taken with the old one kept: nothing is
    /// released that the key holds. Refused when `new` is bound to another
    /// key or held by another session ([`RegistryError::KeyMismatch`],
    /// [`RegistryError::NickTaken`]), or when the key would end with more
    /// than [`MAX_NICKS_PER_KEY`] nicks ([`RegistryError::TooManyNicks`]:
    /// a move alone never grows the count, so only a binding made behind
    /// the registry's back could); a refused change changes nothing. `new`
    /// equal to the current nick but for case rewrites how it is written.
    /// Returns the member as it was before.
    async fn change_nick(&self, token: &str, new: &Nick) -> Result<Member, RegistryError>;

    /// The user a live session is.
    async fn session(&self, token: &str) -> Result<Member, RegistryError>;

    /// Renews the session's lease.
    async fn heartbeat(&self, token: &str) -> Result<Duration, RegistryError>;

    /// Ends the session: leaves every room, goes offline. `message` is the
    /// parting message every room's members are told (empty for none); one
    /// that [`check_parting`](crate::names::check_parting) refuses is
    /// refused, and nothing changes.
    async fn logout(&self, token: &str, message: &str) -> Result<(), RegistryError>;

    /// Joins `room`, creating it if it is new. Ownership is decided once,
    /// by the join that makes the room's record: the author of the
    /// `creation` it shows (unless that author is bound to another key),
    /// or else the caller. A later join cannot change the owner, whatever
    /// its creation event says. The record outlives the room's members;
    /// leaving does not hand ownership on; deleting ends it.
    async fn join(
        &self,
        token: &str,
        room: &Room,
        creation: Option<&Creation>,
    ) -> Result<RoomSnapshot, RegistryError>;

    /// Leaves `room`, telling its members `message` (empty for none; one
    /// that [`check_parting`](crate::names::check_parting) refuses is
    /// refused, and nothing changes); a room left empty is gone.
    async fn leave(&self, token: &str, room: &Room, message: &str) -> Result<(), RegistryError>;

    /// Deletes `room`: its owner only (nick and key); every member is
    /// removed.
    async fn delete_room(&self, token: &str, room: &Room) -> Result<(), RegistryError>;

    /// The online user holding `nick`, and the key it is bound to. Lookups
    /// need a live session (`token`).
    async fn find_user(&self, token: &str, nick: &Nick) -> Result<UserLookup, RegistryError>;

    /// The key `nick` is bound to, if a binding holds (one whose key went
    /// unseen past the binding TTL, held by no session, is free for the
    /// next claim, and counts as none): what the router asks before a
    /// login that would bind a nick anew, to charge the caller's address
    /// for it. No session needed (the router's own question, never a
    /// caller's).
    async fn binding(&self, nick: &Nick) -> Result<Option<PublicKey>, RegistryError>;

    /// The room and its members.
    async fn find_room(
        &self,
        token: &str,
        room: &Room,
    ) -> Result<Option<RoomSnapshot>, RegistryError>;

    async fn list_rooms(&self, token: &str) -> Result<Vec<RoomInfo>, RegistryError>;

    async fn list_users(&self, token: &str) -> Result<Vec<Member>, RegistryError>;

    /// Replaces what the session holding `token` has told of its person.
    /// An away message [`check_parting`](crate::names::check_parting)
    /// refuses is refused, and nothing changes.
    async fn set_presence(&self, token: &str, presence: &Presence) -> Result<(), RegistryError>;

    /// The presence and rooms of the online user holding `nick` (`None`
    /// when offline). Every room is shown: `find_room` and `list_rooms`
    /// already answer any session with every room and member, so this
    /// hides nothing the registry keeps hidden.
    async fn user_presence(
        &self,
        token: &str,
        nick: &Nick,
    ) -> Result<Option<UserPresence>, RegistryError>;

    /// The online users marked away: (nick as written, away message),
    /// sorted by nick without case.
    async fn away_users(&self, token: &str) -> Result<Vec<(String, String)>, RegistryError>;

    /// Events from now on for the session holding `token`, only those it
    /// needs: membership changes of its own rooms, and the presence of the
    /// users it shares a room with, of those it `follow`s (its private
    /// partners; at most [`MAX_FOLLOW`]), and its own.
    async fn watch(&self, token: &str, follow: &[Nick]) -> Result<EventStream, RegistryError>;

    /// Where this registry's routers keep mailboxes: beside it, so every
    /// router sharing the registry serves the same ones.
    fn mailbox(&self) -> Arc<dyn MailStore>;
}

/// A fresh session token: 128 random bits.
pub(crate) fn new_token() -> Token {
    hex::encode(rand::random::<[u8; 16]>())
}
