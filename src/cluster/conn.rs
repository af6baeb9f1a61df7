//! Redis connections: one Redis, or a Redis Cluster.
//!
//! `--redis` names either a single Redis (`redis://host:port/db`, `rediss://...`) or a
//! Redis Cluster: several seed URLs separated by commas (`redis://a:7000,redis://b:7001`), or
//! `redis-cluster://[user:password@]host:port,host:port` (`rediss-cluster://` for TLS). The
//! seeds only bootstrap: the client reads the slot map from them and follows it.
//!
//! [`Conn`] is the command connection of either kind. The cluster one (redis-rs
//! `cluster_async::ClusterConnection`) routes each command to the master of its key's slot,
//! follows `MOVED`/`ASK` redirections, and refreshes the slot map after a failover. Every key
//! of a room shares the room's hash tag ([`super::keys`]), so each Lua script touches one slot.
//!
//! This module owns no pub/sub: [`super::relay`] builds its own subscriber from a [`Target`].

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Where Redis is: parsed from `--redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis (or a proxy in front of several).
    Single(String),
    /// Seed URLs of a Redis Cluster (one suffices; more survive a dead seed).
    Cluster(Vec<String>),
}

/// Why a `--redis` value is not a Redis location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty Redis URL")]
    Empty,
    #[error("Redis Cluster seed {seed:?}: {problem}")]
    BadSeed { seed: String, problem: &'static str },
}

impl Target {
    /// Parses `--redis`. See the module docs for the accepted forms.
    pub fn parse(value: &str) -> Result<Target, TargetError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(TargetError::Empty);
        }
        for (scheme, seed_scheme) in [("redis-cluster://", "redis://"), ("rediss-cluster://", "rediss://")] {
            if let Some(rest) = value.strip_prefix(scheme) {
                // `user:password@` applies to every seed.
                let (auth, hosts) = match rest.rsplit_once('@') {
                    Some((auth, hosts)) => (format!("{auth}@"), hosts),
                    None => (String::new(), rest),
                };
                let hosts = hosts.trim_end_matches('/');
                let seeds = hosts
                    .split(',')
                    .map(|h| {
                        let h = h.trim();
                        if h.is_empty() || h.contains('/') {
                            Err(TargetError::BadSeed { seed: h.to_owned(), problem: "expected host:port" })
                        } else {
                            Ok(format!("{seed_scheme}{auth}{h}"))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(Target::Cluster(seeds));
            }
        }
        if value.contains(',') {
            let seeds: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
            for seed in &seeds {
                if !(seed.starts_with("redis://") || seed.starts_with("rediss://")) {
                    return Err(TargetError::BadSeed {
                        seed: seed.clone(),
                        problem: "every seed needs redis:// or rediss://",
                    });
                }
            }
            return Ok(Target::Cluster(seeds));
        }
        Ok(Target::Single(value.to_owned()))
    }

    /// Whether this is a Redis Cluster (sharded pub/sub, one slot per room).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// The client of a single Redis.
    pub fn single_client(url: &str, ca_file: Option<&Path>) -> RedisResult<redis::Client> {
        super::client(url, ca_file)
    }

    /// A cluster client builder for `seeds`, with TLS settings when the seeds use `rediss://`.
    pub fn cluster_builder(
        seeds: &[String],
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> RedisResult<ClusterClientBuilder> {
        let mut builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(3)
            .max_retry_wait(1_000);
        if seeds.iter().any(|s| s.starts_with("rediss://")) {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let root_cert = match ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "cannot read --redis-ca-file",
                        e.to_string(),
                    ))
                })?),
                None => None,
            };
            builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert });
        }
        Ok(builder)
    }

    /// A command connection: reconnects by itself; commands fail, with their timeout, while
    /// Redis (or the shard of their key) is unreachable.
    pub async fn connect(&self, ca_file: Option<&Path>, timeout: Duration) -> RedisResult<Conn> {
        match self {
            Target::Single(url) => {
                let client = Target::single_client(url, ca_file)?;
                Ok(Conn::Single(super::connection(&client, timeout).await?))
            }
            Target::Cluster(seeds) => {
                let client: ClusterClient = Target::cluster_builder(seeds, ca_file, timeout)?.build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// A command connection to one Redis or to a Redis Cluster. Cheap to clone (both kinds are
/// multiplexed handles).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// `WAIT replicas timeout` on the master that holds `key` (the one a script on `key`
    /// just wrote to): how many replicas acknowledged every write so far on this connection.
    pub async fn wait_replicas(&mut self, key: &str, replicas: u32, timeout: Duration) -> RedisResult<u64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Conn::Single(c) => wait.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let value = c
                    .route_command(wait, RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)))
                    .await?;
                redis::from_redis_value(value).map_err(Into::into)
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_parse_as_one_redis_or_a_cluster() {
        assert_eq!(Target::parse("redis://h:1/0"), Ok(Target::Single("redis://h:1/0".into())));
        assert_eq!(
            Target::parse("redis-cluster://u:p@a:1,b:2"),
            Ok(Target::Cluster(vec!["redis://u:p@a:1".into(), "redis://u:p@b:2".into()]))
        );
        assert_eq!(Target::parse("rediss-cluster://a:1/"), Ok(Target::Cluster(vec!["rediss://a:1".into()])));
        assert_eq!(
            Target::parse("redis://a:1, redis://b:2"),
            Ok(Target::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert!(Target::parse("redis://a:1,b:2").is_err());
        assert!(Target::parse("redis-cluster://a:1,,b:2").is_err());
        assert!(Target::parse(" ").is_err());
        assert!(Target::parse("redis-cluster://a:1").is_ok_and(|t| t.is_cluster()));
    }
}
