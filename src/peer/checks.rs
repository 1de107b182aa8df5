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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::{Events, PeerEvent};
use crate::identity::{verify_messages, PublicKey};
use crate::proto::ChatMessage;
use crate::store::{MsgId, Store};

/// Most signatures one check takes at once.
const BATCH: usize = 256;
/// How long a wake-up waits for more to arrive, so that a burst is checked
/// as one batch rather than one by one. Only the wait before a message can
/// be served grows by it, never a delivery.
const LINGER: Duration = Duration::from_millis(2);
/// After a store failure, how long before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// The deferred checks. Cheap to clone.
#[derive(Clone)]
pub(super) struct Checks {
    store: Store,
    events: Events,
    wake: Arc<Notify>,
}

/// What one round of checks did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Checked {
    pub(super) good: usize,
    pub(super) refuted: usize,
}

impl Checks {
    pub(super) fn new(store: Store, events: Events) -> Checks {
        Checks {
            store,
            events,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Something was stored unchecked: check it soon.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the checks until `stop`; starts with whatever an earlier run
    /// left unchecked (a crash between the store and the check).
    pub(super) fn spawn(&self, tasks: &TaskTracker, stop: CancellationToken) {
        let checks = self.clone();
        checks.wake();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = checks.wake.notified() => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(LINGER) => {}
                }
                if let Err(err) = checks.drain().await {
                    tracing::warn!(cause = %err, "deferred signature checks failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    checks.wake();
                }
            }
        });
    }

    /// Checks everything waiting, a batch at a time.
    pub(super) async fn drain(&self) -> Result<Checked, crate::store::StoreError> {
        let mut total = Checked::default();
        loop {
            let waiting = self.store.unchecked(BATCH).await?;
            if waiting.is_empty() {
                return Ok(total);
            }
            let n = waiting.len();
            let verdicts = check(waiting).await;
            if verdicts.is_empty() {
                // Nothing decided (shutting down): left for the next run.
                return Ok(total);
            }
            let (mut good, mut bad) = (Vec::with_capacity(n), Vec::new());
            let mut keys = HashMap::new();
            for (id, key, ok) in verdicts {
                if ok {
                    good.push(id);
                } else {
                    keys.insert(id.clone(), key);
                    bad.push(id);
                }
            }
            total.good += good.len();
            let refuted = self.store.settle(good, bad).await?;
            total.refuted += refuted.len();
            for msg in refuted {
                let key = keys.get(&MsgId::of(&msg)).copied().flatten();
                tracing::warn!(
                    author = %msg.author,
                    key = %key.map(|k| k.fingerprint()).unwrap_or_default(),
                    conversation = %msg.conversation,
                    seq = msg.seq,
                    "a message its author's link handed over failed its signature check: removed, and the key flagged"
                );
                self.events.emit(PeerEvent::Forged { msg, key });
            }
            if n < BATCH {
                return Ok(total);
            }
        }
    }
}

/// Each waiting message's identity, its link's key, and whether its
/// signature is that key's; on the blocking pool, so the runtime's threads
/// keep serving meanwhile.
async fn check(waiting: Vec<(Vec<u8>, ChatMessage)>) -> Vec<(MsgId, Option<PublicKey>, bool)> {
    let ids: Vec<(MsgId, Option<PublicKey>)> = waiting
        .iter()
        .map(|(k, m)| (MsgId::of(m), PublicKey::from_bytes(k).ok()))
        .collect();
    let n = waiting.len();
    let verdicts = tokio::task::spawn_blocking(move || {
        // A key that does not even parse signs nothing.
        let mut ok = vec![false; waiting.len()];
        let items: Vec<(usize, PublicKey, &ChatMessage)> = waiting
            .iter()
            .enumerate()
            .filter_map(|(i, (k, m))| PublicKey::from_bytes(k).ok().map(|k| (i, k, m)))
            .collect();
        let pairs: Vec<(PublicKey, &ChatMessage)> =
            items.iter().map(|(_, k, m)| (*k, *m)).collect();
        for ((i, ..), good) in items.iter().zip(verify_messages(&pairs)) {
            ok[*i] = good;
        }
        ok
    })
    .await
    // A check that did not finish (a runtime shutting down) decides
    // nothing: the messages stay unchecked, unserved, for the next run.
    .unwrap_or_else(|_| Vec::with_capacity(0));
    if verdicts.len() != n {
        return Vec::new();
    }
    ids.into_iter()
        .zip(verdicts)
        .map(|((id, key), ok)| (id, key, ok))
        .collect()
}
