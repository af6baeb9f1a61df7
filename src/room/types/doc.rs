//! `doc`: a generic shared document. Players may write anywhere except under another
//! player's `players/<id>` subtree and under `server` (written by the game backend through
//! the admin API); there is no other game logic.

use std::time::Instant;

use super::{owns, RoomType};
use crate::room::txn::{ParsedOp, Refusal, Txn};

pub const NAME: &str = "doc";

/// The `doc` room type.
pub struct DocRoom;

impl RoomType for DocRoom {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(
        &mut self,
        player: &str,
        ops: Vec<ParsedOp>,
        txn: &mut Txn,
        _now: Instant,
    ) -> Result<(), Refusal> {
        for op in ops {
            if !owns(player, op.path()) {
                return Err(Refusal::forbidden(op.path()));
            }
            txn.apply(op)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Doc, ErrorCode, Path};

    fn set(path: &str) -> ParsedOp {
        ParsedOp::Set { path: Path::parse(path).unwrap(), value: Doc::Int(1) }
    }

    #[test]
    fn players_write_shared_paths_and_their_own_subtree_only() {
        let mut doc = Doc::map();
        let mut size = 1;
        let mut room = DocRoom;
        let now = Instant::now();
        let mut t = Txn::new(&mut doc, &mut size, 1 << 20);
        room.apply("p1", vec![set("shared/x"), set("players/p1/x")], &mut t, now).unwrap();
        for bad in ["players/p2/x", "players", "players/p2", "server", "server/round/timer"] {
            let e = room.apply("p1", vec![set(bad)], &mut t, now).unwrap_err();
            assert_eq!(e.code, ErrorCode::Forbidden, "{bad}");
        }
    }
}
