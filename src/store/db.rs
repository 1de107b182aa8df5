//! The schema and the synchronous SQL behind every store command. Everything
//! here runs on the writer thread, inside its open transaction.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::{Identity, Inserted, MsgId, OrderKey, PullCursor, StoreError, Version};
use crate::proto::{ChatMessage, VectorEntry};

/// `PRAGMA application_id` of a parley history ("PRLY"), so a foreign SQLite
/// file is recognised as such rather than adopted.
const APPLICATION_ID: i32 = 0x5052_4c59;
/// `PRAGMA user_version`: the schema revision. A file at an older revision is
/// upgraded in place at open; a newer one is refused.
pub(crate) const SCHEMA_VERSION: i32 = 6;
/// Bytes per page of a history parley creates (SQLite's default is 4096).
pub(crate) const PAGE_SIZE: i64 = 1024;

/// How far past what is held a received message's seq or Lamport time may
/// run: see [`implausible`].
pub(crate) const MAX_AHEAD: u64 = 100_000;

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

/// The first schema, as version 1 files hold it. A new file is created at
/// this revision and upgraded through [`MIGRATIONS`] like an old one, so
/// there is one path to the current schema and it is exercised every time.
const SCHEMA_V1: &str = "
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

/// `MIGRATIONS[i]` upgrades revision `i + 1` to `i + 2`; one per revision
/// after the first.
const MIGRATIONS: &[&str] = &[
    // 1 -> 2
    "
-- The rooms this peer is in, kept across restarts.
CREATE TABLE rooms (
    room_key TEXT PRIMARY KEY,  -- the name, ASCII-lowercased
    name     TEXT NOT NULL      -- as first written
) WITHOUT ROWID;
-- Arrival order within a conversation (an index carries the rowid as its
-- last column): a pull serves what was stored while it paged from here.
CREATE INDEX messages_arrival ON messages (conversation);
-- The owed message's lamport, copied in, so a recipient's queue reads in
-- display order straight from an index instead of sorting all of it.
ALTER TABLE outbox ADD COLUMN lamport INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET lamport = coalesce(
    (SELECT m.lamport FROM messages m
      WHERE m.conversation = outbox.conversation AND m.author_lower = outbox.author_lower
        AND m.incarnation = outbox.incarnation AND m.seq = outbox.seq),
    0);
CREATE INDEX outbox_order
    ON outbox (recipient, conversation, lamport, author_lower, incarnation, seq);
",
    // Revision 3: every message keeps its author's signature, so history
    // stays checkable second-hand. Rows from before signing keep an empty
    // one (and are refused by peers that check).
    "ALTER TABLE messages ADD COLUMN signature BLOB NOT NULL DEFAULT x'';
     -- Logins are proven by the identity key now (see identity.rs).
     DELETE FROM meta WHERE key = 'reclaim_secret';",
    // Revision 4: a message may be an event of its conversation (a room's
    // creation); see proto Kind. A room's creation events are looked up by
    // send time to find its owner.
    "ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX messages_events ON messages (conversation, kind, sent_at_ms) WHERE kind != 0;",
    // Revision 5: messages taken from their author over its own link are
    // stored before their signature is checked (the link proved the
    // author); each waits here, with the key the link proved, until the
    // check, and is never served to anyone meanwhile (see unchecked.rs).
    "CREATE TABLE unchecked (
         conversation TEXT NOT NULL,
         author_lower TEXT NOT NULL,
         incarnation  INTEGER NOT NULL,
         seq          INTEGER NOT NULL,
         key          BLOB NOT NULL,
         PRIMARY KEY (conversation, author_lower, incarnation, seq)
     ) WITHOUT ROWID;",
    // Revision 6: `/lastlog`'s full-text index of the lines people wrote.
    // It is filled when a search runs, from the rows stored since the last
    // one (`meta` 'fts_rowid'), not by a trigger: storing a message, on
    // every delivery's path, stays one write. Rows are never deleted or
    // renumbered (no VACUUM), so an indexed rowid keeps naming its row.
    "CREATE VIRTUAL TABLE messages_fts USING fts5(
         body, content = 'messages', content_rowid = 'rowid'
     );",
];
const _: () = assert!(MIGRATIONS.len() + 1 == SCHEMA_VERSION as usize);

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
    let version = if tables > 0 {
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
        if !(1..=SCHEMA_VERSION).contains(&ver) {
            return Err(corrupt(&format!(
                "schema version {ver}, this parley understands 1 to {SCHEMA_VERSION}"
            )));
        }
        ver
    } else {
        0
    };

    if version == 0 {
        // Before the first table (and before WAL, which fixes it): every
        // commit writes each page it touched whole, and a message touches
        // about six (its row, three indexes, the count, the vector), so
        // small pages make a commit cheaper. An older file keeps its size.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(err)?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    // SQLite's own checkpoint runs in the commit that fills the WAL, and
    // syncs the WAL and the file (milliseconds, most of it the two fsyncs):
    // that commit's caller, a message on its way, waits for it. The hook
    // replaces it: it only records the WAL's length, and the store's
    // writer has a second connection checkpoint on its own thread (see
    // `store::checkpointer`); that is why this connection does not use
    // exclusive locking.
    conn.wal_hook(Some(record_wal_frames));
    conn.set_prepared_statement_cache_capacity(64);

    if version == 0 {
        create(&conn).map_err(err)?;
    } else if version < SCHEMA_VERSION {
        in_transaction(&conn, || migrate(&conn, version)).map_err(err)?;
        tracing::info!(path = %path.display(), from = version, to = SCHEMA_VERSION, "history schema upgraded");
    }
    let identity = read_identity(&conn, path)?;
    Ok((conn, identity))
}

thread_local! {
    /// Frames in the WAL after this thread's last commit that wrote any, as
    /// SQLite's WAL hook reports them; taken (and so cleared) after each
    /// batch, so a batch that wrote nothing, or another history's commit on
    /// the same thread, is never read as this one's.
    static WAL_FRAMES: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

fn record_wal_frames(
    _: &rusqlite::hooks::Wal,
    frames: std::os::raw::c_int,
) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(Some(u64::try_from(frames).unwrap_or(0))));
    Ok(())
}

/// Frames in the WAL after the last commit made on this thread since the
/// last call, if one wrote anything.
pub(crate) fn take_wal_frames() -> Option<u64> {
    WAL_FRAMES.with(|f| f.take())
}

/// Another connection to the history at `path` (already opened by
/// [`open`]), set up by `pragma` (name, value).
fn open_second(path: &Path, pragma: (&str, &str)) -> Result<Connection, StoreError> {
    let err = |e| StoreError::sqlite(path, e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    conn.pragma_update(None, pragma.0, pragma.1).map_err(err)?;
    Ok(conn)
}

/// A connection for checkpoints only.
pub(crate) fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    open_second(path, ("synchronous", "NORMAL"))
}

/// A connection for reads that must not wait for the writer (an own
/// message's allocation): it sees what is committed, and cannot write.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    open_second(path, ("query_only", "ON"))
}

/// Copies what the WAL holds into the database file without waiting for
/// the writer (`PASSIVE`); the writer starts the WAL over once all of it
/// has been copied. `TRUNCATE` at close also empties the WAL file.
/// Whether it copied everything: only then can the writer start the WAL
/// over.
pub(crate) fn checkpoint(conn: &Connection, truncate: bool) -> rusqlite::Result<bool> {
    let mode = if truncate { "TRUNCATE" } else { "PASSIVE" };
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        let (busy, log, copied): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        Ok(busy == 0 && log == copied)
    })
}

/// Runs `f` in one transaction: committed if it succeeds, rolled back if not.
fn in_transaction(
    conn: &Connection,
    f: impl FnOnce() -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = f().and_then(|()| conn.execute_batch("COMMIT"));
    if r.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    r
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
    in_transaction(conn, || {
        conn.execute_batch(SCHEMA_V1)?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('incarnation', ?1)",
            params![incarnation.to_be_bytes().to_vec()],
        )?;
        migrate(conn, 1)
    })
}

/// Upgrades the schema from revision `from` to [`SCHEMA_VERSION`], inside
/// the caller's transaction: `user_version` lives in the file header and is
/// written with the rest, so a crash leaves the old revision whole.
fn migrate(conn: &Connection, from: i32) -> rusqlite::Result<()> {
    for (to, sql) in (2..).zip(MIGRATIONS) {
        if to > from {
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", to)?;
        }
    }
    Ok(())
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
    let inc: [u8; 8] = inc.try_into().map_err(|_| StoreError::Corrupt {
        path: path.to_path_buf(),
        cause: "meta incarnation is not 8 bytes".into(),
    })?;
    Ok(Identity {
        incarnation: u64::from_be_bytes(inc),
    })
}

pub(super) fn row_to_msg(r: &Row<'_>) -> rusqlite::Result<ChatMessage> {
    Ok(ChatMessage {
        conversation: r.get(0)?,
        author: r.get(1)?,
        incarnation: dec(r.get(2)?),
        seq: dec(r.get(3)?),
        lamport: dec(r.get(4)?),
        sent_at_ms: r.get(5)?,
        body: r.get(6)?,
        signature: r.get(7)?,
        kind: r.get(8)?,
    })
}

/// A setting kept with the history (`meta`), as text.
pub(crate) fn setting(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    let value: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [format!("setting:{key}")],
            |r| r.get(0),
        )
        .optional()?;
    Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

pub(crate) fn set_setting(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![format!("setting:{key}"), value.as_bytes()],
    )?;
    Ok(())
}

/// Indexes for full-text search up to `batch` rows stored since the last
/// call (text lines only: events are not searched). Returns how many rows
/// it went through; 0 when the index is up to date.
pub(crate) fn index_text(conn: &Connection, batch: usize) -> rusqlite::Result<usize> {
    let last: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'fts_rowid'", [], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .optional()?
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, i64::from_be_bytes);
    let (upto, rows): (Option<i64>, usize) = conn.query_row(
        "SELECT max(rowid), count(*) FROM
             (SELECT rowid FROM messages WHERE rowid > ?1 ORDER BY rowid LIMIT ?2)",
        params![last, sql_limit(batch)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some(upto) = upto else { return Ok(0) };
    conn.prepare_cached(
        "INSERT INTO messages_fts (rowid, body)
             SELECT rowid, body FROM messages WHERE rowid > ?1 AND rowid <= ?2 AND kind = 0",
    )?
    .execute(params![last, upto])?;
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('fts_rowid', ?1)")?
        .execute(params![upto.to_be_bytes().to_vec()])?;
    Ok(rows)
}

/// The FTS5 query for what a person typed: every word must be in the line,
/// as a word or the start of one (`borrow check` finds "borrow checker").
/// Each word is quoted, so FTS5's own syntax (`AND`, `*`, `:`) is text.
pub(crate) fn text_query(text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// The newest `limit` text lines that match `query` (see [`text_query`]),
/// newest first, in every conversation but refuted ones.
pub(crate) fn search_text(
    conn: &Connection,
    query: &str,
    limit: usize,
) -> rusqlite::Result<Vec<ChatMessage>> {
    conn.prepare_cached(
        "SELECT m.conversation, m.author, m.incarnation, m.seq, m.lamport, m.sent_at_ms,
                m.body, m.signature, m.kind
           FROM messages_fts f JOIN messages m ON m.rowid = f.rowid
          WHERE messages_fts MATCH ?1 AND substr(m.conversation, 1, 1) != '!'
          ORDER BY m.sent_at_ms DESC, m.rowid DESC LIMIT ?2",
    )?
    .query_map(params![query, sql_limit(limit)], row_to_msg)?
    .collect()
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Stores one message; see [`Inserted`] for what the flags mean.
pub(crate) fn insert(conn: &Connection, m: &ChatMessage) -> rusqlite::Result<Inserted> {
    insert_many(conn, std::slice::from_ref(m)).map(|r| r[0])
}

/// Stores `msgs` in order, each with the flags [`insert`] gives it alone.
/// What repeats from one message to the next is kept in memory for the
/// batch (see [`Batch`]), so a pull's page, hundreds of messages of a few
/// author incarnations, costs two or three statements a message, not eight.
pub(crate) fn insert_many(
    conn: &Connection,
    msgs: &[ChatMessage],
) -> rusqlite::Result<Vec<Inserted>> {
    let mut batch = Batch::default();
    let out = msgs
        .iter()
        .map(|m| insert_as(conn, &mut batch, m, false))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    batch.finish(conn)?;
    Ok(out)
}

/// An author incarnation's place in a conversation's history during a
/// batch of inserts.
struct Held {
    /// The highest seq held with no gap below it.
    contiguous: u64,
    /// Set once a message of it is stored: its vector row is written at the
    /// batch's end, with this spelling if the row is new (an existing row
    /// keeps its own).
    author: Option<String>,
}

/// What a batch of inserts keeps in memory between its messages, as the
/// tables would say it after each one: each conversation's Lamport clock
/// (highest held), each author incarnation's contiguous seq, the counts
/// added. [`Batch::finish`] writes the counts and vector rows, once each.
/// Read before the batch's first message of each, so a batch sees what
/// earlier batches wrote.
#[derive(Default)]
struct Batch {
    clocks: HashMap<String, u64>,
    held: HashMap<(String, String, i64), Held>,
    added: HashMap<String, u64>,
}

impl Batch {
    fn held(
        &mut self,
        conn: &Connection,
        conv: &str,
        author_lower: &str,
        inc: i64,
    ) -> rusqlite::Result<&mut Held> {
        use std::collections::hash_map::Entry;
        let key = (conv.to_owned(), author_lower.to_owned(), inc);
        Ok(match self.held.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Held {
                contiguous: contiguous(conn, conv, author_lower, inc)?,
                author: None,
            }),
        })
    }

    /// The highest Lamport time `conv` holds (0 for none).
    fn clock(&mut self, conn: &Connection, conv: &str) -> rusqlite::Result<u64> {
        if let Some(c) = self.clocks.get(conv) {
            return Ok(*c);
        }
        let clock: Option<i64> = conn
            .prepare_cached("SELECT max(lamport) FROM messages WHERE conversation = ?1")?
            .query_row([conv], |r| r.get(0))?;
        let clock = clock.map_or(0, dec);
        self.clocks.insert(conv.to_owned(), clock);
        Ok(clock)
    }

    /// Writes the counts added and the vector rows of every author
    /// incarnation a message was stored for.
    fn finish(self, conn: &Connection) -> rusqlite::Result<()> {
        let mut count = conn.prepare_cached(
            "INSERT INTO conversations (conversation, count) VALUES (?1, ?2)
             ON CONFLICT (conversation) DO UPDATE SET count = count + excluded.count",
        )?;
        // A plain count, not an enc()'d u64: it is never compared with one.
        for (conv, n) in &self.added {
            count.execute(params![conv, i64::try_from(*n).unwrap_or(i64::MAX)])?;
        }
        let mut vector = conn.prepare_cached(
            "INSERT INTO vector (conversation, author_lower, incarnation, author, contiguous)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (conversation, author_lower, incarnation)
             DO UPDATE SET contiguous = excluded.contiguous",
        )?;
        for ((conv, author_lower, inc), held) in &self.held {
            if let Some(author) = &held.author {
                vector.execute(params![
                    conv,
                    author_lower,
                    inc,
                    author,
                    enc(held.contiguous)
                ])?;
            }
        }
        Ok(())
    }
}

/// Stores `m` within `batch`; `own`: this peer's new message, whose seq and
/// lamport are one past the highest held (see [`next_own`]), so nothing
/// can follow it in display order or in its author's sequence and those
/// reads are skipped.
fn insert_as(
    conn: &Connection,
    batch: &mut Batch,
    m: &ChatMessage,
    own: bool,
) -> rusqlite::Result<Inserted> {
    let conv = m.conversation.as_str();
    let author_lower = m.author.to_ascii_lowercase();
    let (inc, seq, lamport) = (enc(m.incarnation), enc(m.seq), enc(m.lamport));
    let old = batch.held(conn, conv, &author_lower, inc)?.contiguous;
    // Own messages need neither the plausibility rule nor the lateness
    // check, the two readers of the clock.
    let clock = if own { 0 } else { batch.clock(conn, conv)? };
    if !own && implausible(m, old, clock) {
        return Ok(Inserted {
            implausible: true,
            ..Inserted::default()
        });
    }
    // This peer writes its own creation only when it holds none
    // (`Peer::join_router`); a received one must not be a second.
    if !own
        && m.kind == crate::proto::Kind::Created as i32
        && rival_creation(conn, m, &author_lower)?
    {
        tracing::warn!(
            conversation = %m.conversation,
            author = %m.author,
            incarnation = m.incarnation,
            seq = m.seq,
            sent_at_ms = m.sent_at_ms,
            "refused a second creation event for a room that holds one"
        );
        return Ok(Inserted {
            rival_creation: true,
            ..Inserted::default()
        });
    }

    let added = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO messages
             (conversation, author_lower, incarnation, seq, lamport, author, sent_at_ms, body,
              signature, kind)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            m.conversation,
            author_lower,
            inc,
            seq,
            lamport,
            m.author,
            m.sent_at_ms,
            m.body,
            m.signature,
            m.kind
        ])?;
    if added == 0 {
        // Already held: nothing changes. The gap is still reported, so a
        // redelivery can still trigger repair of what is missing below it.
        return Ok(Inserted {
            new: false,
            late: false,
            gap: old < m.seq,
            ..Inserted::default()
        });
    }

    // Nothing can follow a message past the clock in display order; below
    // it, ask. `lamport >= ?2` gives the planner a plain index range; the
    // row value does the exact tie-break.
    let late = !own
        && m.lamport <= clock
        && conn
            .prepare_cached(
                "SELECT 1 FROM messages
                 WHERE conversation = ?1 AND lamport >= ?2
                   AND (lamport, author_lower, incarnation, seq) > (?2, ?3, ?4, ?5)
                 LIMIT 1",
            )?
            .exists(params![m.conversation, lamport, author_lower, inc, seq])?;
    if let Some(c) = batch.clocks.get_mut(conv) {
        *c = (*c).max(m.lamport);
    }
    *batch.added.entry(conv.to_owned()).or_insert(0) += 1;

    let mut now = old;
    if m.seq == old.wrapping_add(1) {
        // Advance over anything that arrived early (own messages too: a
        // sender writes them as their sends go, not in seq order); each seq
        // is stepped over once in its life, so this is amortised O(1) per
        // insert.
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
    let held = batch.held(conn, conv, &author_lower, inc)?;
    held.contiguous = now;
    held.author.get_or_insert_with(|| m.author.clone());

    Ok(Inserted {
        new: true,
        late,
        gap: now < m.seq,
        ..Inserted::default()
    })
}

/// A creation event of conversation ?1 other than (?2, ?3, ?4).
// `kind != 0` repeats the partial index's own condition: SQLite uses
// `messages_events` only for a query that says it in so many words.
const RIVAL_CREATION: &str = "SELECT 1 FROM messages
     WHERE conversation = ?1 AND kind != 0 AND kind = 1
       AND (author_lower, incarnation, seq) != (?2, ?3, ?4)
     LIMIT 1";
const _: () = assert!(crate::proto::Kind::Created as i32 == 1);

/// Whether the conversation holds a creation event other than `m` (another
/// author, incarnation or seq). Earlier inserts of the same batch count:
/// each is written before the next is judged.
fn rival_creation(
    conn: &Connection,
    m: &ChatMessage,
    author_lower: &str,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(RIVAL_CREATION)?.exists(params![
        m.conversation,
        author_lower,
        enc(m.incarnation),
        enc(m.seq)
    ])
}

/// The bounded-clocks rule: a received message may run at most
/// [`MAX_AHEAD`] past what is held, in its author's sequence (past the
/// highest seq held with no gap below it, `held`) and in the conversation's
/// Lamport clock (past the highest Lamport time held, `clock`). An honest
/// author steps each by one per message, so only a peer that missed more
/// than that many messages of one conversation (and then repairs in order)
/// ever meets the limit; a message claiming 2^64-1 never gets in, and no
/// received message can push this peer's own counters near saturation.
fn implausible(m: &ChatMessage, held: u64, clock: u64) -> bool {
    m.seq > held.saturating_add(MAX_AHEAD) || m.lamport > clock.saturating_add(MAX_AHEAD)
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

/// The seq and Lamport time of `author_lower`'s next own message of
/// `conversation`: one past the highest held, and past `issued` (the last
/// allocated, which may not be written yet).
pub(crate) fn next_own(
    conn: &Connection,
    conversation: &str,
    author_lower: &str,
    incarnation: u64,
    issued: Option<(u64, u64)>,
) -> rusqlite::Result<(u64, u64)> {
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
    let (issued_seq, issued_lamport) = issued.unwrap_or((0, 0));
    // Saturating: a peer could send lamport u64::MAX; ties then fall back to
    // (author, incarnation, seq), still a total order.
    Ok((
        max_seq.map_or(0, dec).max(issued_seq).saturating_add(1),
        max_lamport
            .map_or(0, dec)
            .max(issued_lamport)
            .saturating_add(1),
    ))
}

/// Writes this peer's own `msg` (its seq and Lamport time from
/// [`next_own`]), owed to each of `pending`.
pub(crate) fn write_own(
    conn: &Connection,
    msg: &ChatMessage,
    pending: &[String],
) -> rusqlite::Result<()> {
    let mut batch = Batch::default();
    insert_as(conn, &mut batch, msg, true)?;
    batch.finish(conn)?;
    let author_lower = msg.author.to_ascii_lowercase();
    let mut owe = conn.prepare_cached(
        "INSERT OR IGNORE INTO outbox
         (recipient, conversation, author_lower, incarnation, seq, lamport)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for nick in pending {
        owe.execute(params![
            nick.to_ascii_lowercase(),
            msg.conversation,
            author_lower,
            enc(msg.incarnation),
            enc(msg.seq),
            enc(msg.lamport)
        ])?;
    }
    Ok(())
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

/// Where a pull has got to; the inside of [`PullCursor`].
///
/// A pull serves what was held when it started (rowid at most the
/// watermark) author incarnation by author incarnation, each by the
/// messages' primary key from just past what the puller covers, so covered
/// rows are never read; then what was stored since, by rowid through
/// `messages_arrival`. Messages are never deleted and rowids are given in
/// increasing order (SQLite takes one past the largest; the table is never
/// vacuumed), so the two parts split every message held by the last page
/// exactly once.
#[derive(Debug, Clone)]
pub(crate) enum PullState {
    Held {
        watermark: i64,
        /// Those with something left to serve.
        sources: Vec<PullSource>,
    },
    /// Past the held part; the last rowid read.
    Since { after_rowid: i64 },
}

/// One author incarnation's part of the held messages.
#[derive(Debug, Clone)]
pub(crate) struct PullSource {
    author_lower: String,
    incarnation: u64,
    /// Highest seq served (or covered): the next read starts above it.
    after: u64,
    /// Highest seq held when the pull started: the read stops there, so a
    /// source still being written to is not scanned past it.
    last: u64,
}

/// Fewest rows read from one source at a time: the page's merge reads
/// ahead this much per source, so it bounds the waste on sources whose rows
/// do not make it into the page.
const MIN_RUN: usize = 8;

const PULL_SOURCES: &str = "SELECT author_lower, incarnation FROM vector
     WHERE conversation = ?1 AND (?2 IS NULL OR author_lower = ?2)";
const PULL_LAST_SEQ: &str = "SELECT max(seq) FROM messages
     WHERE conversation = ?1 AND author_lower = ?2 AND incarnation = ?3";
/// `rowid <= watermark` leaves messages stored since the pull started to
/// the arrival-order part.
const PULL_RUN: &str =
    "SELECT conversation, author, incarnation, seq, lamport, sent_at_ms, body, signature, kind
     FROM messages
     WHERE conversation = ?1 AND author_lower = ?2 AND incarnation = ?3
       AND seq > ?4 AND seq <= ?5 AND rowid <= ?6
     ORDER BY seq LIMIT ?7";
const PULL_SINCE: &str =
    "SELECT conversation, author, incarnation, seq, lamport, sent_at_ms, body, signature, kind,
            rowid
     FROM messages WHERE conversation = ?1 AND rowid > ?2
     ORDER BY rowid LIMIT ?3";

/// The reads that must go by index, named, for a test to check their plans.
#[cfg(test)]
pub(crate) const INDEXED_READS: &[(&str, &str)] = &[
    ("pull sources", PULL_SOURCES),
    ("pull last seq", PULL_LAST_SEQ),
    ("pull run", PULL_RUN),
    ("pull since", PULL_SINCE),
    ("outbox page", OUTBOX_PAGE),
    ("display page, first", ORDERED_PAGES[0].0),
    ("display page, after", ORDERED_PAGES[0].1),
    ("newest first, first", ORDERED_PAGES[1].0),
    ("newest first, after", ORDERED_PAGES[1].1),
    ("rival creation", RIVAL_CREATION),
];

/// Per author incarnation (author lowercased), the highest seq `have`
/// covers.
fn covered_by(have: &[VectorEntry]) -> HashMap<(String, u64), u64> {
    let mut covered: HashMap<(String, u64), u64> = HashMap::with_capacity(have.len());
    for e in have {
        let slot = covered
            .entry((e.author.to_ascii_lowercase(), e.incarnation))
            .or_insert(0);
        *slot = (*slot).max(e.seq);
    }
    covered
}

/// One page of a pull; see [`super::Store::missing_page`]. Reads at most
/// twice `limit` rows plus [`MIN_RUN`] per author incarnation still being
/// served; the first page also reads one row and one index seek per author
/// incarnation.
pub(crate) fn missing_page(
    conn: &Connection,
    conversation: &str,
    have: &[VectorEntry],
    author: Option<&str>,
    cursor: PullCursor,
    limit: usize,
) -> rusqlite::Result<(Vec<ChatMessage>, Option<PullCursor>)> {
    // A zero-sized page would never finish.
    let limit = limit.max(1);
    let covered = covered_by(have);
    let author = author.map(str::to_ascii_lowercase);
    let covers = |author_lower: &str, inc: u64| {
        covered
            .get(&(author_lower.to_string(), inc))
            .copied()
            .unwrap_or(0)
    };

    let state = match cursor.state {
        Some(state) => state,
        None => pull_start(conn, conversation, author.as_deref())?,
    };
    let mut out = Vec::new();
    let after_rowid = match state {
        PullState::Since { after_rowid } => after_rowid,
        PullState::Held {
            watermark,
            mut sources,
        } => {
            for s in &mut sources {
                s.after = s.after.max(covers(&s.author_lower, s.incarnation));
            }
            sources.retain(|s| s.after < s.last);
            pull_held(conn, conversation, watermark, &mut sources, limit, &mut out)?;
            if !sources.is_empty() {
                let state = PullState::Held { watermark, sources };
                return Ok((out, Some(PullCursor { state: Some(state) })));
            }
            watermark
        }
    };

    // What was stored since the pull started, in arrival order. Covered rows
    // are read here, but only ones that arrived during the pull, and no more
    // than the page has room for.
    let room = limit - out.len();
    if room == 0 {
        let state = PullState::Since { after_rowid };
        return Ok((out, Some(PullCursor { state: Some(state) })));
    }
    let mut stmt = conn.prepare_cached(PULL_SINCE)?;
    let mut rows = stmt.query(params![conversation, after_rowid, sql_limit(room)])?;
    let (mut read, mut last_rowid) = (0, after_rowid);
    while let Some(r) = rows.next()? {
        let m = row_to_msg(r)?;
        last_rowid = r.get(9)?;
        read += 1;
        let lower = m.author.to_ascii_lowercase();
        if author.as_ref().is_none_or(|a| *a == lower) && m.seq > covers(&lower, m.incarnation) {
            out.push(m);
        }
    }
    drop(rows);
    count_steps(&stmt);
    // Late arrivals go where they belong within the page.
    out.sort_by_key(OrderKey::of);
    let next = (read == room).then_some(PullCursor {
        state: Some(PullState::Since {
            after_rowid: last_rowid,
        }),
    });
    Ok((out, next))
}

/// The first page's snapshot: the watermark and, per author incarnation,
/// the highest seq then held.
fn pull_start(
    conn: &Connection,
    conversation: &str,
    author: Option<&str>,
) -> rusqlite::Result<PullState> {
    let watermark: i64 = conn
        .prepare_cached("SELECT coalesce(max(rowid), 0) FROM messages")?
        .query_row([], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(PULL_SOURCES)?;
    let keys = stmt
        .query_map(params![conversation, author], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    count_steps(&stmt);
    let mut last_seq = conn.prepare_cached(PULL_LAST_SEQ)?;
    let mut sources = Vec::with_capacity(keys.len());
    for (author_lower, inc) in keys {
        let last: Option<i64> =
            last_seq.query_row(params![conversation, author_lower, inc], |r| r.get(0))?;
        if let Some(last) = last {
            sources.push(PullSource {
                author_lower,
                incarnation: dec(inc),
                after: 0,
                last: dec(last),
            });
        }
    }
    count_steps(&last_seq);
    Ok(PullState::Held { watermark, sources })
}

/// Fills `out` (up to `limit`) from `sources` in display order: a merge of
/// the per-source runs, each read in seq order (display order within one
/// author incarnation whenever its lamports rise with its seqs, as an
/// honest peer's do). Advances each source past what it served and drops
/// the sources with nothing left.
fn pull_held(
    conn: &Connection,
    conversation: &str,
    watermark: i64,
    sources: &mut Vec<PullSource>,
    limit: usize,
    out: &mut Vec<ChatMessage>,
) -> rusqlite::Result<()> {
    struct Run {
        buf: VecDeque<ChatMessage>,
        /// Seq of the last row read.
        read_to: u64,
        /// The last read was full: there may be more.
        more: bool,
    }
    let batch = (limit / sources.len().max(1)).clamp(MIN_RUN.min(limit), limit);
    let mut stmt = conn.prepare_cached(PULL_RUN)?;
    let mut fill = |s: &PullSource, run: &mut Run| -> rusqlite::Result<()> {
        let rows = stmt
            .query_map(
                params![
                    conversation,
                    s.author_lower,
                    enc(s.incarnation),
                    enc(run.read_to),
                    enc(s.last),
                    watermark,
                    sql_limit(batch)
                ],
                row_to_msg,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        run.more = rows.len() == batch;
        if let Some(m) = rows.last() {
            run.read_to = m.seq;
        }
        run.buf.extend(rows);
        Ok(())
    };

    let mut runs = Vec::with_capacity(sources.len());
    let mut heads = BinaryHeap::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        let mut run = Run {
            buf: VecDeque::new(),
            read_to: s.after,
            more: true,
        };
        fill(s, &mut run)?;
        if let Some(m) = run.buf.front() {
            heads.push(Reverse((OrderKey::of(m), i)));
        }
        runs.push(run);
    }
    while out.len() < limit {
        let Some(Reverse((_, i))) = heads.pop() else {
            break;
        };
        let (s, run) = (&mut sources[i], &mut runs[i]);
        let Some(m) = run.buf.pop_front() else {
            continue;
        };
        s.after = m.seq;
        out.push(m);
        if run.buf.is_empty() && run.more {
            fill(s, run)?;
        }
        if let Some(m) = run.buf.front() {
            heads.push(Reverse((OrderKey::of(m), i)));
        }
    }
    count_steps(&stmt);
    // Done: served up to the end, or read to the end with nothing buffered.
    let mut runs = runs.into_iter();
    sources.retain(|s| {
        let run = runs.next();
        s.after < s.last && run.is_some_and(|r| r.more || !r.buf.is_empty())
    });
    Ok(())
}

// Test builds count the SQLite VM steps the pull's statements take, so a
// test can check a page reads only what it should, whatever the machine's
// speed.
#[cfg(test)]
thread_local! {
    static PULL_STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_steps(stmt: &rusqlite::Statement<'_>) {
    #[cfg(test)]
    {
        let n = stmt.reset_status(rusqlite::StatementStatus::VmStep);
        PULL_STEPS.with(|c| c.set(c.get() + u64::try_from(n).unwrap_or(0)));
    }
    #[cfg(not(test))]
    let _ = stmt;
}

/// The VM steps counted on this (the writer) thread since the last call.
#[cfg(test)]
pub(crate) fn take_pull_steps() -> u64 {
    PULL_STEPS.with(|c| c.replace(0))
}

/// Which way a conversation is read: display order, or newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Oldest = 0,
    Newest = 1,
}

/// `(first page, page after a cursor)` for each direction. In the cursor
/// form `lamport >= ?2` (or `<=`) gives the planner a plain index range;
/// the row value does the exact tie-break.
const ORDERED_PAGES: [(&str, &str); 2] = [
    (
        "SELECT conversation, author, incarnation, seq, lamport, sent_at_ms, body, signature, kind
         FROM messages WHERE conversation = ?1
         ORDER BY lamport, author_lower, incarnation, seq LIMIT ?2",
        "SELECT conversation, author, incarnation, seq, lamport, sent_at_ms, body, signature, kind
         FROM messages
         WHERE conversation = ?1 AND lamport >= ?2
           AND (lamport, author_lower, incarnation, seq) > (?2, ?3, ?4, ?5)
         ORDER BY lamport, author_lower, incarnation, seq LIMIT ?6",
    ),
    (
        "SELECT conversation, author, incarnation, seq, lamport, sent_at_ms, body, signature, kind
         FROM messages WHERE conversation = ?1
         ORDER BY lamport DESC, author_lower DESC, incarnation DESC, seq DESC LIMIT ?2",
        "SELECT conversation, author, incarnation, seq, lamport, sent_at_ms, body, signature, kind
         FROM messages
         WHERE conversation = ?1 AND lamport <= ?2
           AND (lamport, author_lower, incarnation, seq) < (?2, ?3, ?4, ?5)
         ORDER BY lamport DESC, author_lower DESC, incarnation DESC, seq DESC LIMIT ?6",
    ),
];

/// Up to `limit` messages of the conversation read in `direction`,
/// strictly past `from` when given.
pub(crate) fn ordered_page(
    conn: &Connection,
    conversation: &str,
    direction: Direction,
    from: Option<&OrderKey>,
    limit: usize,
) -> rusqlite::Result<Vec<ChatMessage>> {
    let limit = sql_limit(limit);
    let (first, after) = ORDERED_PAGES[direction as usize];
    match from {
        None => conn
            .prepare_cached(first)?
            .query_map(params![conversation, limit], row_to_msg)?
            .collect(),
        Some(k) => conn
            .prepare_cached(after)?
            .query_map(
                params![
                    conversation,
                    enc(k.lamport),
                    k.author_lower,
                    enc(k.incarnation),
                    enc(k.seq),
                    limit
                ],
                row_to_msg,
            )?
            .collect(),
    }
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
        // An entry for a message not held is kept as before (lamport 0); it
        // is never read back, as reads join the message.
        "INSERT OR IGNORE INTO outbox
         (recipient, conversation, author_lower, incarnation, seq, lamport)
         VALUES (?1, ?2, ?3, ?4, ?5, coalesce(
            (SELECT lamport FROM messages
              WHERE conversation = ?2 AND author_lower = ?3 AND incarnation = ?4 AND seq = ?5),
            0))",
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

/// The conversation's earliest creation event by send time (then author,
/// incarnation, seq: the same pick everywhere), if any is held.
pub(crate) fn creation(
    conn: &Connection,
    conversation: &str,
) -> rusqlite::Result<Option<ChatMessage>> {
    first_event(
        conn,
        conversation,
        crate::proto::Kind::Created,
        "ORDER BY sent_at_ms, author_lower, incarnation, seq",
    )
}

/// The conversation's latest topic event in its order (Lamport time, then
/// author, incarnation, seq: the order every peer shows), if any is held.
pub(crate) fn topic(
    conn: &Connection,
    conversation: &str,
) -> rusqlite::Result<Option<ChatMessage>> {
    first_event(
        conn,
        conversation,
        crate::proto::Kind::Topic,
        "ORDER BY lamport DESC, author_lower DESC, incarnation DESC, seq DESC",
    )
}

/// The first event of `kind` in `conversation` by `order` (a constant
/// `ORDER BY` clause); `messages_events` finds the kind's rows.
fn first_event(
    conn: &Connection,
    conversation: &str,
    kind: crate::proto::Kind,
    order: &'static str,
) -> rusqlite::Result<Option<ChatMessage>> {
    conn.prepare_cached(&format!(
        "SELECT conversation, author, incarnation, seq, lamport, sent_at_ms, body, signature, kind
         FROM messages WHERE conversation = ?1 AND kind = ?2 {order} LIMIT 1"
    ))?
    .query_row(params![conversation, kind as i32], row_to_msg)
    .optional()
}

/// Ordered by the outbox's own columns so `outbox_order` serves it and the
/// read stops at the limit instead of sorting the whole queue.
const OUTBOX_PAGE: &str =
    "SELECT m.conversation, m.author, m.incarnation, m.seq, m.lamport, m.sent_at_ms, m.body, m.signature, m.kind
     FROM outbox o JOIN messages m
       ON m.conversation = o.conversation AND m.author_lower = o.author_lower
      AND m.incarnation = o.incarnation AND m.seq = o.seq
     WHERE o.recipient = ?1
     ORDER BY o.conversation, o.lamport, o.author_lower, o.incarnation, o.seq
     LIMIT ?2";

pub(crate) fn outbox_for(
    conn: &Connection,
    recipient: &str,
    limit: usize,
) -> rusqlite::Result<Vec<ChatMessage>> {
    let mut stmt = conn.prepare_cached(OUTBOX_PAGE)?;
    let v = stmt
        .query_map(
            params![recipient.to_ascii_lowercase(), sql_limit(limit)],
            row_to_msg,
        )?
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

pub(crate) fn rooms_add(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    // OR IGNORE: a room already held keeps the name it was first written with.
    conn.prepare_cached("INSERT OR IGNORE INTO rooms (room_key, name) VALUES (?1, ?2)")?
        .execute(params![name.to_ascii_lowercase(), name])?;
    Ok(())
}

pub(crate) fn rooms_remove(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM rooms WHERE room_key = ?1")?
        .execute([name.to_ascii_lowercase()])?;
    Ok(())
}

pub(crate) fn rooms(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT name FROM rooms ORDER BY room_key")?;
    let v = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(v)
}
