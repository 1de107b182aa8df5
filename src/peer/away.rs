//! The person's away message (`/away`): kept in memory for as long as the
//! peer runs, told to whoever writes to them privately, in the answer to
//! their `Deliver` (IRC's RPL_AWAY), and to the router after every login
//! (`peer::session`), which shows it in `/whois` and `/users`.

use std::sync::{Arc, RwLock};

/// Whether the person is away, and why. Cheap to clone; all clones share
/// one state. The lock is held only to copy a pointer in or out.
#[derive(Debug, Clone, Default)]
pub struct Away(Arc<RwLock<Option<Arc<str>>>>);

impl Away {
    /// Marks the person away with `message`, or back with `None`.
    pub fn set(&self, message: Option<&str>) {
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        *slot = message.map(Arc::from);
    }

    /// The away message; `None` when the person is not away.
    pub fn get(&self) -> Option<Arc<str>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_state() {
        let a = Away::default();
        let b = a.clone();
        assert_eq!(b.get(), None);
        a.set(Some("lunch"));
        assert_eq!(b.get().as_deref(), Some("lunch"));
        b.set(None);
        assert_eq!(a.get(), None);
    }
}
