//! The cluster under test and the faults injected into it.
//!
//! The cluster is one started by `scripts/cluster up --dir DIR`: its `cluster.env` names the
//! nodes and HAProxy's URL, and `scripts/cluster signal|start` sends signals to and restarts
//! its recorded processes (only those, matched by their command lines).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::process::Command;

/// A fault kind the injector can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` a node, then start it again.
    Kill,
    /// SIGSTOP a node for longer than the lease, then SIGCONT (a split-brain attempt).
    Pause,
    /// Cut every client connection HAProxy holds to a node (HAProxy's runtime API:
    /// `shutdown sessions server`); the clients reconnect and resume.
    Drop,
    /// `kill -9` Redis and start it again at once, empty (the owners write their rooms back
    /// from memory).
    RedisRestart,
    /// Cut a node off Redis silently (its Redis proxy stops forwarding: a black hole) for
    /// the lease plus 1.5 s, while its players stay connected; then heal.
    RedisCut,
    /// Reset every Redis connection of a node (TCP RST from its Redis proxy).
    RedisReset,
    /// Reload HAProxy (a new process takes the ports; the old one keeps its tunnels).
    HaproxyReload,
    /// The slow clients' link (a proxy in front of HAProxy) forwards what the server sends
    /// them at 1 KiB/s for 8 s: they fall behind while everyone else goes on.
    Slow,
}

impl FaultKind {
    /// Whether the fault needs the cluster's Redis proxies (`scripts/cluster up --redis-proxies`).
    pub fn needs_redis_proxies(self) -> bool {
        matches!(self, FaultKind::RedisCut | FaultKind::RedisReset)
    }
}

/// A running local cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub dir: PathBuf,
    pub script: PathBuf,
    pub nodes: Vec<String>,
    /// HAProxy's plain WebSocket URL.
    pub ws_url: String,
    /// Each node's Redis link runs through a proxy the checker controls.
    pub redis_proxies: bool,
}

impl Cluster {
    /// Reads `DIR/cluster.env` (written by `scripts/cluster up`).
    pub fn attach(dir: &Path, script: &Path) -> Result<Cluster, String> {
        let path = dir.join("cluster.env");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!("{}: {e} (start the cluster with scripts/cluster up --dir ...)", path.display())
        })?;
        let vars = parse_env(&text);
        let get = |k: &str| vars.get(k).cloned().ok_or_else(|| format!("{}: no {k}", path.display()));
        let nodes: Vec<String> = get("GR_NODES")?.split_whitespace().map(str::to_string).collect();
        if nodes.is_empty() {
            return Err(format!("{}: GR_NODES is empty", path.display()));
        }
        if !script.exists() {
            return Err(format!("{}: not found (--cluster-script)", script.display()));
        }
        Ok(Cluster {
            dir: dir.to_path_buf(),
            script: script.to_path_buf(),
            nodes,
            ws_url: get("GR_WS_URL")?,
            redis_proxies: vars.get("GR_REDIS_PROXIES").is_some_and(|v| v == "true"),
        })
    }

    async fn cluster(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new(&self.script)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .await
            .map_err(|e| format!("{}: {e}", self.script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/cluster {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    pub async fn signal(&self, node: &str, sig: &str) -> Result<(), String> {
        self.cluster(&["signal", node, sig]).await
    }

    pub async fn start(&self, node: &str) -> Result<(), String> {
        self.cluster(&["start", node]).await
    }

    /// Injects one fault and undoes it: the node is back (restarted or continued) on return.
    pub async fn inject(&self, kind: FaultKind, node: &str, lease: Duration) -> Result<(), String> {
        match kind {
            FaultKind::Kill => {
                self.signal(node, "KILL").await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.start(node).await
            }
            FaultKind::Pause => {
                self.signal(node, "STOP").await?;
                tokio::time::sleep(lease + Duration::from_millis(1500)).await;
                self.signal(node, "CONT").await
            }
            FaultKind::Drop => {
                let cmds = format!(
                    "shutdown sessions server ws_any/{node}; shutdown sessions server ws_room/{node}\n"
                );
                self.haproxy(&cmds).await
            }
            FaultKind::RedisCut => {
                let proxy = format!("redis-proxy-{node}");
                self.signal(&proxy, "USR1").await?;
                tokio::time::sleep(lease + Duration::from_millis(1500)).await;
                self.signal(&proxy, "HUP").await
            }
            FaultKind::RedisReset => self.signal(&format!("redis-proxy-{node}"), "USR2").await,
            FaultKind::HaproxyReload => self.cluster(&["reload", "haproxy"]).await,
            FaultKind::Slow => Err("the slow link is driven by the chaos run, not the cluster".into()),
            FaultKind::RedisRestart => {
                // Started again at once: the outage stays well inside the two thirds of a
                // lease an owner waits before it stops owning (a longer outage that also
                // loses Redis's data loses the rooms: docs/ARCHITECTURE.md, known limits).
                self.signal("redis", "KILL").await?;
                self.start("redis").await
            }
        }
    }

    /// Sends commands to HAProxy's runtime API (the cluster's `haproxy.sock`); fails on any
    /// answer other than empty lines.
    async fn haproxy(&self, cmds: &str) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let path = self.dir.join("haproxy.sock");
        let mut sock =
            tokio::net::UnixStream::connect(&path).await.map_err(|e| format!("{}: {e}", path.display()))?;
        sock.write_all(cmds.as_bytes()).await.map_err(|e| format!("{}: {e}", path.display()))?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), sock.read_to_string(&mut answer))
            .await
            .map_err(|_| "HAProxy's runtime API did not answer in 5 s".to_string())?
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match answer.trim() {
            "" => Ok(()),
            other => Err(format!("HAProxy: {other}")),
        }
    }
}

/// The proxy in front of HAProxy that the slow clients connect through
/// (`scripts/tcp-proxy.py`, a child of this process: it dies with it).
pub struct SlowLink {
    child: tokio::process::Child,
    /// `ws://127.0.0.1:<port>/ws`: HAProxy through the proxy.
    pub ws_url: String,
}

impl SlowLink {
    /// Starts the proxy on a free loopback port, forwarding to the cluster's HAProxy.
    pub async fn start(cluster: &Cluster) -> Result<SlowLink, String> {
        let upstream = cluster
            .ws_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| format!("cannot read host:port from {}", cluster.ws_url))?
            .to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for the slow link: {e}"))?
            .port();
        let root = cluster.script.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        let proxy = root.join("scripts").join("tcp-proxy.py");
        let log = std::fs::File::create(cluster.dir.join("slow-link.log"))
            .map_err(|e| format!("{}: {e}", cluster.dir.display()))?;
        let child = Command::new("python3")
            .arg(&proxy)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", &upstream])
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("python3 {}: {e}", proxy.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("the slow link ({}) did not listen within 10 s", proxy.display()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(SlowLink { child, ws_url: format!("ws://127.0.0.1:{port}/ws") })
    }

    fn signal(&self, sig: libc::c_int) -> Result<(), String> {
        let pid = self.child.id().ok_or("the slow link exited")?;
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } == 0 {
            Ok(())
        } else {
            Err(format!("kill {pid}: {}", std::io::Error::last_os_error()))
        }
    }

    /// Slows the link for `d`, then makes it fast again.
    pub async fn slow_for(&self, d: Duration) -> Result<(), String> {
        self.signal(libc::SIGTTIN)?;
        tokio::time::sleep(d).await;
        self.signal(libc::SIGTTOU)
    }
}

/// `NAME=value` lines as written by bash's `printf %q` (backslash escapes, no expansions).
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let mut out = String::new();
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '\'' | '"' => {}
                    c => out.push(c),
                }
            }
            (k.to_string(), out)
        })
        .collect()
}

/// A seeded generator (splitmix64): the same seed picks the same faults and nodes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_scripts_cluster_writes() {
        let env = parse_env("# x\nGR_NODES=node-1\\ node-2\\ node-3\nGR_WS_URL=ws://127.0.0.1:1/ws\n");
        assert_eq!(env["GR_NODES"], "node-1 node-2 node-3");
        assert_eq!(env["GR_WS_URL"], "ws://127.0.0.1:1/ws");
    }

    #[test]
    fn the_same_seed_makes_the_same_choices() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<usize> = (0..20).map(|_| a.below(3)).collect();
        assert_eq!(xs, (0..20).map(|_| b.below(3)).collect::<Vec<_>>());
        assert!(xs.iter().any(|&x| x != xs[0]));
    }
}
