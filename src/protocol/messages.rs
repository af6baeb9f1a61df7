//! Every message of protocol v1, as serde types. `docs/PROTOCOL.md` is the prose twin of this
//! file: change one, change the other (and `docs/protocol-vectors.json`).
//!
//! Each frame is one MessagePack map with a string field `t` naming the message. Field names
//! are the serde names below; optional fields may be omitted or nil.

use serde::{Deserialize, Serialize};

use super::doc::Doc;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A state path: `/`-separated map keys, e.g. `players/p-1f3a/x`.
pub type PathStr = String;

/// One change to a room's state document.
///
/// Clients send all four kinds; deltas from the server carry only `set` and `del`, with
/// resolved values (the result of `inc`, of `merge`, of clamping by the room type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Set the value at `path`, creating missing parent maps.
    Set { path: PathStr, value: Doc },
    /// Delete the key at `path` (no error if absent).
    Del { path: PathStr },
    /// Add `by` to the number at `path` (a missing value counts as 0).
    Inc { path: PathStr, by: Doc },
    /// Shallow-merge the map `value` into the map at `path`; a nil entry deletes that key.
    Merge { path: PathStr, value: Doc },
}

impl Op {
    /// The path this op targets.
    pub fn path(&self) -> &str {
        match self {
            Op::Set { path, .. } | Op::Del { path } | Op::Inc { path, .. } => path,
            Op::Merge { path, .. } => path,
        }
    }
}

/// Client -> server messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientMsg {
    /// First frame of every connection.
    Hello {
        /// Protocol version the client speaks; must be [`PROTOCOL_VERSION`].
        v: u32,
        /// Free-form client name and version, for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// Join (creating if needed) a room, or resume a session in it.
    Join(Join),
    /// A batch of ops, applied atomically (all or none).
    Ops {
        /// Client op id: per player, strictly increasing.
        cid: u64,
        ops: Vec<Op>,
    },
    /// An ephemeral message to the room (no `to`) or to one player; touches no state.
    Msg {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        data: Doc,
    },
    /// Round-trip probe; answered with `pong`.
    Ping {
        #[serde(default)]
        id: u64,
    },
    /// Leave the room for good (no grace period); the server then closes with 1000.
    Leave,
    /// Lists the listed rooms of a type (answered with `rooms`). Allowed after `welcome`,
    /// joined or not.
    ListRooms {
        /// Echoed in the answer, to match it to this request.
        #[serde(default)]
        id: u64,
        #[serde(rename = "type")]
        room_type: String,
    },
}

/// The fields of a `join` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Join {
    /// Room id: 1-128 bytes of `[A-Za-z0-9_.:-]`. Empty (or omitted) with `join_or_create`.
    #[serde(default)]
    pub room: String,
    /// Room type, e.g. `doc` or `arena`. Must match the type of an existing room.
    #[serde(rename = "type")]
    pub room_type: String,
    /// Join token: a JWT (HS256) from the game backend naming the player and the rooms it
    /// may join. Required for a new player by nodes with `--auth-key`; ignored by nodes in
    /// insecure development mode (docs/SECURITY.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Session token from an earlier `joined`, to resume as the same player.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Last epoch the client applied (resume only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Last seq the client applied (resume only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Resume only: this resume attempt's number, counting from 1 and growing with every
    /// attempt of the session (on any node). The room refuses an attempt not above the
    /// latest it saw (`stale_resume`), so a late attempt the client gave up on never
    /// replaces its newer connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
    /// Let the server choose the room: a seat in the oldest listed room of `type` with one
    /// free, or a new listed room. `room` must be empty; `joined.room` names the choice.
    /// A resume names its room instead (the `room` of the first `joined`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub join_or_create: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A listed room, as `rooms` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomListing {
    pub room: String,
    #[serde(rename = "type")]
    pub room_type: String,
    /// Seats taken: members (connected or within their reconnect grace) and seats reserved
    /// by `join_or_create` for players still joining.
    pub members: u32,
    pub max_players: u32,
    /// Set by the game backend when it created the room (a map; empty if none).
    pub metadata: Doc,
    /// When the room was created, milliseconds since the Unix epoch.
    pub created: u64,
}

/// A complete copy of a room's state at (epoch, seq).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub epoch: u64,
    pub seq: u64,
    pub state: Doc,
    /// Lowercase hex SHA-256 of the canonical encoding of `state`.
    pub hash: String,
}

/// One member of a room, as listed in `joined`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub player: String,
    pub status: PresenceStatus,
}

/// Presence of a player in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Entered the room (first join).
    Joined,
    /// Connection lost; the reconnect grace is running.
    Disconnected,
    /// Came back within the grace.
    Returned,
    /// Gone for good (left, or grace expired).
    Left,
}

/// One sequenced change of a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub room: String,
    pub epoch: u64,
    pub seq: u64,
    /// The `cid` of the op batch that caused it; nil for changes made by the server.
    pub cid: Option<u64>,
    /// The player whose op batch caused it; nil for changes made by the server.
    pub by: Option<String>,
    /// Resolved ops: only `set` and `del`.
    pub ops: Vec<Op>,
}

/// Server -> client messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Answer to `hello`.
    Welcome {
        v: u32,
        /// Id of the node serving this connection.
        node: String,
        /// Server time, milliseconds since the Unix epoch.
        time: u64,
        /// Largest frame the server accepts, in bytes.
        max_frame: u64,
        /// Most ops accepted in one `ops` batch.
        max_ops: u64,
    },
    /// Answer to `join`.
    Joined {
        room: String,
        #[serde(rename = "type")]
        room_type: String,
        player: String,
        /// Secret for resuming this session; present it in a later `join`.
        session: String,
        /// True when an existing session was resumed.
        resumed: bool,
        /// The highest cid of this player applied so far (0 if none).
        cid: u64,
        /// Everyone in the room, this player included.
        members: Vec<MemberInfo>,
        /// The state to mirror; nil on a resume served with deltas, which then follow in order.
        snapshot: Option<Snapshot>,
    },
    Delta(Delta),
    /// Replace the mirror with this snapshot; deltas continue from its seq.
    Resync {
        room: String,
        snapshot: Snapshot,
        /// The highest cid of this player applied so far.
        cid: u64,
        /// Everyone in the room now (presence messages may have been skipped).
        members: Vec<MemberInfo>,
    },
    /// Acknowledges an op batch whose delta is not (or no longer) coming, e.g. a retried cid.
    Ack {
        cid: u64,
        seq: u64,
    },
    /// Refuses an op batch; none of its ops were applied.
    Reject {
        cid: u64,
        code: String,
        message: String,
    },
    /// An ephemeral message.
    Msg {
        room: String,
        /// Sender; nil when sent by the server.
        from: Option<String>,
        /// Recipient; nil when sent to the whole room.
        #[serde(default)]
        to: Option<String>,
        data: Doc,
    },
    Presence {
        room: String,
        player: String,
        status: PresenceStatus,
    },
    Pong {
        id: u64,
        /// Server time, milliseconds since the Unix epoch.
        time: u64,
    },
    Error {
        code: String,
        message: String,
        /// With retryable codes such as `overloaded` and `rate_limited`: wait about this many
        /// ms before retrying. Omitted otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_ms: Option<u64>,
    },
    /// Answer to `list_rooms`: listed rooms of the type, oldest first (at most
    /// `--list-rooms-limit`).
    Rooms {
        id: u64,
        #[serde(rename = "type")]
        room_type: String,
        rooms: Vec<RoomListing>,
    },
    /// Several messages in one frame, to be handled in order.
    Batch {
        msgs: Vec<ServerMsg>,
    },
}
