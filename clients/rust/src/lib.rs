//! # gamerelay-client
//!
//! A Rust client for gamerelay (protocol v1): join a room over WebSocket, keep a local mirror
//! of the room's state, send op batches and ephemeral messages, and survive dropped
//! connections by resuming the session.
//!
//! ```no_run
//! use gamerelay_client::{Client, ClientConfig, Event};
//! use gamerelay_client::protocol::{Doc, Op};
//!
//! # async fn run() -> Result<(), gamerelay_client::ClientError> {
//! let client = Client::connect(ClientConfig::new("ws://127.0.0.1:8080/ws", "lobby", "doc")).await?;
//! let ticket = client
//!     .send_ops_tracked(vec![Op::Inc { path: "counter".into(), by: Doc::Int(1) }])
//!     .await?;
//! let seq = ticket.acked().await?; // the mirror now includes the change
//! println!("counter = {:?} at seq {seq}", client.get("counter"));
//! while let Some(event) = client.next_event().await {
//!     if let Event::Delta(delta) = event {
//!         println!("seq {}: {:?}", delta.seq, delta.ops);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## Architecture
//!
//! ```text
//!  application                          connection task (one per client)
//!  ───────────                          ───────────────────────────────────────────
//!  Client ──Command (bounded mpsc)────▶ select! { socket read | outbox write |
//!    │    ◀──answers (oneshot)────────            commands | idle timer }
//!    │                                    │ frames ──▶ Mirror::handle ──▶ Effects
//!    │ state(), seq(), members() ◀─RwLock─┤            (pure: snapshot, deltas,
//!    │                                    │             resync, presence, batches)
//!  EventStream ◀──Event (bounded broadcast, drop-oldest)──┘
//! ```
//!
//! - **One task owns the socket.** It reads and writes in one `select!` loop; frames to send
//!   wait in an outbox drained as the socket accepts them, so a slow write never stops the
//!   reads (tungstenite answers the server's WebSocket pings on the next read or flush).
//! - **The mirror** ([`mirror::Mirror`]) is pure: it turns server messages into state
//!   changes and [`mirror::Effect`]s, and detects broken histories (a delta that does not
//!   follow `(epoch, seq)`); duplicates are ignored. The handle reads it under a short
//!   `RwLock`, never across an await.
//! - **Op batches** get increasing cids (starting after `joined.cid`). Each stays in the
//!   task's outstanding list until its ack arrives (its own delta, or an `ack` frame) or a
//!   `reject`. The list is bounded by [`ClientConfig::max_pending_ops`]: `send_ops` waits
//!   for room.
//! - **Reconnecting**: a close with a reconnect code (see
//!   [`protocol::should_reconnect`]), a socket error, or nothing received for
//!   [`ClientConfig::idle_timeout`] starts the reconnect loop: exponential backoff with
//!   jitter ([`ReconnectPolicy`]; a `1012 … retry_ms=<n>` hint replaces the first wait),
//!   then `hello` + `join` with the session token and the mirror's `(epoch, seq)`. Every
//!   outstanding op batch is then re-sent with its original cid, in order; the server
//!   applies each cid at most once. A broken history reconnects at once and asks for a
//!   snapshot. `session_expired` and the "do not reconnect" closes (4000-4099, 1000, ...)
//!   close the client: it never silently comes back as a new player.
//! - **Events** ([`Event`]) go through a bounded broadcast channel. The task never waits for
//!   readers: a reader that falls a full buffer behind loses the oldest events (counted, see
//!   [`event`]); the mirror stays correct regardless.
//!
//! The protocol types are re-exported from the server crate as [`protocol`], so the client
//! always speaks exactly the server's protocol.

mod client;
pub mod config;
mod connection;
pub mod error;
pub mod event;
pub mod mirror;

pub use client::{Client, ConnectionState, OpTicket};
pub use config::{ClientConfig, ReconnectPolicy};
pub use connection::list_rooms;
pub use error::ClientError;
pub use event::{Event, EventStream};

/// The shared protocol module of the server crate: messages, `Doc`, ops, codes.
pub use gamerelay::protocol;
