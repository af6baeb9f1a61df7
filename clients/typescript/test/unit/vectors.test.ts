// docs/protocol-vectors.json (PROTOCOL.md §20): every message decodes to its JSON and
// re-encodes to the same bytes, every hash vector hashes as stated, every invalid frame is refused.

import assert from "node:assert/strict";
import { test } from "node:test";
import { decodeClient, decodeServer, decodeValue, encodeMessage, type ClientMessage, type ServerMessage } from "../../src/protocol.js";
import { FrameError } from "../../src/strict.js";
import { canonicalBytes, stateHash, valueEquals, type Value } from "../../src/values.js";
import { fromJson, hex, readVectors, unhex } from "../helpers.js";

const vectors = readVectors();

test("the vectors file is version 1 and has every section", () => {
  assert.equal(vectors.version, 1);
  assert.ok(vectors.messages.length >= 30);
  assert.ok(vectors.hashes.length >= 10);
  assert.ok(vectors.invalid.length >= 10);
});

const decode = (direction: string, bytes: Uint8Array): ClientMessage | ServerMessage =>
  direction === "client" ? decodeClient(bytes) : decodeServer(bytes);

for (const v of vectors.messages) {
  test(`message ${v.direction}/${v.name}: decodes to its JSON and re-encodes to the same bytes`, () => {
    const msg = decode(v.direction, unhex(v.hex));
    const expected = fromJson(v.json);
    assert.ok(valueEquals(msg as unknown as Value, expected), `decoded ${JSON.stringify(msg)}\nexpected ${JSON.stringify(v.json)}`);
    assert.equal(hex(encodeMessage(msg)), v.hex);
    // Our encoding of the JSON form decodes back to the same message.
    const again = decode(v.direction, encodeMessage(expected as unknown as ClientMessage));
    assert.ok(valueEquals(again as unknown as Value, expected));
  });
}

for (const h of vectors.hashes) {
  test(`hash ${h.name}: canonical encoding and state hash`, () => {
    const state = fromJson(h.state_json);
    assert.equal(hex(canonicalBytes(state)), h.canonical_hex);
    assert.equal(stateHash(state), h.hash);
    if (h.input_hex) {
      const decoded = decodeValue(unhex(h.input_hex));
      assert.ok(valueEquals(decoded, state), `input_hex decodes to ${JSON.stringify(decoded)}`);
      assert.equal(stateHash(decoded), h.hash);
    }
    // The canonical bytes are themselves a valid encoding of the state.
    assert.ok(valueEquals(decodeValue(unhex(h.canonical_hex)), state));
  });
}

for (const bad of vectors.invalid) {
  test(`invalid ${bad.direction}/${bad.name} is refused (${bad.reason})`, () => {
    assert.throws(() => decode(bad.direction, unhex(bad.hex)), FrameError);
  });
}

test("the integral-float rule: 2.0 and 2 are the same value, -0 is 0, 1e20 stays a float", () => {
  assert.equal(hex(canonicalBytes({ a: 2.0 })), hex(canonicalBytes({ a: 2 })));
  assert.equal(hex(canonicalBytes(-0)), "00");
  assert.equal(hex(canonicalBytes(1e20)), "cb" + "4415af1d78b58c40");
  assert.equal(hex(canonicalBytes(9007199254740992)), "cf0020000000000000");
  assert.equal(hex(canonicalBytes(-9007199254740992)), "d3ffe0000000000000");
});

test("u64 fields written as floats are refused even when integral", () => {
  // {"t": "ack", "cid": 3.0, "seq": 45}
  const frame = unhex("83a174a361636ba3636964cb4008000000000000a37365712d");
  assert.throws(() => decodeServer(frame), /cid/);
});

test("any integer width is accepted for u64 fields", () => {
  // {"t": "ack", "cid": uint64 3, "seq": int8 45}
  const frame = unhex("83a174a361636ba3636964cf0000000000000003a3736571d02d");
  assert.deepEqual(decodeServer(frame), { t: "ack", cid: 3, seq: 45 });
});

test("field order is free and unknown fields are ignored", () => {
  // {"seq": 45, "extra": [1], "cid": 3, "t": "ack"}
  const frame = encodeMessage({ seq: 45, extra: [1], cid: 3, t: "ack" } as unknown as ServerMessage);
  assert.deepEqual(decodeServer(frame), { t: "ack", cid: 3, seq: 45 });
});

test("absent `X or nil` fields of server messages read as nil", () => {
  const frame = encodeMessage({ t: "delta", room: "r", epoch: 1, seq: 2, ops: [] } as unknown as ServerMessage);
  assert.deepEqual(decodeServer(frame), { t: "delta", room: "r", epoch: 1, seq: 2, cid: null, by: null, ops: [] });
});

test("join: `room` may be omitted only with join_or_create (then it reads as empty)", () => {
  const choose = encodeMessage({ t: "join", type: "arena", join_or_create: true } as unknown as ClientMessage);
  assert.deepEqual(decodeClient(choose), { t: "join", room: "", type: "arena", join_or_create: true });
  const plain = encodeMessage({ t: "join", type: "arena" } as unknown as ClientMessage);
  assert.throws(() => decodeClient(plain), FrameError);
});

test("list_rooms: id is optional; rooms entries are checked (metadata a map, created an integer)", () => {
  assert.deepEqual(decodeClient(encodeMessage({ t: "list_rooms", type: "doc" })), { t: "list_rooms", type: "doc" });
  const entry = { room: "a-1", type: "arena", members: 1, max_players: 8, metadata: {}, created: 5 };
  const ok = encodeMessage({ t: "rooms", id: 0, type: "arena", rooms: [entry] });
  assert.deepEqual(decodeServer(ok), { t: "rooms", id: 0, type: "arena", rooms: [entry] });
  const badMeta = encodeMessage({ t: "rooms", id: 0, type: "arena", rooms: [{ ...entry, metadata: [] }] } as unknown as ServerMessage);
  assert.throws(() => decodeServer(badMeta), FrameError);
  const floatCreated = encodeMessage({ t: "rooms", id: 0, type: "arena", rooms: [{ ...entry, created: 5.5 }] });
  assert.throws(() => decodeServer(floatCreated), FrameError);
});
