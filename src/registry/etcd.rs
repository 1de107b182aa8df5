//! The registry kept in etcd, so several routers serve one registry and
//! what it binds (nick → key, room → owner) outlives every router.
//!
//! Layout under [`PREFIX`] (values are JSON unless said):
//!
//! - `bind/NICK` → the 32 key bytes the nick is bound to; no lease, until
//!   the key goes unseen past the binding TTL and another key claims it.
//! - `seen/KEY` → when a session of the key (hex) last began or ended, in
//!   wall-clock milliseconds; no lease. Put with a new binding, and at a
//!   login or logout when the one held is older than a day (or an eighth
//!   of the binding TTL): the TTL is a year, so finer is wasted writes.
//! - `follow/NICK` → the nick keys (a JSON list) the nick's latest watch
//!   follows; no lease: whom a nick follows decides who sees it come back
//!   (see the `watcher` module).
//! - `session/TOKEN` → the session (nick, address, key, lease), under the
//!   session's lease; `user/NICK` → its token, under the same lease.
//! - `member/ROOM/NICK` → the room's name, under the member's session
//!   lease: a peer whose lease runs out leaves every room at once, with no
//!   reaper.
//! - `room/ROOM` → name, owner, owner's key; written once, by the join that
//!   makes it, and never rewritten: the owner is decided then. No lease:
//!   owners outlive routers. A room with no members is not shown.
//! - `deleted/ROOM` → who deleted it, under a short lease: the event that
//!   tells members.
//! - `quit/TOKEN` → the session's parting message (plain text, empty for
//!   none), under the session's lease: the mark of a session ending on
//!   purpose. A logout (with its message), or a login taking the nick over
//!   (with none), puts it just before revoking the lease, so the
//!   revocation deletes it in the same revision as the session's other
//!   keys. A session whose keys go with its mark quit, saying the mark's
//!   value; one whose keys go without it ran out (timed out), saying
//!   nothing.
//! - `part/ROOM/NICK` → the parting message of a leave (plain text, empty
//!   for none), under the member's session lease: a leave puts it, then
//!   deletes it and `member/ROOM/NICK` in one transaction. A member key
//!   that goes with its mark left saying the mark's value. A mark whose
//!   deletion never came (etcd went away in between) is overwritten and
//!   deleted by the next leave of that room, deleted with the room, and
//!   goes with the lease in any case: marks never pile up.
//!
//! - `presence/TOKEN` → the session's [`Presence`] (away message, when its
//!   person last sent a line), under the session's lease: gone with the
//!   session, never outliving it.
//!
//! A deletion event carries no value, so the mirror keeps the marks' values
//! from their puts (an earlier revision, or the initial read) and uses them
//! when the marks go.
//!
//! Every router keeps a mirror of the prefix, fed by one etcd watch resumed
//! from the last revision it applied, and answers reads and scopes `Watch`
//! streams from it as the in-memory registry does. A write waits until the
//! mirror has seen it, so a caller reads its own writes.
//!
//! Every call to etcd goes through [`retry`]: a member down, a leader
//! election or a broken connection is retried for a few seconds, then
//! reported as [`RegistryError::Unavailable`]. Each write is built so that
//! running it again after a lost answer gives the answer the first run
//! would have (see `login`, `logout`, `join`, `leave`, `delete_room`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::durable::now_ms;
use super::watcher::{check_follow, Alive, Feed, Watcher};
use super::{
    new_token, Creation, Departure, Event, EventKind, EventStream, Member, Presence, Registry,
    RegistryError, RoomInfo, RoomSnapshot, Session, Token, UserLookup, UserPresence, BINDING_TTL,
    MAX_NICKS_PER_KEY, MIN_LEASE_TTL,
};
use crate::identity::PublicKey;
use crate::mailbox::{EtcdMail, MailStore};
use crate::names::{check_address, check_parting, Nick, Room};

/// Every key parley keeps in etcd starts with this.
pub const PREFIX: &str = "/parley/v1/";
/// How long one call to etcd may take, retries included: long enough to
/// ride out a leader election, short enough for a caller to hear "try
/// again" while it still cares.
const RETRY_FOR: Duration = Duration::from_secs(4);
/// How long one attempt may take. A request queued for an endpoint that
/// never answers is not covered by the channel's own timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(800);
/// Longest pause between attempts to reopen the mirror's watch.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(1);
/// How long a write or a lookup waits for the mirror to reach its revision.
const MIRROR_WAIT: Duration = Duration::from_secs(4);
/// A mirror still short of a revision after this writes [`TICK`]: the
/// revision may come from writes outside the prefix, which the watch never
/// sends.
const TICK_AFTER: Duration = Duration::from_millis(200);
/// A key under the prefix, written only to move the watch on: once the
/// mirror has applied a tick it has applied everything before it, as the
/// watch delivers in revision order. (etcd 3.4's progress requests are no
/// substitute: one can report a revision whose events are still on their
/// way.)
pub(crate) const TICK: &str = "/parley/v1/tick";
/// Events buffered per watcher before it is cut off as too slow.
const WATCH_BUFFER: usize = 4096;
/// Lease of a `deleted/` event key: long enough for every router to see it.
const DELETED_TTL: i64 = 60;
/// The finest a `seen/` mark is kept: a login or logout within this of the
/// last mark writes none.
const SEEN_GRAIN: Duration = Duration::from_secs(24 * 3600);
/// Rounds a login or a join makes against racing writers before giving up.
const ROUNDS: usize = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionValue {
    nick: String,
    address: String,
    key: String,
    lease: i64,
    /// The router holding its reservation (empty: reached directly).
    #[serde(default)]
    relay: String,
}

impl SessionValue {
    fn member(&self, key: PublicKey) -> Member {
        Member {
            nick: self.nick.clone(),
            address: self.address.clone(),
            key,
            relay: self.relay.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoomValue {
    name: String,
    /// Set by the join that made the record; no later join changes it.
    /// (Records written before this rule carry a `proof` too; it is
    /// ignored.)
    owner: String,
    owner_key: String,
    /// Random, drawn by the join that made the record: a join retried
    /// after a lost answer knows it made it.
    #[serde(default)]
    made: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeletedValue {
    room: String,
    by: String,
}

/// A registry kept in etcd; see the module doc.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    /// Mailboxes, in etcd beside the registry.
    mail: Arc<EtcdMail>,
    ttl: Duration,
    binding_ttl: Duration,
    mirror: Arc<Mirror>,
    _watch: Arc<DropGuard>,
}

struct Mirror {
    state: Mutex<State>,
    events: broadcast::Sender<Feed>,
    /// The etcd revision the mirror has applied; only grows.
    seen: watch::Sender<i64>,
}

#[derive(Default)]
struct State {
    /// The revision this state reflects.
    revision: i64,
    sessions: HashMap<Token, (SessionValue, PublicKey)>,
    users: HashMap<String, Token>,
    bindings: HashMap<String, PublicKey>,
    /// Key (hex) → when a session of it last began or ended (ms).
    seen: HashMap<String, i64>,
    /// Nick key → the nick keys its latest watch follows.
    follows: HashMap<String, HashSet<String>>,
    rooms: HashMap<String, RoomValue>,
    /// Room key → member nick keys, with the revision each joined at (join
    /// order).
    members: HashMap<String, BTreeMap<String, i64>>,
    /// Session token → the parting message of its `quit/` mark.
    quits: HashMap<Token, String>,
    /// (Room key, nick key) → the parting message of its `part/` mark.
    parts: HashMap<(String, String), String>,
    /// Session token → its `presence/` key.
    presences: HashMap<Token, Presence>,
}

fn k(parts: &[&str]) -> String {
    let mut s = PREFIX.to_string();
    s.push_str(&parts.join("/"));
    s
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialising cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn key_hex(key: &PublicKey) -> String {
    hex::encode(key.as_bytes())
}

fn key_from_hex(s: &str) -> Option<PublicKey> {
    PublicKey::from_bytes(&hex::decode(s).ok()?).ok()
}

/// One line saying what went wrong, causes included (a transport error's
/// own text is only "transport error").
fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let mut out = match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    };
    let mut source = match e {
        etcd_client::Error::GRpcStatus(s) => s.source(),
        etcd_client::Error::TransportError(t) => t.source(),
        _ => None,
    };
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out.replace('\n', " ")
}

/// Whether `e` says "not now" rather than "no": worth another attempt.
fn retryable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        // A keep-alive stream that broke; "lease not found" is a real no.
        E::LeaseKeepAliveError(m) => !m.contains("not found"),
        E::GRpcStatus(s) => match s.code() {
            // etcd's own "leader changed", "no leader", "request timed out",
            // "server stopped", and a connection that could not be made.
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => true,
            Code::ResourceExhausted => s.message().contains("too many requests"),
            // A connection that broke under the call shows up as these.
            Code::Unknown | Code::Cancelled | Code::Internal => {
                let m = s.message().to_ascii_lowercase();
                std::error::Error::source(s).is_some()
                    || [
                        "transport",
                        "connect",
                        "h2 protocol",
                        "broken pipe",
                        "reset",
                        "closed",
                    ]
                    .iter()
                    .any(|w| m.contains(w))
            }
            _ => false,
        },
        _ => false,
    }
}

/// Why a call to etcd failed, after [`retry`].
enum Failure {
    /// etcd did not answer for [`RETRY_FOR`]; the last cause.
    Down { what: &'static str, cause: String },
    /// etcd answered no.
    Refused {
        what: &'static str,
        error: etcd_client::Error,
    },
}

impl From<Failure> for RegistryError {
    fn from(f: Failure) -> RegistryError {
        match f {
            Failure::Down { what, cause } => RegistryError::Unavailable(format!(
                "etcd did not answer ({what}) for {} s: {cause}",
                RETRY_FOR.as_secs()
            )),
            // A put under a lease that is gone: the session ended.
            Failure::Refused { error, .. } if lease_not_found(&error) => {
                RegistryError::Unauthenticated
            }
            Failure::Refused { what, error } => {
                RegistryError::Unavailable(format!("etcd refused {what}: {}", describe(&error)))
            }
        }
    }
}

fn lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::NotFound && s.message().contains("lease not found"))
}

/// Runs `op` on `client` until it succeeds, fails for good, or
/// [`RETRY_FOR`] has passed: retryable errors and attempts that take longer
/// than [`ATTEMPT_TIMEOUT`] are tried again after a short doubling pause.
/// `op` must be safe to run twice: an attempt that timed out or lost its
/// answer may have been applied.
async fn retry<T, F, Fut>(client: &Client, what: &'static str, mut op: F) -> Result<T, Failure>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let cause = match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), op(client.clone())).await
        {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(error)) if !retryable(&error) => return Err(Failure::Refused { what, error }),
            Ok(Err(e)) => describe(&e),
            Err(_) => format!("no answer within {:?}", left.min(ATTEMPT_TIMEOUT)),
        };
        if Instant::now() + backoff >= deadline {
            return Err(Failure::Down { what, cause });
        }
        tracing::debug!(what, %cause, "etcd call failed; trying again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn first_kv(responses: Vec<TxnOpResponse>) -> Option<KeyValue> {
    responses.into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

impl EtcdRegistry {
    /// Connects to etcd at `endpoints`, reads the registry and starts
    /// following it. Fails within a few seconds, with the endpoints named,
    /// if etcd cannot be reached: connecting itself is lazy, so the first
    /// read is what finds out.
    pub async fn connect(
        endpoints: &[String],
        ttl: Duration,
    ) -> Result<EtcdRegistry, RegistryError> {
        if ttl < MIN_LEASE_TTL {
            return Err(RegistryError::InvalidArgument(format!(
                "lease TTL must be at least {} s",
                MIN_LEASE_TTL.as_secs()
            )));
        }
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(RegistryError::InvalidArgument(
                "no etcd endpoint given".into(),
            ));
        }
        let named = endpoints.join(",");
        let cannot = |cause: String| {
            RegistryError::Unavailable(format!("cannot reach etcd at {named}: {cause}"))
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(ATTEMPT_TIMEOUT)
            .with_timeout(ATTEMPT_TIMEOUT)
            // Pings find a dead connection under an idle watch.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from the leader refuses at once (and
            // cancels its watches) instead of hanging or serving stale.
            .with_require_leader(true);
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|e| cannot(describe(&e)))?;
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let (seen, _) = watch::channel(0);
        let mirror = Arc::new(Mirror {
            state: Mutex::new(State::default()),
            events,
            seen,
        });
        let revision = mirror.load(&client).await.map_err(|f| match f {
            Failure::Down { cause, .. } => cannot(cause),
            Failure::Refused { error, .. } => cannot(describe(&error)),
        })?;
        tracing::info!(endpoints = %named, revision, "registry in etcd");
        let stop = CancellationToken::new();
        tokio::spawn(follow(
            client.clone(),
            mirror.clone(),
            revision,
            stop.clone(),
        ));
        Ok(EtcdRegistry {
            mail: Arc::new(EtcdMail::new(client.clone())),
            client,
            ttl,
            binding_ttl: BINDING_TTL,
            mirror,
            _watch: Arc::new(stop.drop_guard()),
        })
    }

    /// The same registry, releasing a nick whose key went unseen for
    /// `binding_ttl` (default [`BINDING_TTL`]) when another key claims it.
    pub fn with_binding_ttl(mut self, binding_ttl: Duration) -> EtcdRegistry {
        self.binding_ttl = binding_ttl;
        self
    }

    /// [`retry`] for the mail store beside the registry
    /// (`crate::mailbox::EtcdMail`): the same attempts and deadline, a
    /// failure told as one readable line.
    pub(crate) async fn retry_for_mail<T, F, Fut>(
        client: &Client,
        what: &'static str,
        op: F,
    ) -> Result<T, String>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        retry(client, what, op).await.map_err(|f| match f {
            Failure::Down { what, cause } => format!(
                "etcd did not answer ({what}) for {} s: {cause}",
                RETRY_FOR.as_secs()
            ),
            Failure::Refused { what, error } => {
                format!("etcd refused {what}: {}", describe(&error))
            }
        })
    }

    async fn call<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, RegistryError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        Ok(retry(&self.client, what, op).await?)
    }

    /// Runs `txn`; returns whether its condition held, its responses and
    /// its revision.
    async fn txn(
        &self,
        what: &'static str,
        txn: Txn,
    ) -> Result<(bool, Vec<TxnOpResponse>, i64), RegistryError> {
        let r = self
            .call(what, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let revision = r.header().map_or(0, |h| h.revision());
        Ok((r.succeeded(), r.op_responses(), revision))
    }

    async fn get(
        &self,
        what: &'static str,
        key: &str,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, RegistryError> {
        self.call(what, |mut c| {
            let (key, options) = (key.to_owned(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    async fn grant(&self, what: &'static str, ttl: i64) -> Result<i64, RegistryError> {
        // A grant whose answer is lost leaves a lease nothing is put under;
        // it runs out by itself.
        let r = self
            .call(what, |mut c| async move { c.lease_grant(ttl, None).await })
            .await?;
        Ok(r.id())
    }

    /// Waits until the mirror has applied `revision`.
    async fn seen(&self, revision: i64) -> Result<(), RegistryError> {
        let mut rx = self.mirror.seen.subscribe();
        let deadline = Instant::now() + MIRROR_WAIT;
        let mut tick = Some(Instant::now() + TICK_AFTER);
        loop {
            let now = *rx.borrow_and_update();
            if now >= revision {
                return Ok(());
            }
            let tick_at = tick.unwrap_or(deadline);
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(tick_at), if tick.is_some() => {
                    tick = None;
                    // Its revision is past `revision`; one is enough.
                    self.call("moving the watch on", |mut c| async move {
                        c.put(TICK, Vec::new(), None).await
                    })
                    .await?;
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Err(RegistryError::Unavailable(format!(
            "etcd: this router's copy of the registry is behind (at revision {}, needs {revision}); try again",
            *rx.borrow()
        )))
    }

    /// Records `key` as seen now, unless the mirror holds a recent enough
    /// mark (see the module doc).
    async fn mark_seen(&self, key: &PublicKey) -> Result<(), RegistryError> {
        let kh = key_hex(key);
        let now = now_ms();
        let grain =
            i64::try_from((self.binding_ttl / 8).min(SEEN_GRAIN).as_millis()).unwrap_or(i64::MAX);
        let held = self.mirror.lock().seen.get(&kh).copied();
        if held.is_some_and(|ms| now.saturating_sub(ms) < grain) {
            return Ok(());
        }
        let mark = k(&["seen", &kh]);
        self.call("marking a key seen", |mut c| {
            let mark = mark.clone();
            async move { c.put(mark, now.to_string(), None).await }
        })
        .await?;
        Ok(())
    }

    /// Hands `nick`, bound to another key as `held` shows, to `key` if that
    /// key went unseen past the binding TTL and no session holds the nick.
    /// Whether `nick` is now `key`'s.
    async fn release_unseen(
        &self,
        nick: &Nick,
        held: &KeyValue,
        key: &PublicKey,
    ) -> Result<bool, RegistryError> {
        let nk = nick.key();
        let ttl = i64::try_from(self.binding_ttl.as_millis()).unwrap_or(i64::MAX);
        let expired = {
            let state = self.mirror.lock();
            // No mark at all: a binding older than marks, or one whose mark
            // this router has not seen yet; never taken for unseen.
            let seen = PublicKey::from_bytes(held.value())
                .ok()
                .and_then(|k| state.seen.get(&key_hex(&k)).copied());
            seen.is_some_and(|ms| now_ms().saturating_sub(ms) > ttl)
                && !state.users.contains_key(&nk)
        };
        if !expired {
            return Ok(false);
        }
        let (bind, user) = (k(&["bind", &nk]), k(&["user", &nk]));
        // Only the binding read, and only while nobody holds the nick: a
        // racing claim or a login of the old key in between wins instead.
        let (swapped, _, _) = self
            .txn(
                "releasing an unseen key's nick",
                Txn::new()
                    .when([
                        Compare::mod_revision(bind.clone(), CompareOp::Equal, held.mod_revision()),
                        Compare::version(user, CompareOp::Equal, 0),
                    ])
                    .and_then([TxnOp::put(bind.clone(), key.to_vec(), None)]),
            )
            .await?;
        if swapped {
            tracing::info!(%nick, "binding released: its key went unseen");
            return Ok(true);
        }
        // Run again after a lost answer, the comparison fails: the binding
        // may be ours already.
        let now = self.get("reading a binding", &bind, None).await?;
        Ok(now.kvs().first().map(KeyValue::value) == Some(key.as_bytes().as_slice()))
    }

    /// Brings the mirror up to etcd's current revision: a lookup then
    /// sees what any router wrote before it was asked.
    async fn sync(&self) -> Result<(), RegistryError> {
        let r = self
            .get(
                "reading the revision",
                PREFIX,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        self.seen(r.header().map_or(0, |h| h.revision())).await
    }

    fn mirrored(&self, token: &str) -> Option<(SessionValue, PublicKey)> {
        self.mirror.lock().sessions.get(token).cloned()
    }

    /// The live session holding `token`. A token this router has not seen
    /// yet (just handed out by another router) is looked for again after
    /// catching up with etcd.
    async fn live(&self, token: &str) -> Result<(SessionValue, PublicKey), RegistryError> {
        if let Some(s) = self.mirrored(token) {
            return Ok(s);
        }
        self.sync().await?;
        self.mirrored(token).ok_or(RegistryError::Unauthenticated)
    }

    /// Revokes `lease`, ending every key under it; one already gone is
    /// fine (it ran out, or an earlier attempt revoked it).
    async fn revoke(&self, lease: i64) -> Result<(), RegistryError> {
        let r = self
            .call("revoking a lease", |mut c| async move {
                match c.lease_revoke(lease).await {
                    Ok(r) => Ok(Some(r.header().map_or(0, |h| h.revision()))),
                    Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        match r {
            Some(rev) => self.seen(rev).await,
            None => Ok(()),
        }
    }

    /// Ends the session `token` on purpose: puts its `quit/` mark, holding
    /// the parting `message`, under its `lease`, then revokes the lease,
    /// which deletes the mark with the session's other keys in one revision
    /// (see the module doc). Safe to run again: the same mark put twice is
    /// one mark, and a lease already gone (it ran out, or an earlier
    /// attempt revoked it) is fine. A mark whose revocation never comes
    /// (etcd went away in between) still reads as a quit, with its
    /// message, when the lease runs out: the peer did log out.
    async fn end_session(
        &self,
        token: &str,
        lease: i64,
        message: &str,
    ) -> Result<(), RegistryError> {
        let mark = k(&["quit", token]);
        let put = retry(&self.client, "marking a session as quitting", |mut c| {
            let (mark, message) = (mark.clone(), message.to_owned());
            async move {
                c.put(mark, message, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await;
        match put {
            Ok(_) => self.revoke(lease).await,
            // Gone before it could quit: it ran out, or was ended already.
            Err(Failure::Refused { error, .. }) if lease_not_found(&error) => Ok(()),
            Err(f) => Err(f.into()),
        }
    }
}

impl Mirror {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn advance(&self, revision: i64) {
        self.seen.send_if_modified(|s| {
            let moved = revision > *s;
            *s = (*s).max(revision);
            moved
        });
    }

    /// Reads the whole prefix into the mirror; returns its revision.
    async fn load(&self, client: &Client) -> Result<i64, Failure> {
        let r = retry(client, "reading the registry", |mut c| async move {
            c.get(PREFIX, Some(GetOptions::new().with_prefix())).await
        })
        .await?;
        let revision = r.header().map_or(0, |h| h.revision());
        let mut fresh = State {
            revision,
            ..State::default()
        };
        let mut kvs: Vec<&KeyValue> = r.kvs().iter().collect();
        // Sessions before the keys that refer to them.
        kvs.sort_by_key(|kv| kind_rank(kv.key()));
        for kv in kvs {
            fresh.put(kv, None);
        }
        *self.lock() = fresh;
        self.advance(revision);
        Ok(revision)
    }

    /// Applies one watch response's events, revision by revision (a
    /// response after a reconnection holds many), and tells watchers.
    fn apply(&self, events: &[etcd_client::Event]) {
        let mut by_revision: BTreeMap<i64, Vec<&etcd_client::Event>> = BTreeMap::new();
        for e in events {
            if let Some(kv) = e.kv() {
                // A deletion's kv carries the deleting revision too.
                by_revision.entry(kv.mod_revision()).or_default().push(e);
            }
        }
        let mut state = self.lock();
        for (revision, group) in by_revision {
            for (kind, audience, followed) in state.apply_revision(&group) {
                // No receivers is fine: nobody is watching.
                let _ = self.events.send(Feed::event(
                    Event {
                        revision: u64::try_from(revision).unwrap_or(0),
                        kind,
                    },
                    audience,
                    followed,
                ));
            }
            state.revision = state.revision.max(revision);
        }
        let revision = state.revision;
        drop(state);
        self.advance(revision);
    }

    /// A progress report: nothing under the prefix changed up to
    /// `revision`.
    fn progressed(&self, revision: i64) {
        let mut state = self.lock();
        state.revision = state.revision.max(revision);
        drop(state);
        self.advance(revision);
    }
}

/// Order of keys within one revision for puts: what others refer to first.
fn kind_rank(key: &[u8]) -> u8 {
    let key = String::from_utf8_lossy(key);
    let rest = key.strip_prefix(PREFIX).unwrap_or(&key);
    match rest.split('/').next().unwrap_or_default() {
        "bind" => 0,
        "room" => 1,
        "session" => 2,
        "user" => 3,
        "member" => 4,
        _ => 5,
    }
}

/// Order for deletions: members leave, then users go, then sessions and
/// rooms. (A `quit/` mark is read before any deletion is applied: see
/// `State::apply_revision`.)
fn delete_rank(key: &[u8]) -> u8 {
    let key = String::from_utf8_lossy(key);
    let rest = key.strip_prefix(PREFIX).unwrap_or(&key);
    match rest.split('/').next().unwrap_or_default() {
        "member" => 0,
        "user" => 1,
        "session" => 2,
        _ => 3,
    }
}

/// An event the mirror's change makes: the event, the sessions it is
/// for, and (presence) the sessions of those its nick follows, who see it
/// if they follow the nick too (see `watcher`).
type Emitted = (EventKind, HashSet<Token>, HashSet<Token>);
type Out<'a> = Option<&'a mut Vec<Emitted>>;

/// A user whose key goes in the revision being applied: who is told, and
/// how its memberships end (with the parting message of a quit).
struct Gone {
    audience: HashSet<Token>,
    departure: Departure,
    message: String,
}

/// The `part/` marks deleted in the revision being applied: (room key,
/// nick key) → the parting message. A member key deleted with its mark
/// left saying it.
type Parting = HashMap<(String, String), String>;

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

impl State {
    /// The sessions of the online users `nk` follows.
    fn followed_sessions(&self, nk: &str) -> HashSet<Token> {
        self.follows
            .get(nk)
            .map(|f| {
                f.iter()
                    .filter_map(|y| self.users.get(y).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The sessions of those `nk` follows now and did not in `old`, who
    /// follow it back and are online.
    fn newly_followed_back(&self, nk: &str, old: &HashSet<String>) -> HashSet<Token> {
        let Some(now) = self.follows.get(nk) else {
            return HashSet::new();
        };
        now.difference(old)
            .filter(|y| self.follows.get(*y).is_some_and(|f| f.contains(nk)))
            .filter_map(|y| self.users.get(y).cloned())
            .collect()
    }

    fn member(&self, nick_key: &str) -> Option<Member> {
        let token = self.users.get(nick_key)?;
        let (s, key) = self.sessions.get(token)?;
        Some(s.member(*key))
    }

    fn room_audience(&self, room_key: &str) -> HashSet<Token> {
        self.members
            .get(room_key)
            .map(|m| {
                m.keys()
                    .filter_map(|nk| self.users.get(nk).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn peers_audience(&self, token: &str, nick_key: &str) -> HashSet<Token> {
        let mut out = HashSet::from([token.to_owned()]);
        for (room, members) in &self.members {
            if members.contains_key(nick_key) {
                out.extend(self.room_audience(room));
            }
        }
        out
    }

    fn room_name(&self, room_key: &str) -> String {
        self.rooms
            .get(room_key)
            .map_or_else(|| room_key.to_string(), |r| r.name.clone())
    }

    /// Applies the changes of one revision; returns the events they make.
    fn apply_revision(&mut self, events: &[&etcd_client::Event]) -> Vec<Emitted> {
        let mut order: Vec<&etcd_client::Event> = events.to_vec();
        // Puts of sessions before users and members; deletions announce
        // before they remove (see `State::delete`).
        order.sort_by_key(|e| {
            let kv = e.kv().map(KeyValue::key).unwrap_or_default();
            match e.event_type() {
                EventType::Put => (0, kind_rank(kv)),
                EventType::Delete => (1, delete_rank(kv)),
            }
        });
        // A user going offline is told to those it shared a room with
        // before this revision removed its memberships (a lease that ran
        // out deletes them all at once). Its session's `quit/` mark going
        // too says it quit, and the mark's value (kept from its put) is
        // what it said; no mark, its lease ran out.
        let deleted: Vec<String> = order
            .iter()
            .filter(|e| e.event_type() == EventType::Delete)
            .filter_map(|e| e.kv())
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        let quit_prefix = format!("{PREFIX}quit/");
        let quitting: HashSet<&str> = deleted
            .iter()
            .filter_map(|key| key.strip_prefix(&quit_prefix))
            .collect();
        let mut gone: HashMap<String, Gone> = HashMap::new();
        let user_prefix = format!("{PREFIX}user/");
        for key in &deleted {
            if let Some(nk) = key.strip_prefix(&user_prefix) {
                if let Some(token) = self.users.get(nk) {
                    let (departure, message) = if quitting.contains(token.as_str()) {
                        let said = self.quits.get(token).cloned().unwrap_or_default();
                        (Departure::Quit, said)
                    } else {
                        (Departure::TimedOut, String::new())
                    };
                    let audience = self.peers_audience(token, nk);
                    gone.insert(
                        nk.to_string(),
                        Gone {
                            audience,
                            departure,
                            message,
                        },
                    );
                }
            }
        }
        // A leave deletes the member key and its `part/` mark together.
        let part_prefix = format!("{PREFIX}part/");
        let parting: Parting = deleted
            .iter()
            .filter_map(|key| key.strip_prefix(&part_prefix)?.split_once('/'))
            .map(|(rk, nk)| {
                let at = (rk.to_string(), nk.to_string());
                let said = self.parts.get(&at).cloned().unwrap_or_default();
                (at, said)
            })
            .collect();
        let renames = self.renames(&order);
        let mut out = Vec::new();
        for e in order {
            let Some(kv) = e.kv() else { continue };
            match e.event_type() {
                EventType::Put => self.put(kv, Some(&mut out)),
                EventType::Delete => self.delete(kv, &mut gone, &parting, &mut out),
            }
        }
        if renames.is_empty() {
            return out;
        }
        // A nick change's revision holds nothing else: the offline, online,
        // left and joined its keys made are one NickChanged instead.
        renames
            .into_iter()
            .filter_map(|(token, old)| {
                let (s, key) = self.sessions.get(&token)?;
                let nk = s.nick.to_ascii_lowercase();
                Some((
                    EventKind::NickChanged {
                        old,
                        member: s.member(*key),
                    },
                    self.peers_audience(&token, &nk),
                    self.followed_sessions(&nk),
                ))
            })
            .collect()
    }

    /// The sessions a revision renames (their record put with another
    /// nick than the mirror holds), with the nick each held before.
    fn renames(&self, order: &[&etcd_client::Event]) -> Vec<(Token, String)> {
        let session_prefix = format!("{PREFIX}session/");
        order
            .iter()
            .filter(|e| e.event_type() == EventType::Put)
            .filter_map(|e| e.kv())
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let token = key.strip_prefix(&session_prefix)?;
                let now = serde_json::from_slice::<SessionValue>(kv.value()).ok()?;
                let (was, _) = self.sessions.get(token)?;
                (was.nick != now.nick).then(|| (token.to_owned(), was.nick.clone()))
            })
            .collect()
    }

    fn put(&mut self, kv: &KeyValue, out: Out<'_>) {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(rest) = key.strip_prefix(PREFIX) else {
            return;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["presence", t] => {
                if let Ok(p) = serde_json::from_slice::<Presence>(kv.value()) {
                    self.presences.insert((*t).to_string(), p);
                }
            }
            ["bind", nk] => {
                if let Ok(k) = PublicKey::from_bytes(kv.value()) {
                    self.bindings.insert((*nk).to_string(), k);
                }
            }
            ["seen", kh] => {
                if let Some(ms) = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                {
                    self.seen.insert((*kh).to_string(), ms);
                }
            }
            ["follow", nk] => {
                if let Ok(v) = serde_json::from_slice::<HashSet<String>>(kv.value()) {
                    let old = self
                        .follows
                        .insert((*nk).to_string(), v)
                        .unwrap_or_default();
                    if let (Some(out), Some(me)) = (out, self.member(nk)) {
                        // Those it starts following who follow it back and
                        // are online could not see its login: told now.
                        let audience = self.newly_followed_back(nk, &old);
                        if !audience.is_empty() {
                            out.push((EventKind::UserOnline(me), audience, HashSet::new()));
                        }
                    }
                }
            }
            ["room", rk] => {
                if let Ok(v) = serde_json::from_slice::<RoomValue>(kv.value()) {
                    self.rooms.insert((*rk).to_string(), v);
                }
            }
            ["session", token] => {
                if let Ok(v) = serde_json::from_slice::<SessionValue>(kv.value()) {
                    if let Some(k) = key_from_hex(&v.key) {
                        self.sessions.insert((*token).to_string(), (v, k));
                    }
                }
            }
            ["user", nk] => {
                let token = String::from_utf8_lossy(kv.value()).into_owned();
                self.users.insert((*nk).to_string(), token.clone());
                if let (Some(out), Some(m)) = (out, self.member(nk)) {
                    let followed = self.followed_sessions(nk);
                    out.push((EventKind::UserOnline(m), HashSet::from([token]), followed));
                }
            }
            ["member", rk, nk] => {
                let fresh = self
                    .members
                    .entry((*rk).to_string())
                    .or_default()
                    .insert((*nk).to_string(), kv.create_revision())
                    .is_none();
                if let (Some(out), Some(m), true) = (out, self.member(nk), fresh) {
                    let room = self.room_name(rk);
                    out.push((
                        EventKind::MemberJoined { room, member: m },
                        self.room_audience(rk),
                        HashSet::new(),
                    ));
                }
            }
            ["quit", token] => {
                self.quits.insert((*token).to_string(), text(kv.value()));
            }
            ["part", rk, nk] => {
                self.parts
                    .insert(((*rk).to_string(), (*nk).to_string()), text(kv.value()));
            }
            ["deleted", rk] => {
                if let (Some(out), Ok(v)) =
                    (out, serde_json::from_slice::<DeletedValue>(kv.value()))
                {
                    // Told before the members' keys go (same revision).
                    let audience = self.room_audience(rk);
                    self.members.remove(*rk);
                    out.push((
                        EventKind::RoomDeleted {
                            room: v.room,
                            by: v.by,
                        },
                        audience,
                        HashSet::new(),
                    ));
                }
            }
            _ => {}
        }
    }

    fn delete(
        &mut self,
        kv: &KeyValue,
        gone: &mut HashMap<String, Gone>,
        parting: &Parting,
        out: &mut Vec<Emitted>,
    ) {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(rest) = key.strip_prefix(PREFIX) else {
            return;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["presence", t] => {
                self.presences.remove(*t);
            }
            ["member", rk, nk] => {
                let Some(members) = self.members.get(*rk) else {
                    return;
                };
                if !members.contains_key(*nk) {
                    return;
                }
                let audience = self.room_audience(rk);
                if let Some(m) = self.members.get_mut(*rk) {
                    m.remove(*nk);
                    if m.is_empty() {
                        self.members.remove(*rk);
                    }
                }
                if let Some(member) = self.member(nk) {
                    let room = self.room_name(rk);
                    // The user key going in the same revision: the session
                    // ended (quit or ran out), not a leave. A leave says
                    // what its mark, gone with the key, held.
                    let (departure, message) = match gone.get(*nk) {
                        Some(g) => (g.departure, g.message.clone()),
                        None => (
                            Departure::Left,
                            parting
                                .get(&((*rk).to_string(), (*nk).to_string()))
                                .cloned()
                                .unwrap_or_default(),
                        ),
                    };
                    out.push((
                        EventKind::MemberLeft {
                            room,
                            member,
                            departure,
                            message,
                        },
                        audience,
                        HashSet::new(),
                    ));
                }
            }
            ["user", nk] => {
                let Some(token) = self.users.get(*nk).cloned() else {
                    return;
                };
                let audience = gone
                    .remove(*nk)
                    .map_or_else(|| self.peers_audience(&token, nk), |g| g.audience);
                if let Some(member) = self.member(nk) {
                    let followed = self.followed_sessions(nk);
                    out.push((EventKind::UserOffline(member), audience, followed));
                }
                self.users.remove(*nk);
            }
            ["session", token] => {
                self.sessions.remove(*token);
            }
            ["room", rk] => {
                self.rooms.remove(*rk);
            }
            ["quit", token] => {
                self.quits.remove(*token);
            }
            // Only a nick change deletes these: the binding moved, and
            // whom the nick follows moved with it.
            ["bind", nk] => {
                self.bindings.remove(*nk);
            }
            ["follow", nk] => {
                self.follows.remove(*nk);
            }
            ["part", rk, nk] => {
                self.parts.remove(&((*rk).to_string(), (*nk).to_string()));
            }
            _ => {}
        }
    }
}

/// Follows etcd from `revision` on, feeding the mirror. A stream that
/// breaks (a member down, a leader change, etcd gone) is opened again,
/// from the last revision applied, for as long as the registry lives;
/// etcd having compacted past it reloads everything.
async fn follow(client: Client, mirror: Arc<Mirror>, mut revision: i64, stop: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    // Whether the last attempt failed: the first failure is a warning,
    // the ones after it (etcd still away) are not worth one each.
    let mut failing = false;
    loop {
        let options = WatchOptions::new()
            .with_prefix()
            .with_progress_notify()
            .with_start_revision(revision + 1);
        let mut c = client.clone();
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            o = tokio::time::timeout(ATTEMPT_TIMEOUT, c.watch(PREFIX, Some(options))) => o,
        };
        let cause = match opened {
            Ok(Ok(mut stream)) => loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    n = stream.message() => n,
                };
                let resp = match next {
                    Ok(Some(resp)) => resp,
                    Ok(None) => break "the stream ended".to_string(),
                    Err(e) => break describe(&e),
                };
                if failing {
                    tracing::info!(revision, "etcd watch resumed");
                    failing = false;
                }
                backoff = FIRST_BACKOFF;
                if resp.compact_revision() > 0 {
                    tracing::warn!(
                        revision,
                        compacted = resp.compact_revision(),
                        "etcd compacted past the mirror; reloading"
                    );
                    match mirror.load(&client).await {
                        Ok(r) => {
                            revision = r;
                            let _ = mirror.events.send(Feed::Reset);
                        }
                        Err(f) => tracing::warn!(
                            cause = %RegistryError::from(f),
                            "cannot reload from etcd"
                        ),
                    }
                    break "compacted".to_string();
                }
                if let Some(last) = resp.events().iter().rev().find_map(|e| e.kv()) {
                    mirror.apply(resp.events());
                    // Resume after the last event applied: a response's
                    // header may run ahead of the events it carries.
                    revision = revision.max(last.mod_revision());
                } else if !resp.created() && !resp.canceled() && resp.watch_id() >= 0 {
                    // etcd's periodic progress report, sent only once the
                    // watch has caught up. (The created response's header
                    // is not one: events before it may still be on their
                    // way.)
                    mirror.progressed(resp.header().map_or(0, |h| h.revision()));
                }
                if resp.canceled() {
                    break format!("cancelled by etcd: {}", resp.cancel_reason());
                }
            },
            Ok(Err(e)) => describe(&e),
            Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        };
        if failing {
            tracing::debug!(%cause, "etcd watch still broken; retrying");
        } else {
            tracing::warn!(%cause, "etcd watch broke; resuming");
            failing = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    fn mailbox(&self) -> Arc<dyn MailStore> {
        self.mail.clone()
    }

    fn lease_ttl(&self) -> Duration {
        self.ttl
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
        let nk = nick.key();
        let (bind, user) = (k(&["bind", &nk]), k(&["user", &nk]));
        // A key's nicks are counted from the mirror, as this router last
        // saw it: two routers racing to bind a fifth nick of one key may
        // both let it through, which keeps the bound small, not exact.
        {
            let state = self.mirror.lock();
            if !state.bindings.contains_key(&nk)
                && state.bindings.values().filter(|b| *b == key).count() >= MAX_NICKS_PER_KEY
            {
                return Err(RegistryError::TooManyNicks(MAX_NICKS_PER_KEY));
            }
        }
        // The nick is bound to the first key that claims it, and the key is
        // seen now, in one transaction. Run again after a lost answer, this
        // reads back the key it put.
        let seen_put = || TxnOp::put(k(&["seen", &key_hex(key)]), now_ms().to_string(), None);
        let (bound_now, resp, _) = self
            .txn(
                "binding the nick",
                Txn::new()
                    .when([Compare::version(bind.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(bind.clone(), key.to_vec(), None), seen_put()])
                    .or_else([TxnOp::get(bind.clone(), None)]),
            )
            .await?;
        if !bound_now {
            let held = first_kv(resp);
            if held.as_ref().map(KeyValue::value) != Some(key.as_bytes().as_slice()) {
                match held {
                    Some(kv) if self.release_unseen(nick, &kv, key).await? => {}
                    _ => return Err(RegistryError::KeyMismatch(nick.to_string())),
                }
            }
            self.mark_seen(key).await?;
        }
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let lease = self.grant("granting a session lease", ttl).await?;
        let token = new_token();
        let value = SessionValue {
            nick: nick.to_string(),
            address: address.to_owned(),
            key: key_hex(key),
            lease,
            relay: relay.to_owned(),
        };
        let with_lease = || Some(PutOptions::new().with_lease(lease));
        let claim = Txn::new()
            .when([Compare::version(user.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(k(&["session", &token]), json(&value), with_lease()),
                TxnOp::put(user.clone(), token.clone(), with_lease()),
            ])
            .or_else([TxnOp::get(user.clone(), None)]);
        let mut reclaimed = false;
        for _ in 0..ROUNDS {
            let (won, resp, revision) = self.txn("claiming the nick", claim.clone()).await?;
            let held = if won { None } else { first_kv(resp) };
            // A claim run again after its answer was lost finds its own
            // token: it had won.
            let ours = won
                || held
                    .as_ref()
                    .is_some_and(|kv| kv.value() == token.as_bytes());
            if ours {
                self.seen(revision).await?;
                return Ok(Session {
                    token,
                    nick: nick.to_string(),
                    lease_ttl: self.ttl,
                    reclaimed,
                });
            }
            if let Some(kv) = held {
                // The same key holds a live session: take it over, as a
                // quit. Every key of that session is under its lease.
                let old = String::from_utf8_lossy(kv.value()).into_owned();
                self.end_session(&old, kv.lease(), "").await?;
                reclaimed = true;
            }
        }
        // Logins of this nick kept racing in: give up, leaving no lease.
        let _ = self.revoke(lease).await;
        Err(RegistryError::NickTaken(nick.to_string()))
    }

    async fn change_nick(&self, token: &str, new: &Nick) -> Result<Member, RegistryError> {
        let session_key = k(&["session", token]);
        let nk = new.key();
        let (bind_new, user_new) = (k(&["bind", &nk]), k(&["user", &nk]));
        let ttl = i64::try_from(self.binding_ttl.as_millis()).unwrap_or(i64::MAX);
        // The member as the first round found it: a round that finds the
        // change made (its answer lost) answers with it.
        let mut first: Option<Member> = None;
        for _ in 0..ROUNDS {
            self.sync().await?;
            let read = self.get("reading a session", &session_key, None).await?;
            let Some(kv) = read.kvs().first().cloned() else {
                return Err(RegistryError::Unauthenticated);
            };
            let s = serde_json::from_slice::<SessionValue>(kv.value())
                .map_err(|e| RegistryError::Unavailable(format!("a session record: {e}")))?;
            let key = key_from_hex(&s.key).ok_or_else(|| {
                RegistryError::Unavailable("a session record with a bad key".into())
            })?;
            if let Some(before) = first.as_ref().filter(|_| s.nick == new.as_str()) {
                return Ok(before.clone());
            }
            let before = s.member(key);
            first.get_or_insert_with(|| before.clone());
            let ok = s.nick.to_ascii_lowercase();
            let recase = ok == nk;
            let bound = self
                .get("reading a binding", &bind_new, None)
                .await?
                .kvs()
                .first()
                .cloned();
            // Judged against what etcd and the mirror hold now; the
            // transaction below holds only if none of it moved.
            let (rooms, follows) = {
                let state = self.mirror.lock();
                if let Some(b) = &bound {
                    if b.value() != key.as_bytes().as_slice() {
                        let unseen = PublicKey::from_bytes(b.value())
                            .ok()
                            .and_then(|k| state.seen.get(&key_hex(&k)).copied())
                            .is_some_and(|ms| now_ms().saturating_sub(ms) > ttl);
                        if !unseen || state.users.contains_key(&nk) {
                            return Err(RegistryError::KeyMismatch(new.to_string()));
                        }
                    }
                }
                if !recase && state.users.contains_key(&nk) {
                    return Err(RegistryError::NickTaken(new.to_string()));
                }
                if state.bindings.values().filter(|b| **b == key).count() > MAX_NICKS_PER_KEY {
                    return Err(RegistryError::TooManyNicks(MAX_NICKS_PER_KEY));
                }
                let rooms: Vec<(String, String)> = state
                    .members
                    .iter()
                    .filter(|(_, m)| m.contains_key(&ok))
                    .map(|(rk, _)| (rk.clone(), state.room_name(rk)))
                    .collect();
                (rooms, state.follows.get(&ok).cloned())
            };
            let own = bound
                .as_ref()
                .is_some_and(|b| b.value() == key.as_bytes().as_slice());
            let moving = !recase && !own;
            let with_lease = || Some(PutOptions::new().with_lease(s.lease));
            let mut when = vec![Compare::mod_revision(
                session_key.clone(),
                CompareOp::Equal,
                kv.mod_revision(),
            )];
            when.push(match &bound {
                Some(b) => {
                    Compare::mod_revision(bind_new.clone(), CompareOp::Equal, b.mod_revision())
                }
                None => Compare::version(bind_new.clone(), CompareOp::Equal, 0),
            });
            let renamed = SessionValue {
                nick: new.to_string(),
                ..s.clone()
            };
            // The session's record goes first: the mirror tells a rename
            // by it (see `State::renames`).
            let mut ops = vec![
                TxnOp::put(session_key.clone(), json(&renamed), with_lease()),
                TxnOp::put(bind_new.clone(), key.to_vec(), None),
                TxnOp::put(k(&["seen", &key_hex(&key)]), now_ms().to_string(), None),
            ];
            if moving {
                ops.push(TxnOp::delete(k(&["bind", &ok]), None));
            }
            if !recase {
                when.push(Compare::version(user_new.clone(), CompareOp::Equal, 0));
                when.push(Compare::value(
                    k(&["user", &ok]),
                    CompareOp::Equal,
                    token.as_bytes().to_vec(),
                ));
                ops.push(TxnOp::delete(k(&["user", &ok]), None));
                ops.push(TxnOp::put(user_new.clone(), token.to_owned(), with_lease()));
                for (rk, name) in &rooms {
                    ops.push(TxnOp::delete(k(&["member", rk, &ok]), None));
                    ops.push(TxnOp::put(
                        k(&["member", rk, &nk]),
                        name.clone(),
                        with_lease(),
                    ));
                }
                if let Some(f) = &follows {
                    ops.push(TxnOp::delete(k(&["follow", &ok]), None));
                    ops.push(TxnOp::put(k(&["follow", &nk]), json(f), None));
                }
            }
            let (done, _, revision) = self
                .txn("changing a nick", Txn::new().when(when).and_then(ops))
                .await?;
            if done {
                self.seen(revision).await?;
                return Ok(before);
            }
        }
        Err(RegistryError::Unavailable(
            "the session or the nick kept changing; try again".into(),
        ))
    }

    async fn session(&self, token: &str) -> Result<Member, RegistryError> {
        let (s, key) = self.live(token).await?;
        Ok(s.member(key))
    }

    async fn heartbeat(&self, token: &str) -> Result<Duration, RegistryError> {
        let (s, _) = self.live(token).await?;
        let lease = s.lease;
        // One keep-alive on a stream of its own: a stream broken by a
        // leader change is never reused, and renewing twice is harmless.
        let alive = self
            .call("renewing a session lease", |mut c| async move {
                match c.lease_keep_alive(lease).await {
                    Ok(_) => Ok(true),
                    Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        if alive {
            Ok(self.ttl)
        } else {
            Err(RegistryError::Unauthenticated)
        }
    }

    async fn logout(&self, token: &str, message: &str) -> Result<(), RegistryError> {
        check_parting(message)?;
        let (s, key) = self.live(token).await?;
        self.end_session(token, s.lease, message).await?;
        self.mark_seen(&key).await
    }

    async fn join(
        &self,
        token: &str,
        room: &Room,
        creation: Option<&Creation>,
    ) -> Result<RoomSnapshot, RegistryError> {
        let (s, key) = self.live(token).await?;
        let nk = s.nick.to_ascii_lowercase();
        let rk = room.key();
        let creation = creation.filter(|c| {
            let bound = self
                .mirror
                .lock()
                .bindings
                .get(&c.owner.to_ascii_lowercase())
                .copied();
            let ok = bound.is_none_or(|b| b == c.key);
            if !ok {
                tracing::warn!(%room, owner = %c.owner, "creation event signed by a key its author is not bound to; ignored");
            }
            ok
        });
        let (room_key, member_key) = (k(&["room", &rk]), k(&["member", &rk, &nk]));
        // Putting the member again is harmless: same value, same lease.
        let member_put = || {
            TxnOp::put(
                member_key.clone(),
                room.to_string(),
                Some(PutOptions::new().with_lease(s.lease)),
            )
        };
        let made = new_token();
        let fresh = match creation {
            Some(c) => RoomValue {
                name: room.to_string(),
                owner: c.owner.clone(),
                owner_key: key_hex(&c.key),
                made: made.clone(),
            },
            None => RoomValue {
                name: room.to_string(),
                owner: s.nick.clone(),
                owner_key: key_hex(&key),
                made: made.clone(),
            },
        };
        // Ownership is decided here, once: the record is put only if there
        // is none, so an existing record keeps its owner whatever this join
        // shows.
        let create_or_join = Txn::new()
            .when([Compare::version(room_key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(room_key.clone(), json(&fresh), None),
                member_put(),
            ])
            .or_else([TxnOp::get(room_key.clone(), None), member_put()]);
        let (made_now, resp, revision) = self.txn("joining a room", create_or_join).await?;
        let mut created = made_now;
        if !made_now {
            let current = first_kv(resp)
                .and_then(|held| serde_json::from_slice::<RoomValue>(held.value()).ok());
            if let Some(current) = current {
                // Made by this very join, whose first answer was lost.
                created = current.made == made;
                if let Some(c) = creation.filter(|c| !c.owner.eq_ignore_ascii_case(&current.owner))
                {
                    tracing::warn!(%room, owner = %current.owner, shown = %c.owner, sent_at_ms = c.order.0, "a creation event naming another owner; the room's owner stays");
                }
            }
        }
        self.seen(revision).await?;
        let state = self.mirror.lock();
        snapshot(&state, &rk, created).ok_or_else(|| RegistryError::NoSuchRoom(room.to_string()))
    }

    async fn leave(&self, token: &str, room: &Room, message: &str) -> Result<(), RegistryError> {
        check_parting(message)?;
        let (s, _) = self.live(token).await?;
        let (rk, nk) = (room.key(), s.nick.to_ascii_lowercase());
        let (member_key, mark) = (k(&["member", &rk, &nk]), k(&["part", &rk, &nk]));
        // Asked first, so that a delete run again after a lost answer
        // (deleting nothing the second time) is not taken for "not a
        // member".
        let held = self.get("reading a membership", &member_key, None).await?;
        if held.kvs().is_empty() {
            return Err(RegistryError::NotMember(room.to_string()));
        }
        // The parting message, in a revision of its own, so the mirror has
        // it when the mark goes (a deletion carries no value). Put twice, it
        // is one mark; one left by a leave that never got further is
        // overwritten. Under the session's lease: a lease gone is a session
        // gone.
        let lease = s.lease;
        self.call("marking a leave", |mut c| {
            let (mark, message) = (mark.clone(), message.to_owned());
            async move {
                c.put(mark, message, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        // The member key and its mark go in one revision, paired by the
        // mirror. Run again after a lost answer it deletes nothing, and the
        // mark never outlives the call that put it unless etcd went away.
        let (_, _, revision) = self
            .txn(
                "leaving a room",
                Txn::new().and_then([
                    TxnOp::delete(member_key.clone(), None),
                    TxnOp::delete(mark.clone(), None),
                ]),
            )
            .await?;
        self.seen(revision).await
    }

    async fn delete_room(&self, token: &str, room: &Room) -> Result<(), RegistryError> {
        let (s, key) = self.live(token).await?;
        let rk = room.key();
        let (room_key, deleted_key) = (k(&["room", &rk]), k(&["deleted", &rk]));
        let mut lease = None;
        for _ in 0..ROUNDS {
            let held = self.get("reading a room", &room_key, None).await?;
            let Some(kv) = held.kvs().first().cloned() else {
                return Err(RegistryError::NoSuchRoom(room.to_string()));
            };
            let current: RoomValue = serde_json::from_slice(kv.value()).map_err(|e| {
                RegistryError::Unavailable(format!("etcd holds a bad record for {room}: {e}"))
            })?;
            // The mirror says who is in the room as of that read.
            self.seen(held.header().map_or(0, |h| h.revision())).await?;
            if !self.mirror.lock().members.contains_key(&rk) {
                return Err(RegistryError::NoSuchRoom(room.to_string()));
            }
            if !current.owner.eq_ignore_ascii_case(&s.nick) || current.owner_key != key_hex(&key) {
                return Err(RegistryError::NotOwner {
                    room: current.name,
                    owner: current.owner,
                });
            }
            let lease = match lease {
                Some(l) => l,
                None => *lease.insert(self.grant("granting a lease", DELETED_TTL).await?),
            };
            let told = DeletedValue {
                room: current.name.clone(),
                by: s.nick.clone(),
            };
            let (done, resp, revision) = self
                .txn(
                    "deleting a room",
                    Txn::new()
                        .when([Compare::mod_revision(
                            room_key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([
                            TxnOp::put(
                                deleted_key.clone(),
                                json(&told),
                                Some(PutOptions::new().with_lease(lease)),
                            ),
                            TxnOp::delete(room_key.clone(), None),
                            TxnOp::delete(
                                k(&["member", &rk, ""]),
                                Some(DeleteOptions::new().with_prefix()),
                            ),
                            // Marks of leaves that never finished go too.
                            TxnOp::delete(
                                k(&["part", &rk, ""]),
                                Some(DeleteOptions::new().with_prefix()),
                            ),
                        ])
                        .or_else([TxnOp::get(deleted_key.clone(), None)]),
                )
                .await?;
            // Run again after a lost answer, the comparison fails, and the
            // event key under this deletion's own lease says it was done.
            let ours = done || first_kv(resp).is_some_and(|d| d.lease() == lease);
            if ours {
                return self.seen(revision).await;
            }
            // The room changed under us (a new owner shown): look again.
        }
        Err(RegistryError::Unavailable(format!(
            "etcd: {room} kept changing while being deleted; try again"
        )))
    }

    async fn binding(&self, nick: &Nick) -> Result<Option<PublicKey>, RegistryError> {
        self.sync().await?;
        let state = self.mirror.lock();
        let nk = nick.key();
        let ttl = i64::try_from(self.binding_ttl.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        Ok(state
            .bindings
            .get(&nk)
            .filter(|k| {
                let unseen = state
                    .seen
                    .get(&key_hex(k))
                    .is_some_and(|ms| now.saturating_sub(*ms) > ttl);
                !unseen || state.users.contains_key(&nk)
            })
            .copied())
    }

    async fn find_user(&self, token: &str, nick: &Nick) -> Result<UserLookup, RegistryError> {
        self.live(token).await?;
        self.sync().await?;
        let state = self.mirror.lock();
        Ok(UserLookup {
            online: state.member(&nick.key()),
            key: state.bindings.get(&nick.key()).copied(),
        })
    }

    async fn find_room(
        &self,
        token: &str,
        room: &Room,
    ) -> Result<Option<RoomSnapshot>, RegistryError> {
        self.live(token).await?;
        self.sync().await?;
        let state = self.mirror.lock();
        Ok(snapshot(&state, &room.key(), false))
    }

    async fn list_rooms(&self, token: &str) -> Result<Vec<RoomInfo>, RegistryError> {
        self.live(token).await?;
        self.sync().await?;
        let state = self.mirror.lock();
        let mut rooms: Vec<RoomInfo> = state
            .members
            .iter()
            .filter_map(|(rk, m)| {
                let r = state.rooms.get(rk)?;
                Some(RoomInfo {
                    name: r.name.clone(),
                    members: u32::try_from(m.len()).unwrap_or(u32::MAX),
                    owner: r.owner.clone(),
                })
            })
            .collect();
        rooms.sort_by_key(|r| r.name.to_ascii_lowercase());
        Ok(rooms)
    }

    async fn list_users(&self, token: &str) -> Result<Vec<Member>, RegistryError> {
        self.live(token).await?;
        self.sync().await?;
        let state = self.mirror.lock();
        let mut users: Vec<Member> = state
            .users
            .keys()
            .filter_map(|nk| state.member(nk))
            .collect();
        users.sort_by_key(|m| m.nick.to_ascii_lowercase());
        Ok(users)
    }

    async fn set_presence(&self, token: &str, presence: &Presence) -> Result<(), RegistryError> {
        check_parting(&presence.away)?;
        let (s, _) = self.live(token).await?;
        // Under the session's lease: it goes with the session (a lease
        // already gone is refused as a session gone). Put twice, it is one.
        let (lease, key, value) = (s.lease, k(&["presence", token]), json(presence));
        let r = self
            .call("telling a presence", |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await?;
        self.seen(r.header().map_or(0, |h| h.revision())).await
    }

    async fn user_presence(
        &self,
        token: &str,
        nick: &Nick,
    ) -> Result<Option<UserPresence>, RegistryError> {
        self.live(token).await?;
        self.sync().await?;
        let state = self.mirror.lock();
        let nk = nick.key();
        let Some(t) = state.users.get(&nk) else {
            return Ok(None);
        };
        let mut rooms: Vec<String> = state
            .members
            .iter()
            .filter(|(_, m)| m.contains_key(&nk))
            .filter_map(|(rk, _)| state.rooms.get(rk).map(|r| r.name.clone()))
            .collect();
        rooms.sort_by_key(|r| r.to_ascii_lowercase());
        Ok(Some(UserPresence {
            presence: state.presences.get(t).cloned().unwrap_or_default(),
            rooms,
        }))
    }

    async fn away_users(&self, token: &str) -> Result<Vec<(String, String)>, RegistryError> {
        self.live(token).await?;
        self.sync().await?;
        let state = self.mirror.lock();
        let mut away: Vec<(String, String)> = state
            .users
            .iter()
            .filter_map(|(nk, t)| {
                let p = state.presences.get(t).filter(|p| !p.away.is_empty())?;
                Some((state.member(nk)?.nick, p.away.clone()))
            })
            .collect();
        away.sort_by_key(|(n, _)| n.to_ascii_lowercase());
        Ok(away)
    }

    async fn watch(&self, token: &str, follow: &[Nick]) -> Result<EventStream, RegistryError> {
        check_follow(follow)?;
        let (s, _) = self.live(token).await?;
        // Whom this nick follows, for every router's watchers: put before
        // the sync below, so this router's mirror has it when the stream
        // starts. The same list again is a harmless rewrite.
        let follows: HashSet<String> = follow.iter().map(Nick::key).collect();
        let key = k(&["follow", &s.nick.to_ascii_lowercase()]);
        let value = json(&follows);
        self.call("recording whom a nick follows", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await?;
        // "From now on" means from etcd's now, not from wherever this
        // router's mirror has got to: changes made before the call
        // (through any router) are not replayed.
        self.sync().await?;
        let (rx, nick) = {
            let state = self.mirror.lock();
            let (s, _) = state
                .sessions
                .get(token)
                .ok_or(RegistryError::Unauthenticated)?;
            // Subscribing under the lock: no event between the check and
            // the subscription is lost.
            (self.mirror.events.subscribe(), s.nick.clone())
        };
        let mirror = self.mirror.clone();
        let alive: Alive = Box::new(move |t| mirror.lock().sessions.contains_key(t));
        Ok(Box::pin(Watcher::new(rx, token, nick, follow, alive)))
    }
}

fn snapshot(state: &State, rk: &str, created: bool) -> Option<RoomSnapshot> {
    let room = state.rooms.get(rk)?;
    let members = state.members.get(rk)?;
    let mut order: Vec<(&i64, &String)> = members.iter().map(|(nk, rev)| (rev, nk)).collect();
    order.sort();
    Some(RoomSnapshot {
        name: room.name.clone(),
        owner: room.owner.clone(),
        members: order
            .into_iter()
            .filter_map(|(_, nk)| state.member(nk))
            .collect(),
        created,
        // The revision the snapshot reflects: events at or below it are in
        // it.
        revision: u64::try_from(state.revision).unwrap_or(0),
    })
}
