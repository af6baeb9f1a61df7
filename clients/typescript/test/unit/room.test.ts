// Room behaviour against a scripted in-process server (the `ws` package): what the client
// sends on a resume, what it re-sends, and how it treats close codes, gaps and refusals.
// The same behaviour against a real node is in test/interop.

import assert from "node:assert/strict";
import { after, test } from "node:test";
import WebSocket, { WebSocketServer } from "ws";
import { backoffDelay, Client, type ClientOptions, type Room } from "../../src/room.js";
import { CloseCode, ClosedError, retryHint, ServerError, SessionExpiredError, shouldReconnect, TimeoutError } from "../../src/errors.js";
import {
  decodeClient,
  decodeValue,
  encodeMessage,
  type ClientMessage,
  type Member,
  type RoomListing,
  type ServerMessage,
  type Snapshot,
} from "../../src/protocol.js";
import { stateHash, type Value, type ValueMap } from "../../src/values.js";
import { createServer } from "node:http";
import { eventually, hex, readVectors } from "../helpers.js";

/** One accepted connection: what the client sent, and a way to answer. */
interface Conn {
  ws: WebSocket;
  /** The request path and query of the upgrade (`/ws?room=...`). */
  url: string;
  /** The frames as sent. */
  frames: Uint8Array[];
  got: ClientMessage[];
  /** The same frames as plain values, unknown fields included. */
  raw: Value[];
  send(m: ServerMessage): void;
}

async function scriptedServer(onConn: (c: Conn, index: number) => void): Promise<{ url: string; conns: Conn[]; close(): void }> {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise<void>((r) => wss.once("listening", () => r()));
  const conns: Conn[] = [];
  wss.on("connection", (ws, req) => {
    const c: Conn = { ws, url: req.url ?? "", frames: [], got: [], raw: [], send: (m) => ws.send(encodeMessage(m)) };
    conns.push(c);
    const index = conns.length - 1;
    ws.on("message", (data: Buffer) => {
      c.frames.push(new Uint8Array(data));
      c.got.push(decodeClient(new Uint8Array(data)));
      c.raw.push(decodeValue(new Uint8Array(data)));
      if (c.got.length === 2) onConn(c, index); // after hello + join
    });
  });
  const addr = wss.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    conns,
    close: () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
    },
  };
}

const snap = (epoch: number, seq: number, state: ValueMap): Snapshot => ({ epoch, seq, state, hash: stateHash(state) });
const welcome = (node: string): ServerMessage => ({ t: "welcome", v: 1, node, time: Date.now(), max_frame: 65536, max_ops: 64 });
function joined(resumed: boolean, cid: number, snapshot: Snapshot | null): ServerMessage {
  return { t: "joined", room: "r1", type: "doc", player: "p-1", session: "s1", resumed, cid, members: [{ player: "p-1", status: "joined" }], snapshot };
}

const cleanups: (() => void)[] = [];
after(() => cleanups.forEach((f) => f()));

async function joinScripted(onConn: (c: Conn, index: number) => void, options: ClientOptions = {}): Promise<{ room: Room; conns: Conn[] }> {
  const server = await scriptedServer(onConn);
  const client = new Client(server.url, { WebSocket: WebSocket as never, reconnect: { initialDelayMs: 10, maxDelayMs: 50 }, ...options });
  const room = await client.join("r1", { type: "doc", token: "tok", fields: { auth: "jwt-here" } });
  room.on("error", () => {});
  cleanups.push(() => room.close(), server.close);
  return { room, conns: server.conns };
}

test("a resume presents session, epoch and seq, and re-sends unsettled batches with their original cids", async () => {
  const { room, conns } = await joinScripted((c, i) => {
    c.send(welcome(`node-${i}`));
    if (i === 0) c.send(joined(false, 0, snap(1, 5, { n: 0 })));
    else c.send(joined(true, 0, null));
  });
  assert.equal(room.node, "node-0");
  const hello = conns[0]!.got[0]!;
  assert.equal(hello.t, "hello");
  assert.deepEqual(conns[0]!.got[1], { t: "join", room: "r1", type: "doc", token: "tok" }, "extra fields are sent as given");
  const result = room.inc("n", 1);
  await eventually("ops sent", () => conns[0]!.got.length === 3);
  conns[0]!.ws.terminate(); // no close frame: 1006, reconnect
  await eventually("second connection", () => conns.length === 2 && conns[1]!.got.length >= 3);
  const rejoin = conns[1]!.got[1]!;
  assert.equal(rejoin.t, "join");
  assert.deepEqual(
    {
      session: (rejoin as { session?: string }).session,
      epoch: (rejoin as { epoch?: number }).epoch,
      seq: (rejoin as { seq?: number }).seq,
      attempt: (rejoin as { attempt?: number }).attempt,
    },
    { session: "s1", epoch: 1, seq: 5, attempt: 1 },
  );
  assert.deepEqual(conns[1]!.got[2], conns[0]!.got[2], "the same cid and ops");
  conns[1]!.send({ t: "ack", cid: 1, seq: 6 });
  assert.deepEqual(await result, { cid: 1, seq: 6 });
  assert.equal(room.node, "node-1");
  assert.equal(room.status.state, "connected");
});

test("every resume attempt of a session is numbered above the last, failed attempts included", async () => {
  const { room, conns } = await joinScripted((c, i) => {
    c.send(welcome(`node-${i}`));
    if (i === 0) c.send(joined(false, 0, snap(1, 5, { n: 0 })));
    // Attempts 1 and 2 are refused as retryable; attempt 3 resumes.
    else if (i < 3) c.send({ t: "error", code: "unavailable", message: "owner moving" });
    else c.send(joined(true, 0, null));
  });
  conns[0]!.ws.terminate();
  await eventually("the third attempt resumed", () => conns.length === 4 && room.status.state === "connected");
  const attempts = conns.slice(1).map((c) => (c.got[1] as { attempt?: number }).attempt);
  assert.deepEqual(attempts, [1, 2, 3]);
  assert.equal((conns[0]!.got[1] as { attempt?: number }).attempt, undefined, "a first join carries no attempt");
});

test("the fields of `join` include extra fields on the first join and every resume", async () => {
  const { room, conns } = await joinScripted((c, i) => {
    c.send(welcome("n"));
    c.send(joined(i > 0, 0, snap(1, 1, {})));
  });
  // joinScripted passes fields {auth}: not part of v1, but sent as given (a server ignores it)
  const first = conns[0]!.raw[1] as Record<string, unknown>;
  assert.equal(first.auth, "jwt-here");
  assert.equal(first.token, "tok");
  assert.equal((conns[0]!.got[1] as Record<string, unknown>).auth, undefined, "decoders drop unknown fields");
  room.simulateDrop();
  await eventually("resumed", () => room.connected && conns.length === 2 && conns[1]!.raw.length >= 2);
  const resume = conns[1]!.raw[1] as Record<string, unknown>;
  assert.equal(resume.auth, "jwt-here");
  assert.equal(resume.session, "s1");
});

test("close codes: 4000 replaced stops for good; 1012 waits for the retry hint", async () => {
  assert.equal(shouldReconnect(4000), false);
  assert.equal(shouldReconnect(4103), true);
  assert.equal(shouldReconnect(4150), true);
  assert.equal(shouldReconnect(1005), false);
  assert.equal(retryHint("service_restart: retry_ms=2350"), 2350);

  const { room, conns } = await joinScripted((c) => {
    c.send(welcome("n"));
    c.send(joined(false, 0, snap(1, 1, {})));
  });
  const closed = new Promise<unknown>((r) => room.on("closed", r));
  const pending = room.set("a", 1);
  conns[0]!.ws.close(4000, "replaced");
  const err = await closed;
  assert.ok(err instanceof ClosedError && err.closeCode === 4000);
  await assert.rejects(pending, ClosedError);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(conns.length, 1, "no reconnect after 4000");

  const r2 = await joinScripted((c, i) => {
    c.send(welcome(`n${i}`));
    c.send(joined(i > 0, 0, i === 0 ? snap(1, 1, {}) : null));
  });
  const delays: number[] = [];
  r2.room.on("reconnecting", (e) => delays.push(e.delayMs));
  r2.conns[0]!.ws.close(1012, "service_restart: retry_ms=120");
  await eventually("resumed after the hint", () => r2.conns.length === 2 && r2.room.connected);
  assert.equal(delays[0], 120);
});

test("a gap resumes at once asking for a snapshot, which replaces the state", async () => {
  const { room, conns } = await joinScripted((c, i) => {
    c.send(welcome("n"));
    if (i === 0) c.send(joined(false, 0, snap(1, 5, { a: 1 })));
    else c.send(joined(true, 0, snap(2, 9, { a: 2, b: 3 })));
  });
  const changes: [unknown, string][] = [];
  room.listen("*", (v, p) => changes.push([v, p]));
  const snapshots: string[] = [];
  room.on("snapshot", (_s, why) => snapshots.push(why));
  conns[0]!.send({ t: "delta", room: "r1", epoch: 1, seq: 7, cid: null, by: null, ops: [] });
  await eventually("resumed", () => conns.length === 2 && room.connected && room.position.epoch === 2);
  const rejoin = conns[1]!.got[1] as { session?: string; epoch?: number; seq?: number };
  assert.equal(rejoin.session, "s1");
  assert.equal(rejoin.epoch, undefined, "a stale mirror resumes without a position");
  assert.equal(rejoin.seq, undefined);
  assert.deepEqual(room.state, { a: 2, b: 3 });
  assert.deepEqual(changes, [
    [2, "a"],
    [3, "b"],
  ]);
  assert.deepEqual(snapshots, ["resumed"]);
});

test("a resync replaces the state and re-sends every unsettled batch, also above resync.cid", async () => {
  const { room, conns } = await joinScripted((c) => {
    c.send(welcome("n"));
    c.send(joined(false, 0, snap(1, 5, { a: 1 })));
  });
  const one = room.set("x", 1);
  const two = room.set("y", 2);
  await eventually("both batches sent", () => conns[0]!.got.length === 4);
  // The room applied cid 2 and refused cid 1, but both answers were dropped while we lagged.
  conns[0]!.send({ t: "resync", room: "r1", snapshot: snap(1, 9, { a: 1, y: 2 }), cid: 2, members: [{ player: "p-1", status: "joined" }] });
  await eventually("both re-sent", () => conns[0]!.got.length === 6);
  assert.deepEqual(
    conns[0]!.got.slice(4).map((m) => (m as { cid: number }).cid),
    [1, 2],
  );
  assert.deepEqual(room.state, { a: 1, y: 2 });
  assert.deepEqual(room.position, { epoch: 1, seq: 9 });
  conns[0]!.send({ t: "reject", cid: 1, code: "forbidden", message: "no" });
  conns[0]!.send({ t: "ack", cid: 2, seq: 8 });
  await assert.rejects(one, (e: unknown) => e instanceof Error && (e as { code?: string }).code === "forbidden");
  assert.deepEqual(await two, { cid: 2, seq: 8 });
});

test("session_expired on a resume closes the room with SessionExpiredError", async () => {
  const { room, conns } = await joinScripted((c, i) => {
    c.send(welcome("n"));
    if (i === 0) c.send(joined(false, 0, snap(1, 1, {})));
    else c.send({ t: "error", code: "session_expired", message: "grace over" });
  });
  const closed = new Promise<unknown>((r) => room.on("closed", r));
  conns[0]!.ws.terminate();
  const err = await closed;
  assert.ok(err instanceof SessionExpiredError);
  assert.equal(room.status.state, "closed");
});

test("a connection whose pings go unanswered is replaced; one that answers late is kept", async () => {
  let answer = false;
  const { room, conns } = await joinScripted(
    (c, i) => {
      c.send(welcome(`n${i}`));
      c.send(joined(i > 0, 0, i === 0 ? snap(1, 1, {}) : null));
      c.ws.on("message", (data: Buffer) => {
        const m = decodeClient(new Uint8Array(data));
        if (m.t === "ping" && (answer || i > 0)) setTimeout(() => c.send({ t: "pong", id: m.id ?? 0, time: Date.now() }), 60);
      });
    },
    { pingIntervalMs: 40, idleTimeoutMs: 150 },
  );
  const rtts: number[] = [];
  room.on("pong", (rtt) => rtts.push(rtt));
  await eventually("the silent connection is replaced", () => conns.length === 2 && room.connected, 3000);
  answer = true;
  await eventually("pongs measured", () => rtts.length >= 3, 3000);
  assert.ok(rtts.every((r) => r >= 50), `rtts ${rtts}`);
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(conns.length, 2, "pongs 60 ms late within a 150 ms timeout keep the connection");
});

test("requests are checked before they are sent", async () => {
  const { room } = await joinScripted((c) => {
    c.send(welcome("n"));
    c.send(joined(false, 0, snap(1, 1, {})));
  });
  await assert.rejects(room.send([]), /at least one op/);
  await assert.rejects(room.set("a", Number.NaN), /finite/);
  await assert.rejects(room.send(Array.from({ length: 65 }, () => ({ op: "del" as const, path: "a" }))), /at most 64/);
  await assert.rejects(room.set("a", undefined as never), /not a state value/);
});

test("backoff doubles up to the cap, shortened by at most the jitter", () => {
  const policy = { enabled: true, initialDelayMs: 100, maxDelayMs: 1000, jitter: 0.5, maxAttempts: Infinity };
  assert.deepEqual([1, 2, 3, 4, 5, 6].map((n) => backoffDelay(policy, n, () => 0)), [100, 200, 400, 800, 1000, 1000]);
  assert.equal(backoffDelay(policy, 1, () => 1), 50);
});

test("close 4006 room_closed (the backend closed the room) ends the room for good: no reconnect", async () => {
  assert.equal(CloseCode.roomClosed, 4006);
  assert.equal(shouldReconnect(4006), false);
  const { room, conns } = await joinScripted((c) => {
    c.send(welcome("n"));
    c.send(joined(false, 0, snap(1, 1, {})));
  });
  const closed = new Promise<unknown>((r) => room.on("closed", r));
  const reconnecting: number[] = [];
  room.on("reconnecting", (e) => reconnecting.push(e.attempt));
  const pending = room.set("a", 1);
  conns[0]!.ws.close(4006, "room_closed: round over");
  const err = await closed;
  assert.ok(err instanceof ClosedError && err.closeCode === 4006 && err.reason === "room_closed: round over");
  assert.equal(err.retryable, false);
  await assert.rejects(pending, ClosedError);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(conns.length, 1, "no reconnect after 4006");
  assert.deepEqual(reconnecting, []);
  assert.equal(room.status.state, "closed");
});

test("joinOrCreate: the server chooses the room, room.id is its choice, and a resume goes there without join_or_create", async () => {
  const chosen = "arena-0a1b2c3d4e5f";
  const server = await scriptedServer((c, i) => {
    c.send(welcome(`n${i}`));
    const members: Member[] = [{ player: "p-1", status: "joined" }];
    const base = { t: "joined", room: chosen, type: "arena", player: "p-1", session: "s1", cid: 0, members } as const;
    if (i === 0) c.send({ ...base, resumed: false, snapshot: snap(1, 3, { n: 1 }) });
    else c.send({ ...base, resumed: true, snapshot: null });
  });
  cleanups.push(server.close);
  const client = new Client(server.url, { WebSocket: WebSocket as never, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
  const room = await client.joinOrCreate("arena");
  cleanups.push(() => room.close());
  const conns = server.conns;
  assert.equal(room.id, chosen);
  assert.equal(room.type, "arena");
  assert.equal(conns[0]!.url, "/ws", "no ?room= before the server chose");
  assert.deepEqual(conns[0]!.got[1], { t: "join", room: "", type: "arena", join_or_create: true });
  const vector = readVectors().messages.find((m: { direction: string; name: string }) => m.direction === "client" && m.name === "join_or_create");
  assert.equal(hex(conns[0]!.frames[1]!), vector.hex, "the first join is the client/join_or_create vector, byte for byte");

  room.simulateDrop();
  await eventually("resumed", () => conns.length === 2 && room.connected);
  assert.equal(conns[1]!.url, `/ws?room=${chosen}`, "the load balancer is told the room chosen");
  assert.deepEqual(conns[1]!.got[1], { t: "join", room: chosen, type: "arena", session: "s1", epoch: 1, seq: 3, attempt: 1 });
  assert.equal((conns[1]!.raw[1] as Record<string, unknown>).join_or_create, undefined, "a resume never asks to choose");
  assert.equal(room.id, chosen);
});

test("joinOrCreate with a token sends it and join_or_create in table order; refusals are JoinErrors", async () => {
  const server = await scriptedServer((c) => {
    c.send(welcome("n"));
    c.send({ t: "error", code: "bad_room", message: "unknown room type \"nope\"" });
  });
  cleanups.push(server.close);
  const client = new Client(server.url, { WebSocket: WebSocket as never });
  await assert.rejects(client.joinOrCreate("nope", { token: "tok" }), (e: unknown) => e instanceof ServerError && e.code === "bad_room");
  assert.deepEqual(Object.keys(server.conns[0]!.raw[1] as object), ["t", "room", "type", "token", "join_or_create"]);
  await assert.rejects(client.joinOrCreate(""), /needs a room type/);
});

const listing: RoomListing = { room: "arena-0a1b2c3d4e5f", type: "arena", members: 3, max_players: 8, metadata: { map: "dunes" }, created: 1767225600000 };

test("listRooms: hello and list_rooms on a connection of its own, answered with rooms, then closed", async () => {
  const closedByClient: number[] = [];
  const server = await scriptedServer((c) => {
    c.ws.on("close", (code) => closedByClient.push(code));
    c.send(welcome("n"));
    c.send({ t: "rooms", id: (c.got[1] as { id: number }).id, type: "arena", rooms: [listing] });
  });
  cleanups.push(server.close);
  const client = new Client(server.url, { WebSocket: WebSocket as never });
  assert.deepEqual(await client.listRooms("arena"), [listing]);
  const c = server.conns[0]!;
  assert.equal(c.got[0]!.t, "hello");
  assert.deepEqual(c.got[1], { t: "list_rooms", id: 1, type: "arena" });
  assert.equal(c.got.length, 2, "nothing but hello and list_rooms");
  await eventually("the client closed the connection", () => closedByClient.length === 1);
  assert.equal(closedByClient[0], 1000);
});

test("listRooms: error{bad_room} is a ServerError, silence a TimeoutError, a close a ClosedError", async () => {
  const answers: ((c: Conn) => void)[] = [
    (c) => c.send({ t: "error", code: "bad_room", message: "unknown room type" }),
    () => {},
    (c) => c.ws.close(4005, "rate_limited"),
  ];
  const server = await scriptedServer((c, i) => {
    c.send(welcome("n"));
    answers[i]!(c);
  });
  cleanups.push(server.close);
  const client = new Client(server.url, { WebSocket: WebSocket as never });
  await assert.rejects(client.listRooms("nope"), (e: unknown) => e instanceof ServerError && e.code === "bad_room" && !e.retryable);
  await assert.rejects(client.listRooms("arena", { timeoutMs: 100 }), TimeoutError);
  await assert.rejects(client.listRooms("arena"), (e: unknown) => e instanceof ClosedError && e.closeCode === 4005);
  await assert.rejects(client.listRooms(""), /needs a room type/);
});

test("listRooms via http: GET /rooms?type=T on the host of the WebSocket URL", async () => {
  const paths: string[] = [];
  const http = createServer((req, res) => {
    paths.push(req.url ?? "");
    const type = new URL(req.url ?? "", "http://x").searchParams.get("type");
    res.setHeader("content-type", "application/json");
    if (type === "arena") res.end(JSON.stringify({ type, rooms: [listing] }));
    else {
      res.statusCode = 422;
      res.end(JSON.stringify({ error: { code: "bad_room", message: "unknown room type" } }));
    }
  });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
  cleanups.push(() => http.close());
  const addr = http.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  const client = new Client(`ws://127.0.0.1:${port}/ws`, { WebSocket: WebSocket as never });
  assert.deepEqual(await client.listRooms("arena", { via: "http" }), [listing]);
  await assert.rejects(client.listRooms("nope", { via: "http" }), (e: unknown) => e instanceof ServerError && e.code === "bad_room");
  assert.deepEqual(paths, ["/rooms?type=arena", "/rooms?type=nope"]);
});
