// State values (PROTOCOL.md §16), the canonical encoding and state hash (§17), and the two
// primitive edits a mirror applies (§7.3).

import { sha256Hex } from "./sha256.js";

/** A state value: MessagePack nil, bool, number, str, bin, array or map with string keys. */
export type Value = null | boolean | number | string | Uint8Array | Value[] | ValueMap;
/** A map value. Keys are own properties; use {@link hasKey} rather than `in`. */
export interface ValueMap {
  [key: string]: Value;
}

/** Integers must lie within ±2^53 (inclusive). */
export const MAX_INT = 9007199254740992;
/** A value nests at most this many arrays/maps below its top. */
export const MAX_DEPTH = 64;

export function isMap(v: Value | undefined): v is ValueMap {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

export function hasKey(m: ValueMap, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(m, key);
}

/** Whether a number is an integer for the protocol: integral and within ±2^53. */
export function isProtocolInt(n: number): boolean {
  return Number.isInteger(n) && Math.abs(n) <= MAX_INT;
}

/**
 * Checks the invariants of §16 on a value built by the application (before sending it).
 * Returns a description of the first problem, or null.
 */
export function valueProblem(v: unknown, depth = 0): string | null {
  if (v === null || typeof v === "boolean" || typeof v === "string" || v instanceof Uint8Array) return null;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) return `${v} is not a finite number`;
    return null; // integral floats beyond ±2^53 are floats; everything else is fine
  }
  if (depth >= MAX_DEPTH) return `a value nests more than ${MAX_DEPTH} levels`;
  if (Array.isArray(v)) {
    for (const item of v) {
      const p = valueProblem(item, depth + 1);
      if (p) return p;
    }
    return null;
  }
  if (typeof v === "object" && Object.getPrototypeOf(v) !== null && Object.getPrototypeOf(v) !== Object.prototype) {
    return `${Object.prototype.toString.call(v)} is not a state value (use plain objects, arrays, Uint8Array)`;
  }
  if (typeof v === "object") {
    for (const [k, item] of Object.entries(v as Record<string, unknown>)) {
      if (item === undefined) return `key ${JSON.stringify(k)} is undefined (use null)`;
      const p = valueProblem(item, depth + 1);
      if (p) return p;
    }
    return null;
  }
  return `a ${typeof v} is not a state value`;
}

/** How deep a decoded value nests (a scalar is 0). Stops counting past `limit`. */
export function depthOf(v: Value, limit = MAX_DEPTH + 1): number {
  if (limit <= 0) return 0;
  let max = 0;
  if (Array.isArray(v)) {
    for (const item of v) max = Math.max(max, depthOf(item, limit - 1));
    return max + 1;
  }
  if (isMap(v)) {
    for (const key of Object.keys(v)) max = Math.max(max, depthOf(v[key]!, limit - 1));
    return max + 1;
  }
  return 0;
}

const utf8 = new TextEncoder();

/** Byte order of map keys in the canonical encoding: shorter (UTF-8) first, then bytewise. */
function compareKeys(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return a.length - b.length;
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) return a[i]! - b[i]!;
  }
  return 0;
}

class ByteWriter {
  private buf = new Uint8Array(256);
  private len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  byte(b: number): void {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  uint(n: number, width: 1 | 2 | 4): void {
    for (let i = width - 1; i >= 0; i--) this.byte(Math.floor(n / 2 ** (8 * i)) & 0xff);
  }

  u64(n: bigint): void {
    for (let i = 7; i >= 0; i--) this.byte(Number((n >> BigInt(8 * i)) & 0xffn));
  }

  f64(n: number): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, n);
    this.bytes(b);
  }

  done(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

function writeHeader(w: ByteWriter, len: number, fix: number, fixMax: number, codes: [number, number, number] | [number, number]): void {
  if (len <= fixMax) {
    w.byte(fix + len);
  } else if (codes.length === 3 && len <= 0xff) {
    w.byte(codes[0]);
    w.uint(len, 1);
  } else if (len <= 0xffff) {
    w.byte(codes[codes.length - 2]!);
    w.uint(len, 2);
  } else {
    w.byte(codes[codes.length - 1]!);
    w.uint(len, 4);
  }
}

function writeCanonical(w: ByteWriter, v: Value): void {
  if (v === null) return w.byte(0xc0);
  if (v === false) return w.byte(0xc2);
  if (v === true) return w.byte(0xc3);
  if (typeof v === "number") {
    if (!isProtocolInt(v)) return (w.byte(0xcb), w.f64(v));
    const n = v === 0 ? 0 : v; // -0 is 0
    if (n >= 0) {
      if (n <= 0x7f) return w.byte(n);
      if (n <= 0xff) return (w.byte(0xcc), w.uint(n, 1));
      if (n <= 0xffff) return (w.byte(0xcd), w.uint(n, 2));
      if (n <= 0xffffffff) return (w.byte(0xce), w.uint(n, 4));
      return (w.byte(0xcf), w.u64(BigInt(n)));
    }
    if (n >= -32) return w.byte(0x100 + n);
    if (n >= -128) return (w.byte(0xd0), w.uint(0x100 + n, 1));
    if (n >= -32768) return (w.byte(0xd1), w.uint(0x10000 + n, 2));
    if (n >= -2147483648) return (w.byte(0xd2), w.uint(0x100000000 + n, 4));
    return (w.byte(0xd3), w.u64(BigInt.asUintN(64, BigInt(n))));
  }
  if (typeof v === "string") {
    const b = utf8.encode(v);
    if (b.length <= 31) w.byte(0xa0 + b.length);
    else writeHeader(w, b.length, 0xa0, 31, [0xd9, 0xda, 0xdb]);
    return w.bytes(b);
  }
  if (v instanceof Uint8Array) {
    if (v.length <= 0xff) (w.byte(0xc4), w.uint(v.length, 1));
    else if (v.length <= 0xffff) (w.byte(0xc5), w.uint(v.length, 2));
    else (w.byte(0xc6), w.uint(v.length, 4));
    return w.bytes(v);
  }
  if (Array.isArray(v)) {
    writeHeader(w, v.length, 0x90, 15, [0xdc, 0xdd]);
    for (const item of v) writeCanonical(w, item);
    return;
  }
  const entries = Object.keys(v).map((k) => [utf8.encode(k), v[k]!] as const);
  entries.sort((a, b) => compareKeys(a[0], b[0]));
  writeHeader(w, entries.length, 0x80, 15, [0xde, 0xdf]);
  for (const [key, item] of entries) {
    if (key.length <= 31) w.byte(0xa0 + key.length);
    else writeHeader(w, key.length, 0xa0, 31, [0xd9, 0xda, 0xdb]);
    w.bytes(key);
    writeCanonical(w, item);
  }
}

/** The canonical MessagePack encoding of a value (§17). */
export function canonicalBytes(v: Value): Uint8Array {
  const w = new ByteWriter();
  writeCanonical(w, v);
  return w.done();
}

/** The state hash: lowercase hex SHA-256 of the canonical encoding (§17). */
export function stateHash(v: Value): string {
  return sha256Hex(canonicalBytes(v));
}

/** Structural equality of two values (numbers by value, bins by bytes, maps by keys). */
export function valueEquals(a: Value | undefined, b: Value | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined || a === null || b === null) return false;
  if (typeof a !== "object" || typeof b !== "object") return false;
  if (a instanceof Uint8Array || b instanceof Uint8Array) {
    if (!(a instanceof Uint8Array && b instanceof Uint8Array) || a.length !== b.length) return false;
    return a.every((x, i) => x === b[i]);
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!(Array.isArray(a) && Array.isArray(b)) || a.length !== b.length) return false;
    return a.every((x, i) => valueEquals(x, b[i]));
  }
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => hasKey(b, k) && valueEquals(a[k], b[k]));
}

/** Splits a `/`-separated path into segments (no validation beyond non-empty). */
export function splitPath(path: string): string[] {
  return path.split("/");
}

/** The value at `segments` below `root`, or undefined when absent. */
export function getIn(root: Value, segments: readonly string[]): Value | undefined {
  let cur: Value | undefined = root;
  for (const s of segments) {
    if (!isMap(cur) || !hasKey(cur, s)) return undefined;
    cur = cur[s];
  }
  return cur;
}

/** A resolved op could not be applied: the mirror diverged from the room. */
export class ApplyError extends Error {}

/** `set path value`: walk from the root creating missing maps, then set the leaf (§7.3). */
export function applySet(root: ValueMap, segments: readonly string[], value: Value): void {
  let cur: ValueMap = root;
  for (let i = 0; i < segments.length - 1; i++) {
    const s = segments[i]!;
    if (!hasKey(cur, s)) {
      const next: ValueMap = {};
      defineKey(cur, s, next);
      cur = next;
      continue;
    }
    const next: Value = cur[s]!;
    if (!isMap(next)) throw new ApplyError(`set ${segments.join("/")}: ${segments.slice(0, i + 1).join("/")} is not a map`);
    cur = next;
  }
  defineKey(cur, segments[segments.length - 1]!, value);
}

/** `del path`: walk; if anything is missing do nothing, else remove the leaf (§7.3). */
export function applyDel(root: ValueMap, segments: readonly string[]): void {
  let cur: Value = root;
  for (let i = 0; i < segments.length - 1; i++) {
    const s = segments[i]!;
    if (!isMap(cur)) throw new ApplyError(`del ${segments.join("/")}: ${segments.slice(0, i).join("/")} is not a map`);
    if (!hasKey(cur, s)) return;
    cur = cur[s]!;
  }
  if (!isMap(cur)) throw new ApplyError(`del ${segments.join("/")}: the parent is not a map`);
  delete cur[segments[segments.length - 1]!];
}

/** Sets an own property, even one named like an Object.prototype member. */
function defineKey(m: ValueMap, key: string, value: Value): void {
  if (key === "__proto__") {
    Object.defineProperty(m, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    m[key] = value;
  }
}
