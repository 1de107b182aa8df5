//! Caps on the `PullHistory` streams this peer serves at once: per caller
//! key and in total, so that no one key (or a few) can make the serving peer
//! hold much memory for streams it never reads.
//!
//! A stream holds a [`StreamPermit`] for as long as it lives; the permit is
//! given back when the stream ends or is dropped (its caller went away).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::Status;

use crate::identity::PublicKey;

/// Open `PullHistory` streams one caller key may hold. An honest peer pulls
/// a conversation from one member at a time; a few more cover gap repairs
/// and joins of several rooms running at once. A pull refused here is
/// retried by the next sync.
pub const MAX_PULLS_PER_KEY: usize = 4;
/// Open `PullHistory` streams in total, whoever calls. Each costs at most a
/// page or two in memory (see `peer::chat`), so this bounds what all the
/// pulls served at once can hold to tens of MiB.
pub const MAX_PULLS_TOTAL: usize = 32;

#[derive(Default)]
struct Counts {
    per_key: HashMap<[u8; 32], usize>,
    total: usize,
}

/// The counts of open streams. Cheap to clone: clones share the counts.
#[derive(Clone)]
pub(super) struct PullLimits {
    per_key: usize,
    total: usize,
    counts: Arc<Mutex<Counts>>,
}

impl Default for PullLimits {
    fn default() -> Self {
        PullLimits::new(MAX_PULLS_PER_KEY, MAX_PULLS_TOTAL)
    }
}

impl PullLimits {
    pub(super) fn new(per_key: usize, total: usize) -> PullLimits {
        PullLimits {
            per_key,
            total,
            counts: Arc::new(Mutex::new(Counts::default())),
        }
    }

    /// A permit for one more stream of `caller`'s, or `RESOURCE_EXHAUSTED`
    /// naming the cap that is reached.
    pub(super) fn acquire(&self, caller: &PublicKey) -> Result<StreamPermit, Status> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let held = counts.per_key.get(caller.as_bytes()).copied().unwrap_or(0);
        if held >= self.per_key {
            return Err(Status::resource_exhausted(format!(
                "too many history pulls open from this key (at most {} per key); finish or drop one first",
                self.per_key
            )));
        }
        if counts.total >= self.total {
            return Err(Status::resource_exhausted(format!(
                "too many history pulls open on this peer (at most {} in total); try later",
                self.total
            )));
        }
        counts.total += 1;
        *counts.per_key.entry(*caller.as_bytes()).or_insert(0) += 1;
        Ok(StreamPermit {
            key: *caller.as_bytes(),
            counts: self.counts.clone(),
        })
    }
}

/// One open stream's place under the caps; given back on drop.
pub(super) struct StreamPermit {
    key: [u8; 32],
    counts: Arc<Mutex<Counts>>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.per_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn caps_per_key_and_in_total_and_gives_back_on_drop() {
        let limits = PullLimits::new(2, 3);
        let (a, b) = (Identity::generate().public(), Identity::generate().public());
        let a1 = limits.acquire(&a).unwrap();
        let _a2 = limits.acquire(&a).unwrap();
        let err = limits.acquire(&a).err().unwrap();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("per key"), "{err:?}");
        let _b1 = limits.acquire(&b).unwrap();
        let err = limits.acquire(&b).err().unwrap();
        assert!(err.message().contains("in total"), "{err:?}");
        drop(a1);
        let _b2 = limits.acquire(&b).unwrap();
        let _ = limits.acquire(&a).err().unwrap();
    }
}
