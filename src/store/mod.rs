//! A peer's durable history: one SQLite file (WAL mode) holding every message
//! of every conversation this peer takes part in, each conversation's version
//! (message count) and version vector, the outbox of messages still owed to
//! members who could not be reached, and the peer's incarnation (drawn once when
//! the file is created; the identity key lives beside it, see
//! `identity.rs`) and the rooms it is
//! in. A file written by an older parley is upgraded in place at open, in one
//! transaction; one from a newer parley is refused. It also owns the
//! data directory's lock, so two peers never share one history. A [`Store`] is a
//! cheap handle sending commands to one dedicated writer thread, which runs
//! everything queued at that moment in one transaction (group commit) and
//! replies only after the commit, so a reply means the data is on disk. Two
//! exceptions to "SQLite never runs on the async runtime": a job of a few
//! rows (a message written or taken) begun while no other call is under way
//! runs at once on the caller's thread, in its own transaction, because its
//! two hops to the writer thread and back cost as much as the job and its
//! commit; and an own message's allocation (two index lookups) reads on a
//! connection of its own, so that a sender never waits for the writer
//! before its message can leave.
//!
//! The queue to the writer is bounded (`QUEUE_DEPTH`, 4096 commands). When it is
//! full, callers wait for room (backpressure): nothing is dropped or refused,
//! and a caller that gives up while waiting has queued nothing. Each job does
//! bounded work (reads are paged) so no caller waits behind a long scan.

mod db;
mod error;
#[cfg(test)]
mod tests;
mod unchecked;

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

pub use error::StoreError;

use crate::proto::{ChatMessage, Kind, VectorEntry};
use db::Direction;

/// The most commands one transaction takes, so a flood of callers cannot
/// hold replies back indefinitely.
const MAX_BATCH: usize = 512;

/// The most commands waiting for the writer. Past it callers wait to queue
/// (backpressure), so a burst costs latency rather than unbounded memory;
/// a few full batches deep, so the writer never idles while callers wait.
const QUEUE_DEPTH: usize = 4096;

/// The most messages [`Store::insert_many`] may store in place on the
/// caller's thread (see [`Store::call_as`]); a link's batch under light
/// load.
const SMALL_BATCH: usize = 8;

/// Rows per job when [`Store::all`] or [`Store::history`] reads a
/// conversation.
const READ_PAGE: usize = 1000;

/// Who this peer is across restarts: drawn once when its history is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Random, nonzero; part of every own message's identity.
    pub incarnation: u64,
}

/// What storing a message found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inserted {
    /// False when the message (same author, incarnation, seq, conversation)
    /// was already held; nothing was changed.
    pub new: bool,
    /// A message later in display order was already held: this one was
    /// written during a partition and is shown marked late.
    pub late: bool,
    /// Something from this author incarnation below this seq is still
    /// missing (reported for duplicates too, so redelivery can trigger
    /// repair).
    pub gap: bool,
    /// Not stored: its seq or Lamport time runs implausibly far ahead of
    /// what is held (the bounded-clocks rule, see `db::implausible`).
    pub implausible: bool,
    /// Not stored: a room's creation event while the history holds a
    /// different one (another author, incarnation or seq). A room has one
    /// creation, the first this peer held: a second, however it is dated,
    /// is someone claiming the room.
    pub rival_creation: bool,
}

/// A conversation's version: its message count and version vector.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Version {
    /// How many messages are held.
    pub count: u64,
    /// Per author incarnation, the highest seq held with no gap below it.
    /// Incarnations still missing their seq 1 are omitted (they cover
    /// nothing). Sorted by lowercased author, then incarnation.
    pub vector: Vec<VectorEntry>,
}

/// A position in a conversation's display order.
///
/// Field order is the display order, so the derived `Ord` is that order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    pub lamport: u64,
    pub author_lower: String,
    pub incarnation: u64,
    pub seq: u64,
}

impl OrderKey {
    pub fn of(m: &ChatMessage) -> OrderKey {
        OrderKey {
            lamport: m.lamport,
            author_lower: m.author.to_ascii_lowercase(),
            incarnation: m.incarnation,
            seq: m.seq,
        }
    }
}

/// Where a paged read of what a peer lacks has got to. Opaque; start with
/// `PullCursor::default()`. See [`Store::missing_page`].
#[derive(Debug, Clone, Default)]
pub struct PullCursor {
    /// `None` before the first page.
    state: Option<db::PullState>,
}

/// A message's identity. Seq counts per conversation, so the conversation is
/// part of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId {
    pub conversation: String,
    pub author_lower: String,
    pub incarnation: u64,
    pub seq: u64,
}

impl MsgId {
    pub fn of(m: &ChatMessage) -> MsgId {
        MsgId {
            conversation: m.conversation.clone(),
            author_lower: m.author.to_ascii_lowercase(),
            incarnation: m.incarnation,
            seq: m.seq,
        }
    }
}

/// Holds the data directory's lock; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where parley keeps its data by default: `$XDG_DATA_HOME/parley`, else
/// `~/.local/share/parley`. Peers keep a directory per nick under it; a
/// router keeps its key there.
pub fn data_home() -> Result<PathBuf, String> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .ok_or("neither XDG_DATA_HOME nor HOME is set")?;
            PathBuf::from(home).join(".local").join("share")
        }
    };
    Ok(base.join("parley"))
}

/// Creates `dir` if needed and takes an exclusive lock on `dir/lock`, so two
/// peers never write one history. The lock is an OS file lock: it goes away
/// with the process, however that ends.
pub fn lock_data_dir(dir: &Path) -> Result<DirLock, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file, path }),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            dir: dir.to_path_buf(),
            lock: path,
        }),
        Err(TryLockError::Error(e)) => Err(StoreError::io(&path, e)),
    }
}

/// Deferred reply: called after the batch's commit with the commit's error,
/// if any, so no caller hears "done" before the data is durable.
type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// What running one command produced: its deferred reply, and its error if
/// it failed (its savepoint is then rolled back).
struct Outcome {
    reply: Reply,
    error: Option<StoreError>,
}

/// A queued command. Given the connection it runs; given an error (the
/// transaction could not be started) it only reports that error.
type Job = Box<dyn FnOnce(Result<&Connection, StoreError>, &Path) -> Outcome + Send>;

/// Whether a call may run on its caller's thread (see [`Store::call_as`]).
#[derive(Clone, Copy)]
enum InPlace {
    Never,
    WhenAlone,
}

impl InPlace {
    /// Storing `n` received messages: in place only for a small batch.
    fn for_batch(n: usize) -> InPlace {
        if n <= SMALL_BATCH {
            InPlace::WhenAlone
        } else {
            InPlace::Never
        }
    }
}

/// One call under way, counted in [`Store`]'s `busy` until dropped (also
/// when its caller gives up waiting).
struct Busy<'a> {
    count: &'a std::sync::atomic::AtomicUsize,
    /// No other call was under way when this one began.
    alone: bool,
}

impl<'a> Busy<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Busy<'a> {
        let before = count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Busy {
            count,
            alone: before == 0,
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// `f` as a job, and where its result will be sent once its batch commits.
fn job<T, F>(f: F) -> (Job, oneshot::Receiver<Result<T, StoreError>>)
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
{
    let (reply_tx, reply_rx) = oneshot::channel();
    let job: Job = Box::new(move |conn, path| {
        let result = conn.and_then(|c| f(c).map_err(|e| StoreError::sqlite(path, e)));
        let error = result.as_ref().err().cloned();
        let reply: Reply = Box::new(move |commit_err| {
            let result = match commit_err {
                Some(e) if result.is_ok() => Err(e.clone()),
                _ => result,
            };
            // The caller may have given up waiting; that is fine.
            let _ = reply_tx.send(result);
        });
        Outcome { reply, error }
    });
    (job, reply_rx)
}

/// A handle on a peer's history. Cloning is cheap; all clones talk to the
/// same writer thread, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
    writer: Arc<std::sync::Mutex<Writer>>,
    /// Calls under way (queued, running or awaiting their reply).
    busy: Arc<std::sync::atomic::AtomicUsize>,
    identity: Arc<Identity>,
    /// Signs this peer's own messages as they are written; none for a
    /// store opened without a key (tools, tests of the store alone).
    signer: Option<Arc<crate::identity::Identity>>,
    /// The last seq and Lamport time allocated to an own message, per
    /// (conversation, author, incarnation): see [`Store::allocate_own`].
    issued: Issued,
    /// Reads that must not wait for the writer: see [`Store::allocate_own`].
    reader: Arc<std::sync::Mutex<Connection>>,
    path: Arc<PathBuf>,
}

/// (conversation, lowercased author, incarnation) -> (seq, Lamport time).
type Issued = Arc<std::sync::Mutex<HashMap<(String, String, u64), (u64, u64)>>>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the history at `path`, creating the file, schema and identity
    /// if it does not exist. An existing file that is not a readable parley
    /// history is reported as [`StoreError::Corrupt`] and never touched.
    /// Blocking: call from `spawn_blocking` in async code.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_signed(path, None)
    }

    /// [`Store::open`], signing every own message with `signer`.
    pub fn open_signed(
        path: &Path,
        signer: Option<Arc<crate::identity::Identity>>,
    ) -> Result<Store, StoreError> {
        let (conn, identity) = db::open(path)?;
        let checkpoints = db::open_checkpointer(path)?;
        let reader = db::open_reader(path)?;
        let (tx, rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        // One nudge waiting is enough: the checkpoint copies whatever the
        // WAL holds by the time it runs.
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        let owned = path.to_path_buf();
        std::thread::Builder::new()
            .name("parley-checkpoint".into())
            .spawn(move || checkpointer(checkpoints, &owned, nudged))
            .map_err(|e| StoreError::io(path, e))?;
        let shared = Arc::new(std::sync::Mutex::new(Writer {
            conn,
            next_nudge: CHECKPOINT_FRAMES,
            checkpoint_due: false,
            nudge,
        }));
        let owned = path.to_path_buf();
        let on_thread = shared.clone();
        std::thread::Builder::new()
            .name("parley-store".into())
            .spawn(move || writer(on_thread, &owned, rx))
            .map_err(|e| StoreError::io(path, e))?;
        Ok(Store {
            tx,
            writer: shared,
            busy: Arc::default(),
            signer,
            issued: Arc::default(),
            reader: Arc::new(std::sync::Mutex::new(reader)),
            identity: Arc::new(identity),
            path: Arc::new(path.to_path_buf()),
        })
    }

    /// This peer's identity, read at open.
    pub fn identity(&self) -> Identity {
        (*self.identity).clone()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer thread inside the current batch's transaction
    /// and waits for the batch to commit.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.call_as(InPlace::Never, f).await
    }

    /// [`Store::call`], or, for a job of a few rows (`InPlace::WhenAlone`:
    /// a message written or taken) begun while no other call is under way,
    /// at once on the caller's thread in its own transaction. That costs
    /// the job and its commit (tens of µs) and saves two thread hops, each
    /// as long. Under load it queues like any other, so the writer's group
    /// commit still takes many in one transaction.
    async fn call_as<T, F>(&self, in_place: InPlace, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (job, reply) = job(f);
        let busy = Busy::enter(&self.busy);
        let job = match in_place {
            InPlace::WhenAlone if busy.alone => self.run_if_idle(job),
            _ => Some(job),
        };
        if let Some(job) = job {
            // Waits for room when the queue is full; see the module doc.
            self.tx.send(job).await.map_err(|_| self.closed())?;
        }
        reply.await.map_err(|_| self.closed())?
    }

    /// Runs `job` here and now if the writer is idle; else hands it back.
    fn run_if_idle(&self, job: Job) -> Option<Job> {
        let mut w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => recover(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => return Some(job),
        };
        if w.checkpoint_due {
            return Some(job);
        }
        w.run(&self.path, &mut vec![job], false);
        None
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            path: self.path.to_path_buf(),
        }
    }

    /// Stores a received message. Storing the same identity twice is a
    /// no-op (`new == false`).
    pub async fn insert(&self, msg: ChatMessage) -> Result<Inserted, StoreError> {
        self.call_as(InPlace::WhenAlone, move |c| db::insert(c, &msg))
            .await
    }

    /// Stores many messages in one transaction; one result per message, in
    /// the same order.
    pub async fn insert_many(&self, msgs: Vec<ChatMessage>) -> Result<Vec<Inserted>, StoreError> {
        self.call_as(InPlace::for_batch(msgs.len()), move |c| {
            db::insert_many(c, &msgs)
        })
        .await
    }

    /// [`Store::insert_many`] of messages taken from their author over
    /// its own link, whose signatures are not checked yet: each new one
    /// is marked unchecked under `key` (the key the link proved) in the
    /// same transaction, and is not served (pulls, versions) until
    /// [`Store::settle`] ends its wait.
    pub async fn insert_unchecked(
        &self,
        msgs: Vec<ChatMessage>,
        key: [u8; 32],
    ) -> Result<Vec<Inserted>, StoreError> {
        self.call_as(InPlace::for_batch(msgs.len()), move |c| {
            unchecked::insert(c, &msgs, &key)
        })
        .await
    }

    /// Up to `limit` messages waiting for their signature check, each with
    /// the key its link proved.
    pub async fn unchecked(&self, limit: usize) -> Result<Vec<(Vec<u8>, ChatMessage)>, StoreError> {
        self.call(move |c| unchecked::waiting(c, limit)).await
    }

    /// Ends the wait of checked messages: `good` are served from now on;
    /// `bad` leave their conversation (count, vector and display) and are
    /// returned as they were held.
    pub async fn settle(
        &self,
        good: Vec<MsgId>,
        bad: Vec<MsgId>,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.call(move |c| unchecked::settle(c, &good, &bad)).await
    }

    /// Stores this peer's own new message: seq is one past the highest held
    /// for (conversation, author, incarnation), lamport one past the highest
    /// in the conversation (see [`Store::allocate_own`]); the message and an
    /// outbox entry for every nick in `pending` are written in one
    /// transaction.
    pub async fn append_own(
        &self,
        conversation: &str,
        author: &str,
        incarnation: u64,
        body: &str,
        sent_at_ms: i64,
        pending: Vec<String>,
    ) -> Result<ChatMessage, StoreError> {
        self.append_own_kind(
            conversation,
            author,
            incarnation,
            (Kind::Text, body),
            sent_at_ms,
            pending,
        )
        .await
    }

    /// [`Store::append_own`] for a message of any kind (an event).
    pub async fn append_own_kind(
        &self,
        conversation: &str,
        author: &str,
        incarnation: u64,
        (kind, body): (Kind, &str),
        sent_at_ms: i64,
        pending: Vec<String>,
    ) -> Result<ChatMessage, StoreError> {
        let msg = self
            .allocate_own(conversation, author, incarnation, (kind, body), sent_at_ms)
            .await?;
        self.write_own(msg.clone(), pending).await?;
        Ok(msg)
    }

    /// This peer's next message of `conversation`, not written yet: its
    /// seq and Lamport time allocated as [`Store::append_own`] would (and
    /// past every one allocated before, written or not), and signed.
    /// [`Store::write_own`] writes it, so that a sender can write while the
    /// message is on its way. A message allocated and never written (its
    /// write failed) leaves its seq unused for good: a gap, never a seq
    /// given to two messages.
    ///
    /// It never waits for the writer: it reads on a connection of its own,
    /// here, what is committed (a received message still being written is
    /// not shown yet, so nothing written after it was seen).
    pub async fn allocate_own(
        &self,
        conversation: &str,
        author: &str,
        incarnation: u64,
        (kind, body): (Kind, &str),
        sent_at_ms: i64,
    ) -> Result<ChatMessage, StoreError> {
        let mut msg = ChatMessage {
            conversation: conversation.to_string(),
            author: author.to_string(),
            incarnation,
            seq: 0,
            lamport: 0,
            sent_at_ms,
            body: body.to_string(),
            signature: Vec::new(),
            kind: kind as i32,
        };
        let key = (
            msg.conversation.clone(),
            msg.author.to_ascii_lowercase(),
            incarnation,
        );
        {
            let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            // A plain map: a panic elsewhere cannot leave it half-updated.
            let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
            let (seq, lamport) =
                db::next_own(&reader, &key.0, &key.1, key.2, issued.get(&key).copied())
                    .map_err(|e| StoreError::sqlite(&self.path, e))?;
            (msg.seq, msg.lamport) = (seq, lamport);
            issued.insert(key, (seq, lamport));
        }
        if let Some(id) = &self.signer {
            id.sign_message(&mut msg);
        }
        Ok(msg)
    }

    /// Writes `msg` (from [`Store::allocate_own`]) and an outbox entry for
    /// every nick in `pending`, in one transaction.
    pub async fn write_own(
        &self,
        msg: ChatMessage,
        pending: Vec<String>,
    ) -> Result<(), StoreError> {
        self.call_as(InPlace::WhenAlone, move |c| {
            db::write_own(c, &msg, &pending)
        })
        .await
    }

    /// The room's creation event as this history holds it (one since
    /// [`Inserted::rival_creation`]; of several kept from before, the
    /// earliest by send time). Its author owns the room.
    pub async fn creation(&self, conversation: &str) -> Result<Option<ChatMessage>, StoreError> {
        let conversation = conversation.to_string();
        self.call(move |c| db::creation(c, &conversation)).await
    }

    /// The room's topic event: the latest in the room's order, if any.
    pub async fn topic(&self, conversation: &str) -> Result<Option<ChatMessage>, StoreError> {
        let conversation = conversation.to_string();
        self.call(move |c| db::topic(c, &conversation)).await
    }

    /// The conversation's message count and version vector.
    pub async fn version(&self, conversation: &str) -> Result<Version, StoreError> {
        let conversation = conversation.to_string();
        // What waits for its signature check is not counted (unchecked.rs).
        self.call(move |c| {
            let mut version = db::version(c, &conversation)?;
            unchecked::discount(c, &conversation, &mut version)?;
            Ok(version)
        })
        .await
    }

    /// Up to `limit` messages of `conversation` not covered by `have`
    /// (author case-insensitive, same incarnation, seq <= entry's seq) and
    /// not returned by earlier pages of this cursor, restricted to `author`
    /// (case-insensitive) when given. Returns the page and the cursor for
    /// the next one; `None` when nothing is left. A message stored at any
    /// time before the final page is read is returned by some page (none
    /// skipped), none twice.
    ///
    /// Pages come in display order as far as the cursor allows: what was
    /// held when the pull started comes first, in display order across
    /// pages; what was stored during the pull comes after it (sorted into
    /// the page where the two meet). A page may
    /// be short, even empty, while the cursor is `Some`: keep going until
    /// it is `None`. Pass the same `have` and `author` with every page of
    /// one cursor. A `limit` of 0 is taken as 1.
    ///
    /// Reads go through indexes: a page costs about the rows it returns
    /// plus the author incarnations still being served, never the covered
    /// history (past the first page, also the messages stored during the
    /// pull).
    pub async fn missing_page(
        &self,
        conversation: &str,
        have: Vec<VectorEntry>,
        author: Option<String>,
        cursor: PullCursor,
        limit: usize,
    ) -> Result<(Vec<ChatMessage>, Option<PullCursor>), StoreError> {
        let conversation = conversation.to_string();
        // What waits for its signature check is never served (unchecked.rs).
        self.call(move |c| {
            let (mut page, next) =
                db::missing_page(c, &conversation, &have, author.as_deref(), cursor, limit)?;
            unchecked::withhold(c, &conversation, &mut page)?;
            Ok((page, next))
        })
        .await
    }

    /// The VM steps the pull's statements took since the last call.
    #[cfg(test)]
    pub(crate) async fn take_pull_steps(&self) -> u64 {
        self.call(|_| Ok(db::take_pull_steps()))
            .await
            .expect("the test's store is open")
    }

    /// The last `limit` messages in display order, oldest first.
    pub async fn history(
        &self,
        conversation: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut newest = self.read(conversation, Direction::Newest, limit).await?;
        newest.reverse();
        Ok(newest)
    }

    /// A person's setting kept with the history (who is ignored): it
    /// lives as long as the data directory does.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.call(move |c| db::setting(c, &key)).await
    }

    /// Sets a setting; see [`Store::setting`].
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call(move |c| db::set_setting(c, &key, &value)).await
    }

    /// `/lastlog`: the newest `limit` lines of any conversation holding
    /// every word of `text` (as words or their starts, any case), oldest
    /// first. Lines stored since the last search are indexed first, in
    /// jobs of [`READ_PAGE`] rows so the writer is never held for long.
    pub async fn search(&self, text: &str, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        let Some(query) = db::text_query(text) else {
            return Ok(Vec::new());
        };
        while self.call(|c| db::index_text(c, READ_PAGE)).await? > 0 {}
        let mut found = self
            .call(move |c| db::search_text(c, &query, limit))
            .await?;
        found.reverse();
        Ok(found)
    }

    /// Every message of the conversation in display order.
    pub async fn all(&self, conversation: &str) -> Result<Vec<ChatMessage>, StoreError> {
        self.read(conversation, Direction::Oldest, usize::MAX).await
    }

    /// Up to `limit` messages of the conversation in `direction`, read in
    /// jobs of at most [`READ_PAGE`] rows, so a long read never holds the
    /// writer for long. The pages are not one snapshot: a message stored
    /// meanwhile may or may not be included.
    async fn read(
        &self,
        conversation: &str,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut out = Vec::new();
        let mut from: Option<OrderKey> = None;
        while out.len() < limit {
            let conversation = conversation.to_string();
            let at = from.take();
            let want = (limit - out.len()).min(READ_PAGE);
            let page = self
                .call(move |c| db::ordered_page(c, &conversation, direction, at.as_ref(), want))
                .await?;
            let done = page.len() < want;
            from = page.last().map(OrderKey::of);
            out.extend(page);
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Every conversation key with at least one message, sorted.
    pub async fn conversations(&self) -> Result<Vec<String>, StoreError> {
        self.call(db::conversations).await
    }

    /// Records that `recipient` (any case) is still owed these messages.
    pub async fn outbox_add(&self, recipient: &str, msg_ids: Vec<MsgId>) -> Result<(), StoreError> {
        let recipient = recipient.to_string();
        self.call(move |c| db::outbox_add(c, &recipient, &msg_ids))
            .await
    }

    /// The first `limit` messages owed to `recipient` (any case), by
    /// conversation, then display order. Read from an index: the cost is
    /// the page's, not the queue's.
    pub async fn outbox_for(
        &self,
        recipient: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let recipient = recipient.to_string();
        self.call(move |c| db::outbox_for(c, &recipient, limit))
            .await
    }

    /// Forgets the given entries of `recipient`'s outbox (delivered).
    pub async fn outbox_done(&self, recipient: &str, ids: Vec<MsgId>) -> Result<(), StoreError> {
        let recipient = recipient.to_string();
        self.call(move |c| db::outbox_done(c, &recipient, &ids))
            .await
    }

    /// Records that this peer is in room `name`. Idempotent: rooms are keyed
    /// by the ASCII-lowercased name, and the name first written is kept.
    pub async fn rooms_add(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| db::rooms_add(c, &name)).await
    }

    /// Records that this peer left room `name` (any case). Leaving a room
    /// not held is a no-op.
    pub async fn rooms_remove(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| db::rooms_remove(c, &name)).await
    }

    /// The rooms this peer is in, as first written, sorted by lowercased
    /// name.
    pub async fn rooms(&self) -> Result<Vec<String>, StoreError> {
        self.call(db::rooms).await
    }

    /// Forgets delivered entries of many recipients' outboxes in one job:
    /// per recipient (any case), the entries given.
    pub async fn outbox_done_many(
        &self,
        done: Vec<(String, Vec<MsgId>)>,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            done.iter()
                .try_for_each(|(recipient, ids)| db::outbox_done(c, recipient, ids))
        })
        .await
    }

    /// Every recipient (lowercased) with something in the outbox, sorted.
    pub async fn outbox_recipients(&self) -> Result<Vec<String>, StoreError> {
        self.call(db::outbox_recipients).await
    }
}

/// The writer's connection and its WAL bookkeeping. The writer thread holds
/// it for a batch; a caller with a small job holds it for that job when no
/// other call is under way (see [`Store::call_as`]).
struct Writer {
    conn: Connection,
    /// WAL frames at which the checkpointer is next nudged.
    next_nudge: u64,
    /// The WAL has outgrown what the checkpointer keeps up with, and the
    /// writer thread must checkpoint after its next batch.
    checkpoint_due: bool,
    /// Dropped after `conn` (field order), which tells the checkpointer to
    /// empty the WAL and finish.
    nudge: std::sync::mpsc::SyncSender<()>,
}

impl Writer {
    /// Runs `batch` in one transaction, then looks after the WAL.
    fn run(&mut self, path: &Path, batch: &mut Vec<Job>, on_writer_thread: bool) {
        // Whatever an earlier commit on this thread left is not this batch's.
        let _ = db::take_wal_frames();
        run_batch(&self.conn, path, batch);
        let Some(frames) = db::take_wal_frames() else {
            return; // nothing written
        };
        if frames < self.next_nudge.saturating_sub(CHECKPOINT_FRAMES) {
            self.next_nudge = CHECKPOINT_FRAMES; // the WAL started over
        }
        if frames >= self.next_nudge {
            // Full means one is already waiting to run.
            let _ = self.nudge.try_send(());
            self.next_nudge = frames + CHECKPOINT_FRAMES;
        }
        // The WAL starts over only at a commit that finds all of it copied:
        // writes that never pause for as long as a checkpoint takes keep
        // that from happening. Past a bound the writer checkpoints itself,
        // between two batches, as SQLite would have; never on a caller's
        // thread (milliseconds): the next job queues for the writer instead.
        self.checkpoint_due = frames >= WAL_FRAMES_AT_MOST;
        if self.checkpoint_due && on_writer_thread {
            self.checkpoint_due = false;
            if let Err(e) = db::checkpoint(&self.conn, false) {
                tracing::warn!(path = %path.display(), cause = %e, "WAL checkpoint failed");
            }
        }
    }
}

/// The writer, however its last holder ended: a job that panicked may have
/// left its transaction open, and it is rolled back (the job's caller never
/// heard success).
fn recover(w: std::sync::MutexGuard<'_, Writer>) -> std::sync::MutexGuard<'_, Writer> {
    if !w.conn.is_autocommit() {
        let _ = w.conn.execute_batch("ROLLBACK");
    }
    w
}

fn lock_writer(writer: &std::sync::Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    writer.lock().unwrap_or_else(|p| recover(p.into_inner()))
}

/// The writer thread: runs the queued jobs, many per transaction, until
/// every [`Store`] handle is dropped.
fn writer(shared: Arc<std::sync::Mutex<Writer>>, path: &Path, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // A plain thread, outside any runtime, so blocking here is what it is for.
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        lock_writer(&shared).run(path, &mut batch, true);
    }
    tracing::debug!(path = %path.display(), "store writer stopped");
    // Dropping the last handle on the writer closes the connection, then
    // tells the checkpointer to finish.
}

/// WAL frames (a page each) between two checkpoints, as SQLite's default.
const CHECKPOINT_FRAMES: u64 = 1000;
/// WAL frames past which the writer checkpoints itself: 16 MiB of
/// `db::PAGE_SIZE` pages (64 MiB in a file from before it, of 4 KiB).
const WAL_FRAMES_AT_MOST: u64 = 16 * 1024;
/// Passes the checkpointer makes after a nudge to catch up with a writer
/// that appended while it copied; each copies only what came meanwhile.
const CATCH_UP_PASSES: usize = 4;

/// Checkpoints the WAL when the writer says it has grown, on its own
/// connection and thread, so no message waits for one; empties the WAL once
/// the writer has stopped.
fn checkpointer(conn: Connection, path: &Path, nudged: std::sync::mpsc::Receiver<()>) {
    while nudged.recv().is_ok() {
        for _ in 0..CATCH_UP_PASSES {
            match db::checkpoint(&conn, false) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), cause = %e, "WAL checkpoint failed");
                    break;
                }
            }
        }
    }
    if let Err(e) = db::checkpoint(&conn, true) {
        tracing::debug!(path = %path.display(), cause = %e, "final WAL checkpoint failed");
    }
}

/// Runs every job in one transaction, each in its own savepoint so one
/// failing command cannot undo or half-apply the others, and replies after
/// the commit. A job alone in its batch (the common case when messages come
/// one at a time) needs no savepoint: the transaction is its own, and a
/// failure rolls it all back.
fn run_batch(conn: &Connection, path: &Path, batch: &mut Vec<Job>) {
    let sql = |conn: &Connection, s: &str| -> Result<(), StoreError> {
        conn.prepare_cached(s)
            .and_then(|mut st| st.execute([]))
            .map(drop)
            .map_err(|e| StoreError::sqlite(path, e))
    };
    let mut pending: Vec<Reply> = Vec::with_capacity(batch.len());
    let mut in_tx = false;
    let alone = batch.len() == 1;
    for job in batch.drain(..) {
        if !in_tx {
            if let Err(e) = sql(conn, "BEGIN IMMEDIATE") {
                // Could not start: this job fails without running.
                (job(Err(e), path).reply)(None);
                continue;
            }
            in_tx = true;
        }
        if alone {
            let out = job(Ok(conn), path);
            match out.error {
                None => pending.push(out.reply),
                Some(_) => {
                    if !conn.is_autocommit() {
                        let _ = sql(conn, "ROLLBACK");
                    }
                    in_tx = false;
                    (out.reply)(None);
                }
            }
            continue;
        }
        if let Err(e) = sql(conn, "SAVEPOINT job") {
            (job(Err(e), path).reply)(None);
            continue;
        }
        let out = job(Ok(conn), path);
        match out.error {
            None => match sql(conn, "RELEASE job") {
                Ok(()) => pending.push(out.reply),
                Err(e) => (out.reply)(Some(&e)),
            },
            Some(e) => {
                if conn.is_autocommit() {
                    // SQLite rolled the whole transaction back (it does for
                    // SQLITE_FULL, IOERR, NOMEM…): the earlier jobs of this
                    // batch are lost too, and must not hear success.
                    for r in pending.drain(..) {
                        r(Some(&e));
                    }
                    in_tx = false;
                } else {
                    let _ = sql(conn, "ROLLBACK TO job");
                    let _ = sql(conn, "RELEASE job");
                }
                (out.reply)(None);
            }
        }
    }
    if in_tx {
        let commit = sql(conn, "COMMIT");
        if let Err(e) = &commit {
            tracing::warn!(error = %e, "store commit failed");
            if !conn.is_autocommit() {
                let _ = sql(conn, "ROLLBACK");
            }
        }
        let err = commit.err();
        for r in pending {
            r(err.as_ref());
        }
    }
}
