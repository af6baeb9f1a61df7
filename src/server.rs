//! Wires a node together: configuration, the backplane, the room registry, the HTTP
//! listener, and shutdown. `main.rs` only parses flags and calls [`Server::bind`] and
//! [`Server::run`]; tests do the same on port 0.
//!
//! Shutdown: when the future given to `run` completes, `/readyz` turns 503, the listener
//! stops accepting, every session closes its client with 1012 and a jittered `retry_ms`
//! hint, and `run` returns once all connections and rooms are done or `--drain-timeout-ms`
//! has passed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::JoinAuth;
use crate::backplane::embedded::EmbeddedBackplane;
use crate::backplane::{Backplane, BackplaneError};
use crate::cluster::conn::Target;
use crate::cluster::keys::Keys;
use crate::cluster::redis::{RedisBackplane, RedisSettings};
use crate::cluster::relay::Relay;
use crate::config::{Config, ConfigError};
use crate::gateway;
use crate::limits::{Cidr, PerIp};
use crate::load::LagMonitor;
use crate::lobby::memory::MemoryLobby;
use crate::lobby::redis::RedisLobby;
use crate::lobby::Lobby;
use crate::room::{Registry, RoomDeps};
use crate::session::token::SessionKeys;
use crate::telemetry::{self, HotMetrics};
use crate::webhook::{WebhookError, WebhookSettings, Webhooks};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid configuration: --auth-key: {0}")]
    AuthKeys(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot start cluster mode: {0}")]
    Cluster(#[from] BackplaneError),
    #[error(transparent)]
    Webhooks(#[from] WebhookError),
}

/// What every task of the node shares.
pub struct Node {
    pub config: Arc<Config>,
    pub node_id: String,
    pub registry: Registry,
    pub backplane: Arc<dyn Backplane>,
    /// Cluster mode: the node's pub/sub side.
    pub relay: Option<Relay>,
    /// Listed and private rooms, their seats, `join_or_create`.
    pub lobby: Arc<dyn Lobby>,
    pub metrics: HotMetrics,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Every connection and room task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Verifies join tokens; `None` in insecure development mode.
    pub auth: Option<JoinAuth>,
    /// Open connections per client address (`--max-connections-per-ip`).
    pub per_ip: PerIp,
    /// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxy`).
    pub trusted_proxies: Vec<Cidr>,
    /// The runtime's scheduling lag (`--shed-lag-ms`).
    pub lag: Arc<LagMonitor>,
    connections: Arc<AtomicUsize>,
    next_conn: AtomicU64,
    draining: AtomicBool,
}

/// Held by a connection while it counts against `--max-connections`.
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Node {
    /// A connection id unique within this process.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a connection slot, or `None` at the limit.
    pub fn connection_slot(&self) -> Option<ConnectionSlot> {
        let max = self.config.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| ConnectionSlot(self.connections.clone()))
    }

    /// Open connections (slots taken).
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Whether joins of new players are shed (`--shed-connections-percent`).
    /// The joining connection counts: with 90 % of 1000, the 901st connection's join is shed.
    /// Also while the runtime was recently late past `--shed-lag-ms`.
    pub fn overloaded(&self) -> bool {
        (self.config.shed_connections_percent < 100
            && self.open_connections() > self.config.shed_connections())
            || self.lag.shedding(std::time::Instant::now())
    }

    /// A jittered retry hint for shed joins.
    pub fn shed_hint_ms(&self) -> u64 {
        use rand::Rng;
        let max = self.config.shed_retry_ms.max(2);
        rand::rng().random_range(max / 2..=max)
    }

    /// Whether the node is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A jittered reconnect delay for clients of a node going away, so they do not all
    /// reconnect at the same instant.
    pub fn reconnect_hint_ms(&self) -> u64 {
        use rand::Rng;
        rand::rng().random_range(0..=self.config.reconnect_hint_ms)
    }
}

/// A bound, not yet running node.
pub struct Server {
    listener: TcpListener,
    /// The operator listener (`--ops-listen`), if configured.
    ops_listener: Option<TcpListener>,
    node: Arc<Node>,
}

impl Server {
    /// Validates `config` and binds the listener. Nothing is served until [`Server::run`].
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let auth = match config.auth_keys.as_slice() {
            [] => None,
            specs => Some(JoinAuth::from_specs(specs).map_err(|e| ServerError::AuthKeys(e.to_string()))?),
        };
        let trusted_proxies =
            config.trusted_proxy_cidrs().map_err(|problem| ConfigError { flag: "trusted-proxy", problem })?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let ops_listener = match config.ops_listen {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?)
            }
            None => None,
        };
        let config = Arc::new(config);
        let node_id = config.node_id.clone().unwrap_or_else(|| {
            use rand::Rng;
            format!("node-{:06x}", rand::rng().random_range(0..0x100_0000u32))
        });
        let metrics = HotMetrics::new();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        type Parts = (Arc<dyn Backplane>, Option<Relay>, SessionKeys, Arc<dyn Lobby>);
        let (backplane, relay, tokens, lobby): Parts = match &config.redis {
            None => (
                Arc::new(EmbeddedBackplane::new()),
                None,
                SessionKeys::random(),
                Arc::new(MemoryLobby::new()),
            ),
            Some(url) => {
                let incarnation: Arc<str> = {
                    use rand::Rng;
                    Arc::from(format!("{node_id}.{:08x}", rand::rng().random::<u32>()))
                };
                let target = Target::parse(url).map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
                let settings = RedisSettings {
                    target: target.clone(),
                    ca_file: config.redis_ca_file.clone(),
                    prefix: config.redis_prefix.clone(),
                    lease_ttl: config.lease_ttl(),
                    timeout: config.redis_timeout(),
                    room_key_ttl: std::time::Duration::from_millis(config.room_key_ttl_ms),
                    keep_below_snapshot: config.delta_ring as u64,
                    #[cfg(feature = "fault-injection")]
                    unsafe_restore_without_log: config.unsafe_restore_without_log,
                    #[cfg(not(feature = "fault-injection"))]
                    unsafe_restore_without_log: false,
                    wait_replicas: config.redis_wait_replicas,
                    wait_timeout: std::time::Duration::from_millis(config.redis_wait_timeout_ms),
                };
                let backplane =
                    RedisBackplane::connect(settings, incarnation.clone(), shutdown.clone()).await?;
                let relay = Relay::start(
                    &target,
                    config.redis_ca_file.as_deref(),
                    Keys::new(&config.redis_prefix),
                    incarnation,
                    config.lease_ttl(),
                    config.redis_timeout(),
                    shutdown.clone(),
                )
                .await?;
                let lobby_conn = target
                    .connect(config.redis_ca_file.as_deref(), config.redis_timeout())
                    .await
                    .map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
                let lobby = Arc::new(RedisLobby::new(lobby_conn, &config.redis_prefix));
                let secret = config.cluster_secret.clone().unwrap_or_default();
                (backplane, Some(relay), SessionKeys::new(secret.as_bytes()), lobby)
            }
        };
        let webhooks = match WebhookSettings::from_config(&config) {
            Some(settings) => Webhooks::start(settings, &node_id, shutdown.clone(), &tracker)?,
            None => Webhooks::disabled(),
        };
        let deps = {
            let (config, backplane, metrics, shutdown) =
                (config.clone(), backplane.clone(), metrics.clone(), shutdown.clone());
            let (tokens, relay, lobby) = (tokens.clone(), relay.clone(), lobby.clone());
            let node_id: Arc<str> = Arc::from(node_id.as_str());
            move || RoomDeps {
                node_id: node_id.clone(),
                lobby: lobby.clone(),
                config: config.clone(),
                backplane: backplane.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                tokens: tokens.clone(),
                relay: relay.clone(),
                webhooks: webhooks.clone(),
            }
        };
        let registry =
            Registry::new(deps, tracker.clone(), config.max_rooms, config.room_mailbox, relay.clone());
        if let Some(relay) = &relay {
            relay.set_registry(registry.clone());
        }
        metrics::gauge!(telemetry::names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "node" => node_id.clone())
            .set(1.0);
        let config_max_per_ip = config.max_connections_per_ip;
        let (config_shed_lag_ms, config_shed_lag_hold_ms) = (config.shed_lag_ms, config.shed_lag_hold_ms);
        let node = Node {
            config,
            node_id,
            registry,
            backplane,
            relay,
            lobby,
            metrics,
            shutdown,
            tracker,
            auth,
            per_ip: PerIp::new(config_max_per_ip),
            trusted_proxies,
            lag: Arc::new(LagMonitor::new(
                (config_shed_lag_ms > 0).then(|| std::time::Duration::from_millis(config_shed_lag_ms)),
                std::time::Duration::from_millis(config_shed_lag_hold_ms),
            )),
            connections: Arc::new(AtomicUsize::new(0)),
            next_conn: AtomicU64::new(1),
            draining: AtomicBool::new(false),
        };
        Ok(Server { listener, ops_listener, node: Arc::new(node) })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.node.config.listen)
    }

    /// The operator listener's address, if there is one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then drains (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let node = self.node;
        tracing::info!(
            listen = %self.listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
            node = %node.node_id,
            backplane = node.backplane.kind(),
            "gamerelay node serving"
        );
        match &node.auth {
            Some(auth) => {
                tracing::info!(keys = auth.key_count(), "joins need a token signed by one of the keys")
            }
            None => tracing::warn!(
                listen = %node.config.listen,
                insecure_dev = node.config.insecure_dev,
                "INSECURE DEVELOPMENT MODE: no --auth-key, joins are not authenticated; \
                 any client that reaches this address can join any room"
            ),
        }
        node.lag.spawn(node.shutdown.clone());
        telemetry::spawn_upkeep(node.shutdown.clone());
        if let Some(ops) = self.ops_listener {
            let ops_app = gateway::ops_router(node.clone());
            let ops_shutdown = node.shutdown.clone();
            tracing::info!(listen = %ops.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "operator listener serving");
            tokio::spawn(async move {
                let served = axum::serve(ops, ops_app)
                    .with_graceful_shutdown(async move { ops_shutdown.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "operator listener failed");
                }
            });
        }
        let app = gateway::router(node.clone()).into_make_service_with_connect_info::<SocketAddr>();
        // The listener keeps serving while the node drains, so `/readyz` answers 503 (and new
        // upgrades are refused with 503) until every connection and room is done or the
        // drain deadline passes; only then does the HTTP server stop.
        let signal = {
            let node = node.clone();
            async move {
                shutdown.await;
                tracing::info!("draining: closing connections with 1012, handing rooms off");
                node.draining.store(true, Ordering::Release);
                node.shutdown.cancel();
                node.tracker.close();
                if tokio::time::timeout(node.config.drain_timeout(), node.tracker.wait()).await.is_err() {
                    tracing::warn!(
                        remaining = node.tracker.len(),
                        "drain timeout: exiting with tasks still running"
                    );
                }
            }
        };
        // Game traffic is many small frames: send each at once instead of waiting for ACKs
        // (Nagle would add up to a delayed-ACK period, ~40 ms, to deltas).
        // Connections from --trusted-proxy peers may start with a PROXY v2 header naming the
        // client; the listener reads it, so ConnectInfo carries the client's address.
        let listener = crate::proxy_protocol::ProxyListener::new(self.listener, node.trusted_proxies.clone())
            .map_err(ServerError::Serve)?;
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let served = axum::serve(listener, app).with_graceful_shutdown(signal).await;
        node.shutdown.cancel();
        tracing::info!("node stopped");
        served.map_err(ServerError::Serve)
    }
}
