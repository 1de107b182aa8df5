//! The peer's session with the router: login, the session token, logging in
//! again when the session is lost, the heartbeat and watch loops, and the
//! picture of the world they keep current.
//!
//! Every router call goes through [`Session::call`], which maps statuses to
//! [`SessionError`] in one place and, when the token is refused, logs in
//! again and retries once. What follows a new login (rejoining rooms,
//! syncing) is not done here: a [`SessionEvent::LoggedInAgain`] tells the
//! peer, which runs it in its own task, so a long sync can never hold up
//! the heartbeats that keep the lease alive.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, Notify};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::world::{Change, Membership, World};
use crate::identity::{login_bytes, Identity, PublicKey};
use crate::names::{Nick, Room};
use crate::proto::router_client::RouterClient;
use crate::proto::{self, ChatMessage, Member};
use crate::registry::MAX_FOLLOW;
use crate::tls::{Expect, Tls};
use crate::trust::{KnownKeys, Trust};

/// Session events queued for the peer. Past this the newest are dropped
/// with a warning: an `Online` lost is retried by the outbox loop anyway.
const EVENT_QUEUE: usize = 1024;

/// Errors of talking to the router.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no router at {addr}: start one with `router --listen {addr}`")]
    Unreachable { addr: String },
    /// None of several routers answered.
    #[error("no router answers at any of {addrs}")]
    NoneAnswers { addrs: String },
    #[error("nick {0} is taken by someone else (another key holds it)")]
    NickTaken(String),
    #[error("{0}")]
    RouterKey(String),
    #[error("{0}")]
    NotFound(String),
    /// The router answered no, for a reason it gives.
    #[error("router refused {what}: {message}")]
    Refused {
        what: &'static str,
        code: Code,
        message: String,
    },
}

impl SessionError {
    /// True when the router could not be asked (as opposed to answering).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SessionError::Unreachable { .. } | SessionError::NoneAnswers { .. }
        )
    }
}

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
}

/// The name a router's key is kept under in the known keys: nicks cannot
/// hold an `@`.
pub fn router_name(address: &str) -> String {
    format!("router@{address}")
}

/// The session handle. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

/// One router this peer may talk to.
struct Link {
    addr: String,
    client: RouterClient<Channel>,
    /// The router key the link must present (pinned, given, or the first
    /// one seen).
    expect: Expect,
    /// Its key is in the known keys.
    pinned: AtomicBool,
}

struct Inner {
    config: SessionConfig,
    /// Every router, and the index of the one in use.
    links: Vec<Link>,
    current: AtomicUsize,
    /// The session token; replaced when the peer logs in again.
    token: RwLock<String>,
    /// Serialises logins so two tasks noticing a lost session log in once.
    relogin: tokio::sync::Mutex<()>,
    lease: Mutex<Duration>,
    /// No router answered the last call that needed one: an outage the
    /// person has been told of.
    lost: AtomicBool,
    world: World,
    events: mpsc::Sender<SessionEvent>,
    /// Wakes the watch loop out of its backoff after a new login, so the
    /// picture is current again at once.
    rewatch: Notify,
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
        if config.routers.is_empty() {
            return Err(SessionError::Unreachable {
                addr: String::new(),
            });
        }
        if config.router_keys.len() > 1 && config.router_keys.len() != config.routers.len() {
            return Err(SessionError::RouterKey(format!(
                "{} router keys for {} routers: give one key for all, or one per router in \
                 the same order",
                config.router_keys.len(),
                config.routers.len()
            )));
        }
        let mut links = Vec::with_capacity(config.routers.len());
        for (i, addr) in config.routers.iter().enumerate() {
            let given = match config.router_keys.as_slice() {
                [one] => Some(one),
                keys => keys.get(i),
            };
            let expect = match (given, config.known.get(&router_name(addr))) {
                (Some(fp), _) => Expect::fingerprint(fp.clone()),
                (None, Some(pinned)) => Expect::key(&pinned),
                (None, None) => Expect::first_seen(),
            };
            let endpoint = crate::net::endpoint(addr)
                .map_err(|_| SessionError::Unreachable { addr: addr.clone() })?;
            let channel = config.tls.channel(endpoint, addr, expect.clone());
            links.push(Link {
                addr: addr.clone(),
                client: RouterClient::new(channel),
                expect,
                pinned: AtomicBool::new(false),
            });
        }
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let session = Session {
            inner: Arc::new(Inner {
                config,
                links,
                current: AtomicUsize::new(0),
                token: RwLock::new(String::new()),
                relogin: tokio::sync::Mutex::new(()),
                lease: Mutex::new(Duration::from_secs(10)),
                lost: AtomicBool::new(false),
                world: World::default(),
                events,
                rewatch: Notify::new(),
                follow: Mutex::new(BTreeMap::new()),
                refollow: Notify::new(),
                leaving: AtomicBool::new(false),
                relayed_at: tokio::sync::watch::Sender::new(None),
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

    pub fn nick(&self) -> &Nick {
        &self.inner.config.nick
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
        for _ in 0..self.inner.links.len().max(1) {
            let asks = self
                .call("reserve", |mut r, token| async move {
                    r.reserve(proto::ReserveRequest { token }).await
                })
                .await?;
            let here = self.link().1.addr.clone();
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
        if let Err(mpsc::error::TrySendError::Full(event)) = self.inner.events.try_send(event) {
            tracing::warn!(?event, "session events queue full; dropping one");
        }
    }

    /// A router answered (whatever it said): an outage, if there was one,
    /// is over.
    fn answered(&self) {
        if self.inner.lost.swap(false, Ordering::AcqRel) {
            tracing::info!("a router answers again");
            self.emit(SessionEvent::Router { up: true });
        }
    }

    /// No router could be asked: the start of an outage, unless one is on.
    fn unanswered(&self) {
        if !self.inner.lost.swap(true, Ordering::AcqRel) {
            self.emit(SessionEvent::Router { up: false });
        }
    }

    /// The router in use, and its index.
    fn link(&self) -> (usize, &Link) {
        let i = self.inner.current.load(Ordering::Acquire) % self.inner.links.len();
        (i, &self.inner.links[i])
    }

    /// The router at `from` stopped answering: move to the next one (if
    /// there are several and no other task moved already). Returns whether
    /// another router is now in use.
    fn fail_over(&self, from: usize) -> bool {
        let n = self.inner.links.len();
        if n < 2 {
            return false;
        }
        let to = (from + 1) % n;
        let moved = self
            .inner
            .current
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            tracing::debug!(
                from = %self.inner.links[from].addr,
                to = %self.inner.links[to].addr,
                "router stopped answering; moving to the next"
            );
            // The watch stream belongs to the router left behind.
            self.inner.rewatch.notify_one();
        }
        true
    }

    /// Whether `status` says the router could not be asked (it is gone, or
    /// it cannot reach its own registry), so another router may answer.
    fn is_unreachable(status: &Status) -> bool {
        matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        )
    }

    fn error(&self, what: &'static str, status: Status, link: &Link) -> SessionError {
        if Self::is_unreachable(&status) {
            if let Some(refusal) = link.expect.refused() {
                return SessionError::RouterKey(format!(
                    "{refusal}; if the router's key changed on purpose, start with \
                     --router-key {}",
                    refusal.got
                ));
            }
            return match self.inner.links.as_slice() {
                [one] => SessionError::Unreachable {
                    addr: one.addr.clone(),
                },
                many => SessionError::NoneAnswers {
                    addrs: many
                        .iter()
                        .map(|l| l.addr.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                },
            };
        }
        match status.code() {
            Code::AlreadyExists => SessionError::NickTaken(self.inner.config.nick.to_string()),
            Code::NotFound => SessionError::NotFound(status.message().to_owned()),
            code => SessionError::Refused {
                what,
                code,
                message: status.message().to_owned(),
            },
        }
    }

    /// Runs `f` against the router in use, moving on to the next router
    /// each time one cannot be asked, until every one has been tried.
    async fn on_any<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, SessionError>
    where
        F: Fn(RouterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tries = self.inner.links.len();
        let mut left: Option<&str> = None;
        loop {
            let (i, link) = self.link();
            match f(link.client.clone()).await {
                Ok(v) => {
                    self.answered();
                    self.pin_router(link);
                    if let Some(from) = left {
                        // Said once, when it worked: a list of routers none
                        // of which answers ends in one error instead.
                        tracing::warn!(from, to = %link.addr, "router stopped answering; moved to the next");
                    }
                    return Ok(v);
                }
                Err(s) if Self::is_unreachable(&s) && tries > 1 && self.fail_over(i) => {
                    tracing::debug!(router = %link.addr, status = %s, what, "trying the next router");
                    left.get_or_insert(link.addr.as_str());
                    tries -= 1;
                }
                Err(s) => {
                    if Self::is_unreachable(&s) {
                        self.unanswered();
                    } else {
                        self.answered();
                    }
                    return Err(self.error(what, s, link));
                }
            }
        }
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
        let resp = self
            .on_any("login", |mut router| async move {
                // The router dials our address back before it answers.
                let challenge = router
                    .login_challenge(proto::ChallengeRequest {
                        address: c.advertise.clone(),
                        key: c.identity.public().to_vec(),
                    })
                    .await?
                    .into_inner()
                    .challenge;
                let req = login_request(&c.identity, c.nick.as_str(), &c.advertise, challenge);
                Ok(router.user_login(req).await?.into_inner())
            })
            .await?;
        if resp.reclaimed {
            tracing::info!("took the nick back from this peer's previous session");
        }
        let relayed = resp.reachability == proto::Reachability::Relayed as i32;
        let at = self.link().1.addr.clone();
        tracing::info!(router = %at, reachable = !relayed, "logged in");
        c.me.set_reachable(!relayed);
        self.inner.relayed_at.send_replace(relayed.then_some(at));
        *self.inner.token.write().unwrap_or_else(|p| p.into_inner()) = resp.token;
        *self.inner.lease.lock().unwrap_or_else(|p| p.into_inner()) =
            Duration::from_millis(resp.lease_ttl_ms.max(1000));
        self.refresh_users().await;
        Ok(())
    }

    /// Remembers the key `link`'s router presented, the first time one
    /// answers (each router of several has its own).
    fn pin_router(&self, link: &Link) {
        if link.pinned.load(Ordering::Acquire) {
            return;
        }
        let Some(key) = link.expect.seen() else {
            return;
        };
        match self
            .inner
            .config
            .known
            .check(&router_name(&link.addr), &key)
        {
            Ok((Trust::New, _)) => {
                tracing::info!(router = %link.addr, key = %key, "pinned the router's key")
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(cause = %err, "cannot remember the router's key");
                return;
            }
        }
        link.pinned.store(true, Ordering::Release);
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

    async fn refresh_users(&self) {
        let token = self.token();
        let users = self
            .on_any("list users", |mut r| {
                let req = proto::ListUsersRequest {
                    token: token.clone(),
                };
                async move { r.list_users(req).await }
            })
            .await;
        match users {
            Ok(r) => self.inner.world.set_users(r.into_inner().users),
            Err(err) => tracing::warn!(cause = %err, "cannot list users"),
        }
    }

    /// Sleeps, or returns true at once if the peer is stopping.
    async fn sleep_or_stop(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.inner.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    async fn heartbeat_loop(&self) {
        loop {
            let lease = *self.inner.lease.lock().unwrap_or_else(|p| p.into_inner());
            // A third of the lease, with jitter so peers do not beat in step.
            let third = lease / 3;
            let jitter = rand::rng().random_range(0.8..1.0);
            if self.sleep_or_stop(third.mul_f64(jitter)).await {
                return;
            }
            let token = self.token();
            let req = proto::HeartbeatRequest {
                token: token.clone(),
            };
            let beat = self
                .on_any("heartbeat", |mut r| {
                    let req = req.clone();
                    async move { r.heartbeat(req).await }
                })
                .await;
            if self.inner.leaving.load(Ordering::SeqCst) {
                return; // logged out meanwhile: the answer means nothing
            }
            match beat {
                Ok(_) => {}
                Err(SessionError::Refused {
                    code: Code::Unauthenticated,
                    ..
                }) => {
                    tracing::warn!("session lost; logging in again");
                    let _ = self.relogin(&token, true).await;
                }
                Err(err) => tracing::warn!(cause = %err, "heartbeat failed"),
            }
        }
    }

    async fn watch_loop(&self) {
        let mut backoff = Backoff::new();
        let mut first = true;
        let mut refollowed = false;
        loop {
            let token = self.token();
            let req = proto::WatchRequest {
                token: token.clone(),
                follow: self.follows(),
            };
            let opened = self
                .on_any("watch", |mut r| {
                    let req = req.clone();
                    async move { r.watch(req).await }
                })
                .await;
            match opened {
                Ok(stream) => {
                    backoff.reset();
                    let mut stream = stream.into_inner();
                    // Rebuild the picture: events missed while the stream was
                    // down are not replayed.
                    self.refresh_users().await;
                    self.refresh_rooms().await;
                    if !first && !refollowed {
                        self.emit(SessionEvent::Reconnected);
                    }
                    first = false;
                    refollowed = false;
                    loop {
                        let next = tokio::select! {
                            _ = self.inner.stop.cancelled() => return,
                            // A new partner to follow: watch again at once.
                            _ = self.inner.refollow.notified() => {
                                refollowed = true;
                                break;
                            }
                            n = stream.next() => n,
                        };
                        match next {
                            Some(Ok(event)) => self.on_event(event),
                            Some(Err(status)) => {
                                tracing::debug!(%status, "watch stream broke");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(SessionError::Refused {
                    code: Code::Unauthenticated,
                    ..
                }) => {
                    if self.relogin(&token, true).await.is_err() {
                        return; // logged out (a persistent relogin ends no other way)
                    }
                    continue;
                }
                Err(err) => tracing::debug!(cause = %err, "cannot open watch"),
            }
            if refollowed {
                continue;
            }
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next()) => {}
                _ = self.inner.rewatch.notified() => backoff.reset(),
            }
        }
    }

    /// Re-reads the members of every room this peer sits in.
    async fn refresh_rooms(&self) {
        for name in self.inner.world.my_rooms() {
            if let Err(err) = self.refresh_room(&name).await {
                tracing::debug!(room = %name, cause = %err, "cannot refresh a room");
            }
        }
    }

    /// Re-reads the members of `room` (one this peer sits in) from the
    /// router; the picture stays as it was if the router cannot answer.
    pub async fn refresh_room(&self, room: &str) -> Result<(), SessionError> {
        let r = self.find(room).await?;
        if r.found && self.inner.world.in_room(room) {
            self.inner.world.set_owner(&r.name, &r.owner);
            self.inner.world.set_room(&r.name, r.members, r.revision);
        }
        Ok(())
    }

    fn on_event(&self, event: proto::RegistryEvent) {
        match self.inner.world.apply(event) {
            Change::Nothing => {}
            Change::Online(member) => {
                if !member
                    .nick
                    .eq_ignore_ascii_case(self.inner.config.nick.as_str())
                {
                    self.emit(SessionEvent::Online(member));
                }
            }
            Change::RoomGone { room, by } => self.emit(SessionEvent::RoomGone { room, by }),
            // Others' comings and goings; this peer's own are not news.
            Change::Presence { nick, .. }
                if nick.eq_ignore_ascii_case(self.inner.config.nick.as_str()) => {}
            Change::Presence {
                room,
                nick,
                joined,
                departure,
                message,
            } => self.emit(SessionEvent::Presence {
                room,
                nick,
                joined,
                departure,
                message,
            }),
        }
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

    pub async fn list_users(&self) -> Result<Vec<Member>, SessionError> {
        let r = self
            .call("list users", |mut r, token| async move {
                r.list_users(proto::ListUsersRequest { token }).await
            })
            .await?;
        Ok(r.users)
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
                addr: self.link().1.addr.clone(),
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
        let mut router = self.link().1.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), router.user_logout(req)).await;
    }
}

/// Exponential backoff, capped, reset on success.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        d
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A login request for `nick` at `address`, proven by `identity`'s
/// signature over the router's `challenge`.
pub fn login_request(
    identity: &Identity,
    nick: &str,
    address: &str,
    challenge: Vec<u8>,
) -> proto::LoginRequest {
    let key = identity.public();
    let signature = identity.sign(&login_bytes(&challenge, nick, address, &key));
    proto::LoginRequest {
        nick: nick.to_owned(),
        address: address.to_owned(),
        key: key.to_vec(),
        challenge,
        signature,
    }
}

#[async_trait::async_trait]
impl crate::sync::KeyLookup for Session {
    async fn bound_key(&self, nick: &str) -> Result<Option<PublicKey>, ()> {
        Session::bound_key(self, nick).await.map_err(|err| {
            tracing::debug!(nick, cause = %err, "cannot look a key up");
        })
    }

    fn room_owner(&self, room: &str) -> Option<String> {
        self.inner.world.owner(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_resets() {
        let mut b = Backoff::new();
        let seen: Vec<_> = (0..10).map(|_| b.next()).collect();
        assert_eq!(seen[0], Duration::from_millis(100));
        assert_eq!(seen[1], Duration::from_millis(200));
        assert!(seen.iter().all(|d| *d <= Backoff::CAP));
        assert_eq!(seen[9], Backoff::CAP);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }
}
