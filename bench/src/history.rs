//! `join-100k`'s history: written into the holders' stores before they
//! start, and the floor a join is measured against (copying the same rows
//! between two SQLite files on this disk).
//!
//! The history is one author's: the first holder signs every message with
//! its own identity key, through its own store, as if it had sent them, and
//! the other holders get copies. Once the holders run, the author is bound
//! to that key at the router, so a joiner checks every signature as it
//! would for any history.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::try_join_all;
use indicatif::ProgressBar;
use parley::identity::Identity;
use parley::names::Nick;
use parley::peer::{HISTORY_FILE, KEY_FILE};
use parley::proto::{ChatMessage, Kind};
use parley::store::{lock_data_dir, Store};

/// Messages written or copied per store call: one transaction each.
const CHUNK: usize = 1000;

/// The store file of a peer's data directory, as the peer opens it.
fn history_db(dir: &Path) -> PathBuf {
    dir.join(HISTORY_FILE)
}

/// Writes `count` messages of `conversation`, signed by `author` (whose
/// data directory is `author_dir`), into the author's store and a copy of
/// them into every store of `copies`. None of those peers may be running.
pub async fn seed(
    (author, author_dir): (&Nick, &Path),
    copies: &[PathBuf],
    conversation: &str,
    count: usize,
    body: &str,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let dir = author_dir.to_path_buf();
    let (lock, store) = tokio::task::spawn_blocking(move || {
        let lock = lock_data_dir(&dir)?;
        let key = Arc::new(Identity::load_or_create(&dir.join(KEY_FILE))?);
        let store = Store::open_signed(&history_db(&dir), Some(key))?;
        anyhow::Ok((lock, store))
    })
    .await??;
    let incarnation = store.identity().incarnation;
    let sent_at = parley::message::now_ms();
    let mut written = 0;
    while written < count {
        let n = CHUNK.min(count - written);
        // Queued together, so the writer commits them in few batches.
        let appends = (0..n).map(|_| {
            store.append_own_kind(
                conversation,
                author.as_str(),
                incarnation,
                (Kind::Text, body),
                sent_at,
                Vec::new(),
            )
        });
        try_join_all(appends)
            .await
            .with_context(|| format!("cannot write {author}'s history"))?;
        written += n;
        bar.set_message(format!(
            "join-100k: writing the history ({written}/{count})"
        ));
    }
    let msgs = store.all(conversation).await?;
    drop((store, lock));
    for (i, dir) in copies.iter().enumerate() {
        bar.set_message(format!(
            "join-100k: copying the history to holder {} of {}",
            i + 2,
            copies.len() + 1
        ));
        copy_to(dir, &msgs).await?;
    }
    Ok(())
}

/// Stores `msgs` in the store of the data directory `dir`, creating it.
async fn copy_to(dir: &Path, msgs: &[ChatMessage]) -> anyhow::Result<()> {
    let owned = dir.to_path_buf();
    let (lock, store) = tokio::task::spawn_blocking(move || {
        let lock = lock_data_dir(&owned)?;
        let store = Store::open(&history_db(&owned))?;
        anyhow::Ok((lock, store))
    })
    .await??;
    for chunk in msgs.chunks(CHUNK) {
        let stored = store.insert_many(chunk.to_vec()).await?;
        anyhow::ensure!(
            stored.iter().all(|s| s.new),
            "{}: the copied history held duplicates",
            dir.display()
        );
    }
    drop((store, lock));
    Ok(())
}

/// The floor of `join-100k`: copies `conversation`'s rows (its messages,
/// count and version vector) from the store of the data directory `from`
/// into a new file `to` with the same tables and indexes, in one
/// transaction, with the store's settings (WAL, `synchronous = NORMAL`).
/// No network, no signature check, no per-message logic: what moving the
/// rows from one SQLite file to another costs on this disk. Returns the
/// time of the copy and the messages copied.
pub fn copy_floor(from: &Path, to: &Path, conversation: &str) -> anyhow::Result<(Duration, u64)> {
    use rusqlite::Connection;
    let src = history_db(from);
    let conn = Connection::open(to).with_context(|| format!("cannot create {}", to.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let src_str = src
        .to_str()
        .with_context(|| format!("{} is not UTF-8", src.display()))?;
    conn.execute("ATTACH DATABASE ?1 AS src", [src_str])?;
    const TABLES: &str = "('messages', 'conversations', 'vector')";
    let schema: Vec<String> = conn
        .prepare(&format!(
            "SELECT sql FROM src.sqlite_schema
             WHERE tbl_name IN {TABLES} AND sql IS NOT NULL
             ORDER BY type = 'index'"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        schema.len() >= 3,
        "{} holds no parley history",
        src.display()
    );
    for sql in &schema {
        conn.execute_batch(sql)?;
    }
    let start = Instant::now();
    let tx = conn.unchecked_transaction()?;
    let copied = tx.execute(
        "INSERT INTO main.messages SELECT * FROM src.messages WHERE conversation = ?1",
        [conversation],
    )?;
    for table in ["conversations", "vector"] {
        tx.execute(
            &format!("INSERT INTO main.{table} SELECT * FROM src.{table} WHERE conversation = ?1"),
            [conversation],
        )?;
    }
    tx.commit()?;
    Ok((start.elapsed(), copied as u64))
}
