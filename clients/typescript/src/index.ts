// gamerelay-client: TypeScript client for gamerelay (protocol v1, docs/PROTOCOL.md).

export { Client, Room, backoffDelay } from "./room.js";
export type {
  ClientOptions,
  ConnectionState,
  ConnectionStatus,
  JoinOptions,
  JoinOrCreateOptions,
  ListRoomsOptions,
  OpResult,
  ReconnectOptions,
  RoomEvents,
  WebSocketConstructor,
  WebSocketLike,
} from "./room.js";
export {
  CloseCode,
  ClosedError,
  GamerelayError,
  InvalidRequestError,
  JoinError,
  NotConnectedError,
  ProtocolError,
  RejectedError,
  ServerError,
  SessionExpiredError,
  TimeoutError,
  isRetryable,
  retryHint,
  shouldReconnect,
} from "./errors.js";
export type { ClientErrorCode, ErrorCode } from "./errors.js";
export { Mirror, GapError } from "./mirror.js";
export type { ChangeCallback } from "./mirror.js";
export { decodeClient, decodeServer, decodeValue, encodeMessage, PROTOCOL_VERSION } from "./protocol.js";
export type * from "./protocol.js";
export type { RoomListing } from "./protocol.js";
export { FrameError } from "./strict.js";
export { canonicalBytes, stateHash, valueEquals, getIn, MAX_INT, MAX_DEPTH } from "./values.js";
export type { Value, ValueMap } from "./values.js";
