//! The router: the `Router` gRPC service over a [`Registry`], and the server
//! that hosts it beside the standard health and reflection services.
//!
//! This layer turns wire requests into validated names, calls the registry,
//! and maps [`RegistryError`] to `tonic::Status` in one place.

mod limits;
mod mailbox;
mod relay;

pub use limits::{BindingRate, CHALLENGE_TTL, USED_PER_SOURCE};
pub use mailbox::{MailLimits, MAX_DEPOSIT, MAX_DRAIN, MAX_ENVELOPE};
pub use relay::{RelayCounts, RelayLimits, RelayStats, MIN_CIRCUIT_BYTES};

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Request, Response, Status};

use crate::identity::{login_bytes, Identity, PublicKey};
use crate::metrics::{MetricsServer, RouterMetrics};
use crate::names::{check_parting, Name, Nick, Room};
use crate::proto;
use crate::proto::router_server::{Router, RouterServer};
use crate::registry::{
    Creation, Departure, Event, EventKind, Member, Presence, Registry, RegistryError,
};
use crate::seal::MailboxKey;
use crate::tls::{Accept, Expect, Tls, TlsError};

/// Largest request the router decodes: its messages are names and tokens,
/// and deposits of sealed mail (a sender sends at most this much at once).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long one call may take before the server gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings find dead connections (and keep idle `Watch` streams alive
/// through middleboxes).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping router waits for its connections to close. tonic's
/// graceful shutdown waits for every connection to finish HTTP/2's close,
/// and a peer that cannot answer (frozen by SIGSTOP, its host gone, its
/// TCP window full) holds that up until keepalive gives up on it, 15 s
/// later, or forever if nothing detects it. Past this the router stops
/// anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Streams one connection may hold open at once (HTTP/2's own cap): a
/// peer holds one `Watch` and a call or two. Room to spare, since a client
/// may open streams before the server's settings reach it, and the ones
/// past the cap are refused, not queued.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Events queued per Watch stream on the wire; past it the registry's own
/// buffer fills and a slow watcher is cut.
const WATCH_QUEUE: usize = 256;
/// A request that names its session.
trait HasToken {
    fn token(&self) -> &str;
}

macro_rules! has_token {
    ($($t:ty),*) => {
        $(impl HasToken for $t {
            fn token(&self) -> &str {
                &self.token
            }
        })*
    };
}
has_token!(
    proto::DepositRequest,
    proto::DrainRequest,
    proto::AckRequest,
    proto::ChangeNickRequest
);

/// Bytes of envelopes one drain answer carries (at least one envelope).
const DRAIN_BYTES: usize = 1024 * 1024;

/// Errors of running the router server.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("router task ended abnormally: {0}")]
    Task(#[source] JoinError),
    #[error("router did not stop within {0:?}")]
    StopTimedOut(Duration),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl From<RegistryError> for Status {
    fn from(err: RegistryError) -> Status {
        let msg = err.to_string();
        match err {
            RegistryError::InvalidName(_) | RegistryError::InvalidArgument(_) => {
                Status::invalid_argument(msg)
            }
            RegistryError::NickTaken(_) | RegistryError::KeyMismatch(_) => {
                Status::already_exists(msg)
            }
            RegistryError::Unauthenticated => Status::unauthenticated(msg),
            RegistryError::NoSuchRoom(_) => Status::not_found(msg),
            RegistryError::NotMember(_) => Status::failed_precondition(msg),
            RegistryError::NotOwner { .. } => Status::permission_denied(msg),
            RegistryError::Lagged(_) | RegistryError::TooManyNicks(_) => {
                Status::resource_exhausted(msg)
            }
            RegistryError::Unavailable(cause) => {
                // The cause stays in the log; the caller learns only that the
                // registry cannot answer now.
                tracing::error!(%cause, "registry unavailable");
                Status::unavailable("registry unavailable, try again")
            }
        }
    }
}

impl From<Member> for proto::Member {
    fn from(m: Member) -> Self {
        proto::Member {
            nick: m.nick,
            address: m.address,
            key: m.key.to_vec(),
            relay: m.relay,
        }
    }
}

impl From<Departure> for proto::Departure {
    fn from(d: Departure) -> Self {
        match d {
            Departure::Left => proto::Departure::Left,
            Departure::Quit => proto::Departure::Quit,
            Departure::TimedOut => proto::Departure::TimedOut,
        }
    }
}

impl From<Event> for proto::RegistryEvent {
    fn from(e: Event) -> Self {
        use proto::registry_event::Kind;
        let kind = match e.kind {
            EventKind::UserOnline(m) => Kind::UserOnline(m.into()),
            EventKind::UserOffline(m) => Kind::UserOffline(m.into()),
            EventKind::MemberJoined { room, member } => Kind::MemberJoined(proto::RoomMember {
                room,
                member: Some(member.into()),
                departure: proto::Departure::Left.into(),
                message: String::new(),
            }),
            EventKind::MemberLeft {
                room,
                member,
                departure,
                message,
            } => Kind::MemberLeft(proto::RoomMember {
                room,
                member: Some(member.into()),
                departure: proto::Departure::from(departure).into(),
                message,
            }),
            EventKind::RoomDeleted { room, by } => {
                Kind::RoomDeleted(proto::RoomDeleted { room, by })
            }
            EventKind::NickChanged { old, member } => Kind::NickChanged(proto::NickChanged {
                old,
                member: Some(member.into()),
            }),
        };
        proto::RegistryEvent {
            revision: e.revision,
            kind: Some(kind),
        }
    }
}

/// The label a login is counted under (`RouterMetrics::login`).
fn reach_label(reach: limits::Reach) -> &'static str {
    match reach {
        limits::Reach::Unchecked => "unchecked",
        limits::Reach::Direct => "direct",
        limits::Reach::Relayed => "relayed",
    }
}

fn reach_proto(reach: limits::Reach) -> proto::Reachability {
    match reach {
        limits::Reach::Unchecked => proto::Reachability::Unchecked,
        limits::Reach::Direct => proto::Reachability::Direct,
        limits::Reach::Relayed => proto::Reachability::Relayed,
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn room_arg(room: &str) -> Result<Room, Status> {
    Room::parse(room).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A parting message as the request gives it: refused (and nothing done)
/// when too long or holding control characters.
fn parting_arg(message: &str) -> Result<&str, Status> {
    check_parting(message).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(message)
}

/// The creation event a joiner shows, checked: a valid creation event of
/// this room, signed by `creator_key`. A join without one is plain; a join
/// with a broken one is refused, so no bad proof is ever half-used.
fn creation_arg(
    room: &Room,
    event: Option<proto::ChatMessage>,
    creator_key: &[u8],
) -> Result<Option<Creation>, Status> {
    let Some(event) = event else {
        return Ok(None);
    };
    let bad = |why: &str| Status::invalid_argument(format!("creation event of {room}: {why}"));
    crate::message::valid_message(&event).map_err(|e| bad(&e.to_string()))?;
    if event.kind != proto::Kind::Created as i32 || event.conversation != room.key() {
        return Err(bad("not this room's creation"));
    }
    let key = PublicKey::from_bytes(creator_key).map_err(|e| bad(&e.to_string()))?;
    if !key.verify_message(&event) {
        return Err(bad("the signature does not check with the key given"));
    }
    Ok(Some(Creation {
        order: (
            event.sent_at_ms,
            event.author.to_ascii_lowercase(),
            event.incarnation,
            event.seq,
        ),
        owner: event.author,
        key,
    }))
}

/// The `Router` service. Watch streams end when `stop` fires, so a graceful
/// shutdown is not held open by them.
pub struct RouterService {
    registry: Arc<dyn Registry>,
    stop: CancellationToken,
    challenges: limits::Challenges,
    bindings: limits::Bindings,
    relay: Arc<relay::Relay>,
    /// The address told as a relayed peer's relay router, if not the one
    /// each peer dialed.
    advertise: Option<String>,
    /// For dialing peers back: links presenting the router's key.
    tls: Tls,
    /// Dial-backs in progress at once.
    dialing: tokio::sync::Semaphore,
    mailboxes: Arc<mailbox::Mailboxes>,
    metrics: RouterMetrics,
}

/// What a router allows its callers, and the address it tells them; the
/// defaults are `router`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterLimits {
    /// How fast one source address may bind nicks never bound before.
    pub new_nicks: BindingRate,
    /// Logins one source address may complete within [`CHALLENGE_TTL`].
    pub logins_per_source: usize,
    /// What the relay carries for peers nobody can dial.
    pub relay: RelayLimits,
    /// The address peers reach this router at, recorded as a relayed
    /// peer's relay router (`router --advertise`); None: the address each
    /// peer dialed (wrong behind a port forward).
    pub advertise: Option<String>,
    /// What the mailboxes hold, from whom how fast, and for how long.
    pub mail: MailLimits,
}

impl Default for RouterLimits {
    fn default() -> Self {
        RouterLimits {
            new_nicks: BindingRate::default(),
            logins_per_source: USED_PER_SOURCE,
            relay: RelayLimits::default(),
            advertise: None,
            mail: MailLimits::default(),
        }
    }
}

/// How long dialing a peer back may take, connection and handshake: a
/// walled peer's firewall drops the attempt, and its login waits this.
pub const DIAL_BACK_TIMEOUT: Duration = Duration::from_millis(1500);
/// Dial-backs in progress at once; more wait their turn.
const DIALING: usize = 64;

impl RouterService {
    pub fn new(
        registry: Arc<dyn Registry>,
        stop: CancellationToken,
        allowed: RouterLimits,
        tls: Tls,
        stats: Arc<RelayStats>,
        metrics: RouterMetrics,
    ) -> RouterService {
        RouterService {
            relay: Arc::new(relay::Relay::new(
                allowed.relay,
                registry.clone(),
                stats,
                stop.clone(),
            )),
            advertise: allowed.advertise,
            mailboxes: mailbox::Mailboxes::new(
                registry.mailbox(),
                allowed.mail,
                metrics.clone(),
                stop.clone(),
            ),
            metrics,
            registry,
            stop,
            challenges: limits::Challenges::new(allowed.logins_per_source),
            bindings: limits::Bindings::new(allowed.new_nicks),
            tls,
            dialing: tokio::sync::Semaphore::new(DIALING),
        }
    }

    /// The session a mailbox call's (or a nick change's) token names, which must be the link's
    /// own key: a mailbox is handed over, and deposits are made, only by
    /// the key's own session, over its own link (a token alone is not
    /// enough).
    async fn own_session<T: HasToken>(&self, req: Request<T>) -> Result<(Member, T), Status> {
        let caller = link_key(&req)?;
        let req = req.into_inner();
        let me = self.registry.session(req.token()).await?;
        if me.key != caller {
            return Err(Status::permission_denied(
                "mailbox calls and nick changes are made by the session's own key",
            ));
        }
        Ok((me, req))
    }

    /// Where others reach this router, as a relayed peer's relay router:
    /// `--advertise`, else the address the caller dialed.
    fn advertised<T>(&self, req: &Request<T>) -> Option<String> {
        self.advertise
            .clone()
            .or_else(|| local(req).map(|a| a.to_string()))
    }

    /// Dials `address` back for `key`, as libp2p's AutoNAT does: only an
    /// address on the IP the request came from (so nobody can aim the
    /// router at a third party), and direct only if a TLS handshake there
    /// presents `key`.
    async fn dial_back(
        &self,
        address: &str,
        key: &PublicKey,
        from: Option<IpAddr>,
    ) -> limits::Reach {
        let Some(from) = from.map(|ip| ip.to_canonical()) else {
            return limits::Reach::Relayed;
        };
        let resolved =
            tokio::time::timeout(DIAL_BACK_TIMEOUT, tokio::net::lookup_host(address)).await;
        let Some(target) = resolved
            .ok()
            .and_then(Result::ok)
            .and_then(|mut addrs| addrs.find(|a| a.ip().to_canonical() == from))
        else {
            tracing::debug!(address, %from, "not dialing back: the address is not on the caller's IP");
            return limits::Reach::Relayed;
        };
        let Ok(_permit) = self.dialing.acquire().await else {
            return limits::Reach::Relayed;
        };
        let dial = async {
            let tcp = tokio::net::TcpStream::connect(target).await?;
            tcp.set_nodelay(true)?;
            self.tls
                .connect_over(Box::new(tcp), address, &Expect::key(key))
                .await
        };
        match tokio::time::timeout(DIAL_BACK_TIMEOUT, dial).await {
            Ok(Ok(_)) => limits::Reach::Direct,
            Ok(Err(err)) => {
                tracing::debug!(address, %err, "dial-back failed");
                limits::Reach::Relayed
            }
            Err(_) => {
                tracing::debug!(address, "dial-back timed out");
                limits::Reach::Relayed
            }
        }
    }
}

/// This router's address as the caller dialed it.
fn local<T>(req: &Request<T>) -> Option<SocketAddr> {
    req.extensions()
        .get::<crate::tls::Caller>()
        .and_then(|c| c.local)
}

/// The caller's key, as its link proved it.
fn link_key<T>(req: &Request<T>) -> Result<PublicKey, Status> {
    crate::tls::caller(req).ok_or_else(|| Status::unauthenticated("not over a parley link"))
}

/// The address a request came from, as its link saw it.
fn source<T>(req: &Request<T>) -> Option<IpAddr> {
    req.extensions()
        .get::<crate::tls::Caller>()
        .and_then(|c| c.remote)
        .map(|a| a.ip())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::RegistryEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Router for RouterService {
    async fn login_challenge(
        &self,
        req: Request<proto::ChallengeRequest>,
    ) -> Result<Response<proto::ChallengeResponse>, Status> {
        let from = source(&req);
        let req = req.into_inner();
        if req.address.is_empty() {
            return Ok(Response::new(proto::ChallengeResponse {
                challenge: self.challenges.issue(),
                reachability: proto::Reachability::Unchecked.into(),
            }));
        }
        crate::names::check_address(&req.address)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let key = PublicKey::from_bytes(&req.key)
            .map_err(|e| Status::invalid_argument(format!("key: {e}")))?;
        let reach = self.dial_back(&req.address, &key, from).await;
        Ok(Response::new(proto::ChallengeResponse {
            challenge: self.challenges.issue_for(reach, &req.address, &req.key),
            reachability: reach_proto(reach).into(),
        }))
    }

    async fn user_login(
        &self,
        req: Request<proto::LoginRequest>,
    ) -> Result<Response<proto::LoginResponse>, Status> {
        let from = source(&req);
        let here = self.advertised(&req);
        let req = req.into_inner();
        let nick = Nick::parse(&req.nick).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let key = PublicKey::from_bytes(&req.key)
            .map_err(|e| Status::invalid_argument(format!("key: {e}")))?;
        let stale = || {
            Status::unauthenticated("unknown, used or expired login challenge: ask for a new one")
        };
        let reach = self
            .challenges
            .check(&req.challenge, &req.address, &req.key)
            .map_err(|_| stale())?;
        if !key.verify(
            &login_bytes(&req.challenge, &req.nick, &req.address, &key),
            &req.signature,
        ) {
            tracing::warn!(nick = %req.nick, key = %key, "login with a signature that does not check");
            return Err(Status::unauthenticated(
                "the login signature does not check against the key",
            ));
        }
        // Used only once the signature checked: only a key holder's login
        // is remembered, and only within its source's share.
        match self.challenges.redeem(&req.challenge, from) {
            Ok(()) => {}
            Err(limits::Refused::Busy) => {
                tracing::warn!(source = ?from, "too many logins from one address");
                return Err(Status::resource_exhausted(format!(
                    "too many logins from this address in {} s; try again shortly",
                    CHALLENGE_TTL.as_secs()
                )));
            }
            Err(_) => return Err(stale()),
        }
        // A nick never bound before costs its source address a token.
        if self.registry.binding(&nick).await?.is_none() {
            if let Err(wait) = self.bindings.take(from) {
                tracing::warn!(source = ?from, nick = %nick, "new nick refused: binding rate");
                return Err(Status::resource_exhausted(format!(
                    "too many new nicks from this address; the next in {} s",
                    wait.as_secs().max(1)
                )));
            }
        }
        // A peer nobody can dial is reached through this router, at the
        // address it dialed.
        let relay = match (reach, here) {
            (limits::Reach::Relayed, Some(here)) => here,
            _ => String::new(),
        };
        // Checked before the session begins, so a bad one changes nothing.
        let mailbox_key = if req.mailbox_key.is_empty() {
            None
        } else {
            let published = MailboxKey {
                key: req.mailbox_key,
                signature: req.mailbox_signature,
            };
            if !published.check(&key) {
                return Err(Status::invalid_argument(
                    "the mailbox key is not an X25519 key signed by the login's key",
                ));
            }
            Some(published)
        };
        let s = self
            .registry
            .login_with(&nick, &req.address, &key, &relay)
            .await?;
        // A mail store that fails here does not fail the login: mail to
        // this key waits for a later login to publish the key again.
        if let Some(published) = mailbox_key {
            if let Err(err) = self.mailboxes.publish(&key, published).await {
                tracing::warn!(key = %key, cause = %err.message(), "cannot keep a login's mailbox key");
            }
        }
        tracing::info!(nick = %s.nick, address = %req.address, key = %key, reclaimed = s.reclaimed, ?reach, "login");
        self.metrics.login(reach_label(reach));
        Ok(Response::new(proto::LoginResponse {
            token: s.token,
            lease_ttl_ms: ttl_ms(s.lease_ttl),
            nick: s.nick,
            reclaimed: s.reclaimed,
            reachability: reach_proto(reach).into(),
            relay,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let token = &req.get_ref().token;
        let ttl = self.registry.heartbeat(token).await?;
        // What waits in its mailbox: a peer online but unreachable learns
        // of mail deposited for it within a heartbeat.
        let mail = match self.registry.session(token).await {
            Ok(me) => self.mailboxes.waiting(&me.key).await,
            Err(_) => 0,
        };
        Ok(Response::new(proto::HeartbeatResponse {
            lease_ttl_ms: ttl_ms(ttl),
            mail,
        }))
    }

    async fn user_logout(
        &self,
        req: Request<proto::LogoutRequest>,
    ) -> Result<Response<proto::LogoutResponse>, Status> {
        let req = req.into_inner();
        let message = parting_arg(&req.message)?;
        self.registry.logout(&req.token, message).await?;
        self.metrics.logout();
        Ok(Response::new(proto::LogoutResponse {}))
    }

    async fn join_room(
        &self,
        req: Request<proto::JoinRoomRequest>,
    ) -> Result<Response<proto::JoinRoomResponse>, Status> {
        let req = req.into_inner();
        let room = room_arg(&req.room)?;
        let creation = creation_arg(&room, req.creation, &req.creator_key)?;
        let s = self
            .registry
            .join(&req.token, &room, creation.as_ref())
            .await?;
        self.metrics.join();
        Ok(Response::new(proto::JoinRoomResponse {
            room: s.name,
            members: s.members.into_iter().map(Into::into).collect(),
            created: s.created,
            owner: s.owner,
            revision: s.revision,
        }))
    }

    async fn leave_room(
        &self,
        req: Request<proto::LeaveRoomRequest>,
    ) -> Result<Response<proto::LeaveRoomResponse>, Status> {
        let req = req.into_inner();
        let room = room_arg(&req.room)?;
        let message = parting_arg(&req.message)?;
        self.registry.leave(&req.token, &room, message).await?;
        Ok(Response::new(proto::LeaveRoomResponse {}))
    }

    async fn change_nick(
        &self,
        req: Request<proto::ChangeNickRequest>,
    ) -> Result<Response<proto::ChangeNickResponse>, Status> {
        let from = source(&req);
        // The session's own key over its own link, as for mailbox calls:
        // a nick binding is the key's, and a leaked token must not move it.
        let (me, req) = self.own_session(req).await?;
        let nick = Nick::parse(&req.nick).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A nick never bound before costs the source address a token, as
        // at a login: renaming must not be a way round the binding rate.
        if self.registry.binding(&nick).await?.is_none() {
            if let Err(wait) = self.bindings.take(from) {
                tracing::warn!(source = ?from, nick = %nick, "nick change refused: binding rate");
                return Err(Status::resource_exhausted(format!(
                    "too many new nicks from this address; the next in {} s",
                    wait.as_secs().max(1)
                )));
            }
        }
        let before = self.registry.change_nick(&req.token, &nick).await?;
        tracing::info!(old = %before.nick, nick = %nick, key = %me.key, "nick changed");
        Ok(Response::new(proto::ChangeNickResponse {
            old: before.nick,
            nick: nick.to_string(),
        }))
    }

    async fn delete_room(
        &self,
        req: Request<proto::DeleteRoomRequest>,
    ) -> Result<Response<proto::DeleteRoomResponse>, Status> {
        let req = req.into_inner();
        let room = room_arg(&req.room)?;
        self.registry.delete_room(&req.token, &room).await?;
        Ok(Response::new(proto::DeleteRoomResponse {}))
    }

    async fn find(
        &self,
        req: Request<proto::FindRequest>,
    ) -> Result<Response<proto::FindResponse>, Status> {
        let req = req.into_inner();
        let name = Name::parse(&req.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.metrics.lookup();
        let resp = match name {
            Name::Nick(nick) => {
                let found = self.registry.find_user(&req.token, &nick).await?;
                let published = match &found.key {
                    Some(k) => self.mailboxes.published(k).await?,
                    None => None,
                };
                let (mailbox_key, mailbox_signature) =
                    published.map_or_else(Default::default, |p| (p.key, p.signature));
                let key = found.key.map(|k| k.to_vec()).unwrap_or_default();
                // Asked apart from `find_user`; a user gone in between is
                // shown with no presence, as one that told none.
                let presence = match &found.online {
                    Some(_) => self.registry.user_presence(&req.token, &nick).await?,
                    None => None,
                };
                match found.online {
                    Some(m) => {
                        let p = presence.unwrap_or_default();
                        let idle_secs = p.presence.active_ms.map(|at| {
                            u64::try_from(crate::message::now_ms().saturating_sub(at) / 1000)
                                .unwrap_or(0)
                        });
                        proto::FindResponse {
                            found: true,
                            name: m.nick.clone(),
                            members: vec![m.into()],
                            key,
                            mailbox_key,
                            mailbox_signature,
                            away: p.presence.away,
                            rooms: p.rooms,
                            idle_secs,
                            ..Default::default()
                        }
                    }
                    None => proto::FindResponse {
                        key,
                        mailbox_key,
                        mailbox_signature,
                        ..Default::default()
                    },
                }
            }
            Name::Room(room) => match self.registry.find_room(&req.token, &room).await? {
                Some(s) => proto::FindResponse {
                    found: true,
                    name: s.name,
                    members: s.members.into_iter().map(Into::into).collect(),
                    owner: s.owner,
                    revision: s.revision,
                    ..Default::default()
                },
                None => proto::FindResponse::default(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn list_rooms(
        &self,
        req: Request<proto::ListRoomsRequest>,
    ) -> Result<Response<proto::ListRoomsResponse>, Status> {
        let rooms = self.registry.list_rooms(&req.get_ref().token).await?;
        Ok(Response::new(proto::ListRoomsResponse {
            rooms: rooms
                .into_iter()
                .map(|r| proto::RoomInfo {
                    name: r.name,
                    members: r.members,
                    owner: r.owner,
                })
                .collect(),
        }))
    }

    async fn list_users(
        &self,
        req: Request<proto::ListUsersRequest>,
    ) -> Result<Response<proto::ListUsersResponse>, Status> {
        let token = &req.get_ref().token;
        let users = self.registry.list_users(token).await?;
        let away = self.registry.away_users(token).await?;
        Ok(Response::new(proto::ListUsersResponse {
            users: users.into_iter().map(Into::into).collect(),
            away: away
                .into_iter()
                .map(|(nick, message)| proto::AwayUser { nick, message })
                .collect(),
        }))
    }

    async fn set_presence(
        &self,
        req: Request<proto::PresenceRequest>,
    ) -> Result<Response<proto::PresenceResponse>, Status> {
        let req = req.into_inner();
        let away = parting_arg(&req.away)?;
        // The peer says how long ago, not when: the time is taken on the
        // registry's clock, so a peer's wrong clock shows no wrong idle.
        let active_ms = req.idle_ms.map(|idle| {
            crate::message::now_ms().saturating_sub(i64::try_from(idle).unwrap_or(i64::MAX))
        });
        let presence = Presence {
            away: away.to_owned(),
            active_ms,
        };
        self.registry.set_presence(&req.token, &presence).await?;
        Ok(Response::new(proto::PresenceResponse {}))
    }

    type ReserveStream = ReceiverStream<Result<proto::Incoming, Status>>;

    async fn reserve(
        &self,
        req: Request<proto::ReserveRequest>,
    ) -> Result<Response<Self::ReserveStream>, Status> {
        let caller = link_key(&req)?;
        let here = self.advertised(&req).unwrap_or_default();
        let me = self.registry.session(&req.get_ref().token).await?;
        if me.key != caller {
            return Err(Status::permission_denied(
                "a reservation is held by the session's own key",
            ));
        }
        let rx = self.relay.reserve(caller, &here)?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn reach(
        &self,
        req: Request<proto::ReachRequest>,
    ) -> Result<Response<proto::ReachResponse>, Status> {
        let caller = link_key(&req)?;
        let from = source(&req);
        let req = req.into_inner();
        let nick = Nick::parse(&req.nick).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let target = PublicKey::from_bytes(&req.target)
            .map_err(|e| Status::invalid_argument(format!("target: {e}")))?;
        crate::names::check_address(&req.address)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if req.nonce.len() != crate::tls::REVERSE_NONCE {
            return Err(Status::invalid_argument("the nonce is 16 bytes"));
        }
        if self.registry.binding(&nick).await? != Some(caller) {
            return Err(Status::permission_denied(format!(
                "{nick} is not bound to this link's key"
            )));
        }
        // The target dials only the caller's own IP, as a dial-back does.
        let on_caller = match (req.address.parse::<SocketAddr>(), from) {
            (Ok(a), Some(ip)) => a.ip().to_canonical() == ip.to_canonical(),
            _ => false,
        };
        if !on_caller {
            return Err(Status::invalid_argument(
                "the address to dial is not on the IP this request comes from",
            ));
        }
        self.relay.reach(caller, &target, &req.address, req.nonce)?;
        Ok(Response::new(proto::ReachResponse {}))
    }

    async fn deposit(
        &self,
        req: Request<proto::DepositRequest>,
    ) -> Result<Response<proto::DepositResponse>, Status> {
        let (me, req) = self.own_session(req).await?;
        let nick =
            Nick::parse(&req.recipient).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let offered = req.envelopes.len();
        let sealed_to = PublicKey::from_bytes(&req.recipient_key)
            .map_err(|e| Status::invalid_argument(format!("recipient key: {e}")))?;
        match self.registry.binding(&nick).await? {
            Some(bound) if bound == sealed_to => {}
            Some(_) => {
                return Err(Status::failed_precondition(format!(
                    "{nick} is bound to another key now: what was sealed to the old one is not delivered"
                )))
            }
            None => return Err(Status::not_found(format!("no nick {nick}"))),
        }
        let done = self
            .mailboxes
            .deposit((&me.key, &me.nick), &sealed_to, req.envelopes)
            .await?;
        tracing::debug!(from = %me.nick, to = %nick, stored = done.stored, refused = ?done.refused, "deposit");
        self.metrics
            .mail_deposit(done.stored, offered.saturating_sub(done.stored));
        let (code, error) = done.refused.map_or((0, String::new()), |s| {
            (s.code() as i32, s.message().to_owned())
        });
        Ok(Response::new(proto::DepositResponse {
            stored: u32::try_from(done.stored).unwrap_or(u32::MAX),
            code,
            error,
        }))
    }

    async fn drain(
        &self,
        req: Request<proto::DrainRequest>,
    ) -> Result<Response<proto::DrainResponse>, Status> {
        let (me, req) = self.own_session(req).await?;
        let limit = usize::try_from(req.limit).unwrap_or(MAX_DRAIN);
        let listing = self.mailboxes.list(&me.key, limit).await?;
        // An answer stays well under what a client decodes (4 MiB): the
        // rest waits for the next drain.
        let mut bytes = 0;
        let mut more = listing.more;
        let mut envelopes = Vec::with_capacity(listing.envelopes.len());
        for e in listing.envelopes {
            if !envelopes.is_empty() && bytes + e.sealed.len() > DRAIN_BYTES {
                more = true;
                break;
            }
            bytes += e.sealed.len();
            envelopes.push(proto::Envelope {
                id: e.id,
                from: e.from.to_vec(),
                from_nick: e.from_nick,
                deposited_at_ms: e.at_ms,
                sealed: e.sealed,
            });
        }
        self.metrics.mail_drained(envelopes.len());
        Ok(Response::new(proto::DrainResponse {
            envelopes,
            expired: listing.expired,
            more,
        }))
    }

    async fn ack(
        &self,
        req: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        let (me, req) = self.own_session(req).await?;
        self.mailboxes.ack(&me.key, &req.ids, req.expired).await?;
        self.metrics.mail_acked(req.ids.len());
        Ok(Response::new(proto::AckResponse {}))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let follow = req
            .get_ref()
            .follow
            .iter()
            .map(|n| Nick::parse(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("follow: {e}")))?;
        let mut events = self.registry.watch(&req.get_ref().token, &follow).await?;
        let stop = self.stop.clone();
        // Every session watches: one Watch stream here is one session served.
        let session = self.metrics.session();
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        // A forwarding task, so the stream ends on the server's stop signal
        // (graceful shutdown is not held open) and when the client goes away.
        tokio::spawn(async move {
            let _session = session;
            loop {
                let item = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    item = events.next() => item,
                };
                let Some(item) = item else { break };
                let item = item.map(Into::into).map_err(Status::from);
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        let stream = ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the router on `listener` until `shutdown` resolves: the `Router`
/// service, gRPC health, and reflection, over TLS links presenting
/// `identity`'s key. Once `shutdown` resolves, open connections get
/// [`SHUTDOWN_GRACE`] to close before it returns.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<dyn Registry>,
    identity: &Identity,
    limits: RouterLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RouterError> {
    serve_counted(
        listener,
        registry,
        identity,
        limits,
        Arc::default(),
        shutdown,
    )
    .await
}

/// [`serve`], counting what the relay does in `stats`.
pub async fn serve_counted(
    listener: TcpListener,
    registry: Arc<dyn Registry>,
    identity: &Identity,
    limits: RouterLimits,
    stats: Arc<RelayStats>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RouterError> {
    let metrics = RouterMetrics::new(stats.clone());
    serve_metered(
        listener, registry, identity, limits, stats, metrics, shutdown,
    )
    .await
}

/// [`serve_counted`], counting logins, sessions and mail in `metrics`
/// (made with `stats` as its relay figures, see [`RouterMetrics::new`];
/// whoever serves its registry does so apart: `router --metrics`).
pub async fn serve_metered(
    listener: TcpListener,
    registry: Arc<dyn Registry>,
    identity: &Identity,
    limits: RouterLimits,
    stats: Arc<RelayStats>,
    metrics: RouterMetrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RouterError> {
    let tls = Tls::new(identity)?;
    let stop = CancellationToken::new();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RouterServer<RouterService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Many generic clients still speak only the v1alpha protocol.
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let service = RouterService::new(registry, stop.clone(), limits, tls.clone(), stats, metrics);
    let relay = service.relay.clone();
    let router = RouterServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES);
    let (relayed, mut relay_conns) = mpsc::channel(64);
    let incoming = tls.incoming_with(
        listener,
        Accept {
            relay: Some(relayed),
            ..Accept::default()
        },
    );
    tokio::spawn(async move {
        while let Some(conn) = relay_conns.recv().await {
            tokio::spawn(relay.clone().handle(conn));
        }
    });
    let signal = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            tracing::info!("router shutting down");
            stop.cancel();
        }
    };
    let server = tonic::transport::Server::builder()
        .timeout(CALL_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(router)
        .serve_with_incoming_shutdown(incoming, signal);
    let grace_over = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served?,
        () = grace_over => {
            // Dropping the server stops accepting (the listener is already
            // closed); the connections still open keep their own tasks
            // until they close or the process exits.
            tracing::warn!(
                grace = ?SHUTDOWN_GRACE,
                "connections still open after the shutdown grace; stopping without them"
            );
        }
    }
    Ok(())
}

/// A router serving in this process, in a task of the runtime it was
/// spawned on; stops on [`RouterHandle::stop`] or on drop.
#[derive(Debug)]
pub struct RouterHandle {
    addr: SocketAddr,
    key: PublicKey,
    relay: Arc<RelayStats>,
    /// Where its metrics are served, if they are.
    metrics: Option<SocketAddr>,
    /// Fires `serve`'s shutdown future (and stops the metrics server) when
    /// dropped.
    stop: DropGuard,
    task: JoinHandle<Result<(), RouterError>>,
    metrics_task: Option<JoinHandle<()>>,
}

impl RouterHandle {
    /// How long [`RouterHandle::stop`] waits for the server to end: past
    /// [`SHUTDOWN_GRACE`] with room to spare, a router still up is stuck.
    pub const STOP_WAIT: Duration = Duration::from_secs(10);

    /// Serves `registry` on an already bound listener (see [`serve`]), in a
    /// task. Fails only if the listener has no local address.
    pub fn spawn(
        listener: TcpListener,
        registry: Arc<dyn Registry>,
        identity: Identity,
    ) -> std::io::Result<RouterHandle> {
        Self::spawn_with(listener, registry, identity, RouterLimits::default())
    }

    /// [`RouterHandle::spawn`] with limits of its own.
    pub fn spawn_with(
        listener: TcpListener,
        registry: Arc<dyn Registry>,
        identity: Identity,
        limits: RouterLimits,
    ) -> std::io::Result<RouterHandle> {
        Self::spawn_serving(listener, registry, identity, limits, None)
    }

    /// [`RouterHandle::spawn_with`], serving its metrics at `metrics` too
    /// (port 0 takes a free port: see [`RouterHandle::metrics_addr`]).
    /// Fails if that address cannot be bound.
    pub async fn spawn_metered(
        listener: TcpListener,
        registry: Arc<dyn Registry>,
        identity: Identity,
        limits: RouterLimits,
        metrics: SocketAddr,
    ) -> std::io::Result<RouterHandle> {
        let server = MetricsServer::bind(metrics).await?;
        Self::spawn_serving(listener, registry, identity, limits, Some(server))
    }

    fn spawn_serving(
        listener: TcpListener,
        registry: Arc<dyn Registry>,
        identity: Identity,
        limits: RouterLimits,
        metrics_server: Option<MetricsServer>,
    ) -> std::io::Result<RouterHandle> {
        let addr = listener.local_addr()?;
        let key = identity.public();
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let relay = Arc::<RelayStats>::default();
        let stats = relay.clone();
        let metrics = RouterMetrics::new(stats.clone());
        let metrics_addr = metrics_server.as_ref().map(MetricsServer::local_addr);
        let metrics_task =
            metrics_server.map(|server| tokio::spawn(server.run(metrics.registry(), stop.clone())));
        let task = tokio::spawn(async move {
            serve_metered(
                listener, registry, &identity, limits, stats, metrics, shutdown,
            )
            .await
        });
        Ok(RouterHandle {
            addr,
            key,
            relay,
            metrics: metrics_addr,
            stop: stop.drop_guard(),
            task,
            metrics_task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where its metrics are served (`GET /metrics`), if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The key its links present.
    pub fn key(&self) -> PublicKey {
        self.key
    }

    /// What its relay has done so far.
    pub fn relay_counts(&self) -> RelayCounts {
        self.relay.counts()
    }

    /// Stops it and waits (at most [`RouterHandle::STOP_WAIT`]) until it
    /// has shut down; reports an error `serve` ended with.
    pub async fn stop(self) -> Result<(), RouterError> {
        let RouterHandle {
            stop,
            mut task,
            metrics_task,
            ..
        } = self;
        drop(stop);
        let served = match tokio::time::timeout(Self::STOP_WAIT, &mut task).await {
            Ok(Ok(served)) => served,
            Ok(Err(err)) => Err(RouterError::Task(err)),
            Err(_) => {
                task.abort();
                Err(RouterError::StopTimedOut(Self::STOP_WAIT))
            }
        };
        if let Some(mut metrics) = metrics_task {
            // It lets a scrape under way finish (a second at most).
            if tokio::time::timeout(Self::STOP_WAIT, &mut metrics)
                .await
                .is_err()
            {
                metrics.abort();
            }
        }
        served
    }
}
