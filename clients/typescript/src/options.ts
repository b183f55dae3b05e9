/**
 * The options of {@link connect} and {@link Client.publish}, their defaults,
 * and the checks of what callers pass in.
 *
 * @module
 */

import type { Headers } from './headers.js';
import { backoffPolicy, type BackoffOptions, type BackoffPolicy } from './backoff.js';
import { CorebusError } from './errors.js';
import { isGroupName } from './encode.js';
import { DEFAULT_MAX_DECOMPRESSED } from './wire.js';
import type { SubscribeOptions, SubscriptionHandlers } from './subscription.js';
import type { Clock, WebSocketConstructor } from './transport.js';

/**
 * Options of {@link connect}.
 *
 * @example
 * ```ts
 * const options: ConnectOptions = {
 *   url: 'wss://bus.example.com/v1/ws',
 *   tokenProvider: () => fetch('/api/corebus-token').then((r) => r.text()),
 *   backoff: { initialMs: 250, maxMs: 10_000 },
 * };
 * ```
 */
export interface ConnectOptions {
  /** The broker's WebSocket endpoint, `ws://` or `wss://`, e.g. `wss://host:port/v1/ws`. */
  url: string;
  /** Credentials for every connection: an API key or a JWT. */
  token?: string;
  /**
   * Fetches a fresh token: called before the first connection, before every
   * reconnect, and some seconds before the current JWT's `exp`.
   */
  tokenProvider?: () => Promise<string>;
  /** Name shown in the broker's logs (cut to 255 UTF-8 bytes). */
  name?: string;
  /** The WebSocket class; defaults to `globalThis.WebSocket`. In Node.js 20 pass `ws`'s. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect delays (jittered exponential backoff). */
  backoff?: BackoffOptions;
  /** How long a connection may take to reach `WELCOME`, in ms (default 10 000). */
  handshakeTimeoutMs?: number;
  /** Interval of the client's own `PING`s, in ms; 0 turns them off (default 20 000). */
  pingIntervalMs?: number;
  /** How long to wait for the `PONG`, in ms, before dropping the connection (default 10 000). */
  pongTimeoutMs?: number;
  /** The least time before a token's expiry at which it is refreshed, in ms (default 5 000). */
  tokenRefreshLeadMs?: number;
  /**
   * Acknowledged publishes allowed in flight on one connection; more are
   * refused locally with `too_many_in_flight` (default 16 383, one under the
   * broker's default limit).
   */
  maxInFlightPublishes?: number;
  /**
   * The most bytes a received compressed payload may decompress to; a larger
   * one is reported to the subscription's `onError` as `decompress_failed`
   * instead of allocated (default 16 MiB).
   */
  maxDecompressedBytes?: number;
  /** Timers; tests pass a fake clock. */
  clock?: Clock;
  /** Random numbers in [0, 1) for the backoff jitter; tests pass their own. */
  random?: () => number;
}

/**
 * Options of {@link Client.publish}.
 *
 * @example
 * ```ts
 * const seq = await client.publish('app', 'news', 'hi', { ack: true });
 * ```
 */
export interface PublishOptions {
  /** Wait for the broker's `PUB_ACK` and resolve with the message's seq (default false). */
  ack?: boolean;
  /**
   * Headers sent with the message to every subscriber (MQTT 5.0 subscribers
   * get them as properties).
   */
  headers?: Headers;
}

/** @internal {@link ConnectOptions} with every default filled in. */
export interface ResolvedOptions {
  url: string;
  token: string | undefined;
  tokenProvider: (() => Promise<string>) | undefined;
  name: string;
  WebSocket: WebSocketConstructor;
  backoff: BackoffPolicy;
  handshakeTimeoutMs: number;
  pingIntervalMs: number;
  pongTimeoutMs: number;
  tokenRefreshLeadMs: number;
  maxInFlightPublishes: number;
  maxDecompressedBytes: number;
  clock: Clock;
  random: () => number;
}

const defaultClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** @internal Checks `options` and fills in the defaults. */
export function resolveOptions(options: ConnectOptions): ResolvedOptions {
  if (options === null || typeof options !== 'object') {
    throw new CorebusError('invalid_argument', 'connect() needs an options object');
  }
  if (typeof options.url !== 'string' || !/^wss?:\/\//i.test(options.url)) {
    throw new CorebusError('invalid_argument', `url must start with ws:// or wss://, got ${String(options.url)}`);
  }
  if (options.token !== undefined && options.tokenProvider !== undefined) {
    throw new CorebusError('invalid_argument', 'pass either token or tokenProvider, not both');
  }
  const WebSocketClass =
    options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (WebSocketClass === undefined) {
    throw new CorebusError(
      'no_websocket',
      'no WebSocket implementation: this runtime has no globalThis.WebSocket (Node.js 20 has none); ' +
        "install the ws package and pass its class: connect({ url, WebSocket }) with `import WebSocket from 'ws'`",
    );
  }
  let backoff: BackoffPolicy;
  try {
    backoff = backoffPolicy(options.backoff);
  } catch (cause) {
    throw new CorebusError('invalid_argument', (cause as Error).message);
  }
  return {
    url: options.url,
    token: options.token,
    tokenProvider: options.tokenProvider,
    name: options.name ?? 'corebus-js',
    WebSocket: WebSocketClass,
    backoff,
    handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000,
    pingIntervalMs: options.pingIntervalMs ?? 20_000,
    pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
    tokenRefreshLeadMs: options.tokenRefreshLeadMs ?? 5_000,
    maxInFlightPublishes: options.maxInFlightPublishes ?? 16_383,
    maxDecompressedBytes: options.maxDecompressedBytes ?? DEFAULT_MAX_DECOMPRESSED,
    clock: options.clock ?? defaultClock,
    random: options.random ?? Math.random,
  };
}

/** @internal Checks the arguments of {@link Client.subscribe}. */
export function checkSubscribeArguments(handlers: SubscriptionHandlers, options: SubscribeOptions): void {
  if (handlers === null || typeof handlers !== 'object' || typeof handlers.onItem !== 'function') {
    throw new CorebusError('invalid_argument', 'subscribe() needs handlers with an onItem function');
  }
  if (options.from !== undefined && options.after !== undefined) {
    throw new CorebusError('invalid_argument', 'pass either from or after, not both');
  }
  if (options.group !== undefined) {
    if (typeof options.group !== 'string' || !isGroupName(options.group)) {
      throw new CorebusError('invalid_argument', `group ${JSON.stringify(options.group)}: 1 to 255 bytes, no / + # * > or control characters`);
    }
    if (options.from !== undefined || options.after !== undefined) {
      throw new CorebusError('invalid_argument', 'a shared subscription (group) is live only: no from or after');
    }
  }
  if (options.from !== undefined && (typeof options.from !== 'bigint' || options.from < 1n || options.from >= 1n << 64n)) {
    throw new CorebusError('invalid_argument', `from must be a bigint sequence number >= 1n, got ${String(options.from)}`);
  }
  const after = options.after;
  if (
    after !== undefined &&
    (typeof after.epoch !== 'bigint' ||
      typeof after.seq !== 'bigint' ||
      after.epoch < 0n ||
      after.seq < 0n ||
      after.epoch >= 1n << 64n ||
      after.seq >= (1n << 64n) - 1n)
  ) {
    throw new CorebusError('invalid_argument', 'after must be { epoch: bigint, seq: bigint } within u64');
  }
}
