//! The signature checks taken off the latency path.
//!
//! A message its author hands over on its own mutually authenticated link
//! is stored, shown and acknowledged without a signature check: the link
//! proved the author's key, as Briar's and Signal's per-link authentication
//! do. Its signature is what makes it believable second-hand, so it is
//! checked here, in batches on the blocking pool, before the store ever
//! serves it (see `store::unchecked`). A signature that fails there was
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
/// How often a lingering batch looks whether it is full.
const LOOK: Duration = Duration::from_millis(5);
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
}

/// The deferred checks. Cheap to clone.
#[derive(Clone)]
pub(super) struct Checks {
    store: Store,
    events: Events,
    metrics: PeerMetrics,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
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
            })),
            wake: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A plain queue: a panic elsewhere cannot leave it half-changed.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `msgs`, taken from `key`'s link and stored unchecked: check them
    /// soon.
    pub(super) fn push(&self, key: PublicKey, msgs: impl Iterator<Item = ChatMessage>) {
        {
            let mut q = self.lock();
            for msg in msgs {
                if q.items.len() < MAX_QUEUED {
                    q.items.push((key, msg));
                } else {
                    q.in_table = true;
                }
            }
            self.metrics.deferred_queue(q.items.len());
        }
        self.wake.notify_one();
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
                let mut waited = Duration::ZERO;
                while waited < LINGER && checks.lock().items.len() < BATCH {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(LOOK) => {}
                    }
                    waited += LOOK;
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
            let batch = {
                let mut q = self.lock();
                let n = q.items.len().min(BATCH);
                let batch = q.items.drain(..n).collect::<Vec<_>>();
                self.metrics.deferred_queue(q.items.len());
                batch
            };
            let batch = if !batch.is_empty() {
                batch
            } else if std::mem::take(&mut self.lock().in_table) {
                let waiting = self.store.unchecked(BATCH).await;
                let waiting = match waiting {
                    Ok(w) => w,
                    Err(err) => {
                        self.lock().in_table = true;
                        return Err(err);
                    }
                };
                if waiting.len() == BATCH {
                    // More there: read again after this batch.
                    self.lock().in_table = true;
                }
                waiting
                    .into_iter()
                    .filter_map(|(k, m)| match PublicKey::from_bytes(&k) {
                        Ok(k) => Some((k, m)),
                        Err(_) => {
                            tracing::warn!(author = %m.author, "an unchecked message's stored key does not parse");
                            None
                        }
                    })
                    .collect()
            } else {
                return Ok(total);
            };
            if batch.is_empty() {
                continue;
            }
            let done = self.check(batch).await;
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

    /// Checks one batch and ends its wait in one store job.
    async fn check(
        &self,
        batch: Vec<(PublicKey, ChatMessage)>,
    ) -> Result<Option<Checked>, StoreError> {
        let ids: Vec<(MsgId, PublicKey)> = batch.iter().map(|(k, m)| (MsgId::of(m), *k)).collect();
        let n = batch.len();
        let verdicts = tokio::task::spawn_blocking(move || {
            let items: Vec<(PublicKey, &ChatMessage)> =
                batch.iter().map(|(k, m)| (*k, m)).collect();
            verify_messages(&items)
        })
        .await;
        let Ok(verdicts) = verdicts else {
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
