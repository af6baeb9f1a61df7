//! What the game backend may ask of a room (the admin API, `docs/ADMIN.md`), and what the
//! room answers. The commands travel to the room's actor like players' commands do: into
//! its mailbox on the owning node, or over the owner's inbox from another node, so every
//! change they make is sequenced by the owner and durable like any other.

use serde::{Deserialize, Serialize};

use crate::protocol::{Doc, MemberInfo, Op};

/// A command of the game backend for one room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum AdminCmd {
    /// Describe the room, with its whole state when `state`.
    Inspect { state: bool },
    /// Apply a batch of ops as the server (atomically; any path, `server/...` included).
    /// Answered once the delta is durable.
    Write { ops: Vec<Op> },
    /// Close every member with 4006 `room_closed: <reason>` and dispose of the room.
    Close { reason: String },
    /// Remove a player for good: its connection closes with 4004 `kicked: <reason>`.
    Kick { player: String, reason: String },
    /// An ephemeral message from the server to the room, or to one connected player.
    Message { to: Option<String>, data: Doc },
}

impl AdminCmd {
    /// Whether carrying it out twice is harmless (so it may be sent again when its answer
    /// was lost).
    pub fn is_read_only(&self) -> bool {
        matches!(self, AdminCmd::Inspect { .. })
    }
}

/// The room's answer to an [`AdminCmd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum AdminReply {
    Room(RoomView),
    /// The write is durable as delta `seq` of `epoch`.
    Written {
        epoch: u64,
        seq: u64,
    },
    Closed,
    Kicked,
    /// The message was queued for this many connected members.
    Sent {
        delivered: u32,
    },
}

/// A room as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomView {
    pub room: String,
    #[serde(rename = "type")]
    pub room_type: String,
    /// Id of the node that owns the room.
    pub owner: String,
    pub epoch: u64,
    pub seq: u64,
    pub members: Vec<MemberInfo>,
    /// Lowercase hex SHA-256 of the canonical encoding of the state (as in snapshots).
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Doc>,
}

/// Why an admin command was not carried out.
#[derive(Debug, Clone)]
pub enum AdminError {
    /// No node owns the room now (never created, disposed, or between owners).
    NotLive,
    /// The room (or the way to it) refused the command.
    Refused(crate::room::Refusal),
}
