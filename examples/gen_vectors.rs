//! Generates `docs/protocol-vectors.json`, the machine-readable test vectors of protocol v1,
//! with the real encoder (`gamerelay::protocol::encode`) and the real state hash
//! (`Doc::canonical_bytes` / `Doc::state_hash`). Uses only the protocol module.
//!
//! ```text
//! cargo run --no-default-features --example gen_vectors > docs/protocol-vectors.json
//! cargo run --no-default-features --example gen_vectors -- --markdown   # dumps for PROTOCOL.md
//! ```
//!
//! `tests/protocol_vectors.rs` checks the vectors file and every dump in `docs/PROTOCOL.md`
//! against the codec, so after changing a message, regenerate both and paste the dumps.

use std::fmt::Write as _;

use gamerelay::protocol::{
    encode, ClientMsg, Delta, Doc, Join, MemberInfo, Op, PresenceStatus, RoomListing, ServerMsg, Snapshot,
};
use rmpv::Value;

const ROOM: &str = "lobby-1";
const ARENA: &str = "arena:eu-1";
const ME: &str = "p-1f3a5b7c9d0e";
const OTHER: &str = "p-9c2e4d6f8a1b";
const NEWCOMER: &str = "p-04b8c2d6e0f1";
const SESSION: &str = "sess-7d1e0a9c3b5f42e8a6c0";
/// 2026-01-01T00:00:00Z in milliseconds.
const TIME: u64 = 1_767_225_600_000;

const REGENERATE: &str = "cargo run --no-default-features --example gen_vectors > docs/protocol-vectors.json";

fn main() {
    let markdown = std::env::args().any(|a| a == "--markdown");
    let messages = messages();
    let hashes = hashes();
    let invalid = invalid();
    if markdown {
        print!("{}", markdown_dumps(&messages, &hashes));
    } else {
        print!("{}", vectors_json(&messages, &hashes, &invalid));
    }
}

// ---------------------------------------------------------------------------------------------
// Message vectors

/// One message vector: built as a Rust value, encoded by the real encoder.
struct MsgVector {
    name: &'static str,
    direction: &'static str,
    description: &'static str,
    /// The encoded message as a MessagePack value tree (maps in wire order), for the JSON form.
    value: Value,
    bytes: Vec<u8>,
}

fn client(name: &'static str, description: &'static str, msg: ClientMsg) -> MsgVector {
    vector(name, "client", description, &msg)
}

fn server(name: &'static str, description: &'static str, msg: ServerMsg) -> MsgVector {
    vector(name, "server", description, &msg)
}

fn vector<T: serde::Serialize>(
    name: &'static str,
    direction: &'static str,
    description: &'static str,
    msg: &T,
) -> MsgVector {
    let bytes = encode(msg).to_vec();
    let value = rmpv::decode::read_value(&mut bytes.as_slice()).expect("the encoder writes MessagePack");
    MsgVector { name, direction, description, value, bytes }
}

/// Builds a `Doc` map from `(key, value)` pairs.
fn map<const N: usize>(entries: [(&str, Doc); N]) -> Doc {
    Doc::Map(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn float(v: f64) -> Doc {
    Doc::number(v).expect("finite")
}

fn set(path: &str, value: Doc) -> Op {
    Op::Set { path: path.to_owned(), value }
}

fn del(path: &str) -> Op {
    Op::Del { path: path.to_owned() }
}

fn snapshot(epoch: u64, seq: u64, state: Doc) -> Snapshot {
    let hash = state.state_hash();
    Snapshot { epoch, seq, state, hash }
}

fn doc_room_state() -> Doc {
    map([
        ("title", Doc::str("Friday lobby")),
        ("round", Doc::Int(3)),
        (
            "players",
            map([
                (ME, map([("name", Doc::str("ann")), ("ready", Doc::Bool(false))])),
                (OTHER, map([("name", Doc::str("bob")), ("ready", Doc::Bool(true))])),
            ]),
        ),
        ("counters", map([("clicks", Doc::Int(7))])),
    ])
}

fn arena_state() -> Doc {
    let gem = |x: i32, y: i32| map([("x", Doc::from(x)), ("y", Doc::from(y))]);
    map([
        ("arena", map([("w", Doc::Int(1000)), ("h", Doc::Int(1000))])),
        (
            "gems",
            map([
                ("g0", gem(120, 640)),
                ("g1", gem(870, 95)),
                ("g2", gem(433, 433)),
                ("g3", gem(15, 980)),
                ("g4", gem(702, 361)),
            ]),
        ),
        ("players", map([(ME, map([("x", float(512.25)), ("y", Doc::Int(260)), ("score", Doc::Int(2))]))])),
    ])
}

fn delta(seq: u64, cid: Option<u64>, by: Option<&str>, ops: Vec<Op>) -> Delta {
    Delta { room: ROOM.into(), epoch: 1, seq, cid, by: by.map(str::to_owned), ops }
}

fn presence(status: PresenceStatus) -> ServerMsg {
    ServerMsg::Presence { room: ROOM.into(), player: OTHER.into(), status }
}

fn messages() -> Vec<MsgVector> {
    let me_path = |rest: &str| format!("players/{ME}/{rest}");
    let mut v = vec![
        client(
            "hello",
            "First frame of every connection.",
            ClientMsg::Hello { v: 1, client: Some("example-client/1.0".into()) },
        ),
        client(
            "hello_minimal",
            "hello without the optional client field.",
            ClientMsg::Hello { v: 1, client: None },
        ),
        client(
            "join_new",
            "Join (creating if needed) a doc room as a new player.",
            ClientMsg::Join(Join { room: ROOM.into(), room_type: "doc".into(), ..Join::default() }),
        ),
        client(
            "join_new_with_token",
            "A new join carrying a join token (a JWT, shortened here; nodes with --auth-key require one).",
            ClientMsg::Join(Join {
                room: ARENA.into(),
                room_type: "arena".into(),
                token: Some("eyJhbGciOi.example.token".into()),
                ..Join::default()
            }),
        ),
        client(
            "join_resume",
            "Resume a session (its second resume attempt), stating the last applied epoch and seq.",
            ClientMsg::Join(Join {
                room: ROOM.into(),
                room_type: "doc".into(),
                token: None,
                session: Some(SESSION.into()),
                epoch: Some(1),
                seq: Some(42),
                attempt: Some(2),
                join_or_create: false,
            }),
        ),
        client(
            "join_or_create",
            "Join a seat in an open listed arena room, or create one; the server chooses the room.",
            ClientMsg::Join(Join { room_type: "arena".into(), join_or_create: true, ..Join::default() }),
        ),
        client(
            "list_rooms",
            "List the listed arena rooms.",
            ClientMsg::ListRooms { id: 3, room_type: "arena".into() },
        ),
        client(
            "ops_set",
            "An op batch with one set.",
            ClientMsg::Ops { cid: 1, ops: vec![set(&me_path("ready"), Doc::Bool(true))] },
        ),
        client(
            "ops_del",
            "An op batch with one del.",
            ClientMsg::Ops { cid: 2, ops: vec![del(&me_path("note"))] },
        ),
        client(
            "ops_inc",
            "An op batch with one inc.",
            ClientMsg::Ops { cid: 3, ops: vec![Op::Inc { path: "counters/clicks".into(), by: Doc::Int(2) }] },
        ),
        client(
            "ops_merge",
            "An op batch with one merge; the nil entry deletes `note`.",
            ClientMsg::Ops {
                cid: 4,
                ops: vec![Op::Merge {
                    path: format!("players/{ME}"),
                    value: map([("name", Doc::str("ann")), ("color", Doc::str("teal")), ("note", Doc::Nil)]),
                }],
            },
        ),
        client(
            "ops_multi",
            "Several ops in one atomic batch, with a float, an array and a binary value.",
            ClientMsg::Ops {
                cid: 5,
                ops: vec![
                    set(
                        "board/cells",
                        Doc::Array(vec![
                            Doc::Array(vec![Doc::Int(0), Doc::Int(1)]),
                            Doc::Array(vec![Doc::Int(2), Doc::Nil]),
                        ]),
                    ),
                    set(&me_path("avatar"), Doc::Bin(vec![0xde, 0xad, 0xbe, 0xef])),
                    Op::Inc { path: "counters/time".into(), by: float(0.25) },
                    del("board/winner"),
                ],
            },
        ),
        client(
            "ops_cid_uint64",
            "A cid above 2^32 is encoded as uint64.",
            ClientMsg::Ops { cid: 1 << 32, ops: vec![set("board/turn", Doc::Int(-1))] },
        ),
        client(
            "msg_room",
            "An ephemeral message to every other member of the room.",
            ClientMsg::Msg { to: None, data: map([("chat", Doc::str("gl hf"))]) },
        ),
        client(
            "msg_to_player",
            "An ephemeral message to one player.",
            ClientMsg::Msg { to: Some(OTHER.into()), data: Doc::str("typing") },
        ),
        client("ping", "Round-trip probe.", ClientMsg::Ping { id: 7 }),
        client("leave", "Leave the room for good.", ClientMsg::Leave),
        server(
            "welcome",
            "Answer to hello.",
            ServerMsg::Welcome { v: 1, node: "node-a".into(), time: TIME, max_frame: 65536, max_ops: 64 },
        ),
        server(
            "joined_new",
            "Answer to a new join: a fresh player id and session, with a snapshot.",
            ServerMsg::Joined {
                room: ROOM.into(),
                room_type: "doc".into(),
                player: ME.into(),
                session: SESSION.into(),
                resumed: false,
                cid: 0,
                members: vec![
                    MemberInfo { player: ME.into(), status: PresenceStatus::Joined },
                    MemberInfo { player: OTHER.into(), status: PresenceStatus::Disconnected },
                ],
                snapshot: Some(snapshot(1, 42, doc_room_state())),
            },
        ),
        server(
            "joined_resume_deltas",
            "Answer to a resume served with deltas: snapshot is nil, the missed deltas follow.",
            ServerMsg::Joined {
                room: ROOM.into(),
                room_type: "doc".into(),
                player: ME.into(),
                session: SESSION.into(),
                resumed: true,
                cid: 4,
                members: vec![
                    MemberInfo { player: ME.into(), status: PresenceStatus::Returned },
                    MemberInfo { player: OTHER.into(), status: PresenceStatus::Joined },
                ],
                snapshot: None,
            },
        ),
        server(
            "joined_arena",
            "Answer to a new join of an arena room; the joiner's spawn is in the snapshot.",
            ServerMsg::Joined {
                room: ARENA.into(),
                room_type: "arena".into(),
                player: ME.into(),
                session: SESSION.into(),
                resumed: false,
                cid: 0,
                members: vec![MemberInfo { player: ME.into(), status: PresenceStatus::Joined }],
                snapshot: Some(snapshot(3, 1200, arena_state())),
            },
        ),
        server(
            "delta_set",
            "The delta of client/ops_set; for its sender it is the ack of cid 1.",
            ServerMsg::Delta(delta(43, Some(1), Some(ME), vec![set(&me_path("ready"), Doc::Bool(true))])),
        ),
        server(
            "delta_del",
            "The delta of client/ops_del.",
            ServerMsg::Delta(delta(44, Some(2), Some(ME), vec![del(&me_path("note"))])),
        ),
        server(
            "delta_inc_resolved",
            "The delta of client/ops_inc: the inc is resolved to a set of the new value.",
            ServerMsg::Delta(delta(45, Some(3), Some(ME), vec![set("counters/clicks", Doc::Int(9))])),
        ),
        server(
            "delta_merge_resolved",
            "The delta of client/ops_merge: one set or del per merged key.",
            ServerMsg::Delta(delta(
                46,
                Some(4),
                Some(ME),
                vec![
                    set(&me_path("color"), Doc::str("teal")),
                    set(&me_path("name"), Doc::str("ann")),
                    del(&me_path("note")),
                ],
            )),
        ),
        server(
            "delta_empty",
            "An applied batch that resolved to no ops still gets a seq and a delta.",
            ServerMsg::Delta(delta(47, Some(6), Some(ME), vec![])),
        ),
        server(
            "delta_server",
            "A change made by the server (arena spawn of a newcomer): cid and by are nil.",
            ServerMsg::Delta(Delta {
                room: ARENA.into(),
                epoch: 3,
                seq: 1201,
                cid: None,
                by: None,
                ops: vec![set(
                    &format!("players/{NEWCOMER}"),
                    map([("x", Doc::Int(100)), ("y", float(900.5)), ("score", Doc::Int(0))]),
                )],
            }),
        ),
        server(
            "delta_arena_clamped",
            "An arena move by a player: the delta carries the clamped position.",
            ServerMsg::Delta(Delta {
                room: ARENA.into(),
                epoch: 3,
                seq: 1202,
                cid: Some(1 << 32),
                by: Some(ME.into()),
                ops: vec![set(&me_path("x"), float(612.25)), set(&me_path("y"), Doc::Int(260))],
            }),
        ),
        server(
            "resync",
            "Replace the mirror with this snapshot (slow consumer caught up).",
            ServerMsg::Resync {
                room: ROOM.into(),
                snapshot: snapshot(1, 60, doc_room_state()),
                cid: 6,
                members: vec![MemberInfo { player: ME.into(), status: PresenceStatus::Joined }],
            },
        ),
        server(
            "ack",
            "Ack of a retried cid that was already applied, with its original seq.",
            ServerMsg::Ack { cid: 3, seq: 45 },
        ),
        server(
            "reject",
            "An op batch was refused; nothing was applied.",
            ServerMsg::Reject {
                cid: 7,
                code: "forbidden".into(),
                message: format!("players/{OTHER} belongs to another player"),
            },
        ),
        server(
            "msg_room",
            "An ephemeral message from a player to the room.",
            ServerMsg::Msg {
                room: ROOM.into(),
                from: Some(OTHER.into()),
                to: None,
                data: map([("chat", Doc::str("gl hf"))]),
            },
        ),
        server(
            "msg_to_player",
            "An ephemeral message from a player to one player.",
            ServerMsg::Msg {
                room: ROOM.into(),
                from: Some(OTHER.into()),
                to: Some(ME.into()),
                data: Doc::str("typing"),
            },
        ),
        server(
            "msg_from_server",
            "An ephemeral message sent by the server: from is nil.",
            ServerMsg::Msg {
                room: ROOM.into(),
                from: None,
                to: None,
                data: map([("notice", Doc::str("round starts in 10 s"))]),
            },
        ),
        server("presence_joined", "Another player entered the room.", presence(PresenceStatus::Joined)),
        server(
            "presence_disconnected",
            "Another player's connection was lost; its grace runs.",
            presence(PresenceStatus::Disconnected),
        ),
        server(
            "presence_returned",
            "Another player resumed within the grace.",
            presence(PresenceStatus::Returned),
        ),
        server("presence_left", "Another player is gone for good.", presence(PresenceStatus::Left)),
        server("pong", "Answer to client/ping.", ServerMsg::Pong { id: 7, time: TIME + 1234 }),
        server(
            "rooms",
            "Answer to client/list_rooms: one listed arena room with a free seat.",
            ServerMsg::Rooms {
                id: 3,
                room_type: "arena".into(),
                rooms: vec![RoomListing {
                    room: "arena-0a1b2c3d4e5f".into(),
                    room_type: "arena".into(),
                    members: 3,
                    max_players: 8,
                    metadata: map([("map", Doc::str("dunes"))]),
                    created: TIME,
                }],
            },
        ),
        server(
            "error",
            "A request failed (here: ops before joining a room).",
            ServerMsg::Error {
                code: "not_joined".into(),
                message: "join a room first".into(),
                retry_ms: None,
            },
        ),
        server(
            "error_overloaded",
            "A join shed by an overloaded node, with a retry hint.",
            ServerMsg::Error {
                code: "overloaded".into(),
                message: "this node is past its load limit; retry in 3200 ms, preferably elsewhere".into(),
                retry_ms: Some(3200),
            },
        ),
        server(
            "batch",
            "Several messages in one frame, to be handled in order.",
            ServerMsg::Batch {
                msgs: vec![
                    ServerMsg::Delta(delta(48, Some(8), Some(OTHER), vec![set("board/turn", Doc::Int(2))])),
                    presence(PresenceStatus::Disconnected),
                    ServerMsg::Ack { cid: 5, seq: 41 },
                ],
            },
        ),
    ];
    // Stable order: client messages first, then server messages (already so, but keep it true).
    v.sort_by_key(|m| m.direction != "client");
    v
}

// ---------------------------------------------------------------------------------------------
// Hash vectors

struct HashVector {
    name: &'static str,
    description: &'static str,
    /// The state as JSON text (binary as `{"$bin": "hex"}`).
    state_json: String,
    /// A non-canonical MessagePack encoding of the same state, when it differs.
    input_hex: Option<String>,
    canonical: Vec<u8>,
    hash: String,
}

fn hash_case(name: &'static str, description: &'static str, state_json: String) -> HashVector {
    let json: serde_json::Value = serde_json::from_str(&state_json).expect("valid JSON");
    let doc: Doc = rmpv::ext::from_value(json_to_value(&json)).expect("a valid state");
    let canonical = doc.canonical_bytes();
    // What the encoder puts on the wire (e.g. in a snapshot) for this state.
    let wire = encode(&doc).to_vec();
    let input_hex = (wire != canonical).then(|| hex::encode(&wire));
    HashVector { name, description, state_json, input_hex, hash: doc.state_hash(), canonical }
}

fn hashes() -> Vec<HashVector> {
    let s31 = "a".repeat(31);
    let s32 = "b".repeat(32);
    let s300 = "0123456789".repeat(30);
    let key40 = "k".repeat(40);
    let many = (0..16).map(|i| format!("\"k{i:02}\": {i}")).collect::<Vec<_>>().join(", ");
    let array16 = (0..16).map(|i| (i * 10).to_string()).collect::<Vec<_>>().join(", ");
    let mut v = vec![
        hash_case(
            "worked_example",
            "The worked example of PROTOCOL.md: key order, a float, a negative int, a bool.",
            r#"{"round": 3, "players": {"p-1": {"y": -200, "x": 2.5}}, "ok": true}"#.into(),
        ),
        hash_case("empty_map", "The empty state.", "{}".into()),
        hash_case(
            "key_order",
            "Keys sort by encoded bytes: shorter keys first, then bytewise (so 'B' < 'a' < 'b').",
            r#"{"b": 1, "aa": 2, "a": 3, "B": 4, "ab": 5, "ba": 6, "abc": 7, "é": 8, "z": 9}"#.into(),
        ),
        hash_case(
            "nested_maps",
            "Key order applies at every level of nesting.",
            r#"{"players": {"p-2": {"y": 1, "x": 2, "name": "bo"}, "p-10": {"x": 0}}, "gems": {}}"#
                .into(),
        ),
        hash_case(
            "ints_non_negative",
            "Non-negative ints in their shortest form: fixint, uint8, uint16, uint32, uint64.",
            r#"{"a": 0, "b": 127, "c": 128, "d": 255, "e": 256, "f": 65535, "g": 65536, "h": 4294967295, "i": 4294967296, "j": 9007199254740992}"#.into(),
        ),
        hash_case(
            "ints_negative",
            "Negative ints in their shortest form: fixint, int8, int16, int32, int64.",
            r#"{"a": -1, "b": -32, "c": -33, "d": -128, "e": -129, "f": -32768, "g": -32769, "h": -2147483648, "i": -2147483649, "j": -9007199254740992}"#.into(),
        ),
        hash_case(
            "floats",
            "Non-integral finite floats, always float64; integral floats above 2^53 stay floats.",
            r#"{"half": 0.5, "neg": -2.25, "pi": 3.141592653589793, "tiny": 1e-7, "huge": 1e20}"#.into(),
        ),
        hash_case(
            "integral_floats_become_ints",
            "Integral floats within ±2^53 are ints: 3.0 -> 3, -0.0 -> 0, 1e15 -> 1000000000000000.",
            r#"{"x": 3.0, "y": -0.0, "z": 1e15, "w": -128.0}"#.into(),
        ),
        hash_case(
            "strings",
            "fixstr up to 31 bytes, str8 from 32, str16 from 256; lengths count UTF-8 bytes.",
            format!(
                r#"{{"empty": "", "s31": "{s31}", "s32": "{s32}", "s300": "{s300}", "utf8": "héllo ✓"}}"#
            ),
        ),
        hash_case(
            "long_key",
            "A 40-byte key (str8 header) sorts after every fixstr key.",
            format!(r#"{{"{key40}": 1, "zzzz": 2}}"#),
        ),
        hash_case(
            "arrays",
            "Arrays keep their order; fixarray up to 15 items, array16 from 16.",
            format!(
                r#"{{"empty": [], "mixed": [1, "two", [3.5, null], {{"k": false}}], "sixteen": [{array16}]}}"#
            ),
        ),
        hash_case("map16", "A map of 16 entries has a map16 header.", format!("{{{many}}}")),
        hash_case(
            "binary_and_nil",
            "Binary values (bin8) and nil.",
            r#"{"blob": {"$bin": "00ff10"}, "none": null, "yes": true, "no": false}"#.into(),
        ),
    ];
    v.push(non_canonical_input_case());
    v
}

/// A state written on the wire in a deliberately non-canonical way (keys out of order, an
/// int in a wider form than needed, an integral float, a float32): decoding and re-encoding
/// canonically must give the canonical form.
fn non_canonical_input_case() -> HashVector {
    let mut input = Vec::new();
    // Writes into a Vec cannot fail.
    rmp::encode::write_map_len(&mut input, 4).unwrap();
    rmp::encode::write_str(&mut input, "score").unwrap();
    rmp::encode::write_u32(&mut input, 5).unwrap(); // uint32 form of 5
    rmp::encode::write_str(&mut input, "x").unwrap();
    rmp::encode::write_f64(&mut input, 3.0).unwrap(); // integral float64
    rmp::encode::write_str(&mut input, "v").unwrap();
    rmp::encode::write_f32(&mut input, 1.5).unwrap(); // float32
    rmp::encode::write_str(&mut input, "big").unwrap();
    input.extend_from_slice(&[0xdf, 0, 0, 0, 0]); // map32 header for an empty map
    let doc: Doc = gamerelay::protocol::codec::decode(&input).expect("a valid state");
    HashVector {
        name: "non_canonical_input",
        description: "A non-canonical encoding (uint32 for 5, float64 3.0, float32 1.5, map32 \
                      header, keys unsorted) decodes to the state in state_json.",
        state_json: r#"{"score": 5, "x": 3, "v": 1.5, "big": {}}"#.into(),
        input_hex: Some(hex::encode(&input)),
        canonical: doc.canonical_bytes(),
        hash: doc.state_hash(),
    }
}

/// JSON to a MessagePack value tree: integers stay integers, other numbers are float64,
/// `{"$bin": "hex"}` is a binary value.
fn json_to_value(j: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::F64(n.as_f64().expect("a JSON number"))
            }
        }
        J::String(s) => Value::from(s.as_str()),
        J::Array(items) => Value::Array(items.iter().map(json_to_value).collect()),
        J::Object(m) => match (m.len(), m.get("$bin")) {
            (1, Some(J::String(h))) => Value::Binary(hex::decode(h).expect("hex")),
            _ => Value::Map(m.iter().map(|(k, v)| (Value::from(k.as_str()), json_to_value(v))).collect()),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid frames

struct InvalidVector {
    name: &'static str,
    direction: &'static str,
    reason: &'static str,
    bytes: Vec<u8>,
}

fn s(x: &str) -> Value {
    Value::from(x)
}

fn vmap(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
}

fn write(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("writes into a Vec cannot fail");
    out
}

/// An `ops` frame whose single `set` carries `value`.
fn ops_with_value(value: Value) -> Vec<u8> {
    write(&vmap(vec![
        ("t", s("ops")),
        ("cid", Value::from(1)),
        ("ops", Value::Array(vec![vmap(vec![("op", s("set")), ("path", s("a")), ("value", value)])])),
    ]))
}

/// An `ops` frame whose op value is the raw MessagePack `value` (which rmpv cannot write:
/// it writes a str that is not UTF-8 as bin).
fn ops_with_raw_value(value: &[u8]) -> Vec<u8> {
    let mut frame = ops_with_value(Value::Nil);
    // The nil value is the frame's last byte.
    frame.pop();
    frame.extend_from_slice(value);
    frame
}

fn invalid() -> Vec<InvalidVector> {
    let inv = |name, direction, reason, bytes| InvalidVector { name, direction, reason, bytes };
    let hello = encode(&ClientMsg::Hello { v: 1, client: Some("x".into()) }).to_vec();
    let ping = encode(&ClientMsg::Ping { id: 1 }).to_vec();
    let pong = encode(&ServerMsg::Pong { id: 1, time: TIME }).to_vec();
    let nested = (0..65).fold(Value::Nil, |inner, _| Value::Array(vec![inner]));
    let resync_with_state = |state: Value| {
        write(&vmap(vec![
            ("t", s("resync")),
            ("room", s(ROOM)),
            (
                "snapshot",
                vmap(vec![
                    ("epoch", Value::from(1)),
                    ("seq", Value::from(1)),
                    ("state", state),
                    ("hash", s("00")),
                ]),
            ),
            ("cid", Value::from(0)),
        ]))
    };
    vec![
        inv("empty_frame", "client", "a frame must hold one MessagePack value", vec![]),
        inv(
            "truncated",
            "client",
            "the frame ends inside the message (a valid hello without its last byte)",
            hello[..hello.len() - 1].to_vec(),
        ),
        inv(
            "trailing_bytes",
            "client",
            "bytes after the message (a valid ping followed by nil)",
            [ping.as_slice(), &[0xc0]].concat(),
        ),
        inv(
            "unknown_type",
            "client",
            "unknown message type t",
            write(&vmap(vec![("t", s("shout")), ("text", s("hi"))])),
        ),
        inv("missing_type", "client", "no t field", write(&vmap(vec![("v", Value::from(1))]))),
        inv(
            "missing_field",
            "client",
            "ops without its required cid",
            write(&vmap(vec![("t", s("ops")), ("ops", Value::Array(vec![]))])),
        ),
        inv(
            "negative_cid",
            "client",
            "cid is an unsigned integer",
            write(&vmap(vec![("t", s("ops")), ("cid", Value::from(-1)), ("ops", Value::Array(vec![]))])),
        ),
        inv(
            "float_cid",
            "client",
            "cid is an integer; a float (even 1.0) is refused",
            write(&vmap(vec![("t", s("ops")), ("cid", Value::F64(1.0)), ("ops", Value::Array(vec![]))])),
        ),
        inv(
            "unknown_op",
            "client",
            "unknown op kind",
            write(&vmap(vec![
                ("t", s("ops")),
                ("cid", Value::from(1)),
                (
                    "ops",
                    Value::Array(vec![vmap(vec![
                        ("op", s("mul")),
                        ("path", s("a")),
                        ("by", Value::from(2)),
                    ])]),
                ),
            ])),
        ),
        inv("nan_in_op", "client", "NaN is not a state value", ops_with_value(Value::F64(f64::NAN))),
        inv(
            "infinity_in_op",
            "client",
            "infinities are not state values",
            ops_with_value(Value::F64(f64::INFINITY)),
        ),
        inv(
            "int_above_2_53",
            "client",
            "integers must lie within ±2^53",
            ops_with_value(Value::from((1u64 << 53) + 1)),
        ),
        inv(
            "int_below_minus_2_53",
            "client",
            "integers must lie within ±2^53",
            ops_with_value(Value::from(-(1i64 << 53) - 1)),
        ),
        inv(
            "non_string_key_in_value",
            "client",
            "map keys in state values must be strings ({1: 2})",
            ops_with_value(Value::Map(vec![(Value::from(1), Value::from(2))])),
        ),
        inv(
            "ext_in_value",
            "client",
            "extension types are not state values",
            ops_with_value(Value::Ext(1, vec![0])),
        ),
        inv(
            "value_too_deep",
            "client",
            "a value nests more than 64 levels below its top (65 nested arrays)",
            write(&vmap(vec![("t", s("msg")), ("data", nested)])),
        ),
        inv(
            "invalid_utf8_in_value",
            "client",
            "a str that is not valid UTF-8 (c3 28) is refused, not taken for binary",
            ops_with_raw_value(&[0xa2, 0xc3, 0x28]),
        ),
        inv(
            "invalid_utf8_key_in_value",
            "client",
            "a map key that is not valid UTF-8 (ff)",
            ops_with_raw_value(&[0x81, 0xa1, 0xff, 0x01]),
        ),
        inv(
            "nesting_in_unknown_field",
            "client",
            "more than 72 levels of nesting anywhere in a frame (81 arrays), even in a field the message does not have",
            write(&vmap(vec![
                ("t", s("ping")),
                ("junk", (0..81).fold(Value::Nil, |inner, _| Value::Array(vec![inner]))),
            ])),
        ),
        inv(
            "duplicate_field",
            "client",
            "a field appears twice in a message map",
            write(&vmap(vec![("t", s("ping")), ("id", Value::from(1)), ("id", Value::from(2))])),
        ),
        inv(
            "non_string_key_in_state",
            "server",
            "map keys in the snapshot state must be strings",
            resync_with_state(Value::Map(vec![(Value::from(1), s("x"))])),
        ),
        inv(
            "nan_in_state",
            "server",
            "NaN in the snapshot state",
            resync_with_state(vmap(vec![("x", Value::F64(f64::NAN))])),
        ),
        inv(
            "unknown_server_type",
            "server",
            "unknown message type t",
            write(&vmap(vec![("t", s("kick")), ("room", s(ROOM))])),
        ),
        inv(
            "server_truncated",
            "server",
            "the frame ends inside the message (a valid pong without its last byte)",
            pong[..pong.len() - 1].to_vec(),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Output: JSON

fn vectors_json(messages: &[MsgVector], hashes: &[HashVector], invalid: &[InvalidVector]) -> String {
    let q = |x: &str| serde_json::to_string(x).expect("strings serialize");
    let mut out = String::new();
    out.push_str("{\n");
    let _ = writeln!(out, "  \"version\": 1,");
    let _ = writeln!(out, "  \"generated_by\": {},", q(REGENERATE));
    let _ = writeln!(
        out,
        "  \"notes\": {},",
        q("hex: lowercase hex of the MessagePack frame as the reference encoder writes it. \
           json: the same message, maps in wire order; binary values are {\"$bin\": \"hex\"}; \
           JSON integers are MessagePack integers, other JSON numbers are float64. \
           Decoders must accept any field order and any valid integer width; see docs/PROTOCOL.md.")
    );
    out.push_str("  \"messages\": [\n");
    for (i, m) in messages.iter().enumerate() {
        out.push_str("    {\n");
        let _ = writeln!(out, "      \"name\": {},", q(m.name));
        let _ = writeln!(out, "      \"direction\": {},", q(m.direction));
        let _ = writeln!(out, "      \"description\": {},", q(m.description));
        let _ = writeln!(out, "      \"json\": {},", json_of(&m.value));
        let _ = writeln!(out, "      \"hex\": {}", q(&hex::encode(&m.bytes)));
        out.push_str(if i + 1 < messages.len() { "    },\n" } else { "    }\n" });
    }
    out.push_str("  ],\n  \"hashes\": [\n");
    for (i, h) in hashes.iter().enumerate() {
        out.push_str("    {\n");
        let _ = writeln!(out, "      \"name\": {},", q(h.name));
        let _ = writeln!(out, "      \"description\": {},", q(h.description));
        let _ = writeln!(out, "      \"state_json\": {},", h.state_json);
        if let Some(input) = &h.input_hex {
            let _ = writeln!(out, "      \"input_hex\": {},", q(input));
        }
        let _ = writeln!(out, "      \"canonical_hex\": {},", q(&hex::encode(&h.canonical)));
        let _ = writeln!(out, "      \"hash\": {}", q(&h.hash));
        out.push_str(if i + 1 < hashes.len() { "    },\n" } else { "    }\n" });
    }
    out.push_str("  ],\n  \"invalid\": [\n");
    for (i, v) in invalid.iter().enumerate() {
        out.push_str("    {\n");
        let _ = writeln!(out, "      \"name\": {},", q(v.name));
        let _ = writeln!(out, "      \"direction\": {},", q(v.direction));
        let _ = writeln!(out, "      \"reason\": {},", q(v.reason));
        let _ = writeln!(out, "      \"hex\": {}", q(&hex::encode(&v.bytes)));
        out.push_str(if i + 1 < invalid.len() { "    },\n" } else { "    }\n" });
    }
    out.push_str("  ]\n}\n");
    out
}

/// Compact JSON of a value tree, keeping map order.
fn json_of(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &Value, out: &mut String) {
    let q = |x: &str| serde_json::to_string(x).expect("strings serialize");
    match v {
        Value::Nil => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(i) => out.push_str(&i.to_string()),
        Value::F32(f) => out.push_str(&serde_json::to_string(&f64::from(*f)).expect("finite")),
        Value::F64(f) => out.push_str(&serde_json::to_string(f).expect("finite")),
        Value::String(x) => out.push_str(&q(x.as_str().expect("UTF-8"))),
        Value::Binary(b) => {
            let _ = write!(out, "{{\"$bin\": {}}}", q(&hex::encode(b)));
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&q(k.as_str().expect("string keys")));
                out.push_str(": ");
                write_json(val, out);
            }
            out.push('}');
        }
        Value::Ext(..) => unreachable!("protocol messages hold no extension values"),
    }
}

// ---------------------------------------------------------------------------------------------
// Output: annotated dumps for PROTOCOL.md

/// Vectors shown in PROTOCOL.md with a byte-by-byte annotation; the others get plain dumps.
const ANNOTATED: [&str; 5] = [
    "client/hello",
    "client/ops_merge",
    "server/delta_merge_resolved",
    "server/delta_server",
    "server/joined_resume_deltas",
];
const PLAIN: [&str; 12] = [
    "client/join_new",
    "client/join_resume",
    "client/join_or_create",
    "client/list_rooms",
    "server/rooms",
    "client/ops_inc",
    "client/ping",
    "server/welcome",
    "server/ack",
    "server/reject",
    "server/error_overloaded",
    "server/batch",
];

fn markdown_dumps(messages: &[MsgVector], hashes: &[HashVector]) -> String {
    let mut out = String::new();
    for m in messages {
        let id = format!("{}/{}", m.direction, m.name);
        if ANNOTATED.contains(&id.as_str()) {
            let _ = writeln!(out, "```text\n# vector {id}\n# {}", json_of(&m.value));
            out.push_str(&annotate(&m.bytes));
            out.push_str("```\n\n");
        } else if PLAIN.contains(&id.as_str()) {
            let _ = writeln!(out, "```text\n# vector {id}\n# {}", json_of(&m.value));
            out.push_str(&plain_dump(&m.bytes));
            out.push_str("```\n\n");
        }
    }
    for h in hashes.iter().filter(|h| h.name == "worked_example") {
        let _ = writeln!(out, "```text\n# canonical {}\n# {}", h.name, h.state_json);
        out.push_str(&annotate(&h.canonical));
        let _ = writeln!(out, "# sha256 = {}", h.hash);
        out.push_str("```\n\n");
    }
    out
}

fn plain_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(16) {
        let line: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&line.join(" "));
        out.push('\n');
    }
    out
}

/// One line of an annotated dump: nesting depth, bytes, meaning.
struct Line {
    depth: usize,
    bytes: Vec<u8>,
    what: String,
}

/// A small MessagePack disassembler: one line per token, indented by nesting.
fn annotate(bytes: &[u8]) -> String {
    let mut lines = Vec::new();
    let mut at = 0;
    disassemble(bytes, &mut at, 0, "", &mut lines);
    assert_eq!(at, bytes.len(), "annotated the whole frame");
    const WRAP: usize = 12;
    let width = lines.iter().map(|l| 2 * l.depth + 3 * l.bytes.len().min(WRAP)).max().unwrap_or(0);
    let mut out = String::new();
    for l in &lines {
        let chunks: Vec<&[u8]> = l.bytes.chunks(WRAP).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let hexes: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let text = format!("{}{}", "  ".repeat(l.depth), hexes.join(" "));
            if i == 0 {
                let _ = writeln!(out, "{text:<width$}  # {}", l.what);
            } else {
                let _ = writeln!(out, "{text}");
            }
        }
    }
    out
}

/// `1 entry`, `3 entries`, `2 bytes`.
fn count(n: usize, noun: &str) -> String {
    match (n, noun) {
        (1, _) => format!("1 {noun}"),
        (_, "entry") => format!("{n} entries"),
        _ => format!("{n} {noun}s"),
    }
}

fn disassemble(b: &[u8], at: &mut usize, depth: usize, role: &str, lines: &mut Vec<Line>) {
    let start = *at;
    let m = b[start];
    let be = |from: usize, n: usize| -> u64 {
        b[from..from + n].iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
    };
    let mut push = |end: usize, what: String, at: &mut usize| {
        lines.push(Line { depth, bytes: b[start..end].to_vec(), what: format!("{role}{what}") });
        *at = end;
    };
    match m {
        0x00..=0x7f => push(start + 1, format!("{m} (positive fixint)"), at),
        0xe0..=0xff => push(start + 1, format!("{} (negative fixint)", m as i8), at),
        0xc0 => push(start + 1, "nil".into(), at),
        0xc2 => push(start + 1, "false".into(), at),
        0xc3 => push(start + 1, "true".into(), at),
        0xcc..=0xcf => {
            let n = 1 << (m - 0xcc);
            push(start + 1 + n, format!("{} (uint{})", be(start + 1, n), 8 * n), at)
        }
        0xd0..=0xd3 => {
            let n = 1 << (m - 0xd0);
            let raw = be(start + 1, n);
            let shift = 64 - 8 * n;
            let v = ((raw << shift) as i64) >> shift;
            push(start + 1 + n, format!("{v} (int{})", 8 * n), at)
        }
        0xca => {
            let v = f32::from_bits(be(start + 1, 4) as u32);
            push(start + 5, format!("{v} (float32)"), at)
        }
        0xcb => {
            let v = f64::from_bits(be(start + 1, 8));
            push(start + 9, format!("{v} (float64)"), at)
        }
        0xa0..=0xbf | 0xd9..=0xdb => {
            let (hdr, len, kind) = match m {
                0xa0..=0xbf => (1, usize::from(m & 0x1f), "fixstr"),
                0xd9 => (2, be(start + 1, 1) as usize, "str8"),
                0xda => (3, be(start + 1, 2) as usize, "str16"),
                _ => (5, be(start + 1, 4) as usize, "str32"),
            };
            let text = std::str::from_utf8(&b[start + hdr..start + hdr + len]).expect("UTF-8");
            let shown = if text.chars().count() > 24 {
                format!("{}…", text.chars().take(24).collect::<String>())
            } else {
                text.to_owned()
            };
            push(start + hdr + len, format!("{shown:?} ({kind}, {})", count(len, "byte")), at)
        }
        0xc4..=0xc6 => {
            let n = 1 << (m - 0xc4);
            let len = be(start + 1, n) as usize;
            push(start + 1 + n + len, format!("binary, {} (bin{})", count(len, "byte"), 8 * n), at)
        }
        0x90..=0x9f | 0xdc | 0xdd | 0x80..=0x8f | 0xde | 0xdf => {
            let is_map = matches!(m, 0x80..=0x8f | 0xde | 0xdf);
            let (hdr, len, kind) = match m {
                0x80..=0x8f => (1, usize::from(m & 0x0f), "fixmap"),
                0x90..=0x9f => (1, usize::from(m & 0x0f), "fixarray"),
                0xdc | 0xde => (3, be(start + 1, 2) as usize, if is_map { "map16" } else { "array16" }),
                _ => (5, be(start + 1, 4) as usize, if is_map { "map32" } else { "array32" }),
            };
            let noun = if is_map { "entry" } else { "item" };
            push(start + hdr, format!("{kind}, {}", count(len, noun)), at);
            for _ in 0..len {
                if is_map {
                    disassemble(b, at, depth + 1, "key ", lines);
                }
                disassemble(b, at, depth + 1, "", lines);
            }
        }
        other => panic!("unexpected marker {other:#04x} in a protocol frame"),
    }
}
