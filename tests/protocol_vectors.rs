//! Checks `docs/protocol-vectors.json` and the examples in `docs/PROTOCOL.md` against the
//! protocol module: every message vector decodes to the message its JSON describes and
//! re-encodes to the same bytes, every hash vector hashes as stated, every invalid frame is
//! refused, and the doc's dumps and code tables match the code.
//!
//! Uses only `gamerelay::protocol`, so it runs with `--no-default-features`. Regenerate the
//! vectors with `cargo run --no-default-features --example gen_vectors > docs/protocol-vectors.json`.

use std::collections::BTreeSet;

use gamerelay::protocol::{
    batch_frame, codec, decode_client, decode_server, encode, should_reconnect, ClientMsg, CloseCode, Doc,
    ErrorCode, Op, ServerMsg,
};
use rmpv::Value;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

fn read_doc(name: &str) -> String {
    let path = format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn vectors() -> Json {
    serde_json::from_str(&read_doc("protocol-vectors.json")).expect("protocol-vectors.json is JSON")
}

fn list<'a>(v: &'a Json, key: &str) -> &'a Vec<Json> {
    v[key].as_array().unwrap_or_else(|| panic!("`{key}` is an array"))
}

fn field<'a>(v: &'a Json, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("`{key}` is a string in {v}"))
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

/// JSON to a MessagePack value tree: JSON integers are integers, other numbers float64,
/// `{"$bin": "hex"}` is a binary value. Independent of the byte decoder under test.
fn json_to_value(j: &Json) -> Value {
    match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::F64(n.as_f64().expect("a JSON number is an f64"))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::Array(items.iter().map(json_to_value).collect()),
        Json::Object(m) => match (m.len(), m.get("$bin")) {
            (1, Some(Json::String(h))) => Value::Binary(unhex(h)),
            _ => Value::Map(m.iter().map(|(k, v)| (Value::from(k.as_str()), json_to_value(v))).collect()),
        },
    }
}

fn has_binary(j: &Json) -> bool {
    match j {
        Json::Array(items) => items.iter().any(has_binary),
        Json::Object(m) => m.contains_key("$bin") || m.values().any(has_binary),
        _ => false,
    }
}

/// A message vector's JSON as a typed message, via the value tree.
fn from_json<T: serde::de::DeserializeOwned>(name: &str, j: &Json) -> T {
    rmpv::ext::from_value(json_to_value(j))
        .unwrap_or_else(|e| panic!("{name}: JSON does not describe a message: {e}"))
}

/// Every snapshot inside a server message.
fn snapshots(msg: &ServerMsg) -> Vec<&gamerelay::protocol::Snapshot> {
    match msg {
        ServerMsg::Joined { snapshot: Some(s), .. } => vec![s],
        ServerMsg::Resync { snapshot, .. } => vec![snapshot],
        ServerMsg::Batch { msgs } => msgs.iter().flat_map(snapshots).collect(),
        _ => vec![],
    }
}

#[test]
fn message_vectors_decode_to_their_json_and_reencode_to_their_hex() {
    let v = vectors();
    assert_eq!(v["version"], 1);
    let messages = list(&v, "messages");
    assert!(messages.len() >= 30, "expected the full set of message vectors");
    let mut names = BTreeSet::new();
    for m in messages {
        let name = field(m, "name");
        let direction = field(m, "direction");
        assert!(names.insert((direction, name)), "duplicate vector {direction}/{name}");
        let bytes = unhex(field(m, "hex"));
        let json = &m["json"];
        match direction {
            "client" => {
                let expected: ClientMsg = from_json(name, json);
                let decoded = decode_client(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(decoded, expected, "{name}: decoded frame differs from its JSON");
                assert_eq!(hex::encode(encode(&expected)), hex::encode(&bytes), "{name}: re-encoding");
                assert!(decode_server(&bytes).is_err(), "{name}: a client frame is not a server message");
            }
            "server" => {
                let expected: ServerMsg = from_json(name, json);
                let decoded = decode_server(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(decoded, expected, "{name}: decoded frame differs from its JSON");
                assert_eq!(hex::encode(encode(&expected)), hex::encode(&bytes), "{name}: re-encoding");
            }
            other => panic!("{name}: unknown direction {other:?}"),
        }
    }
}

#[test]
fn message_json_deserializes_directly_with_serde_json() {
    // Binary values have no JSON form; every other vector must deserialize as-is.
    let v = vectors();
    let mut checked = 0;
    for m in list(&v, "messages").iter().filter(|m| !has_binary(&m["json"])) {
        let name = field(m, "name");
        let bytes = unhex(field(m, "hex"));
        let json = m["json"].clone();
        if field(m, "direction") == "client" {
            let direct: ClientMsg = serde_json::from_value(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(Some(direct), decode_client(&bytes).ok(), "{name}");
        } else {
            let direct: ServerMsg = serde_json::from_value(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(Some(direct), decode_server(&bytes).ok(), "{name}");
        }
        checked += 1;
    }
    assert!(checked >= 30);
}

#[test]
fn vectors_cover_every_message_type_op_kind_and_status() {
    let v = vectors();
    let mut seen = BTreeSet::new();
    fn walk(direction: &str, j: &Json, seen: &mut BTreeSet<String>) {
        if let Some(t) = j["t"].as_str() {
            seen.insert(format!("{direction}:{t}"));
        }
        if let Some(status) = j["status"].as_str() {
            seen.insert(format!("status:{status}"));
        }
        for op in j["ops"].as_array().into_iter().flatten() {
            seen.insert(format!("{direction}-op:{}", op["op"].as_str().unwrap_or("?")));
        }
        if j["t"] == "delta" {
            let who = if j["by"].is_null() && j["cid"].is_null() { "server" } else { "player" };
            seen.insert(format!("delta-by:{who}"));
        }
        if j["t"] == "joined" {
            seen.insert(format!("joined-snapshot:{}", !j["snapshot"].is_null()));
        }
        if j["t"] == "msg" {
            seen.insert(format!("{direction}-msg-to:{}", !j["to"].is_null()));
        }
        for inner in j["msgs"].as_array().into_iter().flatten() {
            walk(direction, inner, seen);
        }
    }
    for m in list(&v, "messages") {
        walk(field(m, "direction"), &m["json"], &mut seen);
    }
    let required = [
        "client:hello",
        "client:join",
        "client:ops",
        "client:msg",
        "client:ping",
        "client:leave",
        "server:welcome",
        "server:joined",
        "server:delta",
        "server:resync",
        "server:ack",
        "server:reject",
        "server:msg",
        "server:presence",
        "server:pong",
        "server:error",
        "server:batch",
        "client-op:set",
        "client-op:del",
        "client-op:inc",
        "client-op:merge",
        "server-op:set",
        "server-op:del",
        "status:joined",
        "status:disconnected",
        "status:returned",
        "status:left",
        "delta-by:server",
        "delta-by:player",
        "joined-snapshot:true",
        "joined-snapshot:false",
        "client-msg-to:true",
        "client-msg-to:false",
        "server-msg-to:true",
        "server-msg-to:false",
    ];
    for r in required {
        assert!(seen.contains(r), "no vector covers {r}");
    }
    // Deltas carry only resolved ops.
    assert!(!seen.contains("server-op:inc") && !seen.contains("server-op:merge"));
}

#[test]
fn snapshot_hashes_in_message_vectors_are_the_state_hash() {
    let v = vectors();
    let mut checked = 0;
    for m in list(&v, "messages").iter().filter(|m| field(m, "direction") == "server") {
        let msg = decode_server(&unhex(field(m, "hex"))).expect("valid vector");
        for snap in snapshots(&msg) {
            assert_eq!(snap.hash, snap.state.state_hash(), "{}", field(m, "name"));
            assert!(matches!(snap.state, Doc::Map(_)), "state is a map");
            checked += 1;
        }
    }
    assert!(checked >= 2);
}

#[test]
fn deltas_in_vectors_carry_only_set_and_del() {
    let v = vectors();
    for m in list(&v, "messages").iter().filter(|m| field(m, "direction") == "server") {
        let msg = decode_server(&unhex(field(m, "hex"))).expect("valid vector");
        let deltas: Vec<_> = match &msg {
            ServerMsg::Delta(d) => vec![d.clone()],
            ServerMsg::Batch { msgs } => msgs
                .iter()
                .filter_map(|x| if let ServerMsg::Delta(d) = x { Some(d.clone()) } else { None })
                .collect(),
            _ => vec![],
        };
        for d in deltas {
            assert!(d.ops.iter().all(|op| matches!(op, Op::Set { .. } | Op::Del { .. })));
            assert_eq!(d.cid.is_none(), d.by.is_none(), "cid and by are nil together");
        }
    }
}

#[test]
fn batch_vector_equals_batch_frame_of_its_parts() {
    let v = vectors();
    let batches: Vec<_> = list(&v, "messages")
        .iter()
        .filter(|m| field(m, "direction") == "server" && m["json"]["t"] == "batch")
        .collect();
    assert!(!batches.is_empty());
    for m in batches {
        let bytes = unhex(field(m, "hex"));
        let Ok(ServerMsg::Batch { msgs }) = decode_server(&bytes) else { panic!("a batch") };
        let parts: Vec<_> = msgs.iter().map(encode).collect();
        assert_eq!(hex::encode(batch_frame(parts.iter())), hex::encode(&bytes));
    }
}

#[test]
fn hash_vectors_match_canonical_encoding_and_sha256() {
    let v = vectors();
    let hashes = list(&v, "hashes");
    assert!(hashes.len() >= 10);
    for h in hashes {
        let name = field(h, "name");
        let doc: Doc = rmpv::ext::from_value(json_to_value(&h["state_json"]))
            .unwrap_or_else(|e| panic!("{name}: state_json is not a state: {e}"));
        assert!(matches!(doc, Doc::Map(_)), "{name}: a state is a map");
        let canonical = unhex(field(h, "canonical_hex"));
        assert_eq!(hex::encode(doc.canonical_bytes()), hex::encode(&canonical), "{name}: canonical");
        assert_eq!(doc.state_hash(), field(h, "hash"), "{name}: state_hash");
        // The hash is plain SHA-256 of the canonical bytes.
        assert_eq!(hex::encode(Sha256::digest(&canonical)), field(h, "hash"), "{name}: sha256");
        // The canonical bytes decode to the same state, and are a fixed point.
        let back: Doc = codec::decode(&canonical).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, doc, "{name}: canonical bytes decode to the state");
        assert_eq!(back.canonical_bytes(), canonical, "{name}: canonical is a fixed point");
        assert_eq!(doc.encoded_len(), canonical.len(), "{name}: encoded_len");
        if let Some(input) = h.get("input_hex") {
            let input = unhex(input.as_str().expect("hex string"));
            assert_ne!(input, canonical, "{name}: input_hex is given only when not canonical");
            let decoded: Doc = codec::decode(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(decoded, doc, "{name}: input_hex decodes to the state");
            assert_eq!(decoded.canonical_bytes(), canonical, "{name}: input_hex canonicalises");
        }
    }
}

#[test]
fn invalid_vectors_are_refused() {
    let v = vectors();
    let invalid = list(&v, "invalid");
    assert!(invalid.len() >= 10);
    for i in invalid {
        let name = field(i, "name");
        let bytes = unhex(field(i, "hex"));
        let result = match field(i, "direction") {
            "client" => decode_client(&bytes).map(|m| format!("{m:?}")),
            "server" => decode_server(&bytes).map(|m| format!("{m:?}")),
            other => panic!("{name}: unknown direction {other:?}"),
        };
        assert!(result.is_err(), "{name} ({}) decoded as {result:?}", field(i, "reason"));
    }
}

/// A fenced block of PROTOCOL.md that shows vector bytes.
struct Dump {
    /// `vector <direction>/<name>` or `canonical <name>`.
    label: String,
    /// The JSON comment line under the label.
    json: Json,
    bytes: Vec<u8>,
    sha256: Option<String>,
}

/// Finds the dumps in PROTOCOL.md: ```text blocks whose first line is `# vector ...` or
/// `# canonical ...`, then `# <json>`, then lines of hex bytes, each optionally followed by
/// `# comment`.
fn doc_dumps(doc: &str) -> Vec<Dump> {
    let mut dumps = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```text" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let Some(label) = block.first().and_then(|l| l.strip_prefix("# ")) else {
            continue;
        };
        if !(label.starts_with("vector ") || label.starts_with("canonical ")) {
            continue;
        }
        let json_line = block.get(1).and_then(|l| l.strip_prefix("# ")).expect("a JSON line");
        let json = serde_json::from_str(json_line).unwrap_or_else(|e| panic!("{label}: {e}"));
        let mut bytes = Vec::new();
        let mut sha256 = None;
        for l in &block[2..] {
            if let Some(h) = l.strip_prefix("# sha256 = ") {
                sha256 = Some(h.trim().to_owned());
                continue;
            }
            let data = l.split('#').next().unwrap_or("");
            for tok in data.split_whitespace() {
                let b = u8::from_str_radix(tok, 16)
                    .unwrap_or_else(|e| panic!("{label}: {tok:?} is not a hex byte: {e}"));
                assert_eq!(tok.len(), 2, "{label}: {tok:?}");
                bytes.push(b);
            }
        }
        dumps.push(Dump { label: label.to_owned(), json, bytes, sha256 });
    }
    dumps
}

#[test]
fn protocol_md_dumps_match_the_vectors() {
    let v = vectors();
    let doc = read_doc("PROTOCOL.md");
    let dumps = doc_dumps(&doc);
    assert!(dumps.len() >= 10, "expected the hex dumps of PROTOCOL.md, found {}", dumps.len());
    for d in dumps {
        if let Some(id) = d.label.strip_prefix("vector ") {
            let (direction, name) = id.split_once('/').expect("vector <direction>/<name>");
            let m = list(&v, "messages")
                .iter()
                .find(|m| field(m, "direction") == direction && field(m, "name") == name)
                .unwrap_or_else(|| panic!("PROTOCOL.md shows {id}, which is not a vector"));
            assert_eq!(hex::encode(&d.bytes), field(m, "hex"), "PROTOCOL.md dump of {id}");
            assert_eq!(d.json, m["json"], "PROTOCOL.md JSON of {id}");
        } else if let Some(name) = d.label.strip_prefix("canonical ") {
            let h = list(&v, "hashes")
                .iter()
                .find(|h| field(h, "name") == name)
                .unwrap_or_else(|| panic!("PROTOCOL.md shows hash {name}, which is not a vector"));
            assert_eq!(hex::encode(&d.bytes), field(h, "canonical_hex"), "PROTOCOL.md dump of {name}");
            assert_eq!(d.json, h["state_json"], "PROTOCOL.md JSON of {name}");
            assert_eq!(d.sha256.as_deref(), Some(field(h, "hash")), "PROTOCOL.md hash of {name}");
        }
    }
}

/// The cells of the markdown table rows of `doc`.
fn table_rows(doc: &str) -> Vec<Vec<String>> {
    doc.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect())
        .collect()
}

#[test]
fn protocol_md_tables_list_every_error_and_close_code_correctly() {
    let rows = table_rows(&read_doc("PROTOCOL.md"));
    for code in ErrorCode::ALL {
        let cell = format!("`{}`", code.as_str());
        let row = rows
            .iter()
            .find(|r| r.len() >= 3 && r[0] == cell)
            .unwrap_or_else(|| panic!("PROTOCOL.md has no error-code row for {cell}"));
        let retryable = if code.is_retryable() { "yes" } else { "no" };
        assert_eq!(row[1], retryable, "retryable column of {cell}");
    }
    for code in CloseCode::ALL {
        let number = code.code().to_string();
        let row = rows
            .iter()
            .find(|r| r.len() >= 4 && r[0] == number)
            .unwrap_or_else(|| panic!("PROTOCOL.md has no close-code row for {number}"));
        assert_eq!(row[1], format!("`{}`", code.reason()), "reason column of {number}");
        let reconnect = if code.should_reconnect() { "yes" } else { "no" };
        assert_eq!(row[2], reconnect, "reconnect column of {number}");
    }
    // Standard codes a client may see without the server sending them.
    for (number, reconnect) in [(1001, true), (1006, true), (1013, true)] {
        assert_eq!(should_reconnect(number), reconnect);
        let row = rows
            .iter()
            .find(|r| r.len() >= 4 && r[0] == number.to_string())
            .unwrap_or_else(|| panic!("PROTOCOL.md has no close-code row for {number}"));
        assert_eq!(row[2], if reconnect { "yes" } else { "no" }, "reconnect column of {number}");
    }
}
