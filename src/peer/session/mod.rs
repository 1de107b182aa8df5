//! The peer's session with the router: the session token, logging in again
//! when the session is lost, the router holding its reservation when nobody
//! can dial it, the follow list, and every router call the peer makes. The
//! routers themselves (failover, key pinning, the login handshake) are
//! [`crate::router_client`]'s; the loops that keep the picture of the world
//! current are [`presence`]'s.
//!
//! Every router call goes through [`Session::call`], which maps statuses to
//! [`SessionError`] in one place and, when the token is refused, logs in
//! again and retries once. What follows a new login (rejoining rooms,
//! syncing) is not done here: a [`SessionEvent::LoggedInAgain`] tells the
//! peer, which runs it in its own task, so a long sync can never hold up
//! the heartbeats that keep the lease alive.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::world::{Membership, World};
use crate::identity::{Identity, PublicKey};
use crate::names::{Nick, NickCell, Room};
use crate::proto::router_client::RouterClient;
use crate::proto::{self, ChatMessage, Member};
use crate::registry::MAX_FOLLOW;
pub use crate::router_client::{login_request, router_name, SessionError};
use crate::router_client::{Hooks, Routers};
use crate::tls::Tls;
use crate::trust::KnownKeys;
use presence::Backoff;

mod presence;
mod status;

fn emit_to(events: &mpsc::Sender<SessionEvent>, event: SessionEvent) {
    if let Err(mpsc::error::TrySendError::Full(event)) = events.try_send(event) {
        tracing::warn!(?event, "session events queue full; dropping one");
    }
}

/// Session events queued for the peer. Past this the newest are dropped
/// with a warning: an `Online` lost is retried by the outbox loop anyway.
const EVENT_QUEUE: usize = 1024;

/// What the session tells the peer.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A user came online (an outbox may now be flushed to it).
    Online(Member),
    /// One of this peer's rooms was deleted.
    RoomGone { room: String, by: String },
    /// The session was lost and a new one began: rooms must be joined again.
    LoggedInAgain,
    /// The `Watch` stream was opened again after a break: events may have
    /// been missed, so it is worth comparing histories.
    Reconnected,
    /// Someone else joined or left one of this peer's rooms (`departure`:
    /// the room only, or how its session ended; `message`: its parting
    /// message, empty for none).
    Presence {
        room: String,
        nick: String,
        joined: bool,
        departure: proto::Departure,
        message: String,
    },
    /// The router says `waiting` envelopes wait in this peer's mailbox
    /// (told by a heartbeat).
    Mail { waiting: u64 },
    /// No router could be asked (`up` false), or one answers again after
    /// that (`up` true): once per outage, whatever the calls in between.
    Router { up: bool },
}

/// Who this peer is to the router.
pub struct SessionConfig {
    pub nick: Nick,
    /// host:port of each router, in the order they are tried: the peer
    /// talks to one and moves to the next when it stops answering.
    pub routers: Vec<String>,
    /// The chat address others reach this peer at.
    pub advertise: String,
    /// This peer's key: logins are signed with it.
    pub identity: Arc<Identity>,
    pub tls: Tls,
    /// The keys this peer knows, the router's among them.
    pub known: KnownKeys,
    /// The router keys given on the command line (fingerprints): one for
    /// every router, or one for all; none pins each on first contact.
    pub router_keys: Vec<String>,
    /// Whether this peer can be dialed, as each login's dial-back finds.
    pub me: crate::net::Me,
    /// The person's away state, shared with intake: told to the router
    /// after every login.
    pub away: super::away::Away,
}

/// The session handle. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    config: SessionConfig,
    /// The nick this session goes by now: `config.nick` until a change.
    nick: NickCell,
    /// Every router, and the one in use.
    routers: Routers,
    /// The session token; replaced when the peer logs in again.
    token: RwLock<String>,
    /// Serialises logins so two tasks noticing a lost session log in once.
    relogin: tokio::sync::Mutex<()>,
    lease: Mutex<Duration>,
    world: World,
    events: mpsc::Sender<SessionEvent>,
    /// Wakes the watch loop out of its backoff after a new login, so the
    /// picture is current again at once.
    rewatch: Arc<Notify>,
    /// The private partners whose presence the watch follows (key → nick
    /// as written), and a wake-up to watch again when one is added.
    follow: Mutex<BTreeMap<String, Nick>>,
    refollow: Notify,
    /// Set by [`Session::logout`]: a refused token is then the logout's
    /// doing, and nobody logs in again.
    leaving: AtomicBool,
    /// The router the last login found this peer unreachable at (where it
    /// holds its reservation); None when it can be dialed.
    relayed_at: tokio::sync::watch::Sender<Option<String>>,
    /// When the person last sent a line (see `status`).
    activity: Mutex<status::Activity>,
    /// The router may not have the latest presence: the next heartbeat
    /// tells it.
    presence_stale: AtomicBool,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Session {
    /// Connects to the router. [`Session::login`] logs in; the loops start
    /// with [`Session::spawn_loops`].
    pub async fn connect(
        config: SessionConfig,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<(Session, mpsc::Receiver<SessionEvent>), SessionError> {
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let rewatch = Arc::new(Notify::new());
        let hooks = Hooks {
            outage: Box::new({
                let events = events.clone();
                move |up| emit_to(&events, SessionEvent::Router { up })
            }),
            // The watch stream belongs to the router left behind.
            moved: Box::new({
                let rewatch = rewatch.clone();
                move || rewatch.notify_one()
            }),
        };
        let routers = Routers::new(
            &config.routers,
            &config.router_keys,
            &config.tls,
            config.known.clone(),
            config.nick.as_str(),
            hooks,
        )?;
        let session = Session {
            inner: Arc::new(Inner {
                nick: NickCell::new(config.nick.clone()),
                config,
                routers,
                token: RwLock::new(String::new()),
                relogin: tokio::sync::Mutex::new(()),
                lease: Mutex::new(Duration::from_secs(10)),
                world: World::default(),
                events,
                rewatch,
                follow: Mutex::new(BTreeMap::new()),
                refollow: Notify::new(),
                leaving: AtomicBool::new(false),
                relayed_at: tokio::sync::watch::Sender::new(None),
                activity: Mutex::new(status::Activity::default()),
                presence_stale: AtomicBool::new(false),
                stop,
                tasks,
            }),
        };
        Ok((session, events_rx))
    }

    /// Starts the heartbeat and watch loops.
    pub fn spawn_loops(&self) {
        let s = self.clone();
        self.inner
            .tasks
            .spawn(async move { s.heartbeat_loop().await });
        let s = self.clone();
        self.inner.tasks.spawn(async move { s.watch_loop().await });
    }

    pub fn world(&self) -> &World {
        &self.inner.world
    }

    /// Follows `nick`'s presence (a private partner, who may share no
    /// room): the watch carries its comings and goings from now on, so
    /// what waits for it is sent when it comes online. At most
    /// [`MAX_FOLLOW`] are followed; past that, the newest are not.
    pub fn follow(&self, nick: &Nick) {
        if nick.key() == self.nick().key() {
            return;
        }
        let added = {
            let mut follow = self.inner.follow.lock().unwrap_or_else(|p| p.into_inner());
            if follow.len() >= MAX_FOLLOW || follow.contains_key(&nick.key()) {
                false
            } else {
                follow.insert(nick.key(), nick.clone());
                true
            }
        };
        if added {
            self.inner.refollow.notify_one();
        }
    }

    /// Follows `nicks` before the watch first opens (no need to wake it).
    pub fn seed_follow(&self, nicks: Vec<Nick>) {
        let mut follow = self.inner.follow.lock().unwrap_or_else(|p| p.into_inner());
        let me = self.nick().key();
        for nick in nicks.into_iter().filter(|n| n.key() != me) {
            if follow.len() >= MAX_FOLLOW {
                break;
            }
            follow.insert(nick.key(), nick);
        }
    }

    fn follows(&self) -> Vec<String> {
        let follow = self.inner.follow.lock().unwrap_or_else(|p| p.into_inner());
        follow.values().map(|n| n.to_string()).collect()
    }

    /// This peer's identity key.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.inner.config.identity
    }

    /// The nick this peer goes by now.
    pub fn nick(&self) -> Nick {
        self.inner.nick.get()
    }

    /// The shared cell of [`Session::nick`], for the parts that must see a
    /// change at once.
    pub fn nick_cell(&self) -> NickCell {
        self.inner.nick.clone()
    }

    /// Moves this session's nick to `new` at the router (see
    /// `Router.ChangeNick`), then here; a login after this uses `new`.
    /// Returns the nick held before, as the router had it.
    pub async fn change_nick(&self, new: &Nick) -> Result<String, SessionError> {
        // (Not under the relogin guard: `call` may log in again itself.)
        let resp = self
            .call("change nick", |mut r, token| {
                let req = proto::ChangeNickRequest {
                    token,
                    nick: new.to_string(),
                };
                async move { r.change_nick(req).await }
            })
            .await?;
        self.inner.nick.set(new.clone());
        // Whom it follows moved with the nick at the router; the picture
        // learns of it from the watch's NickChanged.
        Ok(resp.old)
    }

    /// Whether the router could dial this peer back at its last login.
    pub fn reachable(&self) -> bool {
        self.inner.config.me.reachable()
    }

    /// The router this peer holds its reservation at, when nobody can dial
    /// it, as each login finds it.
    pub fn relayed_at(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.relayed_at.subscribe()
    }

    /// Opens this session's reservation at its router: the asks of those
    /// who want to reach this peer (see [`crate::net::reach`]). A session
    /// that moved to another router since its login (failover) logs in
    /// again there first, so the registry names the router that holds the
    /// reservation.
    pub async fn reserve(&self) -> Result<tonic::Streaming<proto::Incoming>, SessionError> {
        for _ in 0..self.inner.routers.len() {
            let asks = self
                .call("reserve", |mut r, token| async move {
                    r.reserve(proto::ReserveRequest { token }).await
                })
                .await?;
            let here = self.inner.routers.current().to_owned();
            let at = self.inner.relayed_at.borrow().clone();
            match at {
                Some(at) if at != here => {
                    tracing::info!(from = %at, to = %here, "relay router changed; logging in again there");
                    drop(asks);
                    self.relogin(&self.token(), true).await?;
                }
                _ => return Ok(asks),
            }
        }
        Err(SessionError::Refused {
            what: "reserve",
            code: Code::Unavailable,
            message: "the routers keep changing".into(),
        })
    }

    fn token(&self) -> String {
        self.inner
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn emit(&self, event: SessionEvent) {
        emit_to(&self.inner.events, event)
    }

    /// Runs `f` against the router in use, or the next ones (see
    /// [`Routers::on_any`]).
    async fn on_any<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, SessionError>
    where
        F: Fn(RouterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.inner.routers.on_any(what, f).await
    }

    /// Runs one router call with the current token. A refused token (the
    /// router restarted, the lease ran out) makes the peer log in once and
    /// retry; a router that cannot be asked is left for the next; every
    /// other failure maps to a [`SessionError`].
    pub async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, SessionError>
    where
        F: Fn(RouterClient<Channel>, String) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let token = self.token();
        let first = self
            .on_any(what, |r| {
                let fut = f(r, token.clone());
                async move {
                    match fut.await {
                        Ok(r) => Ok(Some(r.into_inner())),
                        Err(s) if s.code() == Code::Unauthenticated => Ok(None),
                        Err(s) => Err(s),
                    }
                }
            })
            .await?;
        if let Some(v) = first {
            return Ok(v);
        }
        self.relogin(&token, false).await?;
        let token = self.token();
        self.on_any(what, |r| {
            let fut = f(r, token.clone());
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Logs in, proving the nick's key by signing the router's challenge:
    /// a new session token, the world's users refreshed. The router's key is
    /// remembered on the first login to it. Tries each router in turn.
    pub async fn login(&self) -> Result<(), SessionError> {
        let c = &self.inner.config;
        let nick = self.nick();
        let resp = self
            .on_any("login", |router| {
                // The router dials our address back before it answers.
                crate::router_client::login(router, &c.identity, nick.as_str(), &c.advertise, true)
            })
            .await?;
        if resp.reclaimed {
            tracing::info!("took the nick back from this peer's previous session");
        }
        let relayed = resp.reachability == proto::Reachability::Relayed as i32;
        let at = self.inner.routers.current().to_owned();
        tracing::info!(router = %at, reachable = !relayed, "logged in");
        *self.inner.token.write().unwrap_or_else(|p| p.into_inner()) = resp.token;
        *self.inner.lease.lock().unwrap_or_else(|p| p.into_inner()) =
            Duration::from_millis(resp.lease_ttl_ms.max(1000));
        // After the token: whoever holds the reservation reserves with it.
        c.me.set_reachable(!relayed);
        self.inner.relayed_at.send_replace(relayed.then_some(at));
        // A new session knows nothing of the person: away and idle again.
        self.tell_presence_after_login().await;
        self.refresh_users().await;
        Ok(())
    }

    /// Asks the router to dial this peer back again; when what it finds
    /// differs from what the session's login recorded, logs in again so
    /// the registry (and everyone reaching this peer) has it. Whether the
    /// router can dial this peer now.
    pub async fn recheck_reach(&self) -> Result<bool, SessionError> {
        let c = &self.inner.config;
        let ask = proto::ChallengeRequest {
            address: c.advertise.clone(),
            key: c.identity.public().to_vec(),
        };
        let found = self
            .on_any("reach check", |mut r| {
                let ask = ask.clone();
                async move { r.login_challenge(ask).await }
            })
            .await?
            .into_inner()
            .reachability;
        let reachable = found != proto::Reachability::Relayed as i32;
        if reachable != self.reachable() {
            tracing::info!(
                reachable,
                "the router's dial-back changed; logging in again"
            );
            self.relogin(&self.token(), false).await?;
        }
        Ok(self.reachable())
    }

    /// The session was lost: log in again (`persist`: until it works or the
    /// peer stops; else once). `stale` is the token seen failing, so racing
    /// callers log in once. Only the login happens under the guard.
    async fn relogin(&self, stale: &str, persist: bool) -> Result<(), SessionError> {
        let _guard = self.inner.relogin.lock().await;
        if self.inner.leaving.load(Ordering::SeqCst) {
            return Err(SessionError::Refused {
                what: "a new login",
                code: Code::Cancelled,
                message: "this peer logged out".into(),
            });
        }
        if self.token() != stale {
            return Ok(());
        }
        let mut backoff = Backoff::new();
        loop {
            match self.login().await {
                Ok(()) => break,
                Err(err) if !persist => return Err(err),
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot log in again; retrying");
                    if self.sleep_or_stop(backoff.next()).await {
                        return Err(err);
                    }
                }
            }
        }
        self.inner.world.new_session();
        self.inner.rewatch.notify_one();
        self.emit(SessionEvent::LoggedInAgain);
        Ok(())
    }

    /// Joins `room` at the router and records its members in the picture.
    /// `creation`: the room's creation event this peer holds and its
    /// author's key, so the router learns the owner from the history.
    pub async fn join(
        &self,
        room: &Room,
        creation: Option<&(ChatMessage, PublicKey)>,
    ) -> Result<proto::JoinRoomResponse, SessionError> {
        let resp = self
            .call("join", |mut r, token| {
                let req = proto::JoinRoomRequest {
                    token,
                    room: room.to_string(),
                    creation: creation.map(|(event, _)| event.clone()),
                    creator_key: creation.map(|(_, key)| key.to_vec()).unwrap_or_default(),
                };
                async move { r.join_room(req).await }
            })
            .await?;
        self.inner.world.set_owner(&resp.room, &resp.owner);
        self.inner
            .world
            .set_room(&resp.room, resp.members.clone(), resp.revision);
        Ok(resp)
    }

    /// Leaves `room` at the router, telling its members the parting
    /// `message` (empty for none).
    pub async fn leave(&self, room: &Room, message: &str) -> Result<(), SessionError> {
        self.inner.world.drop_room(room.as_str());
        self.call("leave", |mut r, token| {
            let req = proto::LeaveRoomRequest {
                token,
                room: room.to_string(),
                message: message.to_owned(),
            };
            async move { r.leave_room(req).await }
        })
        .await?;
        Ok(())
    }

    pub async fn delete_room(&self, room: &Room) -> Result<(), SessionError> {
        self.call("delete", |mut r, token| {
            let req = proto::DeleteRoomRequest {
                token,
                room: room.to_string(),
            };
            async move { r.delete_room(req).await }
        })
        .await?;
        self.inner.world.drop_room(room.as_str());
        Ok(())
    }

    pub async fn find(&self, name: &str) -> Result<proto::FindResponse, SessionError> {
        self.call("find", |mut r, token| {
            let req = proto::FindRequest {
                name: name.to_owned(),
                token,
            };
            async move { r.find(req).await }
        })
        .await
    }

    pub async fn list_rooms(&self) -> Result<Vec<proto::RoomInfo>, SessionError> {
        let r = self
            .call("list rooms", |mut r, token| async move {
                r.list_rooms(proto::ListRoomsRequest { token }).await
            })
            .await?;
        Ok(r.rooms)
    }

    /// Every online user, and those of them marked away.
    pub async fn list_users(&self) -> Result<(Vec<Member>, Vec<proto::AwayUser>), SessionError> {
        let r = self
            .call("list users", |mut r, token| async move {
                r.list_users(proto::ListUsersRequest { token }).await
            })
            .await?;
        Ok((r.users, r.away))
    }

    /// The key `nick` is bound to at the router (online or not).
    pub async fn bound_key(&self, nick: &str) -> Result<Option<PublicKey>, SessionError> {
        let r = self.find(nick).await?;
        if r.key.is_empty() {
            return Ok(None);
        }
        PublicKey::from_bytes(&r.key)
            .map(Some)
            .map_err(|e| SessionError::Refused {
                what: "find",
                code: Code::Internal,
                message: format!("the router gave a bad key: {e}"),
            })
    }

    /// The online user `nick`, from the picture or, failing that, a fresh
    /// look at the router.
    pub async fn lookup_user(&self, nick: &Nick) -> Option<Member> {
        if let Some(m) = self.inner.world.user(nick.as_str()) {
            return Some(m);
        }
        let r = self.find(nick.as_str()).await.ok()?;
        r.members.into_iter().next().filter(|_| r.found)
    }

    /// Whether `author` sits in `room` (which this peer is in). The picture
    /// answers when it knows; otherwise the router is asked afresh (a
    /// `Watch` event can trail a join) and the picture updated. An error
    /// means nobody could say: not a refusal.
    pub async fn confirm_member(&self, room: &str, author: &str) -> Result<bool, SessionError> {
        let world = &self.inner.world;
        match world.membership(room, author) {
            Membership::Member => return Ok(true),
            Membership::Absent | Membership::Unknown => {}
        }
        match self.refresh_room(room).await {
            // A room the router does not know has no members at all.
            Err(SessionError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        match world.membership(room, author) {
            Membership::Member => Ok(true),
            // Dropped by a snapshot and not back yet (the router restarted
            // and it has not logged in again): ask again later.
            Membership::Absent => Err(SessionError::Unreachable {
                addr: self.inner.routers.current().to_owned(),
            }),
            Membership::Unknown => Ok(false),
        }
    }

    /// Ends the session at the router (bounded: the router may be gone),
    /// telling the members of every room the parting `message` (empty for
    /// none).
    pub async fn logout(&self, message: &str) {
        // First, so a heartbeat answered after the logout does not log in
        // again.
        self.inner.leaving.store(true, Ordering::SeqCst);
        let req = proto::LogoutRequest {
            token: self.token(),
            message: message.to_owned(),
        };
        let mut router = self.inner.routers.current_client();
        let _ = tokio::time::timeout(Duration::from_secs(2), router.user_logout(req)).await;
    }
}

#[async_trait::async_trait]
impl crate::trust::Registry for Session {
    async fn bound_key(&self, nick: &str) -> Result<Option<PublicKey>, String> {
        Session::bound_key(self, nick)
            .await
            .map_err(|err| err.to_string())
    }
}
