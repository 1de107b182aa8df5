//! Trust on first use, as SSH's `known_hosts`: the key each nick (and each
//! router address) had when first met, kept in the data directory, one line
//! per name. A name that comes back with another key is not believed until
//! the person accepts the new key (`/trust NICK`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;

use crate::identity::PublicKey;

/// Errors of the known-keys file.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: not `NAME ed25519 KEY`")]
    Malformed { path: PathBuf, line: usize },
}

/// What the file says of a name and a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The key this name has always had.
    Known,
    /// Never met: the key is now remembered for the name.
    New,
    /// The name had another key: not believed.
    Changed { known: PublicKey },
}

struct State {
    keys: HashMap<String, PublicKey>,
    /// Names seen with another key than the known one, and that key: what
    /// `/trust` would accept.
    changed: HashMap<String, PublicKey>,
}

/// The known keys. Cheap to clone; clones share one file.
#[derive(Clone)]
pub struct KnownKeys {
    path: Arc<PathBuf>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for KnownKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownKeys")
            .field("path", &self.path)
            .finish()
    }
}

fn encode(key: &PublicKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

/// Names are compared without case, as nicks are.
fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl KnownKeys {
    /// The file at `path` (none yet is an empty list).
    pub fn open(path: &Path) -> Result<KnownKeys, TrustError> {
        let mut keys = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let bad = || TrustError::Malformed {
                        path: path.to_owned(),
                        line: i + 1,
                    };
                    let mut parts = line.split_whitespace();
                    let (Some(name), Some("ed25519"), Some(b64), None) =
                        (parts.next(), parts.next(), parts.next(), parts.next())
                    else {
                        return Err(bad());
                    };
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|_| bad())?;
                    let key = PublicKey::from_bytes(&raw).map_err(|_| bad())?;
                    keys.insert(name_key(name), key);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TrustError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        Ok(KnownKeys {
            path: Arc::new(path.to_owned()),
            state: Arc::new(Mutex::new(State {
                keys,
                changed: HashMap::new(),
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain maps: a panic elsewhere cannot leave them half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key known for `name`.
    pub fn get(&self, name: &str) -> Option<PublicKey> {
        self.lock().keys.get(&name_key(name)).copied()
    }

    /// Checks `key` for `name`, remembering it if the name is new. A
    /// changed key is remembered as pending (see [`KnownKeys::pending`]),
    /// never as known. Returns whether this is the first time this changed
    /// key was seen (worth telling the person) beside the verdict.
    pub fn check(&self, name: &str, key: &PublicKey) -> Result<(Trust, bool), TrustError> {
        let k = name_key(name);
        let mut state = self.lock();
        match state.keys.get(&k) {
            Some(known) if known == key => Ok((Trust::Known, false)),
            Some(known) => {
                let known = *known;
                let first = state.changed.insert(k, *key) != Some(*key);
                Ok((Trust::Changed { known }, first))
            }
            None => {
                state.keys.insert(k, *key);
                drop(state);
                self.append(name, key)?;
                Ok((Trust::New, false))
            }
        }
    }

    /// The key `name` was last seen with that is not the known one.
    pub fn pending(&self, name: &str) -> Option<PublicKey> {
        self.lock().changed.get(&name_key(name)).copied()
    }

    /// Accepts `key` for `name` from now on (the person's `/trust`).
    pub fn trust(&self, name: &str, key: &PublicKey) -> Result<(), TrustError> {
        let mut state = self.lock();
        let k = name_key(name);
        state.keys.insert(k.clone(), *key);
        state.changed.remove(&k);
        let mut lines: Vec<String> = state
            .keys
            .iter()
            .map(|(n, key)| format!("{n} ed25519 {}\n", encode(key)))
            .collect();
        lines.sort();
        drop(state);
        self.rewrite(&lines.concat())
    }

    fn append(&self, name: &str, key: &PublicKey) -> Result<(), TrustError> {
        let err = |source| TrustError::Write {
            path: self.path.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*self.path)
            .map_err(err)?;
        f.write_all(format!("{} ed25519 {}\n", name_key(name), encode(key)).as_bytes())
            .map_err(err)
    }

    fn rewrite(&self, text: &str) -> Result<(), TrustError> {
        let err = |source| TrustError::Write {
            path: self.path.to_path_buf(),
            source,
        };
        let tmp = self.path.with_extension("new");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &*self.path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn first_key_is_kept_and_a_changed_one_waits_for_trust() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_keys");
        let (a, b) = (Identity::generate().public(), Identity::generate().public());
        let keys = KnownKeys::open(&path).unwrap();
        assert_eq!(keys.check("Bob", &a).unwrap(), (Trust::New, false));
        assert_eq!(keys.check("bob", &a).unwrap(), (Trust::Known, false));
        assert_eq!(
            keys.check("bob", &b).unwrap(),
            (Trust::Changed { known: a }, true)
        );
        assert_eq!(
            keys.check("bob", &b).unwrap(),
            (Trust::Changed { known: a }, false)
        );
        assert_eq!(keys.pending("bob"), Some(b));

        // Kept across a restart, the change still refused.
        let again = KnownKeys::open(&path).unwrap();
        assert_eq!(again.get("BOB"), Some(a));
        again.trust("bob", &b).unwrap();
        let after = KnownKeys::open(&path).unwrap();
        assert_eq!(after.check("bob", &b).unwrap(), (Trust::Known, false));
    }

    #[test]
    fn a_damaged_file_is_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_keys");
        std::fs::write(&path, "bob ed25519 not-base64\n").unwrap();
        let err = KnownKeys::open(&path).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
