//! Rooms: authoritative state, the rules that change it, and the actors that sequence and
//! fan out every change.
//!
//! - [`txn`]: edits to a state document with undo, and the resolved ops they produce. No I/O.
//! - [`types`]: room types (`doc`, `arena`): validation and game rules. No I/O.
//! - [`actor`]: one task per room: members, sessions, seq, commit, fan-out, slow consumers.
//! - [`admin`]: the game backend's commands to a room (admin API) and their answers.
//! - [`registry`]: the concurrent map of live rooms; create-on-join and disposal.

pub mod actor;
pub mod admin;
pub mod registry;
pub mod txn;
pub mod types;

pub use actor::{new_player_id, ConnId, JoinRequest, LocalConn, MemberConn, PlayerId, RoomCmd, RoomDeps};
pub use registry::{Registry, RoomHandle, RoomLink};
pub use txn::Refusal;
