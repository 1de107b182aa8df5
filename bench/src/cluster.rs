//! The bench's own little network on loopback: a router, the member peers
//! (child processes by default, or in this process), and the in-process
//! senders. Dropping a [`Cluster`] kills every child and removes every data
//! directory, however the run ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::future::try_join_all;
use parley::names::{Nick, Room};
use parley::peer::Peer;
use parley::router::{RelayCounts, RouterHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::node::{self, Kind, READY};

/// How long a child may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the router child may take to answer a question.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A child process of the bench (itself, re-executed).
struct ChildProc {
    name: String,
    child: Child,
    /// Closing it tells the child to stop; the router child also reads
    /// questions on it.
    stdin: Option<ChildStdin>,
    /// What it prints after its ready line: the router child's answers.
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ChildProc {
    /// Starts `exe args`, its stderr to `log`, and waits for `ready ADDR`.
    async fn spawn(
        name: &str,
        exe: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<(ChildProc, String)> {
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stdout = child.stdout.take().expect("stdout was piped above");
        let stdin = child.stdin.take();
        let mut proc = ChildProc {
            name: name.to_owned(),
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        };
        let line = tokio::time::timeout(READY_TIMEOUT, proc.stdout.next_line()).await;
        let addr = match line {
            Ok(Ok(Some(l))) => l.strip_prefix(READY).map(str::to_owned),
            _ => None,
        };
        match addr {
            Some(a) => Ok((proc, a)),
            None => {
                let _ = proc.child.start_kill();
                Err(anyhow!(
                    "{name} did not start: {}",
                    last_line(log).unwrap_or_else(|| "no output".into())
                ))
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Writes `question` as one line on the child's stdin and reads the
    /// next line it prints.
    async fn ask(&mut self, question: &str) -> anyhow::Result<String> {
        let name = &self.name;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{name} is stopping"))?;
        stdin
            .write_all(format!("{question}\n").as_bytes())
            .await
            .with_context(|| format!("cannot ask {name} {question:?}"))?;
        stdin.flush().await?;
        match tokio::time::timeout(ANSWER_TIMEOUT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => bail!("{name} ended without answering {question:?}"),
            Ok(Err(err)) => bail!("cannot read {name}'s answer to {question:?}: {err}"),
            Err(_) => bail!("{name} did not answer {question:?} within {ANSWER_TIMEOUT:?}"),
        }
    }

    /// Closes stdin (the child logs out and exits), then kills it if it
    /// lingers.
    async fn stop(mut self) {
        self.stdin = None;
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(child = %self.name, "did not exit; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// The last non-empty line of a child's log, for an error message.
fn last_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned)
}

enum Node {
    Proc(Box<ChildProc>),
    /// A router in this process.
    Router(Box<RouterHandle>),
    Peer(Peer),
}

/// A member peer: receives, stores, acknowledges.
pub struct Member {
    pub nick: Nick,
    pub addr: String,
    node: Node,
}

/// What the cluster holds: who sits in which room is decided by the caller.
pub struct Cluster {
    pub router_addr: String,
    router: Node,
    pub members: Vec<Member>,
    /// The sending peers, always in this process.
    pub senders: Vec<Peer>,
    /// Members run in this process rather than as children.
    in_process: bool,
    /// Dropped last: the data directories of every peer.
    dir: tempfile::TempDir,
}

/// One member to start: its nick, the rooms it joins, and its kind.
pub struct MemberSpec {
    pub nick: Nick,
    pub rooms: Vec<Room>,
    pub kind: Kind,
}

impl Cluster {
    /// Starts the router (its registry in etcd at `etcd`, or in memory if
    /// empty) and the members (each joined to its rooms).
    pub async fn start(
        in_process: bool,
        etcd: &[String],
        members: Vec<MemberSpec>,
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("parley-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let exe = std::env::current_exe().context("cannot find the bench executable")?;
        let (router, router_addr) = if in_process {
            let router = RouterHandle::spawn_with(
                node::listener().await?,
                node::registry(etcd, dir.path()).await?,
                parley::identity::Identity::generate(),
                node::router_limits(),
            )
            .context("cannot start the router")?;
            let addr = router.addr().to_string();
            (Node::Router(Box::new(router)), addr)
        } else {
            let log = dir.path().join("router.log");
            let mut args = vec![
                "__router".to_owned(),
                "--data-dir".to_owned(),
                dir.path().display().to_string(),
            ];
            if !etcd.is_empty() {
                args.push("--etcd".to_owned());
                args.push(etcd.join(","));
            }
            let (p, addr) = ChildProc::spawn("router", &exe, &args, &log).await?;
            (Node::Proc(Box::new(p)), addr)
        };
        let mut cluster = Cluster {
            router_addr,
            router,
            members: Vec::new(),
            senders: Vec::new(),
            in_process,
            dir,
        };
        cluster.add_members(members).await?;
        Ok(cluster)
    }

    /// Starts more members (each joined to its rooms), all at once.
    pub async fn add_members(&mut self, members: Vec<MemberSpec>) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the bench executable")?;
        let in_process = self.in_process;
        let starts = members.into_iter().map(|spec| {
            let (exe, root, router) = (&exe, self.dir.path(), &self.router_addr);
            async move {
                if in_process {
                    start_local_member(spec, router, root).await
                } else {
                    start_member_proc(spec, exe, router, root).await
                }
            }
        });
        let started = try_join_all(starts).await?;
        self.members.extend(started);
        Ok(())
    }

    /// Starts a sending peer in this process, joined to `rooms`.
    pub async fn add_sender(
        &mut self,
        nick: Nick,
        rooms: &[Room],
        kind: Kind,
    ) -> anyhow::Result<Peer> {
        let dir = data_dir(self.dir.path(), &nick);
        let peer = node::start_peer(&nick, &self.router_addr, dir, rooms, kind).await?;
        self.senders.push(peer.clone());
        Ok(peer)
    }

    /// Where the peer `nick` keeps (or will keep) its data: a member, a
    /// sender, or a peer the caller starts itself.
    pub fn data_dir(&self, nick: &Nick) -> PathBuf {
        data_dir(self.dir.path(), nick)
    }

    /// A path for a scratch file of the run, removed with the cluster.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the router's relay has done so far: the reversals it asked for
    /// and the circuits it opened (its other counts are 0 when the router
    /// is a child: it tells only these two).
    pub async fn relay_counts(&mut self) -> anyhow::Result<RelayCounts> {
        match &mut self.router {
            Node::Router(router) => Ok(router.relay_counts()),
            Node::Proc(p) => {
                let line = p.ask(crate::child::RELAY).await?;
                crate::child::parse_relay_line(&line).ok_or_else(|| {
                    anyhow!("the router answered {line:?} to {:?}", crate::child::RELAY)
                })
            }
            Node::Peer(_) => unreachable!("the router is never a peer"),
        }
    }

    /// Peak resident memory (VmHWM, KiB) of the router process and of the
    /// largest member process; None in-process (there is only this one).
    pub fn peak_memory_kib(&self) -> (Option<u64>, Option<u64>) {
        let router = match &self.router {
            Node::Proc(p) => p.pid().and_then(vm_hwm_kib),
            _ => None,
        };
        let peer = self
            .members
            .iter()
            .filter_map(|m| match &m.node {
                Node::Proc(p) => p.pid().and_then(vm_hwm_kib),
                _ => None,
            })
            .max();
        (router, peer)
    }

    /// Stops everything in order: senders and members log out, then the
    /// router stops; the data directories go when `self` is dropped.
    pub async fn stop(self) {
        let senders = self.senders.iter().map(|p| p.shutdown());
        futures::future::join_all(senders).await;
        let members = self.members.into_iter().map(|m| stop_node(m.node));
        futures::future::join_all(members).await;
        stop_node(self.router).await;
        let path = self.dir.path().to_path_buf();
        if let Err(err) = self.dir.close() {
            tracing::warn!(dir = %path.display(), cause = %err, "cannot remove the bench's data");
        }
    }
}

async fn stop_node(node: Node) {
    match node {
        Node::Proc(p) => p.stop().await,
        Node::Router(router) => {
            if let Err(err) = router.stop().await {
                tracing::warn!(cause = %err, "the bench's router did not stop cleanly");
            }
        }
        Node::Peer(p) => p.shutdown().await,
    }
}

fn data_dir(root: &Path, nick: &Nick) -> PathBuf {
    root.join(nick.key())
}

async fn start_local_member(spec: MemberSpec, router: &str, root: &Path) -> anyhow::Result<Member> {
    let dir = data_dir(root, &spec.nick);
    let peer = node::start_peer(&spec.nick, router, dir, &spec.rooms, spec.kind).await?;
    Ok(Member {
        addr: peer.listen_addr().to_string(),
        nick: spec.nick,
        node: Node::Peer(peer),
    })
}

async fn start_member_proc(
    spec: MemberSpec,
    exe: &Path,
    router: &str,
    root: &Path,
) -> anyhow::Result<Member> {
    let dir = data_dir(root, &spec.nick);
    let dir_arg = dir
        .to_str()
        .ok_or_else(|| anyhow!("temporary directory {} is not UTF-8", dir.display()))?;
    let mut args = vec![
        "__peer".to_owned(),
        "--nick".to_owned(),
        spec.nick.to_string(),
        "--router".to_owned(),
        router.to_owned(),
        "--data-dir".to_owned(),
        dir_arg.to_owned(),
    ];
    for room in &spec.rooms {
        args.push("--join".to_owned());
        args.push(room.to_string());
    }
    match spec.kind {
        Kind::Signed => {}
        Kind::Unsigned => args.push("--unsigned".to_owned()),
        Kind::Walled => args.push("--walled".to_owned()),
    }
    let log = root.join(format!("{}.log", spec.nick.key()));
    let (p, addr) = ChildProc::spawn(spec.nick.as_str(), exe, &args, &log).await?;
    if addr.is_empty() {
        bail!("{} printed no address", spec.nick);
    }
    Ok(Member {
        nick: spec.nick,
        addr,
        node: Node::Proc(Box::new(p)),
    })
}

/// `VmHWM` (peak resident set, KiB) of a process, from /proc; None where
/// /proc is not there (not Linux) or the process is gone.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    read_vm_hwm(&format!("/proc/{pid}/status"))
}

/// `VmHWM` of this process.
pub fn own_vm_hwm_kib() -> Option<u64> {
    read_vm_hwm("/proc/self/status")
}

fn read_vm_hwm(path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
