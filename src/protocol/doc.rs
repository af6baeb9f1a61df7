//! `Doc`: the value type of room state, with the invariants every client can rely on.
//!
//! A room's state is a MessagePack document. To make the state hash computable in any
//! language (JavaScript included, whose numbers are all f64), a `Doc` only holds:
//! nil, booleans, integers within ±2^53, finite f64 floats that are *not* integral
//! (an integral float such as `3.0` is stored as the integer `3`), UTF-8 strings,
//! binary blobs, arrays, and maps whose keys are strings.
//!
//! Decoding a `Doc` from MessagePack enforces these rules and fails on anything else
//! (NaN, infinities, huge integers, non-string map keys, extension types), so invalid
//! values never reach a room. This module owns the canonical encoding and the state hash;
//! it does no I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use sha2::{Digest, Sha256};

/// Largest magnitude of an integer a `Doc` may hold: 2^53, exactly representable as f64.
pub const MAX_SAFE_INT: i64 = 1 << 53;

/// A map of a `Doc`: string keys in a sorted map (lookups are O(log n)).
pub type DocMap = BTreeMap<String, Doc>;

/// One value of room state. See the module documentation for the invariants.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Doc {
    #[default]
    Nil,
    Bool(bool),
    /// Always within `-MAX_SAFE_INT..=MAX_SAFE_INT`.
    Int(i64),
    /// Always finite and never integral within the safe range (those become `Int`).
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Doc>),
    Map(DocMap),
}

/// Why a value cannot be part of a `Doc`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocError {
    #[error("integer {0} is outside ±2^53")]
    IntOutOfRange(i128),
    #[error("float {0} is not finite")]
    NotFinite(f64),
    #[error("map keys must be strings")]
    NonStringKey,
    #[error("extension types are not allowed in state")]
    Extension,
    #[error("value nests deeper than {0} levels")]
    TooDeep(usize),
}

/// Deepest nesting a decoded `Doc` may have; guards the decoder's stack against hostile input.
pub const MAX_DOC_DEPTH: usize = 64;

impl Doc {
    /// An integer, checked against the safe range.
    pub fn int(v: i128) -> Result<Doc, DocError> {
        if (-(MAX_SAFE_INT as i128)..=MAX_SAFE_INT as i128).contains(&v) {
            Ok(Doc::Int(v as i64))
        } else {
            Err(DocError::IntOutOfRange(v))
        }
    }

    /// A number from an f64: integral values within the safe range become `Int`.
    pub fn number(v: f64) -> Result<Doc, DocError> {
        if !v.is_finite() {
            return Err(DocError::NotFinite(v));
        }
        if v.fract() == 0.0 && v.abs() <= MAX_SAFE_INT as f64 {
            return Ok(Doc::Int(v as i64));
        }
        Ok(Doc::Float(v))
    }

    /// A string value.
    pub fn str(s: impl Into<String>) -> Doc {
        Doc::Str(s.into())
    }

    /// An empty map.
    pub fn map() -> Doc {
        Doc::Map(DocMap::new())
    }

    /// The numeric value, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Doc::Int(i) => Some(*i as f64),
            Doc::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The integer value, if this is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Doc::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The string value, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Doc::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The map, if this is a map.
    pub fn as_map(&self) -> Option<&DocMap> {
        match self {
            Doc::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Follows `segments` through nested maps.
    pub fn get<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Option<&Doc> {
        let mut at = self;
        for seg in segments {
            at = at.as_map()?.get(seg)?;
        }
        Some(at)
    }

    /// Nesting depth: 0 for a scalar, 1 + the deepest element for arrays and maps.
    pub fn depth(&self) -> usize {
        match self {
            Doc::Array(items) => 1 + items.iter().map(Doc::depth).max().unwrap_or(0),
            Doc::Map(map) => 1 + map.values().map(Doc::depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// The canonical MessagePack encoding (see `docs/PROTOCOL.md`, "State hash"):
    /// map keys sorted by their encoded bytes (shorter keys first, then bytewise),
    /// integers in their shortest form, floats as f64.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_canonical(&mut out);
        out
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail, so the results below are infallible.
        match self {
            Doc::Nil => out.push(0xc0),
            Doc::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Doc::Int(i) => {
                if *i >= 0 {
                    let _ = rmp::encode::write_uint(out, *i as u64);
                } else {
                    let _ = rmp::encode::write_sint(out, *i);
                }
            }
            Doc::Float(f) => {
                let _ = rmp::encode::write_f64(out, *f);
            }
            Doc::Str(s) => {
                let _ = rmp::encode::write_str(out, s);
            }
            Doc::Bin(b) => {
                let _ = rmp::encode::write_bin(out, b);
            }
            Doc::Array(items) => {
                let _ = rmp::encode::write_array_len(out, items.len() as u32);
                for item in items {
                    item.write_canonical(out);
                }
            }
            Doc::Map(map) => {
                let _ = rmp::encode::write_map_len(out, map.len() as u32);
                // Encoded-bytes order of string keys == (byte length, bytes) order,
                // because the MessagePack str header grows with the length.
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
                for key in keys {
                    let _ = rmp::encode::write_str(out, key);
                    map[key].write_canonical(out);
                }
            }
        }
    }

    /// The state hash: lowercase hex SHA-256 of the canonical encoding.
    pub fn state_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_bytes()))
    }

    /// Size in bytes of the canonical encoding, without allocating it.
    pub fn encoded_len(&self) -> usize {
        fn str_header(len: usize) -> usize {
            match len {
                0..=31 => 1,
                32..=255 => 2,
                256..=65535 => 3,
                _ => 5,
            }
        }
        fn coll_header(len: usize) -> usize {
            match len {
                0..=15 => 1,
                16..=65535 => 3,
                _ => 5,
            }
        }
        match self {
            Doc::Nil | Doc::Bool(_) => 1,
            Doc::Int(i) => {
                let m = i.unsigned_abs();
                match (i.is_negative(), m) {
                    (false, 0..=127) | (true, 1..=32) => 1,
                    (false, 128..=255) | (true, 33..=128) => 2,
                    (false, 256..=65535) | (true, 129..=32768) => 3,
                    (false, 65536..=0xffff_ffff) | (true, 32769..=0x8000_0000) => 5,
                    _ => 9,
                }
            }
            Doc::Float(_) => 9,
            Doc::Str(s) => str_header(s.len()) + s.len(),
            Doc::Bin(b) => {
                let h = match b.len() {
                    0..=255 => 2,
                    256..=65535 => 3,
                    _ => 5,
                };
                h + b.len()
            }
            Doc::Array(items) => coll_header(items.len()) + items.iter().map(Doc::encoded_len).sum::<usize>(),
            Doc::Map(map) => {
                coll_header(map.len())
                    + map.iter().map(|(k, v)| str_header(k.len()) + k.len() + v.encoded_len()).sum::<usize>()
            }
        }
    }
}

impl fmt::Display for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Doc::Nil => write!(f, "nil"),
            Doc::Bool(b) => write!(f, "{b}"),
            Doc::Int(i) => write!(f, "{i}"),
            Doc::Float(x) => write!(f, "{x}"),
            Doc::Str(s) => write!(f, "{s:?}"),
            Doc::Bin(b) => write!(f, "bin({} bytes)", b.len()),
            Doc::Array(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
            Doc::Map(map) => {
                write!(f, "{{")?;
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k:?}: {v}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

impl From<bool> for Doc {
    fn from(v: bool) -> Doc {
        Doc::Bool(v)
    }
}

impl From<&str> for Doc {
    fn from(v: &str) -> Doc {
        Doc::Str(v.to_owned())
    }
}

impl From<String> for Doc {
    fn from(v: String) -> Doc {
        Doc::Str(v)
    }
}

impl From<i32> for Doc {
    fn from(v: i32) -> Doc {
        Doc::Int(v as i64)
    }
}

impl From<u32> for Doc {
    fn from(v: u32) -> Doc {
        Doc::Int(v as i64)
    }
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Nil => s.serialize_unit(),
            Doc::Bool(b) => s.serialize_bool(*b),
            Doc::Int(i) => s.serialize_i64(*i),
            Doc::Float(f) => s.serialize_f64(*f),
            Doc::Str(v) => s.serialize_str(v),
            Doc::Bin(b) => s.serialize_bytes(b),
            Doc::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Doc::Map(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(DocVisitor { depth: 0 })
    }
}

/// Visits one level of a `Doc`, counting depth so hostile nesting cannot blow the stack.
struct DocVisitor {
    depth: usize,
}

/// Deserializes a nested `Doc` with the parent's depth + 1.
struct Nested(usize);

impl<'de> de::DeserializeSeed<'de> for Nested {
    type Value = Doc;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Doc, D::Error> {
        if self.0 > MAX_DOC_DEPTH {
            return Err(de::Error::custom(DocError::TooDeep(MAX_DOC_DEPTH)));
        }
        d.deserialize_any(DocVisitor { depth: self.0 })
    }
}

/// A map key: must be a string.
struct Key;

impl<'de> de::DeserializeSeed<'de> for Key {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string map key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<String, E> {
                Err(E::custom(DocError::NonStringKey))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<String, E> {
                Err(E::custom(DocError::NonStringKey))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a state value (nil, bool, number, string, binary, array or string-keyed map)")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Nil)
    }
    fn visit_none<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Nil)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Doc, E> {
        Ok(Doc::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Doc, E> {
        Doc::int(v as i128).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Doc, E> {
        Doc::int(v as i128).map_err(E::custom)
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Doc, E> {
        Doc::number(v as f64).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Doc, E> {
        Doc::number(v).map_err(E::custom)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Doc, E> {
        Ok(Doc::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Doc, E> {
        Ok(Doc::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Doc, E> {
        Ok(Doc::Bin(v.to_vec()))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Doc, E> {
        Ok(Doc::Bin(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(Nested(self.depth + 1))? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut out = DocMap::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let value = map.next_value_seed(Nested(self.depth + 1))?;
            out.insert(key, value);
        }
        Ok(Doc::Map(out))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, _: D) -> Result<Doc, D::Error> {
        Err(de::Error::custom(DocError::Extension))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Doc, A::Error> {
        Err(de::Error::custom(DocError::Extension))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<Doc, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }

    #[test]
    fn integral_floats_become_integers() {
        assert_eq!(Doc::number(3.0), Ok(Doc::Int(3)));
        assert_eq!(Doc::number(-0.0), Ok(Doc::Int(0)));
        assert_eq!(Doc::number(2.5), Ok(Doc::Float(2.5)));
        // f64 3.0 on the wire decodes to the integer 3.
        assert_eq!(decode(&[0xcb, 0x40, 0x08, 0, 0, 0, 0, 0, 0]).ok(), Some(Doc::Int(3)));
    }

    #[test]
    fn refuses_nan_huge_ints_and_non_string_keys() {
        assert!(decode(&[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1]).is_err()); // NaN
        assert!(decode(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[0x81, 0x01, 0x02]).is_err()); // {1: 2}
        assert!(decode(&[0xd4, 0x01, 0x00]).is_err()); // fixext1
    }

    #[test]
    fn refuses_hostile_nesting() {
        let mut bytes = vec![0x91; 10_000];
        bytes.push(0xc0);
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn canonical_map_order_is_shortest_key_first() {
        let mut m = DocMap::new();
        m.insert("aa".into(), Doc::Int(1));
        m.insert("b".into(), Doc::Int(2));
        let bytes = Doc::Map(m).canonical_bytes();
        assert_eq!(bytes, vec![0x82, 0xa1, b'b', 0x02, 0xa2, b'a', b'a', 0x01]);
    }

    #[test]
    fn canonical_integers_are_shortest() {
        assert_eq!(Doc::Int(5).canonical_bytes(), vec![0x05]);
        assert_eq!(Doc::Int(-1).canonical_bytes(), vec![0xff]);
        assert_eq!(Doc::Int(200).canonical_bytes(), vec![0xcc, 200]);
        assert_eq!(Doc::Int(-200).canonical_bytes(), vec![0xd1, 0xff, 0x38]);
    }

    #[test]
    fn encoded_len_matches_canonical_bytes() {
        let samples = [
            Doc::Int(0),
            Doc::Int(127),
            Doc::Int(128),
            Doc::Int(-32),
            Doc::Int(-33),
            Doc::Int(-129),
            Doc::Int(70_000),
            Doc::Int(-70_000),
            Doc::Int(MAX_SAFE_INT),
            Doc::Int(-MAX_SAFE_INT),
            Doc::Float(1.5),
            Doc::str("x".repeat(40)),
            Doc::Bin(vec![1; 300]),
            Doc::Array(vec![Doc::Nil; 20]),
        ];
        for doc in samples {
            assert_eq!(doc.encoded_len(), doc.canonical_bytes().len(), "{doc}");
        }
    }
}
