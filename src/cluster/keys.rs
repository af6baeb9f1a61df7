//! Redis key and channel names. Every key and channel of a room carries the hash tag
//! `{<room id>}`, so on Redis Cluster all of a room lives on one shard.
//!
//! | name | type | what |
//! | --- | --- | --- |
//! | `<p>:{R}:lease` | string, PX ttl | owner's node incarnation |
//! | `<p>:{R}:epoch` | string (int) | fencing epoch; only grows |
//! | `<p>:{R}:head` | string (int) | seq of the last committed delta |
//! | `<p>:{R}:log` | stream | deltas (`<seq>-0`, field `d`) and joins/leaves (`<seq>-n`, `m`/`l`) |
//! | `<p>:{R}:snap` | string | MessagePack `RoomSnapshot` |
//! | `<p>:{R}:snapseq` | string (int) | seq of `snap` |
//! | `<p>:{R}:ch` | channel | the room's frames for remote members (`RoomWire`) |
//! | `<p>:node:<incarnation>` | channel | a node's inbox (`NodeMsg`) |

/// Builds names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_owned() }
    }

    fn room(&self, room: &str, what: &str) -> String {
        format!("{}:{{{room}}}:{what}", self.prefix)
    }

    pub fn lease(&self, room: &str) -> String {
        self.room(room, "lease")
    }
    pub fn epoch(&self, room: &str) -> String {
        self.room(room, "epoch")
    }
    pub fn head(&self, room: &str) -> String {
        self.room(room, "head")
    }
    pub fn log(&self, room: &str) -> String {
        self.room(room, "log")
    }
    pub fn snap(&self, room: &str) -> String {
        self.room(room, "snap")
    }
    pub fn snapseq(&self, room: &str) -> String {
        self.room(room, "snapseq")
    }
    /// The room's channel.
    pub fn channel(&self, room: &str) -> String {
        self.room(room, "ch")
    }
    /// The room id of a room channel name, if it is one of ours.
    pub fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.prefix)?.strip_prefix(":{")?.strip_suffix("}:ch")
    }
    /// A node's inbox channel.
    pub fn inbox(&self, incarnation: &str) -> String {
        format!("{}:node:{incarnation}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_share_a_hash_tag_and_channels_parse_back() {
        let k = Keys::new("gr");
        assert_eq!(k.lease("r-1"), "gr:{r-1}:lease");
        assert_eq!(k.room_of_channel(&k.channel("a:b")), Some("a:b"));
        assert_eq!(k.room_of_channel(&k.inbox("n1.abc")), None);
    }
}
