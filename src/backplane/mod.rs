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
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::protocol::Doc;

/// What a node learns when it takes ownership of a room.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The fencing epoch of this ownership; every commit carries it.
    pub epoch: u64,
    /// The last durable state, if the room existed before (cluster restore).
    pub restored: Option<RoomSnapshot>,
    /// Cancelled by the backplane when this node must stop acting as the room's owner
    /// (lease lost or not renewable in time).
    pub fenced: CancellationToken,
    /// Cancelled when the store lost the room's data (e.g. Redis restarted empty) while this
    /// node still owns it: the room writes its state back with [`Backplane::reseed`].
    pub lost: CancellationToken,
}

/// Format version of [`RoomSnapshot`] as stored.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// A room as stored durably: state at `seq` plus what exactly-once needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomSnapshot {
    /// [`SNAPSHOT_FORMAT`].
    pub v: u32,
    #[serde(rename = "type")]
    pub room_type: String,
    pub epoch: u64,
    pub seq: u64,
    pub state: Doc,
    pub players: Vec<PlayerRecord>,
}

/// Per-player exactly-once record (G4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerRecord {
    pub player: String,
    /// Highest applied cid.
    pub last_cid: u64,
    /// Recently applied (cid, seq), cids ascending.
    pub applied: Vec<(u64, u64)>,
}

/// One flush worth of sequenced deltas, ready to be made durable.
#[derive(Debug, Clone)]
pub struct CommitBatch<'a> {
    /// seq of the room before this batch (the expected log head).
    pub prev_seq: u64,
    /// Deltas (seqs from `prev_seq + 1`, contiguous) and membership changes, in room order.
    pub entries: &'a [LogEntry],
}

/// One durable record of a room's history.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    /// A sequenced delta: the encoded `delta` message, exactly as clients receive it.
    Delta { seq: u64, bytes: Bytes },
    /// A player entered the room after delta `after` (membership survives failover, G5).
    Joined { after: u64, player: String },
    /// A player left the room for good after delta `after`.
    Left { after: u64, player: String },
}

/// A backplane failure.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// Another node owns the room now (our lease or epoch is stale); the room must stop.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The room is owned by another node; join it there.
    #[error("room is owned by {0}")]
    OwnedElsewhere(String),
    /// The store lost the room (its lease and epoch are gone: Redis restarted empty); the
    /// owner may write it back with [`Backplane::reseed`].
    #[error("the store lost the room's data")]
    Lost,
    /// Stored data is unusable (format, gaps in the log).
    #[error("stored room data is unusable: {0}")]
    Corrupt(String),
    /// The store could not be reached or answered with an error; outcome unknown.
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
}

/// Durability and cross-node fan-out for rooms. See the module docs for the contract.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Short name for logs and `/readyz` (`embedded`, `redis`).
    fn kind(&self) -> &'static str;

    /// Whether the backplane can take changes now (`/readyz`).
    fn healthy(&self) -> bool {
        true
    }

    /// Whether rooms should write snapshots (only a durable backplane needs them).
    fn wants_snapshots(&self) -> bool {
        false
    }

    /// Takes ownership of `room` (of type `room_type` if it is new) on this node.
    async fn claim(&self, room: &str, room_type: &str) -> Result<Claim, BackplaneError>;

    /// Stores a snapshot of a room this node owns, and trims the log below it.
    async fn snapshot(&self, _room: &str, _snapshot: &RoomSnapshot) -> Result<(), BackplaneError> {
        Ok(())
    }

    /// Makes `batch` durable under `epoch`. Rooms fan it out only after `Ok`.
    async fn commit(&self, room: &str, epoch: u64, batch: CommitBatch<'_>) -> Result<(), BackplaneError>;

    /// Writes an owned room's state back after the store lost it, under a new epoch.
    async fn reseed(&self, _room: &str, _snapshot: &RoomSnapshot) -> Result<Claim, BackplaneError> {
        Err(BackplaneError::Unavailable("this backplane cannot lose data".into()))
    }

    /// Gives up ownership of a room: for good (`dispose`: its stored data may expire), or
    /// to hand it off (another node may claim it at once and continue from the stored data).
    async fn release(&self, room: &str, epoch: u64, dispose: bool) -> Result<(), BackplaneError>;
}
