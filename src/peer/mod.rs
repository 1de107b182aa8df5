//! The peer: one process per person. It serves the `Chat` service, holds a
//! session with the router (login, heartbeats, the `Watch` stream), keeps
//! its picture of rooms and members current, stores every message before
//! delivering it, and fans messages out to the other members.
//!
//! [`Peer`] is a cheap handle; the terminal client and the benchmark drive
//! the same API.

mod chat;
pub mod world;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::join_all;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::Code;

use crate::names::{check_body, private_key, Conversation, NameError, Nick, Room};
use crate::net::{Peers, CALL_DEADLINE};
use crate::proto::chat_server::ChatServer;
use crate::proto::router_client::RouterClient;
use crate::proto::{self, ChatMessage, DeliverRequest, Member};
use crate::store::{lock_data_dir, DirLock, Identity, MsgId, Store, StoreError};
use crate::sync;
use world::{Change, World};

/// Largest request the chat service decodes: a message body is at most
/// 40,000 bytes of UTF-8; a pull request's vector stays far below this.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// How long a gap in an author's sequence may stand before it is pulled:
/// longer than messages in flight take to overtake each other, far shorter
/// than a person notices.
const GAP_GRACE: Duration = Duration::from_millis(500);

/// Errors of the peer layer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("no router at {addr}: start one with `router --listen {addr}`")]
    NoRouter { addr: String },
    #[error("nick {0} is taken by someone else")]
    NickTaken(String),
    #[error("router refused: {0}")]
    Router(String),
    #[error("not in {0}: /join it first")]
    NotInRoom(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot serve chat: {0}")]
    Serve(String),
}

impl PeerError {
    fn from_status(status: tonic::Status, router: &str) -> PeerError {
        match status.code() {
            Code::Unavailable => PeerError::NoRouter {
                addr: router.to_owned(),
            },
            _ => PeerError::Router(status.message().to_owned()),
        }
    }
}

/// Something that happened that the person should see.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// A message arrived (live, by gap repair, or from an outbox).
    Message { msg: ChatMessage, late: bool },
    /// This peer is no longer in a room.
    Left { room: String, reason: String },
    /// Anything else worth a line: the router went away and came back, an
    /// outbox was flushed.
    Notice(String),
}

/// How a peer starts.
pub struct PeerConfig {
    pub nick: Nick,
    /// host:port of the router.
    pub router: String,
    /// Where the chat service listens (already bound: port 0 works).
    pub listener: TcpListener,
    /// Holds the history, the identity and the lock.
    pub data_dir: PathBuf,
    /// The address others reach this peer at, when it is not the
    /// listener's own (a proxy, a NAT, or a listener on 0.0.0.0).
    pub advertise: Option<String>,
}

impl PeerConfig {
    /// A peer for `nick` on `listener`, logging in to `router`, keeping its
    /// state in `data_dir`, with every other setting at its default.
    pub fn new(
        nick: Nick,
        router: impl Into<String>,
        listener: TcpListener,
        data_dir: PathBuf,
    ) -> PeerConfig {
        PeerConfig {
            nick,
            router: router.into(),
            listener,
            data_dir,
            advertise: None,
        }
    }
}

/// What a join did.
#[derive(Debug, Clone)]
pub struct Joined {
    pub room: String,
    pub members: Vec<String>,
    pub version: u64,
    pub created: bool,
}

/// What a send did: the stored message and who has it.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub message: ChatMessage,
    pub delivered: Vec<String>,
    pub pending: Vec<String>,
}

/// A running peer. Cheap to clone.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

struct Inner {
    nick: Nick,
    identity: Identity,
    store: Store,
    listen: SocketAddr,
    /// The chat address given to the router.
    advertise: String,
    router_addr: String,
    router: RouterClient<Channel>,
    /// The session token; replaced when the peer logs in again.
    token: RwLock<String>,
    /// Serialises logins so two tasks noticing a lost session log in once.
    relogin: tokio::sync::Mutex<()>,
    lease: Mutex<Duration>,
    world: World,
    /// Rooms the person asked to be in: joined again after a router restart.
    wanted: Mutex<BTreeMap<String, Room>>,
    /// Recipients whose outbox is being flushed now.
    flushing: Mutex<HashSet<String>>,
    /// Gap repairs waiting to run, by (conversation, author key,
    /// incarnation): the highest seq that showed a gap.
    repairs: Mutex<HashMap<(String, String, u64), u64>>,
    peers: Peers,
    events: mpsc::UnboundedSender<PeerEvent>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Released when the peer stops, so a restart in this process can take
    /// the data directory again.
    dir_lock: Mutex<Option<DirLock>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every guarded value here is a plain collection: a panic elsewhere
    // cannot leave it half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Checks a message from the wire: conversation key, author, counters, body.
pub fn valid_message(m: &ChatMessage) -> Result<Conversation, NameError> {
    let conv = Conversation::parse_key(&m.conversation)?;
    Nick::parse(&m.author)?;
    check_body(&m.body)?;
    if m.seq == 0 || m.lamport == 0 || m.incarnation == 0 {
        return Err(NameError::new(
            "invalid message: seq, lamport and incarnation start at 1",
        ));
    }
    Ok(conv)
}

impl Peer {
    /// Opens the history, serves the chat service, logs in, and starts the
    /// heartbeat and watch tasks. Returns the handle and the events the
    /// person should see.
    pub async fn start(
        config: PeerConfig,
    ) -> Result<(Peer, mpsc::UnboundedReceiver<PeerEvent>), PeerError> {
        let dir = config.data_dir.clone();
        let (dir_lock, store) = tokio::task::spawn_blocking(move || {
            let lock = lock_data_dir(&dir)?;
            let store = Store::open(&dir.join("history.db"))?;
            Ok::<_, StoreError>((lock, store))
        })
        .await
        .map_err(|e| PeerError::Serve(format!("opening the history failed: {e}")))??;
        let listen = config
            .listener
            .local_addr()
            .map_err(|e| PeerError::Serve(e.to_string()))?;

        let router_addr = config.router.clone();
        let no_router = || PeerError::NoRouter {
            addr: router_addr.clone(),
        };
        let channel = crate::net::endpoint(&config.router)
            .map_err(|_| no_router())?
            .connect()
            .await
            .map_err(|_| no_router())?;
        let router = RouterClient::new(channel);

        let (events, events_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            nick: config.nick,
            identity: store.identity(),
            store,
            listen,
            advertise: config.advertise.unwrap_or_else(|| listen.to_string()),
            router_addr: config.router,
            router,
            token: RwLock::new(String::new()),
            relogin: tokio::sync::Mutex::new(()),
            lease: Mutex::new(Duration::from_secs(10)),
            world: World::default(),
            wanted: Mutex::new(BTreeMap::new()),
            flushing: Mutex::new(HashSet::new()),
            repairs: Mutex::new(HashMap::new()),
            peers: Peers::new(),
            events,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            dir_lock: Mutex::new(Some(dir_lock)),
        });
        let peer = Peer { inner };

        // Serve before logging in: the router hands our address to others
        // the moment we are online.
        peer.spawn_server(config.listener);
        if let Err(e) = peer.login().await {
            peer.inner.stop.cancel();
            return Err(e);
        }
        let p = peer.clone();
        peer.inner
            .tasks
            .spawn(async move { p.heartbeat_loop().await });
        let p = peer.clone();
        peer.inner.tasks.spawn(async move { p.watch_loop().await });
        let p = peer.clone();
        peer.inner.tasks.spawn(async move { p.outbox_loop().await });
        let p = peer.clone();
        peer.inner
            .tasks
            .spawn(async move { p.sync_private_chats().await });
        Ok((peer, events_rx))
    }

    pub fn nick(&self) -> &Nick {
        &self.inner.nick
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn incarnation(&self) -> u64 {
        self.inner.identity.incarnation
    }

    fn token(&self) -> String {
        self.inner
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn emit(&self, event: PeerEvent) {
        // Nobody listening (the UI is gone) is not an error.
        let _ = self.inner.events.send(event);
    }

    fn router(&self) -> RouterClient<Channel> {
        self.inner.router.clone()
    }

    fn spawn_server(&self, listener: TcpListener) {
        let svc = ChatServer::new(chat::ChatService::new(self.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(crate::net::MAX_MESSAGE_BYTES);
        let stop = self.inner.stop.clone();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        self.inner.tasks.spawn(async move {
            let served = tonic::transport::Server::builder()
                .timeout(Duration::from_secs(30))
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!(cause = %err, "chat service stopped");
            }
        });
    }

    /// Logs in (again): a new session token, the world's users refreshed.
    async fn login(&self) -> Result<(), PeerError> {
        let req = proto::LoginRequest {
            nick: self.inner.nick.to_string(),
            address: self.inner.advertise.clone(),
            reclaim_secret: self.inner.identity.reclaim_secret.clone(),
        };
        let resp = match self.router().user_login(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => {
                return Err(PeerError::NickTaken(self.inner.nick.to_string()))
            }
            Err(s) => return Err(PeerError::from_status(s, &self.inner.router_addr)),
        };
        if resp.reclaimed {
            tracing::info!("took the nick back from this peer's previous session");
        }
        *self.inner.token.write().unwrap_or_else(|p| p.into_inner()) = resp.token;
        *lock(&self.inner.lease) = Duration::from_millis(resp.lease_ttl_ms.max(1000));
        self.refresh_users().await;
        Ok(())
    }

    async fn refresh_users(&self) {
        match self.router().list_users(proto::ListUsersRequest {}).await {
            Ok(r) => self.inner.world.set_users(r.into_inner().users),
            Err(status) => tracing::warn!(%status, "cannot list users"),
        }
    }

    /// The session was lost (router restarted, lease ran out): log in again
    /// and rejoin every wanted room. `stale` is the token seen failing, so
    /// racing callers log in once.
    async fn relogin(&self, stale: &str) {
        let _guard = self.inner.relogin.lock().await;
        if self.token() != stale {
            return;
        }
        let mut backoff = Backoff::new();
        loop {
            match self.login().await {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot log in again; retrying");
                    if self.sleep_or_stop(backoff.next()).await {
                        return;
                    }
                }
            }
        }
        self.emit(PeerEvent::Notice("logged in to the router again".into()));
        self.inner.world.clear_rooms();
        let rooms: Vec<Room> = lock(&self.inner.wanted).values().cloned().collect();
        for room in rooms {
            if let Err(err) = self.join(&room).await {
                tracing::warn!(%room, cause = %err, "cannot rejoin");
            }
        }
        self.sync_private_chats().await;
    }

    /// Catches up on every private conversation whose other side is online:
    /// what it sent while this peer was away.
    async fn sync_private_chats(&self) {
        let convs = match self.inner.store.conversations().await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(cause = %err, "cannot list conversations");
                return;
            }
        };
        for key in convs {
            let Ok(Conversation::Private(a, b)) = Conversation::parse_key(&key) else {
                continue;
            };
            let other = if a == self.inner.nick.key() { b } else { a };
            let Some(member) = self.inner.world.user(&other) else {
                continue;
            };
            let synced = sync::sync_conversation(
                &self.inner.store,
                &self.inner.peers,
                self.inner.nick.as_str(),
                &key,
                &[member],
            )
            .await;
            match synced {
                Ok(s) => {
                    for (msg, late) in s.pulled {
                        self.emit(PeerEvent::Message { msg, late });
                    }
                    self.push_own(&key, s.behind);
                }
                Err(err) => tracing::warn!(cause = %err, "private sync failed"),
            }
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
            let lease = *lock(&self.inner.lease);
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
            match self.router().heartbeat(req).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::Unauthenticated => {
                    tracing::warn!("session lost; logging in again");
                    self.relogin(&token).await;
                }
                Err(s) => tracing::warn!(status = %s, "heartbeat failed"),
            }
        }
    }

    async fn watch_loop(&self) {
        let mut backoff = Backoff::new();
        loop {
            let token = self.token();
            let opened = self
                .router()
                .watch(proto::WatchRequest {
                    token: token.clone(),
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
                    loop {
                        let next = tokio::select! {
                            _ = self.inner.stop.cancelled() => return,
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
                Err(s) if s.code() == Code::Unauthenticated => {
                    self.relogin(&token).await;
                    continue;
                }
                Err(s) => tracing::debug!(status = %s, "cannot open watch"),
            }
            if self.sleep_or_stop(backoff.next()).await {
                return;
            }
        }
    }

    /// Re-reads the members of every room this peer sits in.
    async fn refresh_rooms(&self) {
        for name in self.inner.world.my_rooms() {
            let req = proto::FindRequest { name: name.clone() };
            if let Ok(r) = self.router().find(req).await {
                let r = r.into_inner();
                if r.found {
                    self.inner.world.set_room(&r.name, r.members, r.revision);
                }
            }
        }
    }

    fn on_event(&self, event: proto::RegistryEvent) {
        match self.inner.world.apply(event) {
            Change::Nothing => {}
            Change::Online(member) => {
                if !member.nick.eq_ignore_ascii_case(self.inner.nick.as_str()) {
                    let p = self.clone();
                    self.inner
                        .tasks
                        .spawn(async move { p.flush_outbox(&member.nick).await });
                }
            }
            Change::RoomGone { room, by } => {
                lock(&self.inner.wanted).remove(&room.to_ascii_lowercase());
                self.emit(PeerEvent::Left {
                    room,
                    reason: format!("deleted by {by}"),
                });
            }
        }
    }

    /// Looks a room up afresh at the router (a `Watch` event can trail a
    /// join) and updates the picture; true if `author` is a member.
    async fn confirm_member(&self, room: &str, author: &str) -> bool {
        let req = proto::FindRequest {
            name: room.to_owned(),
        };
        match self.router().find(req).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.found && self.inner.world.in_room(room) {
                    self.inner.world.set_room(&r.name, r.members, r.revision);
                }
                self.inner.world.is_member(room, author)
            }
            Err(_) => false,
        }
    }

    /// Hands members that a sync showed lacking some of this peer's own
    /// messages (sent just before a crash, say) what they lack, in the
    /// background.
    fn push_own(&self, conversation: &str, behind: Vec<(Member, Vec<proto::VectorEntry>)>) {
        for (member, vector) in behind {
            let p = self.clone();
            let conv = conversation.to_owned();
            self.inner.tasks.spawn(async move {
                let own = sync::own_missing(&p.inner.store, &conv, p.inner.nick.as_str(), vector);
                match own.await {
                    Ok(msgs) => {
                        for m in msgs {
                            if p.deliver_to(&member.address, m).await != Delivery::Stored {
                                break;
                            }
                        }
                    }
                    Err(err) => tracing::warn!(cause = %err, "cannot read own messages to push"),
                }
            });
        }
    }

    /// Joins `room` (creating it if new), syncs its history, and makes it
    /// one this peer rejoins after a router restart.
    pub async fn join(&self, room: &Room) -> Result<Joined, PeerError> {
        let req = proto::JoinRoomRequest {
            token: self.token(),
            room: room.to_string(),
        };
        let resp = self
            .router()
            .join_room(req)
            .await
            .map_err(|s| PeerError::from_status(s, &self.inner.router_addr))?
            .into_inner();
        self.inner
            .world
            .set_room(&resp.room, resp.members.clone(), resp.revision);
        lock(&self.inner.wanted).insert(room.key(), room.clone());
        let synced = sync::sync_conversation(
            &self.inner.store,
            &self.inner.peers,
            self.inner.nick.as_str(),
            &room.key(),
            &resp.members,
        )
        .await?;
        self.push_own(&room.key(), synced.behind);
        Ok(Joined {
            room: resp.room,
            members: resp.members.into_iter().map(|m| m.nick).collect(),
            version: synced.version,
            created: resp.created,
        })
    }

    /// Leaves `room`.
    pub async fn leave(&self, room: &Room) -> Result<(), PeerError> {
        lock(&self.inner.wanted).remove(&room.key());
        self.inner.world.drop_room(room.as_str());
        let req = proto::LeaveRoomRequest {
            token: self.token(),
            room: room.to_string(),
        };
        self.router()
            .leave_room(req)
            .await
            .map_err(|s| PeerError::from_status(s, &self.inner.router_addr))?;
        Ok(())
    }

    /// Deletes `room` (owner only).
    pub async fn delete_room(&self, room: &Room) -> Result<(), PeerError> {
        let req = proto::DeleteRoomRequest {
            token: self.token(),
            room: room.to_string(),
        };
        self.router()
            .delete_room(req)
            .await
            .map_err(|s| PeerError::from_status(s, &self.inner.router_addr))?;
        lock(&self.inner.wanted).remove(&room.key());
        self.inner.world.drop_room(room.as_str());
        Ok(())
    }

    /// Opens the private conversation with `nick`: syncs its history from
    /// the other side if it is online. Returns the number of messages held.
    pub async fn open_private(&self, nick: &Nick) -> Result<u64, PeerError> {
        let conv = private_key(&self.inner.nick, nick);
        let members: Vec<Member> = self.lookup_user(nick).await.into_iter().collect();
        let synced = sync::sync_conversation(
            &self.inner.store,
            &self.inner.peers,
            self.inner.nick.as_str(),
            &conv,
            &members,
        )
        .await?;
        self.push_own(&conv, synced.behind);
        Ok(synced.version)
    }

    /// The online user `nick`, from the picture or, failing that, a fresh
    /// look at the router.
    async fn lookup_user(&self, nick: &Nick) -> Option<Member> {
        if let Some(m) = self.inner.world.user(nick.as_str()) {
            return Some(m);
        }
        let req = proto::FindRequest {
            name: nick.to_string(),
        };
        let r = self.router().find(req).await.ok()?.into_inner();
        r.members.into_iter().next().filter(|_| r.found)
    }

    /// Members of a room this peer sits in (from the router, fresh).
    pub async fn who(&self, room: &Room) -> Result<Vec<String>, PeerError> {
        let req = proto::FindRequest {
            name: room.to_string(),
        };
        let r = self
            .router()
            .find(req)
            .await
            .map_err(|s| PeerError::from_status(s, &self.inner.router_addr))?
            .into_inner();
        if !r.found {
            return Err(PeerError::Invalid(format!("no room {room}")));
        }
        Ok(r.members.into_iter().map(|m| m.nick).collect())
    }

    pub async fn rooms(&self) -> Result<Vec<proto::RoomInfo>, PeerError> {
        Ok(self
            .router()
            .list_rooms(proto::ListRoomsRequest {})
            .await
            .map_err(|s| PeerError::from_status(s, &self.inner.router_addr))?
            .into_inner()
            .rooms)
    }

    pub async fn users(&self) -> Result<Vec<String>, PeerError> {
        Ok(self
            .router()
            .list_users(proto::ListUsersRequest {})
            .await
            .map_err(|s| PeerError::from_status(s, &self.inner.router_addr))?
            .into_inner()
            .users
            .into_iter()
            .map(|m| m.nick)
            .collect())
    }

    /// The last `limit` messages of a conversation (canonical key).
    pub async fn history(&self, conv: &str, limit: usize) -> Result<Vec<ChatMessage>, PeerError> {
        Ok(self.inner.store.history(conv, limit).await?)
    }

    /// Sends `body` to a room this peer sits in.
    pub async fn send_room(&self, room: &Room, body: &str) -> Result<SendReport, PeerError> {
        check_body(body)?;
        let members = self
            .inner
            .world
            .members(room.as_str())
            .ok_or_else(|| PeerError::NotInRoom(room.to_string()))?;
        let me = self.inner.nick.key();
        let recipients = members
            .into_iter()
            .filter(|m| m.nick.to_ascii_lowercase() != me)
            .map(|m| (m.nick, Some(m.address)))
            .collect();
        self.send(room.key(), recipients, body).await
    }

    /// Sends `body` privately to `nick`; queued if `nick` is offline.
    pub async fn send_private(&self, nick: &Nick, body: &str) -> Result<SendReport, PeerError> {
        check_body(body)?;
        if nick.key() == self.inner.nick.key() {
            return Err(PeerError::Invalid(
                "that is you: a private message needs someone else".into(),
            ));
        }
        let conv = private_key(&self.inner.nick, nick);
        let address = self.lookup_user(nick).await.map(|m| m.address);
        self.send(conv, vec![(nick.to_string(), address)], body)
            .await
    }

    /// Stores the message (with outbox entries for recipients known to be
    /// offline), then delivers it to every reachable recipient at once.
    async fn send(
        &self,
        conv: String,
        recipients: Vec<(String, Option<String>)>,
        body: &str,
    ) -> Result<SendReport, PeerError> {
        let offline: Vec<String> = recipients
            .iter()
            .filter(|(_, a)| a.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        let msg = self
            .inner
            .store
            .append_own(
                &conv,
                self.inner.nick.as_str(),
                self.inner.identity.incarnation,
                body,
                now_ms(),
                offline.clone(),
            )
            .await?;
        let online: Vec<(String, String)> = recipients
            .into_iter()
            .filter_map(|(n, a)| a.map(|a| (n, a)))
            .collect();
        let results = join_all(online.iter().map(|(_, addr)| async {
            // A member that just timed out is not waited for again: the
            // message goes to the outbox at once (senders never stall on a
            // frozen member), and the outbox retries it.
            if self.inner.peers.is_down(addr) {
                return Delivery::Unreachable;
            }
            self.deliver_to(addr, msg.clone()).await
        }))
        .await;
        let mut report = SendReport {
            message: msg,
            delivered: Vec::new(),
            pending: offline,
        };
        let mut failed = Vec::new();
        for ((nick, _), result) in online.into_iter().zip(results) {
            if result == Delivery::Stored {
                report.delivered.push(nick);
            } else {
                failed.push(nick);
            }
        }
        for nick in &failed {
            self.inner
                .store
                .outbox_add(nick, vec![MsgId::of(&report.message)])
                .await?;
        }
        report.pending.extend(failed);
        Ok(report)
    }

    /// One `Deliver` under its deadline.
    async fn deliver_to(&self, address: &str, msg: ChatMessage) -> Delivery {
        let Ok(mut client) = self.inner.peers.client(address) else {
            return Delivery::Refused;
        };
        let mut req = tonic::Request::new(DeliverRequest { message: Some(msg) });
        req.set_timeout(CALL_DEADLINE);
        let result = match tokio::time::timeout(CALL_DEADLINE, client.deliver(req)).await {
            Ok(Ok(_)) => Delivery::Stored,
            Ok(Err(status)) => {
                tracing::debug!(address, %status, "deliver failed");
                match status.code() {
                    // The peer answered and will never take it as it stands
                    // (not in the room any more, say): it catches up by its
                    // own sync when it joins.
                    Code::InvalidArgument | Code::FailedPrecondition | Code::PermissionDenied => {
                        Delivery::Refused
                    }
                    _ => Delivery::Unreachable,
                }
            }
            Err(_) => {
                tracing::debug!(address, "deliver timed out");
                Delivery::Unreachable
            }
        };
        match result {
            Delivery::Unreachable => self.inner.peers.mark_down(address),
            _ => self.inner.peers.mark_up(address),
        }
        result
    }

    /// Delivers what the outbox holds for `nick`, in order, if it is online.
    async fn flush_outbox(&self, nick: &str) {
        let key = nick.to_ascii_lowercase();
        if !lock(&self.inner.flushing).insert(key.clone()) {
            return;
        }
        let result = self.flush_outbox_once(&key).await;
        lock(&self.inner.flushing).remove(&key);
        match result {
            Ok(0) => {}
            Ok(n) => self.emit(PeerEvent::Notice(format!(
                "delivered {n} waiting message(s) to {nick}"
            ))),
            Err(err) => tracing::warn!(nick, cause = %err, "outbox flush failed"),
        }
    }

    async fn flush_outbox_once(&self, key: &str) -> Result<usize, PeerError> {
        let msgs = self.inner.store.outbox_for(key).await?;
        if msgs.is_empty() {
            return Ok(0);
        }
        let Some(member) = self.inner.world.user(key) else {
            return Ok(0);
        };
        let mut done = Vec::new();
        let mut delivered = 0;
        for m in msgs {
            let id = MsgId::of(&m);
            match self.deliver_to(&member.address, m).await {
                Delivery::Stored => delivered += 1,
                Delivery::Refused => {}
                // Still away: keep the rest, in order, for the next try.
                Delivery::Unreachable => break,
            }
            done.push(id);
        }
        self.inner.store.outbox_done(key, done).await?;
        Ok(delivered)
    }

    /// Retries the outbox for every recipient the picture shows online, now
    /// and every few seconds: a member cut off without going offline (a
    /// partition, a frozen process) is never announced as coming back.
    async fn outbox_loop(&self) {
        loop {
            match self.inner.store.outbox_recipients().await {
                Ok(nicks) => {
                    for nick in nicks {
                        if self.inner.world.user(&nick).is_some() {
                            self.flush_outbox(&nick).await;
                        }
                    }
                }
                Err(err) => tracing::warn!(cause = %err, "cannot read the outbox"),
            }
            if self.sleep_or_stop(OUTBOX_RETRY).await {
                return;
            }
        }
    }

    /// Pulls from the sender what a delivered message showed was missed.
    ///
    /// A sender with several messages in flight has them arrive out of
    /// order, and each early one shows a gap that the next delivery fills.
    /// Pulling at once for each of them floods the sender with pulls of
    /// messages already on their way (quadratic under load), so a repair
    /// waits [`GAP_GRACE`], runs once per author incarnation however many
    /// gaps were seen meanwhile, and pulls only if a gap is still there.
    fn repair_gap(&self, msg: &ChatMessage) {
        let Some(author) = self.inner.world.user(&msg.author) else {
            return;
        };
        let key = (
            msg.conversation.clone(),
            msg.author.to_ascii_lowercase(),
            msg.incarnation,
        );
        {
            let mut repairs = lock(&self.inner.repairs);
            if let Some(seq) = repairs.get_mut(&key) {
                *seq = (*seq).max(msg.seq);
                return;
            }
            repairs.insert(key.clone(), msg.seq);
        }
        let p = self.clone();
        self.inner.tasks.spawn(async move {
            if p.sleep_or_stop(GAP_GRACE).await {
                return;
            }
            let Some(seq) = lock(&p.inner.repairs).remove(&key) else {
                return;
            };
            let (conv, author_key, incarnation) = key;
            let have = match p.inner.store.version(&conv).await {
                Ok(v) => v.vector,
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot read version for gap repair");
                    return;
                }
            };
            let filled = have.iter().any(|e| {
                e.incarnation == incarnation
                    && e.author.eq_ignore_ascii_case(&author_key)
                    && e.seq >= seq
            });
            if filled {
                return;
            }
            match sync::pull(
                &p.inner.store,
                &p.inner.peers,
                &author.address,
                p.inner.nick.as_str(),
                &conv,
                have,
            )
            .await
            {
                Ok(fresh) => {
                    for (msg, late) in fresh {
                        p.emit(PeerEvent::Message { msg, late });
                    }
                }
                Err(err) => tracing::warn!(cause = %err, "gap repair failed"),
            }
        });
    }

    /// Logs out and stops serving; waits for the peer's tasks to end.
    pub async fn shutdown(&self) {
        let req = proto::LogoutRequest {
            token: self.token(),
        };
        let mut router = self.router();
        let _ = tokio::time::timeout(Duration::from_secs(2), router.user_logout(req)).await;
        self.stop_now().await;
    }

    /// Stops without logging out, as a crash would (the lease runs out).
    pub async fn stop_now(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.inner.tasks.wait()).await;
        lock(&self.inner.dir_lock).take();
    }
}

/// How a `Deliver` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Stored,
    /// The peer answered no: retrying the same message will not help.
    Refused,
    /// No answer in time, or no connection: worth retrying later.
    Unreachable,
}

/// How often the outbox is retried for recipients that look online.
const OUTBOX_RETRY: Duration = Duration::from_secs(2);

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
