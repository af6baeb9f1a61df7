//! `arena`: a small real game with server-enforced rules.
//!
//! State: `arena: {w, h}`, `gems: {g0: {x, y}, ...}`, `players: {<id>: {x, y, score, name?}}`.
//! A player may only move itself (`set` of `players/<own>/x` / `y`, or `merge` of those keys
//! into `players/<own>`) and name itself (`name`, a string of at most 32 bytes). The server
//! clamps every move to the arena and to a speed limit (a movement budget refilled at
//! [`SPEED`] units/s, holding at most [`BURST_SECS`] seconds of it), so the delta carries the
//! position the server accepted. Touching a gem (within [`GEM_RADIUS`]) scores a point
//! (`score` is server-owned) and respawns the gem elsewhere.
//! Positions are volatile: in cluster mode they are fanned out but not logged.

use std::collections::HashMap;
use std::time::Instant;

use super::RoomType;
use crate::protocol::{Doc, ErrorCode, Path};
use crate::room::txn::{ParsedOp, Refusal, Txn};

pub const NAME: &str = "arena";
/// Arena width and height.
pub const SIZE: f64 = 1000.0;
/// Top speed, units per second.
pub const SPEED: f64 = 400.0;
/// Most movement a player can save up, in seconds of top speed.
pub const BURST_SECS: f64 = 0.25;
/// Distance at which a player picks up a gem.
pub const GEM_RADIUS: f64 = 20.0;
/// Gems on the field.
pub const GEMS: usize = 5;
/// Longest player name, in bytes.
pub const MAX_NAME_BYTES: usize = 32;

/// Per-player movement budget.
struct Mover {
    budget: f64,
    refilled_at: Instant,
}

/// The `arena` room type.
pub struct Arena {
    rng: XorShift,
    movers: HashMap<String, Mover>,
}

impl Arena {
    pub fn new(room_id: &str) -> Arena {
        // Deterministic per room: the same room id spawns the same gem sequence.
        let seed = room_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        Arena { rng: XorShift(seed | 1), movers: HashMap::new() }
    }

    fn random_point(&mut self) -> (f64, f64) {
        let margin = 50.0;
        let span = SIZE - 2.0 * margin;
        ((margin + self.rng.next_f64() * span).round(), (margin + self.rng.next_f64() * span).round())
    }

    fn player_path(player: &str, key: &str) -> Result<Path, Refusal> {
        Ok(Path::from_segments(["players", player, key])?)
    }

    /// Spends movement budget to go from `from` to `to`; returns where the player ends up.
    fn limit_move(&mut self, player: &str, from: (f64, f64), to: (f64, f64), now: Instant) -> (f64, f64) {
        let burst = SPEED * BURST_SECS;
        let mover = self.movers.entry(player.to_owned()).or_insert(Mover { budget: burst, refilled_at: now });
        let dt = now.saturating_duration_since(mover.refilled_at).as_secs_f64();
        mover.budget = (mover.budget + dt * SPEED).min(burst);
        mover.refilled_at = now;
        let to = (to.0.clamp(0.0, SIZE), to.1.clamp(0.0, SIZE));
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        let dist = (dx * dx + dy * dy).sqrt();
        if dist <= mover.budget {
            mover.budget -= dist;
            return to;
        }
        let k = mover.budget / dist;
        mover.budget = 0.0;
        (from.0 + dx * k, from.1 + dy * k)
    }
}

fn number(doc: Option<&Doc>) -> f64 {
    doc.and_then(Doc::as_f64).unwrap_or(0.0)
}

fn num(v: f64) -> Result<Doc, Refusal> {
    Doc::number(v).map_err(|e| Refusal::bad_value(e.to_string()))
}

impl RoomType for Arena {
    fn name(&self) -> &'static str {
        NAME
    }

    fn init(&mut self, txn: &mut Txn) -> Result<(), Refusal> {
        txn.set(&Path::parse("arena/w")?, num(SIZE)?)?;
        txn.set(&Path::parse("arena/h")?, num(SIZE)?)?;
        for g in 0..GEMS {
            let (x, y) = self.random_point();
            txn.set(&Path::parse(&format!("gems/g{g}/x"))?, num(x)?)?;
            txn.set(&Path::parse(&format!("gems/g{g}/y"))?, num(y)?)?;
        }
        Ok(())
    }

    fn on_join(&mut self, player: &str, txn: &mut Txn, now: Instant) -> Result<(), Refusal> {
        let (x, y) = self.random_point();
        let mut me = crate::protocol::DocMap::new();
        me.insert("x".into(), num(x)?);
        me.insert("y".into(), num(y)?);
        me.insert("score".into(), Doc::Int(0));
        txn.set(&Path::from_segments(["players", player])?, Doc::Map(me))?;
        self.movers.insert(player.to_owned(), Mover { budget: SPEED * BURST_SECS, refilled_at: now });
        Ok(())
    }

    fn on_leave(&mut self, player: &str, txn: &mut Txn) -> Result<(), Refusal> {
        self.movers.remove(player);
        txn.del(&Path::from_segments(["players", player])?)
    }

    fn apply(
        &mut self,
        player: &str,
        ops: Vec<ParsedOp>,
        txn: &mut Txn,
        now: Instant,
    ) -> Result<(), Refusal> {
        let me = Path::from_segments(["players", player])?;
        if txn.get(&me).is_none() {
            return Err(Refusal::new(ErrorCode::Forbidden, "you have no player in this arena"));
        }
        let mut target: (Option<f64>, Option<f64>) = (None, None);
        let mut name: Option<String> = None;
        let mut accept = |key: &str, value: &Doc, path: &Path| -> Result<(), Refusal> {
            match key {
                "x" | "y" => {
                    let v = value
                        .as_f64()
                        .ok_or_else(|| Refusal::bad_value(format!("{path} must be a number")))?;
                    if key == "x" {
                        target.0 = Some(v)
                    } else {
                        target.1 = Some(v)
                    }
                }
                "name" => {
                    let s = value.as_str().ok_or_else(|| Refusal::bad_value("name must be a string"))?;
                    if s.len() > MAX_NAME_BYTES {
                        return Err(Refusal::bad_value(format!(
                            "name is longer than {MAX_NAME_BYTES} bytes"
                        )));
                    }
                    name = Some(s.to_owned());
                }
                _ => return Err(Refusal::forbidden(path)),
            }
            Ok(())
        };
        for op in &ops {
            match op {
                ParsedOp::Set { path, value } if path.depth() == 3 && path.starts_with(&me) => {
                    accept(path.leaf(), value, path)?
                }
                ParsedOp::Merge { path, value } if *path == me => {
                    for (key, v) in value {
                        accept(key, v, path)?;
                    }
                }
                other => return Err(Refusal::forbidden(other.path())),
            }
        }
        if let Some(name) = name {
            txn.set(&Self::player_path(player, "name")?, Doc::Str(name))?;
        }
        if target == (None, None) {
            return Ok(());
        }
        let (px, py) = (Self::player_path(player, "x")?, Self::player_path(player, "y")?);
        let from = {
            let me = txn.get(&me).and_then(Doc::as_map);
            (number(me.and_then(|m| m.get("x"))), number(me.and_then(|m| m.get("y"))))
        };
        let to = (target.0.unwrap_or(from.0), target.1.unwrap_or(from.1));
        let (x, y) = self.limit_move(player, from, to, now);
        txn.set(&px, num(x)?)?;
        txn.set(&py, num(y)?)?;
        // One look-up of the gems map per move (this runs for every input of every player).
        let hits: Vec<String> = match txn.doc().get(["gems"]).and_then(Doc::as_map) {
            Some(gems) => gems
                .iter()
                .filter(|(_, gem)| {
                    let gem = gem.as_map();
                    let (gx, gy) =
                        (number(gem.and_then(|m| m.get("x"))), number(gem.and_then(|m| m.get("y"))));
                    let (dx, dy) = (gx - x, gy - y);
                    dx * dx + dy * dy <= GEM_RADIUS * GEM_RADIUS
                })
                .map(|(name, _)| name.clone())
                .collect(),
            None => Vec::new(),
        };
        for gem in hits {
            {
                let score = Self::player_path(player, "score")?;
                let next = txn.get(&score).and_then(Doc::as_i64).unwrap_or(0) + 1;
                txn.set(&score, Doc::Int(next))?;
                let (nx, ny) = self.random_point();
                txn.set(&Path::from_segments(["gems", &gem, "x"])?, num(nx)?)?;
                txn.set(&Path::from_segments(["gems", &gem, "y"])?, num(ny)?)?;
            }
        }
        Ok(())
    }

    fn is_volatile(&self, path: &str) -> bool {
        let mut s = path.split('/');
        matches!((s.next(), s.next(), s.next(), s.next()), (Some("players"), Some(_), Some("x" | "y"), None))
    }
}

/// xorshift64: small, fast, deterministic; not for secrets.
struct XorShift(u64);

impl XorShift {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Fixture {
        doc: Doc,
        size: usize,
        arena: Arena,
        t0: Instant,
    }

    impl Fixture {
        fn new() -> Fixture {
            let mut f = Fixture { doc: Doc::map(), size: 1, arena: Arena::new("room"), t0: Instant::now() };
            let mut t = Txn::new(&mut f.doc, &mut f.size, 1 << 20);
            f.arena.init(&mut t).unwrap();
            f.arena.on_join("p1", &mut t, f.t0).unwrap();
            t.commit();
            f
        }
        fn pos(&self) -> (f64, f64) {
            (number(self.doc.get(["players", "p1", "x"])), number(self.doc.get(["players", "p1", "y"])))
        }
        fn apply(&mut self, ops: Vec<ParsedOp>, after: Duration) -> Result<(), Refusal> {
            let mut t = Txn::new(&mut self.doc, &mut self.size, 1 << 20);
            self.arena.apply("p1", ops, &mut t, self.t0 + after)?;
            t.commit();
            Ok(())
        }
    }

    fn set(path: &str, v: f64) -> ParsedOp {
        ParsedOp::Set { path: Path::parse(path).unwrap(), value: Doc::number(v).unwrap() }
    }

    #[test]
    fn moves_are_clamped_to_the_speed_limit() {
        let mut f = Fixture::new();
        let (x0, y0) = f.pos();
        let far = if x0 < 500.0 { x0 + 400.0 } else { x0 - 400.0 };
        f.apply(vec![set("players/p1/x", far)], Duration::from_millis(50)).unwrap();
        let (x1, y1) = f.pos();
        assert!(((x1 - x0).abs() - SPEED * BURST_SECS).abs() < 1e-6, "moved {}", (x1 - x0).abs());
        assert_eq!(y1, y0);
        // Right after, the budget is spent: only 10 ms of speed is available.
        f.apply(vec![set("players/p1/x", far)], Duration::from_millis(60)).unwrap();
        assert!(((f.pos().0 - x1).abs() - SPEED * 0.01).abs() < 1e-6);
    }

    #[test]
    fn positions_stay_inside_the_arena() {
        let mut f = Fixture::new();
        for i in 1..40 {
            f.apply(vec![set("players/p1/x", -1e6), set("players/p1/y", 1e6)], Duration::from_secs(i))
                .unwrap();
        }
        assert_eq!(f.pos(), (0.0, SIZE));
    }

    #[test]
    fn touching_a_gem_scores_and_the_score_is_server_owned() {
        let mut f = Fixture::new();
        let gem = (number(f.doc.get(["gems", "g0", "x"])), number(f.doc.get(["gems", "g0", "y"])));
        // One second per step refills the whole budget: at most 15 steps cross the arena.
        for step in 1..=15 {
            f.apply(vec![set("players/p1/x", gem.0), set("players/p1/y", gem.1)], Duration::from_secs(step))
                .unwrap();
        }
        assert!(f.doc.get(["players", "p1", "score"]).and_then(Doc::as_i64) >= Some(1));
        assert_ne!((number(f.doc.get(["gems", "g0", "x"])), number(f.doc.get(["gems", "g0", "y"]))), gem);
        let e = f.apply(vec![set("players/p1/score", 99.0)], Duration::from_secs(21)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        let e = f.apply(vec![set("players/p2/x", 1.0)], Duration::from_secs(22)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
    }

    #[test]
    fn positions_are_volatile_scores_are_not() {
        let a = Arena::new("r");
        assert!(a.is_volatile("players/p1/x"));
        assert!(!a.is_volatile("players/p1/score"));
        assert!(!a.is_volatile("gems/g0/x"));
    }
}
