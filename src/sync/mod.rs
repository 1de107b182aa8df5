//! Catching up: how a peer comes to hold what the other members of a
//! conversation hold, without anyone sending again.
//!
//! - [`Syncer::conversation`]: ask every member for its version and vector
//!   at once (short deadline), pull what this peer lacks from the member
//!   with the highest version, then from any member whose vector still holds
//!   something this peer lacks. Pulls are exact (the vector says what is
//!   held) and come in pages. Used on join, on opening a private chat, after
//!   a login, and by anti-entropy.
//! - A holder cannot hold a sync up: a pull that brings no page that checks
//!   for [`STALL_DEADLINE`] (the call's answer included) is abandoned, and
//!   so is one whose page holds nothing that checks (garbage); the sync goes
//!   on to the next holder still ahead. Such a holder is skipped by every
//!   pull for [`SKIP_FOR`], said in the log (not to the person).
//!   [`PULL_DEADLINE`] still bounds a whole pull.
//! - Anti-entropy ([`Syncer::round`]): the same comparison with every member
//!   of every conversation this peer is in, every period and after failures.
//!   A version query carries a digest of the asker's vector, so when nothing
//!   is missing the exchange is a few dozen bytes.
//! - Gap repair (`repair`): a delivered message that skips ahead of what
//!   is held pulls the gap from its sender.
//! - Pushing one's own messages to members a sync showed lacking them.
//!
//! Every pulled page passes the checks of second-hand history before it is
//! stored ([`Admission`]: `peer::intake`'s pull policy): history relayed by
//! a third member is believed only as far as its signatures go.
//!
//! It takes the store, the peer channels and the admission of pages, never
//! the peer.

mod repair;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::names::{Conversation, Nick, NickCell};
use crate::net::Peers;
use crate::proto::{
    ChatMessage, GetVersionRequest, GetVersionResponse, Member, PullHistoryRequest, VectorEntry,
};
use crate::store::{Inserted, PullCursor, Store, StoreError};

/// Deadline of a version query during sync.
pub const VERSION_DEADLINE: Duration = Duration::from_secs(1);
/// How long one whole pull from one peer may take.
pub const PULL_DEADLINE: Duration = Duration::from_secs(60);
/// How long a pull may go without a page that checks (the first one counts
/// from the call) before it is abandoned. An honest holder makes a page in
/// milliseconds; this leaves room for a loaded one, and is far below
/// [`PULL_DEADLINE`].
pub const STALL_DEADLINE: Duration = Duration::from_secs(4);
/// How long a holder that stalled or served garbage is left out of pulls:
/// long enough that later syncs (anti-entropy runs every 30 s) do not wait
/// on it again, short enough that an honest holder that was merely
/// overloaded is asked again soon.
pub const SKIP_FOR: Duration = Duration::from_secs(300);
/// Messages asked for per page.
pub const PAGE_SIZE: u32 = 500;
/// Most own messages pushed to one member after a sync.
const MAX_PUSH: usize = 10_000;

/// What a pulled page must pass before it is stored: the checks of
/// second-hand history (`peer::intake`'s pull policy).
#[async_trait::async_trait]
pub trait Admission: Send + Sync {
    /// Those of `msgs` (a page of `conversation`, from `from`) to store,
    /// and how many were refused (not believable). Those whose author's
    /// key cannot be learnt now are neither: a later sync brings them
    /// again.
    async fn page(
        &self,
        from: &str,
        conversation: &str,
        msgs: Vec<ChatMessage>,
    ) -> (Vec<ChatMessage>, usize);
}

/// Errors of catching up.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Members were asked and none answered: this peer may be behind, and
    /// cannot know.
    #[error("none of the {asked} other member(s) of {conversation} answered")]
    NobodyReachable { conversation: String, asked: usize },
}

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

/// Counters of the work sync does, for measuring what anti-entropy costs.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Version queries sent.
    pub queries: AtomicU64,
    /// Bytes of those queries and their answers (protobuf encoded).
    pub query_bytes: AtomicU64,
    /// Pulls started.
    pub pulls: AtomicU64,
    /// Messages pulled that were new here.
    pub pulled: AtomicU64,
}

/// A snapshot of [`SyncStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    pub queries: u64,
    pub query_bytes: u64,
    pub pulls: u64,
    pub pulled: u64,
}

impl SyncStats {
    pub fn snapshot(&self) -> SyncCounts {
        SyncCounts {
            queries: self.queries.load(Ordering::Relaxed),
            query_bytes: self.query_bytes.load(Ordering::Relaxed),
            pulls: self.pulls.load(Ordering::Relaxed),
            pulled: self.pulled.load(Ordering::Relaxed),
        }
    }
}

/// Called with the messages a background sync (gap repair, anti-entropy,
/// login) stored that were new here, so the person sees them.
pub type OnFresh = Arc<dyn Fn(Vec<(ChatMessage, bool)>) + Send + Sync>;

/// Whether `theirs` holds anything `mine` lacks.
pub fn ahead(theirs: &[VectorEntry], mine: &[VectorEntry]) -> bool {
    theirs.iter().any(|t| {
        let held = mine
            .iter()
            .find(|m| m.incarnation == t.incarnation && m.author.eq_ignore_ascii_case(&t.author))
            .map_or(0, |m| m.seq);
        t.seq > held
    })
}

/// A vector's digest: equal vectors (authors compared without case) have
/// equal digests, whoever computes them.
pub fn digest(vector: &[VectorEntry]) -> Vec<u8> {
    let mut entries: Vec<(String, u64, u64)> = vector
        .iter()
        .filter(|e| e.seq > 0)
        .map(|e| (e.author.to_ascii_lowercase(), e.incarnation, e.seq))
        .collect();
    entries.sort();
    let mut h = Sha256::new();
    for (author, inc, seq) in entries {
        h.update(author.as_bytes());
        h.update([0]);
        h.update(inc.to_be_bytes());
        h.update(seq.to_be_bytes());
    }
    h.finalize().to_vec()
}

/// The catching-up machinery of one peer. Cheap to clone.
#[derive(Clone)]
pub struct Syncer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    peers: Peers,
    admission: Arc<dyn Admission>,
    /// This peer's nick, which a nick change moves.
    me: NickCell,
    on_fresh: OnFresh,
    stats: SyncStats,
    /// Gap repairs waiting to run: see the `repair` module.
    repairs: Mutex<HashMap<repair::Key, u64>>,
    /// Holders that stalled a pull or served garbage, by (nick, key), and
    /// until when they are skipped.
    skipped: Mutex<HashMap<(String, Vec<u8>), Instant>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Syncer {
    /// Background work (pushes, repairs) runs on `tasks` and ends with
    /// `stop`.
    pub fn new(
        store: Store,
        peers: Peers,
        admission: Arc<dyn Admission>,
        me: NickCell,
        on_fresh: OnFresh,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Syncer {
        Syncer {
            inner: Arc::new(Inner {
                store,
                peers,
                admission,
                me,
                on_fresh,
                stats: SyncStats::default(),
                repairs: Mutex::new(HashMap::new()),
                skipped: Mutex::new(HashMap::new()),
                tasks,
                stop,
            }),
        }
    }

    pub fn stats(&self) -> SyncCounts {
        self.inner.stats.snapshot()
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Brings this peer's copy of `conversation` up to the union of what the
    /// reachable `members` hold. Unreachable members are skipped; if every
    /// other member is, that is [`SyncError::NobodyReachable`].
    pub async fn conversation(
        &self,
        conversation: &str,
        members: &[Member],
    ) -> Result<Synced, SyncError> {
        let me = self.inner.me.get();
        let me = me.as_str();
        let others: Vec<&Member> = members
            .iter()
            .filter(|m| !m.nick.eq_ignore_ascii_case(me))
            .collect();
        let mine = self.store().version(conversation).await?;
        let my_digest = digest(&mine.vector);
        let asks = others
            .iter()
            .map(|m| self.get_version(m, conversation, my_digest.clone()));
        let answers: Vec<(&Member, Option<GetVersionResponse>)> =
            others.iter().copied().zip(join_all(asks).await).collect();
        let answered = answers.iter().filter(|(_, a)| a.is_some()).count();
        if !others.is_empty() && answered == 0 {
            return Err(SyncError::NobodyReachable {
                conversation: conversation.to_owned(),
                asked: others.len(),
            });
        }
        // Those with the same vector have nothing to give or take.
        let mut answers: Vec<(&Member, GetVersionResponse)> = answers
            .into_iter()
            .filter_map(|(m, a)| a.filter(|a| !a.same).map(|a| (m, a)))
            .collect();
        // Highest version first: it is the one most likely to hold everything.
        answers.sort_by_key(|a| std::cmp::Reverse(a.1.version));

        let mut synced = Synced::default();
        for (member, answer) in &answers {
            let mine = self.store().version(conversation).await?.vector;
            if !ahead(&answer.vector, &mine) {
                continue;
            }
            let got = self.pull(member, conversation, mine).await?;
            tracing::debug!(from = %member.nick, conversation, pulled = got.len(), "pulled history");
            synced.pulled.extend(got);
        }
        let mine = self.store().version(conversation).await?;
        synced.version = mine.count;
        synced.behind = answers
            .into_iter()
            .filter(|(_, a)| ahead(&mine.vector, &a.vector))
            .map(|(m, a)| (m.clone(), a.vector))
            .collect();
        Ok(synced)
    }

    /// One anti-entropy pass over `conversations` (key and members each):
    /// pulls what any reachable member holds that this peer lacks, and
    /// pushes this peer's own messages to members lacking them. New
    /// messages go to the person. Conversations whose members cannot be
    /// reached are left for the next pass.
    pub async fn round(&self, conversations: Vec<(String, Vec<Member>)>) {
        for (conv, members) in conversations {
            if self.inner.stop.is_cancelled() {
                return;
            }
            match self.conversation(&conv, &members).await {
                Ok(synced) => {
                    self.fresh(synced.pulled);
                    self.push_own(&conv, synced.behind);
                }
                Err(SyncError::NobodyReachable { .. }) => {
                    tracing::debug!(conversation = %conv, "anti-entropy: nobody answered")
                }
                Err(err) => {
                    tracing::warn!(conversation = %conv, cause = %err, "anti-entropy failed")
                }
            }
        }
    }

    /// Every private conversation whose other side `online` shows, with
    /// that member: what anti-entropy compares besides rooms.
    pub async fn private_conversations(
        &self,
        online: impl Fn(&str) -> Option<Member>,
    ) -> Vec<(String, Vec<Member>)> {
        let keys = match self.store().conversations().await {
            Ok(keys) => keys,
            Err(err) => {
                tracing::warn!(cause = %err, "cannot list conversations");
                return Vec::new();
            }
        };
        keys.into_iter()
            .filter_map(|key| {
                let member = self
                    .private_partner(&key)
                    .and_then(|n| online(n.as_str()))?;
                Some((key, vec![member]))
            })
            .collect()
    }

    /// The other party of every private conversation held.
    pub async fn private_partners(&self) -> Vec<Nick> {
        match self.store().conversations().await {
            Ok(keys) => keys
                .iter()
                .filter_map(|k| self.private_partner(k))
                .collect(),
            Err(err) => {
                tracing::warn!(cause = %err, "cannot list conversations");
                Vec::new()
            }
        }
    }

    /// The other party of a private conversation key, if it is one of ours.
    fn private_partner(&self, key: &str) -> Option<Nick> {
        let Ok(Conversation::Private(a, b)) = Conversation::parse_key(key) else {
            return None;
        };
        let me = self.inner.me.get().key();
        let other = if a == me {
            b
        } else if b == me {
            a
        } else {
            return None;
        };
        Nick::parse(&other).ok()
    }

    fn fresh(&self, msgs: Vec<(ChatMessage, bool)>) {
        if !msgs.is_empty() {
            (self.inner.on_fresh)(msgs);
        }
    }

    /// Hands members that a sync showed lacking some of this peer's own
    /// messages (sent just before a crash, say) what they lack, in the
    /// background.
    pub fn push_own(&self, conversation: &str, behind: Vec<(Member, Vec<VectorEntry>)>) {
        for (member, vector) in behind {
            let s = self.clone();
            let conv = conversation.to_owned();
            self.inner.tasks.spawn(async move {
                match s.own_missing(&conv, vector).await {
                    Ok(msgs) => {
                        // Whatever is not taken now, the next sync offers again.
                        s.inner.peers.deliver_all(&member, msgs).await;
                    }
                    Err(err) => tracing::warn!(cause = %err, "cannot read own messages to push"),
                }
            });
        }
    }

    /// This peer's own messages of `conversation` that a member holding
    /// `theirs` lacks, in order.
    pub async fn own_missing(
        &self,
        conversation: &str,
        theirs: Vec<VectorEntry>,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let me = self.inner.me.get().to_string();
        let mut own = Vec::new();
        let mut cursor = Some(PullCursor::default());
        while let Some(at) = cursor {
            let (page, next) = self
                .store()
                .missing_page(
                    conversation,
                    theirs.clone(),
                    Some(me.clone()),
                    at,
                    PAGE_SIZE as usize,
                )
                .await?;
            own.extend(page);
            if own.len() >= MAX_PUSH {
                own.truncate(MAX_PUSH);
                break;
            }
            cursor = next;
        }
        Ok(own)
    }

    async fn get_version(
        &self,
        member: &Member,
        conversation: &str,
        digest: Vec<u8>,
    ) -> Option<GetVersionResponse> {
        use prost::Message;
        let address = member.address.as_str();
        let mut client = self.inner.peers.client(member).ok()?;
        let ask = GetVersionRequest {
            conversation: conversation.to_owned(),
            digest,
        };
        let stats = &self.inner.stats;
        stats.queries.fetch_add(1, Ordering::Relaxed);
        stats
            .query_bytes
            .fetch_add(ask.encoded_len() as u64, Ordering::Relaxed);
        let mut req = tonic::Request::new(ask);
        req.set_timeout(VERSION_DEADLINE);
        match tokio::time::timeout(VERSION_DEADLINE, client.get_version(req)).await {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                stats
                    .query_bytes
                    .fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
                Some(resp)
            }
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

    /// Whether `member` is being skipped (it stalled or served garbage
    /// within the last [`SKIP_FOR`]).
    fn is_skipped(&self, member: &Member) -> bool {
        let mut skipped = self.inner.skipped.lock().unwrap_or_else(|p| p.into_inner());
        // Expired entries go now, so the table holds only current ones.
        let now = Instant::now();
        skipped.retain(|_, until| *until > now);
        skipped.contains_key(&holder(member))
    }

    /// Leaves `member` out of pulls for [`SKIP_FOR`], and says why in the log.
    fn skip(&self, member: &Member, conversation: &str, why: &str) {
        tracing::warn!(
            from = %member.nick,
            address = %member.address,
            conversation,
            skip_secs = SKIP_FOR.as_secs(),
            "abandoned a pull: {why}; skipping this holder for a while"
        );
        self.inner
            .skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(holder(member), Instant::now() + SKIP_FOR);
    }

    /// Pulls from `member` every message of `conversation` not covered by
    /// `have`, checking and storing each page as it arrives. Returns the
    /// messages that were new here, with their `late` flags. A peer failing
    /// mid-pull keeps what arrived so far; so does one abandoned for
    /// stalling or serving garbage (see the module's doc), which is then
    /// skipped. A member being skipped is not asked at all.
    pub async fn pull(
        &self,
        member: &Member,
        conversation: &str,
        have: Vec<VectorEntry>,
    ) -> Result<Vec<(ChatMessage, bool)>, SyncError> {
        let mut fresh = Vec::new();
        let address = member.address.as_str();
        if self.is_skipped(member) {
            tracing::debug!(from = %member.nick, address, conversation, "holder skipped for now");
            return Ok(fresh);
        }
        let Ok(mut client) = self.inner.peers.client(member) else {
            return Ok(fresh);
        };
        self.inner.stats.pulls.fetch_add(1, Ordering::Relaxed);
        let req = PullHistoryRequest {
            conversation: conversation.to_owned(),
            have,
            page_size: PAGE_SIZE,
        };
        let store = self.store();
        let work = async {
            // Time spent waiting on the holder since the last page that
            // checked (only waiting: checking and storing here are not the
            // holder's doing). Past STALL_DEADLINE the pull is abandoned.
            let mut waited = Duration::ZERO;
            let start = Instant::now();
            let mut pages =
                match tokio::time::timeout(STALL_DEADLINE, client.pull_history(req)).await {
                    Ok(Ok(resp)) => resp.into_inner(),
                    Ok(Err(status)) => {
                        tracing::debug!(address, %status, "pull refused");
                        return Ok(());
                    }
                    Err(_) => {
                        self.skip(member, conversation, "no answer to the call");
                        return Ok(());
                    }
                };
            // Each page is checked while the one before is being stored:
            // the signatures and the commit run side by side. One page at
            // a time goes to the store, in order.
            let mut storing: Option<tokio::task::JoinHandle<Stored>> = None;
            waited += start.elapsed();
            loop {
                let start = Instant::now();
                let next =
                    tokio::time::timeout(STALL_DEADLINE.saturating_sub(waited), pages.next());
                let next = next.await;
                waited += start.elapsed();
                let page = match next {
                    Ok(Some(Ok(p))) => p,
                    Ok(Some(Err(status))) => {
                        tracing::debug!(address, %status, "pull broken off");
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.skip(member, conversation, "no page that checks came in time");
                        break;
                    }
                };
                let sent = page.messages.len();
                let (msgs, refused) = self
                    .inner
                    .admission
                    .page(&member.nick, conversation, page.messages)
                    .await;
                if sent > 0 && refused == sent {
                    // Not one message of it is believable: garbage.
                    self.skip(member, conversation, "a page in which nothing checks");
                    break;
                }
                if refused < sent {
                    waited = Duration::ZERO;
                }
                if let Some(prev) = storing.take() {
                    fresh.extend(stored(&member.nick, store, prev.await)?);
                }
                let store = store.clone();
                // On the peer's tracker: a stopping peer waits for the
                // page's store job rather than dropping it mid-way.
                storing = Some(self.inner.tasks.spawn(async move {
                    let results = store.insert_many(msgs.clone()).await;
                    (msgs, results)
                }));
            }
            if let Some(prev) = storing.take() {
                fresh.extend(stored(&member.nick, store, prev.await)?);
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
        self.inner
            .stats
            .pulled
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        self.inner.peers.metrics().message_in("pull", fresh.len());
        Ok(fresh)
    }
}

/// Who a holder is, for skipping it: its nick and the key it is bound to.
fn holder(member: &Member) -> (String, Vec<u8>) {
    (member.nick.to_ascii_lowercase(), member.key.clone())
}

/// A page of a pull and what storing it found.
type Stored = (Vec<ChatMessage>, Result<Vec<Inserted>, StoreError>);

/// The messages of a stored page that were new here, with their `late`
/// flags; the store's error if it could not store the page.
fn stored(
    from: &str,
    store: &Store,
    done: Result<Stored, tokio::task::JoinError>,
) -> Result<Vec<(ChatMessage, bool)>, StoreError> {
    // The task ends early only if it panicked or the runtime is stopping:
    // either way this store is gone for this pull.
    let (msgs, results) = done.map_err(|_| StoreError::Closed {
        path: store.path().to_path_buf(),
    })?;
    let mut fresh = Vec::new();
    for (m, r) in msgs.into_iter().zip(results?) {
        if r.implausible {
            tracing::warn!(from, author = %m.author, seq = m.seq, lamport = m.lamport, "refused a message whose clock runs implausibly far ahead");
        }
        if r.new {
            fresh.push((m, r.late));
        }
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

    #[test]
    fn digests_agree_on_equal_vectors_only() {
        let v = [e("Alice", 1, 3), e("bob", 2, 1)];
        let same = [e("bob", 2, 1), e("alice", 1, 3)];
        assert_eq!(digest(&v), digest(&same));
        assert_ne!(digest(&v), digest(&[e("alice", 1, 4), e("bob", 2, 1)]));
        assert_ne!(digest(&v), digest(&[e("alice", 1, 3)]));
        assert_eq!(digest(&[]), digest(&[e("carol", 9, 0)]));
    }
}
