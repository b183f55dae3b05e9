/**
 * corebus: the browser and Node.js client of the corebus pub/sub broker,
 * over its WebSocket transport (`/v1/ws`, subprotocol `corebus.v1`).
 *
 * One runtime dependency, `fzstd` (a pure-JavaScript zstd decoder), for the
 * payloads publishers compress. The wire codec alone is available as
 * `corebus/codec`.
 *
 * @example
 * ```ts
 * import { connect } from 'corebus';
 * const client = await connect({ url: 'wss://bus.example.com/v1/ws', token });
 * await client.subscribe('chat', 'room/1', { onItem: (item) => console.log(item.text()) });
 * ```
 *
 * @module
 */

export { connect, Client } from './client.js';
export type { ClientEvents, ClientState, ClosedEvent, DisconnectedEvent, Listener, ServerInfo, StateChange } from './events.js';
export type { ConnectOptions, PublishOptions } from './options.js';
export type { Headers } from './headers.js';
export type {
  Discontinuity,
  Item,
  StreamPosition,
  SubscribeOptions,
  Subscription,
  SubscriptionHandlers,
} from './subscription.js';
export { CorebusError, errorCodeName, errorCodeNumber } from './errors.js';
export type { CorebusErrorDetails, ErrorCode, LocalErrorCode, ProtocolErrorCode } from './errors.js';
export { CodecError } from './codec.js';
export type { CodecErrorReason } from './codec.js';
export { SUBPROTOCOL } from './transport.js';
export type { Clock, WebSocketConstructor, WebSocketLike } from './transport.js';
export { backoffDelay, backoffPolicy } from './backoff.js';
export type { BackoffOptions, BackoffPolicy } from './backoff.js';
export { jwtExpiry, tokenRefreshDelay } from './jwt.js';
export { decompressPayload, zstdContentSize } from './zstd.js';
export { DEFAULT_MAX_DECOMPRESSED } from './wire.js';
export { isGroupName, isPattern } from './encode.js';
