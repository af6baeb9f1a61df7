//! The local copy of a room's state: snapshots, deltas, resyncs, presence and batches.
//!
//! Pure and synchronous: [`Mirror::handle`] takes one decoded server message and turns it
//! into a list of [`Effect`]s, updating the state as it goes. The connection task owns the
//! I/O and decides what an effect or an error means for the connection (acks, events,
//! reconnecting); this module only guarantees that the state is either a faithful copy of
//! the room at `(epoch, seq)` or flagged [stale](Mirror::is_stale).
//!
//! History rules (protocol v1):
//! - a delta with the mirror's epoch and `seq <= mirror.seq` is a duplicate and is ignored;
//! - a delta with the mirror's epoch and `seq == mirror.seq + 1` is applied;
//! - anything else (a seq jump, another epoch) is a broken history: [`MirrorError::Gap`].
//!   The mirror becomes stale: it ignores further deltas until a snapshot replaces it.
//! - a delta whose ops cannot be applied ([`MirrorError::BadDelta`]) also makes it stale
//!   (some of its ops may already be applied).
//! - a `batch` is handled message by message, in order, recursively. An error does not stop
//!   the batch: acks, rejects, messages and presence after it are still delivered (deltas are
//!   ignored because the mirror is stale), and the first error is returned at the end.

use std::collections::BTreeMap;

use gamerelay::protocol::{apply_resolved, Delta, Doc, MemberInfo, PresenceStatus, ServerMsg, Snapshot};

/// Why a server message could not be applied to the mirror. Every variant leaves the mirror
/// [stale](Mirror::is_stale): it must be replaced by a snapshot (reconnect and resume).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// A delta does not continue the mirror's history.
    #[error(
        "broken history: mirror at epoch {epoch} seq {seq}, got a delta for epoch {got_epoch} seq {got_seq}"
    )]
    Gap { epoch: u64, seq: u64, got_epoch: u64, got_seq: u64 },
    /// A delta's ops could not be applied (a path crossing a non-map value, or an op other
    /// than `set`/`del`). The mirror may be partly updated.
    #[error("delta seq {seq} cannot be applied: {error}")]
    BadDelta { seq: u64, error: String },
}

/// What handling a server message did, in message order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// This delta was applied; the mirror is now at its seq.
    Delta(Delta),
    /// The mirror (state and member list) was replaced by a `resync`. `cid` is the highest
    /// cid of this player the room has applied.
    Resync { cid: u64 },
    /// A snapshot's state does not hash to the hash it carries. The state was still taken
    /// (the server is authoritative); this points at a canonical-encoding disagreement.
    HashMismatch { seq: u64, expected: String, actual: String },
    /// A member's presence changed (the member list is already updated).
    Presence { player: String, status: PresenceStatus },
    /// A message that does not touch the mirror (ack, reject, msg, pong, error, ...).
    Other(ServerMsg),
}

/// The local copy of one room's state, at `(epoch, seq)`, and its member list.
#[derive(Debug, Clone)]
pub struct Mirror {
    room: String,
    player: String,
    state: Doc,
    epoch: u64,
    seq: u64,
    members: BTreeMap<String, PresenceStatus>,
    stale: bool,
}

impl Mirror {
    /// A mirror initialised from the snapshot and member list of a `joined`.
    ///
    /// Returns the mirror and, if the snapshot's hash does not match its state, an
    /// [`Effect::HashMismatch`] describing it.
    pub fn new(
        room: impl Into<String>,
        player: impl Into<String>,
        snapshot: Snapshot,
        members: &[MemberInfo],
    ) -> (Mirror, Option<Effect>) {
        let mut mirror = Mirror {
            room: room.into(),
            player: player.into(),
            state: Doc::map(),
            epoch: 0,
            seq: 0,
            members: BTreeMap::new(),
            stale: true,
        };
        mirror.set_members(members);
        let mismatch = mirror.reset(snapshot);
        (mirror, mismatch)
    }

    /// Replaces the state with `snapshot` (it is then at `snapshot.epoch`, `snapshot.seq` and
    /// no longer stale). Returns an [`Effect::HashMismatch`] if the hash does not match.
    pub fn reset(&mut self, snapshot: Snapshot) -> Option<Effect> {
        let actual = snapshot.state.state_hash();
        let mismatch = if actual == snapshot.hash {
            None
        } else {
            Some(Effect::HashMismatch { seq: snapshot.seq, expected: snapshot.hash, actual })
        };
        self.state = snapshot.state;
        self.epoch = snapshot.epoch;
        self.seq = snapshot.seq;
        self.stale = false;
        mismatch
    }

    /// Replaces the member list (from a `joined`).
    pub fn set_members(&mut self, members: &[MemberInfo]) {
        self.members = members
            .iter()
            .filter(|m| m.status != PresenceStatus::Left)
            .map(|m| (m.player.clone(), m.status))
            .collect();
    }

    /// Handles one server message (a `batch` recursively, in order), pushing what happened to
    /// `out`. On error, the effects of the messages before (and after, for a batch) are still
    /// in `out`; the mirror is then stale.
    pub fn handle(&mut self, msg: ServerMsg, out: &mut Vec<Effect>) -> Result<(), MirrorError> {
        let mut first_error = None;
        self.handle_one(msg, out, &mut first_error);
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn handle_one(&mut self, msg: ServerMsg, out: &mut Vec<Effect>, first_error: &mut Option<MirrorError>) {
        match msg {
            ServerMsg::Batch { msgs } => {
                for m in msgs {
                    self.handle_one(m, out, first_error);
                }
            }
            ServerMsg::Delta(delta) => {
                if let Err(e) = self.apply_delta(delta, out) {
                    first_error.get_or_insert(e);
                }
            }
            ServerMsg::Resync { snapshot, cid, members, .. } => {
                // Presence messages may have been dropped while lagging: take the list as is.
                self.set_members(&members);
                if let Some(mismatch) = self.reset(snapshot) {
                    out.push(mismatch);
                }
                out.push(Effect::Resync { cid });
            }
            ServerMsg::Presence { player, status, .. } => {
                if status == PresenceStatus::Left {
                    self.members.remove(&player);
                } else {
                    self.members.insert(player.clone(), status);
                }
                out.push(Effect::Presence { player, status });
            }
            other => out.push(Effect::Other(other)),
        }
    }

    fn apply_delta(&mut self, delta: Delta, out: &mut Vec<Effect>) -> Result<(), MirrorError> {
        if self.stale {
            // Waiting for a snapshot: this history cannot be continued.
            return Ok(());
        }
        if delta.epoch == self.epoch && delta.seq <= self.seq {
            return Ok(()); // duplicate
        }
        if delta.epoch != self.epoch || delta.seq != self.seq + 1 {
            self.stale = true;
            return Err(MirrorError::Gap {
                epoch: self.epoch,
                seq: self.seq,
                got_epoch: delta.epoch,
                got_seq: delta.seq,
            });
        }
        for op in &delta.ops {
            if let Err(e) = apply_resolved(&mut self.state, op) {
                self.stale = true;
                return Err(MirrorError::BadDelta {
                    seq: delta.seq,
                    error: format!("{} at {:?}: {e}", op_name(op), op.path()),
                });
            }
        }
        self.seq = delta.seq;
        out.push(Effect::Delta(delta));
        Ok(())
    }

    /// The room id.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// This client's player id.
    pub fn player(&self) -> &str {
        &self.player
    }

    /// The mirrored state document.
    pub fn state(&self) -> &Doc {
        &self.state
    }

    /// The epoch of the room history the mirror follows.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The seq of the last applied delta (or of the snapshot).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the mirror needs a snapshot before it can follow deltas again.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Marks the mirror stale, so the next resume asks for a snapshot.
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Where a resume can continue from: `(epoch, seq)`, or `None` when a snapshot is needed.
    pub fn resume_point(&self) -> Option<(u64, u64)> {
        (!self.stale).then_some((self.epoch, self.seq))
    }

    /// The room's members that have not left, with their presence, sorted by player id.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .map(|(player, status)| MemberInfo { player: player.clone(), status: *status })
            .collect()
    }
}

fn op_name(op: &gamerelay::protocol::Op) -> &'static str {
    use gamerelay::protocol::Op;
    match op {
        Op::Set { .. } => "set",
        Op::Del { .. } => "del",
        Op::Inc { .. } => "inc",
        Op::Merge { .. } => "merge",
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

    fn map(entries: &[(&str, Doc)]) -> Doc {
        Doc::Map(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<DocMap>())
    }

    fn set(path: &str, value: impl Into<Doc>) -> Op {
        Op::Set { path: path.into(), value: value.into() }
    }

    fn delta(epoch: u64, seq: u64, ops: Vec<Op>) -> Delta {
        Delta { room: "r".into(), epoch, seq, cid: Some(seq), by: Some("p-other".into()), ops }
    }

    fn member(player: &str, status: PresenceStatus) -> MemberInfo {
        MemberInfo { player: player.into(), status }
    }

    fn mirror_at(epoch: u64, seq: u64) -> Mirror {
        let (m, mismatch) = Mirror::new(
            "r",
            "p-me",
            snapshot(epoch, seq, map(&[("a", Doc::Int(1))])),
            &[member("p-me", PresenceStatus::Joined)],
        );
        assert_eq!(mismatch, None);
        m
    }

    fn handle(m: &mut Mirror, msg: ServerMsg) -> (Vec<Effect>, Result<(), MirrorError>) {
        let mut out = Vec::new();
        let r = m.handle(msg, &mut out);
        (out, r)
    }

    #[test]
    fn snapshot_initialises_state_position_and_members() {
        let m = mirror_at(7, 42);
        assert_eq!(m.state(), &map(&[("a", Doc::Int(1))]));
        assert_eq!((m.epoch(), m.seq()), (7, 42));
        assert_eq!(m.resume_point(), Some((7, 42)));
        assert!(!m.is_stale());
        assert_eq!(m.members(), vec![member("p-me", PresenceStatus::Joined)]);
        assert_eq!((m.room(), m.player()), ("r", "p-me"));
    }

    #[test]
    fn snapshot_with_a_wrong_hash_is_taken_and_reported() {
        let mut snap = snapshot(1, 3, map(&[("a", Doc::Int(1))]));
        snap.hash = "00".into();
        let (m, mismatch) = Mirror::new("r", "p-me", snap, &[]);
        assert!(matches!(mismatch, Some(Effect::HashMismatch { seq: 3, .. })));
        assert_eq!(m.state().get(["a"]), Some(&Doc::Int(1)));
        assert!(!m.is_stale());
    }

    #[test]
    fn deltas_apply_in_order() {
        let mut m = mirror_at(1, 10);
        let d1 = delta(1, 11, vec![set("b/c", 2), Op::Del { path: "a".into() }]);
        let (out, r) = handle(&mut m, ServerMsg::Delta(d1.clone()));
        assert_eq!(r, Ok(()));
        assert_eq!(out, vec![Effect::Delta(d1)]);
        assert_eq!(m.seq(), 11);
        assert_eq!(m.state(), &map(&[("b", map(&[("c", Doc::Int(2))]))]));

        // A delta that resolves to zero ops still advances the seq.
        let (out, r) = handle(&mut m, ServerMsg::Delta(delta(1, 12, vec![])));
        assert_eq!((out.len(), r), (1, Ok(())));
        assert_eq!(m.seq(), 12);
    }

    #[test]
    fn duplicates_are_ignored() {
        let mut m = mirror_at(1, 10);
        assert_eq!(handle(&mut m, ServerMsg::Delta(delta(1, 11, vec![set("x", 1)]))).1, Ok(()));
        let before = m.state().clone();
        for seq in [11, 10, 3] {
            let (out, r) = handle(&mut m, ServerMsg::Delta(delta(1, seq, vec![set("x", 99)])));
            assert_eq!((out, r), (vec![], Ok(())));
        }
        assert_eq!(m.state(), &before);
        assert_eq!(m.seq(), 11);
        assert!(!m.is_stale());
    }

    #[test]
    fn a_seq_jump_is_a_gap_and_makes_the_mirror_stale() {
        let mut m = mirror_at(1, 10);
        let (out, r) = handle(&mut m, ServerMsg::Delta(delta(1, 12, vec![set("x", 1)])));
        assert_eq!(out, vec![]);
        assert_eq!(r, Err(MirrorError::Gap { epoch: 1, seq: 10, got_epoch: 1, got_seq: 12 }));
        assert!(m.is_stale());
        assert_eq!(m.resume_point(), None);
        assert_eq!(m.state().get(["x"]), None, "nothing of the gapped delta applied");

        // Stale: even the "next" delta is ignored until a snapshot comes.
        let (out, r) = handle(&mut m, ServerMsg::Delta(delta(1, 11, vec![set("x", 1)])));
        assert_eq!((out, r), (vec![], Ok(())));
        assert_eq!(m.seq(), 10);
    }

    #[test]
    fn another_epoch_is_a_gap_even_with_the_next_or_an_older_seq() {
        for (epoch, seq) in [(2, 11), (2, 5), (0, 11)] {
            let mut m = mirror_at(1, 10);
            let (_, r) = handle(&mut m, ServerMsg::Delta(delta(epoch, seq, vec![])));
            assert!(matches!(r, Err(MirrorError::Gap { .. })), "{epoch}/{seq}");
            assert!(m.is_stale());
        }
    }

    #[test]
    fn an_unappliable_delta_makes_the_mirror_stale() {
        let mut m = mirror_at(1, 10);
        // `a` is an integer: `a/b` crosses a non-map.
        let (out, r) = handle(&mut m, ServerMsg::Delta(delta(1, 11, vec![set("a/b", 1)])));
        assert_eq!(out, vec![]);
        assert!(matches!(r, Err(MirrorError::BadDelta { seq: 11, .. })));
        assert!(m.is_stale());
        assert_eq!(m.seq(), 10);

        // Deltas never carry inc/merge.
        let mut m = mirror_at(1, 10);
        let inc = Op::Inc { path: "a".into(), by: Doc::Int(1) };
        let (_, r) = handle(&mut m, ServerMsg::Delta(delta(1, 11, vec![inc])));
        assert!(matches!(r, Err(MirrorError::BadDelta { .. })));
    }

    #[test]
    fn resync_replaces_the_state_and_clears_staleness() {
        let mut m = mirror_at(1, 10);
        assert!(handle(&mut m, ServerMsg::Delta(delta(1, 13, vec![]))).1.is_err());
        assert!(m.is_stale());
        let resync = ServerMsg::Resync {
            room: "r".into(),
            snapshot: snapshot(1, 20, map(&[("z", Doc::Bool(true))])),
            cid: 4,
            members: vec![member("p-me", PresenceStatus::Joined), member("p-new", PresenceStatus::Joined)],
        };
        let (out, r) = handle(&mut m, resync);
        assert_eq!(r, Ok(()));
        assert_eq!(out, vec![Effect::Resync { cid: 4 }]);
        assert_eq!(m.state(), &map(&[("z", Doc::Bool(true))]));
        assert_eq!(m.members().len(), 2, "the member list is replaced too");
        assert_eq!(m.resume_point(), Some((1, 20)));
        // Deltas continue after the snapshot's seq.
        let (out, r) = handle(&mut m, ServerMsg::Delta(delta(1, 21, vec![set("y", 1)])));
        assert_eq!((out.len(), r), (1, Ok(())));
        assert_eq!(m.seq(), 21);
    }

    #[test]
    fn resync_to_a_new_epoch_is_followed() {
        let mut m = mirror_at(1, 10);
        let resync = ServerMsg::Resync {
            room: "r".into(),
            snapshot: snapshot(2, 0, Doc::map()),
            cid: 0,
            members: vec![],
        };
        assert_eq!(handle(&mut m, resync).1, Ok(()));
        let (_, r) = handle(&mut m, ServerMsg::Delta(delta(2, 1, vec![set("n", 1)])));
        assert_eq!(r, Ok(()));
        assert_eq!((m.epoch(), m.seq()), (2, 1));
    }

    #[test]
    fn presence_updates_the_member_list() {
        let mut m = mirror_at(1, 0);
        let presence =
            |player: &str, status| ServerMsg::Presence { room: "r".into(), player: player.into(), status };
        let (out, _) = handle(&mut m, presence("p-b", PresenceStatus::Joined));
        assert_eq!(out, vec![Effect::Presence { player: "p-b".into(), status: PresenceStatus::Joined }]);
        assert_eq!(handle(&mut m, presence("p-b", PresenceStatus::Disconnected)).1, Ok(()));
        assert_eq!(
            m.members(),
            vec![member("p-b", PresenceStatus::Disconnected), member("p-me", PresenceStatus::Joined)]
        );
        assert_eq!(handle(&mut m, presence("p-b", PresenceStatus::Left)).1, Ok(()));
        assert_eq!(m.members(), vec![member("p-me", PresenceStatus::Joined)]);
    }

    #[test]
    fn other_messages_pass_through() {
        let mut m = mirror_at(1, 0);
        let ack = ServerMsg::Ack { cid: 3, seq: 9 };
        let (out, r) = handle(&mut m, ack.clone());
        assert_eq!((out, r), (vec![Effect::Other(ack)], Ok(())));
    }

    #[test]
    fn batches_are_handled_in_order_and_recursively() {
        let mut m = mirror_at(1, 0);
        let d1 = delta(1, 1, vec![set("n", 1)]);
        let d2 = delta(1, 2, vec![set("n", 2)]);
        let d3 = delta(1, 3, vec![set("n", 3)]);
        let ack = ServerMsg::Ack { cid: 1, seq: 1 };
        let batch = ServerMsg::Batch {
            msgs: vec![
                ServerMsg::Delta(d1.clone()),
                ServerMsg::Batch { msgs: vec![ServerMsg::Delta(d2.clone()), ack.clone()] },
                ServerMsg::Delta(d2.clone()), // duplicate
                ServerMsg::Delta(d3.clone()),
            ],
        };
        let (out, r) = handle(&mut m, batch);
        assert_eq!(r, Ok(()));
        assert_eq!(out, vec![Effect::Delta(d1), Effect::Delta(d2), Effect::Other(ack), Effect::Delta(d3)]);
        assert_eq!(m.state().get(["n"]), Some(&Doc::Int(3)));
        assert_eq!(m.seq(), 3);
    }

    #[test]
    fn a_gap_inside_a_batch_keeps_the_other_messages() {
        let mut m = mirror_at(1, 0);
        let d1 = delta(1, 1, vec![set("n", 1)]);
        let reject = ServerMsg::Reject { cid: 5, code: "forbidden".into(), message: "no".into() };
        let batch = ServerMsg::Batch {
            msgs: vec![
                ServerMsg::Delta(d1.clone()),
                ServerMsg::Delta(delta(1, 3, vec![set("n", 3)])), // gap
                ServerMsg::Delta(delta(1, 4, vec![set("n", 4)])), // ignored: stale
                reject.clone(),
            ],
        };
        let (out, r) = handle(&mut m, batch);
        assert!(matches!(r, Err(MirrorError::Gap { got_seq: 3, .. })));
        assert_eq!(out, vec![Effect::Delta(d1), Effect::Other(reject)]);
        assert_eq!(m.state().get(["n"]), Some(&Doc::Int(1)));
        assert!(m.is_stale());
    }

    #[test]
    fn a_resync_inside_a_batch_repairs_a_gap_before_it() {
        let mut m = mirror_at(1, 0);
        let batch = ServerMsg::Batch {
            msgs: vec![
                ServerMsg::Delta(delta(1, 5, vec![])), // gap
                ServerMsg::Resync {
                    room: "r".into(),
                    snapshot: snapshot(1, 5, map(&[("n", Doc::Int(5))])),
                    cid: 0,
                    members: vec![],
                },
                ServerMsg::Delta(delta(1, 6, vec![set("n", 6)])),
            ],
        };
        let (out, r) = handle(&mut m, batch);
        // The gap is still reported (the caller decides), but the state is sound again.
        assert!(matches!(r, Err(MirrorError::Gap { .. })));
        assert_eq!(out.len(), 2);
        assert!(!m.is_stale());
        assert_eq!(m.seq(), 6);
        assert_eq!(m.state().get(["n"]), Some(&Doc::Int(6)));
    }
}
