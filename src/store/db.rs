//! The schema and the synchronous SQL behind every store command. Everything
//! here runs on the writer thread, inside its open transaction.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::{Identity, Inserted, MsgId, OrderKey, StoreError, Version};
use crate::proto::{ChatMessage, VectorEntry};

/// `PRAGMA application_id` of a parley history ("PRLY"), so a foreign SQLite
/// file is recognised as such rather than adopted.
const APPLICATION_ID: i32 = 0x5052_4c59;
/// `PRAGMA user_version`: the schema revision.
const SCHEMA_VERSION: i32 = 1;

/// Incarnations are random over the full u64 range and seq / lamport arrive
/// from other peers, but SQLite integers are i64. Flipping the top bit maps
/// u64 onto i64 preserving order, so SQL `ORDER BY`, `MAX` and row-value
/// comparisons agree with `OrderKey`'s Rust ordering.
pub(crate) fn enc(x: u64) -> i64 {
    (x ^ (1 << 63)) as i64
}

pub(crate) fn dec(x: i64) -> u64 {
    (x as u64) ^ (1 << 63)
}

const SCHEMA: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
-- u64 columns hold enc(x); see enc().
CREATE TABLE messages (
    conversation TEXT NOT NULL,
    author_lower TEXT NOT NULL,
    incarnation  INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    lamport      INTEGER NOT NULL,
    author       TEXT NOT NULL,
    sent_at_ms   INTEGER NOT NULL,
    body         TEXT NOT NULL,
    PRIMARY KEY (conversation, author_lower, incarnation, seq)
);
-- Display order; serves history, paging and the Lamport clock's MAX.
CREATE INDEX messages_order
    ON messages (conversation, lamport, author_lower, incarnation, seq);
-- Per conversation message count (the version), kept so GetVersion is O(1).
CREATE TABLE conversations (
    conversation TEXT PRIMARY KEY,
    count        INTEGER NOT NULL
);
-- Version vector: highest seq with no gap below it per author incarnation.
CREATE TABLE vector (
    conversation TEXT NOT NULL,
    author_lower TEXT NOT NULL,
    incarnation  INTEGER NOT NULL,
    author       TEXT NOT NULL,
    contiguous   INTEGER NOT NULL,
    PRIMARY KEY (conversation, author_lower, incarnation)
) WITHOUT ROWID;
-- Messages still owed to a member who could not be reached.
CREATE TABLE outbox (
    recipient    TEXT NOT NULL,
    conversation TEXT NOT NULL,
    author_lower TEXT NOT NULL,
    incarnation  INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (recipient, conversation, author_lower, incarnation, seq)
) WITHOUT ROWID;
";

/// Opens (creating if absent) the database at `path`, checks it really is a
/// parley history, and returns the connection and the peer's identity.
pub(crate) fn open(path: &Path) -> Result<(Connection, Identity), StoreError> {
    let err = |e| StoreError::sqlite(path, e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    // SQLite falls back to read-only when the OS refuses write access; a
    // history we cannot append to is an error at open, not at the first send.
    if conn.is_readonly(rusqlite::MAIN_DB).map_err(err)? {
        return Err(StoreError::ReadOnly {
            path: path.to_path_buf(),
            cause: "the file cannot be opened for writing".into(),
        });
    }

    // Read before anything writes: garbage bytes fail here (SQLITE_NOTADB),
    // and `err` classifies that as Corrupt, leaving the file as it was.
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(err)?;
    let corrupt = |cause: &str| StoreError::Corrupt {
        path: path.to_path_buf(),
        cause: cause.to_string(),
    };
    if tables > 0 {
        let app: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(err)?;
        let ver: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if app != APPLICATION_ID {
            return Err(corrupt(
                "a SQLite database, but not one written by parley (application_id differs)",
            ));
        }
        if ver != SCHEMA_VERSION {
            return Err(corrupt(&format!(
                "schema version {ver}, this parley understands {SCHEMA_VERSION}"
            )));
        }
    }

    // One connection (the writer thread's) is the only one ever open, and
    // the data directory lock keeps other peers out: exclusive locking lets
    // WAL skip its shared-memory index and the file locks around every
    // transaction, a good part of a commit's cost.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.set_prepared_statement_cache_capacity(64);

    if tables == 0 {
        create(&conn).map_err(err)?;
    }
    let identity = read_identity(&conn, path)?;
    Ok((conn, identity))
}

/// Creates the schema and draws the identity, in one transaction so a crash
/// cannot leave a history without an identity.
fn create(conn: &Connection) -> rusqlite::Result<()> {
    let incarnation = loop {
        let x: u64 = rand::random();
        if x != 0 {
            break x;
        }
    };
    let secret: [u8; 32] = rand::random();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('incarnation', ?1), ('reclaim_secret', ?2)",
            params![incarnation.to_be_bytes().to_vec(), secret.to_vec()],
        )?;
        conn.execute_batch("COMMIT")
    })();
    if r.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    r
}

fn read_identity(conn: &Connection, path: &Path) -> Result<Identity, StoreError> {
    let get = |key: &str| -> Result<Vec<u8>, StoreError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| StoreError::sqlite(path, e))?
            .ok_or_else(|| StoreError::Corrupt {
                path: path.to_path_buf(),
                cause: format!("meta table has no {key}"),
            })
    };
    let inc = get("incarnation")?;
    let secret = get("reclaim_secret")?;
    let inc: [u8; 8] = inc.try_into().map_err(|_| StoreError::Corrupt {
        path: path.to_path_buf(),
        cause: "meta incarnation is not 8 bytes".into(),
    })?;
    if secret.len() != 32 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            cause: "meta reclaim_secret is not 32 bytes".into(),
        });
    }
    Ok(Identity {
        incarnation: u64::from_be_bytes(inc),
        reclaim_secret: secret,
    })
}

const MSG_COLS: &str = "conversation, author, incarnation, seq, lamport, sent_at_ms, body";

fn row_to_msg(r: &Row<'_>) -> rusqlite::Result<ChatMessage> {
    Ok(ChatMessage {
        conversation: r.get(0)?,
        author: r.get(1)?,
        incarnation: dec(r.get(2)?),
        seq: dec(r.get(3)?),
        lamport: dec(r.get(4)?),
        sent_at_ms: r.get(5)?,
        body: r.get(6)?,
    })
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Stores one message; see [`Inserted`] for what the flags mean.
pub(crate) fn insert(conn: &Connection, m: &ChatMessage) -> rusqlite::Result<Inserted> {
    let author_lower = m.author.to_ascii_lowercase();
    let (inc, seq, lamport) = (enc(m.incarnation), enc(m.seq), enc(m.lamport));

    let added = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO messages
             (conversation, author_lower, incarnation, seq, lamport, author, sent_at_ms, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            m.conversation,
            author_lower,
            inc,
            seq,
            lamport,
            m.author,
            m.sent_at_ms,
            m.body
        ])?;
    if added == 0 {
        // Already held: nothing changes. The gap is still reported, so a
        // redelivery can still trigger repair of what is missing below it.
        let contiguous = contiguous(conn, &m.conversation, &author_lower, inc)?;
        return Ok(Inserted {
            new: false,
            late: false,
            gap: contiguous < m.seq,
        });
    }

    // `lamport >= ?2` gives the planner a plain index range; the row value
    // does the exact tie-break.
    let late = conn
        .prepare_cached(
            "SELECT 1 FROM messages
             WHERE conversation = ?1 AND lamport >= ?2
               AND (lamport, author_lower, incarnation, seq) > (?2, ?3, ?4, ?5)
             LIMIT 1",
        )?
        .exists(params![m.conversation, lamport, author_lower, inc, seq])?;

    conn.prepare_cached(
        "INSERT INTO conversations (conversation, count) VALUES (?1, 1)
         ON CONFLICT (conversation) DO UPDATE SET count = count + 1",
    )?
    .execute([&m.conversation])?;

    let old = contiguous(conn, &m.conversation, &author_lower, inc)?;
    let mut now = old;
    if m.seq == old.wrapping_add(1) {
        // Advance over anything that arrived early; each seq is stepped over
        // once in its life, so this is amortised O(1) per insert.
        now = m.seq;
        let mut next = conn.prepare_cached(
            "SELECT 1 FROM messages
             WHERE conversation = ?1 AND author_lower = ?2 AND incarnation = ?3 AND seq = ?4",
        )?;
        while now < u64::MAX
            && next.exists(params![m.conversation, author_lower, inc, enc(now + 1)])?
        {
            now += 1;
        }
    }
    conn.prepare_cached(
        "INSERT INTO vector (conversation, author_lower, incarnation, author, contiguous)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (conversation, author_lower, incarnation)
         DO UPDATE SET contiguous = excluded.contiguous",
    )?
    .execute(params![
        m.conversation,
        author_lower,
        inc,
        m.author,
        enc(now)
    ])?;

    Ok(Inserted {
        new: true,
        late,
        gap: now < m.seq,
    })
}

fn contiguous(
    conn: &Connection,
    conv: &str,
    author_lower: &str,
    inc: i64,
) -> rusqlite::Result<u64> {
    Ok(conn
        .prepare_cached(
            "SELECT contiguous FROM vector
             WHERE conversation = ?1 AND author_lower = ?2 AND incarnation = ?3",
        )?
        .query_row(params![conv, author_lower, inc], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, dec))
}

/// Allocates the next seq and lamport, stores the message and queues it for
/// every pending recipient.
pub(crate) fn append_own(
    conn: &Connection,
    conversation: &str,
    author: &str,
    incarnation: u64,
    body: &str,
    sent_at_ms: i64,
    pending: &[String],
) -> rusqlite::Result<ChatMessage> {
    let author_lower = author.to_ascii_lowercase();
    let max_seq: Option<i64> = conn
        .prepare_cached(
            "SELECT max(seq) FROM messages
             WHERE conversation = ?1 AND author_lower = ?2 AND incarnation = ?3",
        )?
        .query_row(params![conversation, author_lower, enc(incarnation)], |r| {
            r.get(0)
        })?;
    let max_lamport: Option<i64> = conn
        .prepare_cached("SELECT max(lamport) FROM messages WHERE conversation = ?1")?
        .query_row([conversation], |r| r.get(0))?;
    // Saturating: a peer could send lamport u64::MAX; ties then fall back to
    // (author, incarnation, seq), still a total order.
    let msg = ChatMessage {
        conversation: conversation.to_string(),
        author: author.to_string(),
        incarnation,
        seq: max_seq.map_or(0, dec).saturating_add(1),
        lamport: max_lamport.map_or(0, dec).saturating_add(1),
        sent_at_ms,
        body: body.to_string(),
    };
    insert(conn, &msg)?;
    let id = MsgId::of(&msg);
    for nick in pending {
        outbox_add(conn, nick, std::slice::from_ref(&id))?;
    }
    Ok(msg)
}

pub(crate) fn version(conn: &Connection, conversation: &str) -> rusqlite::Result<Version> {
    let count: i64 = conn
        .prepare_cached("SELECT count FROM conversations WHERE conversation = ?1")?
        .query_row([conversation], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let mut stmt = conn.prepare_cached(
        "SELECT author, incarnation, contiguous FROM vector
         WHERE conversation = ?1 AND contiguous != ?2
         ORDER BY author_lower, incarnation",
    )?;
    // Incarnations whose seq 1 is still missing contribute nothing to cover,
    // so they are left out (`enc(0)` is the stored zero).
    let vector = stmt
        .query_map(params![conversation, enc(0)], |r| {
            Ok(VectorEntry {
                author: r.get(0)?,
                incarnation: dec(r.get(1)?),
                seq: dec(r.get(2)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Version {
        count: u64::try_from(count).unwrap_or(0),
        vector,
    })
}

pub(crate) fn missing(
    conn: &Connection,
    conversation: &str,
    have: &[VectorEntry],
    after: Option<&OrderKey>,
    limit: usize,
) -> rusqlite::Result<Vec<ChatMessage>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut covered: HashMap<(String, u64), u64> = HashMap::with_capacity(have.len());
    for e in have {
        let slot = covered
            .entry((e.author.to_ascii_lowercase(), e.incarnation))
            .or_insert(0);
        *slot = (*slot).max(e.seq);
    }
    let cursor =
        "AND lamport >= ?2 AND (lamport, author_lower, incarnation, seq) > (?2, ?3, ?4, ?5)";
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MSG_COLS}, author_lower FROM messages
         WHERE conversation = ?1 {}
         ORDER BY lamport, author_lower, incarnation, seq",
        if after.is_some() { cursor } else { "" }
    ))?;
    let mut rows = match after {
        Some(k) => stmt.query(params![
            conversation,
            enc(k.lamport),
            k.author_lower,
            enc(k.incarnation),
            enc(k.seq)
        ])?,
        None => stmt.query([conversation])?,
    };
    let mut out = Vec::new();
    // Rows are stepped lazily: a page stops reading once it is full.
    while let Some(r) = rows.next()? {
        let m = row_to_msg(r)?;
        let author_lower: String = r.get(7)?;
        let held = covered
            .get(&(author_lower, m.incarnation))
            .is_some_and(|&s| m.seq <= s);
        if !held {
            out.push(m);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

pub(crate) fn history(
    conn: &Connection,
    conversation: &str,
    limit: usize,
) -> rusqlite::Result<Vec<ChatMessage>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE conversation = ?1
         ORDER BY lamport DESC, author_lower DESC, incarnation DESC, seq DESC
         LIMIT ?2"
    ))?;
    let mut v = stmt
        .query_map(params![conversation, sql_limit(limit)], row_to_msg)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    v.reverse();
    Ok(v)
}

pub(crate) fn all(conn: &Connection, conversation: &str) -> rusqlite::Result<Vec<ChatMessage>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE conversation = ?1
         ORDER BY lamport, author_lower, incarnation, seq"
    ))?;
    let v = stmt
        .query_map([conversation], row_to_msg)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(v)
}

pub(crate) fn conversations(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT conversation FROM conversations ORDER BY conversation")?;
    let v = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(v)
}

pub(crate) fn outbox_add(
    conn: &Connection,
    recipient: &str,
    ids: &[MsgId],
) -> rusqlite::Result<()> {
    for_each_outbox_row(
        conn,
        "INSERT OR IGNORE INTO outbox (recipient, conversation, author_lower, incarnation, seq)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        recipient,
        ids,
    )
}

/// Runs `sql` (taking recipient, conversation, author, incarnation, seq) once
/// per id: the one shape outbox writes share.
fn for_each_outbox_row(
    conn: &Connection,
    sql: &str,
    recipient: &str,
    ids: &[MsgId],
) -> rusqlite::Result<()> {
    let recipient = recipient.to_ascii_lowercase();
    let mut stmt = conn.prepare_cached(sql)?;
    for id in ids {
        stmt.execute(params![
            recipient,
            id.conversation,
            id.author_lower.to_ascii_lowercase(),
            enc(id.incarnation),
            enc(id.seq)
        ])?;
    }
    Ok(())
}

pub(crate) fn outbox_for(conn: &Connection, recipient: &str) -> rusqlite::Result<Vec<ChatMessage>> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.conversation, m.author, m.incarnation, m.seq, m.lamport, m.sent_at_ms, m.body
         FROM outbox o JOIN messages m
           ON m.conversation = o.conversation AND m.author_lower = o.author_lower
          AND m.incarnation = o.incarnation AND m.seq = o.seq
         WHERE o.recipient = ?1
         ORDER BY m.conversation, m.lamport, m.author_lower, m.incarnation, m.seq",
    )?;
    let v = stmt
        .query_map([recipient.to_ascii_lowercase()], row_to_msg)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(v)
}

pub(crate) fn outbox_done(
    conn: &Connection,
    recipient: &str,
    ids: &[MsgId],
) -> rusqlite::Result<()> {
    for_each_outbox_row(
        conn,
        "DELETE FROM outbox WHERE recipient = ?1 AND conversation = ?2
           AND author_lower = ?3 AND incarnation = ?4 AND seq = ?5",
        recipient,
        ids,
    )
}

pub(crate) fn outbox_recipients(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT DISTINCT recipient FROM outbox ORDER BY recipient")?;
    let v = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(v)
}
