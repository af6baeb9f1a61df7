//! Rooms: authoritative state, the rules that change it, and the actors that sequence and
//! fan out every change.
//!
//! - [`txn`]: edits to a state document with undo, and the resolved ops they produce. No I/O.
//! - [`types`]: room types (`doc`, `arena`): validation and game rules. No I/O.
//! - [`actor`]: one task per room: members, sessions, seq, commit, fan-out, slow consumers.
//! - [`registry`]: the concurrent map of live rooms; create-on-join and disposal.

pub mod actor;
pub mod registry;
pub mod txn;
pub mod types;

pub use actor::{ConnId, JoinRequest, LocalConn, MemberConn, PlayerId, RoomCmd, RoomDeps};
pub use registry::{Registry, RoomHandle, RoomLink};
pub use txn::Refusal;
