//! Real etcd servers for the tests that need one: the `etcd` binary
//! (Debian's `etcd-server`), on free loopback ports (never 2379/2380), in
//! a temporary directory, killed on drop. Tests using it are
//! `#[ignore = "needs etcd"]`.

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use parley::registry::EtcdRegistry;

/// How long a cluster may take to serve after it starts.
const SERVING_WITHIN: Duration = Duration::from_secs(20);
/// How long one probe of a member may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts at starting a cluster: a port taken between choosing it and
/// etcd binding it (another test process) fails only that attempt.
const START_ATTEMPTS: usize = 3;

/// Ports handed out by this process, never handed out twice: a port let go
/// by `free_port` could otherwise come back from the next call.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free port on 127.0.0.1 (bound, then let go for etcd to take).
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        if port != 2379 && port != 2380 && taken.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    initial_cluster: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Member {
    /// Starts the member's process; with its data directory already
    /// written (a restart) etcd ignores the `--initial-cluster*` flags.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "parley-test"])
            // Fast elections: a killed leader is replaced within a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("etcd runs (apt-get install etcd-server)");
        self.child = Some(child);
    }

    /// Kills the member (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The end of the member's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// This member's id and the leader it knows of (0: none), or `None`
    /// if it does not answer.
    pub async fn status(&self) -> Option<(u64, u64)> {
        let probe = async {
            let mut c = etcd_client::Client::connect([&self.client_url], None)
                .await
                .ok()?;
            let s = c.status().await.ok()?;
            Some((s.header()?.member_id(), s.leader()))
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe).await.ok()?
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An etcd cluster of one or more members.
pub struct Etcd {
    pub members: Vec<Member>,
}

impl Etcd {
    /// A one-member cluster, serving.
    pub async fn start() -> Etcd {
        Self::cluster(1).await
    }

    /// `n` members, all of them running and the cluster serving.
    pub async fn cluster(n: usize) -> Etcd {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut etcd = Self::spawn(n);
            match etcd.serving().await {
                Ok(()) => return etcd,
                // Most likely a port clash: new ports, new directories.
                Err(e) => last = e,
            }
        }
        panic!("etcd cluster of {n} did not start: {last}");
    }

    fn spawn(n: usize) -> Etcd {
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                initial_cluster: String::new(),
                child: None,
                dir: tempfile::tempdir().expect("a temporary directory"),
            })
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect();
        let initial = initial.join(",");
        for m in &mut members {
            m.initial_cluster.clone_from(&initial);
            m.spawn();
        }
        Etcd { members }
    }

    /// Waits until every running member serves a linearizable read (which
    /// needs a leader and a quorum).
    async fn serving(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + SERVING_WITHIN;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue; // stopped on purpose
            }
            loop {
                if !self.members[i].is_running() {
                    return Err(format!(
                        "member {} exited:\n{}",
                        self.members[i].name,
                        self.members[i].log_tail()
                    ));
                }
                if read_ok(&self.members[i].client_url).await {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(format!(
                        "member {} not serving within {SERVING_WITHIN:?}:\n{}",
                        self.members[i].name,
                        self.members[i].log_tail()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// A registry over this cluster with lease `ttl`.
    pub async fn registry(&self, ttl: Duration) -> EtcdRegistry {
        EtcdRegistry::connect(&self.endpoints(), ttl)
            .await
            .expect("a registry over the test etcd")
    }

    /// The index of the member every running member takes for the leader
    /// (waits, bounded, for them to agree on one).
    pub async fn leader(&mut self) -> usize {
        let deadline = tokio::time::Instant::now() + SERVING_WITHIN;
        loop {
            let mut ids = Vec::new();
            let mut leaders = HashSet::new();
            for i in 0..self.members.len() {
                if !self.members[i].is_running() {
                    continue;
                }
                match self.members[i].status().await {
                    Some((id, leader)) => {
                        ids.push((i, id));
                        leaders.insert(leader);
                    }
                    None => {
                        leaders.insert(0);
                    }
                }
            }
            if leaders.len() == 1 {
                if let Some(&(i, _)) = ids.iter().find(|(_, id)| leaders.contains(id)) {
                    return i;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd members did not agree on a leader within {SERVING_WITHIN:?}: {ids:?} {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most `within`) until etcd holds no parley session: every
    /// lease has run out or been revoked.
    pub async fn until_no_sessions(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let prefix = format!("{}session/", parley::registry::ETCD_PREFIX);
        loop {
            let left = match etcd_client::Client::connect(self.endpoints(), None).await {
                Ok(mut c) => c
                    .get(
                        prefix.as_str(),
                        Some(
                            etcd_client::GetOptions::new()
                                .with_prefix()
                                .with_count_only(),
                        ),
                    )
                    .await
                    .map(|r| r.count())
                    .ok(),
                Err(_) => None,
            };
            if left == Some(0) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd still holds sessions ({left:?}) after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The keys etcd holds under parley's prefix and `under` (`part/`,
    /// `quit/`...), in key order.
    pub async fn keys(&self, under: &str) -> Vec<String> {
        self.keys_at(&format!("{}{under}", parley::registry::ETCD_PREFIX))
            .await
    }

    /// The keys etcd holds under `prefix` (any prefix: the mail's too), in
    /// key order.
    pub async fn keys_at(&self, prefix: &str) -> Vec<String> {
        let mut c = etcd_client::Client::connect(self.endpoints(), None)
            .await
            .expect("a client of the test etcd");
        let r = c
            .get(
                prefix,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .expect("a read of the test etcd");
        r.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect()
    }

    /// Kills the leader; returns its index.
    pub async fn kill_leader(&mut self) -> usize {
        let i = self.leader().await;
        self.members[i].kill();
        i
    }

    /// Stops member `i` (SIGKILL).
    pub fn stop(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again, on its ports and its data directory, and
    /// waits until the cluster serves through it.
    pub async fn restart(&mut self, i: usize) {
        assert!(!self.members[i].is_running(), "member {i} still runs");
        self.members[i].spawn();
        if let Err(e) = self.serving().await {
            panic!("etcd member {i} did not come back: {e}");
        }
    }
}

/// Whether the member at `url` serves a read within [`PROBE_TIMEOUT`].
async fn read_ok(url: &str) -> bool {
    let probe = async {
        match etcd_client::Client::connect([url], None).await {
            Ok(mut c) => c.get("health-probe", None).await.is_ok(),
            Err(_) => false,
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .unwrap_or(false)
}
