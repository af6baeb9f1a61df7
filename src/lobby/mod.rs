//! Finding rooms: which rooms are listed, how many seats each has taken, and the atomic
//! choice behind `joinOrCreate`.
//!
//! The lobby knows only rooms that were *registered*: created by the admin API (listed or
//! private) or by a `joinOrCreate` that found no open seat (listed). A room created by a plain
//! join by id is unknown to it: unlisted, and bounded only by `--max-players-per-room`.
//!
//! Seats: a registered room has `max_players` seats. A player holds one from the moment a
//! `joinOrCreate` reserves it for them (for [`RESERVATION`]: the time the client has to
//! complete the join) or from its first join by id, until it leaves for good. Reserving,
//! taking and choosing seats are atomic in the store, so two players joining at once on
//! different nodes never both take the last seat, and never both create a new room when an
//! open one had room for one of them.
//!
//! - [`memory::MemoryLobby`]: one node (`--redis` unset); a mutex over a map.
//! - [`redis::RedisLobby`]: cluster mode; Lua scripts over one hash tag per room type, so
//!   each type's lobby lives on one Redis Cluster shard.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::protocol::{Doc, ErrorCode};
use crate::room::Refusal;

/// How long a seat reserved by `joinOrCreate` waits for the player's join.
pub const RESERVATION: Duration = Duration::from_secs(15);
/// Largest encoded room metadata, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;

/// What the lobby keeps of a registered room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// Seats in the room.
    pub max_players: u32,
    /// Private rooms are never listed nor chosen by `joinOrCreate`: joinable by id only.
    pub private: bool,
    /// Free-form map shown in listings (e.g. map name, mode, region).
    pub metadata: Doc,
    /// When the room was registered, ms since the Unix epoch.
    pub created: u64,
}

/// A registered room as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    pub room: String,
    #[serde(rename = "type")]
    pub room_type: String,
    /// Seats taken (members, and reservations not yet joined).
    pub members: u32,
    pub max_players: u32,
    pub private: bool,
    pub metadata: Doc,
    pub created: u64,
}

/// Outcome of taking a seat in a room by id.
#[derive(Debug, Clone, PartialEq)]
pub enum Seat {
    /// The player holds a seat (it may already have held it).
    Taken,
    /// Every seat is taken.
    Full,
    /// The lobby does not know the room (unlisted): no seat needed.
    Unregistered,
}

/// A lobby failure.
#[derive(Debug, thiserror::Error)]
pub enum LobbyError {
    /// A room with this id is registered already.
    #[error("room {0} exists")]
    Exists(String),
    /// The store could not be reached or answered with an error.
    #[error("the lobby is unavailable: {0}")]
    Unavailable(String),
}

impl From<LobbyError> for Refusal {
    fn from(e: LobbyError) -> Refusal {
        match e {
            LobbyError::Exists(_) => Refusal::new(ErrorCode::BadRoom, e.to_string()),
            LobbyError::Unavailable(_) => Refusal::new(ErrorCode::Unavailable, e.to_string()),
        }
    }
}

/// The registry of listed and private rooms and their seats. See the module docs.
#[async_trait]
pub trait Lobby: Send + Sync + 'static {
    /// Registers a new room (admin API). `Err(Exists)` when the id is registered already.
    async fn register(&self, room_type: &str, room: &str, settings: &RoomSettings) -> Result<(), LobbyError>;

    /// `joinOrCreate`: reserves a seat for `player` in the oldest open listed room of
    /// `room_type`, or registers `new_room` (listed, `max_players` seats, empty metadata)
    /// with the seat in it. Returns the room chosen.
    async fn reserve(
        &self,
        room_type: &str,
        player: &str,
        new_room: &str,
        max_players: u32,
    ) -> Result<String, LobbyError>;

    /// A player's first join of `room` by id: takes (or confirms a reserved) seat.
    async fn take_seat(&self, room_type: &str, room: &str, player: &str) -> Result<Seat, LobbyError>;

    /// A player left `room` for good (or its join failed): its seat is free again.
    async fn free_seat(&self, room_type: &str, room: &str, player: &str) -> Result<(), LobbyError>;

    /// The room ended: it is no longer listed and its seats are gone.
    async fn remove(&self, room_type: &str, room: &str) -> Result<(), LobbyError>;

    /// A registered room, if it is.
    async fn get(&self, room_type: &str, room: &str) -> Result<Option<Listing>, LobbyError>;

    /// Registered rooms of `room_type`, oldest first: listed ones, and private ones too with
    /// `include_private`. At most `limit`.
    async fn list(
        &self,
        room_type: &str,
        include_private: bool,
        limit: usize,
    ) -> Result<Vec<Listing>, LobbyError>;
}

/// Frees a seat in the background (callers do not wait on the store): a failure is logged;
/// the seat then stays taken until the room ends.
pub fn free_seat_later(lobby: &Arc<dyn Lobby>, room_type: &str, room: &str, player: &str) {
    let lobby = lobby.clone();
    let (room_type, room, player) = (room_type.to_owned(), room.to_owned(), player.to_owned());
    tokio::spawn(async move {
        if let Err(e) = lobby.free_seat(&room_type, &room, &player).await {
            tracing::warn!(%room, %player, error = %e, "could not free a lobby seat");
        }
    });
}

impl From<Listing> for crate::protocol::RoomListing {
    /// What players see of a listing (`rooms`, `GET /rooms`): not whether it is private.
    fn from(l: Listing) -> Self {
        crate::protocol::RoomListing {
            room: l.room,
            room_type: l.room_type,
            members: l.members,
            max_players: l.max_players,
            metadata: l.metadata,
            created: l.created,
        }
    }
}

/// A room id for a room created by `joinOrCreate` or by the admin API without an id:
/// `<type>-<12 hex digits>` (join tokens may allow `<type>-*`).
pub fn new_room_id(room_type: &str) -> String {
    use rand::Rng;
    format!("{room_type}-{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff)
}
