//! Encoding and decoding of frames: one MessagePack value per binary WebSocket frame.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use super::messages::{ClientMsg, ServerMsg};

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("invalid frame: {0}")]
pub struct DecodeError(#[from] rmp_serde::decode::Error);

/// Encodes a message as a MessagePack map (struct fields by name).
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    // Encoding into a Vec fails only for types serde cannot express in MessagePack;
    // protocol types are all expressible, which the vector tests check.
    match rmp_serde::to_vec_named(msg) {
        Ok(v) => Bytes::from(v),
        Err(e) => unreachable!("protocol types always encode: {e}"),
    }
}

/// Deepest nesting of arrays and maps anywhere in a frame: a value's 64 levels
/// ([`MAX_DOC_DEPTH`](super::doc::MAX_DOC_DEPTH)) plus the message around it (at most 5:
/// batch, msgs, resync, snapshot, state), as the TypeScript client's strict decoder has it. Bounds the decoder's recursion: serde buffers
/// the fields of internally tagged messages recursively (unknown fields included), and at
/// rmp-serde's default of 1024 levels a 1 KB frame of nested arrays overflowed a 2 MiB
/// thread stack in debug builds.
pub const MAX_FRAME_DEPTH: usize = super::doc::MAX_DOC_DEPTH + 8;

/// Decodes one message from a frame's payload. Trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    check_strings(frame).map_err(|problem| DecodeError(rmp_serde::decode::Error::Syntax(problem.into())))?;
    let mut rest = frame;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MAX_FRAME_DEPTH);
    let value = T::deserialize(&mut de)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError(rmp_serde::decode::Error::Syntax("trailing bytes after the message".into())))
    }
}

/// Walks a frame's MessagePack without recursion and refuses a `str` that is not valid
/// UTF-8 (rmp-serde would hand it to serde as bytes, so a `Doc` would silently take it for
/// binary) and containers that announce more items than the frame has bytes left.
fn check_strings(frame: &[u8]) -> Result<(), &'static str> {
    fn be(bytes: &[u8]) -> usize {
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    }
    let mut pos = 0usize;
    // Items still to read; each needs at least one byte.
    let mut pending: usize = 1;
    while pending > 0 {
        pending -= 1;
        let marker = *frame.get(pos).ok_or("truncated frame")?;
        pos += 1;
        let take = |pos: &mut usize, n: usize| -> Result<usize, &'static str> {
            let bytes = frame.get(*pos..*pos + n).ok_or("truncated frame")?;
            *pos += n;
            Ok(be(bytes))
        };
        // (payload bytes to skip, whether the payload is a str)
        let (skip, is_str) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, false),
            0x80..=0x8f => {
                pending += 2 * usize::from(marker & 0x0f);
                (0, false)
            }
            0x90..=0x9f => {
                pending += usize::from(marker & 0x0f);
                (0, false)
            }
            0xa0..=0xbf => (usize::from(marker & 0x1f), true),
            0xd9 => (take(&mut pos, 1)?, true),
            0xda => (take(&mut pos, 2)?, true),
            0xdb => (take(&mut pos, 4)?, true),
            0xc4 => (take(&mut pos, 1)?, false),
            0xc5 => (take(&mut pos, 2)?, false),
            0xc6 => (take(&mut pos, 4)?, false),
            0xc7 => (take(&mut pos, 1)? + 1, false),
            0xc8 => (take(&mut pos, 2)? + 1, false),
            0xc9 => (take(&mut pos, 4)?.saturating_add(1), false),
            0xca | 0xce | 0xd2 => (4, false),
            0xcb | 0xcf | 0xd3 => (8, false),
            0xcc | 0xd0 => (1, false),
            0xcd | 0xd1 => (2, false),
            0xd4 => (2, false),
            0xd5 => (3, false),
            0xd6 => (5, false),
            0xd7 => (9, false),
            0xd8 => (17, false),
            0xdc => {
                pending = pending.saturating_add(take(&mut pos, 2)?);
                (0, false)
            }
            0xdd => {
                pending = pending.saturating_add(take(&mut pos, 4)?);
                (0, false)
            }
            0xde => {
                pending = pending.saturating_add(take(&mut pos, 2)?.saturating_mul(2));
                (0, false)
            }
            0xdf => {
                pending = pending.saturating_add(take(&mut pos, 4)?.saturating_mul(2));
                (0, false)
            }
            0xc1 => return Err("reserved MessagePack marker 0xc1"),
        };
        let payload = frame.get(pos..pos.saturating_add(skip)).ok_or("truncated frame")?;
        if is_str && std::str::from_utf8(payload).is_err() {
            return Err("a string is not valid UTF-8");
        }
        pos += skip;
        if pending > frame.len() - pos {
            return Err("a container announces more items than the frame holds");
        }
    }
    Ok(())
}

/// Decodes a client frame.
pub fn decode_client(frame: &[u8]) -> Result<ClientMsg, DecodeError> {
    decode(frame)
}

/// Decodes a server frame.
pub fn decode_server(frame: &[u8]) -> Result<ServerMsg, DecodeError> {
    decode(frame)
}

/// Builds a `batch` frame from already-encoded server messages without re-encoding them:
/// `{"t": "batch", "msgs": [m1, m2, ...]}`. Lets a room encode each delta once and share it.
pub fn batch_frame<'a>(encoded: impl ExactSizeIterator<Item = &'a Bytes>) -> Bytes {
    let parts: Vec<&Bytes> = encoded.collect();
    let body: usize = parts.iter().map(|b| b.len()).sum();
    let mut out = Vec::with_capacity(16 + body);
    // Writes into a Vec are infallible.
    let _ = rmp::encode::write_map_len(&mut out, 2);
    let _ = rmp::encode::write_str(&mut out, "t");
    let _ = rmp::encode::write_str(&mut out, "batch");
    let _ = rmp::encode::write_str(&mut out, "msgs");
    let _ = rmp::encode::write_array_len(&mut out, parts.len() as u32);
    for p in parts {
        out.extend_from_slice(p);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Delta, Doc, Op};

    #[test]
    fn batch_frame_decodes_as_a_batch_of_the_parts() {
        let d = |seq| {
            ServerMsg::Delta(Delta {
                room: "r".into(),
                epoch: 1,
                seq,
                cid: Some(seq),
                by: Some("p".into()),
                ops: vec![Op::Set { path: "a".into(), value: Doc::Int(seq as i64) }],
            })
        };
        let parts = [encode(&d(1)), encode(&d(2))];
        let frame = batch_frame(parts.iter());
        assert_eq!(
            decode_server(&frame).map_err(|e| e.to_string()),
            Ok(ServerMsg::Batch { msgs: vec![d(1), d(2)] })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode(&ClientMsg::Ping { id: 1 }).to_vec();
        frame.push(0xc0);
        assert!(decode_client(&frame).is_err());
    }
}
