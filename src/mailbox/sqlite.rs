//! Mailboxes in one SQLite file under the router's data directory, beside
//! the in-memory registry's (or in memory, for a router run in-process
//! without one). Every write is one transaction. A deposit's is made with
//! `synchronous = FULL`: it is on disk, power loss included, when the
//! router answers it. The rest (a published key, which every login
//! publishes again; an acknowledgement, whose loss means one envelope
//! handed over twice and taken once) are `NORMAL`: they survive a crash of
//! the router, and spare every login an fsync.
//!
//! Only this process writes the file, so how many envelopes each mailbox
//! holds is kept in memory too: a heartbeat asks it, and must not wait on
//! the file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use super::{Deposit, Envelope, Listing, MailError, MailStore, Quota};
use crate::identity::PublicKey;
use crate::seal::MailboxKey;

/// The file's name under the router's data directory.
pub const MAILBOX_FILE: &str = "mailbox.sqlite3";

/// A mail store in SQLite. Cheap to clone.
#[derive(Clone)]
pub struct SqliteMail {
    conn: Arc<Mutex<Connection>>,
    /// Envelopes per mailbox (recipient key bytes), as the file holds them
    /// (absent: none). Updated under the connection's lock, after each
    /// commit.
    counts: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
    /// One job on the blocking pool at a time: callers queue here, not as
    /// blocked threads on the connection's lock (a burst of logins would
    /// otherwise park a thread each).
    turn: Arc<tokio::sync::Mutex<()>>,
    name: Arc<str>,
}

impl std::fmt::Debug for SqliteMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteMail({})", self.name)
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS keys (
        owner     BLOB PRIMARY KEY,
        key       BLOB NOT NULL,
        signature BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS mail (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient   BLOB NOT NULL,
        sender      BLOB NOT NULL,
        sender_nick TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        sealed      BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS mail_recipient ON mail (recipient, id);
    CREATE INDEX IF NOT EXISTS mail_age ON mail (at_ms);
    CREATE TABLE IF NOT EXISTS expired (
        recipient BLOB PRIMARY KEY,
        count     INTEGER NOT NULL
    );";

impl SqliteMail {
    /// Opens (or makes) the file at `path`.
    pub fn open(path: &Path) -> Result<SqliteMail, MailError> {
        let name: Arc<str> = path.display().to_string().into();
        let fail = |e: rusqlite::Error| MailError::Unavailable(format!("mailbox file {name}: {e}"));
        let conn = Connection::open(path).map_err(fail)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        let counts = load_counts(&conn).map_err(fail)?;
        Ok(SqliteMail {
            conn: Arc::new(Mutex::new(conn)),
            counts: Arc::new(Mutex::new(counts)),
            turn: Arc::default(),
            name,
        })
    }

    /// A store that lives in memory: for a router run in-process with no
    /// data directory (tests, the benchmark).
    pub fn in_memory() -> Result<SqliteMail, MailError> {
        let fail = |e: rusqlite::Error| MailError::Unavailable(format!("mailbox in memory: {e}"));
        let conn = Connection::open_in_memory().map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        Ok(SqliteMail {
            conn: Arc::new(Mutex::new(conn)),
            counts: Arc::default(),
            turn: Arc::default(),
            name: "memory".into(),
        })
    }

    /// Runs `job` on the connection, off the runtime's threads; `job`
    /// also gets the counts, to update them after its commit.
    async fn run<T, F>(&self, job: F) -> Result<T, MailError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &mut HashMap<Vec<u8>, u64>) -> rusqlite::Result<T>
            + Send
            + 'static,
    {
        let conn = self.conn.clone();
        let counts = self.counts.clone();
        let name = self.name.clone();
        let _turn = self.turn.lock().await;
        tokio::task::spawn_blocking(move || {
            // One statement or transaction at a time: a panic in another
            // leaves SQLite's own state consistent.
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
            job(&mut conn, &mut counts)
        })
        .await
        .map_err(|e| MailError::Unavailable(format!("mailbox file {name}: {e}")))?
        .map_err(|e| MailError::Unavailable(format!("mailbox file {name}: {e}")))
    }
}

/// Envelopes per mailbox, as the file holds them.
fn load_counts(c: &Connection) -> rusqlite::Result<HashMap<Vec<u8>, u64>> {
    let mut q = c.prepare("SELECT recipient, COUNT(*) FROM mail GROUP BY recipient")?;
    let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Sets `to`'s count from the file, after a commit that changed it.
fn recount(c: &Connection, counts: &mut HashMap<Vec<u8>, u64>, to: &[u8]) -> rusqlite::Result<()> {
    let n: u64 = c.query_row(
        "SELECT COUNT(*) FROM mail WHERE recipient = ?1",
        params![to],
        |r| r.get(0),
    )?;
    if n == 0 {
        counts.remove(to);
    } else {
        counts.insert(to.to_vec(), n);
    }
    Ok(())
}

/// The outcome of a deposit's transaction.
enum Stored {
    Some(usize),
    Full(String),
}

/// A deposit's transaction: as many of `deposit`'s envelopes as `quota`
/// leaves room for, from the first.
fn deposit_tx(
    c: &mut Connection,
    to: &[u8],
    deposit: &Deposit,
    quota: Quota,
) -> rusqlite::Result<Stored> {
    let tx = c.transaction()?;
    let (mut count, mut bytes): (u64, u64) = tx.query_row(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(sealed)), 0) FROM mail WHERE recipient = ?1",
        params![to],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut n = 0;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO mail (recipient, sender, sender_nick, at_ms, sealed)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for sealed in &deposit.envelopes {
            let size = sealed.len() as u64;
            if count + 1 > quota.count || bytes + size > quota.bytes {
                break;
            }
            put.execute(params![
                to,
                deposit.from.to_vec(),
                deposit.from_nick,
                deposit.at_ms,
                sealed
            ])?;
            count += 1;
            bytes += size;
            n += 1;
        }
    }
    tx.commit()?;
    if n == 0 && !deposit.envelopes.is_empty() {
        return Ok(Stored::Full(format!(
            "{count} of {} envelopes, {bytes} of {} bytes",
            quota.count, quota.bytes
        )));
    }
    Ok(Stored::Some(n))
}

#[async_trait::async_trait]
impl MailStore for SqliteMail {
    async fn publish(&self, owner: &PublicKey, key: &MailboxKey) -> Result<(), MailError> {
        let (owner, key) = (owner.to_vec(), key.clone());
        self.run(move |c, _| {
            c.execute(
                "INSERT INTO keys (owner, key, signature) VALUES (?1, ?2, ?3)
                 ON CONFLICT (owner) DO UPDATE SET key = ?2, signature = ?3
                 WHERE key != ?2 OR signature != ?3",
                params![owner, key.key, key.signature],
            )
            .map(drop)
        })
        .await
    }

    async fn published(&self, owner: &PublicKey) -> Result<Option<MailboxKey>, MailError> {
        let owner = owner.to_vec();
        self.run(move |c, _| {
            c.query_row(
                "SELECT key, signature FROM keys WHERE owner = ?1",
                params![owner],
                |r| {
                    Ok(MailboxKey {
                        key: r.get(0)?,
                        signature: r.get(1)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn deposit(
        &self,
        to: &PublicKey,
        deposit: Deposit,
        quota: Quota,
    ) -> Result<usize, MailError> {
        let to = to.to_vec();
        let stored = self
            .run(move |c, counts| {
                // Durable, power loss included, before the answer.
                c.execute_batch("PRAGMA synchronous = FULL")?;
                let stored = deposit_tx(c, &to, &deposit, quota);
                c.execute_batch("PRAGMA synchronous = NORMAL")?;
                let stored = stored?;
                if matches!(stored, Stored::Some(n) if n > 0) {
                    recount(c, counts, &to)?;
                }
                Ok(stored)
            })
            .await?;
        match stored {
            Stored::Some(n) => Ok(n),
            Stored::Full(why) => Err(MailError::Full(why)),
        }
    }

    async fn list(&self, to: &PublicKey, limit: usize) -> Result<Listing, MailError> {
        let to = to.to_vec();
        let limit = limit.max(1);
        self.run(move |c, _| {
            let mut q = c.prepare_cached(
                "SELECT id, sender, sender_nick, at_ms, sealed FROM mail
                 WHERE recipient = ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = q.query_map(params![to, limit as i64 + 1], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })?;
            let mut envelopes = Vec::new();
            let mut more = false;
            for row in rows {
                let (id, from, from_nick, at_ms, sealed) = row?;
                if envelopes.len() == limit {
                    more = true;
                    break;
                }
                // A row is only ever written from a checked key.
                let Ok(from) = PublicKey::from_bytes(&from) else {
                    continue;
                };
                envelopes.push(Envelope {
                    id: id.to_string(),
                    from,
                    from_nick,
                    at_ms,
                    sealed,
                });
            }
            let expired: u64 = c
                .query_row(
                    "SELECT count FROM expired WHERE recipient = ?1",
                    params![to],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            Ok(Listing {
                envelopes,
                expired,
                more,
            })
        })
        .await
    }

    async fn ack(&self, to: &PublicKey, ids: &[String], expired: u64) -> Result<(), MailError> {
        let to = to.to_vec();
        // An id that is not one of this store's is nobody's envelope.
        let ids: Vec<i64> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        self.run(move |c, counts| {
            let tx = c.transaction()?;
            {
                let mut del =
                    tx.prepare_cached("DELETE FROM mail WHERE id = ?1 AND recipient = ?2")?;
                for id in ids {
                    del.execute(params![id, to])?;
                }
            }
            if expired > 0 {
                tx.execute(
                    "UPDATE expired SET count = MAX(count - ?2, 0) WHERE recipient = ?1",
                    params![to, expired],
                )?;
                tx.execute(
                    "DELETE FROM expired WHERE recipient = ?1 AND count = 0",
                    params![to],
                )?;
            }
            tx.commit()?;
            recount(c, counts, &to)
        })
        .await
    }

    async fn waiting(&self, to: &PublicKey) -> Result<u64, MailError> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        Ok(counts.get(to.as_bytes().as_slice()).copied().unwrap_or(0))
    }

    async fn expire(&self, before_ms: i64) -> Result<u64, MailError> {
        self.run(move |c, counts| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO expired (recipient, count)
                 SELECT recipient, COUNT(*) FROM mail WHERE at_ms < ?1 GROUP BY recipient
                 ON CONFLICT (recipient) DO UPDATE SET count = count + excluded.count",
                params![before_ms],
            )?;
            let n = tx.execute("DELETE FROM mail WHERE at_ms < ?1", params![before_ms])?;
            tx.commit()?;
            if n > 0 {
                *counts = load_counts(c)?;
            }
            Ok(n as u64)
        })
        .await
    }
}
