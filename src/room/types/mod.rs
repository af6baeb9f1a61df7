//! Room types: the game logic of a room, behind one small trait. A type validates and
//! applies players' ops, adds and removes per-player state, and declares volatile paths.
//! Types are pure logic over a [`Txn`]: no I/O, no clocks but the `now` they are given.

pub mod arena;
pub mod doc;

use std::time::Instant;

use super::txn::{ParsedOp, Refusal, Txn};

/// The logic of one room type. One instance per room.
pub trait RoomType: Send + 'static {
    /// The type's name, as clients send it in `join.type`.
    fn name(&self) -> &'static str;

    /// Builds the initial state of a new room.
    fn init(&mut self, _txn: &mut Txn) -> Result<(), Refusal> {
        Ok(())
    }

    /// A player entered the room for the first time (not on resume).
    fn on_join(&mut self, _player: &str, _txn: &mut Txn, _now: Instant) -> Result<(), Refusal> {
        Ok(())
    }

    /// A player left for good (leave, or reconnect grace expired).
    fn on_leave(&mut self, _player: &str, _txn: &mut Txn) -> Result<(), Refusal> {
        Ok(())
    }

    /// Validates and applies one op batch of `player`, atomically: on `Err` the room drops
    /// the transaction, which undoes every edit.
    fn apply(&mut self, player: &str, ops: Vec<ParsedOp>, txn: &mut Txn, now: Instant)
        -> Result<(), Refusal>;

    /// Whether changes at `path` are volatile (fanned out at once, not written to the durable
    /// log in cluster mode; they survive a failover only as of the last snapshot).
    fn is_volatile(&self, _path: &str) -> bool {
        false
    }
}

/// Names of the room types this build ships.
pub const ROOM_TYPES: [&str; 2] = [doc::NAME, arena::NAME];

/// Creates the logic of a new room of type `name`, or `None` if the type is unknown.
pub fn create(name: &str, room_id: &str) -> Option<Box<dyn RoomType>> {
    match name {
        doc::NAME => Some(Box::new(doc::DocRoom)),
        arena::NAME => Some(Box::new(arena::Arena::new(room_id))),
        _ => None,
    }
}

/// The static name of a known room type.
pub fn static_name(name: &str) -> Option<&'static str> {
    ROOM_TYPES.into_iter().find(|t| *t == name)
}

/// Top-level key of server-owned state: only the game backend writes under it (admin API),
/// every room type refuses players' ops there.
pub const SERVER_KEY: &str = "server";

/// The default ownership rule: a player may write under `players/<own id>/` and nowhere
/// else under `players`, and never under `server` (server-owned state).
pub fn owns(player: &str, path: &crate::protocol::Path) -> bool {
    match path.segment(0) {
        SERVER_KEY => false,
        "players" => path.depth() >= 2 && path.segment(1) == player,
        _ => true,
    }
}
