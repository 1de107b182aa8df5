//! Load, bounded: 50 peers in one room with 10 senders, and a router under
//! 5,000 sessions in 500 rooms. Run with `--nocapture` to see the figures
//! the README quotes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ids, Proc, TestPeer, TestRouter};
use futures::stream::{self, StreamExt};
use parley::names::Room;
use parley::proto::router_client::RouterClient;
use parley::proto::*;
use tonic::transport::Channel;

/// Peak resident memory of a process, from /proc (Linux), in KiB.
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_peers_ten_senders_five_thousand_messages_one_order() {
    const PEERS: usize = 50;
    const SENDERS: usize = 10;
    const EACH: usize = 500;
    let started = Instant::now();
    let router = TestRouter::start(Duration::from_secs(30)).await;
    let mut peers = Vec::new();
    for i in 0..PEERS {
        let p = TestPeer::start(&router, &format!("p{i:02}")).await;
        p.join("#load").await;
        peers.push(p);
    }
    let peers = Arc::new(peers);
    let room = Room::parse("#load").unwrap();
    let sending = Instant::now();
    let tasks: Vec<_> = (0..SENDERS)
        .map(|s| {
            let peers = peers.clone();
            let room = room.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let r = peers[s]
                        .peer
                        .send_room(&room, &format!("sender {s} message {i}"))
                        .await
                        .unwrap();
                    assert!(r.pending.is_empty(), "{:?}", r.pending);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let send_time = sending.elapsed();
    let total = SENDERS * EACH;
    let reference = peers[PEERS - 1].wait_for("#load", total).await;
    assert_eq!(reference.len(), total);
    for p in peers.iter() {
        let h = p.wait_for("#load", total).await;
        assert_eq!(ids(&h), ids(&reference), "{} differs", p.peer.nick());
    }
    println!(
        "load: {PEERS} peers, {SENDERS} senders x {EACH}: {total} messages \
         ({} deliveries) sent in {:.1} s ({:.0} msgs/s, {:.0} deliveries/s), \
         {:.1} s in all, test process peak {} MiB",
        total * (PEERS - 1),
        send_time.as_secs_f64(),
        total as f64 / send_time.as_secs_f64(),
        (total * (PEERS - 1)) as f64 / send_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        peak_kib(std::process::id()).unwrap_or(0) / 1024,
    );
    let peers = Arc::try_unwrap(peers).ok().expect("senders done");
    for p in peers {
        p.stop().await;
    }
    router.stop().await;
}

async fn login(c: &mut RouterClient<Channel>, i: usize) -> Result<String, tonic::Status> {
    let id = parley::identity::Identity::generate();
    let address = format!("127.0.0.1:{}", 10_000 + i);
    Ok(common::login_as(c, &id, &format!("user{i}"), &address)
        .await?
        .token)
}

/// Every room, as seen by the session holding `token`.
async fn list_rooms(c: &RouterClient<Channel>, token: &str) -> Vec<RoomInfo> {
    let mut c = c.clone();
    c.list_rooms(ListRoomsRequest {
        token: token.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .rooms
}

async fn heartbeat_all(c: &RouterClient<Channel>, tokens: &[String]) -> usize {
    stream::iter(tokens.iter().cloned())
        .map(|token| {
            let mut c = c.clone();
            async move { c.heartbeat(HeartbeatRequest { token }).await.is_ok() }
        })
        .buffer_unordered(128)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_five_thousand_sessions_and_expires_leases_on_time() {
    const USERS: usize = 5_000;
    const ROOMS: usize = 500;
    // Every session must still hold its lease when the logins end: 5,000
    // logins (each with its dial-back and mailbox key) take about 1.6 s on
    // a quiet 2-core machine and were seen past 3 s beside two builds.
    let lease = 8;
    // 5,000 people from one address (loopback): past a person's router's
    // per-address limits, which this test is not about.
    let key = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-router.key");
    let (router, addr) = Proc::router_with(
        "127.0.0.1:0",
        lease,
        &key,
        &[
            "--new-nick-burst",
            "100000",
            "--logins-per-address",
            "100000",
        ],
    )
    .await;
    let c = common::router_client(&addr);
    let started = Instant::now();

    // Every login and join answered.
    let tokens: Vec<String> = stream::iter(0..USERS)
        .map(|i| {
            let mut c = c.clone();
            async move {
                let token = login(&mut c, i).await.expect("login answered");
                c.join_room(JoinRoomRequest {
                    token: token.clone(),
                    room: format!("#room{}", i % ROOMS),
                    ..Default::default()
                })
                .await
                .expect("join answered");
                token
            }
        })
        .buffer_unordered(128)
        .collect()
        .await;
    let logged_in = started.elapsed();
    assert_eq!(tokens.len(), USERS);
    assert_eq!(heartbeat_all(&c, &tokens).await, USERS);
    let rooms = list_rooms(&c, &tokens[0]).await;
    assert_eq!(rooms.len(), ROOMS);
    assert!(rooms.iter().all(|r| r.members == (USERS / ROOMS) as u32));

    // Half stop heartbeating; the other half keep their leases alive.
    let (alive, silent) = tokens.split_at(USERS / 2);
    // Lookups need a live session: one that keeps heartbeating.
    let looker = &alive[0];
    let last_beat = Instant::now();
    let expected_gone = last_beat + Duration::from_secs(lease);
    let mut gone_at = None;
    while gone_at.is_none() {
        assert_eq!(heartbeat_all(&c, alive).await, alive.len());
        let users = c
            .clone()
            .list_users(ListUsersRequest {
                token: looker.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .users
            .len();
        let now = Instant::now();
        if users == USERS / 2 {
            gone_at = Some(now);
        } else {
            // Nobody is dropped while the lease still runs.
            if now + Duration::from_millis(200) < expected_gone {
                assert_eq!(users, USERS, "dropped before the lease ended");
            }
            assert!(
                now < expected_gone + Duration::from_secs(3),
                "expired leases not dropped 3 s after they ended ({users} users left)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late_by = gone_at.unwrap().saturating_duration_since(expected_gone);
    // The silent ones are gone from rooms and their tokens are refused.
    assert_eq!(heartbeat_all(&c, silent).await, 0);
    let rooms = list_rooms(&c, looker).await;
    let members: u32 = rooms.iter().map(|r| r.members).sum();
    assert_eq!(members as usize, USERS / 2);
    let peak = peak_kib(router.pid()).unwrap_or(0);
    println!(
        "router: {USERS} logins + joins into {ROOMS} rooms in {:.2} s, \
         {} expired leases dropped {:.2} s after the lease ended, router peak {} MiB",
        logged_in.as_secs_f64(),
        silent.len(),
        late_by.as_secs_f64(),
        peak / 1024
    );
    router.terminate().await;
}
