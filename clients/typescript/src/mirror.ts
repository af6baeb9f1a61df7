// The local copy of a room: state at (epoch, seq), members, and change listeners.
//
// Pure and synchronous (no I/O): the room feeds it snapshots and deltas in order; it applies
// them by the history rules of §9 and tells listeners which paths changed.
//   - a delta of the mirror's epoch with seq <= mirror.seq is a duplicate and is ignored;
//   - a delta with seq == mirror.seq + 1 is applied;
//   - anything else (a seq jump, another epoch) is a gap: GapError, and the mirror is stale
//     (it ignores deltas until a snapshot replaces it). So is a delta that cannot be applied.

import type { Delta, Member, PresenceStatus, Snapshot } from "./protocol.js";
import {
  applyDel,
  applySet,
  ApplyError,
  getIn,
  hasKey,
  isMap,
  splitPath,
  stateHash,
  valueEquals,
  type Value,
  type ValueMap,
} from "./values.js";

/** Called with the value now at a path (undefined when it was deleted) and the path. */
export type ChangeCallback = (value: Value | undefined, path: string) => void;

/** A delta does not continue the mirror's history. */
export class GapError extends Error {
  constructor(
    readonly epoch: number,
    readonly seq: number,
    readonly gotEpoch: number,
    readonly gotSeq: number,
  ) {
    super(`broken history: mirror at epoch ${epoch} seq ${seq}, got a delta for epoch ${gotEpoch} seq ${gotSeq}`);
  }
}

interface Listener {
  pattern: string[];
  cb: ChangeCallback;
}

/** Concrete paths below `root` matching `pattern` ("*" matches any one key). */
function expand(pattern: readonly string[], root: Value | undefined, prefix: string[] = [], out: string[][] = []): string[][] {
  if (pattern.length === 0) {
    if (root !== undefined) out.push(prefix);
    return out;
  }
  if (!isMap(root)) return out;
  const [head, ...rest] = pattern as [string, ...string[]];
  const keys = head === "*" ? Object.keys(root) : hasKey(root, head) ? [head] : [];
  for (const k of keys) expand(rest, root[k], [...prefix, k], out);
  return out;
}

function matches(pattern: readonly string[], segs: readonly string[]): boolean {
  return pattern.every((p, i) => p === "*" || p === segs[i]);
}

export class Mirror {
  state: ValueMap = {};
  epoch = 0;
  seq = 0;
  /** True until a snapshot arrives, and after a gap: deltas cannot be applied. */
  stale = true;
  readonly members = new Map<string, PresenceStatus>();
  private readonly listeners = new Set<Listener>();

  /** Registers a listener for paths matching `pattern` (e.g. `players/*` or `gems/*\/x`). */
  listen(pattern: string, cb: ChangeCallback, immediate = false): () => void {
    const l: Listener = { pattern: splitPath(pattern), cb };
    this.listeners.add(l);
    if (immediate) {
      for (const p of expand(l.pattern, this.state)) cb(getIn(this.state, p), p.join("/"));
    }
    return () => this.listeners.delete(l);
  }

  /**
   * Replaces the state with a snapshot. Listeners hear about every matching path whose value
   * differs. Returns the state hash computed locally (equal to `snapshot.hash` unless the
   * canonical encodings disagree).
   */
  reset(snapshot: Snapshot): string {
    const old = this.state;
    this.state = snapshot.state;
    this.epoch = snapshot.epoch;
    this.seq = snapshot.seq;
    this.stale = false;
    for (const l of [...this.listeners]) {
      const seen = new Set<string>();
      for (const p of [...expand(l.pattern, old), ...expand(l.pattern, this.state)]) {
        const key = p.join("/");
        if (seen.has(key)) continue;
        seen.add(key);
        const now = getIn(this.state, p);
        if (!valueEquals(getIn(old, p), now)) l.cb(now, key);
      }
    }
    return stateHash(this.state);
  }

  /** Replaces the member list (joined, resync). Members who left are dropped. */
  setMembers(members: readonly Member[]): void {
    this.members.clear();
    for (const m of members) if (m.status !== "left") this.members.set(m.player, m.status);
  }

  /** Applies a presence change to the member list. */
  presence(player: string, status: PresenceStatus): void {
    if (status === "left") this.members.delete(player);
    else this.members.set(player, status);
  }

  /**
   * Applies a delta. Returns true if it was applied, false if it was a duplicate or the
   * mirror is stale (waiting for a snapshot). Throws GapError or ApplyError (then stale).
   */
  applyDelta(delta: Delta): boolean {
    if (this.stale) return false;
    if (delta.epoch === this.epoch && delta.seq <= this.seq) return false;
    if (delta.epoch !== this.epoch || delta.seq !== this.seq + 1) {
      this.stale = true;
      throw new GapError(this.epoch, this.seq, delta.epoch, delta.seq);
    }
    const touched = new Map<Listener, Map<string, string[]>>();
    const touch = (l: Listener, p: string[]): void => {
      let m = touched.get(l);
      if (!m) touched.set(l, (m = new Map()));
      m.set(p.join("/"), p);
    };
    try {
      for (const op of delta.ops) {
        const segs = splitPath(op.path);
        const before = this.listeners.size > 0 ? getIn(this.state, segs) : undefined;
        if (op.op === "set") applySet(this.state, segs, op.value);
        else if (op.op === "del") applyDel(this.state, segs);
        else throw new ApplyError(`a delta carries an unresolved op ${op.op}`);
        for (const l of this.listeners) {
          const L = l.pattern;
          if (segs.length >= L.length) {
            if (matches(L, segs)) touch(l, segs.slice(0, L.length));
          } else if (matches(L.slice(0, segs.length), segs)) {
            const rest = L.slice(segs.length);
            const after = getIn(this.state, segs);
            for (const p of [...expand(rest, before), ...expand(rest, after)]) touch(l, [...segs, ...p]);
            if (!rest.includes("*")) touch(l, [...segs, ...rest]);
          }
        }
      }
    } catch (e) {
      this.stale = true;
      throw e;
    }
    this.seq = delta.seq;
    for (const [l, paths] of touched) {
      if (!this.listeners.has(l)) continue;
      for (const [key, p] of paths) l.cb(getIn(this.state, p), key);
    }
    return true;
  }
}
