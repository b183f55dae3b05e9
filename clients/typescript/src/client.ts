/**
 * The client: an explicit state machine over successive connections.
 *
 * ```
 *            connect()
 *                │
 *           connecting ──────── first attempt fails ───────► closed (connect() rejects)
 *                │ WELCOME
 *                ▼
 *   ┌──────► connected ─── close() / fatal error nobody can retry ──► closed
 *   │            │ connection lost, retryable fatal ERROR, GOAWAY
 *   │            ▼
 *   │      disconnected ── backoff timer (0 after GOAWAY) ──┐
 *   │            ▲                                          ▼
 *   └─ WELCOME ──┴──────────── attempt fails ─────────── connecting
 * ```
 *
 * Subscriptions live on the client, not on a connection: every new
 * connection resubscribes them from their last position. A token refresh is
 * a second connection opened beside the working one ("make before break"):
 * once it has resubscribed everything, it takes over and the old one is
 * retired; subscriptions drop what both connections delivered, so nothing is
 * seen twice and nothing is skipped.
 *
 * @module
 */

import { backoffDelay, backoffPolicy, type BackoffOptions, type BackoffPolicy } from './backoff.js';
import { encodePublish, validateName } from './codec.js';
import { Connection, type Clock, type ConnectionEvents, type WebSocketConstructor } from './connection.js';
import { CorebusError } from './errors.js';
import { tokenRefreshDelay } from './jwt.js';
import {
  SubscriptionImpl,
  type SubscribeOptions,
  type Subscription,
  type SubscriptionHandlers,
  type SubscriptionHost,
} from './subscription.js';

/**
 * The client's state:
 * - `connecting`: an attempt to open a connection is under way;
 * - `connected`: a connection is open and takes requests;
 * - `disconnected`: no connection; the next attempt is scheduled;
 * - `closed`: for good, after {@link Client.close} or an error retrying cannot fix.
 *
 * @example
 * ```ts
 * if (client.state === 'connected') await client.publish('app', 'news', 'hi');
 * ```
 */
export type ClientState = 'connecting' | 'connected' | 'disconnected' | 'closed';

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
}

/** What the broker said in `WELCOME`. */
export interface ServerInfo {
  /** Largest frame the server accepts; longer publishes are refused locally. */
  maxFrame: number;
  shard: number;
  shardCount: number;
}

/** Payload of the `state` event. */
export interface StateChange {
  state: ClientState;
  previous: ClientState;
}

/** Payload of the `disconnected` event. */
export interface DisconnectedEvent {
  /** Why the connection ended. */
  error: CorebusError;
  /** When the next attempt starts; undefined after `GOAWAY` (it starts when the server closes). */
  reconnectInMs: number | undefined;
}

/** Payload of the `closed` event. */
export interface ClosedEvent {
  /** The error that closed the client; undefined after {@link Client.close}. */
  error: CorebusError | undefined;
}

/**
 * Events of a {@link Client} and their payloads.
 *
 * @example
 * ```ts
 * client.on('disconnected', ({ error, reconnectInMs }) => showOffline(error.message, reconnectInMs));
 * ```
 */
export interface ClientEvents {
  /** Every state change. */
  state: StateChange;
  /** An attempt to connect started (`attempt` counts failures since the last success). */
  connecting: { attempt: number };
  /** A connection is open (after each reconnect too; not after a token refresh). */
  connected: ServerInfo;
  /** The connection was lost; the client will reconnect. */
  disconnected: DisconnectedEvent;
  /** The client is closed for good. */
  closed: ClosedEvent;
  /**
   * A problem worth reporting: a connection error, a failed token refresh, an
   * `ERROR` answering no outstanding request (such as a failed publish sent
   * without ack), a broken subscription stream.
   */
  error: CorebusError;
}

type Listener<K extends keyof ClientEvents> = (payload: ClientEvents[K]) => void;

interface Attempt {
  purpose: 'reconnect' | 'refresh';
  connection: Connection | undefined;
}

interface ResolvedOptions {
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
  clock: Clock;
  random: () => number;
}

/** How long a replaced connection may take to answer its last requests. */
const RETIRE_TIMEOUT_MS = 10_000;

const defaultClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

const utf8 = new TextEncoder();
const constructing = Symbol('corebus.connect');

/**
 * Opens a client: connects, authenticates and resolves once the broker's
 * `WELCOME` arrived. After that the client reconnects by itself whenever the
 * connection is lost.
 *
 * @throws {@link CorebusError} (as a rejection) if the first connection
 *   fails: `unauthorized`, `token_expired`, `connection_lost` (the broker is
 *   unreachable), `handshake_timeout`, `no_websocket`, `invalid_argument`, ...
 * @example
 * ```ts
 * import { connect } from 'corebus';
 * const client = await connect({ url: 'wss://bus.example.com/v1/ws', token });
 * ```
 */
export async function connect(options: ConnectOptions): Promise<Client> {
  const client = new Client(resolveOptions(options), constructing);
  await client.start();
  return client;
}

function resolveOptions(options: ConnectOptions): ResolvedOptions {
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
    clock: options.clock ?? defaultClock,
    random: options.random ?? Math.random,
  };
}

/** The same error with a message that says more. */
function withContext(error: CorebusError, message: string): CorebusError {
  return new CorebusError(error.code, message, {
    fatal: error.fatal,
    wireCode: error.wireCode,
    requestId: error.requestId,
    cause: error,
  });
}

function asCorebusError(error: unknown, code: 'token_provider_failed'): CorebusError {
  if (error instanceof CorebusError) return error;
  const detail = error instanceof Error ? error.message : String(error);
  return new CorebusError(code, `tokenProvider failed: ${detail}`, { fatal: true, cause: error });
}

/**
 * A connection to a corebus broker that survives disconnects. Create one with
 * {@link connect}.
 *
 * @example
 * ```ts
 * const client = await connect({ url, token });
 * client.on('state', ({ state }) => setStatus(state));
 * const sub = await client.subscribe('chat', 'room/1', { onItem: (item) => show(item.text()) });
 * await client.publish('chat', 'room/1', 'hello', { ack: true });
 * await client.close();
 * ```
 */
export class Client {
  private currentState: ClientState = 'connecting';
  private readonly listeners = new Map<keyof ClientEvents, Set<(payload: never) => void>>();
  private readonly subscriptions = new Set<SubscriptionImpl>();
  private readonly connections = new Set<Connection>();
  /** The connection requests go to; null while there is none. */
  private active: Connection | undefined;
  /** A connection after `GOAWAY`: read until the server closes it. */
  private draining: Connection | undefined;
  private attempt: Attempt | undefined;
  private reconnectTimer: unknown;
  private refreshTimer: unknown;
  private reconnectFailures = 0;
  private refreshFailures = 0;
  private everConnected = false;
  private settleStart: { resolve: () => void; reject: (error: CorebusError) => void } | undefined;
  private readonly connectionEvents: ConnectionEvents;
  private readonly subscriptionHost: SubscriptionHost;

  /** @internal Use {@link connect}. */
  constructor(
    private readonly options: ResolvedOptions,
    key: symbol,
  ) {
    if (key !== constructing) throw new TypeError('use connect() to create a corebus Client');
    this.connectionEvents = {
      welcome: (connection) => this.handleWelcome(connection),
      closed: (connection, error) => this.handleConnectionClosed(connection, error),
      goaway: (connection, drainMs, message) => this.handleGoaway(connection, drainMs, message),
      unmatchedError: (_connection, error, publishedTo) => {
        const where = publishedTo === undefined ? '' : ` (publish to ${publishedTo.namespace}/${publishedTo.topic})`;
        this.emit('error', where === '' ? error : withContext(error, error.message + where));
      },
    };
    this.subscriptionHost = {
      forget: (subscription) => this.subscriptions.delete(subscription),
      bindingSettled: (connection) => {
        if (connection === this.attempt?.connection) this.finishSwitchIfReady();
      },
      handlerFailed: (error, callback) => {
        if ((this.listeners.get('error')?.size ?? 0) === 0) {
          // Nobody would hear of it: let it surface as an uncaught error.
          queueMicrotask(() => {
            throw error;
          });
          return;
        }
        const detail = error instanceof Error ? error.message : String(error);
        this.emit('error', new CorebusError('handler_failed', `${callback} threw: ${detail}`, { cause: error }));
      },
    };
  }

  /** @internal Opens the first connection; called by {@link connect}. */
  start(): Promise<void> {
    const started = new Promise<void>((resolve, reject) => {
      this.settleStart = { resolve, reject };
    });
    this.beginAttempt('reconnect');
    return started;
  }

  /**
   * The current state.
   *
   * @example
   * ```ts
   * console.log(client.state); // 'connected'
   * ```
   */
  get state(): ClientState {
    return this.currentState;
  }

  /**
   * What the broker announced in `WELCOME` on the current connection.
   *
   * @example
   * ```ts
   * console.log(client.serverInfo?.maxFrame); // 1048576
   * ```
   */
  get serverInfo(): ServerInfo | undefined {
    const welcome = this.active?.welcomeFrame;
    return welcome === undefined
      ? undefined
      : { maxFrame: welcome.maxFrame, shard: welcome.shard, shardCount: welcome.shardCount };
  }

  /**
   * Listens to an event; returns a function that stops listening.
   *
   * @example
   * ```ts
   * const stop = client.on('error', (error) => console.warn(error.code, error.message));
   * stop();
   * ```
   */
  on<K extends keyof ClientEvents>(event: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as (payload: never) => void);
    return () => this.off(event, listener);
  }

  /**
   * Stops a listener added with {@link Client.on}.
   *
   * @example
   * ```ts
   * client.off('error', onError);
   * ```
   */
  off<K extends keyof ClientEvents>(event: K, listener: Listener<K>): void {
    this.listeners.get(event)?.delete(listener as (payload: never) => void);
  }

  private emit<K extends keyof ClientEvents>(event: K, payload: ClientEvents[K]): void {
    const set = this.listeners.get(event);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        (listener as Listener<K>)(payload);
      } catch (error) {
        // A listener's bug must not derail the state machine; let it surface.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  private setState(state: ClientState): void {
    const previous = this.currentState;
    if (state === previous) return;
    this.currentState = state;
    this.emit('state', { state, previous });
  }

  // -------------------------------------------------------------------------
  // Public operations

  /**
   * Subscribes to a topic; resolves once the broker confirmed (`SUB_OK`).
   * While disconnected, the subscription is made on the next connection.
   * After every reconnect it resumes after the last item delivered, so the
   * handlers see each message at most once and in order, and are told of
   * every loss through `onDiscontinuity`.
   *
   * @throws {@link CorebusError} (as a rejection): `forbidden` when the
   *   credentials do not allow it, `invalid_name`, `too_many_subscriptions`,
   *   `client_closed`, `invalid_argument`.
   * @example
   * ```ts
   * const sub = await client.subscribe('chat', 'room/1', {
   *   onItem: (item) => console.log(item.seq, item.text()),
   *   onDiscontinuity: (gap) => console.warn('missed messages', gap),
   * });
   * ```
   */
  subscribe(
    namespace: string,
    topic: string,
    handlers: SubscriptionHandlers,
    options: SubscribeOptions = {},
  ): Promise<Subscription> {
    try {
      if (this.currentState === 'closed') throw new CorebusError('client_closed', 'the client is closed');
      validateName(namespace, topic);
      checkSubscribeArguments(handlers, options);
    } catch (error) {
      return Promise.reject(error);
    }
    const subscription = new SubscriptionImpl(this.subscriptionHost, namespace, topic, handlers, options);
    this.subscriptions.add(subscription);
    const targets = [this.active, this.attempt?.connection];
    for (const connection of targets) {
      if (connection !== undefined && connection.usable) this.sendSubscribes(connection, [subscription]);
    }
    return subscription.ready;
  }

  /**
   * Publishes a message. With `{ ack: true }` resolves with the sequence
   * number the broker gave it; without, resolves once it is sent (a failure
   * the broker reports later arrives as an `error` event).
   *
   * @throws {@link CorebusError} (as a rejection): `not_connected` while
   *   there is no connection, `forbidden`, `invalid_name`, `frame_too_large`
   *   (payload above `WELCOME.max_frame`), `too_many_in_flight`,
   *   `connection_lost` (with ack: the connection ended first; the message
   *   may or may not have been published).
   * @example
   * ```ts
   * const seq = await client.publish('orders', 'eu/created', JSON.stringify(order), { ack: true });
   * await client.publish('metrics', 'cpu', new Uint8Array([42]));
   * ```
   */
  publish(namespace: string, topic: string, payload: Uint8Array | string, options: { ack: true }): Promise<bigint>;
  publish(namespace: string, topic: string, payload: Uint8Array | string, options?: PublishOptions): Promise<bigint | void>;
  publish(namespace: string, topic: string, payload: Uint8Array | string, options: PublishOptions = {}): Promise<bigint | void> {
    try {
      return this.sendPublish(namespace, topic, payload, options.ack === true);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  private sendPublish(namespace: string, topic: string, payload: Uint8Array | string, ack: boolean): Promise<bigint | void> {
    if (this.currentState === 'closed') throw new CorebusError('client_closed', 'the client is closed');
    const connection = this.active;
    if (connection === undefined || !connection.usable) {
      throw new CorebusError('not_connected', `cannot publish while ${this.currentState}`);
    }
    const bytes = typeof payload === 'string' ? utf8.encode(payload) : payload;
    if (!(bytes instanceof Uint8Array)) throw new CorebusError('invalid_argument', 'payload must be a Uint8Array or a string');
    if (!ack) {
      const requestId = connection.registerUnackedPublish(namespace, topic);
      connection.sendFrames([encodePublish({ requestId, ack: false, namespace, topic, payload: bytes }, connection.maxFrame)]);
      return Promise.resolve();
    }
    if (connection.acknowledgedPublishesInFlight >= this.options.maxInFlightPublishes) {
      throw new CorebusError(
        'too_many_in_flight',
        `${connection.acknowledgedPublishesInFlight} acknowledged publishes are in flight; wait for their acks`,
      );
    }
    return new Promise<bigint>((resolve, reject) => {
      const requestId = connection.registerRequest({
        kind: 'publish',
        answered: (frame) => {
          resolve((frame as { seq: bigint }).seq);
          return undefined;
        },
        refused: reject,
        lost: reject,
      });
      let frame: Uint8Array;
      try {
        frame = encodePublish({ requestId, ack: true, namespace, topic, payload: bytes }, connection.maxFrame);
      } catch (error) {
        connection.unregisterRequest(requestId);
        reject(error);
        return;
      }
      connection.sendFrames([frame]);
    });
  }

  /**
   * Closes the client for good: every connection is closed, pending requests
   * and subscribes reject with `client_closed`, no reconnect follows.
   * Resolves once the sockets have closed.
   *
   * @example
   * ```ts
   * window.addEventListener('pagehide', () => void client.close());
   * ```
   */
  close(): Promise<void> {
    const sockets = [...this.connections].map((connection) => connection.whenSocketClosed());
    this.shutdown(undefined);
    return Promise.all(sockets).then(() => undefined);
  }

  // -------------------------------------------------------------------------
  // Connections

  private beginAttempt(purpose: Attempt['purpose']): void {
    const attempt: Attempt = { purpose, connection: undefined };
    this.attempt = attempt;
    if (purpose === 'reconnect') {
      this.setState('connecting');
      this.emit('connecting', { attempt: this.reconnectFailures });
    }
    this.fetchToken().then(
      (token) => {
        if (this.attempt !== attempt) return;
        const connection = new Connection(
          {
            url: this.options.url,
            WebSocket: this.options.WebSocket,
            token,
            clientName: this.options.name,
            clock: this.options.clock,
            handshakeTimeoutMs: this.options.handshakeTimeoutMs,
            pingIntervalMs: this.options.pingIntervalMs,
            pongTimeoutMs: this.options.pongTimeoutMs,
          },
          this.connectionEvents,
        );
        attempt.connection = connection;
        if (!connection.isClosed) this.connections.add(connection);
      },
      (error: unknown) => {
        if (this.attempt !== attempt) return;
        this.attemptFailed(attempt, asCorebusError(error, 'token_provider_failed'));
      },
    );
  }

  private async fetchToken(): Promise<string | undefined> {
    const provider = this.options.tokenProvider;
    if (provider === undefined) return this.options.token;
    const token = await provider();
    if (typeof token !== 'string') {
      throw new CorebusError('token_provider_failed', `tokenProvider returned ${typeof token}, not a string`, { fatal: true });
    }
    return token;
  }

  private handleWelcome(connection: Connection): void {
    const attempt = this.attempt;
    if (attempt === undefined || attempt.connection !== connection) {
      connection.close();
      return;
    }
    this.sendSubscribes(connection, [...this.subscriptions]);
    if (attempt.purpose === 'reconnect' || this.active === undefined) this.promote(connection);
    else this.finishSwitchIfReady();
  }

  /** A refresh connection takes over once every subscription has its answer on it. */
  private finishSwitchIfReady(): void {
    const connection = this.attempt?.connection;
    if (connection === undefined || !connection.usable) return;
    for (const subscription of this.subscriptions) {
      if (subscription.isSubscribingOn(connection)) return;
    }
    this.promote(connection);
  }

  private promote(connection: Connection): void {
    const previous = this.active;
    this.attempt = undefined;
    this.active = connection;
    this.reconnectFailures = 0;
    this.refreshFailures = 0;
    if (previous !== undefined) this.retire(previous);
    if (this.draining !== undefined) this.retire(this.draining);
    // Subscriptions made while the switch was under way.
    this.sendSubscribes(connection, [...this.subscriptions]);
    this.scheduleRefresh(connection);
    this.everConnected = true;
    if (this.currentState !== 'connected') {
      this.setState('connected');
      this.emit('connected', this.serverInfo!);
    }
    const settle = this.settleStart;
    this.settleStart = undefined;
    settle?.resolve();
  }

  private retire(connection: Connection): void {
    if (this.draining === connection) this.draining = undefined;
    for (const subscription of this.subscriptions) subscription.detach(connection);
    connection.retire(RETIRE_TIMEOUT_MS);
  }

  private sendSubscribes(connection: Connection, subscriptions: SubscriptionImpl[]): void {
    const frames: Uint8Array[] = [];
    for (const subscription of subscriptions) {
      if (!subscription.active || subscription.isBoundTo(connection)) continue;
      try {
        frames.push(subscription.subscribeFrame(connection));
      } catch (error) {
        void subscription.end(error as CorebusError);
      }
    }
    connection.sendFrames(frames);
  }

  private handleGoaway(connection: Connection, drainMs: number, message: string): void {
    if (connection !== this.active) return;
    this.active = undefined;
    this.draining = connection;
    this.options.clock.clearTimeout(this.refreshTimer);
    const error = new CorebusError(
      'connection_lost',
      `the server is shutting down (GOAWAY${message === '' ? '' : `: ${message}`}, closing within ${drainMs} ms)`,
      { fatal: true },
    );
    if (this.attempt !== undefined) {
      // A token refresh was under way: it becomes the reconnect.
      this.attempt.purpose = 'reconnect';
      if (this.attempt.connection?.usable) this.promote(this.attempt.connection);
      else {
        this.setState('connecting');
        this.emit('connecting', { attempt: this.reconnectFailures });
      }
      return;
    }
    this.setState('disconnected');
    this.emit('disconnected', { error, reconnectInMs: undefined });
  }

  private handleConnectionClosed(connection: Connection, error: CorebusError): void {
    this.connections.delete(connection);
    for (const subscription of this.subscriptions) subscription.detach(connection);
    if (this.currentState === 'closed') return;

    if (connection === this.draining) {
      this.draining = undefined;
      if (this.active === undefined && this.attempt === undefined) this.beginAttempt('reconnect');
      return;
    }
    if (connection === this.active) {
      this.active = undefined;
      this.options.clock.clearTimeout(this.refreshTimer);
      if (!this.isRetryable(error)) {
        this.shutdown(error);
        return;
      }
      if (error.code !== 'connection_lost') this.emit('error', error);
      const attempt = this.attempt;
      if (attempt !== undefined) {
        attempt.purpose = 'reconnect';
        if (attempt.connection?.usable) this.promote(attempt.connection);
        else {
          this.setState('connecting');
          this.emit('connecting', { attempt: this.reconnectFailures });
        }
        return;
      }
      this.scheduleReconnect(error);
      return;
    }
    const attempt = this.attempt;
    if (attempt !== undefined && attempt.connection === connection) this.attemptFailed(attempt, error);
    // Otherwise a retired connection: it has done its work.
  }

  private attemptFailed(attempt: Attempt, error: CorebusError): void {
    this.attempt = undefined;
    if (!this.everConnected) {
      const settle = this.settleStart;
      this.settleStart = undefined;
      this.shutdown(error, false);
      settle?.reject(error);
      return;
    }
    if (attempt.purpose === 'refresh' && this.active !== undefined) {
      // The working connection is still fine; try again, before it expires.
      this.emit('error', withContext(error, `token refresh failed: ${error.message}`));
      const active = this.active;
      const delay = backoffDelay(this.options.backoff, this.refreshFailures++, this.options.random);
      this.options.clock.clearTimeout(this.refreshTimer);
      this.refreshTimer = this.options.clock.setTimeout(() => {
        if (this.active === active && this.attempt === undefined) this.beginAttempt('refresh');
      }, delay);
      return;
    }
    if (!this.isRetryable(error)) {
      this.shutdown(error);
      return;
    }
    if (error.code !== 'connection_lost') this.emit('error', error);
    this.reconnectFailures++;
    this.scheduleReconnect(error);
  }

  private scheduleReconnect(error: CorebusError): void {
    const delay = backoffDelay(this.options.backoff, this.reconnectFailures, this.options.random);
    this.setState('disconnected');
    this.emit('disconnected', { error, reconnectInMs: delay });
    this.options.clock.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = this.options.clock.setTimeout(() => {
      if (this.currentState === 'disconnected' && this.attempt === undefined) this.beginAttempt('reconnect');
    }, delay);
  }

  /**
   * Whether a new connection may fix what ended the last one. The broker's
   * verdict on the credentials stands unless a tokenProvider can supply new
   * ones; a broker that does not speak our version or rejects our frames
   * will do so again.
   */
  private isRetryable(error: CorebusError): boolean {
    if (error.wireCode === undefined) {
      return !['invalid_argument', 'no_websocket', 'client_closed'].includes(error.code);
    }
    switch (error.code) {
      case 'unauthorized':
      case 'token_expired':
        return this.options.tokenProvider !== undefined;
      case 'unsupported_version':
      case 'handshake_required':
      case 'malformed_frame':
      case 'frame_too_large':
        return false;
      default:
        return true;
    }
  }

  private scheduleRefresh(connection: Connection): void {
    this.options.clock.clearTimeout(this.refreshTimer);
    if (this.options.tokenProvider === undefined || connection.token === undefined) return;
    const delay = tokenRefreshDelay(connection.token, this.options.clock.now(), this.options.tokenRefreshLeadMs);
    if (delay === undefined) return;
    this.refreshTimer = this.options.clock.setTimeout(() => {
      if (this.active === connection && this.attempt === undefined) this.beginAttempt('refresh');
    }, delay);
  }

  /** Ends everything; `error` says why, none for {@link Client.close}. */
  private shutdown(error: CorebusError | undefined, announce = true): void {
    if (this.currentState === 'closed') return;
    const { clock } = this.options;
    clock.clearTimeout(this.reconnectTimer);
    clock.clearTimeout(this.refreshTimer);
    this.attempt = undefined;
    this.active = undefined;
    this.draining = undefined;
    this.setState('closed');
    const closedError = new CorebusError('client_closed', 'the client was closed', { fatal: true });
    for (const connection of [...this.connections]) connection.close(closedError);
    this.connections.clear();
    for (const subscription of [...this.subscriptions]) {
      subscription.abandon(error ?? closedError, error !== undefined && announce);
    }
    this.subscriptions.clear();
    if (!announce) return;
    if (error !== undefined) this.emit('error', error);
    this.emit('closed', { error });
  }
}

function checkSubscribeArguments(handlers: SubscriptionHandlers, options: SubscribeOptions): void {
  if (handlers === null || typeof handlers !== 'object' || typeof handlers.onItem !== 'function') {
    throw new CorebusError('invalid_argument', 'subscribe() needs handlers with an onItem function');
  }
  if (options.from !== undefined && options.after !== undefined) {
    throw new CorebusError('invalid_argument', 'pass either from or after, not both');
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
