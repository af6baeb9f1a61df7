// Typed errors. Every error the client reports is a GamerelayError with a stable `code`:
// a protocol error code (§14) for what the server refused, or one of the client's own codes.

/** Error codes of the protocol (§14). Codes are only ever added; unknown ones are kept as strings. */
export type ErrorCode =
  | "bad_frame"
  | "handshake_required"
  | "unsupported_version"
  | "not_joined"
  | "already_joined"
  | "bad_room"
  | "room_full"
  | "too_many_rooms"
  | "session_expired"
  | "forbidden"
  | "bad_path"
  | "bad_value"
  | "stale_cid"
  | "too_many_ops"
  | "state_too_large"
  | "unknown_player"
  | "rate_limited"
  | "unavailable"
  | "internal"
  | "unauthorized"
  | "token_expired"
  | "overloaded"
  | "stale_resume";

/** Codes the client itself uses for failures that are not a server's answer. */
export type ClientErrorCode = "closed" | "timeout" | "protocol" | "invalid_request" | "not_connected";

const RETRYABLE: ReadonlySet<string> = new Set(["rate_limited", "unavailable", "internal", "overloaded"]);

/** Whether sending the same request again later may succeed (§14). Unknown codes: no. */
export function isRetryable(code: string): boolean {
  return RETRYABLE.has(code);
}

export class GamerelayError extends Error {
  /** A protocol error code (§14) or a client error code. */
  readonly code: ErrorCode | ClientErrorCode | (string & {});
  /** Whether the same request may succeed later. */
  readonly retryable: boolean;

  constructor(code: string, message: string, retryable = isRetryable(code)) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.retryable = retryable;
  }
}

/** The server answered a request with `error{code, message}`. */
export class ServerError extends GamerelayError {}

/** A `join` was refused (bad_room, room_full, too_many_rooms, ...). */
export class JoinError extends ServerError {}

/** The session cannot be resumed (its grace expired, or the room forgot it): join afresh. */
export class SessionExpiredError extends JoinError {
  constructor(message: string) {
    super("session_expired", message, false);
  }
}

/** An op batch was refused with `reject`; none of its ops were applied. */
export class RejectedError extends GamerelayError {
  constructor(
    readonly cid: number,
    code: string,
    message: string,
  ) {
    super(code, message);
  }
}

/** The connection (or the client) is closed for good. */
export class ClosedError extends GamerelayError {
  constructor(
    /** The WebSocket close code, when the server sent one. */
    readonly closeCode: number | null,
    readonly reason: string,
    retryable = false,
  ) {
    super("closed", closeCode === null ? `closed: ${reason}` : `closed with ${closeCode}: ${reason}`, retryable);
  }
}

/** Something took longer than allowed (the handshake, a ping, a leave). */
export class TimeoutError extends GamerelayError {
  constructor(message: string) {
    super("timeout", message, true);
  }
}

/** The server broke the protocol (an undecodable frame, an unexpected answer). */
export class ProtocolError extends GamerelayError {
  constructor(message: string) {
    super("protocol", message, false);
  }
}

/** The request is invalid before it is sent (empty batch, too many ops, bad value, ...). */
export class InvalidRequestError extends GamerelayError {
  constructor(message: string) {
    super("invalid_request", message, false);
  }
}

/** The request needs a live connection and there is none right now. */
export class NotConnectedError extends GamerelayError {
  constructor(message = "not connected (reconnecting)") {
    super("not_connected", message, true);
  }
}

/** Builds the error for a server `error` answering a join. */
export function joinError(code: string, message: string): JoinError {
  return code === "session_expired" ? new SessionExpiredError(message) : new JoinError(code, message);
}

/** The close codes of the protocol (§15). Unknown codes are judged by range (`shouldReconnect`). */
export const CloseCode = {
  left: 1000,
  goingAway: 1001,
  abnormal: 1006,
  frameTooLarge: 1009,
  internalError: 1011,
  serviceRestart: 1012,
  tryAgainLater: 1013,
  replaced: 4000,
  protocolError: 4001,
  unsupportedVersion: 4002,
  unauthorized: 4003,
  kicked: 4004,
  rateLimited: 4005,
  /** The game backend closed the room (admin API): the room and its sessions are gone. Do not reconnect. */
  roomClosed: 4006,
  handshakeTimeout: 4100,
  idleTimeout: 4101,
  slowConsumer: 4102,
  roomMoved: 4103,
} as const;

/**
 * Close codes after which a client reconnects and resumes (§15), including unknown ones by
 * range: 4000-4099 (4000 replaced ... 4006 room_closed) never reconnect, 4100-4199 do.
 */
export function shouldReconnect(code: number): boolean {
  return code === 1001 || code === 1006 || code === 1011 || code === 1012 || code === 1013 || (code >= 4100 && code <= 4199);
}

/** The `retry_ms=<n>` hint of a close reason such as `service_restart: retry_ms=1500`, capped at 10 min. */
export function retryHint(reason: string): number | null {
  const m = /retry_ms=(\d+)/.exec(reason);
  if (!m) return null;
  return Math.min(Number(m[1]), 600_000);
}
