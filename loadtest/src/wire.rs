//! Lean reading of server frames on the hot path.
//!
//! A W1 client receives P deltas per input of any room member, so the generator reads far
//! more frames than it sends. Decoding each one into `gamerelay::protocol::ServerMsg` (owned
//! strings, `Doc` trees) costs allocations we do not need: the load generator only has to
//! know, per message, its type `t`, and for a delta whether `by` is this player and which
//! `cid` it carries. This module walks the MessagePack bytes of a frame once, without
//! allocating, and reports one [`Event`] per message (a `batch` yields one per inner
//! message, in order). Rare frames (`joined`, `error` details) are decoded with the real
//! protocol decoder elsewhere; the unit tests check this reader against that encoder.

/// What the generator needs to know about one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A delta; `mine` when `by` is this player, `cid` its client op id (nil for server changes).
    Delta { mine: bool, cid: Option<u64> },
    /// `ack{cid}`: a batch applied earlier (only after retries, which the generator never makes).
    Ack { cid: u64 },
    /// `reject{cid}`: the op batch was refused.
    Reject { cid: u64 },
    /// `resync`: the server dropped messages for this member (it was lagging).
    Resync,
    /// `error`: a request failed.
    Error,
    /// Anything else (`presence`, `msg`, `pong`, `welcome`, `joined`, unknown types).
    Other,
}

/// A frame that is not the MessagePack the protocol promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The frame ended inside a value.
    Truncated,
    /// A value of the wrong kind (e.g. a message that is not a map, a non-string key).
    Unexpected,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Bytes after the message.
    Trailing,
}

/// Deepest nesting walked; protects the stack against a hostile or broken peer.
pub const MAX_DEPTH: usize = 64;

/// Calls `on` for every message in `frame` (one, or each of a `batch`), in order.
/// `me` is this player's id. On an error, events already reported stay reported.
pub fn scan_frame(frame: &[u8], me: &[u8], on: &mut impl FnMut(Event)) -> Result<(), WireError> {
    let mut rd = Reader { buf: frame, pos: 0 };
    scan_message(&mut rd, me, on, 0)?;
    if rd.pos == frame.len() {
        Ok(())
    } else {
        Err(WireError::Trailing)
    }
}

fn scan_message(
    rd: &mut Reader<'_>,
    me: &[u8],
    on: &mut impl FnMut(Event),
    depth: usize,
) -> Result<(), WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError::TooDeep);
    }
    let fields = rd.map_len()?;
    let mut kind: &[u8] = b"";
    let mut by_me = false;
    let mut cid: Option<u64> = None;
    // Position of the `msgs` array of a batch; walked once the whole map is read, so that
    // the order of the keys does not matter.
    let mut msgs_at: Option<usize> = None;
    for _ in 0..fields {
        let key = rd.str()?;
        match key {
            b"t" => kind = rd.str()?,
            b"by" => by_me = rd.opt_str()? == Some(me),
            b"cid" => cid = rd.opt_uint()?,
            b"msgs" => {
                msgs_at = Some(rd.pos);
                rd.skip(depth + 1)?;
            }
            _ => rd.skip(depth + 1)?,
        }
    }
    match kind {
        b"delta" => on(Event::Delta { mine: by_me, cid }),
        b"ack" => on(Event::Ack { cid: cid.ok_or(WireError::Unexpected)? }),
        b"reject" => on(Event::Reject { cid: cid.ok_or(WireError::Unexpected)? }),
        b"resync" => on(Event::Resync),
        b"error" => on(Event::Error),
        b"batch" => {
            let at = msgs_at.ok_or(WireError::Unexpected)?;
            let end = rd.pos;
            rd.pos = at;
            let n = rd.array_len()?;
            for _ in 0..n {
                scan_message(rd, me, on, depth + 1)?;
            }
            rd.pos = end;
        }
        _ => on(Event::Other),
    }
    Ok(())
}

/// A cursor over MessagePack bytes with just the reads the scanner needs.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, WireError> {
        let b = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, WireError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn map_len(&mut self) -> Result<usize, WireError> {
        match self.byte()? {
            m @ 0x80..=0x8f => Ok((m & 0x0f) as usize),
            0xde => Ok(self.be(2)? as usize),
            0xdf => Ok(self.be(4)? as usize),
            _ => Err(WireError::Unexpected),
        }
    }

    fn array_len(&mut self) -> Result<usize, WireError> {
        match self.byte()? {
            m @ 0x90..=0x9f => Ok((m & 0x0f) as usize),
            0xdc => Ok(self.be(2)? as usize),
            0xdd => Ok(self.be(4)? as usize),
            _ => Err(WireError::Unexpected),
        }
    }

    /// Length of a string whose marker `m` was just read, or `None` if `m` is not a string.
    fn str_len(&mut self, m: u8) -> Result<Option<usize>, WireError> {
        Ok(Some(match m {
            0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return Ok(None),
        }))
    }

    fn str(&mut self) -> Result<&'a [u8], WireError> {
        let m = self.byte()?;
        let n = self.str_len(m)?.ok_or(WireError::Unexpected)?;
        self.take(n)
    }

    fn opt_str(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        if self.buf.get(self.pos) == Some(&0xc0) {
            self.pos += 1;
            return Ok(None);
        }
        self.str().map(Some)
    }

    fn opt_uint(&mut self) -> Result<Option<u64>, WireError> {
        Ok(Some(match self.byte()? {
            0xc0 => return Ok(None),
            m @ 0x00..=0x7f => m as u64,
            0xcc => self.be(1)?,
            0xcd => self.be(2)?,
            0xce => self.be(4)?,
            0xcf => self.be(8)?,
            // Signed encodings of non-negative values are valid MessagePack for a u64.
            0xd0 => non_negative(self.be(1)? as u8 as i8 as i64)?,
            0xd1 => non_negative(self.be(2)? as u16 as i16 as i64)?,
            0xd2 => non_negative(self.be(4)? as u32 as i32 as i64)?,
            0xd3 => non_negative(self.be(8)? as i64)?,
            _ => return Err(WireError::Unexpected),
        }))
    }

    /// Skips one complete value of any kind.
    fn skip(&mut self, depth: usize) -> Result<(), WireError> {
        if depth > MAX_DEPTH {
            return Err(WireError::TooDeep);
        }
        let m = self.byte()?;
        if let Some(n) = self.str_len(m)? {
            self.take(n)?;
            return Ok(());
        }
        let (containers, fixed): (usize, usize) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (2 * (m & 0x0f) as usize, 0),
            0x90..=0x9f => ((m & 0x0f) as usize, 0),
            0xc4 => (0, self.be(1)? as usize),
            0xc5 => (0, self.be(2)? as usize),
            0xc6 => (0, self.be(4)? as usize),
            0xc7 => (0, self.be(1)? as usize + 1),
            0xc8 => (0, self.be(2)? as usize + 1),
            0xc9 => (0, self.be(4)? as usize + 1),
            0xca => (0, 4),
            0xcb => (0, 8),
            0xcc | 0xd0 => (0, 1),
            0xcd | 0xd1 => (0, 2),
            0xce | 0xd2 => (0, 4),
            0xcf | 0xd3 => (0, 8),
            0xd4 => (0, 2),
            0xd5 => (0, 3),
            0xd6 => (0, 5),
            0xd7 => (0, 9),
            0xd8 => (0, 17),
            0xdc => (self.be(2)? as usize, 0),
            0xdd => (self.be(4)? as usize, 0),
            0xde => (2 * self.be(2)? as usize, 0),
            0xdf => (2 * self.be(4)? as usize, 0),
            // 0xc1 is never used.
            _ => return Err(WireError::Unexpected),
        };
        self.take(fixed)?;
        for _ in 0..containers {
            self.skip(depth + 1)?;
        }
        Ok(())
    }
}

fn non_negative(v: i64) -> Result<u64, WireError> {
    u64::try_from(v).map_err(|_| WireError::Unexpected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gamerelay::protocol::{
        batch_frame, encode, Delta, Doc, MemberInfo, Op, PresenceStatus, ServerMsg, Snapshot,
    };

    fn delta(by: Option<&str>, cid: Option<u64>) -> ServerMsg {
        let mut map = gamerelay::protocol::DocMap::new();
        map.insert("x".into(), Doc::Float(1.5));
        map.insert("tags".into(), Doc::Array(vec![Doc::Int(-3), Doc::Nil]));
        ServerMsg::Delta(Delta {
            room: "arena-1".into(),
            epoch: 1,
            seq: 1_000_000,
            cid,
            by: by.map(str::to_string),
            ops: vec![
                Op::Set { path: "players/p-1/x".into(), value: Doc::Float(12.25) },
                Op::Set { path: "players/p-1".into(), value: Doc::Map(map) },
                Op::Del { path: "gems/g1".into() },
            ],
        })
    }

    fn events(frame: &[u8], me: &str) -> Result<Vec<Event>, WireError> {
        let mut out = Vec::new();
        scan_frame(frame, me.as_bytes(), &mut |e| out.push(e))?;
        Ok(out)
    }

    #[test]
    fn deltas_are_recognised_with_their_author_and_cid() {
        let f = encode(&delta(Some("p-1"), Some(70_000)));
        assert_eq!(events(&f, "p-1"), Ok(vec![Event::Delta { mine: true, cid: Some(70_000) }]));
        assert_eq!(events(&f, "p-2"), Ok(vec![Event::Delta { mine: false, cid: Some(70_000) }]));
        let server_change = encode(&delta(None, None));
        assert_eq!(events(&server_change, "p-1"), Ok(vec![Event::Delta { mine: false, cid: None }]));
    }

    #[test]
    fn batches_yield_their_messages_in_order() {
        let parts = [
            encode(&delta(Some("p-2"), Some(1))),
            encode(&ServerMsg::Presence {
                room: "r".into(),
                player: "p-3".into(),
                status: PresenceStatus::Joined,
            }),
            encode(&delta(Some("p-1"), Some(9))),
            encode(&ServerMsg::Reject { cid: 10, code: "forbidden".into(), message: "no".into() }),
            encode(&ServerMsg::Ack { cid: 3, seq: 4 }),
        ];
        let f = batch_frame(parts.iter());
        assert_eq!(
            events(&f, "p-1"),
            Ok(vec![
                Event::Delta { mine: false, cid: Some(1) },
                Event::Other,
                Event::Delta { mine: true, cid: Some(9) },
                Event::Reject { cid: 10 },
                Event::Ack { cid: 3 },
            ])
        );
    }

    #[test]
    fn other_messages_are_classified() {
        let joined = ServerMsg::Joined {
            room: "r".into(),
            room_type: "arena".into(),
            player: "p-1".into(),
            session: "s".repeat(300),
            resumed: false,
            cid: 0,
            members: vec![MemberInfo { player: "p-1".into(), status: PresenceStatus::Joined }],
            snapshot: Some(Snapshot {
                epoch: 1,
                seq: 2,
                state: Doc::Bin(vec![0; 70_000]),
                hash: "00".into(),
            }),
        };
        assert_eq!(events(&encode(&joined), "p-1"), Ok(vec![Event::Other]));
        let err = ServerMsg::Error { code: "bad_frame".into(), message: "x".into(), retry_ms: None };
        assert_eq!(events(&encode(&err), "p-1"), Ok(vec![Event::Error]));
    }

    #[test]
    fn broken_frames_are_errors_not_panics() {
        let f = encode(&delta(Some("p-1"), Some(5)));
        for cut in 0..f.len() {
            assert!(events(&f[..cut], "p-1").is_err(), "cut at {cut}");
        }
        let mut trailing = f.to_vec();
        trailing.push(0xc0);
        assert_eq!(events(&trailing, "p-1"), Err(WireError::Trailing));
        assert_eq!(events(&[0x91, 0x01], "p-1"), Err(WireError::Unexpected));
        let deep: Vec<u8> =
            std::iter::once(0x81).chain([0xa1, b'x']).chain([0x91; 200]).chain([0xc0]).collect();
        assert_eq!(events(&deep, "p-1"), Err(WireError::TooDeep));
    }
}
