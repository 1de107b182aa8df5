//! Real networks for the reachability tests: one network namespace per
//! host, joined by a bridge in a hub namespace, some hosts behind a wall
//! (nftables dropping inbound connections, as a home router does). The
//! `router` and `peer` binaries run inside the hosts through `ip netns
//! exec`. Needs root, `ip` and `nft`: tests using it are
//! `#[ignore = "needs root and netns"]`.
//!
//! Everything is made inside namespaces of the Lan's own, so no address,
//! route or link of the root namespace is ever touched, and interface
//! names (`br0`, `v0`, `eth0`) only have to be unique within a namespace.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::Proc;

/// Whether a host takes inbound connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wall {
    Open,
    /// Inbound connections dropped, outbound ones let through.
    Walled,
}

/// Every namespace made here starts with this: a namespace left behind by
/// a test process killed before its `Drop` ran can be told from anyone
/// else's, and removed (see [`reap_stale`]).
const PREFIX: &str = "parley-";

/// How long a connection through a wall is given before it counts as
/// dropped (a dropped SYN is retried for much longer than this).
const PROBE: Duration = Duration::from_secs(1);

/// The wall: a host's input chain, as a home router's. Replies to what the
/// host opened come back; new connections from outside are dropped (not
/// refused: the other side sees nothing, and times out).
const WALL: &str = "table inet wall {
    chain input {
        type filter hook input priority 0; policy accept;
        ct state established,related accept
        iif lo accept
        ct state new drop
    }
}
";

struct Host {
    name: String,
    ns: String,
    ip: Ipv4Addr,
    wall: Wall,
}

/// A LAN of hosts on one bridge; dropping it removes every namespace (and
/// with them every link) it made.
pub struct Lan {
    hosts: Vec<Host>,
    /// Every namespace made so far, in order: what `Drop` removes, even
    /// when `new` stops half way.
    made: Vec<String>,
}

/// Runs `ip ARGS`; panics with its stderr on failure.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("`ip` runs (iproute2, as root)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Removes the namespaces of test processes that are gone: a process
/// killed outright (SIGKILL, a CI timeout) never ran `Drop`.
fn reap_stale() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Lan {
    /// A hub namespace with a bridge, and one namespace per host joined to
    /// it by a veth pair, with one address in a /24 of this Lan's own.
    pub fn new(hosts: &[(&str, Wall)]) -> Lan {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        reap_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{pid}-{n}");
        // 10.X.Y.0/24 from the pid and the counter: Lans are isolated from
        // each other anyway (no link between them), so a clash would be
        // harmless; distinct subnets keep logs unambiguous.
        let k = (pid << 6).wrapping_add(n);
        let subnet = [10, (k >> 8) as u8, k as u8];
        assert!(hosts.len() < 250, "one /24");
        let mut lan = Lan {
            hosts: Vec::new(),
            made: Vec::new(),
        };

        let hub = format!("{tag}-hub");
        ip(&["netns", "add", &hub]);
        lan.made.push(hub.clone());
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);

        for (i, &(name, wall)) in hosts.iter().enumerate() {
            assert!(
                lan.hosts.iter().all(|h| h.name != name),
                "host {name} twice"
            );
            let ns = format!("{tag}-{name}");
            ip(&["netns", "add", &ns]);
            lan.made.push(ns.clone());
            // The pair is made in the hub with its other end moved straight
            // into the host: it never appears in the root namespace.
            let port = format!("v{i}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
            let addr = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], i as u8 + 1);
            let cidr = format!("{addr}/24");
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            if wall == Wall::Walled {
                nft(&ns, WALL);
            }
            lan.hosts.push(Host {
                name: name.to_owned(),
                ns,
                ip: addr,
                wall,
            });
        }
        lan
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} on this Lan"))
    }

    /// The host's address.
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        self.host(host).ip
    }

    /// The namespaces this Lan made (to check they are gone after it).
    pub fn namespaces(&self) -> Vec<String> {
        self.made.clone()
    }

    /// `program` run inside `host`: `ip netns exec NS program`. `ip` execs
    /// the program, so the child's pid is the program's own (signals reach
    /// it, not a wrapper).
    pub fn command(&self, host: &str, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.host(host).ns, program]);
        cmd
    }

    /// Runs `f` on a thread of its own moved into `host`'s network
    /// namespace: sockets it makes live there (and stay there when handed
    /// back). Other threads, this one included, stay where they are.
    pub fn run_in<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.host(host).ns);
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A TCP connection from `from` to a listener in `to`, given
    /// [`PROBE`] to connect and then accepted.
    fn connect(&self, from: &str, to: &str) -> std::io::Result<()> {
        let to_ip = self.ip(to);
        let listener = self.run_in(to, || TcpListener::bind((to_ip, 0)))?;
        let target = listener.local_addr()?;
        self.run_in(from, || TcpStream::connect_timeout(&target, PROBE))?;
        // Connected: the connection waits in the backlog, accepted at once.
        listener.accept().map(drop)
    }

    /// Proves `host`'s wall holds, so that no test passes through a leak: a
    /// connection from `from` (an open host) to a listener in `host` is
    /// dropped (times out), while one from `host` out to `from` goes
    /// through.
    pub fn assert_walled(&self, host: &str, from: &str) {
        assert_eq!(self.host(host).wall, Wall::Walled, "{host} has no wall");
        assert_eq!(
            self.host(from).wall,
            Wall::Open,
            "{from} must be open: the check connects out to it"
        );
        match self.connect(from, host) {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{from} -> {host}: {e} (refused, not dropped by the wall)"),
            Ok(()) => panic!("{from} reached {host} through its wall"),
        }
        self.connect(host, from)
            .unwrap_or_else(|e| panic!("{host} cannot connect out to {from}: {e}"));
    }

    /// Takes `host`'s wall down (to see [`Lan::assert_walled`] notice).
    pub fn remove_wall(&self, host: &str) {
        nft(&self.host(host).ns, "delete table inet wall\n");
    }

    /// Proves `host` takes a connection from `from`.
    pub fn assert_open(&self, host: &str, from: &str) {
        self.connect(from, host)
            .unwrap_or_else(|e| panic!("{from} cannot connect to {host}: {e}"));
    }
}

/// Loads the nftables `rules` into namespace `ns`.
fn nft(ns: &str, rules: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`nft` runs (nftables, as root)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {ns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Drop for Lan {
    /// Host namespaces first: each takes its veth pair with it; the hub
    /// last, with its bridge. Never panics (it may run while unwinding).
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Proc {
    /// The next JSON event, whatever its type, waiting at most `within`
    /// (longer or shorter than [`Proc::event`]'s 10 s); None if none came.
    pub async fn event_within_any(&mut self, within: Duration) -> Option<serde_json::Value> {
        // Lines::next_line is cancel safe: a timeout loses no line.
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .ok()?
            .unwrap()
            .expect("output ended before the event awaited");
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}")))
    }

    /// Skips lines until a JSON event of type `ty`, for at most `within`;
    /// None if none came.
    pub async fn event_within(&mut self, ty: &str, within: Duration) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.event_within_any(left).await?;
            if v["type"] == ty {
                return Some(v);
            }
            self.skipped.push(v);
        }
    }
}

/// Starts the `router` binary inside `host`, listening on the host's
/// address (port 0), with its own data directory and a key file under the
/// target directory (one per host name, so two routers of one test have
/// different keys); returns it and its address.
pub async fn router_in(lan: &Lan, host: &str, extra: &[&str]) -> (Proc, String) {
    let listen = format!("{}:0", lan.ip(host));
    let key = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("reach-router-{host}.key"));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = lan.command(host, env!("CARGO_BIN_EXE_router"));
    cmd.args(["--listen", &listen, "--key-file"]).arg(&key);
    if !extra.contains(&"--data-dir") {
        cmd.arg("--data-dir").arg(dir.path());
    }
    cmd.args(extra);
    let mut p = Proc::spawn_command(cmd);
    p._dir = Some(dir);
    let line = p.line().await.unwrap_or_else(|| {
        panic!(
            "the router in {host} exited before listening (its flags?); \
             PARLEY_TEST_LOGS=DIR keeps its stderr"
        )
    });
    let addr = line
        .strip_prefix("router listening on ")
        .unwrap_or_else(|| panic!("listen line: {line:?}"))
        .to_owned();
    let line = p.line().await.expect("key line");
    assert!(line.starts_with("router key SHA256:"), "{line}");
    (p, addr)
}

/// Starts the `peer` binary inside `host` in JSON mode, listening on the
/// host's address (port 0), and waits for `ready`; returns it and the
/// `ready` event (`ready["reachable"]`).
pub async fn peer_in(
    lan: &Lan,
    host: &str,
    routers: &str,
    nick: &str,
    dir: &Path,
    extra: &[&str],
) -> (Proc, serde_json::Value) {
    let listen = format!("{}:0", lan.ip(host));
    let mut cmd = lan.command(host, env!("CARGO_BIN_EXE_peer"));
    cmd.args(["--nick", nick, "--router", routers, "--data-dir"])
        .arg(dir)
        .args(["--json", "--listen", &listen])
        .args(extra);
    let mut p = Proc::spawn_command(cmd);
    let ready = p.event("ready").await;
    assert_eq!(ready["nick"], nick, "{ready}");
    (p, ready)
}

/// A one-member etcd running inside a host, on the host's address; killed
/// on drop.
pub struct EtcdIn {
    /// `http://IP:PORT`, for `router --etcd`.
    pub url: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// Starts etcd inside `host` and waits (20 s at most) until it serves.
pub async fn etcd_in(lan: &Lan, host: &str) -> EtcdIn {
    let ip = lan.ip(host);
    // etcd takes no port 0. The namespace is this test's alone: two ports
    // the kernel hands out there, let go, are free for etcd to take.
    let port = || {
        lan.run_in(host, || TcpListener::bind((ip, 0)))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let (client_port, peer_port) = (port(), port());
    let url = format!("http://{ip}:{client_port}");
    let peer_url = format!("http://{ip}:{peer_port}");
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let mut cmd = lan.command(host, "etcd");
    cmd.args(["--name", "m0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("m0={peer_url}")])
        .args(["--initial-cluster-state", "new"])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .expect("etcd runs (apt-get install etcd-server)");
    // Only the namespace reaches etcd: probe it from a thread there, on a
    // runtime of that thread's own.
    let probe = url.clone();
    let serving = tokio::task::block_in_place(|| {
        lan.run_in(host, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while tokio::time::Instant::now() < deadline {
                    let read = async {
                        let mut c = etcd_client::Client::connect([&probe], None).await.ok()?;
                        c.get("health-probe", None).await.ok()
                    };
                    if let Ok(Some(_)) = tokio::time::timeout(PROBE, read).await {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            })
        })
    });
    if !serving {
        let log = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
        panic!("etcd in {host} not serving within 20 s:\n{log}");
    }
    EtcdIn {
        url,
        _child: child,
        _dir: dir,
    }
}
