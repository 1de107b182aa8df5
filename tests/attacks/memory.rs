//! Issue 23, attack 3: `PullHistory` streams opened and never read cannot
//! make the serving peer hold much memory. The victim is a real `peer`
//! process holding a long private conversation with eve; eve, with her own
//! key and session, opens 100 pulls of it and reads none. Past the cap she
//! is told RESOURCE_EXHAUSTED, and the victim's resident memory (VmRSS,
//! read from /proc) grows by less than a bound; once she drops them an
//! honest pull reads the whole history.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use parley::identity::Identity;
use parley::names::Nick;
use parley::peer::{HISTORY_FILE, KEY_FILE};
use parley::proto::{Kind, PullHistoryRequest};
use parley::store::{lock_data_dir, Store};
use tonic::Code;

/// Messages of the victim's history with eve, of [`BODY`] bytes each:
/// about 6 MiB, more than every page an unread stream used to buffer.
const MESSAGES: usize = 6_000;
const BODY: usize = 1_000;
/// Streams eve opens.
const STREAMS: usize = 100;
/// What the victim's memory may grow by, whatever eve does (without the
/// caps and lazily made pages it grew by hundreds of MiB).
const GROWTH_BOUND_KIB: u64 = 64 * 1024;
const CONV: &str = "@eve+victim";

/// The resident memory of process `pid`, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// Writes the victim's own side of a long conversation with eve into its
/// data directory, signed with its own key, before it starts.
async fn seed_history(dir: &std::path::Path) {
    let owned = dir.to_path_buf();
    let (lock, store) = tokio::task::spawn_blocking(move || {
        let lock = lock_data_dir(&owned).unwrap();
        let key = Arc::new(Identity::load_or_create(&owned.join(KEY_FILE)).unwrap());
        let store = Store::open_signed(&owned.join(HISTORY_FILE), Some(key)).unwrap();
        (lock, store)
    })
    .await
    .unwrap();
    let incarnation = store.identity().incarnation;
    let victim = Nick::parse("victim").unwrap();
    let body = "x".repeat(BODY);
    for _ in 0..MESSAGES / 500 {
        let appends = (0..500).map(|_| {
            store.append_own_kind(
                CONV,
                victim.as_str(),
                incarnation,
                (Kind::Text, &body),
                parley::message::now_ms(),
                Vec::new(),
            )
        });
        futures::future::try_join_all(appends).await.unwrap();
    }
    drop((store, lock));
}

fn pull_all() -> PullHistoryRequest {
    PullHistoryRequest {
        conversation: CONV.into(),
        have: Vec::new(),
        // As many per page as the victim allows.
        page_size: 1_000,
    }
}

#[tokio::test]
async fn unread_pulls_do_not_eat_the_serving_peers_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("victim");
    seed_history(&dir).await;
    let (router, router_addr) = Proc::router(120).await;
    let mut victim = Proc::spawn_peer(&router_addr, "victim", &dir, &[]);
    let ready = victim.event("ready").await;
    let victim_addr = ready["listen"].as_str().unwrap().to_owned();

    // Eve: her own key and session; the victim's partner in the history.
    let eve = Identity::generate();
    let mut c = router_client(&router_addr);
    login_as(&mut c, &eve, "eve", "127.0.0.1:9").await.unwrap();
    let raw = chat_client_as(&victim_addr, &eve);

    // One honest pull first: the history is there and readable, and the
    // victim's memory settles after its first pull.
    let mut honest = raw.clone();
    assert_eq!(read_all(&mut honest).await.unwrap(), MESSAGES);
    let before = vm_rss_kib(victim.pid());

    // 100 pulls opened, none read.
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..STREAMS {
        let mut c = raw.clone();
        match c.pull_history(pull_all()).await {
            Ok(stream) => open.push(stream.into_inner()),
            Err(status) => refused.push(status),
        }
    }
    // Whatever the victim would make for the open streams it makes now;
    // its peak over a few seconds is what is bounded.
    let mut peak = before;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(vm_rss_kib(victim.pid()));
    }
    let grew = peak.saturating_sub(before);
    eprintln!(
        "victim VmRSS {before} KiB before, {peak} KiB at most with {} unread streams open ({} refused): grew {grew} KiB",
        open.len(),
        refused.len()
    );
    assert!(
        grew < GROWTH_BOUND_KIB,
        "the victim's memory grew by {grew} KiB for unread streams"
    );
    // Past the cap (a few streams per key), a clear refusal.
    assert!(
        !open.is_empty() && open.len() <= 32,
        "{} streams opened",
        open.len()
    );
    assert_eq!(open.len() + refused.len(), STREAMS);
    assert!(
        refused
            .iter()
            .all(|s| s.code() == Code::ResourceExhausted && s.message().contains("per key")),
        "{:?}",
        refused.first()
    );

    // Dropped, they give their places back: an honest pull reads it all.
    drop(open);
    // (The victim learns of the drops as the resets arrive: a moment.)
    let mut read = read_all(&mut honest).await;
    for _ in 0..50 {
        match &read {
            Err(s) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                read = read_all(&mut honest).await;
            }
            _ => break,
        }
    }
    assert_eq!(read.unwrap(), MESSAGES);

    victim.quit().await;
    router.terminate().await;
}

/// Reads one whole pull of the history; the number of messages it held.
async fn read_all(
    c: &mut parley::proto::chat_client::ChatClient<tonic::transport::Channel>,
) -> Result<usize, tonic::Status> {
    let mut pages = c.pull_history(pull_all()).await?.into_inner();
    let mut n = 0;
    while let Some(page) = pages.message().await? {
        n += page.messages.len();
    }
    Ok(n)
}
