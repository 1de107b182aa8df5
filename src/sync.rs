//! History sync: how a peer catches up on a conversation from the others.
//!
//! Ask every member for its version and vector at once (short deadline), pull
//! what this peer lacks from the member with the highest version, then from
//! any member whose vector still holds something this peer lacks. Pulls are
//! exact (the vector says what is held) and come in pages.

use std::time::Duration;

use futures::future::join_all;
use tokio_stream::StreamExt;

use crate::net::Peers;
use crate::proto::{
    ChatMessage, GetVersionRequest, GetVersionResponse, Member, PullHistoryRequest, VectorEntry,
};
use crate::store::{Store, StoreError};

/// Deadline of a version query during sync.
pub const VERSION_DEADLINE: Duration = Duration::from_secs(1);
/// How long one whole pull from one peer may take.
pub const PULL_DEADLINE: Duration = Duration::from_secs(60);
/// Messages asked for per page.
pub const PAGE_SIZE: u32 = 500;

/// What a sync did.
#[derive(Debug, Default)]
pub struct Synced {
    /// Messages this peer holds for the conversation afterwards.
    pub version: u64,
    /// The messages that were new to this peer, in the order received.
    pub pulled: Vec<(ChatMessage, bool)>,
    /// Members whose vector lacks something this peer holds, with that
    /// vector.
    pub behind: Vec<(Member, Vec<VectorEntry>)>,
}

/// Whether `theirs` holds anything `mine` lacks.
fn ahead(theirs: &[VectorEntry], mine: &[VectorEntry]) -> bool {
    theirs.iter().any(|t| {
        let held = mine
            .iter()
            .find(|m| m.incarnation == t.incarnation && m.author.eq_ignore_ascii_case(&t.author))
            .map_or(0, |m| m.seq);
        t.seq > held
    })
}

/// Brings this peer's copy of `conversation` up to the union of what the
/// reachable `members` hold. Unreachable members are skipped (logged).
pub async fn sync_conversation(
    store: &Store,
    peers: &Peers,
    me: &str,
    conversation: &str,
    members: &[Member],
) -> Result<Synced, StoreError> {
    let others: Vec<&Member> = members
        .iter()
        .filter(|m| !m.nick.eq_ignore_ascii_case(me))
        .collect();
    let asks = others
        .iter()
        .map(|m| get_version(peers, &m.address, me, conversation));
    let mut answers: Vec<(&Member, GetVersionResponse)> = others
        .iter()
        .copied()
        .zip(join_all(asks).await)
        .filter_map(|(m, v)| v.map(|v| (m, v)))
        .collect();
    // Highest version first: it is the one most likely to hold everything.
    answers.sort_by_key(|a| std::cmp::Reverse(a.1.version));

    let mut synced = Synced::default();
    for (member, answer) in &answers {
        let mine = store.version(conversation).await?.vector;
        if !ahead(&answer.vector, &mine) {
            continue;
        }
        let got = pull(store, peers, &member.address, me, conversation, mine).await?;
        tracing::debug!(from = %member.nick, conversation, pulled = got.len(), "pulled history");
        synced.pulled.extend(got);
    }
    let mine = store.version(conversation).await?;
    synced.version = mine.count;
    synced.behind = answers
        .into_iter()
        .filter(|(_, a)| ahead(&mine.vector, &a.vector))
        .map(|(m, a)| (m.clone(), a.vector))
        .collect();
    Ok(synced)
}

/// Most own messages pushed to one member after a sync.
const MAX_PUSH: usize = 10_000;

/// This peer's own messages of `conversation` that a member holding
/// `theirs` lacks, in order.
pub async fn own_missing(
    store: &Store,
    conversation: &str,
    me: &str,
    theirs: Vec<VectorEntry>,
) -> Result<Vec<ChatMessage>, StoreError> {
    let mut own = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .missing(conversation, theirs.clone(), after, PAGE_SIZE as usize)
            .await?;
        let done = page.len() < PAGE_SIZE as usize;
        after = page.last().map(crate::store::OrderKey::of);
        own.extend(
            page.into_iter()
                .filter(|m| m.author.eq_ignore_ascii_case(me)),
        );
        if done || own.len() >= MAX_PUSH {
            own.truncate(MAX_PUSH);
            return Ok(own);
        }
    }
}

async fn get_version(
    peers: &Peers,
    address: &str,
    me: &str,
    conversation: &str,
) -> Option<GetVersionResponse> {
    let mut client = peers.client(address).ok()?;
    let mut req = tonic::Request::new(GetVersionRequest {
        conversation: conversation.to_owned(),
        requester: me.to_owned(),
    });
    req.set_timeout(VERSION_DEADLINE);
    match tokio::time::timeout(VERSION_DEADLINE, client.get_version(req)).await {
        Ok(Ok(resp)) => Some(resp.into_inner()),
        Ok(Err(status)) => {
            tracing::debug!(address, %status, "version query refused");
            None
        }
        Err(_) => {
            tracing::debug!(address, "version query timed out");
            None
        }
    }
}

/// Pulls from the peer at `address` every message of `conversation` not
/// covered by `have`, storing each page as it arrives. Returns the messages
/// that were new here, with their `late` flags. A peer failing mid-pull
/// keeps what arrived so far.
pub async fn pull(
    store: &Store,
    peers: &Peers,
    address: &str,
    me: &str,
    conversation: &str,
    have: Vec<VectorEntry>,
) -> Result<Vec<(ChatMessage, bool)>, StoreError> {
    let mut fresh = Vec::new();
    let Ok(mut client) = peers.client(address) else {
        return Ok(fresh);
    };
    let req = PullHistoryRequest {
        conversation: conversation.to_owned(),
        requester: me.to_owned(),
        have,
        page_size: PAGE_SIZE,
    };
    let work = async {
        let mut pages = match client.pull_history(req).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                tracing::debug!(address, %status, "pull refused");
                return Ok(());
            }
        };
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(p) => p,
                Err(status) => {
                    tracing::debug!(address, %status, "pull broken off");
                    return Ok(());
                }
            };
            let msgs: Vec<ChatMessage> = page
                .messages
                .into_iter()
                .filter(|m| m.conversation == conversation && crate::peer::valid_message(m).is_ok())
                .collect();
            let results = store.insert_many(msgs.clone()).await?;
            for (m, r) in msgs.into_iter().zip(results) {
                if r.new {
                    fresh.push((m, r.late));
                }
            }
        }
        Ok::<(), StoreError>(())
    };
    match tokio::time::timeout(PULL_DEADLINE, work).await {
        Ok(r) => r?,
        Err(_) => tracing::warn!(
            address,
            conversation,
            "pull took too long; keeping what arrived"
        ),
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(a: &str, inc: u64, seq: u64) -> VectorEntry {
        VectorEntry {
            author: a.into(),
            incarnation: inc,
            seq,
        }
    }

    #[test]
    fn ahead_compares_per_author_incarnation() {
        assert!(!ahead(&[], &[]));
        assert!(ahead(&[e("a", 1, 1)], &[]));
        assert!(!ahead(&[e("a", 1, 3)], &[e("A", 1, 3)]));
        assert!(ahead(&[e("a", 1, 4)], &[e("a", 1, 3)]));
        assert!(ahead(&[e("a", 2, 1)], &[e("a", 1, 9)]));
        assert!(!ahead(&[e("a", 1, 2)], &[e("a", 1, 3), e("b", 1, 1)]));
    }
}
