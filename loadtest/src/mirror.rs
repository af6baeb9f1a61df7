//! A lean local copy of a room's state, for scenarios that check what clients end up with
//! (`reconnect-storm`): snapshots replace it, deltas continue it at `(epoch, seq)`.
//!
//! Same history rules as the Rust client's mirror (`gamerelay-client`, `mirror.rs`) and
//! docs/PROTOCOL.md §9, without the member list and effects the generator does not need:
//! - a delta with the mirror's epoch and `seq <= mirror.seq` is a duplicate, ignored;
//! - a delta with the mirror's epoch and `seq == mirror.seq + 1` is applied;
//! - anything else is a broken history: the mirror becomes stale and ignores deltas until a
//!   snapshot replaces it (a real client would reconnect; the load generator counts it).

use gamerelay::protocol::{apply_resolved, Delta, Doc, Snapshot};

/// What [`Mirror::apply`] did with a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied: the mirror is now at the delta's seq.
    Yes,
    /// Already included (seq not above the mirror's, same epoch).
    Duplicate,
    /// Ignored: the mirror is stale and waits for a snapshot.
    Stale,
    /// A seq jump or another epoch: the mirror is now stale.
    Gap,
    /// An op could not be applied: the mirror is now stale (it may be partly updated).
    Bad,
}

/// Where a mirror stands, to compare with the room's own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub epoch: u64,
    pub seq: u64,
    /// The state hash (protocol §17); `None` when the mirror is stale.
    pub hash: Option<String>,
}

/// The local copy of one room's state at `(epoch, seq)`.
#[derive(Debug, Clone)]
pub struct Mirror {
    state: Doc,
    epoch: u64,
    seq: u64,
    stale: bool,
}

impl Mirror {
    /// A mirror holding `snapshot`, and whether the snapshot's hash matched its state.
    pub fn new(snapshot: Snapshot) -> (Mirror, bool) {
        let mut m = Mirror { state: Doc::map(), epoch: 0, seq: 0, stale: true };
        let ok = m.reset(snapshot);
        (m, ok)
    }

    /// Replaces the state with `snapshot`; returns whether `snapshot.hash` matches the state
    /// (the state is taken either way: the server is authoritative).
    pub fn reset(&mut self, snapshot: Snapshot) -> bool {
        let ok = snapshot.state.state_hash() == snapshot.hash;
        self.state = snapshot.state;
        self.epoch = snapshot.epoch;
        self.seq = snapshot.seq;
        self.stale = false;
        ok
    }

    /// Applies a delta if it continues the history.
    pub fn apply(&mut self, delta: &Delta) -> Applied {
        if self.stale {
            return Applied::Stale;
        }
        if delta.epoch == self.epoch && delta.seq <= self.seq {
            return Applied::Duplicate;
        }
        if delta.epoch != self.epoch || delta.seq != self.seq + 1 {
            self.stale = true;
            return Applied::Gap;
        }
        for op in &delta.ops {
            if apply_resolved(&mut self.state, op).is_err() {
                self.stale = true;
                return Applied::Bad;
            }
        }
        self.seq = delta.seq;
        Applied::Yes
    }

    /// Where a resume continues from: `(epoch, seq)`, or `None` when a snapshot is needed.
    pub fn resume_point(&self) -> Option<(u64, u64)> {
        (!self.stale).then_some((self.epoch, self.seq))
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint { epoch: self.epoch, seq: self.seq, hash: (!self.stale).then(|| self.state.state_hash()) }
    }

    #[cfg(test)]
    pub fn state(&self) -> &Doc {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gamerelay::protocol::{DocMap, Op};

    fn snapshot(epoch: u64, seq: u64, state: Doc) -> Snapshot {
        let hash = state.state_hash();
        Snapshot { epoch, seq, state, hash }
    }

    fn delta(epoch: u64, seq: u64, ops: Vec<Op>) -> Delta {
        Delta { room: "r".into(), epoch, seq, cid: None, by: None, ops }
    }

    fn set(path: &str, v: i64) -> Op {
        Op::Set { path: path.into(), value: Doc::Int(v) }
    }

    #[test]
    fn deltas_continue_the_snapshot_and_the_hash_follows_the_state() {
        let (mut m, ok) = Mirror::new(snapshot(1, 5, Doc::map()));
        assert!(ok);
        assert_eq!(m.apply(&delta(1, 6, vec![set("players/p-1/x", 3)])), Applied::Yes);
        assert_eq!(m.apply(&delta(1, 6, vec![set("players/p-1/x", 9)])), Applied::Duplicate);
        assert_eq!(m.apply(&delta(1, 7, vec![Op::Del { path: "players/p-1/x".into() }])), Applied::Yes);
        assert_eq!(m.resume_point(), Some((1, 7)));
        let mut p1 = DocMap::new();
        p1.insert("p-1".into(), Doc::map());
        let mut root = DocMap::new();
        root.insert("players".into(), Doc::Map(p1));
        let expected = Doc::Map(root);
        assert_eq!(m.state(), &expected);
        let cp = m.checkpoint();
        assert_eq!((cp.epoch, cp.seq), (1, 7));
        assert_eq!(cp.hash, Some(expected.state_hash()));
    }

    #[test]
    fn gaps_and_bad_deltas_make_it_stale_until_a_snapshot() {
        let (mut m, _) = Mirror::new(snapshot(1, 5, Doc::map()));
        assert_eq!(m.apply(&delta(1, 7, vec![])), Applied::Gap);
        assert_eq!(m.apply(&delta(1, 6, vec![])), Applied::Stale);
        assert_eq!(m.resume_point(), None);
        assert_eq!(m.checkpoint().hash, None);
        assert!(m.reset(snapshot(2, 1, Doc::map())));
        assert_eq!(m.apply(&delta(1, 2, vec![])), Applied::Gap, "another epoch");
        m.reset(snapshot(2, 1, Doc::map()));
        assert_eq!(m.apply(&delta(2, 2, vec![set("a", 1)])), Applied::Yes);
        // A path through a non-map value cannot be applied.
        assert_eq!(m.apply(&delta(2, 3, vec![set("a/b", 1)])), Applied::Bad);
        assert_eq!(m.resume_point(), None);
    }

    #[test]
    fn a_snapshot_with_a_wrong_hash_is_reported() {
        let mut s = snapshot(1, 1, Doc::map());
        s.hash = "00".repeat(32);
        let (m, ok) = Mirror::new(s);
        assert!(!ok);
        assert_eq!(m.resume_point(), Some((1, 1)));
    }
}
