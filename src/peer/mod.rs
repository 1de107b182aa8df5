//! The peer: one process per person. [`Peer`] is a cheap handle that the
//! terminal client and the benchmark drive; it wires together parts that
//! each own one concern and depend one way:
//!
//! - [`session`]: the router session (login, heartbeat, watch, the picture
//!   of the world in [`world`]);
//! - [`outbox`]: fan-out of new messages and the outbox of what is owed;
//! - `chat`: the `Chat` service others call, given only what it serves
//!   from;
//! - [`rooms`]: the rooms the person is in, kept across restarts;
//! - `away`: the person's away message, told to private senders and the
//!   router;
//! - [`events`]: what the person is told, through a bounded queue;
//! - catching up ([`crate::sync`]): join syncs, gap repair, anti-entropy.

mod away;
mod chat;
mod checks;
pub mod events;
mod intake;
mod limits;
pub mod mailbox;
pub mod outbox;
mod reservation;
pub mod rooms;
pub mod session;
pub mod world;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::{Identity as Key, IdentityError, PublicKey};
use crate::metrics::{MetricsServer, PeerMetrics};
use crate::names::{check_body, check_parting, private_key, NameError, Nick, Room};
use crate::net::Peers;
use crate::proto::chat_server::ChatServer;
use crate::proto::{self, ChatMessage, Member};
use crate::store::{lock_data_dir, DirLock, Identity, Store, StoreError};
use crate::sync::{SyncCounts, SyncError, Syncer};
use crate::tls::{Tls, TlsError};
use crate::trust::{KeyError, Keys, KnownKeys, TrustError};
use events::Events;
pub use events::{PeerEvent, Presence};
use outbox::Outbox;
pub use outbox::SendReport;
use rooms::Rooms;
use session::{Session, SessionConfig, SessionError, SessionEvent};

/// Largest request the chat service decodes: a message body is at most
/// 40,000 bytes of UTF-8; a pull request's vector stays far below this.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// The files of a peer's data directory (tools such as `bench` write them
/// before a peer starts): its history, its identity key, and the keys it
/// has met.
pub const HISTORY_FILE: &str = "history.db";
pub const KEY_FILE: &str = "identity.key";
pub const KNOWN_KEYS_FILE: &str = "known_keys";
/// How often a peer compares histories with the other members of each
/// conversation it is in, when nothing prompts it sooner.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed delivery or a reconnection, how long anti-entropy waits
/// before it runs (failures come in bursts; one pass covers them all).
const KICK_DELAY: Duration = Duration::from_millis(500);
/// Gaps waiting for their repair to be scheduled; past it a gap is left to
/// the repairs already waiting and to anti-entropy.
const GAPS_WAITING: usize = 1024;

/// Errors of the peer layer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("not in {0}: /join it first")]
    NotInRoom(String),
    #[error("no room {0}")]
    NoSuchRoom(String),
    #[error("nick {0} is taken: bound to another key, or in use")]
    NickTaken(String),
    #[error("that is you: a private message needs someone else")]
    ToSelf,
    #[error("cannot serve chat: the listener has no address ({0})")]
    Listener(#[source] std::io::Error),
    #[error("cannot serve metrics on {at}: {cause}")]
    Metrics {
        at: SocketAddr,
        #[source]
        cause: std::io::Error,
    },
    #[error("the history store's thread could not start: {0}")]
    StoreThread(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The setting that keeps who is ignored: nick keys, space separated.
const IGNORED: &str = "ignored";

/// What [`Peer::change_nick`] did.
#[derive(Debug, Clone)]
pub struct NickChange {
    /// The nick held before, as the router had it written.
    pub old: String,
    pub new: String,
    /// The rooms whose online members took the nick-change event (the
    /// rest of each room is owed it, as for any line).
    pub rooms: Vec<String>,
    /// Rooms the event could not be sent to now, and why.
    pub unsent: Vec<(String, String)>,
}

/// What `/whois` tells of a nick.
#[derive(Debug, Clone)]
pub struct Whois {
    pub nick: String,
    /// Online now, at this address.
    pub address: Option<String>,
    /// Its away message, while online and away.
    pub away: Option<String>,
    /// The rooms it sits in, as the router shows them.
    pub rooms: Vec<String>,
    /// Seconds since it last sent a line, when online and known.
    pub idle_secs: Option<u64>,
    /// The key the router binds the nick to.
    pub key: Option<PublicKey>,
    /// The key this peer knows for it (first met).
    pub known: Option<PublicKey>,
    /// Another key it came back with, not trusted yet.
    pub pending: Option<PublicKey>,
}

/// One line of `/users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub nick: String,
    /// Its away message, when away.
    pub away: Option<String>,
}

/// How a peer starts.
pub struct PeerConfig {
    pub nick: Nick,
    /// host:port of each router, tried in this order: the peer talks to
    /// one and moves to the next when it stops answering.
    pub routers: Vec<String>,
    /// Where the chat service listens (already bound: port 0 works).
    pub listener: TcpListener,
    /// Holds the history, the identity and the lock.
    pub data_dir: PathBuf,
    /// The address others reach this peer at, when it is not the
    /// listener's own (a proxy, a NAT, or a listener on 0.0.0.0).
    pub advertise: Option<String>,
    /// How often histories are compared with the other members (jittered).
    pub sync_interval: Duration,
    /// The routers' key fingerprints, when given (`--router-key`): one for
    /// all, or one per router in order; else each key is pinned on first
    /// contact.
    pub router_keys: Vec<String>,
    /// Neither sign nor check messages. Only for `bench`'s one comparison
    /// of what signatures cost (scenario `private-unsigned`); the `peer`
    /// binary never sets it, and every peer that checks refuses what such
    /// a peer sends.
    #[doc(hidden)]
    pub unsigned: bool,
    /// How long an online member may go without answering before what it
    /// is owed goes to its mailbox at the router instead.
    pub deposit_after: Duration,
    /// Where to serve this peer's Prometheus metrics (`GET /metrics`), if
    /// anywhere; port 0 takes a free port ([`Peer::metrics_addr`]).
    pub metrics: Option<SocketAddr>,
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
            routers: vec![router.into()],
            listener,
            data_dir,
            advertise: None,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            router_keys: Vec::new(),
            unsigned: false,
            deposit_after: outbox::DEPOSIT_AFTER,
            metrics: None,
        }
    }
}

/// What a join did.
#[derive(Debug, Clone)]
pub struct Joined {
    pub room: String,
    pub members: Vec<String>,
    /// Messages of the room held after catching up.
    pub version: u64,
    pub created: bool,
    /// Messages that catching up brought in.
    pub new: usize,
}

/// What catching up on one conversation did.
struct Caught {
    /// Messages held afterwards.
    version: u64,
    /// Messages it brought in.
    new: usize,
    /// Whether any other member answered.
    reached: bool,
}

/// How long quitting waits for what it owes the offline to be deposited.
const QUIT_DEPOSIT: Duration = Duration::from_secs(5);

/// A running peer. Cheap to clone.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    key: Arc<Key>,
    store: Store,
    listen: SocketAddr,
    /// Where the metrics are served, if they are.
    metrics_addr: Option<SocketAddr>,
    session: Session,
    outbox: Outbox,
    sync: Syncer,
    peers: Peers,
    rooms: Rooms,
    events: Events,
    /// The chat service's admission, served and used by the drainer.
    chat: chat::ChatService,
    /// Drains this peer's mailbox at the router.
    drainer: mailbox::Drainer,
    /// Wakes anti-entropy early (a failed delivery, a reconnection).
    kick: Arc<Notify>,
    sync_interval: Duration,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Released when the peer stops, so a restart in this process can take
    /// the data directory again.
    dir_lock: Mutex<Option<DirLock>>,
}

impl Peer {
    /// Opens the history, serves the chat service, logs in, rejoins the
    /// rooms it was in, and starts the background loops. Returns the handle
    /// and the events the person should see.
    pub async fn start(config: PeerConfig) -> Result<(Peer, mpsc::Receiver<PeerEvent>), PeerError> {
        // First: an address that cannot be bound fails the start before
        // anything is written.
        let metrics_server = match config.metrics {
            Some(at) => Some(
                MetricsServer::bind(at)
                    .await
                    .map_err(|cause| PeerError::Metrics { at, cause })?,
            ),
            None => None,
        };
        let metrics_addr = metrics_server.as_ref().map(MetricsServer::local_addr);
        let metrics = PeerMetrics::new();
        let dir = config.data_dir.clone();
        let unsigned = config.unsigned;
        let (dir_lock, store, key, known) = tokio::task::spawn_blocking(move || {
            let lock = lock_data_dir(&dir)?;
            let key = Arc::new(Key::load_or_create(&dir.join(KEY_FILE))?);
            let known = KnownKeys::open(&dir.join(KNOWN_KEYS_FILE))?;
            let signer = (!unsigned).then(|| key.clone());
            let store = Store::open_signed(&dir.join(HISTORY_FILE), signer)?;
            Ok::<_, PeerError>((lock, store, key, known))
        })
        .await
        .map_err(|e| PeerError::StoreThread(e.to_string()))??;
        let tls = Tls::new(&key)?;
        let listen = config.listener.local_addr().map_err(PeerError::Listener)?;
        let identity = store.identity();
        // Before anything starts a task: a failure here leaves nothing
        // running.
        let rooms = Rooms::load(store.clone()).await?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let advertise = config.advertise.unwrap_or_else(|| listen.to_string());
        let me = crate::net::Me::new(config.nick.as_str(), &advertise);
        let away = away::Away::default();
        let (session, session_events) = Session::connect(
            SessionConfig {
                nick: config.nick.clone(),
                routers: config.routers,
                advertise,
                identity: key.clone(),
                tls: tls.clone(),
                known: known.clone(),
                router_keys: config.router_keys,
                me: me.clone(),
                away: away.clone(),
            },
            stop.clone(),
            tasks.clone(),
        )
        .await?;
        let (events, events_rx) = Events::new();
        let on_changed = {
            let events = events.clone();
            Arc::new(move |nick: &str, known: PublicKey, got: PublicKey| {
                tracing::warn!(nick, %known, %got, "a known nick came back with another key");
                events.emit(PeerEvent::Warning {
                    nick: nick.to_owned(),
                    text: format!(
                        "{nick} now presents key {got}, not the {known} first met: nothing goes to \
                         or comes from {nick} until you check with them and /trust {nick}"
                    ),
                });
            })
        };
        let keys = Keys::new(known.clone(), Arc::new(session.clone()), on_changed);
        let peers = Peers::new(tls.clone(), keys.clone())
            .reaching(me)
            .tracked(tasks.clone(), stop.clone())
            .metered(metrics.clone());
        let kick = Arc::new(Notify::new());
        let on_fresh = {
            let events = events.clone();
            Arc::new(move |msgs| events.messages(msgs))
        };
        let outbox = Outbox::new(
            store.clone(),
            peers.clone(),
            session.clone(),
            events.clone(),
            kick.clone(),
            identity.incarnation,
            (
                mailbox::Sealer::new(session.clone(), peers.clone(), key.clone()),
                config.deposit_after,
            ),
            stop.clone(),
            tasks.clone(),
        );
        let rooms_kept = rooms.clone();
        let checks = checks::Checks::new(store.clone(), events.clone(), metrics.clone());
        if !unsigned {
            // What a crash left unchecked is checked before this peer
            // counts or serves anything.
            match checks.drain().await {
                Ok(c) if c.good + c.refuted > 0 => tracing::info!(
                    checked = c.good + c.refuted,
                    refuted = c.refuted,
                    "checked what the last run left unchecked"
                ),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot check what was left unchecked; later")
                }
            }
            checks.spawn(&tasks, stop.clone());
        }
        let (gaps, mut gaps_rx) = mpsc::channel(GAPS_WAITING);
        let intake = intake::Intake {
            check_signatures: !unsigned,
            checks,
            store: store.clone(),
            session: session.clone(),
            rooms: rooms_kept,
            gaps,
            peers: peers.clone(),
            events: events.clone(),
            away: away.clone(),
            metrics,
        };
        let sync = Syncer::new(
            store.clone(),
            peers.clone(),
            Arc::new(intake.clone()),
            session.nick_cell(),
            on_fresh,
            tasks.clone(),
            stop.clone(),
        );
        {
            // Gaps that intake saw, repaired by the sync (which pulls
            // through intake in turn).
            let (sync, stop) = (sync.clone(), stop.clone());
            tasks.spawn(async move {
                loop {
                    let gap = tokio::select! {
                        _ = stop.cancelled() => return,
                        gap = gaps_rx.recv() => gap,
                    };
                    let Some((msg, sender)) = gap else { return };
                    sync.repair_gap(&msg, sender);
                }
            });
        }
        let chat = chat::ChatService {
            intake: intake.clone(),
            store: store.clone(),
            session: session.clone(),
            peers: peers.clone(),
            pulls: Default::default(),
            stop: stop.clone(),
            tasks: tasks.clone(),
        };
        let drainer = mailbox::Drainer::new(intake, session.clone(), &key, events.clone());
        let peer = Peer {
            inner: Arc::new(Inner {
                identity,
                key,
                store,
                listen,
                metrics_addr,
                session,
                outbox,
                sync,
                peers,
                rooms,
                events,
                chat,
                drainer,
                kick,
                sync_interval: config.sync_interval,
                stop,
                tasks,
                dir_lock: Mutex::new(Some(dir_lock)),
            }),
        };

        // From here a failure stops the peer, and the server with it.
        if let Some(server) = metrics_server {
            let registry = peer.metrics().registry();
            peer.inner
                .tasks
                .spawn(server.run(registry, peer.inner.stop.clone()));
        }
        // Serve before logging in: the router hands our address to others
        // the moment we are online.
        // Connections made for others (dialed back, relayed) join the
        // listener's.
        let (reached_tx, reached) = mpsc::channel(64);
        peer.spawn_server(config.listener, &tls, reached);
        if let Err(e) = peer.inner.session.login().await {
            peer.stop_now().await;
            return Err(e.into());
        }
        // Nobody can dial this peer: the reservation is held before the
        // peer says it is ready, so those who reach it find it.
        let first = if peer.reachable() {
            None
        } else {
            reservation::open(&peer.inner.session).await
        };
        {
            let (session, tls, stop) = (
                peer.inner.session.clone(),
                tls.clone(),
                peer.inner.stop.clone(),
            );
            peer.inner
                .tasks
                .spawn(reservation::hold(session, tls, reached_tx, first, stop));
        }
        let partners = peer.inner.sync.private_partners().await;
        peer.inner.session.seed_follow(partners);
        peer.inner.session.spawn_loops();
        let back = peer.rejoin(false).await;
        peer.spawn(|p| async move { p.react(session_events).await });
        peer.spawn(|p| async move { p.inner.outbox.run().await });
        peer.spawn(|p| async move { p.anti_entropy().await });
        peer.spawn(|p| async move {
            // What waited at the router first: it is older than anything
            // a member may hand over now.
            let drained = match p.inner.drainer.drain(true).await {
                Ok(d) => d,
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot drain the mailbox; trying again at the next heartbeat");
                    Default::default()
                }
            };
            p.announce_back(back, &drained).await;
            let private = p.private_conversations().await;
            p.inner.sync.round(private).await;
        });
        Ok((peer, events_rx))
    }

    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Peer) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(f(self.clone()));
    }

    /// The nick this peer goes by now (a [`Peer::change_nick`] moves it).
    pub fn nick(&self) -> Nick {
        self.inner.session.nick()
    }

    /// Moves this peer's nick to `new` (`/nick NEW`): the router moves the
    /// key's binding (the old nick is free for anyone after) and the
    /// session's rooms to `new`, then a signed nick-change event (a
    /// [`proto::Kind::Nick`] message: author `new`, body the old nick)
    /// goes into each room this peer sits in, through the outbox like any
    /// line, so it stays in each room's history for late joiners.
    /// Receivers tell the person with [`PeerEvent::NickChanged`]. Refused
    /// ([`PeerError::NickTaken`]) when `new` is bound to another key or in
    /// use; a refused change changes nothing. Private conversations keep
    /// their names (`@a+b` of the old nick); partners follow the key (see
    /// [`Peer::same_person`]).
    pub async fn change_nick(&self, new: &Nick) -> Result<NickChange, PeerError> {
        let before = self.nick();
        let old = self
            .inner
            .session
            .change_nick(new)
            .await
            .map_err(|err| match err {
                // The router's refusal names the new nick, not the one the
                // session logged in with.
                SessionError::NickTaken(_) => PeerError::NickTaken(new.to_string()),
                err => PeerError::Session(err),
            })?;
        let world = self.inner.session.world();
        // The picture moves now, so the sends below do not owe this peer
        // its own event under the old nick; the watch's event, later, finds
        // it done.
        world.rename(before.as_str(), new.as_str());
        let mut change = NickChange {
            old: old.clone(),
            new: new.to_string(),
            rooms: Vec::new(),
            unsent: Vec::new(),
        };
        if old.eq_ignore_ascii_case(new.as_str()) {
            // Only how it is written changed: nobody's binding moved.
            return Ok(change);
        }
        for name in world.my_rooms() {
            let Ok(room) = Room::parse(&name) else {
                continue;
            };
            match self.send_room_kind(&room, (proto::Kind::Nick, &old)).await {
                Ok(_) => change.rooms.push(name),
                // Written and owed before any send: the outbox delivers it
                // later, or the write itself failed.
                Err(err) => {
                    tracing::warn!(%room, cause = %err, "nick change not sent to a room");
                    change.unsent.push((name, err.to_string()));
                }
            }
        }
        Ok(change)
    }

    /// Whether nicks `a` and `b` are one person here: known for one key
    /// (a nick change seen in a room, or met apart with the same key).
    /// This peer's own nicks are compared with its own key.
    pub fn same_person(&self, a: &Nick, b: &Nick) -> bool {
        if a.key() == b.key() {
            return true;
        }
        let keys = self.inner.peers.keys();
        let mine = self.nick().key();
        let of = |n: &Nick| {
            if n.key() == mine {
                Some(self.key())
            } else {
                keys.known().get(n.as_str())
            }
        };
        matches!((of(a), of(b)), (Some(x), Some(y)) if x == y)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// Where this peer's metrics are served (`GET /metrics`), if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.inner.metrics_addr
    }

    /// This peer's figures (the chat service holds the handle: its receive
    /// path counts what comes in).
    pub fn metrics(&self) -> &PeerMetrics {
        &self.inner.chat.intake.metrics
    }

    /// Whether the router could dial this peer back at its last login;
    /// when not, others reach it through the router.
    pub fn reachable(&self) -> bool {
        self.inner.session.reachable()
    }

    /// The address others are told to dial this peer at.
    pub fn advertised(&self) -> String {
        self.inner.peers.me().advertise()
    }

    /// Asks the router to dial this peer back again (a port opened, a
    /// firewall changed); when the answer differs from the session's, logs
    /// in again so the registry records it. Whether the peer is reachable.
    pub async fn recheck_reach(&self) -> Result<bool, PeerError> {
        Ok(self.inner.session.recheck_reach().await?)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn incarnation(&self) -> u64 {
        self.inner.identity.incarnation
    }

    /// What catching up has cost so far (queries, bytes, pulls).
    pub fn sync_stats(&self) -> SyncCounts {
        self.inner.sync.stats()
    }

    /// The rooms this peer is in (kept across restarts), as first written.
    pub fn rooms_in(&self) -> Vec<Room> {
        self.inner.rooms.all()
    }

    /// This peer's public key.
    pub fn key(&self) -> PublicKey {
        self.inner.key.public()
    }

    /// What is known of `nick`'s key: the router's binding, the key first
    /// met, and a changed one waiting for `/trust`.
    pub async fn whois(&self, nick: &Nick) -> Result<Whois, PeerError> {
        let r = self.inner.session.find(nick.as_str()).await?;
        let key = if r.key.is_empty() {
            None
        } else {
            PublicKey::from_bytes(&r.key).ok()
        };
        Ok(Whois {
            nick: if r.found { r.name } else { nick.to_string() },
            address: r.members.into_iter().next().map(|m| m.address),
            away: Some(r.away).filter(|a| !a.is_empty()),
            rooms: r.rooms,
            idle_secs: r.idle_secs,
            key,
            known: self.inner.peers.keys().known().get(nick.as_str()),
            pending: self.inner.peers.keys().known().pending(nick.as_str()),
        })
    }

    /// Accepts the key `nick` came back with (after checking with them).
    /// Returns the key now trusted.
    pub async fn trust(&self, nick: &Nick) -> Result<PublicKey, PeerError> {
        let key = self.inner.peers.keys().accept(nick.as_str()).await?;
        // What waited for the key goes out now.
        self.inner.kick.notify_one();
        Ok(key)
    }

    /// Serves the chat service on `listener`, and on the connections
    /// `reached` hands over (dialed back or relayed to this peer).
    fn spawn_server(
        &self,
        listener: TcpListener,
        tls: &Tls,
        reached: mpsc::Receiver<crate::tls::TlsConn>,
    ) {
        let inner = &self.inner;
        let svc = ChatServer::new(inner.chat.clone())
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(crate::net::MAX_MESSAGE_BYTES);
        let stop = inner.stop.clone();
        let incoming = tls.incoming_with(
            listener,
            crate::tls::Accept {
                extra: Some(reached),
                reversals: Some(inner.peers.reversals()),
                relay: None,
            },
        );
        inner.tasks.spawn(async move {
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

    /// Sleeps, or returns true at once if the peer is stopping.
    async fn sleep_or_stop(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.inner.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    /// Acts on what the session reports, in tasks of its own: nothing here
    /// runs under the session's guard.
    async fn react(&self, mut events: mpsc::Receiver<SessionEvent>) {
        loop {
            let event = tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                e = events.recv() => e,
            };
            let Some(event) = event else { return };
            match event {
                SessionEvent::Online(member) => {
                    self.spawn(|p| async move { p.inner.outbox.flush(&member.nick).await })
                }
                SessionEvent::RoomGone { room, by } => {
                    if let Err(err) = self.inner.rooms.remove(&room).await {
                        tracing::warn!(%room, cause = %err, "cannot forget a deleted room");
                    }
                    self.inner.events.emit(PeerEvent::Left {
                        room,
                        reason: format!("deleted by {by}"),
                    });
                }
                SessionEvent::LoggedInAgain => {
                    self.inner
                        .events
                        .emit(PeerEvent::Notice("logged in to the router again".into()));
                    self.spawn(|p| async move {
                        let back = p.rejoin(false).await;
                        if let Err(err) = p.inner.drainer.drain(false).await {
                            tracing::warn!(cause = %err, "cannot drain the mailbox");
                        }
                        let mut convs = p.room_conversations(back);
                        convs.extend(p.private_conversations().await);
                        p.inner.sync.round(convs).await;
                    });
                }
                SessionEvent::Reconnected => self.inner.kick.notify_one(),
                SessionEvent::Presence {
                    room,
                    nick,
                    joined,
                    departure,
                    message,
                } => {
                    let change = match (joined, departure) {
                        (true, _) => events::Presence::Joined,
                        (false, proto::Departure::Left) => events::Presence::Left,
                        (false, proto::Departure::Quit) => events::Presence::Quit,
                        (false, proto::Departure::TimedOut) => events::Presence::TimedOut,
                    };
                    self.inner.events.emit(PeerEvent::Presence {
                        room,
                        nick,
                        change,
                        message,
                    });
                }
                SessionEvent::Router { up } => self.inner.events.emit(PeerEvent::Router { up }),
                SessionEvent::Mail { waiting } => {
                    tracing::debug!(waiting, "mail waits at the router");
                    self.spawn(|p| async move {
                        if let Err(err) = p.inner.drainer.drain(false).await {
                            tracing::warn!(cause = %err, "cannot drain the mailbox");
                        }
                    });
                }
            }
        }
    }

    /// Joins kept rooms at the router again (quick: no sync), so this peer
    /// can send and receive in them at once: every one after a new login,
    /// or (`only_missing`) those the picture does not show this peer in (a
    /// rejoin that failed while the router was away). Returns those
    /// rejoined.
    async fn rejoin(&self, only_missing: bool) -> Vec<Room> {
        let world = self.inner.session.world();
        let mut back = Vec::new();
        for room in self.inner.rooms.all() {
            // Checked at each step: the person may leave meanwhile.
            let skip = only_missing && world.in_room(room.as_str());
            if skip || !self.inner.rooms.contains(room.as_str()) {
                continue;
            }
            match self.join_router(&room).await {
                Ok(_) => back.push(room),
                Err(err) => tracing::warn!(%room, cause = %err, "cannot rejoin"),
            }
        }
        back
    }

    /// Catches up on `rooms`, rejoined at start, and tells the person:
    /// `-- back in #rust (3 new)`, counting what waited in the mailbox
    /// (`drained`) too.
    async fn announce_back(&self, rooms: Vec<Room>, drained: &mailbox::Drained) {
        for room in rooms {
            let members = self.room_members(&room);
            let mailed = drained
                .by_conversation
                .get(&room.key())
                .copied()
                .unwrap_or(0);
            let new = match self.catch_up(&room.key(), &members).await {
                Ok(caught) => caught.new + mailed,
                Err(err) => {
                    tracing::warn!(%room, cause = %err, "cannot catch up; anti-entropy will retry");
                    mailed
                }
            };
            self.inner.events.emit(PeerEvent::Back {
                room: room.to_string(),
                new,
            });
        }
    }

    /// Syncs one conversation from `members` and pushes this peer's own
    /// messages to those lacking them. Nobody answering is not an error:
    /// anti-entropy is woken to try again soon.
    async fn catch_up(&self, conv: &str, members: &[Member]) -> Result<Caught, PeerError> {
        // What links handed over is counted once checked: check it first,
        // so the version compared and reported is all this peer holds.
        self.inner.chat.intake.checks.settle().await;
        match self.inner.sync.conversation(conv, members).await {
            Ok(synced) => {
                self.inner.sync.push_own(conv, synced.behind);
                Ok(Caught {
                    version: synced.version,
                    new: synced.pulled.len(),
                    reached: true,
                })
            }
            Err(SyncError::NobodyReachable { .. }) => {
                self.inner.kick.notify_one();
                Ok(Caught {
                    version: self.inner.store.version(conv).await?.count,
                    new: 0,
                    reached: false,
                })
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Members of `room` as the picture has them, this peer included.
    fn room_members(&self, room: &Room) -> Vec<Member> {
        self.inner
            .session
            .world()
            .members(room.as_str())
            .unwrap_or_default()
    }

    /// `rooms` with their members, as anti-entropy takes them.
    fn room_conversations(&self, rooms: Vec<Room>) -> Vec<(String, Vec<Member>)> {
        rooms
            .into_iter()
            .map(|room| (room.key(), self.room_members(&room)))
            .filter(|(_, members)| !members.is_empty())
            .collect()
    }

    /// Private conversations whose other side the picture shows online.
    async fn private_conversations(&self) -> Vec<(String, Vec<Member>)> {
        let world = self.inner.session.world();
        self.inner
            .sync
            .private_conversations(|nick| world.user(nick))
            .await
    }

    /// Compares histories with every member of every conversation this peer
    /// is in, every `sync_interval` (jittered, so peers do not ask in step)
    /// and soon after a failed delivery or a reconnection.
    async fn anti_entropy(&self) {
        loop {
            let wait = self
                .inner
                .sync_interval
                .mul_f64(rand::rng().random_range(0.8..1.2));
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.kick.notified() => {
                    if self.sleep_or_stop(KICK_DELAY).await {
                        return;
                    }
                }
            }
            self.rejoin(true).await;
            let mut convs = self.room_conversations(self.inner.rooms.all());
            convs.extend(self.private_conversations().await);
            self.inner.sync.round(convs).await;
        }
    }

    /// Joins `room` (creating it if new), syncs its history, and keeps it
    /// as one this peer is in, across restarts.
    pub async fn join(&self, room: &Room) -> Result<Joined, PeerError> {
        let resp = self.join_router(room).await?;
        self.inner.rooms.add(room).await?;
        let caught = self.catch_up(&room.key(), &resp.members).await?;
        if !caught.reached {
            self.inner.events.emit(PeerEvent::Notice(format!(
                "no member of {room} answered; catching up later"
            )));
        }
        Ok(Joined {
            room: resp.room,
            members: resp.members.into_iter().map(|m| m.nick).collect(),
            version: caught.version,
            created: resp.created,
            new: caught.new,
        })
    }

    /// Joins `room` at the router, showing the room's creation event this
    /// history holds. When the router made the room and the history holds
    /// none, this peer writes one (it created the room, so it owns it) and
    /// shows it at once, before anyone else can claim the room with theirs.
    async fn join_router(&self, room: &Room) -> Result<proto::JoinRoomResponse, PeerError> {
        let creation = self.creation_of(room).await?;
        let resp = self.inner.session.join(room, creation.as_ref()).await?;
        if !resp.created || creation.is_some() {
            return Ok(resp);
        }
        let (online, absent) = self
            .inner
            .session
            .world()
            .recipients(room.as_str(), self.nick().as_str())
            .unwrap_or_default();
        let report = self
            .inner
            .outbox
            .send(
                room.key(),
                online,
                absent,
                (proto::Kind::Created, &resp.room),
            )
            .await?;
        let creation = (report.message, self.key());
        let again = self.inner.session.join(room, Some(&creation)).await?;
        Ok(proto::JoinRoomResponse {
            created: true,
            ..again
        })
    }

    /// The room's creation event this history holds and its author's key.
    async fn creation_of(
        &self,
        room: &Room,
    ) -> Result<Option<(ChatMessage, PublicKey)>, PeerError> {
        let Some(event) = self.inner.store.creation(&room.key()).await? else {
            return Ok(None);
        };
        let key = if event.author.eq_ignore_ascii_case(self.nick().as_str()) {
            Some(self.key())
        } else {
            // Every stored message was checked against its author's key,
            // which was remembered then.
            self.inner.peers.keys().known().get(&event.author)
        };
        Ok(key.map(|k| (event, k)))
    }

    /// Leaves `room`, telling its members the parting `message` (empty for
    /// none). A message the router would refuse is refused here first, and
    /// the room is kept.
    pub async fn leave(&self, room: &Room, message: &str) -> Result<(), PeerError> {
        check_parting(message)?;
        self.inner.rooms.remove(room.as_str()).await?;
        self.inner.session.leave(room, message).await?;
        Ok(())
    }

    /// Deletes `room` (owner only).
    pub async fn delete_room(&self, room: &Room) -> Result<(), PeerError> {
        self.inner.session.delete_room(room).await?;
        self.inner.rooms.remove(room.as_str()).await?;
        Ok(())
    }

    /// Opens the private conversation with `nick`: syncs its history from
    /// the other side if it is online. Returns the number of messages held.
    pub async fn open_private(&self, nick: &Nick) -> Result<u64, PeerError> {
        let conv = private_key(&self.nick(), nick);
        let members: Vec<Member> = self
            .inner
            .session
            .lookup_user(nick)
            .await
            .into_iter()
            .collect();
        Ok(self.catch_up(&conv, &members).await?.version)
    }

    /// Members of a room this peer sits in (from the router, fresh).
    pub async fn who(&self, room: &Room) -> Result<Vec<String>, PeerError> {
        let r = self.inner.session.find(room.as_str()).await?;
        if !r.found {
            return Err(PeerError::NoSuchRoom(room.to_string()));
        }
        Ok(r.members.into_iter().map(|m| m.nick).collect())
    }

    pub async fn rooms(&self) -> Result<Vec<proto::RoomInfo>, PeerError> {
        Ok(self.inner.session.list_rooms().await?)
    }

    /// Every online nick, with the away message of those away.
    pub async fn users(&self) -> Result<Vec<UserInfo>, PeerError> {
        let (users, away) = self.inner.session.list_users().await?;
        let mut away: HashMap<String, String> = away
            .into_iter()
            .map(|a| (a.nick.to_ascii_lowercase(), a.message))
            .collect();
        Ok(users
            .into_iter()
            .map(|m| UserInfo {
                away: away.remove(&m.nick.to_ascii_lowercase()),
                nick: m.nick,
            })
            .collect())
    }

    /// The last `limit` messages of a conversation (canonical key).
    pub async fn history(&self, conv: &str, limit: usize) -> Result<Vec<ChatMessage>, PeerError> {
        Ok(self.inner.store.history(conv, limit).await?)
    }

    /// `/lastlog`: the newest `limit` lines of any conversation that hold
    /// every word of `text` (or words starting so), oldest first.
    pub async fn lastlog(&self, text: &str, limit: usize) -> Result<Vec<ChatMessage>, PeerError> {
        Ok(self.inner.store.search(text, limit).await?)
    }

    /// The nick keys whose lines the person hides (`/ignore`), as kept in
    /// the history's file across restarts.
    pub async fn ignored(&self) -> Result<Vec<String>, PeerError> {
        let list = self.inner.store.setting(IGNORED).await?.unwrap_or_default();
        Ok(list.split_whitespace().map(str::to_owned).collect())
    }

    /// Keeps `nicks` (nick keys) as the ignored ones.
    pub async fn set_ignored(&self, nicks: &[String]) -> Result<(), PeerError> {
        Ok(self
            .inner
            .store
            .set_setting(IGNORED, &nicks.join(" "))
            .await?)
    }

    /// Whether `nick` came back with another key than the one first met,
    /// not yet accepted by `/trust`: nothing goes to it until then.
    pub fn key_changed(&self, nick: &str) -> bool {
        self.inner.peers.keys().known().pending(nick).is_some()
    }

    /// Sends `body` to a room this peer sits in.
    /// A line the person typed (a message or `/me`): it counts as activity
    /// for their idle time.
    pub async fn send_room(&self, room: &Room, body: &str) -> Result<SendReport, PeerError> {
        let sent = self.send_room_kind(room, (proto::Kind::Text, body)).await?;
        self.inner.session.note_active();
        Ok(sent)
    }

    /// Makes `topic` the room's topic: a topic event in its history, sent
    /// to every member like a message. Any member may set it.
    pub async fn set_topic(&self, room: &Room, topic: &str) -> Result<SendReport, PeerError> {
        self.send_room_kind(room, (proto::Kind::Topic, topic)).await
    }

    /// The room's topic event as this history holds it: the latest.
    pub async fn topic(&self, room: &Room) -> Result<Option<ChatMessage>, PeerError> {
        Ok(self.inner.store.topic(&room.key()).await?)
    }

    /// Marks the person away with `message` (told to whoever writes to
    /// them privately, and to the router, which shows it in `/whois` and
    /// `/users`), or back with `None`. A message longer than a parting
    /// message may be is refused, and nothing changes.
    pub async fn set_away(&self, message: Option<&str>) -> Result<(), PeerError> {
        if let Some(m) = message {
            check_body(m)?;
            check_parting(m)?;
        }
        Ok(self.inner.session.set_away(message).await?)
    }

    /// A message of `kind` to `room`. Every member the picture holds is
    /// owed it, those that may have only dropped out of the picture (a
    /// router restart) included.
    async fn send_room_kind(
        &self,
        room: &Room,
        (kind, body): (proto::Kind, &str),
    ) -> Result<SendReport, PeerError> {
        check_body(body)?;
        let world = self.inner.session.world();
        if world.has_absent(room.as_str()) {
            // Right after a router restart the picture may lack members
            // that are back already: ask once rather than owe them.
            if let Err(err) = self.inner.session.refresh_room(room.as_str()).await {
                tracing::debug!(%room, cause = %err, "cannot refresh before sending");
            }
        }
        let (online, absent) = self
            .inner
            .session
            .world()
            .recipients(room.as_str(), self.nick().as_str())
            .ok_or_else(|| PeerError::NotInRoom(room.to_string()))?;
        Ok(self
            .inner
            .outbox
            .send(room.key(), online, absent, (kind, body))
            .await?)
    }

    /// Sends `body` privately to `nick`; queued if `nick` is offline. A
    /// line the person typed: it counts as activity for their idle time.
    pub async fn send_private(&self, nick: &Nick, body: &str) -> Result<SendReport, PeerError> {
        check_body(body)?;
        if nick.key() == self.nick().key() {
            return Err(PeerError::ToSelf);
        }
        self.inner.session.note_active();
        let conv = private_key(&self.nick(), nick);
        self.inner.session.follow(nick);
        let (online, offline) = match self.inner.session.lookup_user(nick).await {
            // Reported under the nick as the person wrote it.
            Some(m) => (
                vec![Member {
                    nick: nick.to_string(),
                    ..m
                }],
                vec![],
            ),
            None => (vec![], vec![nick.to_string()]),
        };
        Ok(self
            .inner
            .outbox
            .send(conv, online, offline, (proto::Kind::Text, body))
            .await?)
    }

    /// Logs out and stops serving; waits for the peer's tasks to end.
    pub async fn shutdown(&self) {
        self.quit("").await;
    }

    /// [`Peer::shutdown`] with a parting message (IRC's QUIT message) for
    /// the members of every room this peer is in. A message the router
    /// would refuse is dropped (with a warning) rather than keep the
    /// session from ending.
    pub async fn quit(&self, message: &str) {
        let message = match check_parting(message) {
            Ok(()) => message,
            Err(err) => {
                tracing::warn!(cause = %err, "quitting without the parting message");
                ""
            }
        };
        // What is owed to those away goes to their mailboxes first, so a
        // line written just before quitting does not wait for this peer's
        // return.
        self.inner
            .outbox
            .deposit_for_the_offline(QUIT_DEPOSIT)
            .await;
        self.inner.session.logout(message).await;
        self.stop_now().await;
    }

    /// Stops without logging out, as a crash would (the lease runs out).
    pub async fn stop_now(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.inner.tasks.wait()).await;
        self.inner
            .dir_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}
