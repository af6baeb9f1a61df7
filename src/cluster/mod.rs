//! Cluster mode: several nodes share rooms through Redis.
//!
//! - [`conn`]: where Redis is (`--redis`: one Redis or a Redis Cluster) and the command
//!   connection of either kind.
//! - [`keys`]: the keyspace and channel names (every key of a room shares its hash tag).
//! - [`wire`]: what nodes send each other: commands forwarded to a room's owner
//!   ([`wire::NodeMsg`], on the owner's inbox channel) and frames a room sends to members on
//!   other nodes ([`wire::RoomWire`], on the room's channel, in room order).
//! - [`redis`]: [`redis::RedisBackplane`], the durable [`crate::backplane::Backplane`]:
//!   leases with fencing epochs, the fenced commit script, snapshots, restore.
//! - [`relay`]: [`relay::Relay`], the node's pub/sub side: its inbox, the channels of rooms it
//!   follows for local players, the ordered publisher of each room it owns.
//!
//! A room is owned by one node at a time (G1). Players connected to other nodes are
//! *remote members*: their node forwards their commands to the owner and relays the room's
//! frames to their sockets. `docs/ARCHITECTURE.md` ("Cluster mode") tells the whole story.

pub mod conn;
pub mod keys;
pub mod redis;
pub mod relay;
pub mod wire;

/// A Redis client for `url` (`redis://` or `rediss://`; with TLS, `ca_file` is the PEM of
/// the CA to trust instead of the system's trust store).
pub fn client(url: &str, ca_file: Option<&std::path::Path>) -> ::redis::RedisResult<::redis::Client> {
    if !url.starts_with("rediss://") {
        return ::redis::Client::open(url);
    }
    // One process-wide TLS crypto provider; a second install (tests) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root_cert = match ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            ::redis::RedisError::from((::redis::ErrorKind::Io, "cannot read --redis-ca-file", e.to_string()))
        })?),
        None => None,
    };
    ::redis::Client::build_with_tls(url, ::redis::TlsCertificates { client_tls: None, root_cert })
}

/// A Redis connection that reconnects by itself after Redis restarts or the network heals
/// (commands fail, with their timeout, while it is down).
pub async fn connection(
    client: &::redis::Client,
    timeout: std::time::Duration,
) -> ::redis::RedisResult<::redis::aio::ConnectionManager> {
    let config = ::redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(std::time::Duration::from_secs(1));
    client.get_connection_manager_with_config(config).await
}

/// Milliseconds since the Unix epoch (the floor of new epochs).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
