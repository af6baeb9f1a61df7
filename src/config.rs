//! Every setting of a node: a clap flag with an environment variable, a default, and the
//! failure or attack it guards against. Read and validated once, before anything binds;
//! nothing else in the crate reads the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Shortest accepted admin API token, in bytes.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;

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

    /// Seats in a room created by `join_or_create`, at most --max-players-per-room
    /// (default: 8, or --max-players-per-room when that is lower).
    #[arg(long, env = "GAMERELAY_JOIN_OR_CREATE_MAX_PLAYERS")]
    pub join_or_create_max_players: Option<u32>,

    /// Most rooms in one `rooms` answer (`list_rooms`, `GET /rooms`).
    #[arg(long, env = "GAMERELAY_LIST_ROOMS_LIMIT", default_value_t = 100)]
    pub list_rooms_limit: usize,

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

    /// A key that verifies join tokens (JWT, HS256), as `KID:SECRET` (secret: at least 32
    /// bytes). Repeat the flag (or separate with commas in the env var) to accept several
    /// keys during a rotation. Without any key the node runs in insecure development mode:
    /// no join is authenticated, and it listens on loopback only unless --insecure-dev.
    #[arg(long = "auth-key", env = "GAMERELAY_AUTH_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub auth_keys: Vec<String>,

    /// A bearer token of the admin API (`/admin/v1/...`, docs/ADMIN.md), at least 32 bytes.
    /// Repeat the flag (or separate with commas in the env var) to accept several during a
    /// rotation. Without any, the admin API answers 403. Served on --ops-listen when set.
    #[arg(
        long = "admin-token",
        env = "GAMERELAY_ADMIN_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_tokens: Vec<String>,

    /// Allow insecure development mode (no --auth-key) on a non-loopback address: anyone who
    /// reaches the node can join any room as any new player. Never in production.
    #[arg(long, env = "GAMERELAY_INSECURE_DEV")]
    pub insecure_dev: bool,

    /// Browser origins allowed to open WebSockets (`https://game.example.com`); repeatable or
    /// comma-separated. When set, an upgrade with another `Origin` header gets HTTP 403.
    /// Requests without `Origin` (non-browser clients) are not affected. Default: any origin.
    #[arg(long = "allowed-origin", env = "GAMERELAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Separate operator listener for /metrics, /healthz and /readyz. When set, /metrics is
    /// served only there (keep it off the public network); the public listener keeps /healthz
    /// and /readyz for load balancers.
    #[arg(long, env = "GAMERELAY_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,

    /// Most concurrent connections from one client address (0 = no limit); past it upgrades
    /// get HTTP 429. Behind a proxy, list it in --trusted-proxy so the real client address
    /// (X-Forwarded-For) counts instead of the proxy's.
    #[arg(long, env = "GAMERELAY_MAX_CONNECTIONS_PER_IP", default_value_t = 1024)]
    pub max_connections_per_ip: usize,

    /// Proxies (IP or CIDR; repeatable or comma-separated) trusted to name the client: their
    /// connections may start with a PROXY protocol v2 header (HAProxy `send-proxy-v2`), and
    /// their `X-Forwarded-For` header is believed (its last address). Default: none (the TCP
    /// peer is the client).
    #[arg(long = "trusted-proxy", env = "GAMERELAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Ops per second per connection (each frame costs at least 1; an `ops` batch costs its
    /// op count). 0 = no limit. A frame past the budget is refused with `rate_limited`.
    #[arg(long, env = "GAMERELAY_RATE_OPS_PER_SEC", default_value_t = 1_000)]
    pub rate_ops_per_sec: u64,

    /// Burst of the ops-per-second bucket (ops a connection may send at once).
    #[arg(long, env = "GAMERELAY_RATE_OPS_BURST", default_value_t = 2_000)]
    pub rate_ops_burst: u64,

    /// Bytes per second per connection (binary frame payloads). 0 = no limit.
    #[arg(long, env = "GAMERELAY_RATE_BYTES_PER_SEC", default_value_t = 4 * 1024 * 1024)]
    pub rate_bytes_per_sec: u64,

    /// Burst of the bytes-per-second bucket; at least --max-frame-bytes.
    #[arg(long, env = "GAMERELAY_RATE_BYTES_BURST", default_value_t = 32 * 1024 * 1024)]
    pub rate_bytes_burst: u64,

    /// Frames refused for rate within 10 s after which the connection is closed with 4005
    /// `rate_limited`.
    #[arg(long, env = "GAMERELAY_RATE_LIMIT_STRIKES", default_value_t = 50)]
    pub rate_limit_strikes: u32,

    /// Overload shedding: once this percentage of --max-connections is open, joins of new
    /// players are refused with `overloaded` and a `retry_ms` hint (resumes still pass).
    /// 100 = never shed before the hard limit.
    #[arg(long, env = "GAMERELAY_SHED_CONNECTIONS_PERCENT", default_value_t = 90)]
    pub shed_connections_percent: u8,

    /// Overload shedding by CPU: when the node's runtime is late by more than this many ms
    /// (measured every 100 ms: a saturated or stalled process), joins of new players are
    /// refused with `overloaded` for --shed-lag-hold-ms. 0 = off (the default: a busy test
    /// machine or a paused process would shed; enable in production, e.g. 250).
    #[arg(long, env = "GAMERELAY_SHED_LAG_MS", default_value_t = 0)]
    pub shed_lag_ms: u64,

    /// How long joins stay shed after the runtime was late past --shed-lag-ms, in ms.
    #[arg(long, env = "GAMERELAY_SHED_LAG_HOLD_MS", default_value_t = 2_000)]
    pub shed_lag_hold_ms: u64,

    /// Upper bound of the jittered `retry_ms` hint of `overloaded` refusals, in ms.
    #[arg(long, env = "GAMERELAY_SHED_RETRY_MS", default_value_t = 5_000)]
    pub shed_retry_ms: u64,

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

    /// URL the node POSTs webhook events to (`http://` or `https://`): rooms created and
    /// disposed, players joined, left and timed out (docs/WEBHOOKS.md). Needs
    /// --webhook-secret. Default: no webhooks.
    #[arg(long, env = "GAMERELAY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Secret that signs every webhook (`x-gamerelay-signature`: HMAC-SHA256), so the
    /// receiver can tell the node's events from forged ones. Required with --webhook-url;
    /// at least 16 bytes.
    #[arg(long, env = "GAMERELAY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Webhook events queued for delivery; past it new events are dropped and counted
    /// (`gamerelay_webhook_events_dropped_total`). Bounds the memory a slow or dead receiver
    /// can make the node hold; rooms never wait for the queue.
    #[arg(long, env = "GAMERELAY_WEBHOOK_QUEUE", default_value_t = 10_000)]
    pub webhook_queue: usize,

    /// How long one webhook POST may take (connect to answer), in ms; past it the attempt
    /// failed and is retried. Keeps a hanging receiver from holding the queue for long.
    #[arg(long, env = "GAMERELAY_WEBHOOK_TIMEOUT_MS", default_value_t = 2_000)]
    pub webhook_timeout_ms: u64,

    /// Longest pause between retries of a failed webhook, in ms (the pause starts at 100 ms
    /// and doubles). Later events wait behind a retried one, so order holds.
    #[arg(long, env = "GAMERELAY_WEBHOOK_MAX_BACKOFF_MS", default_value_t = 10_000)]
    pub webhook_max_backoff_ms: u64,

    /// Attempts per webhook event (the first included) before it is dropped and counted as
    /// `failed`: a receiver that is down for long loses events rather than the node stalling.
    #[arg(long, env = "GAMERELAY_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,

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
        let positive: [(&'static str, u64); 15] = [
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
            ("join-or-create-max-players", self.join_or_create_max_players.map_or(1, u64::from)),
            ("list-rooms-limit", self.list_rooms_limit as u64),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(ConfigError { flag, problem: "must be greater than 0".into() });
            }
        }
        if self.join_or_create_max_players.is_some_and(|n| n as usize > self.max_players_per_room) {
            return Err(ConfigError {
                flag: "join-or-create-max-players",
                problem: format!("must be at most --max-players-per-room ({})", self.max_players_per_room),
            });
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
        if let Some(short) = self.admin_tokens.iter().find(|t| t.len() < MIN_ADMIN_TOKEN_BYTES) {
            return Err(ConfigError {
                flag: "admin-token",
                problem: format!(
                    "a token of {} bytes is too short: at least {MIN_ADMIN_TOKEN_BYTES} (e.g. `openssl rand -hex 32`)",
                    short.len()
                ),
            });
        }
        if !self.auth_keys.is_empty() {
            if let Err(e) = crate::auth::JoinAuth::from_specs(&self.auth_keys) {
                return Err(ConfigError { flag: "auth-key", problem: e.to_string() });
            }
            if self.insecure_dev {
                return Err(ConfigError {
                    flag: "insecure-dev",
                    problem: "contradicts --auth-key: a node with keys always authenticates joins".into(),
                });
            }
        } else if !self.listen.ip().is_loopback() && !self.insecure_dev {
            return Err(ConfigError {
                flag: "auth-key",
                problem: format!(
                    "listening on {} without join authentication would make an open relay; \
                     give --auth-key KID:SECRET (or GAMERELAY_AUTH_KEYS), listen on loopback, \
                     or accept insecure development mode with --insecure-dev",
                    self.listen
                ),
            });
        }
        for origin in &self.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) || origin.ends_with('/') {
                return Err(ConfigError {
                    flag: "allowed-origin",
                    problem: format!("{origin:?} must look like https://host[:port], without a path"),
                });
            }
        }
        if let Err(problem) = self.trusted_proxy_cidrs() {
            return Err(ConfigError { flag: "trusted-proxy", problem });
        }
        if self.rate_ops_per_sec > 0 && self.rate_ops_burst < self.max_ops_per_batch as u64 {
            return Err(ConfigError {
                flag: "rate-ops-burst",
                problem: format!("must be at least --max-ops-per-batch ({})", self.max_ops_per_batch),
            });
        }
        if self.rate_bytes_per_sec > 0 && self.rate_bytes_burst < self.max_frame_bytes as u64 {
            return Err(ConfigError {
                flag: "rate-bytes-burst",
                problem: format!("must be at least --max-frame-bytes ({})", self.max_frame_bytes),
            });
        }
        if self.rate_limit_strikes == 0 {
            return Err(ConfigError { flag: "rate-limit-strikes", problem: "must be greater than 0".into() });
        }
        if self.shed_connections_percent == 0 || self.shed_connections_percent > 100 {
            return Err(ConfigError { flag: "shed-connections-percent", problem: "must be 1-100".into() });
        }
        self.validate_webhooks()?;
        if self.log_filter().is_err() {
            return Err(ConfigError {
                flag: "log",
                problem: format!("{:?} is not a valid filter", self.log),
            });
        }
        Ok(())
    }

    /// The `--webhook-*` flags: an http(s) URL with a secret, and positive limits.
    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 4] = [
            ("webhook-queue", self.webhook_queue as u64),
            ("webhook-timeout-ms", self.webhook_timeout_ms),
            ("webhook-max-backoff-ms", self.webhook_max_backoff_ms),
            ("webhook-max-attempts", u64::from(self.webhook_max_attempts)),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(ConfigError { flag, problem: "must be greater than 0".into() });
            }
        }
        // A secret alone is fine: unsetting the URL is how webhooks are turned off.
        let Some(url) = &self.webhook_url else { return Ok(()) };
        let parsed = reqwest::Url::parse(url).ok();
        let usable = parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !usable {
            return Err(ConfigError {
                flag: "webhook-url",
                problem: format!("{url:?} must be an http:// or https:// URL with a host"),
            });
        }
        match &self.webhook_secret {
            Some(secret) if secret.len() >= 16 => Ok(()),
            _ => Err(ConfigError {
                flag: "webhook-secret",
                problem: "--webhook-url needs a signing secret of at least 16 bytes, so the receiver \
                          can verify that events come from this deployment"
                    .into(),
            }),
        }
    }

    /// The tracing filter from `--log`.
    pub fn log_filter(
        &self,
    ) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
        tracing_subscriber::EnvFilter::try_new(&self.log)
    }

    /// The parsed --trusted-proxy networks.
    pub fn trusted_proxy_cidrs(&self) -> Result<Vec<crate::limits::Cidr>, String> {
        self.trusted_proxies.iter().map(|s| s.parse()).collect()
    }

    /// Whether the node runs without join authentication.
    pub fn insecure(&self) -> bool {
        self.auth_keys.is_empty()
    }

    /// Open connections past which joins of new players are shed.
    pub fn shed_connections(&self) -> usize {
        (self.max_connections * usize::from(self.shed_connections_percent)).div_ceil(100)
    }

    /// A configuration for tests: defaults, listening on a free loopback port.
    pub fn for_tests() -> Config {
        Config::parse_from(["gamerelay", "--listen", "127.0.0.1:0"])
    }

    /// Seats in a room `join_or_create` creates (--join-or-create-max-players).
    pub fn join_or_create_seats(&self) -> u32 {
        const DEFAULT: u32 = 8;
        let cap = u32::try_from(self.max_players_per_room).unwrap_or(u32::MAX);
        self.join_or_create_max_players.unwrap_or(DEFAULT.min(cap))
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
        assert_eq!(parse(&["--trusted-proxy", "10.0.0.0/99"]).validate().unwrap_err().flag, "trusted-proxy");
        assert_eq!(
            parse(&["--allowed-origin", "game.example"]).validate().unwrap_err().flag,
            "allowed-origin"
        );
        assert_eq!(parse(&["--rate-bytes-burst", "100"]).validate().unwrap_err().flag, "rate-bytes-burst");
        assert_eq!(
            parse(&["--shed-connections-percent", "0"]).validate().unwrap_err().flag,
            "shed-connections-percent"
        );
        let secret = "0123456789abcdef";
        let cluster = |url: &'static str| parse(&["--redis", url, "--cluster-secret", secret]).validate();
        assert!(cluster("redis-cluster://127.0.0.1:7000,127.0.0.1:7001").is_ok());
        assert_eq!(cluster("redis://127.0.0.1:7000,127.0.0.1:7001").unwrap_err().flag, "redis");
        let e = parse(&["--redis", "redis://h:1", "--cluster-secret", secret, "--redis-wait-replicas", "1"]);
        assert!(e.validate().is_ok());
    }

    #[test]
    fn webhooks_need_an_http_url_and_a_secret() {
        let secret = "0123456789abcdef";
        let hook = |url: &'static str| parse(&["--webhook-url", url, "--webhook-secret", secret]).validate();
        assert!(hook("https://game.example.com/hooks/gamerelay").is_ok());
        assert!(hook("http://127.0.0.1:9000").is_ok());
        for bad in [
            "ftp://game.example.com/hook",
            "game.example.com/hook",
            "https://",
            "mailto:ops@game.example.com",
        ] {
            assert_eq!(hook(bad).unwrap_err().flag, "webhook-url", "{bad}");
        }
        assert_eq!(
            parse(&["--webhook-url", "https://h/hook"]).validate().unwrap_err().flag,
            "webhook-secret"
        );
        assert_eq!(
            parse(&["--webhook-url", "https://h/hook", "--webhook-secret", "short"])
                .validate()
                .unwrap_err()
                .flag,
            "webhook-secret"
        );
        assert!(parse(&["--webhook-secret", secret]).validate().is_ok(), "no URL: no webhooks");
        assert_eq!(parse(&["--webhook-queue", "0"]).validate().unwrap_err().flag, "webhook-queue");
        assert_eq!(
            parse(&["--webhook-max-attempts", "0"]).validate().unwrap_err().flag,
            "webhook-max-attempts"
        );
    }

    const KEY: &str = "k1:0123456789abcdef0123456789abcdef";

    #[test]
    fn join_or_create_seats_default_to_8_within_the_room_limit() {
        assert_eq!(parse(&[]).join_or_create_seats(), 8);
        let small = parse(&["--max-players-per-room", "4"]);
        small.validate().unwrap();
        assert_eq!(small.join_or_create_seats(), 4);
        let e = parse(&["--max-players-per-room", "4", "--join-or-create-max-players", "6"])
            .validate()
            .unwrap_err();
        assert_eq!(e.flag, "join-or-create-max-players");
        let short = parse(&["--admin-token", "too-short"]).validate().unwrap_err();
        assert_eq!(short.flag, "admin-token");
    }

    #[test]
    fn without_a_key_a_node_listens_on_loopback_only_unless_insecure_dev() {
        assert!(parse(&["--listen", "127.0.0.1:9000"]).validate().is_ok());
        assert!(parse(&["--listen", "[::1]:9000"]).validate().is_ok());
        let e = parse(&["--listen", "0.0.0.0:9000"]).validate().unwrap_err();
        assert_eq!(e.flag, "auth-key");
        assert!(e.to_string().contains("--insecure-dev"), "{e}");
        assert!(parse(&["--listen", "0.0.0.0:9000", "--insecure-dev"]).validate().is_ok());
        assert!(parse(&["--listen", "0.0.0.0:9000", "--auth-key", KEY]).validate().is_ok());
        assert_eq!(
            parse(&["--auth-key", KEY, "--insecure-dev"]).validate().unwrap_err().flag,
            "insecure-dev"
        );
        assert_eq!(parse(&["--auth-key", "k1:short"]).validate().unwrap_err().flag, "auth-key");
        let two = parse(&["--auth-key", KEY, "--auth-key", "k2:fedcba9876543210fedcba9876543210"]);
        assert_eq!(two.auth_keys.len(), 2);
        assert!(two.validate().is_ok());
    }
}
