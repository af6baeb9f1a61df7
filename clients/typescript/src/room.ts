// The client: `Client.join` (a room by id) and `Client.joinOrCreate` (a room the server
// chooses) open a connection to one room (one room per connection in protocol v1) and return
// a `Room`, which mirrors the room's state, sends op batches and ephemeral messages, and
// reconnects and resumes by itself (PROTOCOL.md §19). `Client.listRooms` lists the listed
// rooms of a type on a short-lived connection of its own (or over HTTP).

import { Emitter } from "./emitter.js";
import {
  ClosedError,
  GamerelayError,
  InvalidRequestError,
  joinError,
  NotConnectedError,
  ProtocolError,
  RejectedError,
  ServerError,
  SessionExpiredError,
  shouldReconnect,
  retryHint,
  TimeoutError,
} from "./errors.js";
import { Mirror, type ChangeCallback } from "./mirror.js";
import {
  decodeServer,
  encodeMessage,
  PROTOCOL_VERSION,
  type Delta,
  type Join,
  type Joined,
  type Op,
  type PresenceStatus,
  type RoomListing,
  type ServerMessage,
  type Snapshot,
  type Welcome,
} from "./protocol.js";
import { getIn, splitPath, valueProblem, type Value, type ValueMap } from "./values.js";

/** The part of the WebSocket API the client uses: the browser's, or the `ws` package's. */
export interface WebSocketLike {
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ReconnectOptions {
  /** Reconnect and resume when the connection drops. Default true. */
  enabled: boolean;
  /** Wait before the first attempt, in ms. Default 100. */
  initialDelayMs: number;
  /** Longest wait between attempts, in ms. Default 5000. */
  maxDelayMs: number;
  /** Fraction of each wait that is random, 0..1. Default 0.5 (waits 50-100 % of it). */
  jitter: number;
  /**
   * Give up after this many failed attempts in a row. Default 60 (minutes of trying with the
   * default delays; a node's reconnect grace is 30 s by default, after which a resume gets
   * `session_expired` anyway). Infinity keeps trying.
   */
  maxAttempts: number;
}

export interface ClientOptions {
  /** WebSocket implementation. Default: `globalThis.WebSocket` (browsers, Node >= 22); pass `ws` on older Node. */
  WebSocket?: WebSocketConstructor;
  /** Sent in `hello` for the server's logs. */
  clientName?: string;
  /** Append `?room=<id>` to the URL so a load balancer routes a room's players together. Default true. */
  roomQuery?: boolean;
  reconnect?: Partial<ReconnectOptions>;
  /** From opening the socket to `joined`, per attempt. Default 10000 ms. */
  handshakeTimeoutMs?: number;
  /** Interval of `ping` messages (keepalive and round-trip time). Default 5000 ms; 0 disables. */
  pingIntervalMs?: number;
  /** A ping unanswered this long (nothing at all received) means the connection is lost. Default 20000 ms. */
  idleTimeoutMs?: number;
  /** Most op batches sent and not yet settled. Default 1024. */
  maxPendingOps?: number;
}

export interface JoinOptions {
  /** Room type (`doc`, `arena`); must match an existing room's type. */
  type: string;
  /**
   * Join token (`join.token`): a JWT from your game backend naming the player and the rooms it
   * may join. Required by nodes with `--auth-key` (the player id is then the token's `sub`);
   * ignored by nodes in insecure development mode (docs/SECURITY.md).
   */
  token?: string;
  /** More `join` fields, sent as given on every join and resume (for extensions such as auth). */
  fields?: Record<string, Value>;
}

/** Options of `Client.joinOrCreate`: those of `join` but the type, which is its first argument. */
export type JoinOrCreateOptions = Omit<JoinOptions, "type">;

export interface ListRoomsOptions {
  /** Give up after this long (opening the socket included). Default: the client's `handshakeTimeoutMs`. */
  timeoutMs?: number;
  /**
   * `ws` (default): a short-lived WebSocket to the client's URL (`hello`, `list_rooms`, the
   * `rooms` answer, close). `http`: `GET /rooms?type=T` on the same host, the path's last
   * segment (`/ws`) replaced by `rooms`; needs `fetch` (browsers, Node >= 18).
   */
  via?: "ws" | "http";
}

export type ConnectionState = "connected" | "reconnecting" | "closed";

export interface ConnectionStatus {
  state: ConnectionState;
  /** Node serving the connection (from `welcome`), or the last one while reconnecting. */
  node: string | null;
  /** Reconnect attempt number while reconnecting. */
  attempt?: number;
}

/** The outcome of an applied op batch. */
export interface OpResult {
  cid: number;
  /** The seq of the batch's delta. */
  seq: number;
}

export interface RoomEvents {
  /** The state changed (after each applied delta or snapshot). */
  state: [state: ValueMap];
  /** A delta was applied. */
  delta: [delta: Delta];
  /** The state was replaced by a snapshot. */
  snapshot: [snapshot: Snapshot, reason: "resumed" | "resync"];
  presence: [event: { player: string; status: PresenceStatus }];
  /** An ephemeral message from another player (from null: the server). */
  message: [event: { from: string | null; to: string | null; data: Value }];
  status: [status: ConnectionStatus];
  disconnected: [event: { code: number | null; reason: string }];
  reconnecting: [event: { attempt: number; delayMs: number }];
  resumed: [event: { node: string; withSnapshot: boolean; downtimeMs: number; attempts: number }];
  /** A round trip was measured (keepalive pings and `ping()`). */
  pong: [rttMs: number];
  /** A problem that does not end the room: a server `error`, a hash mismatch, a broken history. */
  error: [error: GamerelayError];
  /** The room is closed for good (left, closed, refused, or reconnecting gave up). */
  closed: [error: GamerelayError];
}

const DEFAULT_RECONNECT: ReconnectOptions = {
  enabled: true,
  initialDelayMs: 100,
  maxDelayMs: 5000,
  jitter: 0.5,
  maxAttempts: 60,
};

interface Settings {
  WebSocket: WebSocketConstructor;
  clientName: string;
  roomQuery: boolean;
  reconnect: ReconnectOptions;
  handshakeTimeoutMs: number;
  pingIntervalMs: number;
  idleTimeoutMs: number;
  maxPendingOps: number;
}

interface Handshake {
  ws: WebSocketLike;
  welcome: Welcome | null;
  joined: Joined;
  /** Messages that came in the same frame after `joined`. */
  rest: ServerMessage[];
}

interface Pending {
  cid: number;
  frame: Uint8Array;
  resolve: (r: OpResult) => void;
  reject: (e: GamerelayError) => void;
}

interface PingWait {
  sent: number;
  settle?: (rtt: number | GamerelayError) => void;
}

const ROOM_ID = /^[A-Za-z0-9_.:-]{1,128}$/;

function now(): number {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

function toBytes(data: unknown): Uint8Array | null {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null; // a text frame
}

/** The error of a short exchange (a handshake, a listing) whose socket closed first. */
function closedBefore(ev: { code: number; reason: string }, fallback: string): ClosedError {
  const code = typeof ev.code === "number" ? ev.code : null;
  return new ClosedError(code, ev.reason || fallback, code === null || shouldReconnect(code));
}

function detach(ws: WebSocketLike): void {
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
}

function safeClose(ws: WebSocketLike, code = 1000, reason = ""): void {
  try {
    ws.close(code, reason);
  } catch {
    // already closed, or still connecting in an implementation that refuses close()
  }
}

/** The wait before reconnect attempt `attempt` (1-based), jitter included. */
export function backoffDelay(policy: ReconnectOptions, attempt: number, random = Math.random): number {
  const base = Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** Math.min(attempt - 1, 30));
  const jitter = Math.min(1, Math.max(0, policy.jitter));
  return base * (1 - jitter * random());
}

/** Entry point: holds the server URL and the options shared by the rooms it joins. */
export class Client {
  private readonly settings: Settings;

  constructor(
    /** The server's WebSocket endpoint, e.g. `ws://localhost:8080/ws`. */
    readonly url: string,
    options: ClientOptions = {},
  ) {
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new InvalidRequestError("no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package)");
    this.settings = {
      WebSocket: WS,
      clientName: options.clientName ?? "gamerelay-client-ts/0.1.0",
      roomQuery: options.roomQuery ?? true,
      reconnect: { ...DEFAULT_RECONNECT, ...options.reconnect },
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000,
      pingIntervalMs: options.pingIntervalMs ?? 5_000,
      idleTimeoutMs: options.idleTimeoutMs ?? 20_000,
      maxPendingOps: options.maxPendingOps ?? 1024,
    };
  }

  /** Joins `roomId` as a new player. Rejects with a JoinError (bad_room, room_full, ...) or ClosedError/TimeoutError. */
  async join(roomId: string, options: JoinOptions): Promise<Room> {
    if (!ROOM_ID.test(roomId)) throw new InvalidRequestError(`room id ${JSON.stringify(roomId)} is not 1-128 of [A-Za-z0-9_.:-]`);
    const room = new Room((id) => this.roomUrl(id), roomId, options, this.settings);
    await room.start();
    return room;
  }

  /**
   * Joins a room of `type` that the server chooses (`join_or_create`, PROTOCOL.md §4.5): a
   * seat in the oldest listed room of that type with one free, else a new listed room
   * (`<type>-<12 hex>`). The room's `id` is the server's choice, and reconnects resume there.
   * Rejects like `join` (JoinError `bad_room` for an unknown type, `forbidden`, `overloaded`, ...).
   */
  async joinOrCreate(type: string, options: JoinOrCreateOptions = {}): Promise<Room> {
    if (typeof type !== "string" || type === "") throw new InvalidRequestError("joinOrCreate needs a room type");
    const room = new Room((id) => this.roomUrl(id), "", { ...options, type }, this.settings, true);
    await room.start();
    return room;
  }

  /**
   * The listed rooms of `type`, oldest first (full ones included: `members == max_players`).
   * Rejects with ServerError (`bad_room` for an unknown type, `rate_limited`, ...),
   * TimeoutError, ClosedError, ProtocolError or InvalidRequestError.
   */
  async listRooms(type: string, options: ListRoomsOptions = {}): Promise<RoomListing[]> {
    if (typeof type !== "string" || type === "") throw new InvalidRequestError("listRooms needs a room type");
    const timeoutMs = options.timeoutMs ?? this.settings.handshakeTimeoutMs;
    if (options.via === "http") return listRoomsHttp(roomsHttpUrl(this.url, type), type, timeoutMs);
    return listRoomsWs(this.settings, this.url, type, timeoutMs);
  }

  /** The URL of a room's connections: with `?room=<id>` for the load balancer, unless the id is not known yet. */
  private roomUrl(roomId: string): string {
    if (!this.settings.roomQuery || roomId === "" || /[?&]room=/.test(this.url)) return this.url;
    return `${this.url}${this.url.includes("?") ? "&" : "?"}room=${roomId}`;
  }
}

/** `list_rooms` on a connection of its own: `hello`, `list_rooms`, the `rooms` answer, close. */
function listRoomsWs(settings: Settings, url: string, type: string, timeoutMs: number): Promise<RoomListing[]> {
  const ID = 1;
  return new Promise<RoomListing[]>((resolve, reject) => {
    let ws: WebSocketLike;
    try {
      ws = new settings.WebSocket(url);
    } catch (e) {
      reject(new ClosedError(null, `cannot open ${url}: ${(e as Error).message}`, true));
      return;
    }
    ws.binaryType = "arraybuffer";
    let done = false;
    const finish = (result: RoomListing[] | GamerelayError): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      detach(ws);
      safeClose(ws, 1000, "listed");
      if (result instanceof GamerelayError) reject(result);
      else resolve(result);
    };
    const timer = setTimeout(() => finish(new TimeoutError(`no \`rooms\` within ${timeoutMs} ms`)), timeoutMs);
    ws.onopen = () => {
      ws.send(encodeMessage({ t: "hello", v: PROTOCOL_VERSION, client: settings.clientName }));
      ws.send(encodeMessage({ t: "list_rooms", id: ID, type }));
    };
    ws.onmessage = (ev) => {
      const bytes = toBytes(ev.data);
      if (!bytes || done) return;
      let msgs: ServerMessage[];
      try {
        msgs = flatten(decodeServer(bytes));
      } catch (e) {
        finish(new ProtocolError(`undecodable frame before \`rooms\`: ${(e as Error).message}`));
        return;
      }
      for (const m of msgs) {
        if (m.t === "welcome" && m.v !== PROTOCOL_VERSION) return finish(new ProtocolError(`server speaks protocol v${m.v}`));
        if (m.t === "rooms" && m.id === ID) return finish(m.rooms);
        if (m.t === "error") return finish(new ServerError(m.code, m.message));
      }
    };
    ws.onclose = (ev) => finish(closedBefore(ev, "connection closed before `rooms`"));
    ws.onerror = () => {
      // `close` follows
    };
  });
}

/** `http(s)://host/.../rooms?type=T` for a client URL `ws(s)://host/.../ws`. */
function roomsHttpUrl(wsUrl: string, type: string): string {
  let u: URL;
  try {
    u = new URL(wsUrl);
  } catch {
    throw new InvalidRequestError(`not a URL: ${wsUrl}`);
  }
  u.protocol = u.protocol === "wss:" ? "https:" : u.protocol === "ws:" ? "http:" : u.protocol;
  u.pathname = u.pathname.replace(/\/[^/]*$/, "") + "/rooms";
  u.search = "";
  u.hash = "";
  u.searchParams.set("type", type);
  return u.toString();
}

/** `GET /rooms?type=T`: `{"type", "rooms": [...]}`, or `{"error": {"code", "message"}}`. */
async function listRoomsHttp(url: string, type: string, timeoutMs: number): Promise<RoomListing[]> {
  const fetchFn = (globalThis as { fetch?: typeof fetch }).fetch;
  if (!fetchFn) throw new InvalidRequestError("no fetch: list rooms over the WebSocket (via: \"ws\")");
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  let status: number;
  let body: unknown;
  try {
    const res = await fetchFn(url, { signal: abort.signal, headers: { accept: "application/json" } });
    status = res.status;
    const text = await res.text();
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
  } catch (e) {
    if (abort.signal.aborted) throw new TimeoutError(`no answer from ${url} within ${timeoutMs} ms`);
    throw new ClosedError(null, `GET ${url}: ${(e as Error).message}`, true);
  } finally {
    clearTimeout(timer);
  }
  const o = body as { type?: unknown; rooms?: unknown; error?: { code?: unknown; message?: unknown } } | undefined;
  if (status < 200 || status > 299) {
    if (o && typeof o.error?.code === "string") throw new ServerError(o.error.code, String(o.error.message ?? ""));
    if (status >= 500) throw new ServerError("unavailable", `GET ${url}: HTTP ${status}`);
    throw new ProtocolError(`GET ${url}: HTTP ${status} without an error body`);
  }
  if (!o || o.type !== type || !Array.isArray(o.rooms)) throw new ProtocolError(`GET ${url}: not a room listing`);
  return o.rooms.map((r, i) => listingFromJson(r, i));
}

function listingFromJson(r: unknown, i: number): RoomListing {
  const o = r as Record<string, unknown>;
  const uint = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
  const meta = o?.metadata;
  if (
    typeof o !== "object" ||
    o === null ||
    typeof o.room !== "string" ||
    typeof o.type !== "string" ||
    !uint(o.members) ||
    !uint(o.max_players) ||
    !uint(o.created) ||
    typeof meta !== "object" ||
    meta === null ||
    Array.isArray(meta)
  ) {
    throw new ProtocolError(`GET /rooms: rooms[${i}] is not a room listing`);
  }
  return {
    room: o.room,
    type: o.type,
    members: o.members,
    max_players: o.max_players,
    metadata: meta as ValueMap,
    created: o.created,
  };
}

/** One joined room: its state mirror, its members, and the requests a player makes. */
export class Room extends Emitter<RoomEvents> {
  private readonly mirror = new Mirror();
  /** This player's id. */
  player = "";
  /** The node serving the connection (from `welcome`). */
  node: string | null = null;
  /** Last measured round-trip time in ms, or null. */
  rtt: number | null = null;
  private session = "";
  /** Resume attempts of this session so far (`join.attempt`, §4.3). */
  private resumeAttempts = 0;
  private _status: ConnectionStatus = { state: "reconnecting", node: null };
  private ws: WebSocketLike | null = null;
  private limits = { maxOps: Infinity, maxFrame: Infinity };
  private nextCid = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly pings = new Map<number, PingWait>();
  private nextPingId = 1;
  private lastRx = 0;
  /** When the oldest keepalive ping still waiting for any answer was sent, or null. */
  private probeSentAt: number | null = null;
  private keepalive: ReturnType<typeof setInterval> | null = null;
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private abortHandshake: (() => void) | null = null;
  private disconnectedAt = 0;
  private leaving: { resolve: () => void } | null = null;
  private terminal: GamerelayError | null = null;
  private roomId: string;

  /** @internal Use `Client.join` or `Client.joinOrCreate`. */
  constructor(
    /** The URL of a connection to a room (its id is "" while `join_or_create` has not chosen yet). */
    private readonly urlFor: (roomId: string) => string,
    roomId: string,
    private readonly joinOptions: JoinOptions,
    private readonly settings: Settings,
    /** The first join lets the server choose the room (`join_or_create`). */
    private readonly joinOrCreate = false,
  ) {
    super();
    this.roomId = roomId;
  }

  /** Room id: the one joined, or the server's choice with `joinOrCreate` (resumes go there). */
  get id(): string {
    return this.roomId;
  }

  /** Room type. */
  get type(): string {
    return this.joinOptions.type;
  }

  /** The mirrored state (read-only: change it with `send`). */
  get state(): ValueMap {
    return this.mirror.state;
  }

  /** Epoch and seq of the mirrored state. */
  get position(): { epoch: number; seq: number } {
    return { epoch: this.mirror.epoch, seq: this.mirror.seq };
  }

  /** Members that have not left, with their presence status. */
  get members(): ReadonlyMap<string, PresenceStatus> {
    return this.mirror.members;
  }

  get status(): ConnectionStatus {
    return this._status;
  }

  /** Whether requests can be sent right now. */
  get connected(): boolean {
    return this._status.state === "connected";
  }

  /** Op batches sent and not yet settled. */
  get pendingOps(): number {
    return this.pending.size;
  }

  /** The value at a `/`-separated path of the state, or undefined. */
  get(path: string): Value | undefined {
    return getIn(this.mirror.state, splitPath(path));
  }

  /**
   * Calls `cb(value, path)` whenever a path matching `pattern` changes; `*` matches any one
   * key (`players/*` fires per player with its whole entry, undefined when it is removed).
   * With `immediate`, also calls it now for every matching path. Returns an unsubscribe function.
   */
  listen(pattern: string, cb: ChangeCallback, options: { immediate?: boolean } = {}): () => void {
    const safe: ChangeCallback = (value, path) => {
      try {
        cb(value, path);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    };
    return this.mirror.listen(pattern, safe, options.immediate ?? false);
  }

  /** Per player: `cb(playerId, entry)` whenever `players/<id>` changes (entry undefined: removed). */
  onPlayer(cb: (player: string, entry: Value | undefined) => void, options: { immediate?: boolean } = {}): () => void {
    return this.listen("players/*", (value, path) => cb(path.slice("players/".length), value), options);
  }

  // ---- requests

  /**
   * Sends an op batch (applied atomically). Resolves with its cid and seq once the server
   * applied it (its delta, or an `ack` after a retry); rejects with RejectedError (nothing
   * applied), InvalidRequestError, or ClosedError. Batches sent while reconnecting are sent
   * after the resume; every unsettled batch is re-sent with its original cid (never applied twice).
   */
  send(ops: Op[]): Promise<OpResult> {
    if (this.terminal) return Promise.reject(this.terminal);
    if (ops.length === 0) return Promise.reject(new InvalidRequestError("an op batch needs at least one op"));
    if (ops.length > this.limits.maxOps) {
      return Promise.reject(new InvalidRequestError(`${ops.length} ops in one batch; the server accepts at most ${this.limits.maxOps}`));
    }
    for (const op of ops) {
      const problem = opProblem(op);
      if (problem) return Promise.reject(new InvalidRequestError(problem));
    }
    if (this.pending.size >= this.settings.maxPendingOps) {
      return Promise.reject(new InvalidRequestError(`${this.pending.size} op batches are already waiting for the server`));
    }
    const cid = this.nextCid;
    const frame = encodeMessage({ t: "ops", cid, ops });
    if (frame.length > this.limits.maxFrame) {
      return Promise.reject(new InvalidRequestError(`frame of ${frame.length} bytes; the server accepts at most ${this.limits.maxFrame}`));
    }
    this.nextCid += 1;
    return new Promise<OpResult>((resolve, reject) => {
      this.pending.set(cid, { cid, frame, resolve, reject });
      if (this.ws && this.connected) this.ws.send(frame);
    });
  }

  set(path: string, value: Value): Promise<OpResult> {
    return this.send([{ op: "set", path, value }]);
  }

  merge(path: string, value: ValueMap): Promise<OpResult> {
    return this.send([{ op: "merge", path, value }]);
  }

  inc(path: string, by: number): Promise<OpResult> {
    return this.send([{ op: "inc", path, by }]);
  }

  del(path: string): Promise<OpResult> {
    return this.send([{ op: "del", path }]);
  }

  /**
   * Sends an ephemeral message to every other member, or to one (`to`). Not stored, not
   * replayed. Throws NotConnectedError while reconnecting (messages are not queued).
   * An unknown recipient is reported later as an `error` event (unknown_player).
   */
  sendMessage(data: Value, options: { to?: string } = {}): void {
    if (this.terminal) throw this.terminal;
    if (!this.ws || !this.connected) throw new NotConnectedError();
    const problem = valueProblem(data);
    if (problem) throw new InvalidRequestError(problem);
    const frame = encodeMessage(options.to === undefined ? { t: "msg", data } : { t: "msg", to: options.to, data });
    if (frame.length > this.limits.maxFrame) throw new InvalidRequestError(`message of ${frame.length} bytes is too large`);
    this.ws.send(frame);
  }

  /** Measures one round trip to the node (ms). */
  ping(): Promise<number> {
    if (this.terminal) return Promise.reject(this.terminal);
    if (!this.ws || !this.connected) return Promise.reject(new NotConnectedError());
    return new Promise((resolve, reject) => {
      const id = this.sendPing((r) => (typeof r === "number" ? resolve(r) : reject(r)));
      this.after(this.settings.idleTimeoutMs, () => {
        const wait = this.pings.get(id);
        if (wait) {
          this.pings.delete(id);
          reject(new TimeoutError(`no pong within ${this.settings.idleTimeoutMs} ms`));
        }
      });
    });
  }

  /** Leaves the room for good (others see `left`); resolves when the server closed the connection. */
  leave(timeoutMs = 5000): Promise<void> {
    if (this.terminal) return Promise.resolve();
    if (!this.ws || !this.connected) {
      this.terminate(new ClosedError(null, "left while disconnected (the server removes the player when its grace ends)"));
      return Promise.resolve();
    }
    this.ws.send(encodeMessage({ t: "leave" }));
    return new Promise((resolve) => {
      this.leaving = { resolve };
      this.after(timeoutMs, () => this.terminate(new ClosedError(null, "left (the server did not close in time)")));
    });
  }

  /**
   * Closes the connection without leaving: the player stays in the room as disconnected
   * until its reconnect grace ends. Pending batches are rejected with ClosedError.
   */
  close(): void {
    this.terminate(new ClosedError(null, "closed by the client"));
  }

  /**
   * Drops the current connection as if the network failed, then reconnects and resumes.
   * For tests and demos.
   */
  simulateDrop(): void {
    if (this.ws && this.connected) this.lost(null, "dropped by the client (simulateDrop)", null);
  }

  // ---- connection

  /** @internal First join. */
  async start(): Promise<void> {
    const hs = await this.handshake(false);
    this.install(hs, false);
  }

  private joinMessage(resume: boolean): Join {
    const o = this.joinOptions;
    const choose = this.joinOrCreate && !resume;
    const m: Join = { t: "join", room: choose ? "" : this.roomId, type: o.type };
    if (o.token !== undefined) m.token = o.token;
    if (choose) m.join_or_create = true;
    if (resume) {
      m.session = this.session;
      if (!this.mirror.stale) {
        m.epoch = this.mirror.epoch;
        m.seq = this.mirror.seq;
      }
      // Every attempt is numbered above the last: the room refuses an older attempt that
      // completes late (`stale_resume`) instead of letting it replace a newer connection.
      m.attempt = ++this.resumeAttempts;
    }
    for (const [k, v] of Object.entries(o.fields ?? {})) if (!(k in m)) m[k] = v;
    return m;
  }

  /** Opens a socket, sends hello + join back to back, and waits for `joined`. */
  private handshake(resume: boolean): Promise<Handshake> {
    return new Promise<Handshake>((resolve, reject) => {
      const url = this.urlFor(this.roomId); // no ?room= while join_or_create has not chosen
      let ws: WebSocketLike;
      try {
        ws = new this.settings.WebSocket(url);
      } catch (e) {
        reject(new ClosedError(null, `cannot open ${url}: ${(e as Error).message}`, true));
        return;
      }
      ws.binaryType = "arraybuffer";
      let welcome: Welcome | null = null;
      let done = false;
      const finish = (err: GamerelayError | null, hs?: Handshake): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.timers.delete(timer);
        this.abortHandshake = null;
        if (err || !hs) {
          detach(ws);
          safeClose(ws);
          reject(err);
        } else {
          resolve(hs);
        }
      };
      const timer = this.after(this.settings.handshakeTimeoutMs, () =>
        finish(new TimeoutError(`no \`joined\` within ${this.settings.handshakeTimeoutMs} ms`)),
      );
      this.abortHandshake = () => finish(new ClosedError(null, "closed by the client"));
      ws.onopen = () => {
        ws.send(encodeMessage({ t: "hello", v: PROTOCOL_VERSION, client: this.settings.clientName }));
        ws.send(encodeMessage(this.joinMessage(resume)));
      };
      ws.onmessage = (ev) => {
        const bytes = toBytes(ev.data);
        if (!bytes || done) return;
        let msgs: ServerMessage[];
        try {
          msgs = flatten(decodeServer(bytes));
        } catch (e) {
          finish(new ProtocolError(`undecodable frame during the handshake: ${(e as Error).message}`));
          return;
        }
        for (let i = 0; i < msgs.length; i++) {
          const m = msgs[i]!;
          if (m.t === "welcome") {
            if (m.v !== PROTOCOL_VERSION) return finish(new ProtocolError(`server speaks protocol v${m.v}`));
            welcome = m;
          } else if (m.t === "joined") {
            return finish(null, { ws, welcome, joined: m, rest: msgs.slice(i + 1) });
          } else if (m.t === "error") {
            return finish(joinError(m.code, m.message));
          }
        }
      };
      ws.onclose = (ev) => finish(closedBefore(ev, "connection closed during the handshake"));
      ws.onerror = () => {
        // `close` follows with the details a browser is willing to give
      };
    });
  }

  /** Takes a completed handshake: mirror, session, live socket, re-sent batches. */
  private install(hs: Handshake, resumed: boolean): void {
    const j = hs.joined;
    if (resumed && (!j.resumed || j.player !== this.player)) {
      safeClose(hs.ws);
      throw new SessionExpiredError(`the resume of ${this.player} was answered as a new player ${j.player}`);
    }
    if (!resumed) {
      // With join_or_create, `joined.room` is the server's choice: every resume goes there.
      if (this.joinOrCreate && !ROOM_ID.test(j.room)) {
        safeClose(hs.ws);
        throw new ProtocolError(`join_or_create answered with the room id ${JSON.stringify(j.room)}`);
      }
      this.roomId = j.room || this.roomId;
    }
    this.player = j.player;
    this.session = j.session;
    this.node = hs.welcome?.node ?? null;
    this.limits = {
      maxOps: hs.welcome?.max_ops ?? Infinity,
      maxFrame: hs.welcome?.max_frame ?? Infinity,
    };
    this.nextCid = Math.max(this.nextCid, j.cid + 1);
    this.mirror.setMembers(j.members);
    if (j.snapshot) {
      this.installSnapshot(j.snapshot);
      if (resumed) this.emit("snapshot", j.snapshot, "resumed");
    } else if (!resumed || this.mirror.stale) {
      safeClose(hs.ws);
      throw new ProtocolError("`joined` carries no snapshot although the client has no usable state");
    }
    this.ws = hs.ws;
    this.ws.onmessage = (ev) => this.onFrame(ev.data);
    this.ws.onclose = (ev) => this.onClose(typeof ev.code === "number" ? ev.code : null, ev.reason ?? "");
    this.ws.onerror = () => {};
    this.lastRx = now();
    this.setStatus({ state: "connected", node: this.node });
    this.startKeepalive();
    for (const p of this.pending.values()) this.ws.send(p.frame);
    if (j.snapshot) this.emit("state", this.mirror.state);
    this.handleAll(hs.rest);
  }

  private installSnapshot(snapshot: Snapshot): void {
    const actual = this.mirror.reset(snapshot);
    if (actual !== snapshot.hash) {
      this.emit("error", new ProtocolError(`snapshot seq ${snapshot.seq}: state hash ${actual}, expected ${snapshot.hash}`));
    }
  }

  private onFrame(data: unknown): void {
    this.lastRx = now();
    const bytes = toBytes(data);
    if (!bytes) return;
    let msg: ServerMessage;
    try {
      msg = decodeServer(bytes);
    } catch (e) {
      // If it was a delta, the next one reveals the gap and repairs it.
      this.emit("error", new ProtocolError(`ignoring an undecodable frame: ${(e as Error).message}`));
      return;
    }
    this.handleAll(flatten(msg));
  }

  private handleAll(msgs: ServerMessage[]): void {
    let changed = false;
    for (const m of msgs) {
      if (this.terminal) return;
      changed = this.handle(m) || changed;
    }
    if (changed) this.emit("state", this.mirror.state);
    if (this.mirror.stale && this.ws && this.connected) {
      // A gap or a delta that does not apply: resume at once, asking for a snapshot.
      this.lost(null, "mirror out of step; resuming for a snapshot", 0);
    }
  }

  /** Handles one message; returns whether the state changed. */
  private handle(m: ServerMessage): boolean {
    switch (m.t) {
      case "delta": {
        let applied = false;
        try {
          applied = this.mirror.applyDelta(m);
        } catch (e) {
          this.emit("error", new ProtocolError((e as Error).message));
        }
        if (applied) this.emit("delta", m);
        if (m.by === this.player && m.cid !== null) this.settle(m.cid, { cid: m.cid, seq: m.seq });
        return applied;
      }
      case "resync":
        this.mirror.setMembers(m.members);
        this.installSnapshot(m.snapshot);
        this.emit("snapshot", m.snapshot, "resync");
        // Acks and rejects may have been dropped while lagging: re-send every unsettled batch
        // with its cid (§13). Applied ones get `ack`, refused ones `reject` again, and one
        // still in flight is applied once (its retry gets `ack`). Not only cids <= m.cid: a
        // rejected batch above it would otherwise wait forever.
        for (const p of this.pending.values()) this.ws?.send(p.frame);
        return true;
      case "ack":
        this.settle(m.cid, { cid: m.cid, seq: m.seq });
        return false;
      case "reject": {
        const p = this.pending.get(m.cid);
        if (p) {
          this.pending.delete(m.cid);
          p.reject(new RejectedError(m.cid, m.code, m.message));
        }
        return false;
      }
      case "msg":
        this.emit("message", { from: m.from, to: m.to, data: m.data });
        return false;
      case "presence":
        this.mirror.presence(m.player, m.status);
        this.emit("presence", { player: m.player, status: m.status });
        return false;
      case "pong": {
        const wait = this.pings.get(m.id);
        if (wait) {
          this.pings.delete(m.id);
          const rtt = now() - wait.sent;
          this.rtt = rtt;
          wait.settle?.(rtt);
          this.emit("pong", rtt);
        }
        return false;
      }
      case "error":
        this.emit("error", new ServerError(m.code, m.message));
        return false;
      default:
        return false; // welcome / joined / batch (flattened) outside a handshake: nothing to do
    }
  }

  private settle(cid: number, result: OpResult): void {
    const p = this.pending.get(cid);
    if (!p) return;
    this.pending.delete(cid);
    p.resolve(result);
  }

  private onClose(code: number | null, reason: string): void {
    if (this.leaving) {
      this.terminate(new ClosedError(code, reason || "left"));
      return;
    }
    if (code !== null && !shouldReconnect(code)) {
      this.terminate(new ClosedError(code, reason));
      return;
    }
    this.lost(code, reason || "connection lost", code === 1012 ? retryHint(reason) : null);
  }

  /** The live connection is gone: reconnect and resume (or stop when reconnecting is off). */
  private lost(code: number | null, reason: string, firstDelay: number | null): void {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      detach(ws);
      safeClose(ws, 1000, "reconnecting");
    }
    this.stopKeepalive();
    this.failPings(new NotConnectedError("the connection was lost"));
    if (!this.settings.reconnect.enabled) {
      this.terminate(new ClosedError(code, reason));
      return;
    }
    this.disconnectedAt = now();
    this.emit("disconnected", { code, reason });
    void this.reconnect(firstDelay);
  }

  private async reconnect(firstDelay: number | null): Promise<void> {
    const policy = this.settings.reconnect;
    let lastError = "";
    for (let attempt = 1; ; attempt++) {
      if (this.terminal) return;
      if (attempt > policy.maxAttempts) {
        this.terminate(new ClosedError(null, `gave up reconnecting after ${policy.maxAttempts} attempts: ${lastError}`));
        return;
      }
      const delayMs = attempt === 1 && firstDelay !== null ? firstDelay : backoffDelay(policy, attempt);
      this.setStatus({ state: "reconnecting", node: this.node, attempt });
      this.emit("reconnecting", { attempt, delayMs });
      await new Promise<void>((resolve) => this.after(delayMs, resolve));
      if (this.terminal) return;
      let hs: Handshake;
      try {
        hs = await this.handshake(true);
      } catch (e) {
        if (this.terminal) return;
        const err = e instanceof GamerelayError ? e : new ProtocolError(String(e));
        if (err.retryable) {
          lastError = err.message;
          continue;
        }
        this.terminate(err);
        return;
      }
      if (this.terminal) {
        safeClose(hs.ws);
        return;
      }
      try {
        this.install(hs, true);
      } catch (e) {
        this.terminate(e instanceof GamerelayError ? e : new ProtocolError(String(e)));
        return;
      }
      this.emit("resumed", {
        node: this.node ?? "",
        withSnapshot: hs.joined.snapshot !== null,
        downtimeMs: now() - this.disconnectedAt,
        attempts: attempt,
      });
      return;
    }
  }

  private startKeepalive(): void {
    this.stopKeepalive();
    this.probeSentAt = null;
    const idle = this.settings.idleTimeoutMs;
    const every = this.settings.pingIntervalMs > 0 ? Math.min(this.settings.pingIntervalMs, idle / 2) : idle / 2;
    this.keepalive = setInterval(() => {
      if (!this.ws || !this.connected) return;
      const t = now();
      // Lost = a ping unanswered (and nothing else received) for the idle timeout. Counted from
      // the ping, not from the last frame: browsers throttle timers in background tabs, and a
      // late tick must not be mistaken for a silent connection.
      if (this.probeSentAt !== null) {
        if (this.lastRx >= this.probeSentAt) this.probeSentAt = null;
        else if (t - this.probeSentAt > idle) {
          this.lost(null, `nothing received for ${idle} ms after a ping`, null);
          return;
        }
      }
      for (const [id, wait] of this.pings) {
        if (!wait.settle && t - wait.sent > idle) this.pings.delete(id);
      }
      if (this.settings.pingIntervalMs > 0 || t - this.lastRx > idle / 2) {
        this.sendPing();
        if (this.probeSentAt === null) this.probeSentAt = t;
      }
    }, every);
  }

  private stopKeepalive(): void {
    if (this.keepalive !== null) clearInterval(this.keepalive);
    this.keepalive = null;
  }

  private sendPing(settle?: (rtt: number | GamerelayError) => void): number {
    const id = this.nextPingId++;
    const wait: PingWait = { sent: now() };
    if (settle) wait.settle = settle;
    this.pings.set(id, wait);
    this.ws?.send(encodeMessage({ t: "ping", id }));
    return id;
  }

  private failPings(err: GamerelayError): void {
    for (const wait of this.pings.values()) wait.settle?.(err);
    this.pings.clear();
  }

  private after(ms: number, fn: () => void): ReturnType<typeof setTimeout> {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  private setStatus(status: ConnectionStatus): void {
    this._status = status;
    this.emit("status", status);
  }

  /** Ends the room for good: every waiter gets `err`; the last event is `closed`. */
  private terminate(err: GamerelayError): void {
    if (this.terminal) return;
    this.terminal = err;
    this.abortHandshake?.();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.stopKeepalive();
    if (this.ws) {
      detach(this.ws);
      safeClose(this.ws, 1000, "client closed");
      this.ws = null;
    }
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.failPings(err);
    this.setStatus({ state: "closed", node: this.node });
    this.leaving?.resolve();
    this.leaving = null;
    this.emit("closed", err);
  }
}

function flatten(msg: ServerMessage, out: ServerMessage[] = []): ServerMessage[] {
  if (msg.t === "batch") for (const m of msg.msgs) flatten(m, out);
  else out.push(msg);
  return out;
}

function opProblem(op: Op): string | null {
  if (typeof op !== "object" || op === null || typeof op.path !== "string" || op.path === "") return "an op needs a path";
  switch (op.op) {
    case "set":
      return valueProblem(op.value);
    case "del":
      return null;
    case "inc":
      return typeof op.by === "number" && Number.isFinite(op.by) ? null : "inc.by must be a finite number";
    case "merge":
      if (typeof op.value !== "object" || op.value === null || Array.isArray(op.value) || op.value instanceof Uint8Array) {
        return "merge.value must be a map";
      }
      return valueProblem(op.value);
    default:
      return `unknown op ${JSON.stringify((op as { op: unknown }).op)}`;
  }
}
