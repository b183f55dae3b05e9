/**
 * What the client needs from its environment: a WebSocket class and timers.
 * Both are injectable, so that the client runs in browsers, in Node.js with
 * the `ws` package, and in tests with a fake socket and a fake clock.
 *
 * @module
 */

/**
 * The WebSocket subprotocol the broker's browser transport speaks.
 *
 * @example
 * ```ts
 * new WebSocket('wss://bus.example.com/v1/ws', SUBPROTOCOL);
 * ```
 */
export const SUBPROTOCOL = 'corebus.v1';

/**
 * The part of the WHATWG WebSocket interface this client uses. Browsers'
 * `WebSocket` and the `ws` package's class both provide it.
 *
 * @example
 * ```ts
 * const socket: WebSocketLike = new WebSocket(url, 'corebus.v1');
 * ```
 */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: any) => void): void;
}

/**
 * A WebSocket class: `globalThis.WebSocket` in browsers (and Node.js 22+), or
 * the `ws` package's `WebSocket` in Node.js 20. Typed loosely so that both fit.
 *
 * @example
 * ```ts
 * import WebSocket from 'ws';
 * const client = await connect({ url, WebSocket });
 * ```
 */
export type WebSocketConstructor = new (url: string, protocols: string) => object;

/**
 * The timer functions the client uses. Tests pass a fake clock to cross a
 * 20 s backoff or a token's lifetime without waiting.
 *
 * @example
 * ```ts
 * const clock: Clock = { now: Date.now, setTimeout, clearTimeout };
 * ```
 */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}
