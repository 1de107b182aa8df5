//! The router over real gRPC: an in-process server on 127.0.0.1:0 driven by
//! the generated tonic client, plus the built `router` binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{login_as, TestRouter};
use parley::identity::Identity;
use parley::proto::registry_event::Kind;
use parley::proto::router_client::RouterClient;
use parley::proto::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

const TTL: Duration = Duration::from_secs(10);

/// Logs `nick` in at 127.0.0.1:`port` as `id`; returns the session token.
async fn login_id(c: &mut RouterClient<Channel>, id: &Identity, nick: &str, port: u16) -> String {
    login_as(c, id, nick, &format!("127.0.0.1:{port}"))
        .await
        .unwrap()
        .token
}

/// Logs `nick` in as a fresh key; returns the session token.
async fn login(c: &mut RouterClient<Channel>, nick: &str, port: u16) -> String {
    login_id(c, &Identity::generate(), nick, port).await
}

#[tokio::test]
async fn login_join_find_and_list_over_grpc() {
    let router = TestRouter::start(TTL).await;
    let mut c = router.client().await;
    let alice_id = Identity::generate();
    let resp = login_as(&mut c, &alice_id, "Alice", "127.0.0.1:7001")
        .await
        .unwrap();
    assert_eq!(resp.token.len(), 32, "128 bits, hex");
    assert_eq!(resp.lease_ttl_ms, 10_000);
    let alice = resp.token;
    let bob = login(&mut c, "bob", 7002).await;
    assert_ne!(alice, bob);

    let joined = c
        .join_room(JoinRoomRequest {
            token: alice.clone(),
            room: "#Rust".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(joined.created);
    assert_eq!(joined.owner, "Alice");
    let joined = c
        .join_room(JoinRoomRequest {
            token: bob.clone(),
            room: "#rust".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!joined.created);
    assert_eq!(joined.members.len(), 2);

    let found = c
        .find(FindRequest {
            name: "ALICE".into(),
            token: bob.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(found.found);
    assert_eq!(found.name, "Alice");
    assert_eq!(found.members[0].address, "127.0.0.1:7001");
    assert_eq!(found.members[0].key, alice_id.public().to_vec());
    assert_eq!(found.key, alice_id.public().to_vec());

    let room = c
        .find(FindRequest {
            name: "#RUST".into(),
            token: alice.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(room.found);
    let mut members: Vec<_> = room
        .members
        .iter()
        .map(|m| (m.nick.as_str(), m.address.as_str()))
        .collect();
    members.sort();
    assert_eq!(
        members,
        [("Alice", "127.0.0.1:7001"), ("bob", "127.0.0.1:7002")]
    );

    let nobody = c
        .find(FindRequest {
            name: "carol".into(),
            token: alice.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!nobody.found);
    assert!(nobody.members.is_empty());
    assert!(nobody.key.is_empty(), "carol never logged in");

    let rooms = c
        .list_rooms(ListRoomsRequest {
            token: alice.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rooms.rooms,
        vec![RoomInfo {
            name: "#Rust".into(),
            members: 2,
            owner: "Alice".into()
        }]
    );
    let users = c
        .list_users(ListUsersRequest {
            token: alice.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let nicks: Vec<_> = users.users.iter().map(|u| u.nick.as_str()).collect();
    assert_eq!(nicks, ["Alice", "bob"]);

    c.user_logout(LogoutRequest {
        token: bob.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let room = c
        .find(FindRequest {
            name: "#rust".into(),
            token: alice.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(room.members.len(), 1);
    router.stop().await;
}

#[tokio::test]
async fn errors_carry_the_right_codes() {
    let router = TestRouter::start(TTL).await;
    let mut c = router.client().await;
    let alice = login(&mut c, "alice", 7001).await;
    let bob = login(&mut c, "bob", 7002).await;

    // Nick held by someone else.
    let somebody_else = Identity::generate();
    let err = login_as(&mut c, &somebody_else, "ALICE", "127.0.0.1:7003")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // Bad names and addresses say what is allowed.
    let err = login_as(&mut c, &somebody_else, "no spaces", "127.0.0.1:7003")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("A-Z a-z 0-9 _ -"),
        "{}",
        err.message()
    );
    let err = login_as(&mut c, &somebody_else, "carol", "not-an-address")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("host:port"), "{}", err.message());
    let err = c
        .join_room(JoinRoomRequest {
            token: alice.clone(),
            room: "rust".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A parting message over 300 characters or with control characters is
    // refused, and changes nothing: alice stays in the room, bob online.
    c.join_room(JoinRoomRequest {
        token: alice.clone(),
        room: "#part".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    for bad in ["x".repeat(301), "bye\u{7}".into(), "two\nlines".into()] {
        let err = c
            .leave_room(LeaveRoomRequest {
                token: alice.clone(),
                room: "#part".into(),
                message: bad.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("parting message"), "{err:?}");
        let err = c
            .user_logout(LogoutRequest {
                token: bob.clone(),
                message: bad,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let found = c
        .find(FindRequest {
            name: "#part".into(),
            token: bob.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let nicks: Vec<_> = found.members.iter().map(|m| m.nick.as_str()).collect();
    assert_eq!(nicks, ["alice"]);
    c.heartbeat(HeartbeatRequest { token: bob.clone() })
        .await
        .unwrap();
    c.leave_room(LeaveRoomRequest {
        token: alice.clone(),
        room: "#part".into(),
        message: "x".repeat(300),
    })
    .await
    .unwrap();

    // Wrong tokens.
    for token in ["", "deadbeef", "00000000000000000000000000000000"] {
        let err = c
            .heartbeat(HeartbeatRequest {
                token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = c
            .join_room(JoinRoomRequest {
                token: token.into(),
                room: "#x".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = c
            .watch(WatchRequest {
                token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // Lookups need a session too.
        let err = c
            .find(FindRequest {
                name: "alice".into(),
                token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = c
            .list_rooms(ListRoomsRequest {
                token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = c
            .list_users(ListUsersRequest {
                token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }

    // Only the owner deletes.
    c.join_room(JoinRoomRequest {
        token: alice.clone(),
        room: "#a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.join_room(JoinRoomRequest {
        token: bob.clone(),
        room: "#a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c
        .delete_room(DeleteRoomRequest {
            token: bob.clone(),
            room: "#a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .delete_room(DeleteRoomRequest {
            token: alice.clone(),
            room: "#missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Nothing changed.
    let rooms = c
        .list_rooms(ListRoomsRequest {
            token: alice.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rooms.rooms.len(), 1);
    assert_eq!(rooms.rooms[0].members, 2);
    router.stop().await;
}

#[tokio::test]
async fn watch_streams_presence_and_membership() {
    let router = TestRouter::start(TTL).await;
    let mut c = router.client().await;
    let alice = login(&mut c, "alice", 7001).await;
    let mut events = c
        .watch(WatchRequest {
            token: alice.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    c.join_room(JoinRoomRequest {
        token: alice.clone(),
        room: "#r".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Bob comes online sharing no room with alice: his presence is not
    // hers to see (nobody shares a room with a session that just began).
    let bob = login(&mut c, "bob", 7002).await;
    // Carol never shares a room with alice: none of her events reach alice.
    let carol = login(&mut c, "carol", 7003).await;
    c.join_room(JoinRoomRequest {
        token: carol.clone(),
        room: "#elsewhere".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.join_room(JoinRoomRequest {
        token: bob.clone(),
        room: "#r".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.leave_room(LeaveRoomRequest {
        token: bob.clone(),
        room: "#r".into(),
        message: "see ya".into(),
    })
    .await
    .unwrap();
    c.delete_room(DeleteRoomRequest {
        token: alice.clone(),
        room: "#r".into(),
    })
    .await
    .unwrap();
    // Alice and bob share #s when bob goes offline, so alice sees it.
    for token in [&alice, &bob] {
        c.join_room(JoinRoomRequest {
            token: token.clone(),
            room: "#s".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    c.user_logout(LogoutRequest {
        token: carol,
        ..Default::default()
    })
    .await
    .unwrap();
    c.user_logout(LogoutRequest {
        token: bob,
        message: "bye all".into(),
    })
    .await
    .unwrap();

    // The parting messages come with the leave and the quit.
    let expected = [
        "joined #r alice",
        "joined #r bob",
        "left #r bob (see ya)",
        "deleted #r by alice",
        "joined #s alice",
        "joined #s bob",
        "left #s bob (bye all)",
        "offline bob",
    ];
    let mut seen = Vec::new();
    let mut last_rev = 0;
    while seen.len() < expected.len() {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("event within 5 s")
            .expect("stream open")
            .unwrap();
        assert!(e.revision > last_rev, "revisions grow");
        last_rev = e.revision;
        seen.push(match e.kind.unwrap() {
            Kind::UserOnline(m) => format!("online {}", m.nick),
            Kind::UserOffline(m) => format!("offline {}", m.nick),
            Kind::MemberJoined(r) => format!("joined {} {}", r.room, r.member.unwrap().nick),
            Kind::MemberLeft(r) => {
                format!("left {} {} ({})", r.room, r.member.unwrap().nick, r.message)
            }
            Kind::RoomDeleted(r) => format!("deleted {} by {}", r.room, r.by),
            Kind::NickChanged(n) => format!("renamed {}", n.old),
        });
    }
    assert_eq!(seen, expected);
    router.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_watch_streams() {
    let router = TestRouter::start(TTL).await;
    let mut c = router.client().await;
    let alice = login(&mut c, "alice", 7001).await;
    let mut events = c
        .watch(WatchRequest {
            token: alice,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // stop() waits for the server to finish: an open Watch must not hold it.
    router.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("stream ends promptly");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

#[tokio::test]
async fn serves_health_and_reflection() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let router = TestRouter::start(TTL).await;
    // Health and reflection are served over the same TLS links.
    let addr = router.addr.to_string();
    let channel = parley::tls::Tls::new(&Identity::generate())
        .unwrap()
        .channel(
            parley::net::endpoint(&addr).unwrap(),
            &addr,
            parley::tls::Expect::key(&router.key()),
        );
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "parley.v1.Router".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer {msg:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"parley.v1.Router"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    router.stop().await;
}

#[tokio::test]
async fn the_same_key_takes_the_nick_back_at_once() {
    let router = TestRouter::start(TTL).await;
    let mut c = router.client().await;
    let alice_id = Identity::generate();
    let old = login_id(&mut c, &alice_id, "alice", 7001).await;
    let resp = login_as(&mut c, &alice_id, "alice", "127.0.0.1:7009")
        .await
        .unwrap();
    assert!(resp.reclaimed);
    let err = c
        .heartbeat(HeartbeatRequest { token: old })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let found = c
        .find(FindRequest {
            name: "alice".into(),
            token: resp.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.members[0].address, "127.0.0.1:7009");
    // The nick stays bound to alice's key after she logs out: another key
    // cannot take it.
    c.user_logout(LogoutRequest {
        token: resp.token,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = login_as(&mut c, &Identity::generate(), "alice", "127.0.0.1:7010")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let back = login_as(&mut c, &alice_id, "alice", "127.0.0.1:7011")
        .await
        .unwrap();
    assert!(!back.reclaimed, "no live session to take over");
    router.stop().await;
}

/// The built binary prints exactly its listen line and its key line on
/// stdout, serves, and exits cleanly on SIGTERM; a port in use is one line
/// and exit code 1.
#[tokio::test]
async fn router_binary_prints_its_address_and_stops_on_sigterm() {
    // The key file lives in a scratch directory, not the person's home.
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("router.key");
    let key_file = key_file.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_router"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--lease-ttl",
            "2",
            "--key-file",
            key_file,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("router listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned();
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    assert_ne!(sock.port(), 0);

    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let fingerprint = line
        .trim_end()
        .strip_prefix("router key ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");

    // A client pinned to the printed key gets through.
    let channel = parley::tls::Tls::new(&Identity::generate())
        .unwrap()
        .channel(
            parley::net::endpoint(&addr).unwrap(),
            &addr,
            parley::tls::Expect::fingerprint(fingerprint),
        );
    let mut c = RouterClient::new(channel);
    let token = login(&mut c, "alice", 7001).await;
    assert_eq!(token.len(), 32);

    // Same port again: one line, exit 1.
    let busy = Command::new(env!("CARGO_BIN_EXE_router"))
        .args(["--listen", &addr, "--key-file", key_file])
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(1));
    let err = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(busy.stdout.is_empty());

    // SIGTERM, with a Watch stream open: the router still exits promptly.
    let _events = c
        .watch(WatchRequest {
            token,
            ..Default::default()
        })
        .await
        .unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "router ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "stdout holds only the listen and key lines: {rest:?}"
    );
}

#[tokio::test]
async fn a_watch_follows_the_presence_of_private_partners_it_names() {
    let router = TestRouter::start(TTL).await;
    let mut c = router.client().await;
    let alice = login(&mut c, "alice", 7001).await;
    let err = c
        .watch(WatchRequest {
            token: alice.clone(),
            follow: vec!["#not-a-nick".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut events = c
        .watch(WatchRequest {
            token: alice.clone(),
            follow: vec!["Bob".into()],
        })
        .await
        .unwrap()
        .into_inner();
    // Carol is not followed; bob, sharing no room with alice, is, and
    // follows her back (a private partner): his watch naming her tells her
    // he is online (his login came before it), then his goings and
    // comings reach her.
    login(&mut c, "carol", 7003).await;
    let bob_id = Identity::generate();
    let bob = login_id(&mut c, &bob_id, "bob", 7002).await;
    drop(
        c.watch(WatchRequest {
            token: bob.clone(),
            follow: vec!["alice".into()],
        })
        .await
        .unwrap(),
    );
    c.user_logout(LogoutRequest {
        token: bob,
        message: String::new(),
    })
    .await
    .unwrap();
    login_id(&mut c, &bob_id, "bob", 7002).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match e.kind {
            Some(registry_event::Kind::UserOnline(m)) => seen.push((true, m.nick)),
            Some(registry_event::Kind::UserOffline(m)) => seen.push((false, m.nick)),
            other => panic!("{other:?}"),
        }
    }
    let bob = |online| (online, "bob".to_string());
    assert_eq!(seen, [bob(true), bob(false), bob(true)]);
    router.stop().await;
}
