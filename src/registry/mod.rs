//! The registry: who is online (nick → chat address, under a lease) and who
//! sits in which room. It owns sessions, leases, rooms and the stream of
//! changes, behind one trait so the in-memory registry and a shared one
//! (etcd) are interchangeable. It knows nothing of gRPC.

mod memory;

pub use memory::MemoryRegistry;

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;

use crate::names::{NameError, Nick, Room};

/// Shortest lease a registry accepts: etcd's own floor, so every registry
/// takes the same values.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

/// A session token: 128 random bits, hex encoded.
pub type Token = String;

/// A user as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The nick as written at login.
    pub nick: String,
    /// host:port of the user's chat service.
    pub address: String,
}

/// What a login hands back.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: Token,
    pub nick: String,
    pub lease_ttl: Duration,
    /// The login took the nick over from a live session with the same secret.
    pub reclaimed: bool,
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
    MemberJoined { room: String, member: Member },
    MemberLeft { room: String, member: Member },
    RoomDeleted { room: String, by: String },
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

    /// Claims `nick` for `address`. A nick held by a live lease is refused
    /// unless `secret` matches the live session's, which then ends.
    async fn login(
        &self,
        nick: &Nick,
        address: &str,
        secret: &[u8],
    ) -> Result<Session, RegistryError>;

    /// Renews the session's lease.
    async fn heartbeat(&self, token: &str) -> Result<Duration, RegistryError>;

    /// Ends the session: leaves every room, goes offline.
    async fn logout(&self, token: &str) -> Result<(), RegistryError>;

    /// Joins `room`, creating it with the caller as owner if it is new.
    async fn join(&self, token: &str, room: &Room) -> Result<RoomSnapshot, RegistryError>;

    /// Leaves `room`; a room left empty is gone.
    async fn leave(&self, token: &str, room: &Room) -> Result<(), RegistryError>;

    /// Deletes `room`: owner only; every member is removed.
    async fn delete_room(&self, token: &str, room: &Room) -> Result<(), RegistryError>;

    /// The online user holding `nick`.
    async fn find_user(&self, nick: &Nick) -> Result<Option<Member>, RegistryError>;

    /// The room and its members.
    async fn find_room(&self, room: &Room) -> Result<Option<RoomSnapshot>, RegistryError>;

    async fn list_rooms(&self) -> Result<Vec<RoomInfo>, RegistryError>;

    async fn list_users(&self) -> Result<Vec<Member>, RegistryError>;

    /// Events from now on, for the session holding `token`.
    async fn watch(&self, token: &str) -> Result<EventStream, RegistryError>;
}

/// Hash of a reclaim secret: the registry never keeps the secret itself.
pub(crate) fn hash_secret(secret: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret).into()
}

/// Reclaim secrets are 16 to 64 bytes: enough entropy, bounded size.
pub(crate) fn check_secret(secret: &[u8]) -> Result<(), RegistryError> {
    if (16..=64).contains(&secret.len()) {
        Ok(())
    } else {
        Err(RegistryError::InvalidArgument(format!(
            "reclaim secret must be 16-64 bytes, got {}",
            secret.len()
        )))
    }
}

/// A fresh session token: 128 random bits.
pub(crate) fn new_token() -> Token {
    hex::encode(rand::random::<[u8; 16]>())
}
