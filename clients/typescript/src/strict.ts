// The rules of PROTOCOL.md §3.4 and §16 that a generic MessagePack decoder does not check.
//
// `@msgpack/msgpack` decodes the frame; before that, `checkFrame` walks its bytes once and
// refuses what that library would accept silently: duplicate map keys, non-string keys,
// extension types, NaN and infinities, integers beyond ±2^53, invalid UTF-8, nesting that
// could never be a message, and trailing bytes. It also records where floats were written,
// because a decoded JavaScript number no longer says whether `1` was the integer 1 or the
// float 1.0 (a `u64` field must be an integer: §3.3).

import { MAX_INT, MAX_DEPTH } from "./values.js";

/** A frame that is not one valid protocol MessagePack value. */
export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FrameError";
  }
}

/** Levels of message structure above a value (batch > message > op > value, snapshot > state). */
const FRAME_DEPTH_LIMIT = MAX_DEPTH + 8;
/** Float positions are recorded down to this depth (fields of messages inside a batch). */
const FLOAT_PATH_DEPTH = 4;

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** Where floats sit in a frame: paths of keys/indexes joined by "\u0001". */
export type FloatPaths = Set<string>;

export function pathKey(path: readonly (string | number)[]): string {
  return path.join("\u0001");
}

/** Walks one frame; throws FrameError if it breaks a rule above. Returns the float paths. */
export function checkFrame(bytes: Uint8Array): FloatPaths {
  if (bytes.length === 0) throw new FrameError("empty frame");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const floats: FloatPaths = new Set();
  let pos = 0;
  const need = (n: number): void => {
    if (pos + n > bytes.length) throw new FrameError("truncated frame");
  };
  const u8 = (): number => (need(1), bytes[pos++]!);
  const u16 = (): number => (need(2), (pos += 2), view.getUint16(pos - 2));
  const u32 = (): number => (need(4), (pos += 4), view.getUint32(pos - 4));
  const str = (len: number): string => {
    need(len);
    const s = bytes.subarray(pos, pos + len);
    pos += len;
    try {
      return strictUtf8.decode(s);
    } catch {
      throw new FrameError("a string is not valid UTF-8");
    }
  };
  const skip = (len: number): void => {
    need(len);
    pos += len;
  };

  // Returns the string when the value was a str (for map keys), else undefined.
  const value = (path: (string | number)[], depth: number): string | undefined => {
    if (depth > FRAME_DEPTH_LIMIT) throw new FrameError("nesting too deep");
    const b = u8();
    if (b <= 0x7f || b >= 0xe0) return undefined; // fixints
    if (b >= 0xa0 && b <= 0xbf) return str(b - 0xa0);
    if (b >= 0x80 && b <= 0x8f) return map(b - 0x80, path, depth);
    if (b >= 0x90 && b <= 0x9f) return array(b - 0x90, path, depth);
    switch (b) {
      case 0xc0:
      case 0xc2:
      case 0xc3:
        return undefined;
      case 0xc4:
        return skip(u8()), undefined;
      case 0xc5:
        return skip(u16()), undefined;
      case 0xc6:
        return skip(u32()), undefined;
      case 0xca:
      case 0xcb: {
        const n = b === 0xca ? (need(4), view.getFloat32(pos)) : (need(8), view.getFloat64(pos));
        pos += b === 0xca ? 4 : 8;
        if (!Number.isFinite(n)) throw new FrameError(`${n} is not a state value`);
        if (path.length <= FLOAT_PATH_DEPTH) floats.add(pathKey(path));
        return undefined;
      }
      case 0xcc:
        return skip(1), undefined;
      case 0xcd:
        return skip(2), undefined;
      case 0xce:
        return skip(4), undefined;
      case 0xcf: {
        need(8);
        const n = view.getBigUint64(pos);
        pos += 8;
        if (n > BigInt(MAX_INT)) throw new FrameError(`integer ${n} is beyond 2^53`);
        return undefined;
      }
      case 0xd0:
        return skip(1), undefined;
      case 0xd1:
        return skip(2), undefined;
      case 0xd2:
        return skip(4), undefined;
      case 0xd3: {
        need(8);
        const n = view.getBigInt64(pos);
        pos += 8;
        if (n > BigInt(MAX_INT) || n < -BigInt(MAX_INT)) throw new FrameError(`integer ${n} is beyond ±2^53`);
        return undefined;
      }
      case 0xd9:
        return str(u8());
      case 0xda:
        return str(u16());
      case 0xdb:
        return str(u32());
      case 0xdc:
        return array(u16(), path, depth);
      case 0xdd:
        return array(u32(), path, depth);
      case 0xde:
        return map(u16(), path, depth);
      case 0xdf:
        return map(u32(), path, depth);
      case 0xc7:
      case 0xc8:
      case 0xc9:
      case 0xd4:
      case 0xd5:
      case 0xd6:
      case 0xd7:
      case 0xd8:
        throw new FrameError("extension types are not state values");
      default:
        throw new FrameError(`invalid MessagePack byte 0x${b.toString(16)}`);
    }
  };
  const array = (n: number, path: (string | number)[], depth: number): undefined => {
    if (n > bytes.length - pos) throw new FrameError("truncated frame");
    for (let i = 0; i < n; i++) {
      path.push(i);
      value(path, depth + 1);
      path.pop();
    }
    return undefined;
  };
  const map = (n: number, path: (string | number)[], depth: number): undefined => {
    if (n * 2 > bytes.length - pos) throw new FrameError("truncated frame");
    const seen = new Set<string>();
    for (let i = 0; i < n; i++) {
      const keyAt = pos;
      const key = value([], FRAME_DEPTH_LIMIT);
      const head = bytes[keyAt]!;
      const isStr = (head >= 0xa0 && head <= 0xbf) || head === 0xd9 || head === 0xda || head === 0xdb;
      if (!isStr || key === undefined) throw new FrameError("map keys must be strings");
      if (seen.has(key)) throw new FrameError(`key ${JSON.stringify(key)} appears twice in a map`);
      if (key === "__proto__") throw new FrameError("the key __proto__ is not supported by this client");
      seen.add(key);
      path.push(key);
      value(path, depth + 1);
      path.pop();
    }
    return undefined;
  };

  value([], 0);
  if (pos !== bytes.length) throw new FrameError(`${bytes.length - pos} trailing byte(s) after the message`);
  return floats;
}
