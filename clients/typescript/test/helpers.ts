// Shared by the tests: the repository root, JSON <-> values, hex.

import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Value } from "../src/values.js";

/** The repository root (the directory holding docs/protocol-vectors.json). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 10; i++) {
    if (existsSync(join(dir, "docs", "protocol-vectors.json"))) return dir;
    dir = dirname(dir);
  }
  throw new Error("repository root not found above " + fileURLToPath(import.meta.url));
}

export function readVectors(): any {
  return JSON.parse(readFileSync(join(repoRoot(), "docs", "protocol-vectors.json"), "utf8"));
}

export function unhex(s: string): Uint8Array {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** A vector's JSON as a value: `{"$bin": "hex"}` is binary; everything else as JSON. */
export function fromJson(j: unknown): Value {
  if (j === null || typeof j !== "object") return j as Value;
  if (Array.isArray(j)) return j.map(fromJson);
  const o = j as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length === 1 && keys[0] === "$bin" && typeof o.$bin === "string") return unhex(o.$bin);
  const out: Record<string, Value> = {};
  for (const k of keys) out[k] = fromJson(o[k]);
  return out;
}

/** Polls `cond` every 10 ms until it holds or `ms` pass (then throws with `what`). */
export async function eventually(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
