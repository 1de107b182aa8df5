//! The signature checks taken off the latency path.
//!
//! A message its author hands over on its own mutually authenticated link
//! is stored, shown and acknowledged without a signature check: the link
//! proved the author's key, as Briar's and Signal's per-link authentication
//! do. Its signature is what makes it believable second-hand, so it is
//! checked here, in batches on a thread of its own at low priority, before
//! the store ever serves it (see `store::unchecked`). A signature that fails there was
//! made by the link's own key holder: the message leaves the history and
//! the person is told, with the key.
//!
//! The store's `unchecked` table is the durable record of what waits (a
//! crash loses nothing: the next start checks it); the queue here holds
//! the same messages in memory, so that a check costs no read of the store,
//! and waits a moment for more, so that checks go as batches (an eighth of
//! a single strict check each, on 2 cores) and their ends as one store job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::{Events, PeerEvent};
use crate::identity::{verify_messages, PublicKey};
use crate::metrics::PeerMetrics;
use crate::proto::ChatMessage;
use crate::store::{MsgId, Store, StoreError};

/// Most signatures one check takes at once.
const BATCH: usize = 256;
/// How long the first message of a batch waits for more. Only the wait
/// before a message may be served grows by it (a pull or a version leaves
/// it out meanwhile), never a delivery.
const LINGER: Duration = Duration::from_millis(50);
/// Messages held in memory at most; past it they are left to the table
/// and read from there once the queue is empty.
const MAX_QUEUED: usize = 64 * 1024;
/// After a store failure, how long before trying again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Queue {
    items: Vec<(PublicKey, ChatMessage)>,
    /// Some were left to the table (the queue was full, or this is a
    /// start): read them from there.
    in_table: bool,
    /// Taken out of the queue and being checked now.
    checking: usize,
}

/// How long a read for someone else waits for the checks of what arrived
/// before it; past it, it is served without them (they are never served
/// unchecked: the store leaves them out).
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// The deferred checks. Cheap to clone.
#[derive(Clone)]
pub(super) struct Checks {
    store: Store,
    events: Events,
    metrics: PeerMetrics,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    /// Told when the queue holds a full batch: a lingering one need not
    /// wait longer.
    full: Arc<Notify>,
    /// Told whenever a batch's checks end.
    idle: Arc<Notify>,
    /// The thread that checks signatures, below the latency path.
    verifier: std::sync::mpsc::Sender<Job>,
}

/// A batch for the verifier thread, and where its verdicts go.
type Job = (
    Vec<(PublicKey, ChatMessage)>,
    tokio::sync::oneshot::Sender<Vec<bool>>,
);

/// Starts the thread that checks the batches, at the lowest CPU priority:
/// on 2 cores a batch of hundreds of signatures is milliseconds of work,
/// and run at the same priority it would delay whatever message arrives
/// meanwhile (the tail). Below everything else it takes only idle time
/// but that of a saturated machine, where the queue grows (and spills to
/// the table) until the load passes; nothing waits on it but serving.
/// The thread ends when the last `Checks` is dropped.
fn start_verifier() -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("parley-checks".into())
        .spawn(move || {
            lower_priority();
            for (batch, reply) in rx {
                let items: Vec<(PublicKey, &ChatMessage)> =
                    batch.iter().map(|(k, m)| (*k, m)).collect();
                let _ = reply.send(verify_messages(&items));
            }
        });
    if let Err(err) = spawned {
        // Every check then answers "not decided": the messages stay
        // unchecked and unserved, and the log says why.
        tracing::error!(cause = %err, "cannot start the signature checks' thread");
    }
    tx
}

/// Nice 19 for the calling thread (Linux keeps a nice value per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads no memory of ours; `who` 0 is the
        // calling thread. A failure leaves the thread at normal priority.
        let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        if done != 0 {
            tracing::debug!("the signature checks run at normal priority");
        }
    }
}

/// What one round of checks did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Checked {
    pub(super) good: usize,
    pub(super) refuted: usize,
}

impl Checks {
    pub(super) fn new(store: Store, events: Events, metrics: PeerMetrics) -> Checks {
        Checks {
            store,
            events,
            metrics,
            // Whatever an earlier run left unchecked is read first.
            queue: Arc::new(Mutex::new(Queue {
                items: Vec::new(),
                in_table: true,
                checking: 0,
            })),
            wake: Arc::new(Notify::new()),
            full: Arc::new(Notify::new()),
            idle: Arc::new(Notify::new()),
            verifier: start_verifier(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A plain queue: a panic elsewhere cannot leave it half-changed.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `msgs`, taken from `key`'s link and stored unchecked: check them
    /// soon.
    pub(super) fn push(&self, key: PublicKey, msgs: impl Iterator<Item = ChatMessage>) {
        let full = {
            let mut q = self.lock();
            for msg in msgs {
                if q.items.len() < MAX_QUEUED {
                    q.items.push((key, msg));
                } else {
                    q.in_table = true;
                }
            }
            self.metrics.deferred_queue(q.items.len());
            q.items.len() >= BATCH
        };
        self.wake.notify_one();
        if full {
            self.full.notify_one();
        }
    }

    /// Before a read served to another member (a version, a pull): checks
    /// now whatever arrived before it, without the linger, so that what
    /// this peer holds is what it serves. Waits at most [`SETTLE_WAIT`].
    pub(super) async fn settle(&self) {
        let settled = async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if let Err(err) = self.drain().await {
                    tracing::debug!(cause = %err, "cannot check before serving");
                    return;
                }
                {
                    let q = self.lock();
                    if q.checking == 0 && q.items.is_empty() && !q.in_table {
                        return;
                    }
                }
                // Another task is checking a batch: wait for its end.
                idle.await;
            }
        };
        if tokio::time::timeout(SETTLE_WAIT, settled).await.is_err() {
            tracing::debug!("served before every check ended");
        }
    }

    /// Runs the checks until `stop`, starting with what an earlier run
    /// left unchecked (a crash between the store and the check).
    pub(super) fn spawn(&self, tasks: &TaskTracker, stop: CancellationToken) {
        let checks = self.clone();
        checks.wake.notify_one();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = checks.wake.notified() => {}
                }
                // Let a batch form: until it is full or the first has
                // waited long enough.
                let linger = tokio::time::sleep(LINGER);
                tokio::pin!(linger);
                loop {
                    let full = checks.full.notified();
                    tokio::pin!(full);
                    full.as_mut().enable();
                    if checks.lock().items.len() >= BATCH {
                        break;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = &mut linger => break,
                        _ = full => {}
                    }
                }
                if let Err(err) = checks.drain().await {
                    tracing::warn!(cause = %err, "deferred signature checks failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    checks.wake.notify_one();
                }
            }
        });
    }

    /// Checks everything waiting, a batch at a time.
    pub(super) async fn drain(&self) -> Result<Checked, StoreError> {
        let mut total = Checked::default();
        loop {
            // Counted as being checked from the moment it leaves the queue
            // (or the table) until the store has its verdicts, so that
            // `settle` knows what is under way.
            let queued = {
                let mut q = self.lock();
                let n = q.items.len().min(BATCH);
                let batch = q.items.drain(..n).collect::<Vec<_>>();
                q.checking += n;
                self.metrics.deferred_queue(q.items.len());
                batch
            };
            let batch = if !queued.is_empty() {
                queued
            } else if std::mem::take(&mut self.lock().in_table) {
                match self.read_table().await {
                    Ok(batch) => batch,
                    Err(err) => {
                        self.lock().in_table = true;
                        return Err(err);
                    }
                }
            } else {
                return Ok(total);
            };
            let n = batch.len();
            let done = if n == 0 {
                Ok(Some(Checked::default()))
            } else {
                self.check(batch).await
            };
            self.lock().checking -= n;
            self.idle.notify_waiters();
            match done {
                Ok(Some(checked)) => {
                    total.good += checked.good;
                    total.refuted += checked.refuted;
                }
                // Nothing decided (shutting down): left for the next run.
                Ok(None) => return Ok(total),
                Err(err) => {
                    // The table still holds them: read them from there.
                    self.lock().in_table = true;
                    return Err(err);
                }
            }
        }
    }

    /// A batch of what the table says waits (after a start, or when the
    /// queue overflowed), counted as being checked.
    async fn read_table(&self) -> Result<Vec<(PublicKey, ChatMessage)>, StoreError> {
        let waiting = self.store.unchecked(BATCH).await?;
        if waiting.len() == BATCH {
            // More there: read again after this batch.
            self.lock().in_table = true;
        }
        let batch: Vec<(PublicKey, ChatMessage)> = waiting
            .into_iter()
            .filter_map(|(k, m)| match PublicKey::from_bytes(&k) {
                Ok(k) => Some((k, m)),
                Err(_) => {
                    tracing::warn!(author = %m.author, "an unchecked message's stored key does not parse");
                    None
                }
            })
            .collect();
        self.lock().checking += batch.len();
        Ok(batch)
    }

    /// Checks one batch and ends its wait in one store job.
    async fn check(
        &self,
        batch: Vec<(PublicKey, ChatMessage)>,
    ) -> Result<Option<Checked>, StoreError> {
        let ids: Vec<(MsgId, PublicKey)> = batch.iter().map(|(k, m)| (MsgId::of(m), *k)).collect();
        let n = batch.len();
        let (reply, verdicts) = tokio::sync::oneshot::channel();
        if self.verifier.send((batch, reply)).is_err() {
            return Ok(None);
        }
        let Ok(verdicts) = verdicts.await else {
            return Ok(None);
        };
        if verdicts.len() != n {
            return Ok(None);
        }
        let (mut good, mut bad) = (Vec::with_capacity(n), Vec::new());
        let mut keys = HashMap::new();
        for ((id, key), ok) in ids.into_iter().zip(verdicts) {
            if ok {
                good.push(id);
            } else {
                keys.insert(id.clone(), key);
                bad.push(id);
            }
        }
        let checked = good.len();
        let refuted = self.store.settle(good, bad).await?;
        let found = refuted.len();
        self.metrics.deferred_checked(checked);
        self.metrics.deferred_failed(found);
        for msg in refuted {
            let key = keys.get(&MsgId::of(&msg)).copied();
            tracing::warn!(
                author = %msg.author,
                key = %key.map(|k| k.fingerprint()).unwrap_or_default(),
                conversation = %msg.conversation,
                seq = msg.seq,
                "a message its author's link handed over failed its signature check: removed, and the key flagged"
            );
            self.events.emit(PeerEvent::Forged { msg, key });
        }
        Ok(Some(Checked {
            good: checked,
            refuted: found,
        }))
    }
}
