//! Every setting of a node: a clap flag with an environment variable, a default, and the
//! failure or attack it guards against. Read and validated once, before anything binds;
//! nothing else in the crate reads the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Exit code for a bad configuration (EX_USAGE from sysexits.h).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// gamerelay node: an authoritative game-state relay over WebSocket + MessagePack.
///
/// Every flag can also be set with the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "gamerelay", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on for WebSocket clients and HTTP (/ws, /healthz, /readyz, /metrics).
    /// Defaults to loopback: without authentication a node must not be an open relay.
    #[arg(long, env = "GAMERELAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Id of this node in logs, metrics and `welcome` (default: `node-` + random hex).
    #[arg(long, env = "GAMERELAY_NODE_ID")]
    pub node_id: Option<String>,

    /// Log filter (tracing EnvFilter syntax, e.g. `info,gamerelay=debug`).
    #[arg(long, env = "GAMERELAY_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "GAMERELAY_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// Tokio worker threads (0 = one per CPU core).
    #[arg(long, env = "GAMERELAY_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Largest WebSocket frame (message) accepted, in bytes; larger ones close with 1009.
    /// Bounds the memory one client can make the node buffer.
    #[arg(long, env = "GAMERELAY_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Most ops in one `ops` batch (more: reject `too_many_ops`).
    #[arg(long, env = "GAMERELAY_MAX_OPS_PER_BATCH", default_value_t = 64)]
    pub max_ops_per_batch: usize,

    /// Most segments in a state path (deeper: reject `bad_path`).
    #[arg(long, env = "GAMERELAY_MAX_PATH_DEPTH", default_value_t = 16)]
    pub max_path_depth: usize,

    /// Longest path segment in bytes (longer: reject `bad_path`).
    #[arg(long, env = "GAMERELAY_MAX_KEY_BYTES", default_value_t = 64)]
    pub max_key_bytes: usize,

    /// Largest room state, in bytes of its MessagePack encoding (approximate, tracked per
    /// change); a change past it is rejected with `state_too_large`.
    #[arg(long, env = "GAMERELAY_MAX_STATE_BYTES", default_value_t = 1024 * 1024)]
    pub max_state_bytes: usize,

    /// Most players in one room, connected or within their reconnect grace (more: `room_full`).
    #[arg(long, env = "GAMERELAY_MAX_PLAYERS_PER_ROOM", default_value_t = 64)]
    pub max_players_per_room: usize,

    /// Most rooms on this node (more: `too_many_rooms`).
    #[arg(long, env = "GAMERELAY_MAX_ROOMS", default_value_t = 10_000)]
    pub max_rooms: usize,

    /// Most concurrent WebSocket connections on this node; past it upgrades get HTTP 503.
    /// Keep it below the process's open-file limit.
    #[arg(long, env = "GAMERELAY_MAX_CONNECTIONS", default_value_t = 15_000)]
    pub max_connections: usize,

    /// How long a dropped player keeps its identity and may resume, in ms.
    #[arg(long, env = "GAMERELAY_RECONNECT_GRACE_MS", default_value_t = 30_000)]
    pub reconnect_grace_ms: u64,

    /// How long a room with no members is kept before it is disposed, in ms.
    #[arg(long, env = "GAMERELAY_ROOM_IDLE_TTL_MS", default_value_t = 60_000)]
    pub room_idle_ttl_ms: u64,

    /// Recent deltas kept per room to serve resumes without a snapshot.
    #[arg(long, env = "GAMERELAY_DELTA_RING", default_value_t = 1024)]
    pub delta_ring: usize,

    /// Applied cids remembered per player, so a retried cid gets its original ack.
    #[arg(long, env = "GAMERELAY_APPLIED_CIDS", default_value_t = 1024)]
    pub applied_cids: usize,

    /// Coalesce a room's broadcasts into one `batch` frame per member every this many ms
    /// (0 = send each message at once). Trades latency for fewer writes.
    #[arg(long, env = "GAMERELAY_FLUSH_INTERVAL_MS", default_value_t = 0)]
    pub flush_interval_ms: u64,

    /// Outbound queue per connection, in frames. When full the member is marked lagging and
    /// later gets one `resync` snapshot instead of the backlog.
    #[arg(long, env = "GAMERELAY_OUTBOX_FRAMES", default_value_t = 1024)]
    pub outbox_frames: usize,

    /// How long a member may stay lagging (queue full) before it is closed with 4102, in ms.
    #[arg(long, env = "GAMERELAY_SLOW_CONSUMER_TIMEOUT_MS", default_value_t = 10_000)]
    pub slow_consumer_timeout_ms: u64,

    /// Commands queued per room before senders wait (backpressure on hot rooms).
    #[arg(long, env = "GAMERELAY_ROOM_MAILBOX", default_value_t = 4096)]
    pub room_mailbox: usize,

    /// Time allowed from connect until `hello` and a successful `join`, in ms (else 4100).
    /// Keeps unauthenticated sockets from holding memory.
    #[arg(long, env = "GAMERELAY_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Interval of WebSocket pings sent to every client, in ms.
    #[arg(long, env = "GAMERELAY_PING_INTERVAL_MS", default_value_t = 15_000)]
    pub ping_interval_ms: u64,

    /// Close a connection (4101) when nothing arrived for this long, in ms.
    /// Must exceed the ping interval.
    #[arg(long, env = "GAMERELAY_IDLE_TIMEOUT_MS", default_value_t = 45_000)]
    pub idle_timeout_ms: u64,

    /// Malformed frames tolerated on one connection before it is closed with 4001.
    #[arg(long, env = "GAMERELAY_MAX_BAD_FRAMES", default_value_t = 16)]
    pub max_bad_frames: u32,

    /// On SIGTERM / Ctrl-C: how long to wait for connections to close, in ms.
    #[arg(long, env = "GAMERELAY_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    /// Upper bound of the jittered `retry_ms` hint sent to clients when the node shuts down.
    #[arg(long, env = "GAMERELAY_RECONNECT_HINT_MS", default_value_t = 2_000)]
    pub reconnect_hint_ms: u64,

    /// Redis URL (`redis://[user:password@]host:port/db`). Enables cluster mode: rooms are
    /// owned through leases, every change is durable in Redis before it is acknowledged, and
    /// players on any node share rooms. Without it the node runs the embedded single-node store.
    /// A Redis Cluster (Redis 7+) is named by seed URLs separated by commas
    /// (`redis://a:7000,redis://b:7000`) or `redis-cluster://[user:password@]a:7000,b:7000`
    /// (`rediss-cluster://` with TLS): each room lives on one shard, and its frames go over
    /// sharded pub/sub.
    #[arg(long, env = "GAMERELAY_REDIS")]
    pub redis: Option<String>,

    /// PEM file of the CA that signed Redis's TLS certificate, for `rediss://` URLs when it
    /// is not in the system's trust store.
    #[arg(long, env = "GAMERELAY_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Prefix of every Redis key and channel of this deployment.
    #[arg(long, env = "GAMERELAY_REDIS_PREFIX", default_value = "gr")]
    pub redis_prefix: String,

    /// Secret shared by every node of a cluster; signs session tokens so any node can
    /// trust them. Required with --redis; random per process without it.
    #[arg(long, env = "GAMERELAY_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Room ownership lease, in ms. An owner renews every third of it and stops acting as
    /// owner when it could not renew for two thirds of it; a dead owner's rooms are claimed
    /// again after it expires.
    #[arg(long, env = "GAMERELAY_LEASE_TTL_MS", default_value_t = 3_000)]
    pub lease_ttl_ms: u64,

    /// Write a room snapshot to Redis after this many deltas (the log is trimmed below it).
    #[arg(long, env = "GAMERELAY_SNAPSHOT_EVERY", default_value_t = 512)]
    pub snapshot_every: u64,

    /// ... or after this many ms with unsnapshotted deltas.
    #[arg(long, env = "GAMERELAY_SNAPSHOT_INTERVAL_MS", default_value_t = 5_000)]
    pub snapshot_interval_ms: u64,

    /// How long Redis keys of a disposed room live, in ms (a room created again within it
    /// comes back with its state).
    #[arg(long, env = "GAMERELAY_ROOM_KEY_TTL_MS", default_value_t = 3_600_000)]
    pub room_key_ttl_ms: u64,

    /// Timeout of one Redis command, in ms; past it the outcome counts as unknown.
    #[arg(long, env = "GAMERELAY_REDIS_TIMEOUT_MS", default_value_t = 1_000)]
    pub redis_timeout_ms: u64,

    /// Replicas that must hold a commit before it is acknowledged (Redis `WAIT` after each
    /// commit). 0 (the default) acknowledges once the master has it: replication is
    /// asynchronous, so a master that dies before replicating loses its last acknowledged
    /// changes when a replica takes over. With 1 or more, no acknowledged change is lost to
    /// the failover of one master, at the price of a replica round trip per commit.
    #[arg(long, env = "GAMERELAY_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// How long a commit waits for --redis-wait-replicas replicas, in ms; past it the commit's
    /// outcome counts as unknown (not acknowledged; the room hands off).
    #[arg(long, env = "GAMERELAY_REDIS_WAIT_TIMEOUT_MS", default_value_t = 500)]
    pub redis_wait_timeout_ms: u64,

    /// DELIBERATELY BROKEN (builds with the `fault-injection` feature only): a room restored
    /// after a failover forgets the log after its last snapshot, losing acknowledged changes.
    /// Exists so the chaos checker can prove it catches such a bug.
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    pub unsafe_restore_without_log: bool,
}

/// A configuration value that makes no sense.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: --{flag}: {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub problem: String,
}

impl Config {
    /// Checks values that clap's types cannot. Called before anything binds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 13] = [
            ("max-frame-bytes", self.max_frame_bytes as u64),
            ("max-ops-per-batch", self.max_ops_per_batch as u64),
            ("max-path-depth", self.max_path_depth as u64),
            ("max-key-bytes", self.max_key_bytes as u64),
            ("max-state-bytes", self.max_state_bytes as u64),
            ("max-players-per-room", self.max_players_per_room as u64),
            ("max-rooms", self.max_rooms as u64),
            ("max-connections", self.max_connections as u64),
            ("delta-ring", self.delta_ring as u64),
            ("applied-cids", self.applied_cids as u64),
            ("outbox-frames", self.outbox_frames as u64),
            ("room-mailbox", self.room_mailbox as u64),
            ("ping-interval-ms", self.ping_interval_ms),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(ConfigError { flag, problem: "must be greater than 0".into() });
            }
        }
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError {
                flag: "max-frame-bytes",
                problem: format!("{} is too small for a join or snapshot (min 1024)", self.max_frame_bytes),
            });
        }
        if self.idle_timeout_ms <= self.ping_interval_ms {
            return Err(ConfigError {
                flag: "idle-timeout-ms",
                problem: format!(
                    "{} must be greater than --ping-interval-ms ({})",
                    self.idle_timeout_ms, self.ping_interval_ms
                ),
            });
        }
        if self.outbox_frames < 4 {
            return Err(ConfigError { flag: "outbox-frames", problem: "must be at least 4".into() });
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.len() > 64 || !id.bytes().all(is_id_byte) {
                return Err(ConfigError {
                    flag: "node-id",
                    problem: format!("{id:?} must be 1-64 bytes of [A-Za-z0-9_.:-]"),
                });
            }
        }
        if self.redis.is_some() {
            match &self.cluster_secret {
                Some(secret) if secret.len() >= 16 => {}
                _ => {
                    return Err(ConfigError {
                        flag: "cluster-secret",
                        problem: "cluster mode (--redis) needs a shared secret of at least 16 bytes".into(),
                    })
                }
            }
            if let Some(redis) = &self.redis {
                if let Err(e) = crate::cluster::conn::Target::parse(redis) {
                    return Err(ConfigError { flag: "redis", problem: e.to_string() });
                }
            }
            if self.redis_wait_replicas > 0 && self.redis_wait_timeout_ms == 0 {
                return Err(ConfigError {
                    flag: "redis-wait-timeout-ms",
                    problem: "must be greater than 0 with --redis-wait-replicas".into(),
                });
            }
            if let Some(ca) = &self.redis_ca_file {
                if !ca.is_file() {
                    return Err(ConfigError {
                        flag: "redis-ca-file",
                        problem: format!("{} is not a readable file", ca.display()),
                    });
                }
            }
            if self.lease_ttl_ms < 300 {
                return Err(ConfigError { flag: "lease-ttl-ms", problem: "must be at least 300".into() });
            }
            if self.snapshot_every == 0 {
                return Err(ConfigError { flag: "snapshot-every", problem: "must be greater than 0".into() });
            }
            if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}', ' ']) {
                return Err(ConfigError {
                    flag: "redis-prefix",
                    problem: "must be non-empty, without braces or spaces".into(),
                });
            }
        }
        if self.log_filter().is_err() {
            return Err(ConfigError {
                flag: "log",
                problem: format!("{:?} is not a valid filter", self.log),
            });
        }
        Ok(())
    }

    /// The tracing filter from `--log`.
    pub fn log_filter(
        &self,
    ) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
        tracing_subscriber::EnvFilter::try_new(&self.log)
    }

    /// A configuration for tests: defaults, listening on a free loopback port.
    pub fn for_tests() -> Config {
        Config::parse_from(["gamerelay", "--listen", "127.0.0.1:0"])
    }

    pub fn reconnect_grace(&self) -> Duration {
        Duration::from_millis(self.reconnect_grace_ms)
    }
    pub fn room_idle_ttl(&self) -> Duration {
        Duration::from_millis(self.room_idle_ttl_ms)
    }
    pub fn flush_interval(&self) -> Option<Duration> {
        (self.flush_interval_ms > 0).then(|| Duration::from_millis(self.flush_interval_ms))
    }
    pub fn slow_consumer_timeout(&self) -> Duration {
        Duration::from_millis(self.slow_consumer_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
    pub fn snapshot_interval(&self) -> Duration {
        Duration::from_millis(self.snapshot_interval_ms)
    }
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

/// Bytes allowed in node ids and room ids.
pub fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["gamerelay"];
        all.extend_from_slice(args);
        Config::parse_from(all)
    }

    #[test]
    fn defaults_are_valid_and_listen_on_loopback() {
        let c = parse(&[]);
        c.validate().unwrap();
        assert!(c.listen.ip().is_loopback());
    }

    #[test]
    fn nonsense_values_are_refused_with_the_flag_named() {
        let e = parse(&["--idle-timeout-ms", "100", "--ping-interval-ms", "200"]).validate().unwrap_err();
        assert_eq!(e.flag, "idle-timeout-ms");
        assert_eq!(parse(&["--max-rooms", "0"]).validate().unwrap_err().flag, "max-rooms");
        assert_eq!(parse(&["--node-id", "a b"]).validate().unwrap_err().flag, "node-id");
        assert_eq!(parse(&["--log", "=="]).validate().unwrap_err().flag, "log");
        let e = parse(&["--redis", "redis://127.0.0.1:6379"]).validate().unwrap_err();
        assert_eq!(e.flag, "cluster-secret");
        let secret = "0123456789abcdef";
        let cluster = |url: &'static str| parse(&["--redis", url, "--cluster-secret", secret]).validate();
        assert!(cluster("redis-cluster://127.0.0.1:7000,127.0.0.1:7001").is_ok());
        assert_eq!(cluster("redis://127.0.0.1:7000,127.0.0.1:7001").unwrap_err().flag, "redis");
        let e = parse(&["--redis", "redis://h:1", "--cluster-secret", secret, "--redis-wait-replicas", "1"]);
        assert!(e.validate().is_ok());
    }
}
