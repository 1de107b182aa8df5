//! Delivery: the fan-out of a new message to every other member at once,
//! and the outbox of what is still owed to members that could not take it.
//!
//! A message and an outbox row for every recipient are written in one
//! transaction while the message is on its way (its seq and Lamport time
//! allocated first), and a send returns only after that commit, so a crash
//! after a send returned leaves the peer knowing whom it owes. One between
//! the delivery and the commit loses the message here only: the next start
//! is a new incarnation, and a sync pulls it back from whoever took it. A
//! row ends only with a
//! definite answer: stored, or refused for good (see
//! [`Delivery`]). Anything else (a timeout, no
//! connection, a member whose router is unreachable) keeps the row, which
//! the retry loop delivers when the member looks online.
//!
//! What is owed to a member with no session (or one that has not answered
//! for [`DEPOSIT_AFTER`], or as configured) is sealed into its mailbox at
//! the router instead (`mailbox::Sealer`); the row ends when the router
//! has stored it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::{Events, PeerEvent};
use super::mailbox::Sealer;
use super::session::Session;
use crate::message::now_ms;
use crate::names::{Conversation, Nick};
use crate::net::{Delivery, Peers};
use crate::proto::{ChatMessage, Kind, Member};
use crate::store::{MsgId, Store, StoreError};

/// How often the outbox is retried for recipients that look online.
pub const OUTBOX_RETRY: Duration = Duration::from_secs(2);
/// Most messages one flush reads for one recipient; the rest wait for the
/// next one.
const FLUSH_BATCH: usize = 1000;
/// Settled rows waiting to be ended. Past it a sender ends its rows itself.
const SETTLE_QUEUE: usize = 65_536;
/// Most rows ended in one store job.
const SETTLE_BATCH: usize = 4096;

/// How long an online member may go without answering before what it is
/// owed goes to its mailbox instead (by default: `PeerConfig::deposit_after`).
pub const DEPOSIT_AFTER: Duration = Duration::from_secs(30);
/// How long a recipient whose mailbox refused (full, the sender's rate) or
/// could not be reached is left before the next deposit.
const DEPOSIT_BACKOFF: Duration = Duration::from_secs(30);

/// One recipient's row for one message.
type Row = (String, MsgId);

/// What a send did: the stored message and who has it.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub message: ChatMessage,
    pub delivered: Vec<String>,
    pub pending: Vec<String>,
    /// (nick, away message) of recipients that answered they are away.
    pub away: Vec<(String, String)>,
}

/// A plain map's lock: a panic elsewhere cannot leave it half-updated.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sending side of a peer. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    peers: Peers,
    session: Session,
    events: Events,
    /// Woken after a failed delivery: anti-entropy compares histories.
    failed: Arc<Notify>,
    /// Recipients whose outbox is being flushed now.
    flushing: Mutex<HashSet<String>>,
    /// Rows of sends still in progress, or settled but not yet ended: the
    /// retry loop leaves them alone (redelivering them would be harmless,
    /// but it is work, under load a lot of it).
    in_flight: Mutex<HashSet<Row>>,
    /// Rows whose recipient has answered definitely, to be ended in batches
    /// by the settler task: one store job for many sends.
    settle: mpsc::Sender<Row>,
    incarnation: u64,
    /// Seals and deposits what the offline are owed, and what members
    /// silent for this long are.
    sealer: Sealer,
    deposit_after: Duration,
    /// Recipients per nick key: online ones that have not answered since
    /// when, and those whose deposits wait until when.
    unanswered: Mutex<HashMap<String, Instant>>,
    deposit_wait: Mutex<HashMap<String, Instant>>,
    /// One deposit at a time, from reading the rows to ending them: two
    /// would deposit the same rows twice.
    depositing: tokio::sync::Mutex<()>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Outbox {
    #[allow(clippy::too_many_arguments)] // each is one distinct collaborator
    pub fn new(
        store: Store,
        peers: Peers,
        session: Session,
        events: Events,
        failed: Arc<Notify>,
        incarnation: u64,
        (sealer, deposit_after): (Sealer, Duration),
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Outbox {
        let (settle, settled) = mpsc::channel(SETTLE_QUEUE);
        let outbox = Outbox {
            inner: Arc::new(Inner {
                store,
                peers,
                session,
                events,
                failed,
                flushing: Mutex::new(HashSet::new()),
                in_flight: Mutex::new(HashSet::new()),
                settle,
                incarnation,
                sealer,
                deposit_after,
                unanswered: Mutex::new(HashMap::new()),
                deposit_wait: Mutex::new(HashMap::new()),
                depositing: tokio::sync::Mutex::new(()),
                stop,
                tasks,
            }),
        };
        let o = outbox.clone();
        outbox
            .inner
            .tasks
            .spawn(async move { o.settler(settled).await });
        outbox
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<Row>> {
        // A plain set: a panic elsewhere cannot leave it half-updated.
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Ends settled rows, many per store job. A row left by a crash before
    /// it is ended only means one harmless redelivery after the restart.
    async fn settler(&self, mut settled: mpsc::Receiver<Row>) {
        loop {
            let first = tokio::select! {
                _ = self.inner.stop.cancelled() => None,
                r = settled.recv() => r,
            };
            let Some(first) = first else { return };
            let mut rows = vec![first];
            while rows.len() < SETTLE_BATCH {
                match settled.try_recv() {
                    Ok(row) => rows.push(row),
                    Err(_) => break,
                }
            }
            self.end_rows(rows).await;
        }
    }

    async fn end_rows(&self, rows: Vec<Row>) {
        let mut by_recipient: std::collections::HashMap<String, Vec<MsgId>> =
            std::collections::HashMap::new();
        for (nick, id) in &rows {
            by_recipient
                .entry(nick.clone())
                .or_default()
                .push(id.clone());
        }
        let done = self
            .inner
            .store
            .outbox_done_many(by_recipient.into_iter().collect())
            .await;
        if let Err(err) = done {
            tracing::warn!(cause = %err, "cannot end outbox rows");
        }
        let mut in_flight = self.in_flight();
        for row in &rows {
            in_flight.remove(row);
        }
    }

    /// Makes `body` (of `kind`) this peer's next message of `conv` and
    /// delivers it to every `online` recipient at once, while it is written
    /// here with a row owed to every recipient; `offline` ones (no address
    /// now) keep their rows for later. Returns once the write here has
    /// committed and every online recipient has answered (or failed to):
    /// a message is reported sent only when it is durable here and at
    /// those that took it, as before, but this peer's commit no longer
    /// waits in line before the network.
    pub async fn send(
        &self,
        conv: String,
        online: Vec<Member>,
        offline: Vec<String>,
        (kind, body): (Kind, &str),
    ) -> Result<SendReport, StoreError> {
        let inner = &self.inner;
        let owed: Vec<String> = online
            .iter()
            .map(|m| m.nick.clone())
            .chain(offline.iter().cloned())
            .collect();
        let away = offline.clone();
        let msg = inner
            .store
            .allocate_own(
                &conv,
                inner.session.nick().as_str(),
                inner.incarnation,
                (kind, body),
                now_ms(),
            )
            .await?;
        let id = MsgId::of(&msg);
        let rows: Vec<Row> = online
            .iter()
            .map(|m| (m.nick.to_ascii_lowercase(), id.clone()))
            .collect();
        self.in_flight().extend(rows.iter().cloned());
        let deliveries = join_all(online.iter().map(|m| async {
            // A member that just timed out is not waited for again: the
            // message stays owed at once (senders never stall on a frozen
            // member), and the retry loop delivers it.
            if inner.peers.is_down(&m.address) {
                return (Delivery::Unreachable, None);
            }
            inner.peers.deliver_answered(m, msg.clone()).await
        }));
        // The deliveries first: they are on their way (queued on their
        // links) before the write, which usually runs in place, begins.
        let written = inner.store.write_own(msg.clone(), owed);
        let (results, written) = tokio::join!(biased; deliveries, written);
        if let Err(err) = written {
            // Nothing is owed here: the rows were never written. Those that
            // took it keep it; the send is reported failed.
            let mut in_flight = self.in_flight();
            for row in &rows {
                in_flight.remove(row);
            }
            return Err(err);
        }
        let mut report = SendReport {
            message: msg,
            delivered: Vec::new(),
            pending: away,
            away: Vec::new(),
        };
        let mut failed = false;
        for (member, (result, away)) in online.into_iter().zip(results) {
            if let Some(away) = away {
                report.away.push((member.nick.clone(), away));
            }
            let row = (member.nick.to_ascii_lowercase(), id.clone());
            match result {
                Delivery::Stored => report.delivered.push(member.nick),
                Delivery::Refused => report.pending.push(member.nick),
                Delivery::Unreachable => {
                    // Still owed: the retry loop may take it from here.
                    failed = true;
                    report.pending.push(member.nick);
                    self.in_flight().remove(&row);
                    continue;
                }
            }
            // Ending the row need not hold up the sender.
            if let Err(mpsc::error::TrySendError::Full(row)) = inner.settle.try_send(row) {
                self.end_rows(vec![row]).await;
            }
        }
        if failed {
            inner.failed.notify_one();
        }
        // Those with no session get it in their mailboxes now, not at the
        // next retry. (Not those that failed just now: the retry loop
        // delivers their owed messages in order, after the link is back.)
        for nick in offline {
            let o = self.clone();
            inner.tasks.spawn(async move { o.flush(&nick).await });
        }
        Ok(report)
    }

    /// Delivers what the outbox holds for `nick`, in order and all at once
    /// over its link, if it is online.
    pub async fn flush(&self, nick: &str) {
        let key = nick.to_ascii_lowercase();
        if !self.lock_flushing().insert(key.clone()) {
            return;
        }
        let result = self.flush_once(&key).await;
        self.lock_flushing().remove(&key);
        match result {
            Ok(delivered) if delivered.is_empty() => {}
            Ok(delivered) => {
                // Named by conversation: "waiting" alone says not which.
                let me = self.inner.session.nick();
                let n: usize = delivered.values().sum();
                let mut places = Vec::new();
                for (conversation, count) in &delivered {
                    let shown = Conversation::parse_key(conversation)
                        .map(|c| c.display_for(&me))
                        .unwrap_or_else(|_| conversation.clone());
                    places.push(format!("{count} in {shown}"));
                }
                let what = if n == 1 { "message" } else { "messages" };
                self.inner.events.emit(PeerEvent::Notice(format!(
                    "{nick} was away and now has {n} {what} you wrote meanwhile ({})",
                    places.join(", ")
                )))
            }
            Err(err) => tracing::warn!(nick, cause = %err, "outbox flush failed"),
        }
    }

    fn lock_flushing(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A plain set: a panic elsewhere cannot leave it half-updated.
        self.inner
            .flushing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Returns how many were delivered, per conversation key.
    async fn flush_once(&self, key: &str) -> Result<BTreeMap<String, usize>, StoreError> {
        let inner = &self.inner;
        // The picture knows co-members; anyone else (a private partner
        // sharing no room) is looked up afresh.
        let member = match inner.session.world().user(key) {
            Some(m) => m,
            // One lookup serves both ways: the member if online, else
            // the key and mailbox key a deposit seals to.
            None => match Nick::parse(key) {
                Ok(nick) => match inner.session.find(nick.as_str()).await {
                    Ok(found) => match found.members.first().filter(|_| found.found) {
                        Some(m) => m.clone(),
                        None => {
                            return self
                                .deposit(key, Some(found))
                                .await
                                .map(|_| BTreeMap::new())
                        }
                    },
                    Err(err) => {
                        tracing::debug!(nick = key, cause = %err, "cannot look a recipient up");
                        return Ok(BTreeMap::new());
                    }
                },
                Err(_) => return Ok(BTreeMap::new()),
            },
        };
        let msgs = self.owed(key).await?;
        let ids: Vec<MsgId> = msgs.iter().map(MsgId::of).collect();
        let answers = inner.peers.deliver_all(&member, msgs).await;
        let answered = answers.iter().any(|a| !matches!(a, Delivery::Unreachable));
        let silent_since = {
            let mut unanswered = lock(&inner.unanswered);
            if answered || answers.is_empty() {
                unanswered.remove(key);
                None
            } else {
                Some(
                    *unanswered
                        .entry(key.to_owned())
                        .or_insert_with(Instant::now),
                )
            }
        };
        let mut done = Vec::new();
        let mut delivered = BTreeMap::new();
        for (id, answer) in ids.into_iter().zip(answers) {
            match answer {
                Delivery::Stored => *delivered.entry(id.conversation.clone()).or_insert(0) += 1,
                // Definite: it will never take this one.
                Delivery::Refused => {}
                // Still away (or not sure yet): kept for the next flush.
                Delivery::Unreachable => continue,
            }
            done.push(id);
        }
        if !done.is_empty() {
            inner.store.outbox_done(key, done).await?;
        }
        // Online but silent for long (frozen, cut off): its mailbox holds
        // what it is owed, and it drains that when its router tells it.
        if silent_since.is_some_and(|since| since.elapsed() >= inner.deposit_after) {
            self.deposit(key, None).await?;
        }
        Ok(delivered)
    }

    /// What the outbox owes `key` (a nick key), up to [`FLUSH_BATCH`],
    /// leaving out rows a send in progress is still delivering.
    async fn owed(&self, key: &str) -> Result<Vec<ChatMessage>, StoreError> {
        let msgs = self.inner.store.outbox_for(key, FLUSH_BATCH).await?;
        let in_flight = self.in_flight();
        Ok(msgs
            .into_iter()
            .filter(|m| !in_flight.contains(&(key.to_owned(), MsgId::of(m))))
            .collect())
    }

    /// Seals what is owed to `key` (a nick key) into its mailbox at the
    /// router, ending the rows the router stored. How many it stored.
    /// `found`: the router's answer for the nick, if just asked.
    async fn deposit(
        &self,
        key: &str,
        found: Option<crate::proto::FindResponse>,
    ) -> Result<usize, StoreError> {
        let inner = &self.inner;
        if lock(&inner.deposit_wait)
            .get(key)
            .is_some_and(|until| Instant::now() < *until)
        {
            return Ok(0);
        }
        let _one = inner.depositing.lock().await;
        let msgs = self.owed(key).await?;
        if msgs.is_empty() {
            return Ok(0);
        }
        let wait = |why: &dyn std::fmt::Display| {
            tracing::info!(nick = key, cause = %why, "cannot deposit now; the messages stay owed");
            lock(&inner.deposit_wait).insert(key.to_owned(), Instant::now() + DEPOSIT_BACKOFF);
        };
        let deposited = match inner.sealer.deposit(key, &msgs, found).await {
            Ok(d) => d,
            Err(err) => {
                wait(&err);
                return Ok(0);
            }
        };
        let stored = deposited.stored.min(msgs.len());
        if stored > 0 {
            tracing::info!(nick = key, stored, "left in the mailbox at the router");
            let ids = msgs[..stored].iter().map(MsgId::of).collect();
            inner.store.outbox_done(key, ids).await?;
        }
        if let Some(why) = deposited.refused {
            let first = !lock(&inner.deposit_wait).contains_key(key);
            wait(&why);
            if first {
                inner.events.emit(PeerEvent::Notice(format!(
                    "the router keeps no more for {key} now ({why}); {} message(s) stay owed here",
                    msgs.len() - stored
                )));
            }
        } else {
            lock(&inner.deposit_wait).remove(key);
        }
        Ok(stored)
    }

    /// Deposits what every recipient that is not online is owed (within
    /// `limit`): what a peer does before it quits.
    pub async fn deposit_for_the_offline(&self, limit: Duration) {
        let work = async {
            let nicks = match self.inner.store.outbox_recipients().await {
                Ok(n) => n,
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot read the outbox");
                    return;
                }
            };
            for nick in nicks {
                if self.inner.session.world().user(&nick).is_some() {
                    continue;
                }
                lock(&self.inner.deposit_wait).remove(&nick);
                if let Err(err) = self.deposit(&nick, None).await {
                    tracing::warn!(%nick, cause = %err, "cannot deposit before quitting");
                }
            }
        };
        if tokio::time::timeout(limit, work).await.is_err() {
            tracing::warn!("quitting before everything owed to the offline was deposited");
        }
    }

    /// Retries the outbox for every recipient, now and every
    /// [`OUTBOX_RETRY`]: delivered to those online (a member cut off
    /// without going offline, by a partition or a frozen process, is never
    /// announced as coming back), deposited for those that are not.
    pub async fn run(&self) {
        loop {
            match self.inner.store.outbox_recipients().await {
                Ok(nicks) => {
                    self.inner.peers.metrics().outbox_depth(nicks.len());
                    for nick in nicks {
                        self.flush(&nick).await;
                    }
                }
                Err(err) => tracing::warn!(cause = %err, "cannot read the outbox"),
            }
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tokio::time::sleep(OUTBOX_RETRY) => {}
            }
        }
    }
}
