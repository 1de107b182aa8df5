//! The embedded registry: everything in one process's memory, with what
//! it binds (nick → key, room → owner) also in a file when it has one
//! (see `durable`), so a restart forgets only sessions and memberships.
//!
//! State sits behind a std `Mutex` that is never held across an `.await`, so
//! every operation is one short critical section: that is what makes racing
//! logins and racing room creators end with exactly one winner. Leases expire
//! through one purge task woken by a `Notify` (mini-redis's design), which
//! runs on `tokio::time` so tests can pause the clock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::durable::{now_ms, BindingRow, Durable, OwnerRow};
use super::watcher::{check_follow, Alive, Feed, Watcher};
use super::{
    new_token, Creation, Departure, Event, EventKind, EventStream, Member, Presence, Registry,
    RegistryError, RoomInfo, RoomSnapshot, Session, Token, UserLookup, UserPresence, BINDING_TTL,
    MAX_NICKS_PER_KEY, MIN_LEASE_TTL,
};
use crate::identity::PublicKey;
use crate::mailbox::{MailStore, SqliteMail, MAILBOX_FILE};
use crate::names::{check_address, check_parting, Nick, Room};

/// Events buffered per watcher before it is cut off as too slow.
const WATCH_BUFFER: usize = 4096;

/// A cheap, cloneable handle to the in-memory registry. The purge task stops
/// when the last handle is dropped.
#[derive(Clone)]
pub struct MemoryRegistry {
    shared: Arc<Shared>,
    /// Mailboxes: in a file beside the registry's, or in memory with it.
    mail: Arc<SqliteMail>,
    _purge: Arc<DropGuard>,
}

/// How a [`MemoryRegistry`] is made.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// How long a lease lasts without a heartbeat (at least
    /// [`MIN_LEASE_TTL`]).
    pub lease_ttl: Duration,
    /// The file that keeps bindings and owners across restarts; `None`
    /// keeps them in memory only (they end with the process).
    pub file: Option<PathBuf>,
    /// A nick whose key has not been seen (logged in or out) for this long
    /// is released: the next key to claim it gets it.
    pub binding_ttl: Duration,
}

impl MemoryOptions {
    /// Leases of `lease_ttl`, nothing on disk, the default binding expiry.
    pub fn new(lease_ttl: Duration) -> MemoryOptions {
        MemoryOptions {
            lease_ttl,
            file: None,
            binding_ttl: BINDING_TTL,
        }
    }
}

struct Shared {
    ttl: Duration,
    binding_ttl: Duration,
    /// Never held across an `.await`.
    state: Mutex<State>,
    events: broadcast::Sender<Feed>,
    /// Wakes the purge task when the earliest expiry may have moved.
    purge: Notify,
}

struct SessionState {
    nick: String,
    nick_key: String,
    address: String,
    /// The router holding its reservation, when it cannot be dialed.
    relay: String,
    key: PublicKey,
    expires: Instant,
    /// Keys of the rooms this session sits in.
    rooms: BTreeSet<String>,
    /// What the session told of its person; goes with the session.
    presence: Presence,
}

impl SessionState {
    fn member(&self) -> Member {
        Member {
            nick: self.nick.clone(),
            address: self.address.clone(),
            key: self.key,
            relay: self.relay.clone(),
        }
    }
}

type Events = broadcast::Sender<Feed>;

/// A room with members. Its owner is in [`State::owners`], which outlives
/// the members.
struct RoomState {
    name: String,
    /// Nick keys in join order.
    members: Vec<String>,
}

/// Who owns a room, decided once when the record is made; kept until the
/// room is deleted, whether or not anyone sits in it.
#[derive(Clone)]
struct Owner {
    /// The room's name as its creator wrote it.
    name: String,
    owner: String,
    owner_key: PublicKey,
    /// Order of the creation event the owner came from; `None` when the
    /// owner is the caller that made the room here.
    proof: Option<(i64, String, u64, u64)>,
}

/// A nick's binding.
#[derive(Clone)]
struct Bound {
    nick: String,
    key: PublicKey,
}

/// What is kept per bound key: a login or logout touches one entry, not a
/// scan of every binding.
#[derive(Clone, Copy, Default)]
struct KeyState {
    /// Nicks bound to it.
    nicks: usize,
    /// When a session of it last began or ended (wall clock, ms).
    seen_ms: i64,
}

#[derive(Default)]
struct State {
    revision: u64,
    sessions: HashMap<Token, SessionState>,
    /// Nick key → token of the session holding it.
    users: HashMap<String, Token>,
    /// Nick key → the key it is bound to, until the key goes unseen for
    /// the binding TTL.
    bindings: HashMap<String, Bound>,
    /// Bound key → its nick count and when it was last seen.
    keys: HashMap<PublicKey, KeyState>,
    /// Room key → room, while it has members.
    rooms: HashMap<String, RoomState>,
    /// Room key → its owner, until it is deleted.
    owners: HashMap<String, Owner>,
    /// Nick key → the nick keys its latest watch follows (kept after its
    /// session ends: whom it follows decides who sees it come back).
    follows: HashMap<String, HashSet<String>>,
    expiry: BTreeSet<(Instant, Token)>,
    /// Where bindings and owners are kept; `None`: memory only.
    durable: Option<Durable>,
}

impl MemoryRegistry {
    /// A registry whose leases last `ttl` (at least [`MIN_LEASE_TTL`]),
    /// holding everything in memory only. Must be called inside a tokio
    /// runtime: it spawns the purge task.
    pub fn new(ttl: Duration) -> Result<MemoryRegistry, RegistryError> {
        MemoryRegistry::with(MemoryOptions::new(ttl))
    }

    /// A registry made as `options` say; with a file, the bindings and
    /// owners it holds are loaded (bindings expired since are released).
    pub fn with(options: MemoryOptions) -> Result<MemoryRegistry, RegistryError> {
        let ttl = options.lease_ttl;
        if ttl < MIN_LEASE_TTL {
            return Err(RegistryError::InvalidArgument(format!(
                "lease TTL must be at least {} s",
                MIN_LEASE_TTL.as_secs()
            )));
        }
        let mut state = State::default();
        let mail = match options.file.as_deref().and_then(|f| f.parent()) {
            Some(dir) => SqliteMail::open(&dir.join(MAILBOX_FILE)),
            None => SqliteMail::in_memory(),
        }
        .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        if let Some(path) = &options.file {
            let durable = Durable::open(path)?;
            let (bindings, owners) = durable.load()?;
            for b in bindings {
                let k = state.keys.entry(b.key).or_default();
                k.nicks += 1;
                k.seen_ms = k.seen_ms.max(b.seen_ms);
                state.bindings.insert(
                    b.nick_key,
                    Bound {
                        nick: b.nick,
                        key: b.key,
                    },
                );
            }
            for o in owners {
                state.owners.insert(
                    o.room_key,
                    Owner {
                        name: o.name,
                        owner: o.owner,
                        owner_key: o.owner_key,
                        proof: o.proof,
                    },
                );
            }
            tracing::info!(
                path = %path.display(),
                bindings = state.bindings.len(),
                owners = state.owners.len(),
                "registry file loaded"
            );
            // Keys unseen past the TTL while the router was down lose
            // their nicks now; the rest are released when claimed.
            let now = now_ms();
            let stale: Vec<String> = state
                .bindings
                .iter()
                .filter(|(_, b)| state.expired(&b.key, options.binding_ttl, now))
                .map(|(k, _)| k.clone())
                .collect();
            state.durable = Some(durable);
            for nick_key in stale {
                state.release(&nick_key)?;
            }
        }
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let shared = Arc::new(Shared {
            ttl,
            binding_ttl: options.binding_ttl,
            state: Mutex::new(state),
            events,
            purge: Notify::new(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(purge_expired(shared.clone(), stop.clone()));
        Ok(MemoryRegistry {
            shared,
            mail: Arc::new(mail),
            _purge: Arc::new(stop.drop_guard()),
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, never a
        // half-applied change that later calls could trip on, so poisoning
        // carries no information worth dying for.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Tells `audience` of `kind` (and, for presence, those its nick
    /// follows who follow it too: see `watcher`).
    fn emit(&mut self, events: &Events, kind: EventKind, audience: HashSet<Token>) -> u64 {
        let followed = match &kind {
            EventKind::UserOnline(m)
            | EventKind::UserOffline(m)
            | EventKind::NickChanged { member: m, .. } => self
                .follows
                .get(&m.nick.to_ascii_lowercase())
                .map(|f| {
                    f.iter()
                        .filter_map(|y| self.users.get(y).cloned())
                        .collect()
                })
                .unwrap_or_default(),
            _ => HashSet::new(),
        };
        self.emit_to(events, kind, audience, followed)
    }

    fn emit_to(
        &mut self,
        events: &Events,
        kind: EventKind,
        audience: HashSet<Token>,
        followed: HashSet<Token>,
    ) -> u64 {
        self.revision += 1;
        // No receivers is fine: nobody is watching.
        let _ = events.send(Feed::event(
            Event {
                revision: self.revision,
                kind,
            },
            audience,
            followed,
        ));
        self.revision
    }

    /// The sessions sitting in room `key`.
    fn room_audience(&self, key: &str) -> HashSet<Token> {
        self.rooms
            .get(key)
            .map(|r| {
                r.members
                    .iter()
                    .filter_map(|m| self.users.get(m).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The session `token` and every session sharing a room with it.
    fn peers_audience(&self, token: &str) -> HashSet<Token> {
        let mut out = HashSet::from([token.to_owned()]);
        if let Some(s) = self.sessions.get(token) {
            for room in &s.rooms {
                out.extend(self.room_audience(room));
            }
        }
        out
    }

    fn live(&self, token: &str, now: Instant) -> Result<&SessionState, RegistryError> {
        match self.sessions.get(token) {
            Some(s) if s.expires > now => Ok(s),
            _ => Err(RegistryError::Unauthenticated),
        }
    }

    /// Whether `key` has gone unseen past `binding_ttl` at `now_ms`.
    fn expired(&self, key: &PublicKey, binding_ttl: Duration, now_ms: i64) -> bool {
        let ttl = i64::try_from(binding_ttl.as_millis()).unwrap_or(i64::MAX);
        let seen = self.keys.get(key).map_or(0, |k| k.seen_ms);
        now_ms.saturating_sub(seen) > ttl
    }

    /// Marks `key` seen at `now`, in the file and here.
    fn seen(&mut self, key: &PublicKey, now: i64) -> Result<(), RegistryError> {
        if let Some(d) = &self.durable {
            d.seen(key, now)?;
        }
        if let Some(k) = self.keys.get_mut(key) {
            k.seen_ms = now;
        }
        Ok(())
    }

    /// Drops the binding of `nick_key`, in the file and here.
    fn release(&mut self, nick_key: &str) -> Result<(), RegistryError> {
        if let Some(d) = &self.durable {
            d.release(nick_key)?;
        }
        if let Some(b) = self.bindings.remove(nick_key) {
            if let Some(k) = self.keys.get_mut(&b.key) {
                k.nicks = k.nicks.saturating_sub(1);
                if k.nicks == 0 {
                    self.keys.remove(&b.key);
                }
            }
        }
        Ok(())
    }

    /// Binds `nick` to `key`, or finds it bound to `key` already: refused
    /// when another key holds it (unless that key went unseen past the
    /// binding TTL and holds no session: then it is released), or when
    /// `key` holds [`MAX_NICKS_PER_KEY`] nicks already. Marks the key seen.
    fn bind(
        &mut self,
        nick: &Nick,
        key: &PublicKey,
        binding_ttl: Duration,
    ) -> Result<(), RegistryError> {
        let nick_key = nick.key();
        let now = now_ms();
        match self.bindings.get(&nick_key) {
            Some(b) if b.key == *key => return self.seen(key, now),
            Some(b) => {
                if !self.expired(&b.key, binding_ttl, now) || self.users.contains_key(&nick_key) {
                    return Err(RegistryError::KeyMismatch(nick.to_string()));
                }
                tracing::info!(nick = %b.nick, key = %b.key, "binding released: its key went unseen");
                self.release(&nick_key)?;
            }
            None => {}
        }
        let held = self.keys.get(key).map_or(0, |k| k.nicks);
        if held >= MAX_NICKS_PER_KEY {
            return Err(RegistryError::TooManyNicks(MAX_NICKS_PER_KEY));
        }
        if let Some(d) = &self.durable {
            d.bind(&BindingRow {
                nick_key: nick_key.clone(),
                nick: nick.to_string(),
                key: *key,
                seen_ms: now,
            })?;
            // The key's other nicks (if any) are seen now too.
            if held > 0 {
                d.seen(key, now)?;
            }
        }
        self.keys.insert(
            *key,
            KeyState {
                nicks: held + 1,
                seen_ms: now,
            },
        );
        self.bindings.insert(
            nick_key,
            Bound {
                nick: nick.to_string(),
                key: *key,
            },
        );
        Ok(())
    }

    /// Records `owner` as the owner of room `key`.
    fn set_owner(&mut self, key: &str, owner: Owner) -> Result<(), RegistryError> {
        if let Some(d) = &self.durable {
            d.put_owner(&OwnerRow {
                room_key: key.to_owned(),
                name: owner.name.clone(),
                owner: owner.owner.clone(),
                owner_key: owner.owner_key,
                proof: owner.proof.clone(),
            })?;
        }
        self.owners.insert(key.to_owned(), owner);
        Ok(())
    }

    fn member(&self, nick_key: &str) -> Option<Member> {
        let token = self.users.get(nick_key)?;
        let s = self.sessions.get(token)?;
        Some(s.member())
    }

    fn snapshot(&self, key: &str, created: bool) -> Option<RoomSnapshot> {
        let room = self.rooms.get(key)?;
        Some(RoomSnapshot {
            name: room.name.clone(),
            owner: self
                .owners
                .get(key)
                .map(|o| o.owner.clone())
                .unwrap_or_default(),
            members: room.members.iter().filter_map(|m| self.member(m)).collect(),
            created,
            revision: self.revision,
        })
    }

    /// Removes `nick_key` from room `key`, dropping the room when empty.
    /// The owner stays the owner: the record outlives the members.
    /// `departure`: a leave, or why the member's session ended; `message`
    /// its parting message.
    fn remove_member(
        &mut self,
        events: &Events,
        key: &str,
        nick_key: &str,
        departure: Departure,
        message: &str,
    ) {
        let Some(member) = self.member(nick_key) else {
            return;
        };
        let audience = self.room_audience(key);
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        room.members.retain(|m| m != nick_key);
        let name = room.name.clone();
        if room.members.is_empty() {
            self.rooms.remove(key);
        }
        self.emit(
            events,
            EventKind::MemberLeft {
                room: name,
                member,
                departure,
                message: message.to_owned(),
            },
            audience,
        );
    }

    /// Ends a session: it leaves every room (`how`: [`Departure::Quit`] or
    /// [`Departure::TimedOut`], with the parting `message` of a quit) and
    /// goes offline.
    fn end_session(&mut self, events: &Events, token: &str, how: Departure, message: &str) {
        let Some(session) = self.sessions.get(token) else {
            return;
        };
        let nick_key = session.nick_key.clone();
        let rooms: Vec<String> = session.rooms.iter().cloned().collect();
        let member = session.member();
        let expires = session.expires;
        let audience = self.peers_audience(token);
        for room in rooms {
            self.remove_member(events, &room, &nick_key, how, message);
        }
        self.sessions.remove(token);
        self.expiry.remove(&(expires, token.to_owned()));
        // The key was here until now: its bindings' clock starts again.
        if let Err(err) = self.seen(&member.key, now_ms()) {
            tracing::warn!(cause = %err, "cannot record a key as seen");
        }
        if self.users.get(&nick_key).is_some_and(|t| t == token) {
            self.users.remove(&nick_key);
        }
        self.emit(events, EventKind::UserOffline(member), audience);
    }

    /// Ends every session whose lease ran out by `now`; returns the next
    /// expiry still pending.
    fn purge(&mut self, events: &Events, now: Instant) -> Option<Instant> {
        while let Some((when, token)) = self.expiry.first().cloned() {
            if when > now {
                return Some(when);
            }
            tracing::debug!(nick = ?self.sessions.get(&token).map(|s| &s.nick), "lease expired");
            // A lease that ran out carries no message.
            self.end_session(events, &token, Departure::TimedOut, "");
            // end_session removes the entry; make sure a stale one cannot spin.
            self.expiry.remove(&(when, token));
        }
        None
    }
}

async fn purge_expired(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let next = {
            let mut state = shared.lock();
            state.purge(&shared.events, Instant::now())
        };
        let sleep = async {
            match next {
                Some(when) => tokio::time::sleep_until(when).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep => {}
            _ = shared.purge.notified() => {}
        }
    }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    fn mailbox(&self) -> Arc<dyn MailStore> {
        self.mail.clone()
    }

    fn lease_ttl(&self) -> Duration {
        self.shared.ttl
    }

    async fn login_with(
        &self,
        nick: &Nick,
        address: &str,
        key: &PublicKey,
        relay: &str,
    ) -> Result<Session, RegistryError> {
        check_address(address)?;
        if !relay.is_empty() {
            check_address(relay)?;
        }
        let now = Instant::now();
        let shared = &self.shared;
        let mut state = shared.lock();
        // A lease that ran out but is not purged yet must not block the nick.
        state.purge(&shared.events, now);
        let nick_key = nick.key();
        state.bind(nick, key, shared.binding_ttl)?;
        let mut reclaimed = false;
        if let Some(old) = state.users.get(&nick_key).cloned() {
            // Taken over by its own key: the old session quits.
            state.end_session(&shared.events, &old, Departure::Quit, "");
            reclaimed = true;
        }
        let token = new_token();
        let expires = now + shared.ttl;
        state.sessions.insert(
            token.clone(),
            SessionState {
                nick: nick.to_string(),
                nick_key: nick_key.clone(),
                address: address.to_owned(),
                relay: relay.to_owned(),
                key: *key,
                expires,
                rooms: BTreeSet::new(),
                presence: Presence::default(),
            },
        );
        state.users.insert(nick_key, token.clone());
        state.expiry.insert((expires, token.clone()));
        state.emit(
            &shared.events,
            EventKind::UserOnline(Member {
                nick: nick.to_string(),
                address: address.to_owned(),
                key: *key,
                relay: relay.to_owned(),
            }),
            HashSet::from([token.clone()]),
        );
        drop(state);
        shared.purge.notify_one();
        Ok(Session {
            token,
            nick: nick.to_string(),
            lease_ttl: shared.ttl,
            reclaimed,
        })
    }

    async fn change_nick(&self, token: &str, new: &Nick) -> Result<Member, RegistryError> {
        let shared = &self.shared;
        let now = Instant::now();
        let mut state = shared.lock();
        // A lease that ran out but is not purged yet must not block the nick.
        state.purge(&shared.events, now);
        let s = state.live(token, now)?;
        let before = s.member();
        let (old_key, key) = (s.nick_key.clone(), s.key);
        let new_key = new.key();
        let recase = old_key == new_key;
        let stamp = now_ms();
        // Everything is judged before anything changes: a refusal leaves
        // the registry as it was.
        let (own, stale) = match state.bindings.get(&new_key) {
            Some(b) if b.key == key => (true, false),
            Some(b)
                if state.expired(&b.key, shared.binding_ttl, stamp)
                    && !state.users.contains_key(&new_key) =>
            {
                (false, true)
            }
            Some(_) => return Err(RegistryError::KeyMismatch(new.to_string())),
            None => (false, false),
        };
        if !recase && state.users.contains_key(&new_key) {
            return Err(RegistryError::NickTaken(new.to_string()));
        }
        // A move keeps the count; taking another own nick keeps both.
        let held = state.keys.get(&key).map_or(0, |k| k.nicks);
        if held > MAX_NICKS_PER_KEY {
            return Err(RegistryError::TooManyNicks(MAX_NICKS_PER_KEY));
        }
        if stale {
            tracing::info!(nick = %new, "binding released: its key went unseen");
            state.release(&new_key)?;
        }
        let moving = !recase && !own;
        if let Some(d) = &state.durable {
            d.rebind(
                moving.then_some(old_key.as_str()),
                &BindingRow {
                    nick_key: new_key.clone(),
                    nick: new.to_string(),
                    key,
                    seen_ms: stamp,
                },
            )?;
        }
        if moving {
            state.bindings.remove(&old_key);
        }
        state.bindings.insert(
            new_key.clone(),
            Bound {
                nick: new.to_string(),
                key,
            },
        );
        // Moved, recased or another own nick: the count stays as it was.
        state.keys.entry(key).or_default().seen_ms = stamp;
        let rooms = match state.sessions.get_mut(token) {
            Some(s) => {
                s.nick = new.to_string();
                s.nick_key = new_key.clone();
                s.rooms.clone()
            }
            None => BTreeSet::new(),
        };
        if !recase {
            state.users.remove(&old_key);
            state.users.insert(new_key.clone(), token.to_owned());
            for room in &rooms {
                if let Some(r) = state.rooms.get_mut(room) {
                    // In place: join order stays.
                    for m in r.members.iter_mut().filter(|m| **m == old_key) {
                        m.clone_from(&new_key);
                    }
                }
            }
            if let Some(f) = state.follows.remove(&old_key) {
                state.follows.insert(new_key.clone(), f);
            }
        }
        let after = Member {
            nick: new.to_string(),
            ..before.clone()
        };
        let audience = state.peers_audience(token);
        state.emit(
            &shared.events,
            EventKind::NickChanged {
                old: before.nick.clone(),
                member: after,
            },
            audience,
        );
        Ok(before)
    }

    async fn heartbeat(&self, token: &str) -> Result<Duration, RegistryError> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let old = state.live(token, now)?.expires;
        let expires = now + self.shared.ttl;
        if let Some(s) = state.sessions.get_mut(token) {
            s.expires = expires;
        }
        state.expiry.remove(&(old, token.to_owned()));
        state.expiry.insert((expires, token.to_owned()));
        // The earliest expiry only moves later here, so the purge task's
        // sleep stays correct (it wakes early at worst): no notify needed.
        Ok(self.shared.ttl)
    }

    async fn session(&self, token: &str) -> Result<Member, RegistryError> {
        let state = self.shared.lock();
        Ok(state.live(token, Instant::now())?.member())
    }

    async fn logout(&self, token: &str, message: &str) -> Result<(), RegistryError> {
        check_parting(message)?;
        let mut state = self.shared.lock();
        state.live(token, Instant::now())?;
        state.end_session(&self.shared.events, token, Departure::Quit, message);
        Ok(())
    }

    async fn join(
        &self,
        token: &str,
        room: &Room,
        creation: Option<&Creation>,
    ) -> Result<RoomSnapshot, RegistryError> {
        let shared = &self.shared;
        let mut state = shared.lock();
        let creation = creation.filter(|c| {
            let bound = state.bindings.get(&c.owner.to_ascii_lowercase());
            let ok = bound.is_none_or(|b| b.key == c.key);
            if !ok {
                tracing::warn!(%room, owner = %c.owner, "creation event signed by a key its author is not bound to; ignored");
            }
            ok
        });
        let session = state.live(token, Instant::now())?;
        let (nick_key, member) = (session.nick_key.clone(), session.member());
        let key = room.key();
        // Ownership is decided once, by the join that makes the record: a
        // later join's creation event, whatever its date, changes nothing.
        let created = !state.owners.contains_key(&key);
        if created {
            let owner = match creation {
                Some(c) => Owner {
                    name: room.to_string(),
                    owner: c.owner.clone(),
                    owner_key: c.key,
                    proof: Some(c.order.clone()),
                },
                None => Owner {
                    name: room.to_string(),
                    owner: member.nick.clone(),
                    owner_key: member.key,
                    proof: None,
                },
            };
            state.set_owner(&key, owner)?;
        } else if let Some(c) = creation {
            if state
                .owners
                .get(&key)
                .is_some_and(|o| !o.owner.eq_ignore_ascii_case(&c.owner) || o.owner_key != c.key)
            {
                tracing::warn!(%room, shown = %c.owner, "a creation event naming another owner; the recorded owner stands");
            }
        }
        let name = state
            .owners
            .get(&key)
            .map_or_else(|| room.to_string(), |o| o.name.clone());
        let r = state.rooms.entry(key.clone()).or_insert_with(|| RoomState {
            name,
            members: Vec::new(),
        });
        if !r.members.contains(&nick_key) {
            r.members.push(nick_key.clone());
        }
        let newly = state
            .sessions
            .get_mut(token)
            .is_some_and(|s| s.rooms.insert(key.clone()));
        if newly {
            let name = state.rooms.get(&key).map(|r| r.name.clone());
            let audience = state.room_audience(&key);
            state.emit(
                &shared.events,
                EventKind::MemberJoined {
                    room: name.unwrap_or_else(|| room.to_string()),
                    member,
                },
                audience,
            );
        }
        state
            .snapshot(&key, created)
            .ok_or_else(|| RegistryError::NoSuchRoom(room.to_string()))
    }

    async fn leave(&self, token: &str, room: &Room, message: &str) -> Result<(), RegistryError> {
        check_parting(message)?;
        let mut state = self.shared.lock();
        let session = state.live(token, Instant::now())?;
        let key = room.key();
        if !session.rooms.contains(&key) {
            return Err(RegistryError::NotMember(room.to_string()));
        }
        let nick_key = session.nick_key.clone();
        if let Some(s) = state.sessions.get_mut(token) {
            s.rooms.remove(&key);
        }
        state.remove_member(
            &self.shared.events,
            &key,
            &nick_key,
            Departure::Left,
            message,
        );
        Ok(())
    }

    async fn delete_room(&self, token: &str, room: &Room) -> Result<(), RegistryError> {
        let mut state = self.shared.lock();
        let session = state.live(token, Instant::now())?;
        let (by, by_key) = (session.nick.clone(), session.key);
        let key = room.key();
        let Some(o) = state.owners.get(&key) else {
            return Err(RegistryError::NoSuchRoom(room.to_string()));
        };
        if !o.owner.eq_ignore_ascii_case(&by) || o.owner_key != by_key {
            return Err(RegistryError::NotOwner {
                room: o.name.clone(),
                owner: o.owner.clone(),
            });
        }
        let name = o.name.clone();
        if let Some(d) = &state.durable {
            d.delete_owner(&key)?;
        }
        state.owners.remove(&key);
        let audience = state.room_audience(&key);
        let members = state
            .rooms
            .remove(&key)
            .map(|r| r.members)
            .unwrap_or_default();
        for m in &members {
            if let Some(t) = state.users.get(m).cloned() {
                if let Some(s) = state.sessions.get_mut(&t) {
                    s.rooms.remove(&key);
                }
            }
        }
        state.emit(
            &self.shared.events,
            EventKind::RoomDeleted { room: name, by },
            audience,
        );
        Ok(())
    }

    async fn find_user(&self, token: &str, nick: &Nick) -> Result<UserLookup, RegistryError> {
        let state = self.shared.lock();
        let now = Instant::now();
        state.live(token, now)?;
        let online = state
            .users
            .get(&nick.key())
            .filter(|t| state.live(t, now).is_ok())
            .and_then(|_| state.member(&nick.key()));
        Ok(UserLookup {
            online,
            key: state.bindings.get(&nick.key()).map(|b| b.key),
        })
    }

    async fn find_room(
        &self,
        token: &str,
        room: &Room,
    ) -> Result<Option<RoomSnapshot>, RegistryError> {
        let state = self.shared.lock();
        state.live(token, Instant::now())?;
        Ok(state.snapshot(&room.key(), false))
    }

    async fn list_rooms(&self, token: &str) -> Result<Vec<RoomInfo>, RegistryError> {
        let state = self.shared.lock();
        state.live(token, Instant::now())?;
        let mut rooms: Vec<RoomInfo> = state
            .rooms
            .iter()
            .map(|(key, r)| RoomInfo {
                name: r.name.clone(),
                members: u32::try_from(r.members.len()).unwrap_or(u32::MAX),
                owner: state
                    .owners
                    .get(key)
                    .map(|o| o.owner.clone())
                    .unwrap_or_default(),
            })
            .collect();
        rooms.sort_by_key(|r| r.name.to_ascii_lowercase());
        Ok(rooms)
    }

    async fn list_users(&self, token: &str) -> Result<Vec<Member>, RegistryError> {
        let state = self.shared.lock();
        let now = Instant::now();
        state.live(token, now)?;
        let mut users: Vec<Member> = state
            .sessions
            .values()
            .filter(|s| s.expires > now)
            .map(|s| s.member())
            .collect();
        users.sort_by_key(|m| m.nick.to_ascii_lowercase());
        Ok(users)
    }

    async fn set_presence(&self, token: &str, presence: &Presence) -> Result<(), RegistryError> {
        check_parting(&presence.away)?;
        let mut state = self.shared.lock();
        state.live(token, Instant::now())?;
        if let Some(s) = state.sessions.get_mut(token) {
            s.presence = presence.clone();
        }
        Ok(())
    }

    async fn user_presence(
        &self,
        token: &str,
        nick: &Nick,
    ) -> Result<Option<UserPresence>, RegistryError> {
        let state = self.shared.lock();
        let now = Instant::now();
        state.live(token, now)?;
        let Some(s) = state
            .users
            .get(&nick.key())
            .and_then(|t| state.live(t, now).ok())
        else {
            return Ok(None);
        };
        let mut rooms: Vec<String> = s
            .rooms
            .iter()
            .filter_map(|rk| state.rooms.get(rk).map(|r| r.name.clone()))
            .collect();
        rooms.sort_by_key(|r| r.to_ascii_lowercase());
        Ok(Some(UserPresence {
            presence: s.presence.clone(),
            rooms,
        }))
    }

    async fn away_users(&self, token: &str) -> Result<Vec<(String, String)>, RegistryError> {
        let state = self.shared.lock();
        let now = Instant::now();
        state.live(token, now)?;
        let mut away: Vec<(String, String)> = state
            .sessions
            .values()
            .filter(|s| s.expires > now && !s.presence.away.is_empty())
            .map(|s| (s.nick.clone(), s.presence.away.clone()))
            .collect();
        away.sort_by_key(|(n, _)| n.to_ascii_lowercase());
        Ok(away)
    }

    async fn binding(&self, nick: &Nick) -> Result<Option<PublicKey>, RegistryError> {
        let state = self.shared.lock();
        let nk = nick.key();
        let now = now_ms();
        Ok(state
            .bindings
            .get(&nk)
            .filter(|b| {
                !state.expired(&b.key, self.shared.binding_ttl, now)
                    || state.users.contains_key(&nk)
            })
            .map(|b| b.key))
    }

    async fn watch(&self, token: &str, follow: &[Nick]) -> Result<EventStream, RegistryError> {
        check_follow(follow)?;
        let (rx, nick) = {
            let mut state = self.shared.lock();
            let s = state.live(token, Instant::now())?;
            let (nick, nick_key) = (s.nick.clone(), s.nick_key.clone());
            let me = s.member();
            let now: HashSet<String> = follow.iter().map(Nick::key).collect();
            let old = state
                .follows
                .insert(nick_key.clone(), now.clone())
                .unwrap_or_default();
            // Those it starts following who follow it back and are online
            // could not see its login: told now, and only they.
            let audience: HashSet<Token> = now
                .difference(&old)
                .filter(|y| state.follows.get(*y).is_some_and(|f| f.contains(&nick_key)))
                .filter_map(|y| state.users.get(y).cloned())
                .collect();
            if !audience.is_empty() {
                state.emit_to(
                    &self.shared.events,
                    EventKind::UserOnline(me),
                    audience,
                    HashSet::new(),
                );
            }
            // Subscribing under the lock: no event between the check and the
            // subscription is lost.
            (self.shared.events.subscribe(), nick)
        };
        let shared = self.shared.clone();
        let alive: Alive = Box::new(move |t| shared.lock().sessions.contains_key(t));
        Ok(Box::pin(Watcher::new(rx, token, nick, follow, alive)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    const TTL: Duration = Duration::from_secs(10);

    /// The same key for the same name, a different one for another.
    fn key(n: &str) -> PublicKey {
        use sha2::Digest;
        let seed: [u8; 32] = sha2::Sha256::digest(n.to_ascii_lowercase()).into();
        crate::identity::Identity::from_seed(seed).public()
    }

    fn nick(s: &str) -> Nick {
        Nick::parse(s).unwrap()
    }

    fn room(s: &str) -> Room {
        Room::parse(s).unwrap()
    }

    async fn login(r: &MemoryRegistry, n: &str) -> String {
        let addr = "127.0.0.1:7000";
        r.login(&nick(n), addr, &key(n)).await.unwrap().token
    }

    #[tokio::test]
    async fn bindings_and_owners_outlive_the_registry_in_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let options = |binding_ttl| MemoryOptions {
            file: Some(tmp.path().join(crate::registry::REGISTRY_FILE)),
            binding_ttl,
            ..MemoryOptions::new(TTL)
        };
        let year = crate::registry::BINDING_TTL;
        let r = MemoryRegistry::with(options(year)).unwrap();
        let a = login(&r, "Alice").await;
        r.join(&a, &room("#Home"), None).await.unwrap();
        drop(r);

        let r = MemoryRegistry::with(options(year)).unwrap();
        let err = r
            .login(&nick("alice"), "127.0.0.1:7000", &key("eve"))
            .await
            .unwrap_err();
        assert_eq!(err, RegistryError::KeyMismatch("alice".into()));
        let e = login(&r, "eve").await;
        let s = r.join(&e, &room("#home"), None).await.unwrap();
        assert!(!s.created);
        assert_eq!((s.name.as_str(), s.owner.as_str()), ("#Home", "Alice"));
        drop(r);

        // Reopened with a binding TTL her key has outlived: released.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = MemoryRegistry::with(options(Duration::from_millis(1))).unwrap();
        r.login(&nick("alice"), "127.0.0.1:7000", &key("eve"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_key_holds_a_bounded_number_of_nicks() {
        let r = MemoryRegistry::new(TTL).unwrap();
        let k = key("eve");
        for i in 0..MAX_NICKS_PER_KEY {
            r.login(&nick(&format!("eve{i}")), "127.0.0.1:7000", &k)
                .await
                .unwrap();
        }
        let err = r
            .login(&nick("one-more"), "127.0.0.1:7000", &k)
            .await
            .unwrap_err();
        assert_eq!(err, RegistryError::TooManyNicks(MAX_NICKS_PER_KEY));
        r.login(&nick("eve0"), "127.0.0.1:7000", &k).await.unwrap();
    }

    #[tokio::test]
    async fn ttl_below_etcd_floor_is_refused() {
        assert!(MemoryRegistry::new(Duration::from_secs(1)).is_err());
        assert!(MemoryRegistry::new(Duration::from_secs(2)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_without_heartbeat() {
        let r = MemoryRegistry::new(TTL).unwrap();
        let a = login(&r, "alice").await;
        let b = login(&r, "bob").await;
        r.join(&a, &room("#rust"), None).await.unwrap();
        r.join(&b, &room("#rust"), None).await.unwrap();
        let mut events = r.watch(&b, &[]).await.unwrap();

        // Bob keeps his lease alive, Alice does not.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(4)).await;
            r.heartbeat(&b).await.unwrap();
        }
        tokio::task::yield_now().await;
        let found = r.find_user(&b, &nick("alice")).await.unwrap();
        assert_eq!(found.online, None);
        // The nick stays bound to its key after the lease is gone.
        assert_eq!(found.key, Some(key("alice")));
        assert_eq!(
            r.heartbeat(&a).await.unwrap_err(),
            RegistryError::Unauthenticated
        );
        let members = r
            .find_room(&b, &room("#rust"))
            .await
            .unwrap()
            .unwrap()
            .members;
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].nick, "bob");
        // The watcher was told: Alice timed out of the room, then went
        // offline.
        let e1 = events.next().await.unwrap().unwrap();
        assert!(
            matches!(&e1.kind, EventKind::MemberLeft { room, member, departure: Departure::TimedOut, message } if room == "#rust" && member.nick == "alice" && message.is_empty()),
            "{e1:?}"
        );
        let e2 = events.next().await.unwrap().unwrap();
        assert!(matches!(&e2.kind, EventKind::UserOffline(m) if m.nick == "alice"));
        assert!(e2.revision > e1.revision);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_keeps_the_lease() {
        let r = MemoryRegistry::new(TTL).unwrap();
        let a = login(&r, "alice").await;
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(9)).await;
            assert_eq!(r.heartbeat(&a).await.unwrap(), TTL);
        }
        assert!(r
            .find_user(&a, &nick("alice"))
            .await
            .unwrap()
            .online
            .is_some());
    }

    #[tokio::test]
    async fn another_key_is_refused_whatever_the_case_and_after_logout() {
        let r = MemoryRegistry::new(TTL).unwrap();
        let a = login(&r, "Alice").await;
        let err = r
            .login(&nick("aLiCe"), "127.0.0.1:7001", &key("mallory"))
            .await
            .unwrap_err();
        assert_eq!(err, RegistryError::KeyMismatch("aLiCe".into()));
        // The holder is untouched.
        let m = r
            .find_user(&a, &nick("alice"))
            .await
            .unwrap()
            .online
            .unwrap();
        assert_eq!(m.address, "127.0.0.1:7000");
        assert_eq!(m.nick, "Alice");
        assert_eq!(m.key, key("alice"));
        r.heartbeat(&a).await.unwrap();
        // Gone offline, the nick is still bound to its key.
        r.logout(&a, "").await.unwrap();
        let err = r
            .login(&nick("alice"), "127.0.0.1:7001", &key("mallory"))
            .await
            .unwrap_err();
        assert_eq!(err, RegistryError::KeyMismatch("alice".into()));
        login(&r, "alice").await;
    }

    #[tokio::test]
    async fn the_same_key_reclaims_the_nick_at_once() {
        let r = MemoryRegistry::new(TTL).unwrap();
        let old = r
            .login(&nick("alice"), "127.0.0.1:7000", &key("alice"))
            .await
            .unwrap();
        r.join(&old.token, &room("#rust"), None).await.unwrap();
        let mut events = r.watch(&old.token, &[]).await.unwrap();
        let new = r
            .login(&nick("alice"), "127.0.0.1:7100", &key("alice"))
            .await
            .unwrap();
        assert!(new.reclaimed);
        assert!(!old.reclaimed);
        assert_eq!(
            r.heartbeat(&old.token).await.unwrap_err(),
            RegistryError::Unauthenticated
        );
        let m = r
            .find_user(&new.token, &nick("alice"))
            .await
            .unwrap()
            .online
            .unwrap();
        assert_eq!(m.address, "127.0.0.1:7100");
        // The old session's rooms went with it: a quit, not a timeout.
        assert!(r
            .find_room(&new.token, &room("#rust"))
            .await
            .unwrap()
            .is_none());
        let e = events.next().await.unwrap().unwrap();
        assert!(
            matches!(&e.kind, EventKind::MemberLeft { member, departure: Departure::Quit, .. } if member.address == "127.0.0.1:7000"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn room_lifecycle() {
        let r = MemoryRegistry::new(TTL).unwrap();
        let a = login(&r, "alice").await;
        let b = login(&r, "bob").await;
        let s = r.join(&a, &room("#Rust"), None).await.unwrap();
        assert!(s.created);
        assert_eq!(s.owner, "alice");
        assert_eq!(s.name, "#Rust");
        let s = r.join(&b, &room("#rust"), None).await.unwrap();
        assert!(!s.created);
        assert_eq!(s.name, "#Rust");
        let nicks: Vec<_> = s.members.iter().map(|m| m.nick.as_str()).collect();
        assert_eq!(nicks, ["alice", "bob"]);
        // Joining twice changes nothing.
        assert_eq!(
            r.join(&b, &room("#rust"), None)
                .await
                .unwrap()
                .members
                .len(),
            2
        );
        assert_eq!(
            r.list_rooms(&a).await.unwrap(),
            vec![RoomInfo {
                name: "#Rust".into(),
                members: 2,
                owner: "alice".into()
            }]
        );
        // The owner leaves: still the owner (ownership is the history's).
        r.leave(&a, &room("#rust"), "").await.unwrap();
        assert_eq!(r.list_rooms(&a).await.unwrap()[0].owner, "alice");
        assert_eq!(
            r.leave(&a, &room("#rust"), "").await.unwrap_err(),
            RegistryError::NotMember("#rust".into())
        );
        // The last member leaves: the room is gone.
        r.leave(&b, &room("#rust"), "").await.unwrap();
        assert!(r.find_room(&a, &room("#rust")).await.unwrap().is_none());
        assert!(r.list_rooms(&a).await.unwrap().is_empty());
    }

    fn creation(owner: &str, sent_at_ms: i64) -> Creation {
        Creation {
            owner: owner.into(),
            key: key(owner),
            order: (sent_at_ms, owner.to_ascii_lowercase(), 1, 1),
        }
    }

    #[tokio::test]
    async fn the_join_that_makes_the_record_names_the_owner_for_good() {
        // A registry that never knew the room (a router whose file was
        // lost): bob rejoins first, showing alice's creation event.
        let r = MemoryRegistry::new(TTL).unwrap();
        let b = login(&r, "bob").await;
        let s = r
            .join(&b, &room("#rust"), Some(&creation("alice", 100)))
            .await
            .unwrap();
        assert!(s.created);
        assert_eq!(s.owner, "alice");
        // Neither a later creation event nor an earlier-dated one (a member
        // signing one of her own) takes it over.
        let c = login(&r, "carol").await;
        let s = r
            .join(&c, &room("#rust"), Some(&creation("carol", 200)))
            .await
            .unwrap();
        assert_eq!(s.owner, "alice");
        let d = login(&r, "dave").await;
        let s = r
            .join(&d, &room("#rust"), Some(&creation("dave", 50)))
            .await
            .unwrap();
        assert_eq!(s.owner, "alice");
        // Nor does the room's emptying: the record outlives its members.
        for t in [&b, &c, &d] {
            r.leave(t, &room("#rust"), "").await.unwrap();
        }
        assert!(r.find_room(&d, &room("#rust")).await.unwrap().is_none());
        let s = r
            .join(&d, &room("#rust"), Some(&creation("dave", 1)))
            .await
            .unwrap();
        assert!(!s.created);
        assert_eq!(s.owner, "alice");
        // Only the owner deletes: not bob, who made the room here.
        let err = r.delete_room(&b, &room("#rust")).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::NotOwner { ref owner, .. } if owner == "alice"),
            "{err:?}"
        );
        let a = login(&r, "alice").await;
        r.delete_room(&a, &room("#rust")).await.unwrap();
        // Deleted, the room is made anew by whoever joins first; one shown
        // signed by a key its author is not bound to counts for nothing.
        let forged = Creation {
            key: key("mallory"),
            ..creation("bob", 10)
        };
        let s = r.join(&c, &room("#rust"), Some(&forged)).await.unwrap();
        assert!(s.created);
        assert_eq!(s.owner, "carol");

        // A room made with no event shown is its maker's, and stays so
        // when an event is shown later.
        let s = r.join(&b, &room("#go"), None).await.unwrap();
        assert_eq!(s.owner, "bob");
        let s = r
            .join(&c, &room("#go"), Some(&creation("alice", 100)))
            .await
            .unwrap();
        assert_eq!(s.owner, "bob");
    }

    #[tokio::test]
    async fn a_later_join_cannot_replace_the_owner_with_an_earlier_dated_creation() {
        // Issue 23, attack 4: dave, a member, signs a creation event of his
        // own dated before alice's and shows it at a join. The room's record
        // exists: its owner stays.
        let r = MemoryRegistry::new(TTL).unwrap();
        let a = login(&r, "alice").await;
        let s = r
            .join(&a, &room("#rust"), Some(&creation("alice", 100)))
            .await
            .unwrap();
        assert_eq!(s.owner, "alice");
        let d = login(&r, "dave").await;
        let s = r
            .join(&d, &room("#rust"), Some(&creation("dave", 50)))
            .await
            .unwrap();
        assert!(!s.created);
        assert_eq!(s.owner, "alice");
        // Shown again, or dated earlier still, by another member: the same.
        let b = login(&r, "bob").await;
        let s = r
            .join(&b, &room("#rust"), Some(&creation("dave", i64::MIN)))
            .await
            .unwrap();
        assert_eq!(s.owner, "alice");
        assert_eq!(r.list_rooms(&d).await.unwrap()[0].owner, "alice");
        let err = r.delete_room(&d, &room("#rust")).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::NotOwner { ref owner, .. } if owner == "alice"),
            "{err:?}"
        );
        r.delete_room(&a, &room("#rust")).await.unwrap();
    }

    #[tokio::test]
    async fn only_the_owner_deletes_and_everyone_is_told() {
        let r = MemoryRegistry::new(TTL).unwrap();
        let a = login(&r, "alice").await;
        let b = login(&r, "bob").await;
        r.join(&a, &room("#rust"), None).await.unwrap();
        r.join(&b, &room("#rust"), None).await.unwrap();
        let mut events = r.watch(&b, &[]).await.unwrap();
        let err = r.delete_room(&b, &room("#rust")).await.unwrap_err();
        assert!(matches!(err, RegistryError::NotOwner { .. }), "{err:?}");
        assert_eq!(
            r.find_room(&a, &room("#rust"))
                .await
                .unwrap()
                .unwrap()
                .members
                .len(),
            2
        );
        r.delete_room(&a, &room("#RUST")).await.unwrap();
        assert!(r.find_room(&a, &room("#rust")).await.unwrap().is_none());
        let e = events.next().await.unwrap().unwrap();
        assert_eq!(
            e.kind,
            EventKind::RoomDeleted {
                room: "#rust".into(),
                by: "alice".into()
            }
        );
        // Bob is no longer in it.
        assert_eq!(
            r.leave(&b, &room("#rust"), "").await.unwrap_err(),
            RegistryError::NotMember("#rust".into())
        );
        assert_eq!(
            r.delete_room(&a, &room("#nope")).await.unwrap_err(),
            RegistryError::NoSuchRoom("#nope".into())
        );
    }

    #[tokio::test]
    async fn unknown_tokens_are_refused_everywhere() {
        let r = MemoryRegistry::new(TTL).unwrap();
        let t = "00000000000000000000000000000000";
        let unauth = RegistryError::Unauthenticated;
        assert_eq!(r.heartbeat(t).await.unwrap_err(), unauth);
        assert_eq!(r.logout(t, "").await.unwrap_err(), unauth);
        assert_eq!(r.join(t, &room("#a"), None).await.unwrap_err(), unauth);
        assert_eq!(r.leave(t, &room("#a"), "").await.unwrap_err(), unauth);
        assert_eq!(r.delete_room(t, &room("#a")).await.unwrap_err(), unauth);
        assert!(r.watch(t, &[]).await.is_err());
        assert_eq!(r.list_rooms(t).await.unwrap_err(), unauth);
        assert_eq!(r.list_users(t).await.unwrap_err(), unauth);
        assert_eq!(r.find_user(t, &nick("a")).await.unwrap_err(), unauth);
        assert_eq!(r.find_room(t, &room("#a")).await.unwrap_err(), unauth);
    }

    #[tokio::test]
    async fn bad_addresses_are_refused() {
        let r = MemoryRegistry::new(TTL).unwrap();
        assert!(matches!(
            r.login(&nick("a"), "nowhere", &key("a")).await,
            Err(RegistryError::InvalidName(_))
        ));
        let obs = login(&r, "observer").await;
        let users = r.list_users(&obs).await.unwrap();
        assert_eq!(users.len(), 1, "only the observer: {users:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creators_and_logins_have_one_winner() {
        let r = MemoryRegistry::new(TTL).unwrap();
        let mut tokens = Vec::new();
        for i in 0..16 {
            tokens.push(login(&r, &format!("u{i}")).await);
        }
        let joins: Vec<_> = tokens
            .iter()
            .cloned()
            .map(|t| {
                let r = r.clone();
                tokio::spawn(async move { r.join(&t, &room("#race"), None).await.unwrap() })
            })
            .collect();
        let mut created = 0;
        for j in joins {
            created += usize::from(j.await.unwrap().created);
        }
        assert_eq!(created, 1);
        let info = r.list_rooms(&tokens[0]).await.unwrap();
        assert_eq!(info[0].members, 16);

        let logins: Vec<_> = (0..16)
            .map(|i| {
                let r = r.clone();
                tokio::spawn(async move {
                    r.login(&nick("Winner"), "127.0.0.1:9", &key(&format!("w{i}")))
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        for l in logins {
            match l.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(e, RegistryError::KeyMismatch("Winner".into())),
            }
        }
        assert_eq!(ok, 1);
    }

    #[tokio::test]
    async fn logout_leaves_rooms_and_ends_the_watch() {
        let r = MemoryRegistry::new(TTL).unwrap();
        let a = login(&r, "alice").await;
        r.join(&a, &room("#x"), None).await.unwrap();
        r.join(&a, &room("#y"), None).await.unwrap();
        let mut events = r.watch(&a, &[]).await.unwrap();
        // A bad parting message is refused and changes nothing.
        let long = "x".repeat(crate::names::MAX_PARTING_CHARS + 1);
        assert!(matches!(
            r.leave(&a, &room("#y"), &long).await,
            Err(RegistryError::InvalidName(_))
        ));
        assert!(matches!(
            r.logout(&a, "bye\u{1b}[2J").await,
            Err(RegistryError::InvalidName(_))
        ));
        r.heartbeat(&a).await.unwrap();
        r.leave(&a, &room("#y"), "see ya").await.unwrap();
        r.logout(&a, "bye all").await.unwrap();
        let obs = login(&r, "observer").await;
        assert!(r.find_room(&obs, &room("#x")).await.unwrap().is_none());
        assert_eq!(r.list_users(&obs).await.unwrap().len(), 1);
        let mut kinds = Vec::new();
        while let Some(e) = events.next().await {
            kinds.push(e.unwrap().kind);
        }
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        // A leave is a leave; the logout's leaves are quits. Each carries
        // its parting message.
        assert!(
            matches!(&kinds[0], EventKind::MemberLeft { room, departure: Departure::Left, message, .. } if room == "#y" && message == "see ya"),
            "{kinds:?}"
        );
        assert!(
            matches!(&kinds[1], EventKind::MemberLeft { room, departure: Departure::Quit, message, .. } if room == "#x" && message == "bye all"),
            "{kinds:?}"
        );
        assert!(matches!(kinds[2], EventKind::UserOffline(_)));
    }
    /// A watch follows the presence of the nicks it names (private
    /// partners sharing no room), and of no others.
    #[tokio::test]
    async fn a_watch_carries_the_presence_of_those_it_follows() {
        let r = MemoryRegistry::new(Duration::from_secs(10)).unwrap();
        let a = login(&r, "alice").await;
        let mut watch = r.watch(&a, &[nick("Bob"), nick("carol")]).await.unwrap();
        let c = login(&r, "carol").await;
        let b = login(&r, "bob").await;
        // Bob follows alice back (a private partner); carol does not.
        drop(r.watch(&b, &[nick("alice")]).await.unwrap());
        r.logout(&b, "").await.unwrap();
        let b = login(&r, "bob").await;
        r.logout(&c, "").await.unwrap();
        r.logout(&b, "").await.unwrap();
        r.logout(&a, "").await.unwrap();
        let mut seen = Vec::new();
        while let Some(e) = watch.next().await {
            seen.push(e.unwrap().kind);
        }
        let names: Vec<(bool, String)> = seen
            .iter()
            .map(|k| match k {
                EventKind::UserOnline(m) => (true, m.nick.clone()),
                EventKind::UserOffline(m) => (false, m.nick.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            // Bob's first login came before he followed her back: his
            // watch naming her tells her he is online. Carol's never do.
            [
                (true, "bob".to_string()),
                (false, "bob".to_string()),
                (true, "bob".to_string()),
                (false, "bob".to_string()),
                (false, "alice".to_string())
            ]
        );
        let many: Vec<Nick> = (0..=crate::registry::MAX_FOLLOW)
            .map(|i| nick(&format!("n{i}")))
            .collect();
        let d = login(&r, "dave").await;
        assert!(matches!(
            r.watch(&d, &many).await.err(),
            Some(RegistryError::InvalidArgument(_))
        ));
    }

    /// A watcher hears of its own rooms and of the users it shares one
    /// with, and of nothing else.
    #[tokio::test]
    async fn a_watch_carries_only_what_its_session_needs() {
        let r = MemoryRegistry::new(Duration::from_secs(10)).unwrap();
        let (a, b, c) = (
            login(&r, "alice").await,
            login(&r, "bob").await,
            login(&r, "carol").await,
        );
        let rust = Room::parse("#rust").unwrap();
        let go = Room::parse("#go").unwrap();
        r.join(&a, &rust, None).await.unwrap();
        let mut watch = r.watch(&a, &[]).await.unwrap();
        // Carol's room and Carol's presence are none of Alice's business.
        r.join(&c, &go, None).await.unwrap();
        r.leave(&c, &go, "").await.unwrap();
        r.logout(&c, "").await.unwrap();
        // Bob joins Alice's room, then goes: both are hers to know.
        r.join(&b, &rust, None).await.unwrap();
        r.logout(&b, "").await.unwrap();
        r.logout(&a, "").await.unwrap();
        let mut seen = Vec::new();
        while let Some(e) = watch.next().await {
            seen.push(e.unwrap().kind);
        }
        let who = |k: &EventKind| match k {
            EventKind::UserOnline(m) | EventKind::UserOffline(m) => m.nick.clone(),
            EventKind::MemberJoined { member, .. } | EventKind::MemberLeft { member, .. } => {
                member.nick.clone()
            }
            EventKind::RoomDeleted { by, .. } => by.clone(),
            EventKind::NickChanged { member, .. } => member.nick.clone(),
        };
        assert!(seen.iter().all(|k| who(k) != "carol"), "{seen:?}");
        assert!(
            matches!(&seen[0], EventKind::MemberJoined { member, .. } if member.nick == "bob"),
            "{seen:?}"
        );
        assert!(
            seen.iter()
                .any(|k| matches!(k, EventKind::UserOffline(m) if m.nick == "bob")),
            "{seen:?}"
        );
    }
}
