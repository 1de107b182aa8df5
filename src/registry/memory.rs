//! The embedded registry: everything in one process's memory.
//!
//! State sits behind a std `Mutex` that is never held across an `.await`, so
//! every operation is one short critical section: that is what makes racing
//! logins and racing room creators end with exactly one winner. Leases expire
//! through one purge task woken by a `Notify` (mini-redis's design), which
//! runs on `tokio::time` so tests can pause the clock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::watcher::{check_follow, Alive, Feed, Watcher};
use super::{
    new_token, Creation, Departure, Event, EventKind, EventStream, Member, Registry, RegistryError,
    RoomInfo, RoomSnapshot, Session, Token, UserLookup, MIN_LEASE_TTL,
};
use crate::identity::PublicKey;
use crate::names::{check_address, check_parting, Nick, Room};

/// Events buffered per watcher before it is cut off as too slow.
const WATCH_BUFFER: usize = 4096;

/// A cheap, cloneable handle to the in-memory registry. The purge task stops
/// when the last handle is dropped.
#[derive(Clone)]
pub struct MemoryRegistry {
    shared: Arc<Shared>,
    _purge: Arc<DropGuard>,
}

struct Shared {
    ttl: Duration,
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
    key: PublicKey,
    expires: Instant,
    /// Keys of the rooms this session sits in.
    rooms: BTreeSet<String>,
}

type Events = broadcast::Sender<Feed>;

struct RoomState {
    name: String,
    /// Set once, by the join that made the record (see `join`); nothing
    /// changes it while the record lasts.
    owner: String,
    owner_key: PublicKey,
    /// Nick keys in join order.
    members: Vec<String>,
}

#[derive(Default)]
struct State {
    revision: u64,
    sessions: HashMap<Token, SessionState>,
    /// Nick key → token of the session holding it.
    users: HashMap<String, Token>,
    /// Nick key → the key it is bound to, for the registry's whole life.
    bindings: HashMap<String, PublicKey>,
    /// Room key → room.
    rooms: HashMap<String, RoomState>,
    expiry: BTreeSet<(Instant, Token)>,
}

impl MemoryRegistry {
    /// A registry whose leases last `ttl` (at least [`MIN_LEASE_TTL`]).
    /// Must be called inside a tokio runtime: it spawns the purge task.
    pub fn new(ttl: Duration) -> Result<MemoryRegistry, RegistryError> {
        if ttl < MIN_LEASE_TTL {
            return Err(RegistryError::InvalidArgument(format!(
                "lease TTL must be at least {} s",
                MIN_LEASE_TTL.as_secs()
            )));
        }
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let shared = Arc::new(Shared {
            ttl,
            state: Mutex::new(State::default()),
            events,
            purge: Notify::new(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(purge_expired(shared.clone(), stop.clone()));
        Ok(MemoryRegistry {
            shared,
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
    fn emit(&mut self, events: &Events, kind: EventKind, audience: HashSet<Token>) -> u64 {
        self.revision += 1;
        // No receivers is fine: nobody is watching.
        let _ = events.send(Feed::event(
            Event {
                revision: self.revision,
                kind,
            },
            audience,
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

    fn member(&self, nick_key: &str) -> Option<Member> {
        let token = self.users.get(nick_key)?;
        let s = self.sessions.get(token)?;
        Some(Member {
            nick: s.nick.clone(),
            address: s.address.clone(),
            key: s.key,
        })
    }

    fn snapshot(&self, key: &str, created: bool) -> Option<RoomSnapshot> {
        let room = self.rooms.get(key)?;
        Some(RoomSnapshot {
            name: room.name.clone(),
            owner: room.owner.clone(),
            members: room.members.iter().filter_map(|m| self.member(m)).collect(),
            created,
            revision: self.revision,
        })
    }

    /// Removes `nick_key` from room `key`, dropping the room when empty.
    /// The owner stays the owner: ownership comes from the room's history.
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
        let member = Member {
            nick: session.nick.clone(),
            address: session.address.clone(),
            key: session.key,
        };
        let expires = session.expires;
        let audience = self.peers_audience(token);
        for room in rooms {
            self.remove_member(events, &room, &nick_key, how, message);
        }
        self.sessions.remove(token);
        self.expiry.remove(&(expires, token.to_owned()));
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
    fn lease_ttl(&self) -> Duration {
        self.shared.ttl
    }

    async fn login(
        &self,
        nick: &Nick,
        address: &str,
        key: &PublicKey,
    ) -> Result<Session, RegistryError> {
        check_address(address)?;
        let now = Instant::now();
        let shared = &self.shared;
        let mut state = shared.lock();
        // A lease that ran out but is not purged yet must not block the nick.
        state.purge(&shared.events, now);
        let nick_key = nick.key();
        match state.bindings.get(&nick_key) {
            Some(bound) if bound != key => {
                return Err(RegistryError::KeyMismatch(nick.to_string()))
            }
            Some(_) => {}
            None => {
                state.bindings.insert(nick_key.clone(), *key);
            }
        }
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
                key: *key,
                expires,
                rooms: BTreeSet::new(),
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
        let session = state.live(token, Instant::now())?;
        let (nick_key, member) = (
            session.nick_key.clone(),
            Member {
                nick: session.nick.clone(),
                address: session.address.clone(),
                key: session.key,
            },
        );
        let key = room.key();
        let st = &mut *state;
        // Ownership is decided here, once: a record that exists keeps its
        // owner, whatever this join shows; only the join that makes the
        // record names one.
        let (r, created) = match st.rooms.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let r = e.into_mut();
                if let Some(c) = creation.filter(|c| !c.owner.eq_ignore_ascii_case(&r.owner)) {
                    tracing::warn!(%room, owner = %r.owner, shown = %c.owner, sent_at_ms = c.order.0, "a creation event naming another owner; the room's owner stays");
                }
                (r, false)
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                // The creation shown names the owner, unless its author's
                // nick is bound to another key.
                let shown = creation.filter(|c| {
                    let bound = st.bindings.get(&c.owner.to_ascii_lowercase());
                    let ok = bound.is_none_or(|k| *k == c.key);
                    if !ok {
                        tracing::warn!(%room, owner = %c.owner, "creation event signed by a key its author is not bound to; ignored");
                    }
                    ok
                });
                let (owner, owner_key) = match shown {
                    Some(c) => (c.owner.clone(), c.key),
                    None => (member.nick.clone(), member.key),
                };
                let r = e.insert(RoomState {
                    name: room.to_string(),
                    owner,
                    owner_key,
                    members: Vec::new(),
                });
                (r, true)
            }
        };
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
        let Some(r) = state.rooms.get(&key) else {
            return Err(RegistryError::NoSuchRoom(room.to_string()));
        };
        if !r.owner.eq_ignore_ascii_case(&by) || r.owner_key != by_key {
            return Err(RegistryError::NotOwner {
                room: r.name.clone(),
                owner: r.owner.clone(),
            });
        }
        let audience = state.room_audience(&key);
        let Some(r) = state.rooms.remove(&key) else {
            return Err(RegistryError::NoSuchRoom(room.to_string()));
        };
        for m in &r.members {
            if let Some(t) = state.users.get(m).cloned() {
                if let Some(s) = state.sessions.get_mut(&t) {
                    s.rooms.remove(&key);
                }
            }
        }
        state.emit(
            &self.shared.events,
            EventKind::RoomDeleted { room: r.name, by },
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
            key: state.bindings.get(&nick.key()).copied(),
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
            .values()
            .map(|r| RoomInfo {
                name: r.name.clone(),
                members: u32::try_from(r.members.len()).unwrap_or(u32::MAX),
                owner: r.owner.clone(),
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
            .map(|s| Member {
                nick: s.nick.clone(),
                address: s.address.clone(),
                key: s.key,
            })
            .collect();
        users.sort_by_key(|m| m.nick.to_ascii_lowercase());
        Ok(users)
    }

    async fn watch(&self, token: &str, follow: &[Nick]) -> Result<EventStream, RegistryError> {
        check_follow(follow)?;
        let (rx, nick) = {
            let state = self.shared.lock();
            let s = state.live(token, Instant::now())?;
            // Subscribing under the lock: no event between the check and the
            // subscription is lost.
            (self.shared.events.subscribe(), s.nick.clone())
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
    async fn the_creation_shown_by_the_join_that_makes_the_room_names_the_owner() {
        // A registry that lost the room (a restarted router): bob rejoins
        // first, showing alice's creation event.
        let r = MemoryRegistry::new(TTL).unwrap();
        let b = login(&r, "bob").await;
        let s = r
            .join(&b, &room("#rust"), Some(&creation("alice", 100)))
            .await
            .unwrap();
        assert!(s.created);
        assert_eq!(s.owner, "alice");
        // A later creation event, someone who made the room anew while it
        // was gone, does not take it over.
        let c = login(&r, "carol").await;
        let s = r
            .join(&c, &room("#rust"), Some(&creation("carol", 200)))
            .await
            .unwrap();
        assert_eq!(s.owner, "alice");
        // Only the owner deletes: not bob, who made the room here.
        let err = r.delete_room(&b, &room("#rust")).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::NotOwner { ref owner, .. } if owner == "alice"),
            "{err:?}"
        );

        // A room made with no event shown is its maker's, and stays so.
        let s = r.join(&b, &room("#go"), None).await.unwrap();
        assert_eq!(s.owner, "bob");
        let s = r
            .join(&c, &room("#go"), Some(&creation("alice", 100)))
            .await
            .unwrap();
        assert_eq!(s.owner, "bob");

        // One signed by a key its author is not bound to names nobody: the
        // caller that made the record owns it.
        let forged = Creation {
            key: key("mallory"),
            ..creation("bob", 10)
        };
        let s = r.join(&c, &room("#c"), Some(&forged)).await.unwrap();
        assert_eq!(s.owner, "carol");
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
        let mut watch = r.watch(&a, &[nick("Bob")]).await.unwrap();
        let c = login(&r, "carol").await;
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
            [
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
