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

import type { Headers } from './headers.js';
import { backoffDelay } from './backoff.js';
import { encodePublish, validateName } from './codec.js';
import { Connection, type ConnectionEvents } from './connection.js';
import { CorebusError } from './errors.js';
import { Emitter, type ClientEvents, type ClientState, type Listener, type ServerInfo } from './events.js';
import { tokenRefreshDelay } from './jwt.js';
import {
  checkSubscribeArguments,
  resolveOptions,
  type ConnectOptions,
  type PublishOptions,
  type ResolvedOptions,
} from './options.js';
import {
  SubscriptionImpl,
  type SubscribeOptions,
  type Subscription,
  type SubscriptionHandlers,
  type SubscriptionHost,
} from './subscription.js';

interface Attempt {
  purpose: 'reconnect' | 'refresh';
  connection: Connection | undefined;
}

/** How long a replaced connection may take to answer its last requests. */
const RETIRE_TIMEOUT_MS = 10_000;

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
  private readonly events = new Emitter<ClientEvents>();
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
        if (this.events.listenerCount('error') === 0) {
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
    return this.events.on(event, listener);
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
    this.events.off(event, listener);
  }

  private emit<K extends keyof ClientEvents>(event: K, payload: ClientEvents[K]): void {
    this.events.emit(event, payload);
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
    const subscription = new SubscriptionImpl(
      this.subscriptionHost,
      namespace,
      topic,
      handlers,
      options,
      this.options.maxDecompressedBytes,
    );
    this.subscriptions.add(subscription);
    // Only on the working connection: a switch-over in progress picks it up
    // when it takes over, resuming from the position this one establishes.
    if (this.active?.usable) this.sendSubscribes(this.active, [subscription]);
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
      return this.sendPublish(namespace, topic, payload, options.ack === true, options.headers);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  private sendPublish(
    namespace: string,
    topic: string,
    payload: Uint8Array | string,
    ack: boolean,
    headers: Headers | undefined,
  ): Promise<bigint | void> {
    if (this.currentState === 'closed') throw new CorebusError('client_closed', 'the client is closed');
    const connection = this.active;
    if (connection === undefined || !connection.usable) {
      throw new CorebusError('not_connected', `cannot publish while ${this.currentState}`);
    }
    const bytes = typeof payload === 'string' ? utf8.encode(payload) : payload;
    if (!(bytes instanceof Uint8Array)) throw new CorebusError('invalid_argument', 'payload must be a Uint8Array or a string');
    if (!ack) {
      const requestId = connection.registerUnackedPublish(namespace, topic);
      connection.sendFrames([encodePublish({ requestId, ack: false, namespace, topic, headers, payload: bytes }, connection.maxFrame)]);
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
        frame = encodePublish({ requestId, ack: true, namespace, topic, headers, payload: bytes }, connection.maxFrame);
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
    // A provider that never settles (a fetch without a timeout) must not
    // leave the client connecting forever: it gets the handshake's time.
    const { clock, handshakeTimeoutMs } = this.options;
    let timer: unknown;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = clock.setTimeout(
        () => reject(new CorebusError('token_provider_failed', `tokenProvider did not answer within ${handshakeTimeoutMs} ms`, { fatal: true })),
        handshakeTimeoutMs,
      );
    });
    let token: unknown;
    try {
      token = await Promise.race([provider(), timeout]);
    } finally {
      clock.clearTimeout(timer);
    }
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
    if (attempt.purpose === 'reconnect' || this.active === undefined) {
      this.promote(connection);
      return;
    }
    // A switch-over: resubscribe what has a position to resume from. A live
    // subscription still waiting for its first SUB_OK has none; subscribed
    // live here it could start later than the old connection delivers, an
    // unreported gap, so it follows at the takeover instead.
    const resumable = [...this.subscriptions].filter((subscription) => subscription.hasResumePoint);
    this.sendSubscribes(connection, resumable);
    this.finishSwitchIfReady();
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
