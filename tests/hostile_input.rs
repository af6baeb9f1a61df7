//! Hostile input (issue #7 point 4): the frame decoder and the op applier meet arbitrary
//! bytes, arbitrary MessagePack values and arbitrary op batches without panicking, refuse
//! exactly what docs/PROTOCOL.md §16 refuses, and never let a player write another player's
//! state. Property tests run a fixed number of cases (printed with `--nocapture`) and assert
//! that every input class was actually generated, so a weakened generator fails the test.
#![cfg(feature = "server")]

use std::time::Instant;

use gamerelay::protocol::{decode_client, encode, ClientMsg, Doc, DocMap, ErrorCode, Op, Path};
use gamerelay::room::txn::{ParsedOp, PathLimits, Txn};
use gamerelay::room::types;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

// ---------------------------------------------------------------------------------------------
// A MessagePack value tree that can also hold what a `Doc` must refuse.

#[derive(Debug, Clone)]
enum V {
    Nil,
    Bool(bool),
    UInt(u64),
    SInt(i64),
    F32(f32),
    F64(f64),
    /// Raw bytes of a str: may be invalid UTF-8.
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Arr(Vec<V>),
    Map(Vec<(V, V)>),
    Ext(i8, Vec<u8>),
}

fn write(v: &V, out: &mut Vec<u8>) {
    use rmp::encode as e;
    match v {
        V::Nil => e::write_nil(out).unwrap(),
        V::Bool(b) => e::write_bool(out, *b).unwrap(),
        V::UInt(n) => {
            e::write_uint(out, *n).unwrap();
        }
        V::SInt(n) => {
            e::write_sint(out, *n).unwrap();
        }
        V::F32(f) => e::write_f32(out, *f).unwrap(),
        V::F64(f) => e::write_f64(out, *f).unwrap(),
        V::Str(b) => {
            e::write_str_len(out, b.len() as u32).unwrap();
            out.extend_from_slice(b);
        }
        V::Bin(b) => e::write_bin(out, b).unwrap(),
        V::Arr(items) => {
            e::write_array_len(out, items.len() as u32).unwrap();
            items.iter().for_each(|i| write(i, out));
        }
        V::Map(entries) => {
            e::write_map_len(out, entries.len() as u32).unwrap();
            for (k, v) in entries {
                write(k, out);
                write(v, out);
            }
        }
        V::Ext(t, data) => {
            e::write_ext_meta(out, data.len() as u32, *t).unwrap();
            out.extend_from_slice(data);
        }
    }
}

const SAFE: u64 = 1 << 53;

/// Whether §16 allows `v` as a value at nesting depth `depth`; `None` when a map repeats a
/// key (the outcome is then not specified by the protocol).
fn valid(v: &V, depth: usize) -> Option<bool> {
    if depth > 64 {
        return Some(false);
    }
    Some(match v {
        V::Nil | V::Bool(_) | V::Bin(_) => true,
        V::UInt(n) => *n <= SAFE,
        V::SInt(n) => n.unsigned_abs() <= SAFE,
        V::F32(f) => f.is_finite(),
        V::F64(f) => f.is_finite(),
        V::Str(b) => std::str::from_utf8(b).is_ok(),
        V::Ext(..) => false,
        V::Arr(items) => {
            let mut all = true;
            for i in items {
                all &= valid(i, depth + 1)?;
            }
            all
        }
        V::Map(entries) => {
            let mut keys = std::collections::HashSet::new();
            let mut all = true;
            for (k, v) in entries {
                match k {
                    V::Str(b) if std::str::from_utf8(b).is_ok() => {
                        if !keys.insert(b.clone()) {
                            return None;
                        }
                    }
                    _ => all = false,
                }
                all &= valid(v, depth + 1)?;
            }
            all
        }
    })
}

fn leaf() -> impl Strategy<Value = V> {
    prop_oneof![
        Just(V::Nil),
        any::<bool>().prop_map(V::Bool),
        prop_oneof![any::<u64>(), (SAFE - 4..=SAFE + 4), 0..300u64].prop_map(V::UInt),
        prop_oneof![any::<i64>(), (-(SAFE as i64) - 4..=-(SAFE as i64) + 4), -300..0i64].prop_map(V::SInt),
        prop_oneof![any::<f32>(), Just(f32::NAN), Just(f32::INFINITY), Just(1.5f32)].prop_map(V::F32),
        prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::NEG_INFINITY), Just(2.0f64), Just(0.25f64)]
            .prop_map(V::F64),
        prop_oneof![
            "[a-z]{0,8}".prop_map(|s| s.into_bytes()),
            prop::collection::vec(any::<u8>(), 0..12),
            Just(vec![0xff, 0xfe]),
            Just(vec![b'a', 0xc3]),
        ]
        .prop_map(V::Str),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(V::Bin),
        (any::<i8>(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(t, d)| V::Ext(t, d)),
    ]
}

fn key() -> impl Strategy<Value = V> {
    prop_oneof![
        6 => "[a-d]{1,3}".prop_map(|s| V::Str(s.into_bytes())),
        1 => leaf(),
    ]
}

fn value() -> impl Strategy<Value = V> {
    leaf().prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(V::Arr),
            prop::collection::vec((key(), inner), 0..6).prop_map(V::Map),
        ]
    })
}

/// `{"t": "ops", "cid": 1, "ops": [{"op": "set", "path": "a/b", "value": v}]}`
fn ops_frame(v: &V) -> Vec<u8> {
    let s = |x: &str| V::Str(x.as_bytes().to_vec());
    let op = V::Map(vec![(s("op"), s("set")), (s("path"), s("a/b")), (s("value"), v.clone())]);
    let frame = V::Map(vec![(s("t"), s("ops")), (s("cid"), V::UInt(1)), (s("ops"), V::Arr(vec![op]))]);
    let mut out = Vec::new();
    write(&frame, &mut out);
    out
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

// ---------------------------------------------------------------------------------------------
// The decoder.

/// Contract: arbitrary bytes never panic the decoder.
#[test]
fn the_decoder_survives_arbitrary_bytes() {
    let (ok, err) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner(20_000)
        .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
            match decode_client(&bytes) {
                Ok(_) => ok.set(ok.get() + 1),
                Err(_) => err.set(err.get() + 1),
            }
            Ok(())
        })
        .unwrap();
    println!("arbitrary bytes: {} cases, {} decoded, {} refused", ok.get() + err.get(), ok.get(), err.get());
    assert_eq!(ok.get() + err.get(), 20_000);
}

/// Contract: valid frames with random mutations (flipped, inserted, removed bytes,
/// truncation) never panic the decoder, and whatever decodes re-encodes and decodes to the
/// same message.
#[test]
fn the_decoder_survives_mutated_valid_frames() {
    let seeds: Vec<Vec<u8>> = [
        ClientMsg::Hello { v: 1, client: Some("c".into()) },
        ClientMsg::Join(gamerelay::protocol::Join {
            room: "r".into(),
            room_type: "doc".into(),
            session: Some("p.abc".into()),
            epoch: Some(1),
            seq: Some(2),
            ..Default::default()
        }),
        ClientMsg::Ops {
            cid: 3,
            ops: vec![
                Op::Set { path: "a/b".into(), value: Doc::Int(5) },
                Op::Merge {
                    path: "m".into(),
                    value: Doc::Map(DocMap::from([("k".into(), Doc::Float(0.5))])),
                },
                Op::Inc { path: "n".into(), by: Doc::Int(1) },
                Op::Del { path: "d".into() },
            ],
        },
        ClientMsg::Msg { to: Some("p".into()), data: Doc::Str("hi".into()) },
        ClientMsg::Ping { id: 9 },
        ClientMsg::Leave,
    ]
    .iter()
    .map(|m| encode(m).to_vec())
    .collect();
    let mutation =
        (0..seeds.len(), prop::collection::vec((0..3u8, any::<usize>(), any::<u8>()), 1..6), any::<usize>());
    let (ok, err) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner(20_000)
        .run(&mutation, |(seed, edits, cut)| {
            let mut bytes = seeds[seed].clone();
            for (kind, at, b) in edits {
                let at = at % (bytes.len() + 1);
                match kind {
                    0 if at < bytes.len() => bytes[at] ^= b | 1,
                    1 => bytes.insert(at, b),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            if cut % 4 == 0 {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            match decode_client(&bytes) {
                Ok(msg) => {
                    ok.set(ok.get() + 1);
                    let again = decode_client(&encode(&msg)).expect("a decoded message re-encodes validly");
                    prop_assert_eq!(again, msg);
                }
                Err(_) => err.set(err.get() + 1),
            }
            Ok(())
        })
        .unwrap();
    println!(
        "mutated valid frames: {} cases, {} decoded, {} refused",
        ok.get() + err.get(),
        ok.get(),
        err.get()
    );
    assert!(ok.get() > 100 && err.get() > 100, "both outcomes are exercised");
}

/// Contract (§16): an op value decodes exactly when it is allowed: no NaN or infinities, no
/// integers beyond ±2^53, string keys only, valid UTF-8, no extension types, at most 64
/// levels of nesting. Whatever decodes re-encodes to the same message.
#[test]
fn op_values_decode_exactly_when_the_protocol_allows_them() {
    let counts = std::cell::RefCell::new([0u32; 4]); // valid, invalid, duplicate keys, arbitrary top level
    runner(8_000)
        .run(&value(), |v| {
            let frame = ops_frame(&v);
            let decoded = decode_client(&frame);
            match valid(&v, 0) {
                Some(expected) => {
                    counts.borrow_mut()[usize::from(!expected)] += 1;
                    prop_assert_eq!(decoded.is_ok(), expected, "value {:?}", v);
                }
                None => counts.borrow_mut()[2] += 1,
            }
            if let Ok(msg) = decoded {
                prop_assert_eq!(decode_client(&encode(&msg)).expect("re-decodes"), msg);
            }
            // The value as a whole frame: never a panic, whatever it is.
            let mut top = Vec::new();
            write(&v, &mut top);
            let _ = decode_client(&top);
            counts.borrow_mut()[3] += 1;
            Ok(())
        })
        .unwrap();
    let [valid_n, invalid_n, dup_n, top_n] = *counts.borrow();
    println!(
        "arbitrary MessagePack values: {top_n} cases: {valid_n} allowed, {invalid_n} refused, {dup_n} with repeated keys (unchecked)"
    );
    assert!(valid_n > 500 && invalid_n > 500, "both classes are generated");
}

fn nested(levels: usize) -> V {
    (0..levels).fold(V::UInt(1), |inner, i| {
        if i % 2 == 0 {
            V::Arr(vec![inner])
        } else {
            V::Map(vec![(V::Str(b"k".to_vec()), inner)])
        }
    })
}

/// Deep nesting in a field the message does not have (serde buffers such fields before it
/// knows the message type): refused beyond the frame depth, and never a stack overflow, even
/// on a thread with a small stack. Before the frame depth limit, 1 000 levels overflowed a
/// 2 MiB stack (a tokio worker's) in a debug build; now half of that is plenty.
#[test]
fn deep_nesting_in_unknown_fields_cannot_overflow_the_stack() {
    let check = || {
        for levels in [100usize, 1_000, 1_023, 100_000] {
            let mut frame = vec![0x82, 0xa1, b't', 0xa4, b'p', b'i', b'n', b'g', 0xa1, b'x'];
            frame.extend(std::iter::repeat_n(0x91u8, levels));
            frame.push(0x01);
            let decoded = decode_client(&frame);
            assert!(decoded.is_err(), "{levels} levels in an unknown field");
        }
        let mut ok = vec![0x82, 0xa1, b't', 0xa4, b'p', b'i', b'n', b'g', 0xa1, b'x'];
        ok.extend(std::iter::repeat_n(0x91u8, 60));
        ok.push(0x01);
        assert!(decode_client(&ok).is_ok(), "moderate nesting in an unknown field is ignored");
    };
    std::thread::Builder::new().stack_size(1024 * 1024).spawn(check).unwrap().join().unwrap();
}

/// The frame depth limit leaves room for the deepest valid frame: a resync in a batch whose
/// state nests the full 64 levels.
#[test]
fn the_deepest_valid_server_frame_still_decodes() {
    use gamerelay::protocol::{decode_server, ServerMsg, Snapshot};
    let deep = (0..63).fold(Doc::Int(1), |inner, _| Doc::Array(vec![inner]));
    let state = Doc::Map(DocMap::from([("a".to_string(), deep)]));
    let hash = state.state_hash();
    let resync = ServerMsg::Resync {
        room: "r".into(),
        snapshot: Snapshot { epoch: 1, seq: 1, state, hash },
        cid: 0,
        members: vec![],
    };
    let batch = ServerMsg::Batch { msgs: vec![resync] };
    assert_eq!(decode_server(&encode(&batch)).expect("the deepest valid frame decodes"), batch);
}

/// The classes named in the issue, one by one.
#[test]
fn deep_nesting_huge_headers_nan_non_string_keys_and_invalid_utf8_are_refused() {
    assert!(decode_client(&ops_frame(&nested(64))).is_ok(), "64 levels are allowed");
    assert!(decode_client(&ops_frame(&nested(65))).is_err(), "65 are not");
    // 100 000 nested arrays: refused without exhausting the stack.
    let mut deep = vec![0x91u8; 100_000];
    deep.push(0x01);
    assert!(decode_client(&ops_frame(&V::Nil)).is_ok());
    let mut frame = ops_frame(&V::Nil);
    let nil_at = frame.iter().rposition(|b| *b == 0xc0).unwrap();
    frame.splice(nil_at..=nil_at, deep);
    assert!(decode_client(&frame).is_err());
    // Headers that announce 4 G entries with a few bytes behind them: refused, no allocation.
    for header in [
        &[0xdf, 0xff, 0xff, 0xff, 0xff][..],
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
        &[0xdb, 0xff, 0xff, 0xff, 0xff],
        &[0xc6, 0xff, 0xff, 0xff, 0xff],
    ] {
        let started = Instant::now();
        assert!(decode_client(header).is_err());
        let mut frame = ops_frame(&V::Nil);
        let nil_at = frame.iter().rposition(|b| *b == 0xc0).unwrap();
        frame.splice(nil_at..=nil_at, header.iter().copied());
        assert!(decode_client(&frame).is_err());
        assert!(started.elapsed().as_millis() < 500);
    }
    // A map of 60 000 entries in one frame decodes (it is within the frame limit that the
    // gateway enforces first), and one with a repeated key does not crash.
    let huge = V::Map((0..60_000).map(|i| (V::Str(format!("k{i}").into_bytes()), V::UInt(i))).collect());
    assert!(decode_client(&ops_frame(&huge)).is_ok());
    let repeated = V::Map(vec![(V::Str(b"a".to_vec()), V::Nil), (V::Str(b"a".to_vec()), V::Bool(true))]);
    let _ = decode_client(&ops_frame(&repeated));
    for bad in [
        V::F64(f64::NAN),
        V::F32(f32::NAN),
        V::F64(f64::INFINITY),
        V::UInt(SAFE + 1),
        V::SInt(-(SAFE as i64) - 1),
        V::Map(vec![(V::UInt(1), V::Nil)]),
        V::Map(vec![(V::Nil, V::Nil)]),
        V::Map(vec![(V::Arr(vec![]), V::Nil)]),
        V::Map(vec![(V::Str(vec![0xff]), V::Nil)]),
        V::Str(vec![0xc3, 0x28]),
        V::Ext(1, vec![0]),
        V::Ext(-1, vec![0, 0, 0, 0]),
    ] {
        assert!(decode_client(&ops_frame(&bad)).is_err(), "{bad:?} must be refused");
    }
    // Invalid UTF-8 where the protocol expects strings: the type tag and a path.
    let s = |x: &[u8]| V::Str(x.to_vec());
    let mut frame = Vec::new();
    write(&V::Map(vec![(s(b"t"), s(b"p\xffng"))]), &mut frame);
    assert!(decode_client(&frame).is_err());
    let mut frame = Vec::new();
    let op = V::Map(vec![(s(b"op"), s(b"del")), (s(b"path"), s(b"a/\xfe"))]);
    write(
        &V::Map(vec![(s(b"t"), s(b"ops")), (s(b"cid"), V::UInt(1)), (s(b"ops"), V::Arr(vec![op]))]),
        &mut frame,
    );
    assert!(decode_client(&frame).is_err());
}

// ---------------------------------------------------------------------------------------------
// The op applier.

const ME: &str = "me";
const OTHER: &str = "other";

fn doc_value() -> impl Strategy<Value = Doc> {
    let leaf = prop_oneof![
        Just(Doc::Nil),
        any::<bool>().prop_map(Doc::Bool),
        (-1000i64..1000).prop_map(Doc::Int),
        (-2000.0f64..2000.0)
            .prop_map(|f| Doc::int(f as i128).ok().filter(|_| f.fract() == 0.0).unwrap_or(Doc::Float(f))),
        "[a-z]{0,40}".prop_map(Doc::Str),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Doc::Array),
            prop::collection::btree_map("[a-z]{1,3}|x|y|name|score", inner, 0..4).prop_map(Doc::Map),
        ]
    })
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => prop::sample::select(vec!["players", ME, OTHER, "x", "y", "name", "score", "gems", "g0", "a", "b"])
            .prop_map(str::to_owned),
        1 => Just("k".repeat(65)),
        1 => Just(String::new()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(segment(), 1..5).prop_map(|s| s.join("/")),
        3 => prop::sample::select(vec!["players/other", "players/other/x", "players/me", "players/me/x", "players/me/y"])
            .prop_map(str::to_owned),
        1 => prop::collection::vec(segment(), 15..20).prop_map(|s| s.join("/")),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Moves as a well-behaved arena client sends them.
        (prop::sample::select(vec!["players/me/x", "players/me/y"]), -100i64..1100)
            .prop_map(|(path, v)| Op::Set { path: path.into(), value: Doc::Int(v) }),
        (path(), doc_value()).prop_map(|(path, value)| Op::Set { path, value }),
        path().prop_map(|path| Op::Del { path }),
        (path(), doc_value()).prop_map(|(path, by)| Op::Inc { path, by }),
        (path(), doc_value()).prop_map(|(path, value)| Op::Merge { path, value }),
    ]
}

/// Contract: for every op batch of player `me`, in `doc` and `arena` rooms: no panic; a
/// refused batch leaves the state (and its tracked size) exactly as it was; an applied one
/// never changes `players/other`, and ops on another player's path are refused.
#[test]
fn the_op_applier_is_atomic_and_never_writes_another_players_state() {
    for room_type in types::ROOM_TYPES {
        let counts = std::cell::RefCell::new([0u32; 4]); // applied, refused at parse, refused, forbidden
        runner(3_000)
            .run(&prop::collection::vec(op(), 1..4), |ops| {
                let mut logic = types::create(room_type, "prop-room").expect("room type");
                let mut doc = Doc::map();
                let mut size = 1usize;
                let now = Instant::now();
                {
                    let mut txn = Txn::new(&mut doc, &mut size, 4096);
                    logic.init(&mut txn).unwrap();
                    logic.on_join(OTHER, &mut txn, now).unwrap();
                    logic.on_join(ME, &mut txn, now).unwrap();
                    if room_type == "doc" {
                        txn.set(&Path::parse("players/other/x").unwrap(), Doc::Int(7)).unwrap();
                    }
                    txn.commit();
                }
                let other_path = Path::parse("players/other").unwrap();
                let other_before = gamerelay::protocol::path::get(&doc, &other_path).cloned();
                prop_assert!(other_before.is_some());
                let (doc_before, size_before) = (doc.clone(), size);
                let touches_other = ops
                    .iter()
                    .any(|op| op.path() == "players/other" || op.path().starts_with("players/other/"));
                let limits = PathLimits { max_depth: 16, max_key_bytes: 64 };
                let parsed: Result<Vec<ParsedOp>, _> =
                    ops.into_iter().map(|op| ParsedOp::parse(op, limits)).collect();
                let Ok(parsed) = parsed else {
                    counts.borrow_mut()[1] += 1;
                    return Ok(());
                };
                let outcome = {
                    let mut txn = Txn::new(&mut doc, &mut size, 4096);
                    let result = logic.apply(ME, parsed, &mut txn, now).and_then(|()| txn.check_size());
                    match result {
                        Ok(()) => Ok(txn.commit()),
                        Err(refusal) => Err(refusal),
                    }
                };
                match outcome {
                    Ok(resolved) => {
                        counts.borrow_mut()[0] += 1;
                        prop_assert!(!touches_other, "a batch touching players/other was applied");
                        for op in &resolved {
                            prop_assert!(!op.path().starts_with("players/other"), "{:?}", op);
                        }
                    }
                    Err(refusal) => {
                        counts.borrow_mut()[2] += 1;
                        if refusal.code == ErrorCode::Forbidden {
                            counts.borrow_mut()[3] += 1;
                        }
                        prop_assert_eq!(&doc, &doc_before, "a refused batch changed the state");
                        prop_assert_eq!(size, size_before, "a refused batch changed the tracked size");
                    }
                }
                prop_assert_eq!(gamerelay::protocol::path::get(&doc, &other_path).cloned(), other_before);
                Ok(())
            })
            .unwrap();
        let [applied, parse_refused, refused, forbidden] = *counts.borrow();
        println!(
            "op batches in {room_type}: {} cases: {applied} applied, {parse_refused} refused at parse (bad path, inc without a number, merge without a map), \
             {refused} refused by the room ({forbidden} forbidden)",
            applied + parse_refused + refused
        );
        assert!(
            applied > 20 && parse_refused > 20 && forbidden > 20,
            "{room_type}: every outcome is exercised"
        );
    }
}
