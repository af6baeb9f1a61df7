//! State paths (`players/p-1f3a/x`) and the two primitive edits every mirror applies:
//! set and delete at a path. Shared by the server's rooms and every client's mirror, so
//! both sides edit documents by the same rules.

use std::fmt;

use super::doc::{Doc, DocMap};
use super::messages::Op;

/// Default deepest path (number of segments).
pub const DEFAULT_MAX_DEPTH: usize = 16;
/// Default longest path segment, in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 64;

/// A parsed, validated path: one or more non-empty `/`-separated segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    raw: String,
    /// Byte offset where each segment ends in `raw`.
    ends: Vec<usize>,
}

/// Why a path or an edit at a path is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("path has {depth} segments, more than {max}")]
    TooDeep { depth: usize, max: usize },
    #[error("path segment of {len} bytes is longer than {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("path {0:?} crosses a value that is not a map")]
    NotAMap(String),
    #[error("the root of the state must stay a map")]
    Root,
    #[error("deltas carry only resolved `set` and `del` ops, not `{0}`")]
    NotResolved(&'static str),
}

impl Path {
    /// Parses `raw` with the default limits.
    pub fn parse(raw: &str) -> Result<Path, PathError> {
        Path::parse_with(raw, DEFAULT_MAX_DEPTH, DEFAULT_MAX_KEY_LEN)
    }

    /// Parses `raw`, refusing more than `max_depth` segments or segments over `max_key_len`.
    pub fn parse_with(raw: &str, max_depth: usize, max_key_len: usize) -> Result<Path, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        let mut ends = Vec::with_capacity(4);
        let mut offset = 0;
        for seg in raw.split('/') {
            if seg.is_empty() {
                return Err(PathError::EmptySegment(raw.to_owned()));
            }
            if seg.len() > max_key_len {
                return Err(PathError::KeyTooLong { len: seg.len(), max: max_key_len });
            }
            offset += seg.len();
            ends.push(offset);
            offset += 1;
            if ends.len() > max_depth {
                return Err(PathError::TooDeep { depth: raw.split('/').count(), max: max_depth });
            }
        }
        Ok(Path { raw: raw.to_owned(), ends })
    }

    /// Builds a path from segments (each must be non-empty and free of `/`).
    pub fn from_segments<'a>(segments: impl IntoIterator<Item = &'a str>) -> Result<Path, PathError> {
        let raw = segments.into_iter().collect::<Vec<_>>().join("/");
        Path::parse_with(&raw, usize::MAX, usize::MAX)
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Number of segments.
    pub fn depth(&self) -> usize {
        self.ends.len()
    }

    /// Segment `i` (0-based).
    pub fn segment(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        &self.raw[start..self.ends[i]]
    }

    /// All segments in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.depth()).map(|i| self.segment(i))
    }

    /// The first `n` segments as a path string.
    pub fn prefix(&self, n: usize) -> &str {
        &self.raw[..self.ends[n - 1]]
    }

    /// The last segment.
    pub fn leaf(&self) -> &str {
        self.segment(self.depth() - 1)
    }

    /// Whether this path equals `other` or lies under it.
    pub fn starts_with(&self, other: &Path) -> bool {
        other.depth() <= self.depth() && self.prefix(other.depth()) == other.as_str()
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// How to take back one [`set`].
#[derive(Debug, Clone, PartialEq)]
pub enum Undo {
    /// Put `old` back at `path` (`None`: delete it).
    Restore { path: Path, old: Option<Doc> },
}

fn root_map(root: &mut Doc) -> Result<&mut DocMap, PathError> {
    match root {
        Doc::Map(m) => Ok(m),
        _ => Err(PathError::Root),
    }
}

/// Sets `value` at `path`, creating missing parent maps. Returns how to undo it exactly
/// (including removing the parents it created).
pub fn set(root: &mut Doc, path: &Path, value: Doc) -> Result<Undo, PathError> {
    let mut map = root_map(root)?;
    let mut created_at: Option<usize> = None;
    for i in 0..path.depth() - 1 {
        let seg = path.segment(i);
        if !map.contains_key(seg) {
            created_at.get_or_insert(i);
            map.insert(seg.to_owned(), Doc::map());
        }
        map = match map.get_mut(seg) {
            Some(Doc::Map(m)) => m,
            _ => return Err(PathError::NotAMap(path.prefix(i + 1).to_owned())),
        };
    }
    let old = map.insert(path.leaf().to_owned(), value);
    Ok(match created_at {
        Some(i) => Undo::Restore { path: prefix_path(path, i + 1), old: None },
        None => Undo::Restore { path: path.clone(), old },
    })
}

fn prefix_path(path: &Path, n: usize) -> Path {
    Path { raw: path.prefix(n).to_owned(), ends: path.ends[..n].to_vec() }
}

/// Deletes the key at `path`. Absent keys (or absent parents) are not an error.
/// Returns the removed value.
pub fn del(root: &mut Doc, path: &Path) -> Result<Option<Doc>, PathError> {
    let mut map = root_map(root)?;
    for i in 0..path.depth() - 1 {
        map = match map.get_mut(path.segment(i)) {
            Some(Doc::Map(m)) => m,
            Some(_) => return Err(PathError::NotAMap(path.prefix(i + 1).to_owned())),
            None => return Ok(None),
        };
    }
    Ok(map.remove(path.leaf()))
}

/// The value at `path`, if any.
pub fn get<'a>(root: &'a Doc, path: &Path) -> Option<&'a Doc> {
    root.get(path.segments())
}

/// Applies an [`Undo`].
pub fn undo(root: &mut Doc, undo: Undo) {
    let Undo::Restore { path, old } = undo;
    // The path was valid when the edit was made, so restoring it cannot fail.
    let _ = match old {
        Some(v) => set(root, &path, v).map(|_| ()),
        None => del(root, &path).map(|_| ()),
    };
}

/// Applies one resolved op of a delta (`set` or `del`) to a mirror.
pub fn apply_resolved(root: &mut Doc, op: &Op) -> Result<(), PathError> {
    match op {
        Op::Set { path, value } => {
            set(root, &Path::parse_with(path, usize::MAX, usize::MAX)?, value.clone()).map(|_| ())
        }
        Op::Del { path } => del(root, &Path::parse_with(path, usize::MAX, usize::MAX)?).map(|_| ()),
        Op::Inc { .. } => Err(PathError::NotResolved("inc")),
        Op::Merge { .. } => Err(PathError::NotResolved("merge")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_segments_and_refuses_bad_paths() {
        let p = Path::parse("players/p1/x").unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), ["players", "p1", "x"]);
        assert_eq!(p.prefix(2), "players/p1");
        assert_eq!(Path::parse(""), Err(PathError::Empty));
        assert!(matches!(Path::parse("a//b"), Err(PathError::EmptySegment(_))));
        assert!(matches!(Path::parse("/a"), Err(PathError::EmptySegment(_))));
        assert!(matches!(Path::parse_with("a/b/c", 2, 8), Err(PathError::TooDeep { .. })));
        assert!(matches!(Path::parse_with("abcdefghi", 2, 8), Err(PathError::KeyTooLong { .. })));
    }

    #[test]
    fn set_then_undo_restores_the_document_exactly() {
        let mut doc = Doc::map();
        let before = doc.clone();
        let u = set(&mut doc, &Path::parse("a/b/c").unwrap(), Doc::Int(1)).unwrap();
        assert_eq!(doc.get(["a", "b", "c"]), Some(&Doc::Int(1)));
        undo(&mut doc, u);
        assert_eq!(doc, before);

        set(&mut doc, &Path::parse("a/b").unwrap(), Doc::Int(1)).unwrap();
        let before = doc.clone();
        let u = set(&mut doc, &Path::parse("a/b").unwrap(), Doc::Int(2)).unwrap();
        undo(&mut doc, u);
        assert_eq!(doc, before);
    }

    #[test]
    fn set_through_a_non_map_fails() {
        let mut doc = Doc::map();
        set(&mut doc, &Path::parse("a").unwrap(), Doc::Int(1)).unwrap();
        assert!(matches!(
            set(&mut doc, &Path::parse("a/b").unwrap(), Doc::Int(2)),
            Err(PathError::NotAMap(_))
        ));
    }

    #[test]
    fn del_of_absent_key_is_a_no_op() {
        let mut doc = Doc::map();
        assert_eq!(del(&mut doc, &Path::parse("x/y").unwrap()), Ok(None));
    }
}
