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
        signature: Vec::new(),
        kind: 0,
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

/// A batch keeps clocks, contiguous seqs and counts in memory between its
/// messages: every message must get the flags it gets stored alone, and
/// the history must end the same, whatever the batches look like.
#[tokio::test]
async fn a_batch_stores_and_flags_exactly_as_one_at_a_time() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    for round in 0..20 {
        let (one_dir, many_dir) = (TempDir::new().unwrap(), TempDir::new().unwrap());
        let (one, many) = (open(&one_dir), open(&many_dir));
        let msgs: Vec<ChatMessage> = (0..300)
            .map(|_| {
                let conv = ["#x", "#y"][rng.random_range(0..2)];
                // One author in two spellings, and another.
                let author = ["Alice", "alice", "bob"][rng.random_range(0..3)];
                let inc = rng.random_range(1..3);
                let mut seq = rng.random_range(1..40);
                let mut lamport = rng.random_range(1..80);
                // Now and then one that runs implausibly far ahead.
                match rng.random_range(0..40) {
                    0 => seq += db::MAX_AHEAD + 50,
                    1 => lamport += db::MAX_AHEAD + 100,
                    _ => {}
                }
                msg(conv, author, inc, seq, lamport)
            })
            .collect();
        let mut alone = Vec::new();
        for m in &msgs {
            alone.push(one.insert(m.clone()).await.unwrap());
        }
        let mut batched = Vec::new();
        let mut rest = &msgs[..];
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(120));
            batched.extend(many.insert_many(rest[..n].to_vec()).await.unwrap());
            rest = &rest[n..];
        }
        for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
            assert_eq!(a, b, "round {round}, message {i}: {:?}", msgs[i]);
        }
        assert!(alone.iter().any(|r| r.new && r.late), "round {round}");
        assert!(alone.iter().any(|r| r.implausible), "round {round}");
        assert!(
            alone.iter().any(|r| !r.new && !r.implausible),
            "round {round}"
        );
        for conv in ["#x", "#y"] {
            assert_eq!(
                one.version(conv).await.unwrap(),
                many.version(conv).await.unwrap(),
                "round {round}"
            );
            assert_eq!(
                one.all(conv).await.unwrap(),
                many.all(conv).await.unwrap(),
                "round {round}"
            );
        }
    }
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

/// Pages through everything `have` lacks with pages of `limit`, checking no
/// page is over-full and nothing comes twice.
async fn pull_all(
    s: &Store,
    conv: &str,
    have: &[VectorEntry],
    author: Option<&str>,
    limit: usize,
) -> Vec<ChatMessage> {
    let mut got = Vec::new();
    let mut cursor = Some(PullCursor::default());
    while let Some(at) = cursor {
        let (page, next) = s
            .missing_page(conv, have.to_vec(), author.map(Into::into), at, limit)
            .await
            .unwrap();
        assert!(page.len() <= limit.max(1));
        got.extend(page);
        cursor = next;
    }
    let ids: HashSet<MsgId> = got.iter().map(MsgId::of).collect();
    assert_eq!(ids.len(), got.len(), "a message came twice");
    got
}

fn sorted(mut v: Vec<ChatMessage>) -> Vec<ChatMessage> {
    v.sort_by_key(OrderKey::of);
    v
}

#[tokio::test]
async fn missing_page_returns_exactly_what_is_lacking_in_display_order() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let c = "#big";
    let authors = [
        ("Alice", 11u64),
        ("bob", 22),
        ("carol", 33),
        ("alice", u64::MAX - 1),
        ("dave", 44),
    ];
    let mut seqs = [0u64; 5];
    let mut msgs = Vec::new();
    for i in 0..5_000u64 {
        let k = (i * 7 % 5) as usize;
        seqs[k] += 1;
        // Gaps: every 97th message is never stored, and dave's seq 1 neither.
        if i % 97 == 0 || (k == 4 && seqs[k] == 1) {
            continue;
        }
        // Lamports collide in pairs, so ties are broken by author.
        msgs.push(msg(c, authors[k].0, authors[k].1, seqs[k], i / 2 + 1));
    }
    for chunk in msgs.chunks(1000) {
        s.insert_many(chunk.to_vec()).await.unwrap();
    }
    s.insert(msg("#elsewhere", "bob", 22, 1, 1)).await.unwrap();

    // The puller holds parts of two authors (one named in another case), an
    // author this store never saw, and dave past his gap.
    let have = vec![
        entry("ALICE", 11, 600),
        entry("Bob", 22, 1_000),
        entry("bob", 22, 400),
        entry("zed", 1, 50),
        entry("dave", 44, 3),
    ];
    let covered = |m: &ChatMessage| match m.incarnation {
        11 => m.seq <= 600,
        22 => m.seq <= 1_000,
        44 => m.seq <= 3,
        _ => false,
    };
    let expected = sorted(msgs.iter().filter(|m| !covered(m)).cloned().collect());
    assert!(expected.len() > 2_000);
    for limit in [500, 37, 1] {
        let got = pull_all(&s, c, &have, None, limit).await;
        // Lamports rise with seq per author here, so display order holds
        // across pages, not only within them.
        assert_eq!(got, expected, "limit {limit}");
    }

    // `all` pages internally, across ties in lamport too.
    assert_eq!(s.all(c).await.unwrap(), sorted(msgs.clone()));
    // Nothing held: everything; a limit of 0 still makes progress.
    assert_eq!(
        pull_all(&s, c, &[], None, 10_000).await,
        sorted(msgs.clone())
    );
    let (page, next) = s
        .missing_page(c, vec![], None, PullCursor::default(), 0)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert!(next.is_some());
    // Everything held, or an unknown conversation: one empty, final page.
    let all_held: Vec<_> = s.version(c).await.unwrap().vector;
    let everything: Vec<_> = authors
        .iter()
        .map(|(a, inc)| entry(a, *inc, u64::MAX))
        .chain(all_held)
        .collect();
    for (conv, have) in [(c, everything), ("#nothing", vec![])] {
        let (page, next) = s
            .missing_page(conv, have, None, PullCursor::default(), 100)
            .await
            .unwrap();
        assert!(page.is_empty() && next.is_none());
    }
}

#[tokio::test]
async fn missing_page_returns_what_is_stored_during_the_pull() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let c = "#room";
    let mut held = Vec::new();
    for seq in 1..=10 {
        held.push(msg(c, "ann", 1, seq, 10 + 2 * seq));
        // Bob's seq 5 is missing when the pull starts.
        if seq != 5 {
            held.push(msg(c, "bob", 2, seq, 11 + 2 * seq));
        }
    }
    s.insert_many(held.clone()).await.unwrap();
    let have = vec![entry("ann", 1, 2), entry("cid", 3, 1)];

    let mut got = Vec::new();
    let page = |cursor| s.missing_page(c, have.clone(), None, cursor, 4);
    let (p, cursor) = page(PullCursor::default()).await.unwrap();
    got.extend(p);
    let arrived = vec![
        // Late: its display position is before everything paged so far.
        msg(c, "cid", 3, 2, 1),
        // Fills bob's gap, behind where bob's part of the pull has got to.
        msg(c, "bob", 2, 5, 21),
        // Past what either had.
        msg(c, "ann", 1, 11, 40),
        // Covered by `have`: not returned.
        msg(c, "cid", 3, 1, 1),
    ];
    s.insert_many(arrived.clone()).await.unwrap();
    let (p, mut cursor) = page(cursor.unwrap()).await.unwrap();
    got.extend(p);
    // Page on until only the arrivals remain, then add one more.
    let mut more = vec![msg(c, "dan", 4, 1, 2)];
    while let Some(at) = cursor {
        let (p, next) = page(at).await.unwrap();
        got.extend(p);
        cursor = next;
        if let Some(m) = more.pop() {
            s.insert(m.clone()).await.unwrap();
            held.push(m);
        }
    }
    let ids: HashSet<MsgId> = got.iter().map(MsgId::of).collect();
    assert_eq!(ids.len(), got.len(), "a message came twice");
    let expected: HashSet<MsgId> = held
        .iter()
        .chain(&arrived[..3])
        .filter(|m| !(m.author == "ann" && m.seq <= 2))
        .map(MsgId::of)
        .collect();
    assert_eq!(ids, expected);
    // What was held when the pull started comes in display order.
    let from_start: Vec<_> = got
        .iter()
        .filter(|m| !arrived.contains(m) && m.author != "dan")
        .cloned()
        .collect();
    assert_eq!(from_start.len(), 17);
    assert_eq!(from_start, sorted(from_start.clone()));

    // The same puller, starting again, gets it all in display order.
    let again = pull_all(&s, c, &have, None, 100).await;
    assert_eq!(again, sorted(got));
}

#[tokio::test]
async fn missing_page_filters_by_author() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let c = "#room";
    let mut msgs = Vec::new();
    for seq in 1..=30 {
        msgs.push(msg(c, "Me", 1, seq, 3 * seq));
        msgs.push(msg(c, "me", 9, seq, 3 * seq + 1));
        msgs.push(msg(c, "other", 2, seq, 3 * seq + 2));
    }
    s.insert_many(msgs.clone()).await.unwrap();
    let have = vec![entry("ME", 1, 10), entry("other", 2, 0)];
    let mine = sorted(
        msgs.iter()
            .filter(|m| m.author.eq_ignore_ascii_case("me") && !(m.incarnation == 1 && m.seq <= 10))
            .cloned()
            .collect(),
    );
    assert_eq!(mine.len(), 50);
    assert_eq!(pull_all(&s, c, &have, Some("mE"), 7).await, mine);

    // Arrivals during the pull are filtered too. (A page of exactly what
    // was held leaves the cursor open; a shorter one would have ended it.)
    let (p, cursor) = s
        .missing_page(
            c,
            have.clone(),
            Some("me".into()),
            PullCursor::default(),
            50,
        )
        .await
        .unwrap();
    assert_eq!(p, mine);
    s.insert_many(vec![msg(c, "other", 2, 31, 200), msg(c, "ME", 1, 31, 201)])
        .await
        .unwrap();
    let (p, next) = s
        .missing_page(c, have, Some("me".into()), cursor.unwrap(), 100)
        .await
        .unwrap();
    assert_eq!(p, vec![msg(c, "ME", 1, 31, 201)]);
    assert!(next.is_none());
    assert!(pull_all(&s, c, &[], Some("nobody"), 10).await.is_empty());
}

#[tokio::test]
async fn missing_page_reads_little_over_a_large_covered_history() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let c = "#huge";
    let mut msgs = Vec::new();
    for seq in 1..=20_000 {
        let (author, inc) = if seq % 2 == 0 {
            ("old", 1)
        } else {
            ("older", 2)
        };
        msgs.push(msg(c, author, inc, seq, seq));
    }
    for chunk in msgs.chunks(2_000) {
        s.insert_many(chunk.to_vec()).await.unwrap();
    }
    let lacking = vec![
        msg(c, "old", 1, 20_001, 20_001),
        msg(c, "new", 3, 1, 20_002),
        msg(c, "new", 3, 2, 20_003),
    ];
    s.insert_many(lacking.clone()).await.unwrap();
    let have = vec![entry("old", 1, 20_000), entry("older", 2, 19_999)];

    s.take_pull_steps().await;
    let (page, next) = s
        .missing_page(c, have.clone(), None, PullCursor::default(), 500)
        .await
        .unwrap();
    let steps = s.take_pull_steps().await;
    assert_eq!(page, lacking);
    assert!(next.is_none());
    // Reading the 20,000 covered rows would take well over 100,000 steps.
    eprintln!("a pull of 3 behind 20,000 covered took {steps} VM steps");
    assert!(steps < 2_000, "{steps} VM steps");

    // With nothing covered, pages cost about their size, wherever they are.
    let mut cursor = PullCursor::default();
    for i in 0..5 {
        let (page, next) = s.missing_page(c, vec![], None, cursor, 100).await.unwrap();
        let steps = s.take_pull_steps().await;
        assert_eq!(page.len(), 100);
        assert_eq!(page[0].seq, 100 * i + 1);
        eprintln!("page {i} of 100 uncovered took {steps} VM steps");
        assert!(steps < 100 * 100, "page {i}: {steps} VM steps");
        cursor = next.unwrap();
    }
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
    assert_eq!(s.outbox_for("B", 10).await.unwrap(), stored);
    assert_eq!(s.outbox_for("carol", 10).await.unwrap(), stored);
    s.outbox_done("b", vec![MsgId::of(&stored[0])])
        .await
        .unwrap();
    drop(s);

    let s = open(&dir);
    assert_eq!(
        s.outbox_for("b", 10).await.unwrap(),
        vec![stored[1].clone()]
    );
    // Several recipients at once; entries not held are ignored.
    s.outbox_done_many(vec![
        ("B".into(), vec![MsgId::of(&stored[1])]),
        ("carol".into(), vec![MsgId::of(&stored[1])]),
        ("nobody".into(), vec![MsgId::of(&stored[0])]),
    ])
    .await
    .unwrap();
    assert_eq!(s.outbox_recipients().await.unwrap(), vec!["carol"]);
    assert_eq!(
        s.outbox_for("carol", 10).await.unwrap(),
        vec![stored[0].clone()]
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_past_the_queue_depth_wait_and_all_complete() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    // More callers at once than the queue holds: the rest wait for room.
    let n = QUEUE_DEPTH as u64 * 2;
    let tasks: Vec<_> = (1..=n)
        .map(|seq| {
            let s = s.clone();
            tokio::spawn(async move { s.insert(msg("#q", "q", 1, seq, seq)).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().new);
    }
    let v = s.version("#q").await.unwrap();
    assert_eq!(v.count, n);
    assert_eq!(v.vector, vec![entry("q", 1, n)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_inserts_through_group_commit_all_land() {
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
    // Every concurrent insert landed once; the rate is only printed (speed
    // is judged by the bench, not by a timed test on a shared machine).
    assert_eq!(s.version("#load").await.unwrap().count, n);
}

#[tokio::test]
async fn rooms_are_kept_across_restarts() {
    let dir = TempDir::new().unwrap();
    {
        let s = open(&dir);
        assert!(s.rooms().await.unwrap().is_empty());
        s.rooms_add("#Rust").await.unwrap();
        // Same room in another case: the first spelling stays.
        s.rooms_add("#rust").await.unwrap();
        s.rooms_add("#go").await.unwrap();
        s.rooms_add("#zig").await.unwrap();
        assert_eq!(s.rooms().await.unwrap(), ["#go", "#Rust", "#zig"]);
        s.rooms_remove("#ZIG").await.unwrap();
        s.rooms_remove("#never-joined").await.unwrap();
    }
    let s = open(&dir);
    assert_eq!(s.rooms().await.unwrap(), ["#go", "#Rust"]);
}

/// The version 1 schema exactly as parley 0.1 wrote it: a frozen copy, so a
/// change to the store's own text cannot hide a broken upgrade.
const V1_SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE messages (
    conversation TEXT NOT NULL, author_lower TEXT NOT NULL,
    incarnation INTEGER NOT NULL, seq INTEGER NOT NULL, lamport INTEGER NOT NULL,
    author TEXT NOT NULL, sent_at_ms INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (conversation, author_lower, incarnation, seq)
);
CREATE INDEX messages_order
    ON messages (conversation, lamport, author_lower, incarnation, seq);
CREATE TABLE conversations (conversation TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE vector (
    conversation TEXT NOT NULL, author_lower TEXT NOT NULL, incarnation INTEGER NOT NULL,
    author TEXT NOT NULL, contiguous INTEGER NOT NULL,
    PRIMARY KEY (conversation, author_lower, incarnation)
) WITHOUT ROWID;
CREATE TABLE outbox (
    recipient TEXT NOT NULL, conversation TEXT NOT NULL, author_lower TEXT NOT NULL,
    incarnation INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (recipient, conversation, author_lower, incarnation, seq)
) WITHOUT ROWID;
PRAGMA application_id = 1347570777;
PRAGMA user_version = 1;
";

/// Writes a version 1 history holding `msgs` (with their count and vector
/// as v1 kept them), outbox entries and an identity, the way parley 0.1 did.
fn write_v1(path: &Path, identity: &Identity, msgs: &[ChatMessage], outbox: &[(&str, MsgId)]) {
    use db::enc;
    let c = Connection::open(path).unwrap();
    c.execute_batch("PRAGMA journal_mode = WAL").unwrap();
    c.execute_batch(V1_SCHEMA).unwrap();
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('incarnation', ?1), ('reclaim_secret', ?2)",
        rusqlite::params![identity.incarnation.to_be_bytes().to_vec(), vec![7u8; 32]],
    )
    .unwrap();
    let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
    let mut held: std::collections::BTreeMap<(String, String, u64), (String, Vec<u64>)> =
        Default::default();
    for m in msgs {
        let lower = m.author.to_ascii_lowercase();
        c.execute(
            "INSERT INTO messages VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                m.conversation,
                lower,
                enc(m.incarnation),
                enc(m.seq),
                enc(m.lamport),
                m.author,
                m.sent_at_ms,
                m.body
            ],
        )
        .unwrap();
        *counts.entry(m.conversation.clone()).or_default() += 1;
        held.entry((m.conversation.clone(), lower, m.incarnation))
            .or_insert_with(|| (m.author.clone(), Vec::new()))
            .1
            .push(m.seq);
    }
    for (conv, n) in counts {
        c.execute(
            "INSERT INTO conversations VALUES (?1, ?2)",
            rusqlite::params![conv, n],
        )
        .unwrap();
    }
    for ((conv, lower, inc), (author, mut seqs)) in held {
        seqs.sort();
        let contiguous = seqs.iter().zip(1..).take_while(|(s, i)| *s == i).count() as u64;
        c.execute(
            "INSERT INTO vector VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![conv, lower, enc(inc), author, enc(contiguous)],
        )
        .unwrap();
    }
    for (recipient, id) in outbox {
        c.execute(
            "INSERT INTO outbox VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                recipient,
                id.conversation,
                id.author_lower,
                enc(id.incarnation),
                enc(id.seq)
            ],
        )
        .unwrap();
    }
}

fn user_version(path: &Path) -> i32 {
    let c = Connection::open(path).unwrap();
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

fn page_size(path: &Path) -> i64 {
    let c = Connection::open(path).unwrap();
    c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn a_new_history_has_small_pages_and_an_old_one_keeps_its_own() {
    let dir = TempDir::new().unwrap();
    let new = dir.path().join("new.db");
    let s = Store::open(&new).unwrap();
    s.insert(msg("#r", "bob", 1, 1, 1)).await.unwrap();
    assert_eq!(page_size(&new), db::PAGE_SIZE);

    let old = dir.path().join("old.db");
    write_v1(&old, &Identity { incarnation: 9 }, &[], &[]);
    assert_eq!(page_size(&old), 4096);
    let s = Store::open(&old).unwrap();
    s.insert(msg("#r", "bob", 1, 1, 1)).await.unwrap();
    assert_eq!(user_version(&old), db::SCHEMA_VERSION);
    assert_eq!(page_size(&old), 4096);
    assert_eq!(s.all("#r").await.unwrap(), vec![msg("#r", "bob", 1, 1, 1)]);
}

#[tokio::test]
async fn version_1_history_is_upgraded_in_place() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("history.db");
    let identity = Identity {
        incarnation: u64::MAX - 3,
    };
    let (c, d) = ("#old", "@a+b");
    let msgs = vec![
        msg(c, "Alice", 7, 1, 1),
        msg(c, "alice", 7, 2, 3),
        // Seq 3 is missing.
        msg(c, "Alice", 7, 4, 9),
        msg(c, "bob", u64::MAX, 1, 2),
        msg(c, "carol", 5, 2, 4),
        msg(d, "a", identity.incarnation, 1, 1),
    ];
    let gone = MsgId {
        conversation: c.into(),
        author_lower: "zed".into(),
        incarnation: 1,
        seq: 1,
    };
    let outbox = [
        ("carol", MsgId::of(&msgs[2])),
        ("carol", MsgId::of(&msgs[1])),
        ("carol", MsgId::of(&msgs[5])),
        ("dave", MsgId::of(&msgs[3])),
        // An entry whose message is not held survives too.
        ("erin", gone.clone()),
    ];
    write_v1(&path, &identity, &msgs, &outbox);
    assert_eq!(user_version(&path), 1);

    let s = Store::open(&path).unwrap();
    assert_eq!(s.identity(), identity);
    let mut by_order = msgs[..5].to_vec();
    by_order.sort_by_key(OrderKey::of);
    assert_eq!(s.all(c).await.unwrap(), by_order);
    assert_eq!(s.all(d).await.unwrap(), vec![msgs[5].clone()]);
    assert_eq!(s.conversations().await.unwrap(), [c, d]);
    let v = s.version(c).await.unwrap();
    assert_eq!(v.count, 5);
    assert_eq!(
        v.vector,
        vec![entry("Alice", 7, 2), entry("bob", u64::MAX, 1)]
    );
    assert_eq!(
        s.outbox_recipients().await.unwrap(),
        ["carol", "dave", "erin"]
    );
    // By conversation, then display order, whatever order they were owed in.
    assert_eq!(
        s.outbox_for("Carol", 10).await.unwrap(),
        vec![msgs[1].clone(), msgs[2].clone(), msgs[5].clone()]
    );
    assert_eq!(
        s.outbox_for("dave", 10).await.unwrap(),
        vec![msgs[3].clone()]
    );
    assert!(s.outbox_for("erin", 10).await.unwrap().is_empty());
    s.outbox_done("erin", vec![gone]).await.unwrap();
    assert!(s.rooms().await.unwrap().is_empty());
    s.rooms_add("#old").await.unwrap();

    // The upgraded file works as a new one: filling the gap advances the
    // vector, and own messages continue the clock.
    let i = s.insert(msg(c, "alice", 7, 3, 5)).await.unwrap();
    assert!(i.new && !i.gap && i.late);
    assert_eq!(s.version(c).await.unwrap().vector[0], entry("Alice", 7, 4));
    let own = s
        .append_own(d, "a", identity.incarnation, "hi", 5, vec!["b".into()])
        .await
        .unwrap();
    assert_eq!((own.seq, own.lamport), (2, 2));
    drop(s);

    assert_eq!(user_version(&path), db::SCHEMA_VERSION);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.identity(), identity);
    assert_eq!(s.rooms().await.unwrap(), ["#old"]);
    assert_eq!(s.version(c).await.unwrap().count, 6);
    assert_eq!(s.outbox_for("b", 10).await.unwrap(), vec![own]);
}

#[test]
fn newer_schema_is_refused_and_left_untouched() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("history.db");
    drop(Store::open(&path).unwrap());
    // The dropped store's threads close on their own and empty the WAL
    // into the file as they go: wait for its last connection to remove the
    // WAL, or that write lands after `before` is read.
    let wal = dir.path().join("history.db-wal");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wal.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store never closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(user_version(&path), db::SCHEMA_VERSION);
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("schema version 99"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn reads_use_indexes() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("history.db");
    drop(Store::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    for (name, sql) in db::INDEXED_READS {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let n = stmt.parameter_count();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(vec![1i64; n]), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        eprintln!("{name}: {plan:?}");
        for step in &plan {
            assert!(
                !step.starts_with("SCAN") && !step.contains("TEMP B-TREE"),
                "{name} does not read by index: {plan:?}"
            );
        }
    }
}

#[tokio::test]
async fn history_reads_past_one_job_in_display_order() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let c = "#long";
    // 2,500 messages by two authors sharing lamports: ties break by author.
    let mut msgs = Vec::new();
    for i in 1..=1250u64 {
        msgs.push(msg(c, "ann", 1, i, i));
        msgs.push(msg(c, "Ben", 2, i, i));
    }
    s.insert_many(msgs).await.unwrap();
    let all = s.all(c).await.unwrap();
    assert_eq!(all.len(), 2500);
    for limit in [1, 999, 1000, 1001, 2499, 2500, 1_000_000] {
        let h = s.history(c, limit).await.unwrap();
        let want = &all[all.len() - limit.min(all.len())..];
        assert_eq!(h, want, "limit {limit}");
    }
}

#[tokio::test]
async fn own_messages_are_signed_and_signatures_come_back_with_history() {
    let dir = TempDir::new().unwrap();
    let key = Arc::new(crate::identity::Identity::generate());
    let s = Store::open_signed(&dir.path().join("history.db"), Some(key.clone())).unwrap();
    let inc = s.identity().incarnation;
    let sent = s
        .append_own("#r", "alice", inc, "signed", 5, vec![])
        .await
        .unwrap();
    assert!(key.public().verify_message(&sent));
    let mut other = msg("#r", "bob", 9, 1, 2);
    crate::identity::Identity::generate().sign_message(&mut other);
    s.insert(other.clone()).await.unwrap();
    let all = s.all("#r").await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|m| m.signature == sent.signature));
    assert!(all.iter().any(|m| m.signature == other.signature));
    let (page, _) = s
        .missing_page("#r", vec![], None, PullCursor::default(), 10)
        .await
        .unwrap();
    assert!(page.iter().all(|m| m.signature.len() == 64), "{page:?}");
}

#[tokio::test]
async fn clocks_that_run_implausibly_far_ahead_are_not_stored() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    s.insert(msg("#r", "bob", 1, 1, 1)).await.unwrap();
    let far_seq = msg("#r", "bob", 1, 2 + db::MAX_AHEAD, 2);
    let far_lamport = msg("#r", "carol", 1, 1, u64::MAX);
    let first_far = msg("#r", "dave", 1, u64::MAX, 3);
    for m in [far_seq, far_lamport, first_far] {
        let r = s.insert(m.clone()).await.unwrap();
        assert!(r.implausible && !r.new, "{m:?} {r:?}");
    }
    // Nothing was stored, and the clock is where it was.
    assert_eq!(s.all("#r").await.unwrap().len(), 1);
    let own = s
        .append_own("#r", "alice", 5, "after", 1, vec![])
        .await
        .unwrap();
    assert_eq!(own.lamport, 2);
    // Within the bound is fine: an early arrival leaves a gap.
    let near = s
        .insert(msg("#r", "bob", 1, 1 + db::MAX_AHEAD, 3))
        .await
        .unwrap();
    assert!(near.new && near.gap && !near.implausible);
}

#[tokio::test]
async fn a_rooms_creation_is_the_one_held_first() {
    let dir = TempDir::new().unwrap();
    let key = Arc::new(crate::identity::Identity::generate());
    let s = Store::open_signed(&dir.path().join("history.db"), Some(key.clone())).unwrap();
    assert_eq!(s.creation("#r").await.unwrap(), None);
    s.insert(msg("#r", "bob", 9, 1, 1)).await.unwrap();
    assert_eq!(s.creation("#r").await.unwrap(), None);
    let inc = s.identity().incarnation;
    let own = s
        .append_own_kind("#r", "carol", inc, (Kind::Created, "#r"), 2_000, vec![])
        .await
        .unwrap();
    // Signed with its kind: the same event as text would not check.
    assert!(key.public().verify_message(&own));
    assert!(!key.public().verify_message(&ChatMessage {
        kind: Kind::Text as i32,
        ..own.clone()
    }));
    assert_eq!(s.creation("#r").await.unwrap().as_ref(), Some(&own));
    assert!(s.all("#r").await.unwrap().contains(&own));
    assert_eq!(s.creation("#other").await.unwrap(), None);
}

/// Issue 23, attack 4: a member signs a creation event of her own, dated
/// before the real one, and hands it over. A history that holds the room's
/// creation refuses it, however it is dated, and keeps its own.
#[tokio::test]
async fn a_second_creation_event_for_a_room_is_refused_however_it_is_dated() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let created_in = |conv: &str, author: &str, inc: u64, seq: u64, sent_at_ms: i64| ChatMessage {
        kind: Kind::Created as i32,
        sent_at_ms,
        body: conv.to_ascii_uppercase(),
        ..msg(conv, author, inc, seq, seq)
    };
    let created = |author: &str, inc: u64, seq: u64, sent_at_ms: i64| {
        created_in("#r", author, inc, seq, sent_at_ms)
    };
    let real = created("alice", 3, 1, 2_000);
    assert!(s.insert(real.clone()).await.unwrap().new);
    // The same event again is a plain duplicate, not a rival.
    let again = s.insert(real.clone()).await.unwrap();
    assert!(!again.new && !again.rival_creation);
    // Another author's, dated earlier; the same author's under another
    // incarnation or seq: each refused, nothing stored.
    for rival in [
        created("eve", 5, 1, 1_000),
        created("alice", 4, 1, 1_000),
        created("alice", 3, 2, 1_000),
    ] {
        let r = s.insert(rival.clone()).await.unwrap();
        assert!(r.rival_creation && !r.new, "{rival:?}: {r:?}");
    }
    assert_eq!(s.creation("#r").await.unwrap(), Some(real.clone()));
    let held = s.all("#r").await.unwrap();
    assert_eq!(held, vec![real]);
    assert_eq!(s.version("#r").await.unwrap().count, 1);

    // In one batch the first is held and the next one refused; another
    // room is another matter.
    let r = s
        .insert_many(vec![
            created_in("#s", "bob", 6, 1, 5_000),
            created_in("#s", "eve", 5, 2, 1_000),
            msg("#s", "eve", 5, 3, 3),
        ])
        .await
        .unwrap();
    assert!(r[0].new && !r[0].rival_creation);
    assert!(r[1].rival_creation && !r[1].new);
    assert!(r[2].new);
    assert_eq!(s.creation("#s").await.unwrap().unwrap().author, "bob");
}

#[tokio::test]
async fn a_job_alone_in_its_batch_that_fails_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let failed = s
        .call(|c| {
            c.execute(
                "INSERT INTO rooms (room_key, name) VALUES ('#half', '#half')",
                [],
            )?;
            c.execute("INSERT INTO no_such_table VALUES (1)", [])
        })
        .await;
    assert!(failed.is_err());
    // Its first write went with it; the next job runs in a fresh transaction.
    let rooms: i64 = s
        .call(|c| c.query_row("SELECT count(*) FROM rooms", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(rooms, 0);
    let m = s
        .append_own("#r", "a", s.identity().incarnation, "after", 1, vec![])
        .await
        .unwrap();
    assert_eq!(s.all("#r").await.unwrap(), vec![m]);
}

#[tokio::test]
async fn the_wal_is_checkpointed_as_it_grows_and_emptied_at_close() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("history.db");
    let wal = dir.path().join("history.db-wal");
    let s = open(&dir);
    let inc = s.identity().incarnation;
    let body = "x".repeat(4000);
    // About 40 MB written one message at a time, as a peer receives them.
    let mut biggest = 0;
    for i in 0..10_000u64 {
        s.insert(ChatMessage {
            body: body.clone(),
            ..msg("#big", "b", 7, i + 1, i + 1)
        })
        .await
        .unwrap();
        if i % 500 == 0 {
            biggest = biggest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
    }
    // The WAL was started over again and again, never holding it all.
    assert!(biggest < 80 << 20, "the WAL grew to {biggest} bytes");
    let _ = s
        .append_own("#big", "a", inc, "last", 1, vec![])
        .await
        .unwrap();
    drop(s);
    // The checkpointer empties the WAL once the writer has stopped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&wal).map_or(0, |m| m.len()) > 0 {
        assert!(std::time::Instant::now() < deadline, "WAL still holds data");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(std::fs::metadata(&path).unwrap().len() > 40_000_000);
    let s = open(&dir);
    assert_eq!(s.version("#big").await.unwrap().count, 10_001);
}

/// A first-hand message stored before its signature check is shown but
/// never served (pulls, versions) until the check ends its wait; a refuted
/// one leaves its conversation, its count and its vector entry, and the
/// wait outlives a restart.
#[tokio::test]
async fn unchecked_messages_are_shown_but_not_served_until_settled() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let key = [9u8; 32];
    s.insert_many(vec![msg("#rust", "bob", 5, 1, 1)])
        .await
        .unwrap();
    let taken = s
        .insert_unchecked(
            vec![
                msg("#rust", "alice", 7, 1, 2),
                msg("#rust", "alice", 7, 2, 3),
                msg("#rust", "alice", 7, 3, 4),
            ],
            key,
        )
        .await
        .unwrap();
    assert!(taken.iter().all(|t| t.new));
    // A repeat of a held message adds no wait.
    let again = s
        .insert_unchecked(vec![msg("#rust", "bob", 5, 1, 1)], key)
        .await
        .unwrap();
    assert!(!again[0].new);
    // Shown to the person at once...
    assert_eq!(s.all("#rust").await.unwrap().len(), 4);
    // ...but neither counted nor pulled.
    let v = s.version("#rust").await.unwrap();
    assert_eq!((v.count, v.vector.clone()), (1, vec![entry("bob", 5, 1)]));
    let pulled = pull_all(&s, "#rust", &[], None, 10).await;
    assert_eq!(ids_of(&pulled), [("bob".to_string(), 1)]);
    drop(s);

    // The wait outlives a restart.
    let s = open(&dir);
    let waiting = s.unchecked(10).await.unwrap();
    assert_eq!(waiting.len(), 3);
    assert!(waiting.iter().all(|(k, _)| k.as_slice() == key));

    // Seq 1 checks, seq 2 does not: the vector stops below the refuted one,
    // seq 3 stays unserved until it is settled too.
    let id = |seq| MsgId::of(&msg("#rust", "alice", 7, seq, seq + 1));
    let refuted = s.settle(vec![id(1)], vec![id(2)]).await.unwrap();
    assert_eq!(refuted.len(), 1);
    assert_eq!(refuted[0].seq, 2);
    let v = s.version("#rust").await.unwrap();
    assert_eq!(v.count, 2);
    assert_eq!(v.vector, vec![entry("alice", 7, 1), entry("bob", 5, 1)]);
    let shown: Vec<u64> = s
        .all("#rust")
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(shown, [1, 1, 3]);
    let refuted_again = s.settle(vec![id(3)], vec![]).await.unwrap();
    assert!(refuted_again.is_empty());
    assert!(s.unchecked(10).await.unwrap().is_empty());
    let v = s.version("#rust").await.unwrap();
    assert_eq!(v.count, 3);
    // Seq 2 is missing now: the vector covers alice's seq 1 only.
    assert_eq!(v.vector, vec![entry("alice", 7, 1), entry("bob", 5, 1)]);
    let pulled = pull_all(&s, "#rust", &[], None, 10).await;
    assert_eq!(pulled.len(), 3);
    // The refuted seq may come again, as signed, and fills the gap.
    let back = s.insert(msg("#rust", "alice", 7, 2, 3)).await.unwrap();
    assert!(back.new);
    let v = s.version("#rust").await.unwrap();
    assert_eq!((v.count, v.vector[0].seq), (4, 3));
    // Nothing of the refuted one is a conversation of its own.
    assert_eq!(s.conversations().await.unwrap(), ["#rust"]);
}

fn ids_of(msgs: &[ChatMessage]) -> Vec<(String, u64)> {
    msgs.iter().map(|m| (m.author.clone(), m.seq)).collect()
}

#[tokio::test]
async fn an_allocated_seq_is_never_given_twice_written_late_or_never() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let id = s.identity().incarnation;
    let own = |body: &'static str| {
        let s = s.clone();
        async move {
            s.allocate_own("#go", "bob", id, (Kind::Text, body), 1)
                .await
                .unwrap()
        }
    };
    let first = own("first").await;
    let second = own("second").await;
    assert_eq!((first.seq, second.seq), (1, 2));
    assert!(second.lamport > first.lamport);
    // Nothing is held until it is written; written out of order, both are.
    assert_eq!(s.version("#go").await.unwrap().count, 0);
    s.write_own(second.clone(), vec!["alice".into()])
        .await
        .unwrap();
    s.write_own(first.clone(), vec!["alice".into()])
        .await
        .unwrap();
    assert_eq!(s.all("#go").await.unwrap(), vec![first, second]);
    // The vector steps over the one written early.
    let v = s.version("#go").await.unwrap();
    assert_eq!(v.vector, vec![entry("bob", id, 2)]);
    let owed = s.outbox_for("alice", 10).await.unwrap();
    assert_eq!(owed.len(), 2);
    // One allocated and never written (its write failed, its sender gave
    // up) leaves its seq unused: the next message does not take it.
    let lost = own("lost").await;
    assert_eq!(lost.seq, 3);
    let next = s
        .append_own("#go", "bob", id, "next", 2, vec![])
        .await
        .unwrap();
    assert_eq!(next.seq, 4);
    assert!(next.lamport > lost.lamport);
}

#[tokio::test]
async fn lastlog_finds_words_across_conversations_and_indexes_what_came_later() {
    let dir = TempDir::new().unwrap();
    let s = open(&dir);
    let line = |conv: &str, seq: u64, body: &str| ChatMessage {
        body: body.into(),
        sent_at_ms: 1_000 + seq as i64,
        ..msg(conv, "bob", 1, seq, seq)
    };
    s.insert(line("#rust", 1, "the Borrow checker says no"))
        .await
        .unwrap();
    s.insert(line("alice|bob", 2, "lunch? borrowing your bike"))
        .await
        .unwrap();
    s.insert(line("#go", 3, "goroutines all the way"))
        .await
        .unwrap();
    // Every word, as a word or its start, any case; oldest first.
    let bodies = |v: Vec<ChatMessage>| v.into_iter().map(|m| m.body).collect::<Vec<_>>();
    assert_eq!(
        bodies(s.search("borrow", 10).await.unwrap()),
        ["the Borrow checker says no", "lunch? borrowing your bike"]
    );
    assert_eq!(
        bodies(s.search("BORROW check", 10).await.unwrap()),
        ["the Borrow checker says no"]
    );
    // FTS5's own syntax is plain text here: no error, no match.
    assert!(s.search("\"AND* :", 10).await.unwrap().is_empty());
    assert!(s.search("   ", 10).await.unwrap().is_empty());
    // A line stored after a search is found by the next one; the limit
    // keeps the newest.
    s.insert(line("#rust", 4, "borrow again")).await.unwrap();
    assert_eq!(
        bodies(s.search("borrow", 2).await.unwrap()),
        ["lunch? borrowing your bike", "borrow again"]
    );
    // Events (a topic) are not lines anyone wrote.
    let topic = ChatMessage {
        kind: crate::proto::Kind::Topic as i32,
        ..line("#rust", 5, "borrow rules")
    };
    s.insert(topic).await.unwrap();
    assert_eq!(s.search("rules", 10).await.unwrap().len(), 0);
}
