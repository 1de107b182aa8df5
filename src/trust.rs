//! Trust on first use, as SSH's `known_hosts`: the key each nick (and each
//! router address) had when first met, kept in the data directory, one line
//! per name. A name that comes back with another key is not believed until
//! the person accepts the new key (`/trust NICK`).
//!
//! [`Keys`] is the one owner of "whose key is this nick's" in a peer: the
//! known keys first, the registry's binding at a first meeting, a changed
//! key told once and refused until trusted. Links, intake, pulls, mailboxes
//! and `/trust` all ask it.

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

/// Where a nick's binding comes from when this peer has not met it yet:
/// the registry's word, over a pinned link to the router.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// The key `nick` is bound to (None: nobody ever claimed it); `Err`
    /// says why nobody could tell now.
    async fn bound_key(&self, nick: &str) -> Result<Option<PublicKey>, String>;
}

/// Told once per changed key: (nick, known key, new key).
pub type OnChanged = Arc<dyn Fn(&str, PublicKey, PublicKey) + Send + Sync>;

/// What this peer can say of a nick's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOf {
    /// Known (now remembered, if it came from the registry).
    Key(PublicKey),
    /// Nobody ever claimed the nick.
    Unbound,
    /// Not known here, and the registry cannot be asked now.
    Unsure,
}

/// Whether a caller holds a nick's key (see [`Keys::holds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    Yes,
    /// The caller holds the key the registry now binds the nick to, not
    /// the known one: a change of key, refused until the person trusts it.
    Changed,
    /// Someone else's key, or an unbound nick.
    No,
    /// The nick's key cannot be learnt now.
    Unsure,
}

/// Why a key is not believed, or cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{nick} now presents key {got}, not the known {known}: /trust {nick} to accept it")]
    Untrusted {
        nick: String,
        /// Fingerprints, as the person compares them.
        known: String,
        got: String,
    },
    #[error("cannot remember {nick}'s key: {cause}")]
    File { nick: String, cause: String },
    #[error("cannot ask the registry for {nick}'s key: {cause}")]
    Registry { nick: String, cause: String },
    #[error("{0} has never logged in anywhere this router knows")]
    Unbound(String),
    #[error("{0}'s key has not changed: nothing to trust")]
    NothingToTrust(String),
}

/// Whose key is a nick's, for one peer. Cheap to clone; clones share the
/// known keys.
#[derive(Clone)]
pub struct Keys {
    known: KnownKeys,
    registry: Arc<dyn Registry>,
    on_changed: OnChanged,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("known", &self.known).finish()
    }
}

impl Keys {
    /// The keys `known` keeps, the bindings `registry` gives at a first
    /// meeting; `on_changed` hears of a nick that comes back with another
    /// key.
    pub fn new(known: KnownKeys, registry: Arc<dyn Registry>, on_changed: OnChanged) -> Keys {
        Keys {
            known,
            registry,
            on_changed,
        }
    }

    /// The file of known keys.
    pub fn known(&self) -> &KnownKeys {
        &self.known
    }

    /// Whether `key` may be believed for `nick`: known, or met now for the
    /// first time (and remembered). A changed key is refused, and told once.
    pub fn believe(&self, nick: &str, key: &PublicKey) -> Result<(), KeyError> {
        match self.known.check(nick, key) {
            Ok((Trust::Known | Trust::New, _)) => Ok(()),
            Ok((Trust::Changed { known }, first)) => {
                if first {
                    (self.on_changed)(nick, known, *key);
                }
                Err(KeyError::Untrusted {
                    nick: nick.to_owned(),
                    known: known.fingerprint(),
                    got: key.fingerprint(),
                })
            }
            Err(err) => Err(KeyError::File {
                nick: nick.to_owned(),
                cause: err.to_string(),
            }),
        }
    }

    /// The key `nick` is bound to: the known one, or (first meeting) the
    /// registry's, which is then remembered.
    pub async fn key_of(&self, nick: &str) -> KeyOf {
        if let Some(k) = self.known.get(nick) {
            return KeyOf::Key(k);
        }
        match self.registry.bound_key(nick).await {
            Ok(Some(k)) => match self.believe(nick, &k) {
                Ok(()) => KeyOf::Key(k),
                // Raced with another first meeting that pinned another key.
                Err(_) => KeyOf::Unsure,
            },
            Ok(None) => KeyOf::Unbound,
            Err(cause) => {
                tracing::debug!(nick, cause, "cannot look a key up");
                KeyOf::Unsure
            }
        }
    }

    /// Whether `caller` holds the key `nick` is bound to. A known nick
    /// calling with the key the registry now binds it to is a change of
    /// key (told to the person once, see [`Keys::believe`]); only that is
    /// worth telling apart from an impostor.
    pub async fn holds(&self, nick: &str, caller: &PublicKey) -> Holds {
        match self.key_of(nick).await {
            KeyOf::Key(k) if k == *caller => Holds::Yes,
            KeyOf::Key(_) => match self.registry.bound_key(nick).await {
                Ok(Some(bound)) if bound == *caller => {
                    let _ = self.believe(nick, caller);
                    Holds::Changed
                }
                _ => Holds::No,
            },
            KeyOf::Unbound => Holds::No,
            KeyOf::Unsure => Holds::Unsure,
        }
    }

    /// What a nick-change event means here: `new` says it was `old`,
    /// signed by `key`. `old` known for `key`: `new` is `key`'s from now
    /// on (trusted, even over a key `new` was known by before: the key
    /// the person knows proved it is the same person), and `Ok(true)`.
    /// `old` never met: nothing is learnt, `Ok(false)`. `old` known for
    /// another key: a forgery (or a change of key not trusted yet),
    /// refused.
    pub fn renamed(&self, old: &str, new: &str, key: &PublicKey) -> Result<bool, KeyError> {
        match self.known.get(old) {
            None => Ok(false),
            Some(k) if k != *key => Err(KeyError::Untrusted {
                nick: old.to_owned(),
                known: k.fingerprint(),
                got: key.fingerprint(),
            }),
            Some(_) if self.known.get(new) == Some(*key) => Ok(true),
            Some(_) => {
                self.known.trust(new, key).map_err(|err| KeyError::File {
                    nick: new.to_owned(),
                    cause: err.to_string(),
                })?;
                Ok(true)
            }
        }
    }

    /// Whether `a` and `b` are known here for one key: one person under
    /// two nicks (a nick change this peer saw, or two nicks it met with
    /// one key). A nick not met yet is nobody's.
    pub fn same_person(&self, a: &str, b: &str) -> bool {
        match (self.known.get(a), self.known.get(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        }
    }

    /// Accepts the key `nick` came back with (the person's `/trust`, after
    /// checking with them): the one it was last seen with, or else the one
    /// the registry binds it to now. Returns the key now trusted.
    pub async fn accept(&self, nick: &str) -> Result<PublicKey, KeyError> {
        let known = self.known.get(nick);
        let key = match self.known.pending(nick) {
            Some(k) => k,
            None => match self.registry.bound_key(nick).await {
                Ok(Some(k)) if Some(k) != known => k,
                Ok(Some(_)) => return Err(KeyError::NothingToTrust(nick.to_owned())),
                Ok(None) => return Err(KeyError::Unbound(nick.to_owned())),
                Err(cause) => {
                    return Err(KeyError::Registry {
                        nick: nick.to_owned(),
                        cause,
                    })
                }
            },
        };
        self.known.trust(nick, &key).map_err(|err| KeyError::File {
            nick: nick.to_owned(),
            cause: err.to_string(),
        })?;
        Ok(key)
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
