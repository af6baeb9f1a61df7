// Interop with a real gamerelay node (target/release/gamerelay, or $GAMERELAY_BIN): a node
// process on a free loopback port, real WebSockets (the `ws` package), protocol v1.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { createServer } from "node:net";
import { join as joinPath } from "node:path";
import { after, before, test } from "node:test";
import { pathToFileURL } from "node:url";
import WebSocket from "ws";
import { Client, type Room } from "../../src/room.js";
import { ClosedError, JoinError, RejectedError, ServerError } from "../../src/errors.js";
import type { Delta } from "../../src/protocol.js";
import { stateHash } from "../../src/values.js";
import { eventually, repoRoot } from "../helpers.js";

let node!: ChildProcess;
let url = "";
let httpBase = "";
let log = "";
/** The admin API's bearer token (the node's `--admin-token`), to act as the game backend. */
const ADMIN_TOKEN = `interop-admin-token-${"x".repeat(32)}`;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

before(async () => {
  const bin = process.env.GAMERELAY_BIN ?? joinPath(repoRoot(), "target", "release", "gamerelay");
  if (!existsSync(bin)) throw new Error(`${bin} not found: build it with cargo build --release --bin gamerelay (or set GAMERELAY_BIN)`);
  const port = await freePort();
  node = spawn(bin, ["--listen", `127.0.0.1:${port}`, "--node-id", "interop-node", "--log", "warn", "--admin-token", ADMIN_TOKEN], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  node.stdout?.on("data", (d) => (log += d));
  node.stderr?.on("data", (d) => (log += d));
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (node.exitCode !== null) throw new Error(`the node exited (${node.exitCode}):\n${log}`);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`the node did not answer /healthz within 15 s:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  url = `ws://127.0.0.1:${port}/ws`;
  httpBase = `http://127.0.0.1:${port}`;
});

after(() => {
  node.kill("SIGKILL");
});

const rooms: Room[] = [];
async function join(roomId: string, type = "doc"): Promise<Room> {
  const client = new Client(url, { WebSocket: WebSocket as never, clientName: "interop-test", reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
  const room = await client.join(roomId, { type });
  room.on("error", () => {}); // asserted where expected
  rooms.push(room);
  return room;
}
after(() => rooms.forEach((r) => r.close()));

function newClient(): Client {
  return new Client(url, { WebSocket: WebSocket as never, clientName: "interop-test", reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
}

/** A request to the admin API, as the game backend makes it. */
async function admin(method: string, path: string, body?: unknown): Promise<unknown> {
  const init: RequestInit = { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" } };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(`${httpBase}${path}`, init);
  const text = await r.text();
  assert.ok(r.ok, `${method} ${path}: HTTP ${r.status} ${text}`);
  return JSON.parse(text);
}

let n = 0;
const roomName = (what: string): string => `ts-${what}-${process.pid}-${n++}`;

test("two players share a doc room: a batch is acked by its delta and both mirrors converge", async () => {
  const id = roomName("doc");
  const a = await join(id);
  const b = await join(id);
  assert.notEqual(a.player, b.player);
  assert.match(a.player, /^p-[0-9a-f]{12}$/);
  assert.equal(a.node, "interop-node");
  const seen: [unknown, string][] = [];
  b.listen("counters/*", (value, path) => seen.push([value, path]));

  const r1 = await a.inc("counters/clicks", 2);
  const r2 = await a.send([{ op: "inc", path: "counters/clicks", by: 3 }, { op: "set", path: "title", value: "hi" }]);
  assert.equal(r2.seq, r1.seq + 1);
  assert.equal(a.get("counters/clicks"), 5);
  await eventually("b sees both batches", () => b.position.seq === a.position.seq);
  assert.deepEqual(b.state, a.state);
  assert.equal(stateHash(b.state), stateHash(a.state));
  assert.deepEqual(seen, [
    [2, "counters/clicks"],
    [5, "counters/clicks"],
  ]);
  // A third player's snapshot carries the server's hash of the same state.
  const c = await join(id);
  assert.equal(stateHash(c.state), stateHash(a.state));
  assert.deepEqual(c.position, a.position);
});

test("refusals are typed: reject with its code, join errors, unknown recipients", async () => {
  const id = roomName("refuse");
  const a = await join(id);
  const b = await join(id);
  await assert.rejects(a.set(`players/${b.player}/name`, "mallory"), (e: unknown) => {
    assert.ok(e instanceof RejectedError);
    assert.equal(e.code, "forbidden");
    assert.equal(e.retryable, false);
    return true;
  });
  await assert.rejects(join(id, "arena"), (e: unknown) => e instanceof JoinError && e.code === "bad_room");
  const errors: string[] = [];
  a.on("error", (e) => errors.push(e.code));
  a.sendMessage("psst", { to: "p-000000000000" });
  await eventually("unknown_player error", () => errors.includes("unknown_player"));
  // The failed requests changed nothing; the room still works.
  await a.set(`players/${a.player}/name`, "ann");
  await eventually("b sees the name", () => b.get(`players/${a.player}/name`) === "ann");
});

test("ephemeral messages and presence reach the other members", async () => {
  const id = roomName("presence");
  const a = await join(id);
  const presence: string[] = [];
  a.on("presence", (p) => presence.push(`${p.player}:${p.status}`));
  const messages: unknown[] = [];
  a.on("message", (m) => messages.push([m.from, m.data]));
  const b = await join(id);
  await eventually("joined presence", () => presence.includes(`${b.player}:joined`));
  assert.equal(a.members.get(b.player), "joined");
  b.sendMessage({ chat: "gl hf" });
  await eventually("message", () => messages.length === 1);
  assert.deepEqual(messages, [[b.player, { chat: "gl hf" }]]);

  b.simulateDrop();
  await eventually("disconnected presence", () => presence.includes(`${b.player}:disconnected`));
  await eventually("returned presence", () => presence.includes(`${b.player}:returned`));
  await b.leave();
  await eventually("left presence", () => presence.includes(`${b.player}:left`));
  assert.equal(a.members.has(b.player), false);
  assert.equal(b.status.state, "closed");
});

test("a dropped player resumes with exactly the missed deltas and its unsettled batches applied once", async () => {
  const id = roomName("resume");
  const a = await join(id);
  const b = await join(id);
  await b.set("counters/b", 0);
  const resumed: boolean[] = [];
  b.on("resumed", (r) => resumed.push(r.withSnapshot));

  // A batch whose delta is lost with the connection, then one sent while reconnecting.
  const first = b.inc("counters/b", 1);
  b.simulateDrop();
  assert.equal(b.connected, false);
  const second = b.inc("counters/b", 10);
  for (let i = 0; i < 5; i++) await a.inc("counters/a", 1);

  const [r1, r2] = await Promise.all([first, second]);
  assert.ok(r2.seq > r1.seq);
  await eventually("resumed", () => resumed.length === 1);
  assert.deepEqual(resumed, [false], "a short drop is served with deltas, not a snapshot");
  await eventually("mirrors converge", () => a.position.seq === b.position.seq && b.position.seq >= r2.seq);
  assert.equal(b.get("counters/b"), 11, "each batch applied exactly once");
  assert.equal(b.get("counters/a"), 5);
  assert.equal(stateHash(b.state), stateHash(a.state));
  assert.equal(b.pendingOps, 0);
});

test("arena: moves are clamped by the server, scores are server-owned, leaving removes the player", async () => {
  const id = roomName("arena");
  const a = await join(id, "arena");
  const b = await join(id, "arena");
  const me = a.get(`players/${a.player}`) as { x: number; y: number; score: number };
  assert.equal(me.score, 0);
  assert.deepEqual(a.get("arena"), { w: 1000, h: 1000 });
  const target = me.x < 500 ? me.x + 900 : me.x - 900;
  await a.merge(`players/${a.player}`, { x: target, y: me.y });
  const moved = a.get(`players/${a.player}/x`) as number;
  assert.ok(Math.abs(moved - me.x) <= 100 + 1e-9, `moved ${Math.abs(moved - me.x)} units at once`);
  assert.notEqual(moved, target);
  await assert.rejects(a.set(`players/${a.player}/score`, 99), (e: unknown) => e instanceof RejectedError && e.code === "forbidden");
  const entries = new Map<string, unknown>();
  b.onPlayer((player, entry) => entries.set(player, entry), { immediate: true });
  assert.ok(entries.has(a.player));
  await a.leave();
  await eventually("b sees a's entry removed", () => entries.has(a.player) && entries.get(a.player) === undefined);
  assert.equal(b.get(`players/${a.player}`), undefined);
});

test("the ten-line example of README.md runs as written", async () => {
  const readme = readFileSync(joinPath(repoRoot(), "clients", "typescript", "README.md"), "utf8");
  const block = /## Ten lines\n\n```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(block, "README.md has a ts block under `## Ten lines`");
  assert.ok(block.trim().split("\n").length <= 10, "ten lines at most");
  const index = pathToFileURL(joinPath(repoRoot(), "clients", "typescript", "build-test", "src", "index.js")).href;
  const roomId = roomName("readme");
  const code = block
    .replace(`from "gamerelay-client"`, `from ${JSON.stringify(index)}`)
    .replace(`"ws://localhost:8080/ws"`, JSON.stringify(url))
    .replace(`"arena-1"`, JSON.stringify(roomId));
  const file = joinPath(tmpdir(), `gamerelay-readme-${process.pid}.mjs`);
  writeFileSync(file, code);
  const lines: string[] = [];
  const log = console.log;
  const hadWs = "WebSocket" in globalThis;
  const g = globalThis as { WebSocket?: unknown };
  if (!hadWs) g.WebSocket = WebSocket; // Node 20 has no WebSocket global
  console.log = (...args: unknown[]) => void lines.push(args.map((a) => (typeof a === "string" ? a : JSON.stringify(a))).join(" "));
  try {
    await import(pathToFileURL(file).href);
  } finally {
    console.log = log;
    if (!hadWs) delete g.WebSocket;
    rmSync(file, { force: true });
  }
  assert.ok(lines.some((l) => /^p-[0-9a-f]{12} \{.*"score":0/.test(l)), `the player listener ran: ${lines.join("\n")}`);
  assert.ok(lines.includes("closed interop-node"), `the status listener saw the leave: ${lines.join("\n")}`);
  assert.ok(lines.some((l) => /^moved at seq \d+ to \{/.test(l)), `the move was applied: ${lines.join("\n")}`);
});

test("joinOrCreate: two players land in the same listed room, which listRooms shows with both seats; server/ is server-owned; room_closed ends it for good", async () => {
  const a = await newClient().joinOrCreate("arena");
  rooms.push(a);
  a.on("error", () => {});
  const b = await newClient().joinOrCreate("arena");
  rooms.push(b);
  b.on("error", () => {});
  assert.match(a.id, /^arena-[0-9a-f]{12}$/, "a new listed room named <type>-<12 hex>");
  assert.equal(b.id, a.id, "the second player gets a seat in the first one's room");
  assert.notEqual(a.player, b.player);
  await eventually("a sees b", () => a.members.has(b.player));

  const listed = await newClient().listRooms("arena");
  const mine = listed.find((r) => r.room === a.id);
  assert.ok(mine, `${a.id} is listed: ${JSON.stringify(listed)}`);
  assert.deepEqual({ ...mine, created: 0 }, { room: a.id, type: "arena", members: 2, max_players: 8, metadata: {}, created: 0 });
  assert.ok(Math.abs(mine.created - Date.now()) < 60_000, `created ${mine.created} is about now`);
  assert.deepEqual(await newClient().listRooms("arena", { via: "http" }), listed, "GET /rooms answers the same");
  await assert.rejects(newClient().listRooms("nope"), (e: unknown) => e instanceof ServerError && e.code === "bad_room");
  await assert.rejects(newClient().listRooms("nope", { via: "http" }), (e: unknown) => e instanceof ServerError && e.code === "bad_room");

  // Players may not write under server/; the game backend may, and its write is a delta without cid and by.
  await assert.rejects(a.set("server/x", 1), (e: unknown) => e instanceof RejectedError && e.code === "forbidden");
  const deltas: Delta[] = [];
  b.on("delta", (d) => deltas.push(d));
  await admin("POST", `/admin/v1/rooms/${a.id}/ops`, { ops: [{ op: "set", path: "server/round", value: 3 }] });
  await eventually("both see the backend's write", () => a.get("server/round") === 3 && b.get("server/round") === 3);
  const fromServer = deltas.find((d) => d.ops.some((op) => op.path === "server/round"));
  assert.ok(fromServer && fromServer.cid === null && fromServer.by === null, JSON.stringify(fromServer));

  // A dropped player resumes in the room chosen, as the same player.
  const resumed: unknown[] = [];
  b.on("resumed", (r) => resumed.push(r));
  const player = b.player;
  b.simulateDrop();
  await eventually("b resumed", () => resumed.length === 1 && b.connected);
  assert.equal(b.id, a.id);
  assert.equal(b.player, player);
  const x = b.get(`players/${b.player}/x`) as number;
  const to = x < 500 ? x + 1 : x - 1;
  await b.merge(`players/${b.player}`, { x: to });
  await eventually("a sees b's move after the resume", () => a.get(`players/${b.player}/x`) === to);

  // The backend closes the room: 4006 room_closed, and nobody reconnects.
  const closed = [a, b].map((r) => new Promise<unknown>((resolve) => r.on("closed", resolve)));
  const reconnecting: number[] = [];
  for (const r of [a, b]) r.on("reconnecting", (e) => reconnecting.push(e.attempt));
  await admin("DELETE", `/admin/v1/rooms/${a.id}?reason=round+over`);
  for (const err of await Promise.all(closed)) {
    assert.ok(err instanceof ClosedError && err.closeCode === 4006, `closed with ${JSON.stringify(err)}`);
    assert.match(err.reason, /^room_closed/);
  }
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(reconnecting, [], "no reconnect after 4006");
  assert.equal(a.status.state, "closed");
  assert.equal(b.status.state, "closed");
});
