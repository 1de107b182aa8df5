//! Messages stored before their signature was checked.
//!
//! A message taken from its author over the author's own link is
//! authenticated by the link (mutual TLS proved the key), so it is stored,
//! shown and acknowledged at once; its signature, which is what makes it
//! believable to anyone else, is checked later, in batches, off the
//! latency path. Until then it waits in the `unchecked` table (written in
//! the same transaction as the message, so a crash cannot lose the
//! obligation) and is never served: a pull's pages leave it out, and a
//! version counts neither it nor anything of its author incarnation past
//! it. A message whose check fails moves out of its conversation into one
//! nobody reads (`!refuted CONVERSATION`): rows are never deleted, so
//! rowids are never reused and a pull's arrival-order cursor stays sound.

use std::collections::HashSet;

use rusqlite::{params, Connection};

use super::db::{dec, enc, insert_many, row_to_msg};
use super::{Inserted, MsgId, Version};
use crate::proto::ChatMessage;

/// Where a refuted message of `conversation` is kept: no conversation key
/// starts with `!`, so nothing reads it as a conversation.
fn refuted_key(conversation: &str) -> String {
    format!("!refuted {conversation}")
}

/// Stores `msgs` as [`insert_many`] does, each new one marked unchecked
/// under `key`, the key its link proved.
pub(super) fn insert(
    conn: &Connection,
    msgs: &[ChatMessage],
    key: &[u8; 32],
) -> rusqlite::Result<Vec<Inserted>> {
    let out = insert_many(conn, msgs)?;
    let mut mark = conn.prepare_cached(
        "INSERT OR IGNORE INTO unchecked (conversation, author_lower, incarnation, seq, key)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (m, inserted) in msgs.iter().zip(&out) {
        if inserted.new {
            mark.execute(params![
                m.conversation,
                m.author.to_ascii_lowercase(),
                enc(m.incarnation),
                enc(m.seq),
                &key[..]
            ])?;
        }
    }
    Ok(out)
}

/// Takes what is unchecked out of `version`: the count, and per author
/// incarnation the vector's seq down to just below its first unchecked
/// message, as if those were not held.
pub(super) fn discount(
    conn: &Connection,
    conversation: &str,
    version: &mut Version,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT author_lower, incarnation, min(seq), count(*) FROM unchecked
         WHERE conversation = ?1 GROUP BY author_lower, incarnation",
    )?;
    let rows = stmt
        .query_map([conversation], |r| {
            Ok((
                r.get::<_, String>(0)?,
                dec(r.get(1)?),
                dec(r.get(2)?),
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (author_lower, incarnation, first, n) in rows {
        version.count = version.count.saturating_sub(u64::try_from(n).unwrap_or(0));
        for e in &mut version.vector {
            if e.incarnation == incarnation && e.author.eq_ignore_ascii_case(&author_lower) {
                e.seq = e.seq.min(first.saturating_sub(1));
            }
        }
    }
    version.vector.retain(|e| e.seq > 0);
    Ok(())
}

/// Leaves out of `page` (of `conversation`) whatever is unchecked.
pub(super) fn withhold(
    conn: &Connection,
    conversation: &str,
    page: &mut Vec<ChatMessage>,
) -> rusqlite::Result<()> {
    if page.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT author_lower, incarnation, seq FROM unchecked WHERE conversation = ?1",
    )?;
    let held = stmt
        .query_map([conversation], |r| {
            Ok((r.get::<_, String>(0)?, dec(r.get(1)?), dec(r.get(2)?)))
        })?
        .collect::<rusqlite::Result<HashSet<_>>>()?;
    if !held.is_empty() {
        page.retain(|m| !held.contains(&(m.author.to_ascii_lowercase(), m.incarnation, m.seq)));
    }
    Ok(())
}

/// Up to `limit` unchecked messages, each with the key its link proved.
pub(super) fn waiting(
    conn: &Connection,
    limit: usize,
) -> rusqlite::Result<Vec<(Vec<u8>, ChatMessage)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.conversation, m.author, m.incarnation, m.seq, m.lamport, m.sent_at_ms,
                m.body, m.signature, m.kind, u.key
         FROM unchecked u JOIN messages m
           ON m.conversation = u.conversation AND m.author_lower = u.author_lower
          AND m.incarnation = u.incarnation AND m.seq = u.seq
         LIMIT ?1",
    )?;
    let rows = stmt
        .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((r.get::<_, Vec<u8>>(9)?, row_to_msg(r)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Ends the wait of `good` (their signatures checked) and of `bad` (they
/// did not): each bad one leaves its conversation, its count and its
/// author incarnation's vector entry. Returns the bad messages as they
/// were held.
pub(super) fn settle(
    conn: &Connection,
    good: &[MsgId],
    bad: &[MsgId],
) -> rusqlite::Result<Vec<ChatMessage>> {
    let mut done = conn.prepare_cached(
        "DELETE FROM unchecked
         WHERE conversation = ?1 AND author_lower = ?2 AND incarnation = ?3 AND seq = ?4",
    )?;
    for id in good.iter().chain(bad) {
        done.execute(params![
            id.conversation,
            id.author_lower,
            enc(id.incarnation),
            enc(id.seq)
        ])?;
    }
    let mut refuted = Vec::with_capacity(bad.len());
    for id in bad {
        let key = params![
            id.conversation,
            id.author_lower,
            enc(id.incarnation),
            enc(id.seq)
        ];
        let held = conn
            .prepare_cached(
                "SELECT conversation, author, incarnation, seq, lamport, sent_at_ms, body,
                        signature, kind
                 FROM messages
                 WHERE conversation = ?1 AND author_lower = ?2 AND incarnation = ?3 AND seq = ?4",
            )?
            .query_map(key, row_to_msg)?
            .next()
            .transpose()?;
        let Some(msg) = held else { continue };
        conn.prepare_cached(
            "UPDATE OR REPLACE messages SET conversation = ?5
             WHERE conversation = ?1 AND author_lower = ?2 AND incarnation = ?3 AND seq = ?4",
        )?
        .execute(params![
            id.conversation,
            id.author_lower,
            enc(id.incarnation),
            enc(id.seq),
            refuted_key(&id.conversation)
        ])?;
        conn.prepare_cached(
            "UPDATE conversations SET count = max(count - 1, 0) WHERE conversation = ?1",
        )?
        .execute([&id.conversation])?;
        // Nothing of this incarnation at or past the refuted seq is held
        // with no gap below it any more.
        conn.prepare_cached(
            "UPDATE vector SET contiguous = min(contiguous, ?4)
             WHERE conversation = ?1 AND author_lower = ?2 AND incarnation = ?3",
        )?
        .execute(params![
            id.conversation,
            id.author_lower,
            enc(id.incarnation),
            enc(id.seq.saturating_sub(1))
        ])?;
        refuted.push(msg);
    }
    Ok(refuted)
}
