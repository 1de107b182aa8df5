//! Gap repair: a delivered message whose seq skips ahead of what is held from
//! its author shows something was missed; pull it from the sender.
//!
//! A sender with several messages in flight has them arrive out of order,
//! and each early one shows a gap that the next delivery fills. Pulling at
//! once for each of them floods the sender with pulls of messages already on
//! their way (quadratic under load), so a repair waits [`GAP_GRACE`], runs
//! once per author incarnation however many gaps were seen meanwhile, and
//! pulls only if a gap is still there. Anti-entropy covers what this misses
//! (a sender gone for good).

use std::time::Duration;

use super::Syncer;
use crate::proto::{ChatMessage, Member};

/// How long a gap in an author's sequence may stand before it is pulled:
/// longer than messages in flight take to overtake each other, far shorter
/// than a person notices.
pub const GAP_GRACE: Duration = Duration::from_millis(500);

/// (conversation, author key, incarnation).
pub(super) type Key = (String, String, u64);

impl Syncer {
    /// Schedules a repair of the gap `msg` showed, pulling from `sender`
    /// (its author).
    pub fn repair_gap(&self, msg: &ChatMessage, sender: Member) {
        let key: Key = (
            msg.conversation.clone(),
            msg.author.to_ascii_lowercase(),
            msg.incarnation,
        );
        {
            let mut repairs = self.inner.repairs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(seq) = repairs.get_mut(&key) {
                *seq = (*seq).max(msg.seq);
                return;
            }
            repairs.insert(key.clone(), msg.seq);
        }
        let s = self.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = s.inner.stop.cancelled() => return,
                _ = tokio::time::sleep(GAP_GRACE) => {}
            }
            let seq = s
                .inner
                .repairs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            let Some(seq) = seq else { return };
            let (conv, author_key, incarnation) = key;
            let have = match s.store().version(&conv).await {
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
            match s.pull(&sender, &conv, have).await {
                Ok(fresh) => s.fresh(fresh),
                Err(err) => tracing::warn!(cause = %err, "gap repair failed"),
            }
        });
    }
}
