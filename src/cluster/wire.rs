//! Messages between nodes, MessagePack-encoded (format version in [`WIRE_FORMAT`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{Doc, Op};
use crate::room::admin::{AdminCmd, AdminReply};

/// Bumped on incompatible changes; a node ignores messages of another version.
pub const WIRE_FORMAT: u32 = 1;

/// A command for a room's owner, published on the owner's inbox by the node where the
/// player is connected (`from`, with its connection id `conn`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum NodeMsg {
    Join {
        room: String,
        room_type: String,
        from: String,
        conn: u64,
        /// The player id proven by the join token, if the node checked one.
        #[serde(default)]
        player: Option<String>,
        session: Option<String>,
        epoch: Option<u64>,
        seq: Option<u64>,
        /// The resume's attempt number (`join.attempt`).
        #[serde(default)]
        attempt: Option<u64>,
    },
    Ops {
        room: String,
        from: String,
        conn: u64,
        player: String,
        cid: u64,
        ops: Vec<Op>,
    },
    Msg {
        room: String,
        from: String,
        conn: u64,
        player: String,
        to: Option<String>,
        data: Doc,
    },
    Leave {
        room: String,
        from: String,
        conn: u64,
        player: String,
    },
    Detach {
        room: String,
        from: String,
        conn: u64,
        player: String,
    },
    /// "I still relay members of this room" (sent every third of the lease TTL).
    Keepalive {
        room: String,
        from: String,
    },
    /// To a follower: the join of its connection `conn` was refused.
    JoinRefused {
        conn: u64,
        code: String,
        message: String,
    },
    /// To a follower: close its connection `conn` with this WebSocket close code.
    Close {
        conn: u64,
        code: u16,
        reason: String,
    },
    /// To the sender's own inbox: proves the node still hears its inbox (a subscription
    /// can be lost silently in a Redis Cluster failover).
    Probe {
        n: u64,
    },
    /// To a room's owner: a command of the game backend (admin API), answered with
    /// `admin_reply` on the inbox of `from` with the same `id`.
    Admin {
        id: u64,
        from: String,
        room: String,
        cmd: AdminCmd,
    },
    /// The owner's answer to `admin`: the reply, or a refusal (`code` is an error code).
    AdminReply {
        id: u64,
        reply: Option<AdminReply>,
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    },
}

/// Envelope with the format version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    pub m: T,
}

/// A frame from a room's owner to members on other nodes, on the room's channel. Frames of
/// one room arrive in the order the owner sent them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum RoomWire {
    /// For every joined member of the room on every node.
    Broadcast { frame: Bytes },
    /// For one connection.
    To { node: String, conn: u64, frame: Bytes },
    /// The `joined` frame of a connection: from now on it is a member.
    Joined { node: String, conn: u64, player: String, frame: Bytes },
    /// Close one connection with this WebSocket close code.
    Close { node: String, conn: u64, code: u16, reason: String },
    /// The owner stops owning the room: close every member connection (reconnect).
    Moved,
}

/// Encodes an inter-node message.
pub fn encode<T: Serialize>(m: T) -> Vec<u8> {
    match rmp_serde::to_vec_named(&Envelope { v: WIRE_FORMAT, m }) {
        Ok(v) => v,
        Err(e) => unreachable!("wire messages always encode: {e}"),
    }
}

/// Decodes an inter-node message; `None` for another format version or garbage.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    let env: Envelope<T> = rmp_serde::from_slice(bytes).ok()?;
    (env.v == WIRE_FORMAT).then_some(env.m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_messages_round_trip() {
        let m = RoomWire::Joined {
            node: "n".into(),
            conn: 3,
            player: "p".into(),
            frame: Bytes::from_static(b"\x80"),
        };
        assert_eq!(decode::<RoomWire>(&encode(&m)), Some(m));
        let n = NodeMsg::Keepalive { room: "r".into(), from: "n".into() };
        assert_eq!(decode::<NodeMsg>(&encode(&n)), Some(n));
        assert_eq!(decode::<NodeMsg>(b"\xc1"), None);
    }
}
