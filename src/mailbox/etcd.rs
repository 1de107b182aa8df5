//! Mailboxes in etcd, beside the shared registry: every router of one
//! registry serves the same mailboxes, and a quota holds across them.
//!
//! Layout under [`MAIL_PREFIX`] (outside the registry's prefix, which the
//! routers mirror in memory):
//!
//! - `key/OWNER` → the mailbox key `OWNER` (hex identity key) published,
//!   JSON `{key, signature}` (hex).
//! - `box/TO/ID` → one envelope of `TO`'s mailbox. `ID` is
//!   `SEQ-STAMP-SIZE-NONCE`, fixed-width lowercase hex: the mailbox's
//!   deposit counter (kept in `meta/TO`, so key order is deposit order
//!   across routers, whatever their clocks), the deposit's milliseconds
//!   (sign bit flipped), the sealed bytes' length, and a random nonce (an
//!   id is never handed out twice, also after a mailbox emptied and its
//!   counter began again). The age sweep and an ack need no value to know
//!   an envelope's age or size. The value is binary: a version byte, the
//!   sender's 32 key bytes, the nick's length (u32, big-endian) and bytes,
//!   the deposit's milliseconds (i64, big-endian), then the sealed bytes.
//! - `meta/TO` → JSON `{count, bytes, expired, seq, op}` of `TO`'s
//!   mailbox: what it holds, what the age limit removed unread, the next
//!   envelope's `SEQ`, and a random mark of the write that put it. Absent
//!   when the first three are zero.
//!
//! Every write to a mailbox (deposit, ack, sweep) reads `meta/TO` and
//! commits in one transaction conditioned on its mod revision (or its
//! absence): envelopes and their count change together, and a quota holds
//! however many routers deposit at once. A writer that loses the race reads
//! again and retries, a bounded number of times. A transaction sent twice
//! (its first answer lost) fails its condition the second time; the writer
//! then sees its own mark in `meta/TO`, or for a deposit its first
//! envelope's key, and knows it was applied.
//!
//! Writes to one mailbox through one store queue on a lock of the store's
//! own, so that only different routers' writes race in etcd: a crowd of
//! deposits through one router costs no lost rounds.
//!
//! A transaction stays under etcd's limits (128 operations, 1.5 MiB a
//! request), and a read under what a client decodes (4 MiB): a large
//! deposit is stored in several transactions, each its own compare-and-set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, GetResponse, KeyValue, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use serde::{Deserialize, Serialize};

use super::{Deposit, Envelope, Listing, MailError, MailStore, Quota};
use crate::identity::PublicKey;
use crate::registry::{EtcdRegistry, ETCD_TICK};
use crate::seal::MailboxKey;

/// Where mail lives in etcd: beside the registry's prefix, not under it,
/// so the routers' mirror of the registry never holds mail.
pub const MAIL_PREFIX: &str = "/parley/mail/v1/";

/// Rounds a write makes against racing writers of the same mailbox before
/// giving up.
const ROUNDS: usize = 20;
/// Longest random pause between two rounds (it grows from a few ms).
const MAX_PAUSE: Duration = Duration::from_millis(100);
/// Operations in one transaction: etcd refuses more than 128 by default.
const TXN_OPS: usize = 100;
/// Bytes of puts in one transaction: etcd refuses requests over 1.5 MiB by
/// default.
const TXN_BYTES: usize = 1 << 20;
/// Bytes of values one read fetches: a client decodes at most 4 MiB.
const READ_BYTES: usize = 2 << 20;
/// What a value holds beyond the sealed bytes, at most (key, nick,
/// milliseconds, framing): for the budgets above.
const VALUE_OVERHEAD: usize = 512;
/// Keys one page of the age sweep's scan reads.
const SCAN_PAGE: i64 = 4096;
/// The length of an envelope's id.
const ID_LEN: usize = 16 + 1 + 16 + 1 + 8 + 1 + 16;
/// The first byte of an envelope's value.
const VALUE_VERSION: u8 = 1;

/// A mail store in etcd. Cheap to clone.
#[derive(Clone)]
pub struct EtcdMail {
    client: Client,
    /// One lock per mailbox being written through this store: its writes
    /// queue here rather than race each other in etcd (the condition on
    /// `meta/TO` is what keeps other routers' writes apart).
    writing: Arc<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for EtcdMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdMail({MAIL_PREFIX})")
    }
}

impl EtcdMail {
    pub fn new(client: Client) -> EtcdMail {
        EtcdMail {
            client,
            writing: Arc::default(),
        }
    }

    /// The lock of `to`'s mailbox, for a write through this store.
    async fn writing(&self, to: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            if locks.len() >= 1024 {
                locks.retain(|_, l| l.strong_count() > 0);
            }
            match locks.get(to).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(to.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// A mailbox's totals, as `meta/TO` keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    count: u64,
    bytes: u64,
    expired: u64,
    /// The next envelope's `SEQ`.
    #[serde(default)]
    seq: u64,
    /// The mark of the write that put this.
    #[serde(default)]
    op: u64,
}

impl Meta {
    fn is_empty(&self) -> bool {
        self.count == 0 && self.bytes == 0 && self.expired == 0
    }
}

/// A mailbox's totals as read, with what the write must find unchanged.
#[derive(Debug, Clone, Copy)]
struct Held {
    meta: Meta,
    /// `meta/TO`'s mod revision; `None`: absent.
    revision: Option<i64>,
}

impl Held {
    fn unchanged(&self, meta_key: &str) -> Compare {
        match self.revision {
            Some(r) => Compare::mod_revision(meta_key, CompareOp::Equal, r),
            None => Compare::version(meta_key, CompareOp::Equal, 0),
        }
    }
}

/// How a conditional write went.
enum Outcome {
    /// Stored; the totals it left, when known.
    Applied(Option<Held>),
    /// Another writer came first; the totals it left, when readable.
    Lost(Option<Held>),
}

/// An envelope's name within its mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id {
    seq: u64,
    stamp: u64,
    size: u32,
}

fn owner_hex(key: &PublicKey) -> String {
    hex::encode(key.as_bytes())
}

fn key_key(owner: &str) -> String {
    format!("{MAIL_PREFIX}key/{owner}")
}

fn meta_key(to: &str) -> String {
    format!("{MAIL_PREFIX}meta/{to}")
}

fn boxes() -> String {
    format!("{MAIL_PREFIX}box/")
}

fn box_prefix(to: &str) -> String {
    format!("{MAIL_PREFIX}box/{to}/")
}

/// The end of the range of keys starting with `prefix` (whose last byte
/// is ASCII).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The key just after `key`.
fn after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// Milliseconds as a key orders them: the sign bit flipped.
fn stamp(ms: i64) -> u64 {
    (ms as u64) ^ (1 << 63)
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn format_id(seq: u64, stamp: u64, size: u32, nonce: u64) -> String {
    format!("{seq:016x}-{stamp:016x}-{size:08x}-{nonce:016x}")
}

/// `SEQ-STAMP-SIZE-NONCE`, exactly; anything else is no envelope's id.
fn parse_id(id: &str) -> Option<Id> {
    let parts: Vec<&str> = id.split('-').collect();
    let [seq, stamp, size, nonce] = parts[..] else {
        return None;
    };
    if seq.len() != 16
        || stamp.len() != 16
        || size.len() != 8
        || nonce.len() != 16
        || !parts.iter().all(|p| is_hex(p))
    {
        return None;
    }
    Some(Id {
        seq: u64::from_str_radix(seq, 16).ok()?,
        stamp: u64::from_str_radix(stamp, 16).ok()?,
        size: u32::from_str_radix(size, 16).ok()?,
    })
}

/// A `box/TO/ID` key: `TO` (hex) and the id.
fn parse_box_key(key: &[u8]) -> Option<(&str, &str, Id)> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(MAIL_PREFIX)?.strip_prefix("box/")?;
    let (to, id) = rest.split_once('/')?;
    if to.len() != 64 || !is_hex(to) {
        return None;
    }
    Some((to, id, parse_id(id)?))
}

/// The value of an envelope up to its sealed bytes.
fn value_head(from: &PublicKey, nick: &str, at_ms: i64) -> Result<Vec<u8>, MailError> {
    let len = u32::try_from(nick.len())
        .map_err(|_| MailError::Unavailable("a nick too long to keep".into()))?;
    let mut v = Vec::with_capacity(1 + 32 + 4 + nick.len() + 8);
    v.push(VALUE_VERSION);
    v.extend_from_slice(from.as_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(nick.as_bytes());
    v.extend_from_slice(&at_ms.to_be_bytes());
    Ok(v)
}

/// The sender, nick, milliseconds and sealed bytes of a value; `None` if
/// it is not one this store wrote.
fn decode_value(v: &[u8]) -> Option<(PublicKey, String, i64, Vec<u8>)> {
    let (&version, v) = v.split_first()?;
    if version != VALUE_VERSION {
        return None;
    }
    let (from, v) = v.split_at_checked(32)?;
    let from = PublicKey::from_bytes(from).ok()?;
    let (len, v) = v.split_at_checked(4)?;
    let len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
    let (nick, v) = v.split_at_checked(len)?;
    let nick = String::from_utf8(nick.to_vec()).ok()?;
    let (at_ms, sealed) = v.split_at_checked(8)?;
    let at_ms = i64::from_be_bytes(at_ms.try_into().ok()?);
    Some((from, nick, at_ms, sealed.to_vec()))
}

#[derive(Serialize, Deserialize)]
struct KeyValueJson {
    key: String,
    signature: String,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialising cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// The range reads of a transaction's answer, in order.
fn gets(r: &TxnResponse) -> Vec<GetResponse> {
    r.op_responses()
        .into_iter()
        .filter_map(|o| match o {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()
}

/// The totals in `kv` (`None`: the key is absent); `Err` if unreadable.
fn decode_meta(to: &str, kv: Option<&KeyValue>) -> Result<Held, ()> {
    match kv {
        None => Ok(Held {
            meta: Meta::default(),
            revision: None,
        }),
        Some(kv) => match serde_json::from_slice::<Meta>(kv.value()) {
            Ok(meta) => Ok(Held {
                meta,
                revision: Some(kv.mod_revision()),
            }),
            Err(e) => {
                tracing::warn!(mailbox = to, error = %e, "unreadable mailbox totals");
                Err(())
            }
        },
    }
}

/// A random pause before round `round` of a race, growing with it.
async fn pause(round: usize) {
    let most = (Duration::from_millis(2) * (1 << round.min(6))).min(MAX_PAUSE);
    let ms = rand::random_range(0..=most.as_millis() as u64);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn raced(what: &str) -> MailError {
    MailError::Unavailable(format!(
        "{what}: other writers changed the mailbox {ROUNDS} times in a row"
    ))
}

impl EtcdMail {
    async fn call<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, MailError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        EtcdRegistry::retry_for_mail(&self.client, what, op)
            .await
            .map_err(MailError::Unavailable)
    }

    async fn txn(&self, what: &'static str, txn: Txn) -> Result<TxnResponse, MailError> {
        self.call(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    async fn get(
        &self,
        what: &'static str,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, MailError> {
        let key: Vec<u8> = key.into();
        self.call(what, |mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    /// `to`'s totals, rebuilt from its envelopes' keys if unreadable.
    async fn held(&self, to: &str) -> Result<Held, MailError> {
        let r = self.get("read a mailbox", meta_key(to), None).await?;
        match decode_meta(to, r.kvs().first()) {
            Ok(held) => Ok(held),
            Err(()) => self.rebuild(to).await,
        }
    }

    /// `to`'s totals counted from its envelopes' keys (the expired count
    /// is lost), to be written over an unreadable `meta/TO`.
    async fn rebuild(&self, to: &str) -> Result<Held, MailError> {
        let mk = meta_key(to);
        let r = self
            .txn(
                "read a mailbox",
                Txn::new().and_then([
                    TxnOp::get(mk.as_str(), None),
                    TxnOp::get(
                        box_prefix(to),
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    ),
                ]),
            )
            .await?;
        let got = gets(&r);
        let kv = got.first().and_then(|g| g.kvs().first());
        if let Ok(held) = decode_meta(to, kv) {
            return Ok(held);
        }
        let mut meta = Meta::default();
        for kv in got.get(1).map_or(&[][..], |g| g.kvs()) {
            meta.count += 1;
            if let Some((_, _, id)) = parse_box_key(kv.key()) {
                meta.bytes += u64::from(id.size);
                meta.seq = meta.seq.max(id.seq.saturating_add(1));
            }
        }
        tracing::warn!(
            mailbox = to,
            ?meta,
            "mailbox totals rebuilt from its envelopes"
        );
        Ok(Held {
            meta,
            revision: kv.map(|kv| kv.mod_revision()),
        })
    }

    /// Runs `ops` and writes `meta` as `to`'s totals if they are still
    /// `held`. `probe`: a key the write puts, whose presence after a failed
    /// condition says the write was applied before (an answer lost).
    async fn commit(
        &self,
        what: &'static str,
        to: &str,
        held: &Held,
        mut meta: Meta,
        mut ops: Vec<TxnOp>,
        probe: Option<String>,
    ) -> Result<Outcome, MailError> {
        let mk = meta_key(to);
        meta.op = rand::random();
        // A write outside the registry's prefix still moves etcd's
        // revision, and a router's next lookup waits for its mirror to
        // reach it: a tick under the prefix, in the same transaction, gets
        // it there at once (not after the mirror's own 200 ms tick).
        ops.push(TxnOp::put(ETCD_TICK, Vec::new(), None));
        if meta.is_empty() {
            ops.push(TxnOp::delete(mk.as_str(), None));
        } else {
            ops.push(TxnOp::put(mk.as_str(), json(&meta), None));
        }
        let mut otherwise = vec![TxnOp::get(mk.as_str(), None)];
        if let Some(p) = &probe {
            otherwise.push(TxnOp::get(
                p.as_str(),
                Some(GetOptions::new().with_keys_only()),
            ));
        }
        let txn = Txn::new()
            .when([held.unchanged(&mk)])
            .and_then(ops)
            .or_else(otherwise);
        let r = self.txn(what, txn).await?;
        if r.succeeded() {
            let revision = r.header().map(|h| h.revision());
            return Ok(Outcome::Applied(
                (!meta.is_empty() && revision.is_some()).then_some(Held { meta, revision }),
            ));
        }
        let got = gets(&r);
        let now = decode_meta(to, got.first().and_then(|g| g.kvs().first())).ok();
        let probed = got.get(1).is_some_and(|g| !g.kvs().is_empty());
        match now {
            Some(now) if now.meta.op == meta.op && now.revision.is_some() => {
                Ok(Outcome::Applied(Some(now)))
            }
            _ if probed => Ok(Outcome::Applied(None)),
            now => Ok(Outcome::Lost(now)),
        }
    }

    /// One deposit's envelopes, from the first, as many as fit: each
    /// transaction's worth a compare-and-set of its own. Counts in
    /// `stored` what is stored, also when it fails after a part.
    async fn store(
        &self,
        to: &str,
        deposit: &Deposit,
        quota: Quota,
        stored: &mut usize,
    ) -> Result<(), MailError> {
        let prefix = box_prefix(to);
        let stamp = stamp(deposit.at_ms);
        let head = value_head(&deposit.from, &deposit.from_nick, deposit.at_ms)?;
        let _writing = self.writing(to).await;
        let mut held = self.held(to).await?;
        let mut round = 0;
        while *stored < deposit.envelopes.len() {
            let rest = &deposit.envelopes[*stored..];
            let (mut count, mut bytes) = (held.meta.count, held.meta.bytes);
            let (mut take, mut txn_bytes) = (0, 0);
            for sealed in rest {
                let size = sealed.len() as u64;
                if count.saturating_add(1) > quota.count || bytes.saturating_add(size) > quota.bytes
                {
                    break;
                }
                let put = prefix.len() + ID_LEN + head.len() + sealed.len() + 16;
                if take > 0 && (take + 1 >= TXN_OPS || txn_bytes + put > TXN_BYTES) {
                    break;
                }
                count += 1;
                bytes += size;
                take += 1;
                txn_bytes += put;
            }
            if take == 0 {
                if *stored == 0 {
                    return Err(MailError::Full(format!(
                        "{} of {} envelopes, {} of {} bytes",
                        held.meta.count, quota.count, held.meta.bytes, quota.bytes
                    )));
                }
                return Ok(());
            }
            let mut ops = Vec::with_capacity(take + 1);
            let mut first = None;
            for (seq, sealed) in (held.meta.seq..).zip(&rest[..take]) {
                let size = u32::try_from(sealed.len()).map_err(|_| {
                    MailError::Unavailable(format!("an envelope of {} bytes", sealed.len()))
                })?;
                let key = format!("{prefix}{}", format_id(seq, stamp, size, rand::random()));
                first.get_or_insert_with(|| key.clone());
                let mut value = Vec::with_capacity(head.len() + sealed.len());
                value.extend_from_slice(&head);
                value.extend_from_slice(sealed);
                ops.push(TxnOp::put(key, value, None));
            }
            let meta = Meta {
                count,
                bytes,
                expired: held.meta.expired,
                seq: held.meta.seq.saturating_add(take as u64),
                op: 0,
            };
            match self
                .commit("deposit mail", to, &held, meta, ops, first)
                .await?
            {
                Outcome::Applied(now) => {
                    *stored += take;
                    round = 0;
                    if *stored < deposit.envelopes.len() {
                        held = match now {
                            Some(now) => now,
                            None => self.held(to).await?,
                        };
                    }
                }
                Outcome::Lost(now) => {
                    round += 1;
                    if round >= ROUNDS {
                        return Err(raced("deposit"));
                    }
                    held = match now {
                        // Lost once: try again at once, on what won.
                        Some(now) if round == 1 => now,
                        // Lost again: a crowd. Wait a little, read again.
                        _ => {
                            pause(round).await;
                            self.held(to).await?
                        }
                    };
                }
            }
        }
        Ok(())
    }

    /// Deletes those of `keys` (with their sizes) that `to`'s mailbox
    /// holds, in one compare-and-set, and takes `ack_expired` off its
    /// expired count (never below zero) or, for the age limit
    /// (`by_age`), adds what it deleted to it. How many it deleted.
    async fn remove(
        &self,
        to: &str,
        keys: &[(String, u64)],
        ack_expired: u64,
        by_age: bool,
    ) -> Result<u64, MailError> {
        let mk = meta_key(to);
        let _writing = self.writing(to).await;
        let what = if by_age {
            "expire mail"
        } else {
            "acknowledge mail"
        };
        let mut round = 0;
        loop {
            let mut read = vec![TxnOp::get(mk.as_str(), None)];
            read.extend(
                keys.iter()
                    .map(|(k, _)| TxnOp::get(k.as_str(), Some(GetOptions::new().with_keys_only()))),
            );
            let r = self
                .txn("read a mailbox", Txn::new().and_then(read))
                .await?;
            let got = gets(&r);
            let held = match decode_meta(to, got.first().and_then(|g| g.kvs().first())) {
                Ok(held) => held,
                // The condition on the unreadable totals' revision keeps
                // the rebuilt ones and the presence read here together.
                Err(()) => self.rebuild(to).await?,
            };
            let present: Vec<&(String, u64)> = keys
                .iter()
                .zip(got.iter().skip(1))
                .filter(|(_, g)| !g.kvs().is_empty())
                .map(|(k, _)| k)
                .collect();
            let n = present.len() as u64;
            let took = ack_expired.min(held.meta.expired);
            if n == 0 && took == 0 {
                return Ok(0);
            }
            let bytes: u64 = present.iter().map(|(_, size)| size).sum();
            let expired = held.meta.expired - took;
            let meta = Meta {
                count: held.meta.count.saturating_sub(n),
                bytes: held.meta.bytes.saturating_sub(bytes),
                expired: if by_age {
                    expired.saturating_add(n)
                } else {
                    expired
                },
                seq: held.meta.seq,
                op: 0,
            };
            let ops = present
                .iter()
                .map(|(k, _)| TxnOp::delete(k.as_str(), None))
                .collect();
            match self.commit(what, to, &held, meta, ops, None).await? {
                Outcome::Applied(_) => return Ok(n),
                Outcome::Lost(_) => {
                    round += 1;
                    if round >= ROUNDS {
                        return Err(raced(what));
                    }
                    if round > 1 {
                        pause(round).await;
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl MailStore for EtcdMail {
    async fn publish(&self, owner: &PublicKey, key: &MailboxKey) -> Result<(), MailError> {
        let value = json(&KeyValueJson {
            key: hex::encode(&key.key),
            signature: hex::encode(&key.signature),
        });
        let at = key_key(&owner_hex(owner));
        // Every login publishes: written only when it changed, with the
        // registry's tick (see `commit`).
        let txn = Txn::new()
            .when([Compare::value(at.as_str(), CompareOp::Equal, value.clone())])
            .or_else([
                TxnOp::put(at.as_str(), value, None),
                TxnOp::put(ETCD_TICK, Vec::new(), None),
            ]);
        self.txn("publish a mailbox key", txn).await.map(drop)
    }

    async fn published(&self, owner: &PublicKey) -> Result<Option<MailboxKey>, MailError> {
        let r = self
            .get("read a mailbox key", key_key(&owner_hex(owner)), None)
            .await?;
        let Some(kv) = r.kvs().first() else {
            return Ok(None);
        };
        let decoded = serde_json::from_slice::<KeyValueJson>(kv.value())
            .ok()
            .and_then(|v| {
                Some(MailboxKey {
                    key: hex::decode(v.key).ok()?,
                    signature: hex::decode(v.signature).ok()?,
                })
            });
        if decoded.is_none() {
            tracing::warn!(owner = %owner.fingerprint(), "unreadable mailbox key in etcd");
        }
        Ok(decoded)
    }

    async fn deposit(
        &self,
        to: &PublicKey,
        deposit: Deposit,
        quota: Quota,
    ) -> Result<usize, MailError> {
        let mut stored = 0;
        match self
            .store(&owner_hex(to), &deposit, quota, &mut stored)
            .await
        {
            Ok(()) => Ok(stored),
            // Part of the deposit is stored: say how much, as for a
            // deposit that fills the quota.
            Err(e) if stored > 0 => {
                tracing::warn!(error = %e, stored, of = deposit.envelopes.len(), "deposit cut short");
                Ok(stored)
            }
            Err(e) => Err(e),
        }
    }

    async fn list(&self, to: &PublicKey, limit: usize) -> Result<Listing, MailError> {
        let to = owner_hex(to);
        let limit = limit.max(1);
        let prefix = box_prefix(&to);
        let r = self
            .txn(
                "list a mailbox",
                Txn::new().and_then([
                    TxnOp::get(meta_key(&to), None),
                    TxnOp::get(
                        prefix.as_str(),
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_keys_only()
                                .with_limit(i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1),
                        ),
                    ),
                ]),
            )
            .await?;
        let got = gets(&r);
        let expired = decode_meta(&to, got.first().and_then(|g| g.kvs().first()))
            .map_or(0, |h| h.meta.expired);
        let keys = got.get(1).map_or(&[][..], |g| g.kvs());
        let more = keys.len() > limit || got.get(1).is_some_and(|g| g.more());
        let wanted: Vec<(&[u8], usize)> = keys
            .iter()
            .take(limit)
            .filter_map(|kv| match parse_box_key(kv.key()) {
                Some((_, _, id)) => Some((kv.key(), id.size as usize)),
                None => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "not a mailbox key");
                    None
                }
            })
            .collect();
        // The values, a few MiB a read.
        let mut envelopes = Vec::with_capacity(wanted.len());
        let mut i = 0;
        while i < wanted.len() {
            let (mut j, mut budget) = (i, 0);
            while j < wanted.len()
                && (j == i || budget + wanted[j].1 + VALUE_OVERHEAD <= READ_BYTES)
            {
                budget += wanted[j].1 + VALUE_OVERHEAD;
                j += 1;
            }
            let these: HashSet<&[u8]> = wanted[i..j].iter().map(|(k, _)| *k).collect();
            let r = self
                .get(
                    "read mail",
                    wanted[i].0,
                    Some(GetOptions::new().with_range(after(wanted[j - 1].0))),
                )
                .await?;
            for kv in r.kvs() {
                // Not among the keys read (written since): the next list.
                if !these.contains(kv.key()) {
                    continue;
                }
                let id = kv
                    .key()
                    .get(prefix.len()..)
                    .map(|id| String::from_utf8_lossy(id).into_owned())
                    .unwrap_or_default();
                match decode_value(kv.value()) {
                    Some((from, from_nick, at_ms, sealed)) => envelopes.push(Envelope {
                        id,
                        from,
                        from_nick,
                        at_ms,
                        sealed,
                    }),
                    None => tracing::warn!(mailbox = %to, %id, "unreadable envelope skipped"),
                }
            }
            i = j;
        }
        Ok(Listing {
            envelopes,
            expired,
            more,
        })
    }

    async fn ack(&self, to: &PublicKey, ids: &[String], expired: u64) -> Result<(), MailError> {
        let to = owner_hex(to);
        let prefix = box_prefix(&to);
        // Only ids of this store's form name a key, and only in `to`'s box.
        let mut keys: Vec<(String, u64)> = ids
            .iter()
            .filter_map(|id| Some((format!("{prefix}{id}"), u64::from(parse_id(id)?.size))))
            .collect();
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            if expired > 0 {
                self.remove(&to, &[], expired, false).await?;
            }
            return Ok(());
        }
        let mut expired = expired;
        for chunk in keys.chunks(TXN_OPS - 1) {
            self.remove(&to, chunk, expired, false).await?;
            expired = 0;
        }
        Ok(())
    }

    async fn waiting(&self, to: &PublicKey) -> Result<u64, MailError> {
        Ok(self.held(&owner_hex(to)).await?.meta.count)
    }

    async fn expire(&self, before_ms: i64) -> Result<u64, MailError> {
        let cut = stamp(before_ms);
        let root = boxes();
        let end = prefix_end(&root);
        let mut from = root.into_bytes();
        let mut removed = 0;
        // Every envelope's key, a page at a time; the old ones of a page
        // are removed before the next is read.
        loop {
            let r = self
                .get(
                    "scan mailboxes",
                    from.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_keys_only()
                            .with_limit(SCAN_PAGE),
                    ),
                )
                .await?;
            let mut old: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
            for kv in r.kvs() {
                match parse_box_key(kv.key()) {
                    Some((to, id_text, id)) if id.stamp < cut => {
                        old.entry(to)
                            .or_default()
                            .push((format!("{}{id_text}", box_prefix(to)), u64::from(id.size)));
                    }
                    Some(_) => {}
                    None => {
                        tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "not a mailbox key")
                    }
                }
            }
            for (to, keys) in &old {
                for chunk in keys.chunks(TXN_OPS - 1) {
                    removed += self.remove(to, chunk, 0, true).await?;
                }
            }
            match r.kvs().last() {
                Some(last) if r.more() => from = after(last.key()),
                _ => return Ok(removed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn ids_order_as_their_deposits_and_parse_back() {
        let a = format_id(0, stamp(1_700_000_000_000), 100, u64::MAX);
        let b = format_id(1, stamp(-5), 1, 0);
        let c = format_id(2, stamp(0), 48 * 1024, 7);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), ID_LEN);
        assert_eq!(
            parse_id(&c),
            Some(Id {
                seq: 2,
                stamp: stamp(0),
                size: 48 * 1024
            })
        );
        assert!(stamp(-5) < stamp(0) && stamp(0) < stamp(1));
        let good = "0000000000000001-0000000000000002-00000003-0000000000000004";
        assert!(parse_id(good).is_some());
        for bad in [
            "",
            "..",
            "../x",
            "0000000000000001-0000000000000002-00000003",
            "0000000000000001-0000000000000002-0000000g-0000000000000004",
            "0000000000000001-0000000000000002-+0000003-0000000000000004",
            "0000000000000001-0000000000000002-00000003-0000000000000004-",
            "0000000000000001/0000000000000002-00000003-0000000000000004",
            "000000000000000A-0000000000000002-00000003-0000000000000004",
            "../0000000000000002-00000003-0000000000000004",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_round_trip_and_bad_ones_are_refused() {
        let from = Identity::generate().public();
        let mut v = value_head(&from, "alice", -3).unwrap();
        v.extend_from_slice(b"sealed");
        assert_eq!(
            decode_value(&v),
            Some((from, "alice".to_string(), -3, b"sealed".to_vec()))
        );
        for n in 0..v.len() - 6 {
            assert_eq!(decode_value(&v[..n]), None, "cut at {n}");
        }
        let mut bad = v.clone();
        bad[0] = 9;
        assert_eq!(decode_value(&bad), None);
        let mut long = v.clone();
        long[33..37].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_value(&long), None);
    }
}
