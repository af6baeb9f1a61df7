//! # gamerelay
//!
//! An authoritative game-state relay: game clients connect over WebSocket, speak binary
//! MessagePack frames (protocol v1, `docs/PROTOCOL.md`), join rooms, and change each room's
//! state document with ops that the room's node validates, sequences and fans out as deltas.
//!
//! ## Layout (the map of the crate)
//!
//! ```text
//! protocol/   messages, codec, error/close codes, state values + canonical hash. No I/O.
//!             Always compiled; the Rust client and the load generator share it.
//! config.rs   every setting: clap flags + env vars, validated before anything binds.
//! auth.rs     join tokens (JWT HS256, key rotation): player id and allowed rooms. No I/O.
//! limits.rs   token bucket, trusted-proxy CIDRs, connections per address, limit metric.
//! proxy_protocol.rs  PROXY v2 headers from trusted proxies (the client's real address).
//! load.rs     the runtime's scheduling lag, a load signal for overload shedding.
//! telemetry/  tracing subscriber, Prometheus recorder, metric names as constants.
//! room/       rooms: state + ops (no I/O), room types (doc, arena), the per-room actor
//!             that sequences changes and fans out, the registry of live rooms.
//! lobby/      finding rooms: listed and private rooms, their seats, joinOrCreate's atomic
//!             choice (in memory on one node, Lua scripts on Redis in cluster mode).
//! backplane/  the seam where durability plugs in: the embedded single-node store, or
//! cluster/    the Redis backplane (leases, fencing, durable log, snapshots) and the relay
//!             that forwards commands to a room's owner and its frames to other nodes.
//! session/    one task per WebSocket connection: handshake, join/resume, reading ops,
//!             the bounded outbound queue and its writer, keepalive, close codes.
//! gateway.rs  HTTP routes: /ws upgrade (origin, connection limits), /healthz, /readyz,
//!             /metrics, /demo (embedded); the optional operator listener.
//! webhook.rs  events for the game's backend (rooms created/disposed, players joined/left):
//!             a bounded queue rooms never wait on, one ordered, signed, retrying sender.
//! admin.rs    the admin API (bearer tokens, JSON) and the public room listing over HTTP.
//! server.rs   wires it together: `Server::bind` then `run` until a shutdown signal.
//! ```
//!
//! ## Data flow
//!
//! ```text
//! client --frame--> session task --RoomCmd (bounded mpsc)--> room actor
//!    room actor: validate + apply (room type) -> seq+1 -> backplane.commit -> encode once
//!    room actor --Bytes (bounded outbox per member)--> writer task --frame--> every member
//! ```
//!
//! A room is one task owning its state: unrelated rooms never share a lock. The delta of a
//! change is encoded once and the same bytes are queued for every member.

pub mod protocol;

#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod backplane;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod gateway;
#[cfg(feature = "server")]
pub mod limits;
#[cfg(feature = "server")]
pub mod load;
#[cfg(feature = "server")]
pub mod lobby;
#[cfg(feature = "server")]
pub mod proxy_protocol;
#[cfg(feature = "server")]
pub mod room;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod session;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "server")]
pub mod webhook;
