//! The checker: the contract of DESIGN.md (G1-G4, G6) verified on recorded histories.
//!
//! Pure functions over what the clients recorded and the final state read from each room's
//! owner, so every rule is unit-tested on hand-made histories (see the tests below).
//!
//! Each client writes only its own keys: batch k of player P is
//! `[set players/P/o<k> = k, inc players/P/n 1]`. So the final state tells which batches
//! were applied (`o<k>` present) and how often (`n` counts applications).

use std::collections::{BTreeMap, HashMap};

use gamerelay::protocol::Doc;
use serde::Serialize;

/// One op batch a client handed to its connection.
#[derive(Debug, Clone)]
pub struct Sent {
    pub cid: u64,
    pub k: u64,
    pub at_ms: u64,
}

/// What a client saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A delta applied to the client's mirror; `digest` identifies its content.
    Delta {
        epoch: u64,
        seq: u64,
        by: Option<String>,
        cid: Option<u64>,
        digest: u64,
    },
    Acked {
        cid: u64,
        seq: u64,
    },
    Rejected {
        cid: u64,
    },
    /// The mirror was replaced by a snapshot (resync, or a resume with a snapshot).
    Snapshot,
    Resumed,
    Disconnected,
}

/// One client's history.
#[derive(Debug, Clone)]
pub struct History {
    pub room: String,
    pub player: String,
    /// Seq of the snapshot the client joined with.
    pub joined_seq: u64,
    pub sent: Vec<Sent>,
    pub seen: Vec<(u64, Seen)>,
    /// The client's mirror at the end, if it was still connected.
    pub final_hash: Option<String>,
    pub final_seq: u64,
}

/// A room's state as its owner served it to a fresh observer at the end.
#[derive(Debug, Clone)]
pub struct RoomFinal {
    pub room: String,
    pub seq: u64,
    pub hash: String,
    pub state: Doc,
}

/// A broken guarantee, explained.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub guarantee: &'static str,
    pub room: String,
    pub detail: String,
}

/// Checks every history against the final states; returns the violations (empty: pass).
pub fn check(histories: &[History], finals: &[RoomFinal]) -> Vec<Violation> {
    let mut out = Vec::new();
    let finals: HashMap<&str, &RoomFinal> = finals.iter().map(|f| (f.room.as_str(), f)).collect();
    let mut by_room: BTreeMap<&str, Vec<&History>> = BTreeMap::new();
    for h in histories {
        by_room.entry(h.room.as_str()).or_default().push(h);
    }
    for (room, hs) in by_room {
        one_content_per_seq(room, &hs, &mut out);
        one_seq_per_cid(room, &hs, &mut out);
        for h in &hs {
            in_order_without_gaps(h, &mut out);
        }
        match finals.get(room) {
            Some(f) => {
                for h in &hs {
                    acked_ops_are_in_the_final_state(h, f, &mut out);
                    applied_once_in_the_final_state(h, f, &mut out);
                    mirror_converged(h, f, &mut out);
                }
            }
            None => out.push(Violation {
                guarantee: "G2",
                room: room.to_string(),
                detail: "no final state could be read from the room's owner".into(),
            }),
        }
    }
    out
}

/// G1: a seq is assigned once; every client that saw it saw the same content.
fn one_content_per_seq(room: &str, hs: &[&History], out: &mut Vec<Violation>) {
    /// Who first saw a seq, and what.
    struct FirstSeen<'a> {
        digest: u64,
        who: &'a str,
        epoch: u64,
        by: &'a Option<String>,
        cid: &'a Option<u64>,
    }
    let mut first: HashMap<u64, FirstSeen> = HashMap::new();
    for h in hs {
        for (at, s) in &h.seen {
            if let Seen::Delta { epoch, seq, by, cid, digest } = s {
                match first.get(seq) {
                    None => {
                        first.insert(
                            *seq,
                            FirstSeen { digest: *digest, who: &h.player, epoch: *epoch, by, cid },
                        );
                    }
                    Some(&FirstSeen { digest: d, who, epoch: e, by: b, cid: c }) if d != *digest => {
                        out.push(Violation {
                            guarantee: "G1",
                            room: room.to_string(),
                            detail: format!(
                            "seq {seq} was assigned twice: {who} saw it in epoch {e} (by {b:?}, cid {c:?}), \
                             {} saw different content in epoch {epoch} (by {by:?}, cid {cid:?}) at {at} ms",
                            h.player
                        ),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// G4: a player's cid is applied at most once (one seq).
fn one_seq_per_cid(room: &str, hs: &[&History], out: &mut Vec<Violation>) {
    let mut applied: HashMap<(&str, u64), u64> = HashMap::new();
    for h in hs {
        for (_, s) in &h.seen {
            if let Seen::Delta { seq, by: Some(by), cid: Some(cid), .. } = s {
                match applied.get(&(by.as_str(), *cid)) {
                    None => {
                        applied.insert((by.as_str(), *cid), *seq);
                    }
                    Some(&other) if other != *seq => out.push(Violation {
                        guarantee: "G4",
                        room: room.to_string(),
                        detail: format!("cid {cid} of {by} was applied twice: seq {other} and seq {seq}"),
                    }),
                    Some(_) => {}
                }
            }
        }
    }
}

/// G3: each client applies the room's deltas in seq order with no gap; a snapshot (resync,
/// resume with a snapshot) may jump ahead, never back.
fn in_order_without_gaps(h: &History, out: &mut Vec<Violation>) {
    let mut last = h.joined_seq;
    let mut after_snapshot = false;
    for (at, s) in &h.seen {
        match s {
            Seen::Snapshot => after_snapshot = true,
            Seen::Delta { seq, .. } => {
                let ok = if after_snapshot { *seq > last } else { *seq == last + 1 };
                if !ok {
                    out.push(Violation {
                        guarantee: "G3",
                        room: h.room.clone(),
                        detail: format!(
                            "{} applied seq {seq} after seq {last} at {at} ms{}",
                            h.player,
                            if after_snapshot { " (after a snapshot: went back)" } else { " (a gap)" }
                        ),
                    });
                }
                last = *seq;
                after_snapshot = false;
            }
            _ => {}
        }
    }
}

fn player_map<'a>(f: &'a RoomFinal, player: &str) -> Option<&'a gamerelay::protocol::DocMap> {
    f.state.as_map()?.get("players")?.as_map()?.get(player)?.as_map()
}

/// G2: every acknowledged batch is in the final state.
fn acked_ops_are_in_the_final_state(h: &History, f: &RoomFinal, out: &mut Vec<Violation>) {
    let k_of: HashMap<u64, u64> = h.sent.iter().map(|s| (s.cid, s.k)).collect();
    let mine = player_map(f, &h.player);
    for (at, s) in &h.seen {
        let Seen::Acked { cid, seq } = s else { continue };
        let Some(k) = k_of.get(cid) else { continue };
        let present = mine.is_some_and(|m| m.contains_key(&format!("o{k}")));
        if !present {
            out.push(Violation {
                guarantee: "G2",
                room: h.room.clone(),
                detail: format!(
                    "{}'s batch cid {cid} (o{k}) was acknowledged as seq {seq} at {at} ms but is not in \
                     the final state (seq {})",
                    h.player, f.seq
                ),
            });
        }
    }
}

/// G4 on the final state: `n` counts applications, `o<k>` the distinct batches applied.
fn applied_once_in_the_final_state(h: &History, f: &RoomFinal, out: &mut Vec<Violation>) {
    let Some(mine) = player_map(f, &h.player) else { return };
    let keys = mine.keys().filter(|k| k.starts_with('o')).count() as i64;
    let n = match mine.get("n") {
        Some(Doc::Int(n)) => *n,
        _ => 0,
    };
    if n != keys {
        out.push(Violation {
            guarantee: "G4",
            room: h.room.clone(),
            detail: format!("{}'s counter n = {n} but {keys} distinct batches are applied", h.player),
        });
    }
}

/// G6: a client still connected at the end mirrors the owner's state exactly.
fn mirror_converged(h: &History, f: &RoomFinal, out: &mut Vec<Violation>) {
    if let Some(hash) = &h.final_hash {
        if *hash != f.hash {
            out.push(Violation {
                guarantee: "G6",
                room: h.room.clone(),
                detail: format!(
                    "{}'s mirror (seq {}) hashes to {hash}, the owner's state (seq {}) to {}",
                    h.player, h.final_seq, f.seq, f.hash
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gamerelay::protocol::DocMap;

    fn delta(seq: u64, by: &str, cid: u64, digest: u64) -> Seen {
        Seen::Delta { epoch: 1, seq, by: Some(by.into()), cid: Some(cid), digest }
    }

    fn history(player: &str, seen: Vec<Seen>) -> History {
        History {
            room: "r".into(),
            player: player.into(),
            joined_seq: 0,
            sent: (1..=5).map(|k| Sent { cid: k, k, at_ms: 0 }).collect(),
            seen: seen.into_iter().enumerate().map(|(i, s)| (i as u64, s)).collect(),
            final_hash: Some("h".into()),
            final_seq: 0,
        }
    }

    fn final_state(players: &[(&str, &[u64], i64)]) -> RoomFinal {
        let mut ps = DocMap::new();
        for (p, ks, n) in players {
            let mut m = DocMap::new();
            for k in *ks {
                m.insert(format!("o{k}"), Doc::Int(*k as i64));
            }
            m.insert("n".into(), Doc::Int(*n));
            ps.insert(p.to_string(), Doc::Map(m));
        }
        let mut root = DocMap::new();
        root.insert("players".into(), Doc::Map(ps));
        RoomFinal { room: "r".into(), seq: 2, hash: "h".into(), state: Doc::Map(root) }
    }

    fn kinds(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.guarantee).collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let a =
            history("a", vec![delta(1, "a", 1, 10), Seen::Acked { cid: 1, seq: 1 }, delta(2, "b", 1, 20)]);
        let b =
            history("b", vec![delta(1, "a", 1, 10), delta(2, "b", 1, 20), Seen::Acked { cid: 1, seq: 2 }]);
        let f = final_state(&[("a", &[1], 1), ("b", &[1], 1)]);
        assert_eq!(kinds(&check(&[a, b], &[f])), Vec::<&str>::new());
    }

    #[test]
    fn a_seq_with_two_contents_is_split_brain() {
        let a = history("a", vec![delta(1, "a", 1, 10)]);
        let b = history("b", vec![delta(1, "b", 1, 99)]);
        let f = final_state(&[("a", &[1], 1), ("b", &[1], 1)]);
        assert_eq!(kinds(&check(&[a, b], &[f])), vec!["G1"]);
    }

    #[test]
    fn an_acked_batch_missing_from_the_final_state_is_lost() {
        let a = history("a", vec![delta(1, "a", 1, 10), Seen::Acked { cid: 1, seq: 1 }]);
        let f = final_state(&[("a", &[], 0)]);
        assert_eq!(kinds(&check(&[a], &[f])), vec!["G2"]);
    }

    #[test]
    fn a_cid_applied_twice_is_caught_in_the_history_and_the_state() {
        let a = history("a", vec![delta(1, "a", 1, 10), delta(2, "a", 1, 11)]);
        let f = final_state(&[("a", &[1], 2)]);
        assert_eq!(kinds(&check(&[a], &[f])), vec!["G4", "G4"]);
    }

    #[test]
    fn gaps_are_caught_and_snapshots_may_only_jump_ahead() {
        let gap = history("a", vec![delta(1, "a", 1, 10), delta(3, "a", 2, 12)]);
        let jump = history("b", vec![delta(1, "a", 1, 10), Seen::Snapshot, delta(3, "a", 2, 12)]);
        let back = history(
            "c",
            vec![delta(1, "a", 1, 10), delta(2, "x", 9, 11), Seen::Snapshot, delta(2, "x", 9, 11)],
        );
        let f = final_state(&[("a", &[1, 2], 2), ("b", &[], 0), ("c", &[], 0)]);
        let v = check(&[gap, jump, back], &[f]);
        assert_eq!(kinds(&v), vec!["G3", "G3"], "{v:?}");
        assert!(v[0].detail.contains("a gap") && v[1].detail.contains("went back"), "{v:?}");
    }

    #[test]
    fn a_diverged_mirror_is_caught() {
        let mut a = history("a", vec![]);
        a.final_hash = Some("other".into());
        let f = final_state(&[("a", &[], 0)]);
        assert_eq!(kinds(&check(&[a], &[f])), vec!["G6"]);
    }
}
