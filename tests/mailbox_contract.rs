//! One contract, two mail stores: every check here runs against the SQLite
//! store (a file in a temporary directory) and against the etcd store (a
//! real etcd server; those are `#[ignore = "needs etcd"]`). Each fixture
//! has two handles, `a` and `b`: for etcd, two stores over one etcd, each
//! with its own client, as two routers have; for SQLite, the same store
//! twice. `reopen` opens the store again from what it wrote (the file,
//! etcd), as a restarted router does.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parley::identity::{Identity, PublicKey};
use parley::mailbox::{
    Deposit, EtcdMail, Listing, MailError, MailStore, Quota, SqliteMail, MAIL_PREFIX,
};
use parley::seal::MailboxKey;

use common::etcd::Etcd;

/// More than any check here fills.
const ROOMY: Quota = Quota {
    count: 10_000,
    bytes: 64 * 1024 * 1024,
};

struct Fixture {
    a: Arc<dyn MailStore>,
    b: Arc<dyn MailStore>,
    etcd: Option<Etcd>,
    dir: Option<tempfile::TempDir>,
}

/// The store opened again over what it keeps (the file, etcd).
async fn reopen(etcd: &Option<Etcd>, dir: &Option<tempfile::TempDir>) -> Arc<dyn MailStore> {
    match (etcd, dir) {
        (Some(etcd), _) => Arc::new(etcd_mail(etcd).await),
        (None, Some(dir)) => Arc::new(SqliteMail::open(&dir.path().join("mail.sqlite3")).unwrap()),
        (None, None) => unreachable!("a fixture keeps its store somewhere"),
    }
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn MailStore> =
        Arc::new(SqliteMail::open(&dir.path().join("mail.sqlite3")).unwrap());
    Fixture {
        a: store.clone(),
        b: store,
        etcd: None,
        dir: Some(dir),
    }
}

async fn etcd_mail(etcd: &Etcd) -> EtcdMail {
    let client = etcd_client::Client::connect([&etcd.members[0].client_url], None)
        .await
        .expect("a client of the test etcd");
    EtcdMail::new(client)
}

async fn etcd() -> Fixture {
    let etcd = Etcd::start().await;
    Fixture {
        a: Arc::new(etcd_mail(&etcd).await),
        b: Arc::new(etcd_mail(&etcd).await),
        etcd: Some(etcd),
        dir: None,
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod in_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite().await).await;
                }
            )*
        }
        mod over_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs etcd"]
                async fn $name() {
                    super::$name(super::etcd().await).await;
                }
            )*
        }
    };
}

contract!(
    a_published_key_reads_back_and_a_new_one_replaces_it,
    deposits_are_listed_in_order_with_what_they_carry,
    a_quota_by_count_stores_a_prefix_then_refuses,
    a_quota_by_bytes_stores_a_prefix_then_refuses,
    a_listing_holds_at_most_its_limit_and_says_more,
    an_ack_deletes_only_the_named_envelopes_of_its_own_mailbox,
    an_ack_takes_off_the_expired_count_never_below_zero,
    the_age_limit_removes_old_envelopes_counts_them_and_frees_quota,
    a_large_deposit_is_stored_listed_and_acked_whole,
    racing_deposits_never_exceed_the_quota,
    everything_outlives_the_store_handle,
);

fn who() -> PublicKey {
    Identity::generate().public()
}

fn mailbox_key(tag: u8) -> MailboxKey {
    MailboxKey {
        key: vec![tag; 32],
        signature: vec![tag ^ 0xff; 64],
    }
}

/// An envelope of `len` bytes that says `tag` at its start.
fn sealed(tag: &str, len: usize) -> Vec<u8> {
    let mut v = tag.as_bytes().to_vec();
    v.resize(len.max(tag.len()), b'.');
    v
}

fn deposit(from: &PublicKey, nick: &str, at_ms: i64, envelopes: Vec<Vec<u8>>) -> Deposit {
    Deposit {
        from: *from,
        from_nick: nick.into(),
        at_ms,
        envelopes,
    }
}

/// The tags of a listing's envelopes, in order.
fn tags(l: &Listing) -> Vec<String> {
    l.envelopes
        .iter()
        .map(|e| {
            let end = e
                .sealed
                .iter()
                .position(|&b| b == b'.')
                .unwrap_or(e.sealed.len());
            String::from_utf8_lossy(&e.sealed[..end]).into_owned()
        })
        .collect()
}

fn ids(l: &Listing) -> Vec<String> {
    l.envelopes.iter().map(|e| e.id.clone()).collect()
}

fn full(r: Result<usize, MailError>) -> String {
    match r {
        Err(MailError::Full(m)) => m,
        other => panic!("expected Full, got {other:?}"),
    }
}

async fn a_published_key_reads_back_and_a_new_one_replaces_it(f: Fixture) {
    let (alice, bob) = (who(), who());
    assert_eq!(f.a.published(&alice).await.unwrap(), None);
    f.a.publish(&alice, &mailbox_key(1)).await.unwrap();
    assert_eq!(f.b.published(&alice).await.unwrap(), Some(mailbox_key(1)));
    assert_eq!(f.b.published(&bob).await.unwrap(), None);
    f.b.publish(&alice, &mailbox_key(2)).await.unwrap();
    f.a.publish(&bob, &mailbox_key(3)).await.unwrap();
    assert_eq!(f.a.published(&alice).await.unwrap(), Some(mailbox_key(2)));
    assert_eq!(f.a.published(&bob).await.unwrap(), Some(mailbox_key(3)));
    // The same key again changes nothing.
    f.a.publish(&alice, &mailbox_key(2)).await.unwrap();
    assert_eq!(f.b.published(&alice).await.unwrap(), Some(mailbox_key(2)));
}

async fn deposits_are_listed_in_order_with_what_they_carry(f: Fixture) {
    let (alice, bob, carol) = (who(), who(), who());
    let empty = f.a.list(&alice, 10).await.unwrap();
    assert_eq!(empty, Listing::default());
    assert_eq!(f.a.waiting(&alice).await.unwrap(), 0);
    // Nothing deposited stores nothing, and is no error.
    assert_eq!(
        f.a.deposit(&alice, deposit(&bob, "bob", 1000, vec![]), ROOMY)
            .await,
        Ok(0)
    );
    let d = |from, nick, at, t: &[&str]| {
        deposit(from, nick, at, t.iter().map(|t| sealed(t, 40)).collect())
    };
    assert_eq!(
        f.a.deposit(&alice, d(&bob, "bob", 1000, &["b1", "b2", "b3"]), ROOMY)
            .await,
        Ok(3)
    );
    // Same millisecond, another sender, through the other handle.
    assert_eq!(
        f.b.deposit(&alice, d(&carol, "carol", 1000, &["c1"]), ROOMY)
            .await,
        Ok(1)
    );
    assert_eq!(
        f.a.deposit(&alice, d(&bob, "bob", 1001, &["b4", "b5"]), ROOMY)
            .await,
        Ok(2)
    );
    assert_eq!(
        f.a.deposit(&carol, d(&bob, "bob", 1002, &["x1"]), ROOMY)
            .await,
        Ok(1)
    );

    for store in [&f.a, &f.b] {
        let l = store.list(&alice, 100).await.unwrap();
        assert_eq!(tags(&l), ["b1", "b2", "b3", "c1", "b4", "b5"], "{l:?}");
        assert!(!l.more);
        assert_eq!(l.expired, 0);
        let mut unique = ids(&l);
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 6, "ids unique: {:?}", ids(&l));
        let c1 = &l.envelopes[3];
        assert_eq!(
            (c1.from, c1.from_nick.as_str(), c1.at_ms),
            (carol, "carol", 1000)
        );
        assert_eq!(c1.sealed, sealed("c1", 40));
        let b5 = &l.envelopes[5];
        assert_eq!(
            (b5.from, b5.from_nick.as_str(), b5.at_ms),
            (bob, "bob", 1001)
        );
        assert_eq!(store.waiting(&alice).await.unwrap(), 6);
        assert_eq!(store.waiting(&carol).await.unwrap(), 1);
        assert_eq!(store.waiting(&bob).await.unwrap(), 0);
    }
    assert_eq!(tags(&f.b.list(&carol, 100).await.unwrap()), ["x1"]);
}

async fn a_quota_by_count_stores_a_prefix_then_refuses(f: Fixture) {
    let (alice, bob) = (who(), who());
    let quota = Quota {
        count: 5,
        bytes: 1 << 20,
    };
    let d = |at, t: &[&str]| deposit(&bob, "bob", at, t.iter().map(|t| sealed(t, 50)).collect());
    assert_eq!(
        f.a.deposit(&alice, d(1, &["1", "2", "3"]), quota).await,
        Ok(3)
    );
    // Two of four fit: the first two.
    assert_eq!(
        f.b.deposit(&alice, d(2, &["4", "5", "6", "7"]), quota)
            .await,
        Ok(2)
    );
    let before = f.a.list(&alice, 100).await.unwrap();
    assert_eq!(tags(&before), ["1", "2", "3", "4", "5"]);
    let why = full(f.a.deposit(&alice, d(3, &["8"]), quota).await);
    assert!(why.contains("5 of 5 envelopes"), "{why}");
    assert!(why.contains("250 of 1048576 bytes"), "{why}");
    full(f.b.deposit(&alice, d(4, &["9", "10"]), quota).await);
    // A refused deposit changed nothing.
    assert_eq!(f.b.list(&alice, 100).await.unwrap(), before);
    assert_eq!(f.a.waiting(&alice).await.unwrap(), 5);
    // Another mailbox has its own quota.
    assert_eq!(f.a.deposit(&bob, d(5, &["b"]), quota).await, Ok(1));
}

async fn a_quota_by_bytes_stores_a_prefix_then_refuses(f: Fixture) {
    let (alice, bob) = (who(), who());
    let quota = Quota {
        count: 100,
        bytes: 100,
    };
    let d = |at, e: Vec<Vec<u8>>| deposit(&bob, "bob", at, e);
    assert_eq!(
        f.a.deposit(
            &alice,
            d(1, vec![sealed("a", 40), sealed("b", 40), sealed("c", 40)]),
            quota
        )
        .await,
        Ok(2)
    );
    // 80 held: 30 does not fit, so nothing after it either.
    let why = full(
        f.b.deposit(&alice, d(2, vec![sealed("d", 30), sealed("e", 5)]), quota)
            .await,
    );
    assert!(why.contains("2 of 100 envelopes"), "{why}");
    assert!(why.contains("80 of 100 bytes"), "{why}");
    assert_eq!(
        f.b.deposit(&alice, d(3, vec![sealed("f", 20), sealed("g", 1)]), quota)
            .await,
        Ok(1)
    );
    let l = f.a.list(&alice, 100).await.unwrap();
    assert_eq!(tags(&l), ["a", "b", "f"]);
    full(f.a.deposit(&alice, d(4, vec![sealed("h", 1)]), quota).await);
    assert_eq!(f.a.list(&alice, 100).await.unwrap(), l);
}

async fn a_listing_holds_at_most_its_limit_and_says_more(f: Fixture) {
    let (alice, bob) = (who(), who());
    let all: Vec<Vec<u8>> = (0..5).map(|i| sealed(&format!("m{i}"), 60)).collect();
    assert_eq!(
        f.a.deposit(&alice, deposit(&bob, "bob", 7, all), ROOMY)
            .await,
        Ok(5)
    );
    let two = f.b.list(&alice, 2).await.unwrap();
    assert_eq!(tags(&two), ["m0", "m1"]);
    assert!(two.more);
    let four = f.a.list(&alice, 4).await.unwrap();
    assert_eq!(tags(&four), ["m0", "m1", "m2", "m3"]);
    assert!(four.more);
    let five = f.a.list(&alice, 5).await.unwrap();
    assert_eq!(tags(&five), ["m0", "m1", "m2", "m3", "m4"]);
    assert!(!five.more);
    assert!(!f.a.list(&alice, 50).await.unwrap().more);
    // A limit of 0 is taken as 1.
    let one = f.a.list(&alice, 0).await.unwrap();
    assert_eq!(tags(&one), ["m0"]);
    assert!(one.more);
    // Listing takes nothing away.
    assert_eq!(f.a.waiting(&alice).await.unwrap(), 5);
}

async fn an_ack_deletes_only_the_named_envelopes_of_its_own_mailbox(f: Fixture) {
    let (alice, bob, carol) = (who(), who(), who());
    let e = |p: &str, n: usize| -> Vec<Vec<u8>> {
        (0..n).map(|i| sealed(&format!("{p}{i}"), 30)).collect()
    };
    assert_eq!(
        f.a.deposit(&alice, deposit(&carol, "carol", 1, e("a", 3)), ROOMY)
            .await,
        Ok(3)
    );
    assert_eq!(
        f.a.deposit(&bob, deposit(&carol, "carol", 1, e("b", 2)), ROOMY)
            .await,
        Ok(2)
    );
    let a_ids = ids(&f.a.list(&alice, 10).await.unwrap());
    let b_ids = ids(&f.a.list(&bob, 10).await.unwrap());
    assert_eq!((a_ids.len(), b_ids.len()), (3, 2));

    // Alice acks her first and last, one of bob's, and nonsense.
    let mut acked = vec![a_ids[0].clone(), a_ids[2].clone(), b_ids[0].clone()];
    acked.extend(["", "..", "../x", "nonsense", "0", "1"].map(String::from));
    acked.push(format!("../{}", b_ids[1]));
    acked.push(format!("x/../{}", b_ids[1]));
    acked.push(format!("../{}/{}", hex::encode(bob.as_bytes()), b_ids[1]));
    f.b.ack(&alice, &acked, 0).await.unwrap();
    let left = f.a.list(&alice, 10).await.unwrap();
    assert_eq!(tags(&left), ["a1"]);
    assert_eq!(ids(&left), [a_ids[1].clone()]);
    assert_eq!(f.a.waiting(&alice).await.unwrap(), 1);
    // Bob's mailbox is untouched.
    assert_eq!(tags(&f.a.list(&bob, 10).await.unwrap()), ["b0", "b1"]);
    assert_eq!(f.a.waiting(&bob).await.unwrap(), 2);

    // Bob acking alice's envelope deletes nothing of hers.
    f.a.ack(&bob, &[a_ids[1].clone()], 0).await.unwrap();
    assert_eq!(tags(&f.b.list(&alice, 10).await.unwrap()), ["a1"]);
    assert_eq!(f.b.waiting(&bob).await.unwrap(), 2);

    // Acking again what is gone is harmless; the quota counts what is left.
    f.a.ack(&alice, &[a_ids[0].clone(), a_ids[0].clone()], 0)
        .await
        .unwrap();
    let quota = Quota {
        count: 3,
        bytes: 1 << 20,
    };
    assert_eq!(
        f.a.deposit(&alice, deposit(&carol, "carol", 2, e("n", 5)), quota)
            .await,
        Ok(2)
    );
    assert_eq!(
        tags(&f.a.list(&alice, 10).await.unwrap()),
        ["a1", "n0", "n1"]
    );
    let all = ids(&f.a.list(&alice, 10).await.unwrap());
    f.b.ack(&alice, &all, 0).await.unwrap();
    assert_eq!(f.a.list(&alice, 10).await.unwrap(), Listing::default());
    assert_eq!(f.b.waiting(&alice).await.unwrap(), 0);
}

async fn an_ack_takes_off_the_expired_count_never_below_zero(f: Fixture) {
    let (alice, bob) = (who(), who());
    let old: Vec<Vec<u8>> = (0..4).map(|i| sealed(&format!("o{i}"), 20)).collect();
    assert_eq!(
        f.a.deposit(&alice, deposit(&bob, "bob", 100, old), ROOMY)
            .await,
        Ok(4)
    );
    assert_eq!(
        f.a.deposit(
            &alice,
            deposit(&bob, "bob", 900, vec![sealed("new", 20)]),
            ROOMY
        )
        .await,
        Ok(1)
    );
    assert_eq!(f.b.expire(500).await.unwrap(), 4);
    let l = f.a.list(&alice, 10).await.unwrap();
    assert_eq!((tags(&l), l.expired), (vec!["new".to_string()], 4));
    // Taking off expired leaves the envelopes alone.
    f.a.ack(&alice, &[], 3).await.unwrap();
    let l = f.b.list(&alice, 10).await.unwrap();
    assert_eq!((tags(&l), l.expired), (vec!["new".to_string()], 1));
    // Other mailboxes' counts are their own.
    f.a.ack(&bob, &[], 10).await.unwrap();
    assert_eq!(f.a.list(&alice, 10).await.unwrap().expired, 1);
    // Never below zero.
    f.b.ack(&alice, &ids(&l), 5).await.unwrap();
    let l = f.a.list(&alice, 10).await.unwrap();
    assert_eq!(l, Listing::default());
    f.a.ack(&alice, &[], 2).await.unwrap();
    assert_eq!(f.a.list(&alice, 10).await.unwrap().expired, 0);
}

async fn the_age_limit_removes_old_envelopes_counts_them_and_frees_quota(f: Fixture) {
    let (alice, bob, carol) = (who(), who(), who());
    let quota = Quota {
        count: 3,
        bytes: 1 << 20,
    };
    let d = |at, t: &[&str]| {
        deposit(
            &carol,
            "carol",
            at,
            t.iter().map(|t| sealed(t, 25)).collect(),
        )
    };
    assert_eq!(
        f.a.deposit(&alice, d(1000, &["a1", "a2"]), quota).await,
        Ok(2)
    );
    assert_eq!(f.b.deposit(&alice, d(5000, &["a3"]), quota).await, Ok(1));
    full(f.a.deposit(&alice, d(5001, &["a4"]), quota).await);
    assert_eq!(f.a.deposit(&bob, d(2999, &["b1"]), quota).await, Ok(1));
    assert_eq!(f.a.deposit(&bob, d(3000, &["b2"]), quota).await, Ok(1));
    assert_eq!(f.a.deposit(&bob, d(9000, &["b3"]), quota).await, Ok(1));

    // Older than 3000: alice's two and bob's one (3000 itself stays).
    assert_eq!(f.b.expire(3000).await.unwrap(), 3);
    let a = f.a.list(&alice, 10).await.unwrap();
    assert_eq!((tags(&a), a.expired), (vec!["a3".to_string()], 2));
    let b = f.a.list(&bob, 10).await.unwrap();
    assert_eq!(
        (tags(&b), b.expired),
        (vec!["b2".to_string(), "b3".to_string()], 1)
    );
    assert_eq!(f.a.waiting(&alice).await.unwrap(), 1);
    assert_eq!(f.a.waiting(&bob).await.unwrap(), 2);
    assert_eq!(f.a.list(&carol, 10).await.unwrap(), Listing::default());

    // Nothing more to remove; the counts stay.
    assert_eq!(f.a.expire(3000).await.unwrap(), 0);
    assert_eq!(f.b.list(&alice, 10).await.unwrap().expired, 2);

    // The quota is free again: two more fit.
    assert_eq!(
        f.a.deposit(&alice, d(6000, &["a5", "a6", "a7"]), quota)
            .await,
        Ok(2)
    );
    assert_eq!(
        tags(&f.a.list(&alice, 10).await.unwrap()),
        ["a3", "a5", "a6"]
    );

    // A later sweep adds to the count.
    assert_eq!(f.a.expire(5500).await.unwrap(), 2);
    let a = f.b.list(&alice, 10).await.unwrap();
    assert_eq!(
        (tags(&a), a.expired),
        (vec!["a5".to_string(), "a6".to_string()], 3)
    );
    assert_eq!(f.b.list(&bob, 10).await.unwrap().expired, 2);
    assert_eq!(f.a.expire(i64::MAX).await.unwrap(), 3);
    assert_eq!(f.a.waiting(&alice).await.unwrap(), 0);
    assert_eq!(f.a.list(&alice, 10).await.unwrap().expired, 5);
    assert_eq!(f.a.list(&bob, 10).await.unwrap().expired, 3);
}

/// 256 envelopes of 48 KiB (12 MiB): more than one etcd request or answer
/// holds. Stored, listed and acknowledged whole, in order; a byte quota
/// met halfway stores just the prefix that fits.
async fn a_large_deposit_is_stored_listed_and_acked_whole(f: Fixture) {
    const N: usize = 256;
    const SIZE: usize = 48 * 1024;
    let (alice, bob, carol) = (who(), who(), who());
    let big: Vec<Vec<u8>> = (0..N).map(|i| sealed(&format!("e{i:03}"), SIZE)).collect();
    let want: Vec<String> = (0..N).map(|i| format!("e{i:03}")).collect();
    assert_eq!(
        f.a.deposit(&alice, deposit(&bob, "bob", 1, big.clone()), ROOMY)
            .await,
        Ok(N)
    );
    assert_eq!(f.b.waiting(&alice).await.unwrap(), N as u64);
    let l = f.b.list(&alice, N).await.unwrap();
    assert_eq!(tags(&l), want);
    assert!(!l.more);
    assert!(l.envelopes.iter().all(|e| e.sealed.len() == SIZE));
    f.a.ack(&alice, &ids(&l), 0).await.unwrap();
    assert_eq!(f.b.waiting(&alice).await.unwrap(), 0);
    assert_eq!(f.b.list(&alice, N).await.unwrap(), Listing::default());

    let quota = Quota {
        count: 10_000,
        bytes: (200 * SIZE + SIZE / 2) as u64,
    };
    assert_eq!(
        f.b.deposit(&carol, deposit(&bob, "bob", 2, big), quota)
            .await,
        Ok(200)
    );
    let l = f.a.list(&carol, N).await.unwrap();
    assert_eq!(tags(&l), want[..200]);
    let why = full(
        f.a.deposit(
            &carol,
            deposit(&bob, "bob", 3, vec![sealed("x", SIZE)]),
            quota,
        )
        .await,
    );
    assert!(
        why.contains(&format!("200 of 10000 envelopes, {} of", 200 * SIZE)),
        "{why}"
    );
}

/// Two handles (for etcd, two routers) race 2×40 single-envelope deposits
/// into a mailbox holding 50: exactly 50 are stored, and 30 refused.
async fn racing_deposits_never_exceed_the_quota(f: Fixture) {
    let (alice, bob) = (who(), who());
    let quota = Quota {
        count: 50,
        bytes: 1 << 20,
    };
    let mut tasks = Vec::new();
    for (side, store) in [&f.a, &f.b].into_iter().enumerate() {
        for i in 0..40 {
            let store = store.clone();
            let d = deposit(&bob, "bob", 1, vec![sealed(&format!("s{side}-{i}"), 100)]);
            tasks.push(tokio::spawn(async move {
                store.deposit(&alice, d, quota).await
            }));
        }
    }
    let (mut stored, mut refused, mut other) = (0, 0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(n) => stored += n,
            Err(MailError::Full(_)) => refused += 1,
            Err(e) => other.push(e),
        }
    }
    assert!(other.is_empty(), "{other:?}");
    assert_eq!((stored, refused), (50, 30));
    assert_eq!(f.a.waiting(&alice).await.unwrap(), 50);
    let l = f.b.list(&alice, 256).await.unwrap();
    assert_eq!(l.envelopes.len(), 50);
    assert!(!l.more);
    let mut unique = tags(&l);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50);
    // And the byte count held: one ack frees one place, exactly.
    f.a.ack(&alice, &ids(&l)[..1], 0).await.unwrap();
    let d = |t: &str| deposit(&bob, "bob", 2, vec![sealed(t, 100), sealed("no", 100)]);
    assert_eq!(f.b.deposit(&alice, d("late"), quota).await, Ok(1));
    full(f.a.deposit(&alice, d("later"), quota).await);
}

/// What a store wrote is there for the store opened again.
async fn everything_outlives_the_store_handle(f: Fixture) {
    let (alice, bob) = (who(), who());
    f.a.publish(&alice, &mailbox_key(7)).await.unwrap();
    let d = |at, t: &[&str]| deposit(&bob, "bob", at, t.iter().map(|t| sealed(t, 33)).collect());
    assert_eq!(f.a.deposit(&alice, d(10, &["old"]), ROOMY).await, Ok(1));
    assert_eq!(
        f.a.deposit(&alice, d(20, &["x", "y", "z"]), ROOMY).await,
        Ok(3)
    );
    assert_eq!(f.a.expire(15).await.unwrap(), 1);
    let l = f.a.list(&alice, 10).await.unwrap();
    f.a.ack(&alice, &ids(&l)[..1], 0).await.unwrap();
    let before = f.a.list(&alice, 10).await.unwrap();
    assert_eq!(
        (tags(&before), before.expired),
        (vec!["y".to_string(), "z".to_string()], 1)
    );

    let Fixture { a, b, etcd, dir } = f;
    drop((a, b));
    let again = reopen(&etcd, &dir).await;
    assert_eq!(again.published(&alice).await.unwrap(), Some(mailbox_key(7)));
    assert_eq!(again.list(&alice, 10).await.unwrap(), before);
    assert_eq!(again.waiting(&alice).await.unwrap(), 2);
    // Quota still counts what was kept.
    let quota = Quota {
        count: 3,
        bytes: 1 << 20,
    };
    assert_eq!(
        again.deposit(&alice, d(30, &["p", "q"]), quota).await,
        Ok(1)
    );
}

/// etcd only: mail is kept by the recipient's key, outside the prefix the
/// routers mirror, and a value that is not one the store wrote is skipped
/// (with a warning) rather than failing the mailbox; unreadable totals are
/// counted again from the envelopes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn etcd_keeps_mail_by_key_outside_the_registry_and_survives_bad_values() {
    assert!(!MAIL_PREFIX.starts_with(parley::registry::ETCD_PREFIX));
    let f = etcd().await;
    let (alice, bob) = (who(), who());
    let d = |t: &[&str]| deposit(&bob, "bob", 5, t.iter().map(|t| sealed(t, 10)).collect());
    assert_eq!(
        f.a.deposit(&alice, d(&["one", "two", "three"]), ROOMY)
            .await,
        Ok(3)
    );
    let etcd = f.etcd.as_ref().unwrap();
    // Nothing of the mail under the registry's prefix: only the tick each
    // mail write puts there, so routers' mirrors move on at once.
    assert_eq!(
        etcd.keys("").await,
        [format!("{}tick", parley::registry::ETCD_PREFIX)],
        "mail under the registry's prefix"
    );

    let mut raw = etcd_client::Client::connect([&etcd.members[0].client_url], None)
        .await
        .unwrap();
    let hex = hex::encode(alice.as_bytes());
    let boxed = raw
        .get(
            format!("{MAIL_PREFIX}box/{hex}/"),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(boxed.kvs().len(), 3);
    let l = f.a.list(&alice, 10).await.unwrap();
    for (kv, id) in boxed.kvs().iter().zip(ids(&l)) {
        assert_eq!(
            kv.key_str().unwrap(),
            format!("{MAIL_PREFIX}box/{hex}/{id}")
        );
    }

    // The first envelope's value spoiled: the others are still handed out.
    raw.put(boxed.kvs()[0].key(), b"\x01garbage".to_vec(), None)
        .await
        .unwrap();
    let l = f.b.list(&alice, 10).await.unwrap();
    assert_eq!(tags(&l), ["two", "three"]);
    // The totals spoiled: counted again from the keys.
    raw.put(
        format!("{MAIL_PREFIX}meta/{hex}"),
        b"{not json".to_vec(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(f.a.waiting(&alice).await.unwrap(), 3);
    let quota = Quota {
        count: 4,
        bytes: 1 << 20,
    };
    assert_eq!(
        f.a.deposit(&alice, d(&["four", "five"]), quota).await,
        Ok(1)
    );
    assert_eq!(f.b.waiting(&alice).await.unwrap(), 4);
    // The spoiled envelope goes with the age limit, counted.
    assert_eq!(f.b.expire(6).await.unwrap(), 4);
    assert_eq!(f.a.list(&alice, 10).await.unwrap().expired, 4);
    assert_eq!(f.a.waiting(&alice).await.unwrap(), 0);
}

/// etcd stopped: every call fails with `Unavailable`, saying etcd, within
/// a bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_mail_store_over_a_stopped_etcd_is_unavailable() {
    let mut f = etcd().await;
    let (alice, bob) = (who(), who());
    let one = || deposit(&bob, "bob", 1, vec![sealed("m", 10)]);
    assert_eq!(f.a.deposit(&alice, one(), ROOMY).await, Ok(1));
    let l = f.a.list(&alice, 10).await.unwrap();

    f.etcd.as_mut().unwrap().stop(0);
    let started = Instant::now();
    let a = f.a.clone();
    let (key, acked_ids) = (mailbox_key(1), ids(&l));
    let (published, publish, deposited, listed, acked, waiting, expired) = tokio::join!(
        a.published(&alice),
        a.publish(&alice, &key),
        a.deposit(&alice, one(), ROOMY),
        a.list(&alice, 10),
        a.ack(&alice, &acked_ids, 0),
        a.waiting(&alice),
        a.expire(i64::MAX),
    );
    let took = started.elapsed();
    let errors = [
        published.map(drop),
        publish,
        deposited.map(drop),
        listed.map(drop),
        acked,
        waiting.map(drop),
        expired.map(drop),
    ];
    for r in errors {
        match r {
            Err(MailError::Unavailable(m)) => assert!(m.contains("etcd"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(took < Duration::from_secs(15), "took {took:?} to give up");
}
