//! Test harness: servers started in-process on 127.0.0.1:0, stopped by the
//! handle (explicitly with `stop`, or on drop).

#![allow(dead_code)] // each test crate uses a different part of the harness

pub mod etcd;
pub mod netns;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parley::identity::Identity;
use parley::net::bind_loopback;
use parley::proto::router_client::RouterClient;
use parley::registry::MemoryRegistry;
use parley::router::RouterHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A router client over a TLS link presenting a throwaway key, taking
/// whatever key the router presents.
pub fn router_client(addr: &str) -> RouterClient<Channel> {
    let tls = parley::tls::Tls::new(&Identity::generate()).unwrap();
    parley::router_client::client(&tls, addr, parley::tls::Expect::first_seen()).unwrap()
}

/// A router client over a TLS link presenting `id`'s key.
pub fn router_client_as(addr: &str, id: &Identity) -> RouterClient<Channel> {
    let tls = parley::tls::Tls::new(id).unwrap();
    parley::router_client::client(&tls, addr, parley::tls::Expect::first_seen()).unwrap()
}

/// A chat client of the peer at `addr`, over a TLS link presenting `id`.
pub fn chat_client_as(
    addr: &str,
    id: &Identity,
) -> parley::proto::chat_client::ChatClient<Channel> {
    let tls = parley::tls::Tls::new(id).unwrap();
    let channel = tls.channel(
        parley::net::endpoint(addr).unwrap(),
        addr,
        parley::tls::Expect::first_seen(),
    );
    parley::proto::chat_client::ChatClient::new(channel)
}

/// Logs `nick` in at `address` as `id`, by signing a fresh challenge (no
/// dial-back: nothing serves at `address`).
pub async fn login_as(
    c: &mut RouterClient<Channel>,
    id: &Identity,
    nick: &str,
    address: &str,
) -> Result<parley::proto::LoginResponse, tonic::Status> {
    parley::router_client::login(c.clone(), id, nick, address, false).await
}

/// A router serving an in-memory registry on an ephemeral loopback port;
/// dropping it stops it.
pub struct TestRouter {
    pub addr: SocketAddr,
    router: RouterHandle,
}

impl TestRouter {
    pub async fn start(ttl: Duration) -> TestRouter {
        Self::start_on(bind_loopback().await.unwrap(), ttl).await
    }

    /// Starts a router on an already bound listener (to restart one on the
    /// same port).
    pub async fn start_on(listener: TcpListener, ttl: Duration) -> TestRouter {
        Self::start_with(
            listener,
            parley::registry::MemoryOptions::new(ttl),
            parley::router::RouterLimits::default(),
        )
        .await
    }

    /// Starts a router whose registry and limits are made as given (a
    /// registry file, a short binding TTL, a small binding rate).
    pub async fn start_with(
        listener: TcpListener,
        options: parley::registry::MemoryOptions,
        limits: parley::router::RouterLimits,
    ) -> TestRouter {
        let registry = Arc::new(MemoryRegistry::with(options).unwrap());
        // One key for every test router: one restarted on its port keeps
        // its key, as a real router does with its key file.
        let router =
            RouterHandle::spawn_with(listener, registry, Identity::from_seed([7; 32]), limits)
                .unwrap();
        TestRouter {
            addr: router.addr(),
            router,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The key the router's links present.
    pub fn key(&self) -> parley::identity::PublicKey {
        self.router.key()
    }

    /// What the router's relay has done so far.
    pub fn relay_counts(&self) -> parley::router::RelayCounts {
        self.router.relay_counts()
    }

    /// A TLS client of the router, presenting a throwaway key.
    pub async fn client(&self) -> RouterClient<Channel> {
        router_client(&self.addr.to_string())
    }

    /// Stops the router and waits until it has shut down.
    pub async fn stop(self) {
        self.router.stop().await.expect("router stops cleanly");
    }
}

use parley::names::{Nick, Room};
use parley::peer::{Peer, PeerConfig, PeerEvent};
use parley::proto::ChatMessage;
use tokio::sync::mpsc;

/// A peer started in-process on 127.0.0.1:0 with its own data directory.
pub struct TestPeer {
    pub peer: Peer,
    pub events: mpsc::Receiver<PeerEvent>,
    pub dir: std::path::PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestPeer {
    pub async fn start(router: &TestRouter, nick: &str) -> TestPeer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(nick);
        let mut p = Self::start_in(router.addr, nick, dir).await.unwrap();
        p._tmp = Some(tmp);
        p
    }

    /// Starts a peer on a given data directory (to restart one).
    pub async fn start_in(
        router: SocketAddr,
        nick: &str,
        dir: std::path::PathBuf,
    ) -> Result<TestPeer, parley::peer::PeerError> {
        let listener = bind_loopback().await.unwrap();
        Self::launch(router, nick, listener, dir, |_| {}).await
    }

    /// Every peer of the harness starts here: on `listener`, with
    /// [`PeerConfig::new`]'s defaults as `tune` adjusts them (an advertised
    /// address, a short sync interval).
    async fn launch(
        router: SocketAddr,
        nick: &str,
        listener: TcpListener,
        dir: std::path::PathBuf,
        tune: impl FnOnce(&mut PeerConfig),
    ) -> Result<TestPeer, parley::peer::PeerError> {
        let mut config = PeerConfig::new(
            Nick::parse(nick).unwrap(),
            router.to_string(),
            listener,
            dir.clone(),
        );
        tune(&mut config);
        let (peer, events) = Peer::start(config).await?;
        Ok(TestPeer {
            peer,
            events,
            dir,
            _tmp: None,
        })
    }

    pub async fn join(&self, room: &str) -> parley::peer::Joined {
        self.peer.join(&Room::parse(room).unwrap()).await.unwrap()
    }

    pub async fn say(&self, room: &str, body: &str) -> parley::peer::SendReport {
        self.peer
            .send_room(&Room::parse(room).unwrap(), body)
            .await
            .unwrap()
    }

    pub async fn tell(&self, nick: &str, body: &str) -> parley::peer::SendReport {
        self.peer
            .send_private(&Nick::parse(nick).unwrap(), body)
            .await
            .unwrap()
    }

    /// Every text message this peer holds for a conversation, in display
    /// order (a room's creation event left out: the tests count what
    /// people wrote).
    pub async fn history(&self, conv: &str) -> Vec<ChatMessage> {
        let mut all = self.peer.store().all(conv).await.unwrap();
        all.retain(|m| m.kind == parley::proto::Kind::Text as i32);
        all
    }

    /// The bodies of [`TestPeer::history`], in order.
    pub async fn bodies(&self, conv: &str) -> Vec<String> {
        self.history(conv)
            .await
            .into_iter()
            .map(|m| m.body)
            .collect()
    }

    /// Waits for the next message event (10 s at most).
    pub async fn next_message(&mut self) -> (ChatMessage, bool) {
        self.next_event(Duration::from_secs(10), |ev| match ev {
            PeerEvent::Message { msg, late } => Some((msg, late)),
            _ => None,
        })
        .await
    }

    /// Waits (at most `within`) for the next event `pick` takes, skipping
    /// the others.
    pub async fn next_event<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(PeerEvent) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no such event within {within:?}", self.peer.nick()))
                .expect("peer running");
            if let Some(picked) = pick(ev) {
                return picked;
            }
        }
    }

    /// Waits until this peer holds `n` messages of `conv` (10 s at most).
    pub async fn wait_for(&self, conv: &str, n: usize) -> Vec<ChatMessage> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let h = self.history(conv).await;
            if h.len() >= n {
                return h;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} holds {} of {n} messages of {conv}",
                self.peer.nick(),
                h.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.peer.shutdown().await;
    }
}

/// The identity and order of a history, for comparing two peers' copies.
pub fn ids(h: &[ChatMessage]) -> Vec<(String, u64, u64, String)> {
    h.iter()
        .map(|m| {
            (
                m.author.to_lowercase(),
                m.incarnation,
                m.seq,
                m.body.clone(),
            )
        })
        .collect()
}

/// Where a child's stderr goes: nowhere, or, with `PARLEY_TEST_LOGS=DIR`
/// set, to a file of its own in DIR (to see why a test failed).
fn stderr_sink() -> std::process::Stdio {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("PARLEY_TEST_LOGS") else {
        return std::process::Stdio::null();
    };
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::path::Path::new(&dir).join(format!("{}-{n}.log", std::process::id()));
    match std::fs::File::create(&path) {
        Ok(f) => f.into(),
        Err(_) => std::process::Stdio::null(),
    }
}

/// A real `router` or `peer` process, its stdout read line by line.
pub struct Proc {
    pub child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    /// Events skipped while waiting for another type, oldest first.
    pub skipped: Vec<serde_json::Value>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// A router's own data directory (its registry file), gone with it.
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    pub fn spawn(bin: &str, args: &[&str]) -> Proc {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args);
        Proc::spawn_command(cmd)
    }

    /// Starts `cmd` (a binary, or one run inside a network namespace by
    /// [`netns::Lan::command`]): stdin and stdout piped, killed on drop.
    pub fn spawn_command(mut cmd: tokio::process::Command) -> Proc {
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr_sink())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        Proc {
            child,
            stdin,
            skipped: Vec::new(),
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
            _dir: None,
        }
    }

    /// Starts the `router` binary on a free port; returns it and its address.
    pub async fn router(ttl_secs: u64) -> (Proc, String) {
        Self::router_on("127.0.0.1:0", ttl_secs).await
    }

    /// Starts the `router` binary on `listen` (to restart one on its port).
    pub async fn router_on(listen: &str, ttl_secs: u64) -> (Proc, String) {
        // One key for every router the tests start, kept under the target
        // directory: a router restarted on its port keeps its key, as a
        // real one does, and nothing is written to the person's home.
        let key = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-router.key");
        Self::router_with(listen, ttl_secs, &key, &[]).await
    }

    /// Starts the `router` binary on `listen` with its key in `key_file`
    /// and `extra` arguments (`--etcd URL`); returns it and its address.
    /// Its registry file goes to a fresh directory of its own unless
    /// `extra` names one (`--data-dir`): test routers share a key file,
    /// and must not share the bindings of every test before.
    pub async fn router_with(
        listen: &str,
        ttl_secs: u64,
        key_file: &std::path::Path,
        extra: &[&str],
    ) -> (Proc, String) {
        let ttl = ttl_secs.to_string();
        let key = key_file.to_str().expect("a UTF-8 key path");
        let mut args = vec!["--listen", listen, "--lease-ttl", &ttl, "--key-file", key];
        args.extend_from_slice(extra);
        let dir = if extra.contains(&"--data-dir") {
            None
        } else {
            Some(tempfile::tempdir().unwrap())
        };
        let data_dir = dir.as_ref().map(|d| d.path().to_str().unwrap().to_owned());
        if let Some(d) = &data_dir {
            args.extend_from_slice(&["--data-dir", d]);
        }
        let mut p = Proc::spawn(env!("CARGO_BIN_EXE_router"), &args);
        p._dir = dir;
        let line = p.line().await.expect("listen line");
        let addr = line
            .strip_prefix("router listening on ")
            .expect("listen line")
            .to_owned();
        let line = p.line().await.expect("key line");
        assert!(line.starts_with("router key SHA256:"), "{line}");
        (p, addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process running")
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`, `TERM`) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Stops the process with SIGTERM; it must exit cleanly within 10 s.
    pub async fn terminate(self) {
        self.terminate_within(Duration::from_secs(10)).await;
    }

    /// Stops the process with SIGTERM; it must exit cleanly within `within`.
    pub async fn terminate_within(mut self, within: Duration) {
        self.signal("TERM");
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("exit within {within:?} of SIGTERM"))
            .unwrap();
        assert!(status.success(), "{status:?}");
    }

    /// Kills the process with SIGKILL and waits for it to be gone.
    pub async fn kill9(mut self) {
        self.signal("KILL");
        let _ = self.child.wait().await;
    }

    /// The text messages of `/history CONV` (all of them, a room's
    /// creation event left out), as (from, seq, body).
    pub async fn history(&mut self, conv: &str) -> Vec<(String, u64, String)> {
        self.send(&format!("/history {conv} 1000000")).await;
        let h = self.event("history").await;
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m.get("kind").is_none())
            .map(|m| {
                (
                    m["from"].as_str().unwrap().to_owned(),
                    m["author_seq"].as_u64().unwrap(),
                    m["body"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Starts the `peer` binary in JSON mode and waits for `ready`.
    pub async fn peer(router: &str, nick: &str, dir: &std::path::Path, extra: &[&str]) -> Proc {
        let mut p = Self::spawn_peer(router, nick, dir, extra);
        let ready = p.event("ready").await;
        assert_eq!(ready["nick"], nick);
        p
    }

    /// Starts the `peer` binary in JSON mode without waiting for it.
    pub fn spawn_peer(router: &str, nick: &str, dir: &std::path::Path, extra: &[&str]) -> Proc {
        let dir = dir.to_str().unwrap();
        let mut args = vec![
            "--nick",
            nick,
            "--router",
            router,
            "--data-dir",
            dir,
            "--json",
        ];
        args.extend_from_slice(extra);
        Proc::spawn(env!("CARGO_BIN_EXE_peer"), &args)
    }

    /// The next stdout line (10 s at most); None at end of output.
    pub async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
    }

    /// Skips lines until a JSON event of type `ty` (10 s at most).
    pub async fn event(&mut self, ty: &str) -> serde_json::Value {
        loop {
            let line = self
                .line()
                .await
                .unwrap_or_else(|| panic!("output ended before a {ty:?} event"));
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            if v["type"] == ty {
                return v;
            }
            self.skipped.push(v);
        }
    }

    pub async fn send(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes stdin (end of input means /quit) and waits for a clean exit.
    pub async fn quit(mut self) {
        self.stdin = None;
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exit within 10 s")
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

/// A TCP proxy on 127.0.0.1:0 in front of a server, which can be cut (every
/// connection dropped, new ones refused at once) and healed: a real network
/// partition on loopback.
pub struct Proxy {
    pub addr: SocketAddr,
    target: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let p = Proxy::unaimed().await;
        p.aim(target);
        p
    }

    /// A proxy whose target is set later with [`Proxy::aim`] (the server
    /// behind it needs the proxy's address to start).
    pub async fn unaimed() -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = bind_loopback().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<JoinHandle<()>>::new()));
        let target = std::sync::Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let (c, k, t) = (cut.clone(), conns.clone(), target.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = *t.lock().unwrap();
                let Some(target) = target.filter(|_| !c.load(Ordering::SeqCst)) else {
                    continue; // dropped: the connection is reset
                };
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                k.lock().unwrap().push(handle);
            }
        });
        Proxy {
            addr,
            target,
            cut,
            conns,
            task,
        }
    }

    pub fn aim(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = Some(target);
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

/// Starts a peer whose chat service others reach only through a proxy.
pub async fn peer_behind_proxy(
    router: &TestRouter,
    nick: &str,
    dir: std::path::PathBuf,
) -> (TestPeer, Proxy) {
    peer_behind_proxy_with(router, nick, dir, |_| {}).await
}

/// [`peer_behind_proxy`], its configuration adjusted by `tune` first. The
/// proxy is aimed before the peer logs in, so the router's dial-back
/// finds the peer through it (reachable: others dial it, through the
/// proxy, and cutting the proxy cuts them off).
pub async fn peer_behind_proxy_with(
    router: &TestRouter,
    nick: &str,
    dir: std::path::PathBuf,
    tune: impl FnOnce(&mut PeerConfig),
) -> (TestPeer, Proxy) {
    let listener = bind_loopback().await.unwrap();
    let proxy = Proxy::start(listener.local_addr().unwrap()).await;
    let advertise = proxy.addr.to_string();
    let peer = TestPeer::launch(router.addr, nick, listener, dir, |c| {
        tune(c);
        c.advertise = Some(advertise)
    })
    .await
    .unwrap();
    assert!(peer.peer.reachable(), "{nick} is found through its proxy");
    (peer, proxy)
}

/// Starts a peer serving on `listener` (an address of the test's choice).
pub async fn peer_on(
    router: SocketAddr,
    nick: &str,
    dir: std::path::PathBuf,
    listener: TcpListener,
) -> TestPeer {
    TestPeer::launch(router, nick, listener, dir, |_| {})
        .await
        .unwrap()
}

/// A free loopback port now (bound, then released): where a child process
/// listens, so a proxy can be aimed at it before it starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most `within`) until the router at `router` shows `name` (a
/// nick or a #room) with `n` members; 0 means not found.
pub async fn until_members(router: &str, name: &str, n: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    // One link and one probe session for the whole wait; a new login only
    // when the session is refused (the router restarted meanwhile).
    let mut c = router_client(router);
    let probe = (
        Identity::generate(),
        format!("probe{}", rand::random::<u32>()),
    );
    let mut token: Option<String> = None;
    let found = loop {
        if token.is_none() {
            token = login_as(&mut c, &probe.0, &probe.1, "127.0.0.1:9")
                .await
                .ok()
                .map(|l| l.token);
        }
        if let Some(t) = &token {
            let asked = c
                .find(parley::proto::FindRequest {
                    name: name.into(),
                    token: t.clone(),
                })
                .await;
            match asked {
                Ok(r) if r.get_ref().members.len() == n => break true,
                Ok(_) => {}
                Err(_) => token = None,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if let Some(token) = token {
        let _ = c
            .user_logout(parley::proto::LogoutRequest {
                token,
                ..Default::default()
            })
            .await;
    }
    assert!(found, "{name} never had {n} members within {within:?}");
}

/// Starts a peer on `dir` whose configuration `tune` adjusts first (a short
/// sync interval, an advertised address).
pub async fn peer_with(
    router: SocketAddr,
    nick: &str,
    dir: std::path::PathBuf,
    tune: impl FnOnce(&mut PeerConfig),
) -> TestPeer {
    let listener = bind_loopback().await.unwrap();
    TestPeer::launch(router, nick, listener, dir, tune)
        .await
        .unwrap()
}
