// The arena demo: a small real game on gamerelay's `arena` room type (PROTOCOL.md §18.2).
// Plain JavaScript module, no build step; the client library is gamerelay-client.js, the
// bundled build of clients/typescript (regenerate with `npm run bundle:demo` there).
//
// URL parameters: ?room=<room id> (default arena-demo), ?ws=<WebSocket URL> (default: this
// page's origin + /ws), ?name=<display name>.

import { Client, SessionExpiredError, stateHash } from "./gamerelay-client.js";

const params = new URLSearchParams(location.search);
const roomId = params.get("room") || "arena-demo";
const wsUrl = params.get("ws") || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const name = (params.get("name") || `player-${Math.random().toString(16).slice(2, 6)}`).slice(0, 32);

const SIZE = 1000; // arena width and height (state.arena.w/h)
const TICK_MS = 50; // input is sent at most 20 times a second
const STEP = 40; // units asked per tick; the server clamps to 400 units/s anyway
const JOIN_ATTEMPTS = 60; // the first join is retried this many times (bounded)

const $ = (id) => document.getElementById(id);
const els = { status: $("status"), ping: $("ping"), me: $("me"), room: $("room"), scores: $("scores"), events: $("events"), canvas: $("field") };
const ctx = els.canvas.getContext("2d");
els.room.textContent = roomId;

/** What tests and curious developers can look at: `window.gamerelayDemo`. */
const demo = {
  room: null,
  roomId,
  wsUrl,
  name,
  /** {at, text} */
  events: [],
  /** {at (Date.now()), node, withSnapshot, downtimeMs} per resume */
  resumes: [],
  /** State hash of the mirror, to compare pages. */
  hash: () => (demo.room ? stateHash(demo.room.state) : null),
};
window.gamerelayDemo = demo;

function log(text) {
  demo.events.push({ at: Date.now(), text });
  if (demo.events.length > 200) demo.events.shift();
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  els.events.prepend(li);
  while (els.events.children.length > 12) els.events.lastChild.remove();
}

function setStatus(state, text, node) {
  els.status.dataset.state = state;
  els.status.dataset.node = node || "";
  els.status.textContent = text;
}

const client = new Client(wsUrl, { clientName: "gamerelay-web-demo/0.1", pingIntervalMs: 1000, idleTimeoutMs: 6000 });

async function join() {
  for (let attempt = 1; attempt <= JOIN_ATTEMPTS; attempt++) {
    try {
      setStatus("connecting", attempt === 1 ? "connecting…" : `connecting (attempt ${attempt})…`);
      const room = await client.join(roomId, { type: "arena" });
      attach(room);
      return;
    } catch (e) {
      log(`join failed: ${e.message}`);
      await new Promise((r) => setTimeout(r, Math.min(5000, 200 * 2 ** attempt)));
    }
  }
  setStatus("closed", "could not join; reload to try again");
}

function attach(room) {
  demo.room = room;
  els.me.textContent = `${name} (${room.player})`;
  setStatus("connected", `connected to ${room.node}`, room.node);
  log(`joined ${room.id} as ${room.player} on ${room.node}`);
  room.merge(`players/${room.player}`, { name }).catch((e) => log(`name refused: ${e.message}`));

  room.on("status", (s) => {
    if (s.state === "reconnecting") setStatus("reconnecting", `reconnecting (attempt ${s.attempt})…`, s.node);
  });
  room.on("disconnected", (d) => log(`connection lost${d.code ? ` (${d.code})` : ""}: ${d.reason}`));
  room.on("resumed", (r) => {
    scoresDirty = true;
    demo.resumes.push({ at: Date.now(), node: r.node, withSnapshot: r.withSnapshot, downtimeMs: r.downtimeMs });
    const how = r.withSnapshot ? "snapshot" : "missed deltas";
    setStatus("connected", `resumed on ${r.node} (${how}, ${(r.downtimeMs / 1000).toFixed(1)} s)`, r.node);
    log(`resumed on ${r.node} with ${how} after ${Math.round(r.downtimeMs)} ms`);
  });
  room.on("pong", (rtt) => (els.ping.textContent = `ping ${rtt.toFixed(1)} ms`));
  room.on("presence", (p) => {
    log(`${labelOf(p.player)} ${p.status}`);
    scoresDirty = true;
  });
  room.on("error", (e) => log(`${e.code}: ${e.message}`));
  room.on("closed", (e) => {
    demo.room = null;
    if (e instanceof SessionExpiredError) {
      log("session expired: joining again as a new player");
      void join();
    } else {
      setStatus("closed", `closed: ${e.message}`);
    }
  });
  room.on("state", () => (scoresDirty = true));
  scoresDirty = true;
}

function labelOf(player) {
  const p = demo.room?.get(`players/${player}`);
  return (p && typeof p.name === "string" && p.name) || player;
}

// ---- input: keys (arrows / WASD) and pointer (touch, click-and-hold, tap to walk there)

const keys = new Set();
const KEYS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1], a: [-1, 0], d: [1, 0], w: [0, -1], s: [0, 1] };
addEventListener("keydown", (e) => {
  const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (KEYS[k]) {
    keys.add(k);
    target = null;
    e.preventDefault();
  }
});
addEventListener("keyup", (e) => keys.delete(e.key.length === 1 ? e.key.toLowerCase() : e.key));
addEventListener("blur", () => keys.clear());

let target = null;
let pointerDown = false;
function fieldPoint(e) {
  const r = els.canvas.getBoundingClientRect();
  return { x: ((e.clientX - r.left) / r.width) * SIZE, y: ((e.clientY - r.top) / r.height) * SIZE };
}
els.canvas.addEventListener("pointerdown", (e) => {
  pointerDown = true;
  target = fieldPoint(e);
  els.canvas.setPointerCapture(e.pointerId);
});
els.canvas.addEventListener("pointermove", (e) => {
  if (pointerDown) target = fieldPoint(e);
});
els.canvas.addEventListener("pointerup", () => (pointerDown = false));

const clamp = (v) => Math.min(SIZE, Math.max(0, v));
setInterval(() => {
  const room = demo.room;
  if (!room || !room.connected || room.pendingOps > 2) return;
  const me = room.get(`players/${room.player}`);
  if (!me || typeof me.x !== "number") return;
  let dx = 0;
  let dy = 0;
  for (const k of keys) {
    dx += KEYS[k][0];
    dy += KEYS[k][1];
  }
  let step = STEP;
  if (dx === 0 && dy === 0 && target) {
    dx = target.x - me.x;
    dy = target.y - me.y;
    const dist = Math.hypot(dx, dy);
    if (dist < 1) {
      if (!pointerDown) target = null;
      return;
    }
    step = Math.min(STEP, dist);
  }
  const len = Math.hypot(dx, dy);
  if (len === 0) return;
  const x = Math.round(clamp(me.x + (dx / len) * step) * 100) / 100;
  const y = Math.round(clamp(me.y + (dy / len) * step) * 100) / 100;
  if (x === me.x && y === me.y) return;
  room.merge(`players/${room.player}`, { x, y }).catch(() => {});
}, TICK_MS);

// ---- rendering

let scoresDirty = true;
const drawn = new Map(); // player -> {x, y} as drawn (eased toward the mirror)

function colorOf(id) {
  let h = 0x811c9dc5; // FNV-1a: similar ids get different hues
  for (const c of id) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return `hsl(${h % 360} 70% 60%)`;
}

function frame() {
  requestAnimationFrame(frame);
  const room = demo.room;
  const w = els.canvas.width;
  const k = w / SIZE;
  ctx.clearRect(0, 0, w, w);
  ctx.strokeStyle = "#232c3d";
  for (let i = 100; i < SIZE; i += 100) {
    ctx.beginPath();
    ctx.moveTo(i * k, 0);
    ctx.lineTo(i * k, w);
    ctx.moveTo(0, i * k);
    ctx.lineTo(w, i * k);
    ctx.stroke();
  }
  if (!room) return;
  const state = room.state;
  for (const g of Object.values(state.gems || {})) {
    ctx.fillStyle = "#ffd166";
    ctx.beginPath();
    ctx.moveTo(g.x * k, (g.y - 12) * k);
    ctx.lineTo((g.x + 12) * k, g.y * k);
    ctx.lineTo(g.x * k, (g.y + 12) * k);
    ctx.lineTo((g.x - 12) * k, g.y * k);
    ctx.fill();
  }
  const players = state.players || {};
  for (const id of drawn.keys()) if (!(id in players)) drawn.delete(id);
  for (const [id, p] of Object.entries(players)) {
    const d = drawn.get(id) || { x: p.x, y: p.y };
    d.x += (p.x - d.x) * 0.4;
    d.y += (p.y - d.y) * 0.4;
    drawn.set(id, d);
    const status = room.members.get(id);
    ctx.globalAlpha = status === "disconnected" ? 0.4 : 1;
    ctx.fillStyle = colorOf(id);
    ctx.beginPath();
    ctx.arc(d.x * k, d.y * k, 16 * k, 0, Math.PI * 2);
    ctx.fill();
    if (id === room.player) {
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 2;
      ctx.stroke();
    }
    ctx.fillStyle = "#e4e8f0";
    ctx.font = `${Math.max(10, 26 * k)}px system-ui`;
    ctx.fillText(`${p.name || id} ${p.score}`, (d.x + 20) * k, (d.y - 10) * k);
    ctx.globalAlpha = 1;
  }
  if (scoresDirty) {
    scoresDirty = false;
    const rows = Object.entries(players).sort((a, b) => b[1].score - a[1].score || (a[0] < b[0] ? -1 : 1));
    els.scores.replaceChildren(
      ...rows.map(([id, p]) => {
        const li = document.createElement("li");
        li.dataset.player = id;
        li.textContent = `${p.name || id}: ${p.score}${room.members.get(id) === "disconnected" ? " (away)" : ""}`;
        return li;
      }),
    );
  }
}
requestAnimationFrame(frame);

void join();
