// End-to-end test of the arena demo in a real browser through a node failover.
//
//   node e2e.mjs [--kills N] [--lease-ttl-ms MS] [--out DIR] [--keep-cluster]
//
// A local cluster (scripts/cluster: private Redis, 3 nodes, HAProxy on loopback), Debian's
// chromium driven by playwright-core, two pages of /demo in the same room:
//   page A connects through HAProxy, page B directly to another node (a relayed member);
//   B moves with the arrow keys and A sees it; A walks to a gem (click) and scores;
//   the node serving A is killed (SIGKILL); A reconnects through HAProxy and resumes;
//   both pages then show the positions and scores of before the kill, and what happens after
//   (A moves with the keys, B, a touch device, taps where to go).
// With --kills N the kill is repeated N times (the killed node is restarted after each) and
// the kill -> resumed times are reported with their median. Screenshots go to --out
// (default .tmp/web-e2e). Exits non-zero on any failed check; every wait has a deadline.

import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const kills = Number(opt("--kills", "1"));
const leaseTtlMs = Number(opt("--lease-ttl-ms", "3000"));
const out = resolve(root, opt("--out", ".tmp/web-e2e"));
const keepCluster = args.includes("--keep-cluster");
const clusterDir = join(out, "cluster");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
// Positions (players/<id>/x|y) are volatile in cluster mode: they survive a failover as of the
// room's last snapshot. Snapshotting often lets the test wait until the snapshot holds them.
const snapshotIntervalMs = 200;
const budgetMs = 60_000 + kills * 30_000;

mkdirSync(out, { recursive: true });
// Artifacts of an earlier run would be mistaken for this one's.
for (const f of readdirSync(out)) if (/\.(png|json)$/.test(f)) rmSync(join(out, f));
const t0 = Date.now();
const say = (msg) => console.log(`[web-e2e +${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);

function cluster(command, ...argv) {
  return execFileSync(join(root, "scripts/cluster"), [command, "--dir", clusterDir, ...argv], {
    cwd: root,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
    timeout: 240_000,
  });
}

function clusterEnv() {
  const env = {};
  for (const line of cluster("env").split("\n")) {
    const m = /^([A-Z_a-z0-9]+)=(.*)$/.exec(line);
    if (m) env[m[1]] = m[2].replace(/^'(.*)'$/, "$1");
  }
  return env;
}

class Check extends Error {}
function check(cond, what) {
  if (!cond) throw new Check(what);
}

/** Polls `fn` (async) until it returns a truthy value, every 50 ms, for at most `ms`. */
async function until(what, fn, ms = 10_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Check(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

let browser = null;
let clusterUp = false;
let shot = 0;
async function screenshot(page, name) {
  const file = join(out, `${String(++shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file });
}

/** What a page shows: its connection status and its mirror of the room. */
function view(page) {
  return page.evaluate(() => {
    const d = window.gamerelayDemo;
    const el = document.getElementById("status");
    const room = d.room;
    return {
      status: el.dataset.state,
      statusText: el.textContent,
      node: el.dataset.node,
      player: room ? room.player : null,
      connected: !!room && room.connected,
      seq: room ? room.position.seq : null,
      epoch: room ? room.position.epoch : null,
      hash: d.hash(),
      players: room ? JSON.parse(JSON.stringify(room.state.players || {})) : {},
      gems: room ? JSON.parse(JSON.stringify(room.state.gems || {})) : {},
      scores: [...document.querySelectorAll("#scores li")].map((li) => li.textContent),
      resumes: d.resumes.slice(),
      ping: document.getElementById("ping").textContent,
    };
  });
}

/** Both pages connected, at the same (epoch, seq), with the same state hash. */
async function converged(a, b, what) {
  return until(
    what,
    async () => {
      const [va, vb] = await Promise.all([view(a), view(b)]);
      return va.connected && vb.connected && va.epoch === vb.epoch && va.seq === vb.seq && va.hash === vb.hash && [va, vb];
    },
    20_000,
  );
}

function redisGet(port, key) {
  return execFileSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), "--raw", "GET", key], { encoding: "utf8", timeout: 5000 }).trim();
}

async function main() {
  const timer = setTimeout(() => {
    console.error(`web-e2e: over the time budget of ${budgetMs / 1000} s`);
    cleanup().finally(() => process.exit(2));
  }, budgetMs);
  timer.unref();

  say(`cluster up (3 nodes, lease ttl ${leaseTtlMs} ms) in ${clusterDir}`);
  clusterUp = true;
  cluster("up", "--nodes", "3", "--lease-ttl-ms", String(leaseTtlMs), "--", "--snapshot-interval-ms", String(snapshotIntervalMs));
  const env = clusterEnv();
  const nodePort = (name) => env[`GR_PORT_${name.replace("-", "_")}`];
  const room = `e2e-${process.pid}-${Date.now().toString(36)}`;

  browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  // Page B is a touch device (taps and drags are pointer events of type touch).
  const contexts = {
    alice: await browser.newContext({ viewport: { width: 1000, height: 720 } }),
    bob: await browser.newContext({ viewport: { width: 1000, height: 720 }, hasTouch: true }),
  };
  const open = async (servedBy, ws, name) => {
    const page = await contexts[name].newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.errors = errors;
    const url = `http://127.0.0.1:${nodePort(servedBy)}/demo?room=${room}&name=${name}&ws=${encodeURIComponent(ws)}`;
    await page.goto(url);
    await until(`${name} connected`, async () => (await view(page)).connected, 15_000);
    return page;
  };

  // Page A through HAProxy: the room's node by consistent hashing.
  const a = await open("node-1", env.GR_WS_URL, "alice");
  const nodeA = (await view(a)).node;
  // Page B directly on another node: a member relayed to the room's owner.
  const nodeB = ["node-1", "node-2", "node-3"].find((n) => n !== nodeA);
  const b = await open(nodeB, `ws://127.0.0.1:${nodePort(nodeB)}/ws`, "bob");
  const [va0, vb0] = [await view(a), await view(b)];
  say(`page A is ${va0.player} on ${nodeA} (via HAProxy), page B is ${vb0.player} on ${vb0.node}`);
  check(vb0.node === nodeB, `page B is served by ${nodeB}`);
  await until("each page sees the other player", async () => {
    const [va, vb] = [await view(a), await view(b)];
    return va.players[vb0.player] && vb.players[va0.player];
  });
  await until("pages show a ping", async () => /ping \d/.test((await view(a)).ping) && /ping \d/.test((await view(b)).ping));
  await screenshot(a, "A-joined");

  // B moves with the keyboard; A sees it.
  const bStart = (await view(b)).players[vb0.player];
  const dir = bStart.x < 500 ? "ArrowRight" : "ArrowLeft";
  await b.bringToFront();
  await b.keyboard.down(dir);
  await until("B moves 150 units", async () => Math.abs((await view(b)).players[vb0.player].x - bStart.x) >= 150);
  await b.keyboard.up(dir);
  let [va, vb] = await converged(a, b, "A sees where B moved");
  check(va.players[vb0.player].x === vb.players[vb0.player].x, "A shows B's x");
  check(Math.abs(va.players[vb0.player].x - bStart.x) >= 150, "A shows B moved");
  await screenshot(a, "A-sees-B-moved");

  // A walks to a gem by clicking on it, and scores (the server decides).
  await a.bringToFront();
  await until(
    "A scores a point",
    async () => {
      const v = await view(a);
      if (v.players[va0.player].score >= 1) return true;
      const me = v.players[va0.player];
      const gem = Object.values(v.gems).sort((g, h) => Math.hypot(g.x - me.x, g.y - me.y) - Math.hypot(h.x - me.x, h.y - me.y))[0];
      const box = await a.locator("#field").boundingBox();
      await a.mouse.click(box.x + (gem.x / 1000) * box.width, box.y + (gem.y / 1000) * box.height);
      await new Promise((r) => setTimeout(r, 250));
      return false;
    },
    20_000,
  );
  [va, vb] = await converged(a, b, "B sees A's score");
  check(vb.players[va0.player].score >= 1, "B shows A's score");
  await until("both pages show the same scoreboard", async () => (await view(a)).scores.join("|") === (await view(b)).scores.join("|"));
  await screenshot(b, "B-sees-A-scored");

  const resumeTimes = [];
  for (let round = 1; round <= kills; round++) {
    // The positions to keep are in the room's latest snapshot in Redis.
    [va, vb] = await converged(a, b, "pages agree before the kill");
    const before = va;
    await until("the snapshot in Redis holds the current positions", async () => {
      const v = await view(a);
      const snapseq = Number(redisGet(env.GR_REDIS_PORT, `gr:{${room}}:snapseq`) || 0);
      return v.seq === before.seq && snapseq >= before.seq;
    });
    const victim = before.node;
    // The room's owner holds its lease (`<node id>.<incarnation>`); page A may be relayed.
    const owner = redisGet(env.GR_REDIS_PORT, `gr:{${room}}:lease`).split(".")[0];
    const resumesBefore = before.resumes.length;
    say(`round ${round}: killing ${victim} (serves page A; ${victim === owner ? "the room's owner" : `relays to the owner ${owner}`}) at seq ${before.seq}`);
    const killedAt = Date.now();
    cluster("signal", victim, "KILL");
    const resumed = await until(
      "page A resumes",
      async () => {
        const v = await view(a);
        return v.resumes.length > resumesBefore && v.connected && v.resumes[v.resumes.length - 1];
      },
      25_000,
    );
    const ms = resumed.at - killedAt;
    resumeTimes.push({ ms, ownerKilled: victim === owner, withSnapshot: resumed.withSnapshot });
    if (round === 1) check(victim === owner, "the first kill hits the room's owner (page A joined first, through HAProxy)");
    // Back to three nodes (page B may be connected to the killed node in later rounds).
    cluster("start", victim);
    [va, vb] = await converged(a, b, "pages agree after the resume");
    say(`round ${round}: page A resumed on ${resumed.node} ${ms} ms after the kill (${resumed.withSnapshot ? "snapshot" : "deltas"}); status "${va.statusText}"`);
    check(resumed.node !== victim, "A resumed on another node");
    check(va.node === resumed.node && va.statusText.includes(`resumed on ${resumed.node}`), `A's status shows the resume: ${va.statusText}`);
    for (const id of [va0.player, vb0.player]) {
      const was = before.players[id];
      const now = va.players[id];
      check(now && now.score === was.score, `${id} keeps score ${was.score} (now ${now && now.score})`);
      check(now.x === was.x && now.y === was.y, `${id} keeps position ${was.x},${was.y} (now ${now.x},${now.y})`);
    }
    await until("both pages show the same scoreboard, nobody away", async () => {
      const [x, y] = [await view(a), await view(b)];
      return x.scores.join("|") === y.scores.join("|") && !x.scores.join().includes("away");
    });
    await screenshot(a, `A-resumed-round${round}`);

    // What happens after the resume reaches both pages.
    const aNow = va.players[va0.player];
    const d2 = aNow.y < 500 ? "ArrowDown" : "ArrowUp";
    await a.bringToFront();
    await a.keyboard.down(d2);
    await until("A moves after the resume", async () => Math.abs((await view(a)).players[va0.player].y - aNow.y) >= 80);
    await a.keyboard.up(d2);
    [va, vb] = await converged(a, b, "B sees A's move after the resume");
    check(vb.players[va0.player].y === va.players[va0.player].y, "B shows A's new y");
    check(vb.players[va0.player].y !== aNow.y, "A's y changed after the resume");
    // B taps the field (touch) and walks there; A sees it.
    const bNow = vb.players[vb0.player];
    const goal = { x: bNow.x < 500 ? bNow.x + 200 : bNow.x - 200, y: bNow.y };
    const box = await b.locator("#field").boundingBox();
    await b.bringToFront();
    await b.touchscreen.tap(box.x + (goal.x / 1000) * box.width, box.y + (goal.y / 1000) * box.height);
    await until("B walks to where it tapped", async () => Math.abs((await view(b)).players[vb0.player].x - goal.x) < 5);
    [va, vb] = await converged(a, b, "A sees B's touch move");
    check(va.players[vb0.player].x === vb.players[vb0.player].x, "A shows B's x after the tap");
    await screenshot(b, `B-sees-A-after-round${round}`);
  }

  const errs = [...a.errors, ...b.errors];
  check(errs.length === 0, `no uncaught errors in the pages: ${errs.join("; ")}`);
  const median = (xs) => {
    const s = [...xs].sort((x, y) => x - y);
    return s.length === 0 ? null : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  };
  const ownerKills = resumeTimes.filter((r) => r.ownerKilled).map((r) => r.ms);
  const relayKills = resumeTimes.filter((r) => !r.ownerKilled).map((r) => r.ms);
  const summary = { kills, leaseTtlMs, rounds: resumeTimes, medianOwnerKilledMs: median(ownerKills), medianRelayKilledMs: median(relayKills), medianAllMs: median(resumeTimes.map((r) => r.ms)) };
  writeFileSync(join(out, "resume-times.json"), JSON.stringify(summary, null, 2) + "\n");
  say(`kill -> resumed, the room's owner killed (ms): ${ownerKills.join(", ")}; median ${summary.medianOwnerKilledMs} ms (lease ttl ${leaseTtlMs} ms)`);
  if (relayKills.length) say(`kill -> resumed, page A's relaying node killed (owner alive) (ms): ${relayKills.join(", ")}; median ${summary.medianRelayKilledMs} ms`);
  say(`passed; screenshots in ${out}`);
  clearTimeout(timer);
}

async function cleanup() {
  if (browser) await browser.close().catch(() => {});
  browser = null;
  if (clusterUp && !keepCluster) {
    try {
      cluster("down");
    } catch (e) {
      console.error(`cluster down failed: ${e.message}`);
    }
  }
  clusterUp = false;
}

process.on("SIGINT", () => cleanup().finally(() => process.exit(130)));
process.on("SIGTERM", () => cleanup().finally(() => process.exit(143)));

try {
  await main();
  await cleanup();
} catch (e) {
  console.error(`web-e2e FAILED: ${e instanceof Check ? e.message : e.stack || e}`);
  if (browser) {
    for (const page of browser.contexts().flatMap((c) => c.pages())) {
      await page.screenshot({ path: join(out, `failure-${page.url().includes("alice") ? "A" : "B"}.png`) }).catch(() => {});
    }
  }
  console.error(`cluster logs: ${clusterDir}/*.log`);
  await cleanup();
  process.exit(1);
}
