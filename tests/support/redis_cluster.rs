//! A private Redis Cluster for tests: `masters` redis-servers with `replicas` replicas each,
//! with cluster mode on, on free loopback ports (client and bus ports both chosen free: the
//! default bus port, client port + 10000, may not exist), joined by
//! `redis-cli --cluster create ... --cluster-replicas <r> --cluster-yes`, and returned once
//! every server reports `cluster_state:ok` and knows all the others.
//!
//! Every server is a [`Redis`] of `support::cluster`, so it dies with the test and can be
//! killed and restarted (its `nodes.conf` stays in its directory: a restarted old master
//! rejoins as a replica of whoever took over).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::cluster::{free_port, redis_command, wait_for, Redis, Resp, Tool};

/// Milliseconds without an answer before the cluster deems a master failed
/// (`cluster-node-timeout`): short, so a failover happens within a test.
pub const NODE_TIMEOUT_MS: u64 = 1_000;

/// A Redis Cluster of private redis-servers.
pub struct RedisCluster {
    pub servers: Vec<Redis>,
    /// TLS ports of the servers (same order), when started with [`RedisCluster::start_tls`].
    pub tls_ports: Vec<u16>,
}

/// What `CLUSTER NODES` says of one server.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// Slot ranges it serves (masters).
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas)` servers and creates the cluster.
    pub async fn start(masters: usize, replicas: usize) -> RedisCluster {
        RedisCluster::start_with(masters, replicas, None).await
    }

    /// Like [`start`](RedisCluster::start), with TLS: every server also listens on a TLS port
    /// (certificate `server.pem`/`server.key` signed by `ca.pem` in `certs`, see
    /// [`test_certificates`]), and the cluster bus and replication use TLS. The plain ports
    /// stay open for the harness; clients use [`tls_url`](RedisCluster::tls_url).
    pub async fn start_tls(masters: usize, replicas: usize, certs: &Path) -> RedisCluster {
        RedisCluster::start_with(masters, replicas, Some(certs)).await
    }

    async fn start_with(masters: usize, replicas: usize, certs: Option<&Path>) -> RedisCluster {
        let cli = Tool::RedisCli.require();
        let mut servers = Vec::new();
        let mut tls_ports = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let bus = free_port().to_string();
            let timeout = NODE_TIMEOUT_MS.to_string();
            let mut tls: Vec<String> = Vec::new();
            if let Some(dir) = certs {
                let port = free_port();
                tls_ports.push(port);
                let file = |name: &str| dir.join(name).display().to_string();
                tls = vec![
                    "--tls-port".into(),
                    port.to_string(),
                    "--tls-cluster".into(),
                    "yes".into(),
                    "--tls-replication".into(),
                    "yes".into(),
                    "--tls-auth-clients".into(),
                    "no".into(),
                    "--tls-cert-file".into(),
                    file("server.pem"),
                    "--tls-key-file".into(),
                    file("server.key"),
                    "--tls-ca-cert-file".into(),
                    file("ca.pem"),
                ];
            }
            let mut args: Vec<&str> = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                &timeout,
                // A replica may take over however long it was cut off (tests kill masters
                // right after writing).
                "--cluster-replica-validity-factor",
                "0",
                // Replicas sync at once (the default waits 5 s for more replicas).
                "--repl-diskless-sync-delay",
                "0",
            ];
            args.extend(tls.iter().map(String::as_str));
            servers.push(Redis::start_with(&args).await);
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(servers.iter().map(|s| format!("127.0.0.1:{}", s.port())));
        args.extend(["--cluster-replicas".into(), replicas.to_string(), "--cluster-yes".into()]);
        let out = Command::new(&cli).args(&args).output().expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { servers, tls_ports };
        cluster.wait_ok(Duration::from_secs(30)).await;
        cluster
    }

    /// `redis-cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,...` (every server as a seed).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.servers.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    /// `rediss-cluster://127.0.0.1:<tls port>,...` (a cluster started with TLS).
    pub fn tls_url(&self) -> String {
        let seeds: Vec<String> = self.tls_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("rediss-cluster://{}", seeds.join(","))
    }

    /// Waits until every running server says `cluster_state:ok`, knows every server, and
    /// the masters serve all 16384 slots, and every replica's link to its master is up
    /// (its initial sync is done).
    pub async fn wait_ok(&self, timeout: Duration) {
        let ports: Vec<u16> = self.servers.iter().map(|s| s.port()).collect();
        let total = ports.len();
        wait_for("cluster_state:ok on every server", timeout, || {
            let ports = ports.clone();
            async move {
                let mut live = 0;
                for port in ports {
                    let Ok(Resp::Bulk(Some(info))) = redis_command(port, &["CLUSTER", "INFO"]) else {
                        continue;
                    };
                    let info = String::from_utf8_lossy(&info);
                    let ok = info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{total}"))
                        && info.contains("cluster_slots_ok:16384");
                    if !ok {
                        return None;
                    }
                    let Ok(Resp::Bulk(Some(repl))) = redis_command(port, &["INFO", "replication"]) else {
                        return None;
                    };
                    let repl = String::from_utf8_lossy(&repl);
                    if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                        return None;
                    }
                    live += 1;
                }
                (live > 0).then_some(())
            }
        })
        .await;
    }

    /// `CLUSTER NODES` as seen by the first server that answers.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        for s in &self.servers {
            if let Ok(Resp::Bulk(Some(text))) = redis_command(s.port(), &["CLUSTER", "NODES"]) {
                return parse_nodes(&String::from_utf8_lossy(&text));
            }
        }
        panic!("no server of the Redis Cluster answers CLUSTER NODES");
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        for s in &self.servers {
            if let Ok(Resp::Int(n)) = redis_command(s.port(), &["CLUSTER", "KEYSLOT", key]) {
                return n as u16;
            }
        }
        panic!("no server of the Redis Cluster answers CLUSTER KEYSLOT");
    }

    /// Index in `servers` of the healthy master serving `key`, if one does now.
    pub fn master_of(&self, key: &str) -> Option<usize> {
        let slot = self.slot(key);
        let node = self
            .nodes()
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))?;
        self.servers.iter().position(|s| s.port() == node.port)
    }

    /// Indexes of the current healthy masters.
    pub fn masters(&self) -> Vec<usize> {
        let nodes = self.nodes();
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, s)| nodes.iter().any(|n| n.port == s.port() && n.master && !n.failed))
            .map(|(i, _)| i)
            .collect()
    }

    /// Waits until a healthy master other than server `old` serves `key`.
    pub async fn wait_new_master(&self, key: &str, old: usize, timeout: Duration) -> usize {
        let started = Instant::now();
        let new = wait_for("a replica to take over the dead master's slots", timeout, || async move {
            self.master_of(key).filter(|&m| m != old)
        })
        .await;
        eprintln!("failover of {key:?}: server {old} -> {new} in {:?}", started.elapsed());
        new
    }

    /// Moves hash slot `slot` from master `from` to master `to` (indexes in `servers`), the
    /// way `redis-cli --cluster reshard` does it: IMPORTING / MIGRATING, MIGRATE every key
    /// (clients meanwhile get ASK for moved keys and TRYAGAIN for scripts over both), then
    /// SETSLOT NODE on every master. Returns how many keys moved.
    pub fn migrate_slot(&self, slot: u16, from: usize, to: usize) -> usize {
        let id = |i: usize| match redis_command(self.servers[i].port(), &["CLUSTER", "MYID"]) {
            Ok(r) => r.as_str().unwrap_or_else(|| panic!("CLUSTER MYID on server {i}: {r:?}")),
            Err(e) => panic!("CLUSTER MYID on server {i}: {e}"),
        };
        let (from_id, to_id) = (id(from), id(to));
        let (src, dst) = (self.servers[from].port(), self.servers[to].port());
        let slot_s = slot.to_string();
        let ok = |port: u16, args: &[&str]| match redis_command(port, args) {
            Ok(Resp::Error(e)) => panic!("{args:?} on {port}: {e}"),
            Ok(r) => r,
            Err(e) => panic!("{args:?} on {port}: {e}"),
        };
        ok(dst, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]);
        ok(src, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]);
        let mut moved = 0;
        loop {
            let Resp::Array(Some(keys)) = ok(src, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]) else {
                panic!("CLUSTER GETKEYSINSLOT: not an array");
            };
            let keys: Vec<String> = keys.iter().filter_map(Resp::as_str).collect();
            if keys.is_empty() {
                break;
            }
            let dst_s = dst.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &dst_s, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            ok(src, &args);
            moved += keys.len();
        }
        for i in self.masters() {
            ok(self.servers[i].port(), &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        }
        moved
    }

    /// Sum over the running masters of `INFO commandstats` calls of `command` (lowercase,
    /// e.g. `spublish`, `evalsha`).
    pub fn calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:calls=");
        self.servers
            .iter()
            .filter_map(|s| match redis_command(s.port(), &["INFO", "commandstats"]) {
                Ok(Resp::Bulk(Some(text))) => Some(String::from_utf8_lossy(&text).into_owned()),
                _ => None,
            })
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| {
                        l.strip_prefix(&prefix).and_then(|r| r.split(',').next()?.parse::<u64>().ok())
                    })
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            // <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
            let port = fields[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = fields[2];
            let slots = fields[8..]
                .iter()
                .filter(|f| !f.starts_with('['))
                .filter_map(|f| match f.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => f.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(ClusterNode {
                id: fields[0].to_owned(),
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail") && !flags.contains("fail?") || flags.contains("noaddr"),
                slots,
            })
        })
        .collect()
}

/// A test CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it (`server.pem`,
/// `server.key`), made with openssl in a fresh directory, which is returned.
pub fn test_certificates() -> PathBuf {
    let dir = super::cluster::fresh_dir("redis-cluster-tls");
    let openssl = Tool::Openssl.require();
    let run = |args: &[&str]| {
        let ok =
            Command::new(&openssl).args(args).current_dir(&dir).output().is_ok_and(|o| o.status.success());
        assert!(ok, "openssl {args:?}");
    };
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem"]
        .into_iter()
        .chain(["-days", "1", "-subj", "/CN=test CA"])
        .collect::<Vec<_>>());
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        .expect("write ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    dir
}
