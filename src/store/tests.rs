use std::collections::HashSet;

use tempfile::TempDir;

use super::*;

fn msg(conv: &str, author: &str, inc: u64, seq: u64, lamport: u64) -> ChatMessage {
    ChatMessage {
        conversation: conv.into(),
        author: author.into(),
        incarnation: inc,
        seq,
        lamport,
        sent_at_ms: 1_700_000_000_000 + lamport as i64,
        body: format!("{author} {seq}"),
    }
}

fn open(dir: &TempDir) -> Store {
    Store::open(&dir.path().join("history.db")).expect("open store")
}

fn entry(author: &str, incarnation: u64, seq: u64) -> VectorEntry {
    VectorEntry {
        author: author.into(),
        incarnation,
        seq,
    }
}

#[tokio::test]
async fn insert_is_idempotent_and_same_text_twice_is_two_messages() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let m = msg("#rust", "Alice", 7, 1, 1);
    let first = s.insert(m.clone()).await.unwrap();
    assert!(first.new);
    // Same identity, author in another case and another body: still a dup.
    let mut again = m.clone();
    again.author = "ALICE".into();
    again.body = "changed".into();
    let second = s.insert(again).await.unwrap();
    assert!(!second.new);
    let all = s.all("#rust").await.unwrap();
    assert_eq!(all, vec![m]);
    assert_eq!(s.version("#rust").await.unwrap().count, 1);

    let id = s.identity().incarnation;
    let a = s
        .append_own("#go", "bob", id, "hi", 1, vec![])
        .await
        .unwrap();
    let b = s
        .append_own("#go", "bob", id, "hi", 2, vec![])
        .await
        .unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    assert!(b.lamport > a.lamport);
    assert_eq!(s.all("#go").await.unwrap(), vec![a, b]);
    assert_eq!(s.conversations().await.unwrap(), vec!["#go", "#rust"]);
}

#[tokio::test]
async fn insert_many_dedups_within_and_across_batches() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let batch = vec![
        msg("#r", "a", 1, 1, 1),
        msg("#r", "a", 1, 1, 1),
        msg("#r", "a", 1, 2, 2),
    ];
    let r = s.insert_many(batch.clone()).await.unwrap();
    assert_eq!(
        r.iter().map(|i| i.new).collect::<Vec<_>>(),
        [true, false, true]
    );
    let r = s.insert_many(batch).await.unwrap();
    assert!(r.iter().all(|i| !i.new));
    assert_eq!(s.version("#r").await.unwrap().count, 2);
}

#[tokio::test]
async fn version_vector_tracks_contiguous_prefix_and_gap_flag() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let c = "#room";
    assert!(!s.insert(msg(c, "Alice", 5, 1, 1)).await.unwrap().gap);
    assert!(!s.insert(msg(c, "alice", 5, 2, 2)).await.unwrap().gap);
    // Seq 3 and 4 are missing.
    let i = s.insert(msg(c, "Alice", 5, 5, 5)).await.unwrap();
    assert!(i.new && i.gap);
    // Another incarnation of the same nick is a separate author incarnation,
    // and one missing its seq 1 is left out of the vector.
    s.insert(msg(c, "alice", 9, 2, 6)).await.unwrap();
    // u64 values above i64::MAX order and round-trip correctly.
    s.insert(msg(c, "bob", u64::MAX, 1, 7)).await.unwrap();

    let v = s.version(c).await.unwrap();
    assert_eq!(v.count, 5);
    assert_eq!(
        v.vector,
        vec![entry("Alice", 5, 2), entry("bob", u64::MAX, 1)]
    );

    assert!(s.insert(msg(c, "alice", 5, 4, 4)).await.unwrap().gap);
    assert_eq!(s.version(c).await.unwrap().vector[0].seq, 2);
    // Filling seq 3 advances over 4 and 5 already held.
    assert!(!s.insert(msg(c, "alice", 5, 3, 3)).await.unwrap().gap);
    let v = s.version(c).await.unwrap();
    assert_eq!(v.count, 7);
    assert_eq!(v.vector[0], entry("Alice", 5, 5));
    // A duplicate still reports a gap that exists.
    let dup = s.insert(msg(c, "alice", 9, 2, 6)).await.unwrap();
    assert!(!dup.new && dup.gap);

    assert_eq!(s.version("#empty").await.unwrap(), Version::default());
}

#[tokio::test]
async fn late_flag_when_a_later_message_is_already_held() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let c = "#room";
    assert!(!s.insert(msg(c, "bob", 1, 1, 5)).await.unwrap().late);
    assert!(s.insert(msg(c, "carol", 2, 1, 3)).await.unwrap().late);
    // Same lamport, author sorts before "bob": late; after: not late.
    assert!(s.insert(msg(c, "Alice", 3, 1, 5)).await.unwrap().late);
    assert!(!s.insert(msg(c, "dave", 4, 1, 5)).await.unwrap().late);
    assert!(!s.insert(msg(c, "erin", 5, 1, 6)).await.unwrap().late);
    // Another conversation does not count.
    assert!(!s.insert(msg("#other", "x", 6, 1, 1)).await.unwrap().late);
    // Display order in history: (lamport, author lower, incarnation, seq).
    let authors: Vec<_> = s
        .all(c)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.author)
        .collect();
    assert_eq!(authors, ["carol", "Alice", "bob", "dave", "erin"]);
    let last2: Vec<_> = s
        .history(c, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.author)
        .collect();
    assert_eq!(last2, ["dave", "erin"]);
    assert_eq!(s.history(c, 100).await.unwrap().len(), 5);
}

#[tokio::test]
async fn missing_pages_exactly_what_is_lacking() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let c = "#big";
    let authors = [
        ("Alice", 11u64),
        ("bob", 22),
        ("carol", 33),
        ("alice", u64::MAX - 1),
    ];
    let mut seqs = [0u64; 4];
    let mut msgs = Vec::new();
    for i in 0..5_000u64 {
        let k = (i * 7 % 4) as usize;
        seqs[k] += 1;
        // Lamports collide in pairs, so ties are broken by author.
        msgs.push(msg(c, authors[k].0, authors[k].1, seqs[k], i / 2 + 1));
    }
    for chunk in msgs.chunks(1000) {
        s.insert_many(chunk.to_vec()).await.unwrap();
    }
    s.insert(msg("#elsewhere", "bob", 22, 1, 1)).await.unwrap();
    assert_eq!(s.version(c).await.unwrap().count, 5_000);

    // The puller holds a prefix of two authors (one named in another case).
    let have = vec![
        entry("ALICE", 11, 600),
        entry("Bob", 22, 1_000),
        entry("zed", 1, 50),
    ];
    let covered = |m: &ChatMessage| {
        (m.incarnation == 11 && m.seq <= 600) || (m.incarnation == 22 && m.seq <= 1_000)
    };
    let mut expected: Vec<_> = msgs.iter().filter(|m| !covered(m)).cloned().collect();
    expected.sort_by_key(OrderKey::of);

    let start = std::time::Instant::now();
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .missing(c, have.clone(), after.clone(), 500)
            .await
            .unwrap();
        assert!(page.len() <= 500);
        let Some(last) = page.last() else { break };
        after = Some(OrderKey::of(last));
        got.extend(page);
    }
    eprintln!("paged {} messages in {:?}", got.len(), start.elapsed());
    assert_eq!(got.len(), 5_000 - 1_600);
    assert_eq!(got, expected);

    // Nothing held: everything, in display order.
    let mut all_sorted = msgs.clone();
    all_sorted.sort_by_key(OrderKey::of);
    assert_eq!(
        s.missing(c, vec![], None, 10_000).await.unwrap(),
        all_sorted
    );
    assert!(s.missing(c, vec![], None, 0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn append_own_is_serialised_under_concurrency() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let inc = s.identity().incarnation;
    // A received message first: the Lamport clock continues from it.
    s.insert(msg("#c", "other", 1, 1, 100)).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..200 {
                let body = format!("task {t} msg {i}");
                out.push(
                    s.append_own("#c", "Me", inc, &body, 0, vec![])
                        .await
                        .unwrap(),
                );
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let seqs: HashSet<u64> = all.iter().map(|m| m.seq).collect();
    let lamports: HashSet<u64> = all.iter().map(|m| m.lamport).collect();
    assert_eq!(seqs, (1..=1600).collect());
    assert_eq!(lamports, (101..=1700).collect());
    let v = s.version("#c").await.unwrap();
    assert_eq!(v.count, 1601);
    assert!(v.vector.contains(&entry("Me", inc, 1600)));
}

#[tokio::test]
async fn reopen_keeps_messages_identity_and_outbox() {
    let dir = TempDir::new().unwrap();
    let (identity, stored) = {
        let s = open(&dir);
        let id = s.identity();
        assert_ne!(id.incarnation, 0);
        assert_eq!(id.reclaim_secret.len(), 32);
        let a = s
            .append_own("@a+b", "a", id.incarnation, "one", 1, vec!["B".into()])
            .await
            .unwrap();
        let b = s
            .append_own(
                "@a+b",
                "a",
                id.incarnation,
                "two",
                2,
                vec!["b".into(), "Carol".into()],
            )
            .await
            .unwrap();
        s.outbox_add("carol", vec![MsgId::of(&a)]).await.unwrap();
        (id, vec![a, b])
    };
    let s = open(&dir);
    assert_eq!(s.identity(), identity);
    assert_eq!(s.all("@a+b").await.unwrap(), stored);
    assert_eq!(s.outbox_recipients().await.unwrap(), vec!["b", "carol"]);
    assert_eq!(s.outbox_for("B").await.unwrap(), stored);
    assert_eq!(s.outbox_for("carol").await.unwrap(), stored);
    s.outbox_done("b", vec![MsgId::of(&stored[0])])
        .await
        .unwrap();
    drop(s);

    let s = open(&dir);
    assert_eq!(s.outbox_for("b").await.unwrap(), vec![stored[1].clone()]);
    s.outbox_done("B", vec![MsgId::of(&stored[1])])
        .await
        .unwrap();
    assert_eq!(s.outbox_recipients().await.unwrap(), vec!["carol"]);
    // The next own message continues the sequence.
    let c = s
        .append_own("@a+b", "A", identity.incarnation, "3", 3, vec![])
        .await
        .unwrap();
    assert_eq!((c.seq, c.lamport), (3, 3));
}

#[test]
fn garbage_file_is_corrupt_and_left_untouched() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("history.db");
    let bytes: Vec<u8> = (0..16_384u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // Text that is not SQLite either.
    std::fs::write(&path, b"hello, I am not a database\n").unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"hello, I am not a database\n"
    );
}

#[test]
fn foreign_sqlite_database_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("other.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn data_dir_lock_is_exclusive() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("nested/data");
    let lock = lock_data_dir(&data).unwrap();
    assert_eq!(lock.path(), data.join("lock"));
    let err = lock_data_dir(&data).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains("in use by another parley peer"),
        "{err}"
    );
    drop(lock);
    lock_data_dir(&data).unwrap();
}

#[test]
fn read_only_file_is_reported_at_open() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("history.db");
    drop(Store::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    if OpenOptions::new().write(true).open(&path).is_ok() {
        // Running as root (or with CAP_DAC_OVERRIDE): mode bits do not stop
        // writes, so there is nothing to test.
        eprintln!("skipped: permission bits do not prevent writing here");
        return;
    }
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn group_commit_throughput() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let (tasks, per_task) = (64u64, 500u64);
    let start = std::time::Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            for i in 1..=per_task {
                let r = s
                    .insert(msg("#load", &format!("n{t}"), t, i, i))
                    .await
                    .unwrap();
                assert!(r.new && !r.gap);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let n = tasks * per_task;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    eprintln!("{n} concurrent inserts: {rate:.0} messages/s");
    assert_eq!(s.version("#load").await.unwrap().count, n);
    // Only meaningful with optimisations; debug builds are several times slower.
    if !cfg!(debug_assertions) {
        assert!(rate > 20_000.0, "{rate:.0} messages/s");
    }
}
