//! What the in-memory registry keeps across restarts: nick bindings (with
//! when their key was last seen) and room owners, in one SQLite file. A
//! restart forgets only sessions and memberships, which every peer rebuilds
//! by logging in and joining again; an impostor who logs in first after a
//! restart still meets the real key's binding.
//!
//! Every write is one statement in autocommit, made while the registry's
//! lock is held, so the file and the memory never disagree on an answer
//! given; a write that fails changes neither.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

use super::RegistryError;
use crate::identity::PublicKey;

/// The file's name under the router's data directory.
pub const REGISTRY_FILE: &str = "registry.sqlite3";

/// A bound nick as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BindingRow {
    pub nick_key: String,
    pub nick: String,
    pub key: PublicKey,
    /// Wall-clock milliseconds when a session of the key last began or
    /// ended.
    pub seen_ms: i64,
}

/// A room's owner as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnerRow {
    pub room_key: String,
    pub name: String,
    pub owner: String,
    pub owner_key: PublicKey,
    pub proof: Option<(i64, String, u64, u64)>,
}

pub(crate) struct Durable {
    conn: Connection,
    path: PathBuf,
}

/// Wall-clock milliseconds now: binding expiry spans restarts, so it
/// cannot count on a monotonic clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Durable {
    /// Opens (or makes) the file at `path`.
    pub fn open(path: &Path) -> Result<Durable, RegistryError> {
        let fail = |e: rusqlite::Error| {
            RegistryError::Unavailable(format!("registry file {}: {e}", path.display()))
        };
        let conn = Connection::open(path).map_err(fail)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS bindings (
                 nick_key TEXT PRIMARY KEY,
                 nick     TEXT NOT NULL,
                 key      BLOB NOT NULL,
                 seen_ms  INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS bindings_key ON bindings (key);
             CREATE TABLE IF NOT EXISTS owners (
                 room_key  TEXT PRIMARY KEY,
                 name      TEXT NOT NULL,
                 owner     TEXT NOT NULL,
                 owner_key BLOB NOT NULL,
                 proof     TEXT
             );",
        )
        .map_err(fail)?;
        Ok(Durable {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn fail(&self, e: rusqlite::Error) -> RegistryError {
        tracing::error!(path = %self.path.display(), cause = %e, "registry file failed");
        RegistryError::Unavailable(format!("registry file {}: {e}", self.path.display()))
    }

    /// Every binding and every owner held.
    pub fn load(&self) -> Result<(Vec<BindingRow>, Vec<OwnerRow>), RegistryError> {
        let read = || -> rusqlite::Result<(Vec<BindingRow>, Vec<OwnerRow>)> {
            let mut st = self
                .conn
                .prepare("SELECT nick_key, nick, key, seen_ms FROM bindings")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut bindings = Vec::new();
            for row in rows {
                let (nick_key, nick, key, seen_ms) = row?;
                // A row that does not hold a key is skipped, not fatal: the
                // nick is then free, as it was before it was bound.
                match PublicKey::from_bytes(&key) {
                    Ok(key) => bindings.push(BindingRow {
                        nick_key,
                        nick,
                        key,
                        seen_ms,
                    }),
                    Err(e) => tracing::warn!(nick, cause = %e, "unreadable binding skipped"),
                }
            }
            let mut st = self
                .conn
                .prepare("SELECT room_key, name, owner, owner_key, proof FROM owners")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })?;
            let mut owners = Vec::new();
            for row in rows {
                let (room_key, name, owner, key, proof) = row?;
                let Ok(owner_key) = PublicKey::from_bytes(&key) else {
                    tracing::warn!(room = name, "unreadable room owner skipped");
                    continue;
                };
                owners.push(OwnerRow {
                    room_key,
                    name,
                    owner,
                    owner_key,
                    proof: proof.and_then(|p| serde_json::from_str(&p).ok()),
                });
            }
            Ok((bindings, owners))
        };
        read().map_err(|e| self.fail(e))
    }

    pub fn bind(&self, b: &BindingRow) -> Result<(), RegistryError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO bindings (nick_key, nick, key, seen_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![b.nick_key, b.nick, b.key.as_bytes().as_slice(), b.seen_ms],
            )
            .map(drop)
            .map_err(|e| self.fail(e))
    }

    /// Marks every nick of `key` seen at `ms`.
    pub fn seen(&self, key: &PublicKey, ms: i64) -> Result<(), RegistryError> {
        self.conn
            .execute(
                "UPDATE bindings SET seen_ms = ?1 WHERE key = ?2",
                params![ms, key.as_bytes().as_slice()],
            )
            .map(drop)
            .map_err(|e| self.fail(e))
    }

    /// A nick change: `old` released (when given) and `b` bound, in one
    /// transaction, so a crash between them cannot leave the key with
    /// neither nick or both.
    pub fn rebind(&self, old: Option<&str>, b: &BindingRow) -> Result<(), RegistryError> {
        let run = || -> rusqlite::Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            if let Some(old) = old {
                tx.execute("DELETE FROM bindings WHERE nick_key = ?1", [old])?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO bindings (nick_key, nick, key, seen_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![b.nick_key, b.nick, b.key.as_bytes().as_slice(), b.seen_ms],
            )?;
            tx.commit()
        };
        run().map_err(|e| self.fail(e))
    }

    pub fn release(&self, nick_key: &str) -> Result<(), RegistryError> {
        self.conn
            .execute("DELETE FROM bindings WHERE nick_key = ?1", [nick_key])
            .map(drop)
            .map_err(|e| self.fail(e))
    }

    pub fn put_owner(&self, o: &OwnerRow) -> Result<(), RegistryError> {
        let proof = o.proof.as_ref().and_then(|p| serde_json::to_string(p).ok());
        self.conn
            .execute(
                "INSERT OR REPLACE INTO owners (room_key, name, owner, owner_key, proof)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    o.room_key,
                    o.name,
                    o.owner,
                    o.owner_key.as_bytes().as_slice(),
                    proof
                ],
            )
            .map(drop)
            .map_err(|e| self.fail(e))
    }

    pub fn delete_owner(&self, room_key: &str) -> Result<(), RegistryError> {
        self.conn
            .execute("DELETE FROM owners WHERE room_key = ?1", [room_key])
            .map(drop)
            .map_err(|e| self.fail(e))
    }
}
