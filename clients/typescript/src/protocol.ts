// Protocol v1 messages (PROTOCOL.md §5, §6), their strict decoding and their encoding.

import { Decoder, Encoder, type ExtensionCodecType } from "@msgpack/msgpack";
import { checkFrame, FrameError, pathKey, type FloatPaths } from "./strict.js";
import { depthOf, isMap, MAX_DEPTH, type Value, type ValueMap } from "./values.js";

export const PROTOCOL_VERSION = 1;

export type PresenceStatus = "joined" | "disconnected" | "returned" | "left";
const PRESENCE: readonly string[] = ["joined", "disconnected", "returned", "left"];

/** An op as clients send it (§5.3) and, resolved to `set`/`del`, as deltas carry it (§7.3). */
export type Op =
  | { op: "set"; path: string; value: Value }
  | { op: "del"; path: string }
  | { op: "inc"; path: string; by: number }
  | { op: "merge"; path: string; value: ValueMap };

export interface Member {
  player: string;
  status: PresenceStatus;
}

export interface Snapshot {
  epoch: number;
  seq: number;
  state: ValueMap;
  hash: string;
}

export interface Delta {
  t: "delta";
  room: string;
  epoch: number;
  seq: number;
  cid: number | null;
  by: string | null;
  ops: Op[];
}

// ---- client messages (§5)

export interface Hello {
  t: "hello";
  v: number;
  client?: string;
}
export interface Join {
  t: "join";
  /** Room id; empty with `join_or_create` (the server chooses). */
  room: string;
  type: string;
  token?: string;
  session?: string;
  epoch?: number;
  seq?: number;
  /** Resume only: this attempt's number, from 1, growing with every attempt (§4.3). */
  attempt?: number;
  /** `true`: the server chooses the room (§4.5); `room` is then empty. Never on a resume. */
  join_or_create?: boolean;
  /** Fields this version does not know (e.g. a future auth field), sent as given. */
  [extra: string]: Value | undefined;
}
export interface Ops {
  t: "ops";
  cid: number;
  ops: Op[];
}
export interface MsgOut {
  t: "msg";
  to?: string;
  data: Value;
}
export interface Ping {
  t: "ping";
  id?: number;
}
export interface Leave {
  t: "leave";
}
/** Lists the listed rooms of a type (§5.7), answered with `rooms` or `error{bad_room}`. */
export interface ListRooms {
  t: "list_rooms";
  /** Echoed in the answer. Default 0. */
  id?: number;
  type: string;
}
export type ClientMessage = Hello | Join | Ops | MsgOut | Ping | Leave | ListRooms;

// ---- server messages (§6)

export interface Welcome {
  t: "welcome";
  v: number;
  node: string;
  time: number;
  max_frame: number;
  max_ops: number;
}
export interface Joined {
  t: "joined";
  room: string;
  type: string;
  player: string;
  session: string;
  resumed: boolean;
  cid: number;
  members: Member[];
  snapshot: Snapshot | null;
}
export interface Resync {
  t: "resync";
  room: string;
  snapshot: Snapshot;
  cid: number;
  members: Member[];
}
export interface Ack {
  t: "ack";
  cid: number;
  seq: number;
}
export interface Reject {
  t: "reject";
  cid: number;
  code: string;
  message: string;
}
export interface MsgIn {
  t: "msg";
  room: string;
  from: string | null;
  to: string | null;
  data: Value;
}
export interface Presence {
  t: "presence";
  room: string;
  player: string;
  status: PresenceStatus;
}
export interface Pong {
  t: "pong";
  id: number;
  time: number;
}
export interface ErrorMsg {
  t: "error";
  code: string;
  message: string;
  /** With retryable codes such as `overloaded` and `rate_limited`: wait about this many ms. */
  retry_ms?: number;
}
/** One listed room (§6.11), as `rooms` and `GET /rooms` describe it. */
export interface RoomListing {
  /** Room id (join it by id, or let `join_or_create` choose it). */
  room: string;
  type: string;
  /** Seats taken: members connected or within their grace, and seats reserved by `join_or_create`. */
  members: number;
  max_players: number;
  /** Set by the game backend; `{}` if none. */
  metadata: ValueMap;
  /** Creation time, ms since the Unix epoch. */
  created: number;
}
/** Answer to `list_rooms` (§6.11): listed rooms of `type`, oldest first. */
export interface Rooms {
  t: "rooms";
  id: number;
  type: string;
  rooms: RoomListing[];
}
export interface Batch {
  t: "batch";
  msgs: ServerMessage[];
}
export type ServerMessage =
  | Welcome
  | Joined
  | Delta
  | Resync
  | Ack
  | Reject
  | MsgIn
  | Presence
  | Pong
  | ErrorMsg
  | Rooms
  | Batch;

// ---- decoding

const rejectExtensions: ExtensionCodecType<undefined> = {
  tryToEncode: () => null,
  decode: () => {
    throw new FrameError("extension types are not state values");
  },
};

const decoder = new Decoder({
  extensionCodec: rejectExtensions,
  mapKeyConverter: (key: unknown) => {
    if (typeof key !== "string") throw new FrameError("map keys must be strings");
    return key;
  },
});

/** A typed view of one decoded map, with the frame's float positions for integer checks. */
class Fields {
  constructor(
    private readonly obj: ValueMap,
    private readonly path: (string | number)[],
    private readonly floats: FloatPaths,
    private readonly what: string,
  ) {}

  private fail(key: string, expected: string): never {
    throw new FrameError(`${this.what}.${key}: expected ${expected}`);
  }

  has(key: string): boolean {
    return Object.prototype.hasOwnProperty.call(this.obj, key);
  }

  /** The field, or undefined when absent. */
  raw(key: string): Value | undefined {
    return this.has(key) ? this.obj[key] : undefined;
  }

  required(key: string): Value {
    if (!this.has(key)) throw new FrameError(`${this.what}: missing field ${key}`);
    return this.obj[key]!;
  }

  str(key: string): string {
    const v = this.required(key);
    return typeof v === "string" ? v : this.fail(key, "a string");
  }

  bool(key: string): boolean {
    const v = this.required(key);
    return typeof v === "boolean" ? v : this.fail(key, "a boolean");
  }

  /** An unsigned integer within `max`, written as a MessagePack integer (never a float). */
  uint(key: string, max = Number.MAX_SAFE_INTEGER + 1): number {
    const v = this.required(key);
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > max || this.floats.has(pathKey([...this.path, key]))) {
      this.fail(key, max === 0xffffffff ? "a u32" : "a u64 (an unsigned integer)");
    }
    return v;
  }

  /** "X or nil" (server) / optional (client): absent and nil are both null. */
  nullable<T>(key: string, get: (key: string) => T): T | null {
    const v = this.raw(key);
    return v === undefined || v === null ? null : get.call(this, key);
  }

  value(key: string): Value {
    return checkDepth(this.required(key), `${this.what}.${key}`);
  }

  map(key: string): ValueMap {
    const v = this.required(key);
    return isMap(v) ? v : this.fail(key, "a map");
  }

  array(key: string): Value[] {
    const v = this.required(key);
    return Array.isArray(v) ? v : this.fail(key, "an array");
  }

  child(key: string, v: Value, what: string): Fields;
  child(index: number, v: Value, what: string, parentKey: string): Fields;
  child(keyOrIndex: string | number, v: Value, what: string, parentKey?: string): Fields {
    if (!isMap(v)) throw new FrameError(`${what}: expected a map`);
    const path = parentKey === undefined ? [...this.path, keyOrIndex] : [...this.path, parentKey, keyOrIndex];
    return new Fields(v, path, this.floats, what);
  }
}

function checkDepth(v: Value, what: string): Value {
  if (depthOf(v) > MAX_DEPTH) throw new FrameError(`${what}: nests more than ${MAX_DEPTH} levels`);
  return v;
}

function decodeRoot(bytes: Uint8Array): { f: Fields; t: string } {
  const floats = checkFrame(bytes);
  let root: unknown;
  try {
    root = decoder.decode(bytes);
  } catch (e) {
    throw e instanceof FrameError ? e : new FrameError(`not MessagePack: ${(e as Error).message}`);
  }
  if (!isMap(root as Value)) throw new FrameError("a frame must be a map");
  const f = new Fields(root as ValueMap, [], floats, "message");
  const t = f.raw("t");
  if (typeof t !== "string") throw new FrameError("missing field t");
  return { f, t };
}

function parseOp(f: Fields): Op {
  const kind = f.str("op");
  const path = f.str("path");
  switch (kind) {
    case "set":
      return { op: "set", path, value: f.value("value") };
    case "del":
      return { op: "del", path };
    case "inc": {
      const by = f.required("by");
      if (typeof by !== "number") throw new FrameError("op inc: by must be a number");
      return { op: "inc", path, by };
    }
    case "merge": {
      const value = f.value("value");
      if (!isMap(value)) throw new FrameError("op merge: value must be a map");
      return { op: "merge", path, value };
    }
    default:
      throw new FrameError(`unknown op kind ${JSON.stringify(kind)}`);
  }
}

function parseOps(f: Fields): Op[] {
  return f.array("ops").map((v, i) => parseOp(f.child(i, v, `ops[${i}]`, "ops")));
}

function parseMembers(f: Fields): Member[] {
  return f.array("members").map((v, i) => {
    const m = f.child(i, v, `members[${i}]`, "members");
    return { player: m.str("player"), status: presenceStatus(m.str("status")) };
  });
}

function presenceStatus(s: string): PresenceStatus {
  if (!PRESENCE.includes(s)) throw new FrameError(`unknown presence status ${JSON.stringify(s)}`);
  return s as PresenceStatus;
}

function parseSnapshot(f: Fields): Snapshot {
  const state = f.value("state");
  if (!isMap(state)) throw new FrameError("snapshot.state must be a map");
  return { epoch: f.uint("epoch"), seq: f.uint("seq"), state, hash: f.str("hash") };
}

function parseListing(f: Fields): RoomListing {
  const metadata = f.value("metadata");
  if (!isMap(metadata)) throw new FrameError("rooms[].metadata must be a map");
  return {
    room: f.str("room"),
    type: f.str("type"),
    members: f.uint("members", 0xffffffff),
    max_players: f.uint("max_players", 0xffffffff),
    metadata,
    created: f.uint("created"),
  };
}

function parseServer(f: Fields, t: string): ServerMessage {
  switch (t) {
    case "welcome":
      return {
        t,
        v: f.uint("v", 0xffffffff),
        node: f.str("node"),
        time: f.uint("time"),
        max_frame: f.uint("max_frame"),
        max_ops: f.uint("max_ops"),
      };
    case "joined": {
      const snap = f.raw("snapshot");
      return {
        t,
        room: f.str("room"),
        type: f.str("type"),
        player: f.str("player"),
        session: f.str("session"),
        resumed: f.bool("resumed"),
        cid: f.uint("cid"),
        members: parseMembers(f),
        snapshot: snap === undefined || snap === null ? null : parseSnapshot(f.child("snapshot", snap, "snapshot")),
      };
    }
    case "delta":
      return {
        t,
        room: f.str("room"),
        epoch: f.uint("epoch"),
        seq: f.uint("seq"),
        cid: f.nullable("cid", f.uint),
        by: f.nullable("by", f.str),
        ops: parseOps(f),
      };
    case "resync":
      return {
        t,
        room: f.str("room"),
        snapshot: parseSnapshot(f.child("snapshot", f.required("snapshot"), "snapshot")),
        cid: f.uint("cid"),
        members: parseMembers(f),
      };
    case "ack":
      return { t, cid: f.uint("cid"), seq: f.uint("seq") };
    case "reject":
      return { t, cid: f.uint("cid"), code: f.str("code"), message: f.str("message") };
    case "msg":
      return { t, room: f.str("room"), from: f.nullable("from", f.str), to: f.nullable("to", f.str), data: f.value("data") };
    case "presence":
      return { t, room: f.str("room"), player: f.str("player"), status: presenceStatus(f.str("status")) };
    case "pong":
      return { t, id: f.uint("id"), time: f.uint("time") };
    case "error": {
      const msg: ErrorMsg = { t, code: f.str("code"), message: f.str("message") };
      const retryMs = f.nullable("retry_ms", f.uint);
      if (retryMs !== null) msg.retry_ms = retryMs;
      return msg;
    }
    case "rooms":
      return {
        t,
        id: f.uint("id"),
        type: f.str("type"),
        rooms: f.array("rooms").map((v, i) => parseListing(f.child(i, v, `rooms[${i}]`, "rooms"))),
      };
    case "batch":
      return {
        t,
        msgs: f.array("msgs").map((v, i) => {
          const m = f.child(i, v, `msgs[${i}]`, "msgs");
          const mt = m.raw("t");
          if (typeof mt !== "string") throw new FrameError(`msgs[${i}]: missing field t`);
          return parseServer(m, mt);
        }),
      };
    default:
      throw new FrameError(`unknown message type ${JSON.stringify(t)}`);
  }
}

/** Decodes a server frame strictly (§3.4). Throws FrameError. */
export function decodeServer(bytes: Uint8Array): ServerMessage {
  const { f, t } = decodeRoot(bytes);
  return parseServer(f, t);
}

/** Decodes a client frame strictly, as a server does (for tests and tools). Throws FrameError. */
export function decodeClient(bytes: Uint8Array): ClientMessage {
  const { f, t } = decodeRoot(bytes);
  const opt = (key: string): string | undefined => f.nullable(key, f.str) ?? undefined;
  const optU64 = (key: string): number | undefined => f.nullable(key, f.uint) ?? undefined;
  switch (t) {
    case "hello": {
      const m: Hello = { t, v: f.uint("v", 0xffffffff) };
      const client = opt("client");
      if (client !== undefined) m.client = client;
      return m;
    }
    case "join": {
      const choose = f.nullable("join_or_create", f.bool);
      // `room` may be omitted only when the server chooses (§5.2).
      const room = choose === true ? (f.nullable("room", f.str) ?? "") : f.str("room");
      const m: Join = { t, room, type: f.str("type") };
      for (const key of ["token", "session"] as const) {
        const v = opt(key);
        if (v !== undefined) m[key] = v;
      }
      for (const key of ["epoch", "seq", "attempt"] as const) {
        const v = optU64(key);
        if (v !== undefined) m[key] = v;
      }
      if (choose !== null) m.join_or_create = choose;
      return m;
    }
    case "ops":
      return { t, cid: f.uint("cid"), ops: parseOps(f) };
    case "msg": {
      const to = opt("to");
      const data = f.value("data");
      return to === undefined ? { t, data } : { t, to, data };
    }
    case "ping": {
      if (f.has("id") && f.raw("id") === null) throw new FrameError("ping.id must not be nil");
      return f.has("id") ? { t, id: f.uint("id") } : { t };
    }
    case "leave":
      return { t };
    case "list_rooms": {
      const id = optU64("id");
      const type = f.str("type");
      return id === undefined ? { t, type } : { t, id, type };
    }
    default:
      throw new FrameError(`unknown message type ${JSON.stringify(t)}`);
  }
}

// ---- encoding

const encoder = new Encoder({ ignoreUndefined: true });

/**
 * Encodes a message: `t` first, then the fields in the order of the object (the constructors
 * in this package use the table order of PROTOCOL.md). Absent optional fields (undefined) are
 * omitted; integral numbers become MessagePack integers, other numbers float64.
 */
export function encodeMessage(msg: ClientMessage | ServerMessage): Uint8Array {
  const ordered: Record<string, unknown> = { t: msg.t };
  for (const [k, v] of Object.entries(msg)) if (k !== "t") ordered[k] = v;
  return encoder.encode(ordered);
}

/** Decodes one state value (not a message) with the same strict rules, e.g. a stored snapshot. */
export function decodeValue(bytes: Uint8Array): Value {
  checkFrame(bytes);
  let v: unknown;
  try {
    v = decoder.decode(bytes);
  } catch (e) {
    throw e instanceof FrameError ? e : new FrameError(`not MessagePack: ${(e as Error).message}`);
  }
  return checkDepth(v as Value, "value");
}
