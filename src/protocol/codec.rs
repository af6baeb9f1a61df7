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

/// Decodes one message from a frame's payload. Trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    let mut rest = frame;
    let value = T::deserialize(&mut rmp_serde::Deserializer::new(&mut rest))?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError(rmp_serde::decode::Error::Syntax("trailing bytes after the message".into())))
    }
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
