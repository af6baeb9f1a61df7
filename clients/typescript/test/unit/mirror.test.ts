// The mirror: history rules (§9) and change listeners.

import assert from "node:assert/strict";
import { test } from "node:test";
import { GapError, Mirror } from "../../src/mirror.js";
import type { Delta, Op } from "../../src/protocol.js";
import { stateHash, type ValueMap } from "../../src/values.js";

function mirrorAt(epoch: number, seq: number, state: ValueMap): Mirror {
  const m = new Mirror();
  const hash = m.reset({ epoch, seq, state: structuredClone(state), hash: stateHash(state) });
  assert.equal(hash, stateHash(state));
  return m;
}

const delta = (epoch: number, seq: number, ops: Op[]): Delta => ({ t: "delta", room: "r", epoch, seq, cid: null, by: null, ops });

test("deltas apply in order; duplicates are ignored; a gap or another epoch makes the mirror stale", () => {
  const m = mirrorAt(1, 10, { a: 1 });
  assert.equal(m.applyDelta(delta(1, 11, [{ op: "set", path: "b/c", value: 2 }, { op: "del", path: "a" }])), true);
  assert.deepEqual(m.state, { b: { c: 2 } });
  assert.equal(m.applyDelta(delta(1, 11, [{ op: "set", path: "x", value: 1 }])), false, "duplicate");
  assert.equal(m.applyDelta(delta(1, 12, [])), true, "an empty delta still advances the seq");
  assert.equal(m.seq, 12);
  assert.throws(() => m.applyDelta(delta(1, 14, [])), GapError);
  assert.equal(m.stale, true);
  assert.equal(m.applyDelta(delta(1, 13, [])), false, "a stale mirror waits for a snapshot");
  const other = mirrorAt(1, 12, {});
  assert.throws(() => other.applyDelta(delta(2, 13, [])), GapError);
});

test("a delta that crosses a non-map or carries an unresolved op makes the mirror stale", () => {
  const m = mirrorAt(1, 1, { n: 5 });
  assert.throws(() => m.applyDelta(delta(1, 2, [{ op: "set", path: "n/x", value: 1 }])));
  assert.equal(m.stale, true);
  const m2 = mirrorAt(1, 1, {});
  assert.throws(() => m2.applyDelta(delta(1, 2, [{ op: "inc", path: "n", by: 1 }])));
  assert.equal(m2.stale, true);
  // del of something absent is not an error
  const m3 = mirrorAt(1, 1, { a: {} });
  assert.equal(m3.applyDelta(delta(1, 2, [{ op: "del", path: "a/b/c" }, { op: "del", path: "zz" }])), true);
});

test("listeners hear the paths that match, at their own depth, with the new value", () => {
  const m = mirrorAt(1, 0, { players: { "p-1": { x: 1, y: 2, score: 0 } } });
  const players: [unknown, string][] = [];
  const scores: [unknown, string][] = [];
  const xs: [unknown, string][] = [];
  m.listen("players/*", (v, p) => players.push([structuredClone(v), p]));
  m.listen("players/*/score", (v, p) => scores.push([v, p]));
  m.listen("players/p-1/x", (v, p) => xs.push([v, p]));

  m.applyDelta(delta(1, 1, [{ op: "set", path: "players/p-1/x", value: 5 }, { op: "set", path: "players/p-1/y", value: 6 }]));
  assert.deepEqual(players, [[{ x: 5, y: 6, score: 0 }, "players/p-1"]], "one call per path per delta");
  assert.deepEqual(scores, []);
  assert.deepEqual(xs, [[5, "players/p-1/x"]]);

  // A whole entry set from above reaches the deeper listeners too.
  m.applyDelta(delta(1, 2, [{ op: "set", path: "players/p-2", value: { x: 0, y: 0, score: 3 } }]));
  assert.deepEqual(scores, [[3, "players/p-2/score"]]);
  // Deleting a subtree tells deeper listeners the value is gone.
  m.applyDelta(delta(1, 3, [{ op: "del", path: "players" }]));
  assert.deepEqual(scores.slice(1), [
    [undefined, "players/p-1/score"],
    [undefined, "players/p-2/score"],
  ]);
  assert.deepEqual(xs.at(-1), [undefined, "players/p-1/x"]);
  assert.deepEqual(players.slice(-2), [
    [undefined, "players/p-1"],
    [undefined, "players/p-2"],
  ]);
});

test("a snapshot tells listeners about every matching path whose value differs", () => {
  const m = mirrorAt(1, 5, { players: { a: { s: 1 }, b: { s: 2 } }, other: 1 });
  const seen: [unknown, string][] = [];
  m.listen("players/*/s", (v, p) => seen.push([v, p]));
  const next = { players: { a: { s: 1 }, b: { s: 3 }, c: { s: 0 } } };
  m.reset({ epoch: 2, seq: 1, state: next, hash: stateHash(next) });
  assert.deepEqual(seen, [
    [3, "players/b/s"],
    [0, "players/c/s"],
  ]);
  const immediate: string[] = [];
  m.listen("players/*", (_v, p) => immediate.push(p), true);
  assert.deepEqual(immediate.sort(), ["players/a", "players/b", "players/c"]);
});

test("members follow presence; left members are dropped", () => {
  const m = new Mirror();
  m.setMembers([
    { player: "a", status: "joined" },
    { player: "b", status: "left" },
  ]);
  m.presence("c", "joined");
  m.presence("a", "disconnected");
  m.presence("c", "left");
  assert.deepEqual([...m.members], [["a", "disconnected"]]);
});
