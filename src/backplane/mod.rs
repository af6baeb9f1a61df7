//! The seam between rooms and whatever makes their changes durable and visible to other
//! nodes. Rooms call it; it never calls rooms.
//!
//! The single-node product uses [`embedded::EmbeddedBackplane`]: the room's memory *is* the
//! store, so commits succeed at once and there is nothing to restore. The Redis cluster
//! backplane (leases, fencing epochs, the durable log, pub/sub fan-out) implements the same
//! trait; rooms and sessions do not change when it plugs in.
//!
//! Contract for implementations:
//! - `claim` returns an epoch strictly greater than any epoch this room had before (G1, G3).
//! - `commit` returns `Ok` only once the batch is durable; the room fans a batch out only
//!   after `Ok` (G2). An `Err` leaves the outcome unknown to the room, which must not
//!   acknowledge the batch until it knows.

pub mod embedded;

use async_trait::async_trait;
use bytes::Bytes;

use crate::protocol::Doc;

/// What a node learns when it takes ownership of a room.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The fencing epoch of this ownership; every commit carries it.
    pub epoch: u64,
    /// The last durable state, if the room existed before (cluster restore).
    pub restored: Option<RestoredRoom>,
}

/// Durable state of a room found by `claim`.
#[derive(Debug, Clone)]
pub struct RestoredRoom {
    pub seq: u64,
    pub state: Doc,
}

/// One flush worth of sequenced deltas, ready to be made durable.
#[derive(Debug, Clone)]
pub struct CommitBatch<'a> {
    /// seq of the room before this batch (the expected log head).
    pub prev_seq: u64,
    /// (seq, encoded delta message) in order, starting at `prev_seq + 1`.
    pub deltas: &'a [(u64, Bytes)],
}

/// A backplane failure.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// Another node owns the room now (our epoch is stale); the room must stop.
    #[error("fenced: room {room} moved to epoch {current}")]
    Fenced { room: String, current: u64 },
    /// The store could not be reached or answered with an error; outcome unknown.
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
}

/// Durability and cross-node fan-out for rooms. See the module docs for the contract.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Short name for logs and `/readyz` (`embedded`, `redis`).
    fn kind(&self) -> &'static str;

    /// Takes ownership of `room` on this node.
    async fn claim(&self, room: &str) -> Result<Claim, BackplaneError>;

    /// Makes `batch` durable under `epoch`. Rooms fan it out only after `Ok`.
    async fn commit(
        &self,
        room: &str,
        epoch: u64,
        batch: CommitBatch<'_>,
    ) -> Result<(), BackplaneError>;

    /// Gives up ownership of a disposed room.
    async fn release(&self, room: &str, epoch: u64) -> Result<(), BackplaneError>;
}
