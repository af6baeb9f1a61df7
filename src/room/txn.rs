//! A transaction over a room's state: room types read and edit the document through it,
//! it records the resolved ops that become the delta, and it rolls every edit back unless
//! committed. No I/O.

use crate::protocol::doc::MAX_DOC_DEPTH;
use crate::protocol::path::{self, Path, PathError, Undo};
use crate::protocol::{Doc, DocMap, ErrorCode, Op};

/// Why a request (an op batch, a join) was refused: a stable code plus a human-readable message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }
    pub fn forbidden(path: &Path) -> Refusal {
        Refusal::new(ErrorCode::Forbidden, format!("you may not write {path}"))
    }
    pub fn bad_value(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::BadValue, message)
    }
}

impl From<PathError> for Refusal {
    fn from(e: PathError) -> Refusal {
        if matches!(e, PathError::TooDeep { .. } | PathError::KeyTooLong { .. }) {
            crate::limits::hit("path");
        }
        Refusal::new(ErrorCode::BadPath, e.to_string())
    }
}

/// Limits on paths, taken from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct PathLimits {
    pub max_depth: usize,
    pub max_key_bytes: usize,
}

/// A client op with its path parsed and checked against the limits.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedOp {
    Set { path: Path, value: Doc },
    Del { path: Path },
    Inc { path: Path, by: Doc },
    Merge { path: Path, value: DocMap },
}

impl ParsedOp {
    /// Parses one wire op.
    pub fn parse(op: Op, limits: PathLimits) -> Result<ParsedOp, Refusal> {
        let parse = |p: &str| Path::parse_with(p, limits.max_depth, limits.max_key_bytes);
        // The state as a whole must stay decodable by every client (MAX_DOC_DEPTH levels).
        let fits = |path: &Path, value_depth: usize| -> Result<(), Refusal> {
            if path.depth() + value_depth > MAX_DOC_DEPTH {
                return Err(Refusal::bad_value(format!(
                    "value at {path} would nest the state deeper than {MAX_DOC_DEPTH} levels"
                )));
            }
            Ok(())
        };
        Ok(match op {
            Op::Set { path, value } => {
                let path = parse(&path)?;
                fits(&path, value.depth())?;
                ParsedOp::Set { path, value }
            }
            Op::Del { path } => ParsedOp::Del { path: parse(&path)? },
            Op::Inc { path, by } => {
                if by.as_f64().is_none() {
                    return Err(Refusal::bad_value(format!("inc of {path}: `by` must be a number")));
                }
                ParsedOp::Inc { path: parse(&path)?, by }
            }
            Op::Merge { path, value } => match value {
                Doc::Map(map) => {
                    let path = parse(&path)?;
                    fits(&path, 1 + map.values().map(Doc::depth).max().unwrap_or(0))?;
                    if path.depth() >= limits.max_depth {
                        return Err(
                            PathError::TooDeep { depth: path.depth() + 1, max: limits.max_depth }.into()
                        );
                    }
                    for key in map.keys() {
                        if key.is_empty() || key.contains('/') || key.len() > limits.max_key_bytes {
                            return Err(Refusal::new(
                                ErrorCode::BadPath,
                                format!("merge into {path}: key {key:?} is not a valid path segment"),
                            ));
                        }
                    }
                    ParsedOp::Merge { path, value: map }
                }
                _ => return Err(Refusal::bad_value(format!("merge into {path}: value must be a map"))),
            },
        })
    }

    /// The path the op targets.
    pub fn path(&self) -> &Path {
        match self {
            ParsedOp::Set { path, .. }
            | ParsedOp::Del { path }
            | ParsedOp::Inc { path, .. }
            | ParsedOp::Merge { path, .. } => path,
        }
    }
}

/// Edits to one room's document, undone on drop unless [`Txn::commit`] is called.
pub struct Txn<'a> {
    doc: &'a mut Doc,
    /// Approximate encoded size of the whole document, kept up to date by edits.
    size: &'a mut usize,
    size_before: usize,
    max_size: usize,
    undo: Vec<Undo>,
    resolved: Vec<Op>,
    committed: bool,
}

fn entry_size(key: &str, value: &Doc) -> usize {
    // key header (1-3 bytes) + key + value; approximate by one header byte.
    1 + key.len() + value.encoded_len()
}

impl<'a> Txn<'a> {
    /// Starts a transaction over `doc`, whose encoded size is `size`.
    pub fn new(doc: &'a mut Doc, size: &'a mut usize, max_size: usize) -> Txn<'a> {
        let size_before = *size;
        Txn { doc, size, size_before, max_size, undo: Vec::new(), resolved: Vec::new(), committed: false }
    }

    /// Reads the current (in-transaction) value at `path`.
    pub fn get(&self, path: &Path) -> Option<&Doc> {
        path::get(self.doc, path)
    }

    /// The whole document as of now.
    pub fn doc(&self) -> &Doc {
        self.doc
    }

    /// Sets `value` at `path` and records a resolved `set`.
    pub fn set(&mut self, path: &Path, value: Doc) -> Result<(), Refusal> {
        let added = entry_size(path.leaf(), &value);
        let record = Op::Set { path: path.as_str().to_owned(), value: value.clone() };
        let undo = path::set(self.doc, path, value)?;
        let Undo::Restore { path: undo_path, old } = &undo;
        *self.size = match old {
            Some(old) => (*self.size + added).saturating_sub(entry_size(path.leaf(), old)),
            // A new key; each parent map it created adds a key and a map header too.
            None => *self.size + added + 2 * (path.depth() - undo_path.depth()),
        };
        self.undo.push(undo);
        self.resolved.push(record);
        Ok(())
    }

    /// Deletes `path` (absent is fine) and records a resolved `del` if something was removed.
    pub fn del(&mut self, path: &Path) -> Result<(), Refusal> {
        if let Some(old) = path::del(self.doc, path)? {
            *self.size = self.size.saturating_sub(entry_size(path.leaf(), &old));
            self.undo.push(Undo::Restore { path: path.clone(), old: Some(old) });
            self.resolved.push(Op::Del { path: path.as_str().to_owned() });
        }
        Ok(())
    }

    /// Applies a client op with the generic semantics of `docs/PROTOCOL.md`
    /// (no ownership checks: those belong to the room type).
    pub fn apply(&mut self, op: ParsedOp) -> Result<(), Refusal> {
        match op {
            ParsedOp::Set { path, value } => self.set(&path, value),
            ParsedOp::Del { path } => self.del(&path),
            ParsedOp::Inc { path, by } => {
                let next = add(self.get(&path), &by)
                    .map_err(|m| Refusal::bad_value(format!("inc of {path}: {m}")))?;
                self.set(&path, next)
            }
            ParsedOp::Merge { path, value } => {
                match self.get(&path) {
                    None | Some(Doc::Map(_)) => {}
                    Some(_) => {
                        return Err(Refusal::bad_value(format!("merge into {path}: target is not a map")))
                    }
                }
                if value.is_empty() && self.get(&path).is_none() {
                    return self.set(&path, Doc::map());
                }
                for (key, v) in value {
                    let child = Path::from_segments(path.segments().chain(std::iter::once(key.as_str())))?;
                    match v {
                        Doc::Nil => self.del(&child)?,
                        v => self.set(&child, v)?,
                    }
                }
                Ok(())
            }
        }
    }

    /// Refuses the transaction if the document grew past the size limit.
    pub fn check_size(&self) -> Result<(), Refusal> {
        if *self.size > self.max_size && *self.size > self.size_before {
            return Err(Refusal::new(
                ErrorCode::StateTooLarge,
                format!("room state would be about {} bytes, more than {}", self.size, self.max_size),
            ));
        }
        Ok(())
    }

    /// Keeps the edits and returns the resolved ops for the delta.
    pub fn commit(mut self) -> Vec<Op> {
        self.committed = true;
        std::mem::take(&mut self.resolved)
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if !self.committed {
            while let Some(u) = self.undo.pop() {
                path::undo(self.doc, u);
            }
            *self.size = self.size_before;
        }
    }
}

/// `current + by` for `inc`: absent counts as 0; int + int stays an int.
fn add(current: Option<&Doc>, by: &Doc) -> Result<Doc, String> {
    let current = current.unwrap_or(&Doc::Int(0));
    match (current, by) {
        (Doc::Int(a), Doc::Int(b)) => Doc::int(*a as i128 + *b as i128).map_err(|e| e.to_string()),
        (a, b) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => Doc::number(a + b).map_err(|e| e.to_string()),
            _ => Err("the current value is not a number".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PathLimits = PathLimits { max_depth: 8, max_key_bytes: 16 };

    fn op(op: Op) -> ParsedOp {
        ParsedOp::parse(op, LIMITS).unwrap()
    }

    #[test]
    fn a_dropped_transaction_leaves_no_trace() {
        let mut doc = Doc::map();
        let mut size = doc.encoded_len();
        {
            let mut t = Txn::new(&mut doc, &mut size, 1 << 20);
            t.apply(op(Op::Set { path: "a/b".into(), value: Doc::Int(1) })).unwrap();
            t.apply(op(Op::Inc { path: "n".into(), by: Doc::Int(2) })).unwrap();
        }
        assert_eq!(doc, Doc::map());
        assert_eq!(size, 1);
    }

    #[test]
    fn inc_and_merge_resolve_to_set_and_del() {
        let mut doc = Doc::map();
        let mut size = 1;
        let mut t = Txn::new(&mut doc, &mut size, 1 << 20);
        t.apply(op(Op::Inc { path: "n".into(), by: Doc::Int(2) })).unwrap();
        t.apply(op(Op::Inc { path: "n".into(), by: Doc::Float(0.5) })).unwrap();
        t.apply(op(Op::Set { path: "m/k".into(), value: Doc::Int(1) })).unwrap();
        let mut patch = DocMap::new();
        patch.insert("k".into(), Doc::Nil);
        patch.insert("j".into(), Doc::Bool(true));
        t.apply(op(Op::Merge { path: "m".into(), value: Doc::Map(patch) })).unwrap();
        let ops = t.commit();
        assert_eq!(
            ops,
            vec![
                Op::Set { path: "n".into(), value: Doc::Int(2) },
                Op::Set { path: "n".into(), value: Doc::Float(2.5) },
                Op::Set { path: "m/k".into(), value: Doc::Int(1) },
                Op::Set { path: "m/j".into(), value: Doc::Bool(true) },
                Op::Del { path: "m/k".into() },
            ]
        );
        // Replaying the resolved ops on an empty mirror gives the same document.
        let mut mirror = Doc::map();
        for o in &ops {
            crate::protocol::apply_resolved(&mut mirror, o).unwrap();
        }
        assert_eq!(mirror, doc);
    }

    #[test]
    fn inc_of_a_string_is_refused() {
        let mut doc = Doc::map();
        let mut size = 1;
        let mut t = Txn::new(&mut doc, &mut size, 1 << 20);
        t.apply(op(Op::Set { path: "s".into(), value: Doc::str("x") })).unwrap();
        let e = t.apply(op(Op::Inc { path: "s".into(), by: Doc::Int(1) })).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadValue);
    }

    #[test]
    fn values_that_would_make_the_state_too_deep_are_refused() {
        let mut deep = Doc::Int(1);
        for _ in 0..MAX_DOC_DEPTH {
            deep = Doc::Array(vec![deep]);
        }
        let e = ParsedOp::parse(Op::Set { path: "a".into(), value: deep }, LIMITS).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadValue);
    }

    #[test]
    fn growing_past_the_size_limit_is_refused() {
        let mut doc = Doc::map();
        let mut size = 1;
        let mut t = Txn::new(&mut doc, &mut size, 100);
        t.apply(op(Op::Set { path: "big".into(), value: Doc::Bin(vec![0; 200]) })).unwrap();
        assert_eq!(t.check_size().unwrap_err().code, ErrorCode::StateTooLarge);
    }
}
