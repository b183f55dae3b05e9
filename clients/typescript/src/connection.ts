/**
 * One WebSocket connection to a broker: the handshake, the table of
 * outstanding requests, the subscriptions it carries, heartbeats, and the
 * protocol's rules about what a server may send. It never reconnects; the
 * {@link Client} decides what to do when a connection ends.
 *
 * Everything here runs on the caller's event loop; nothing is shared with
 * other connections except through the client that owns them.
 *
 * @module
 */

import {
  FrameSplitter,
  MAX_PREHANDSHAKE_FRAME,
  PROTOCOL_VERSION,
  decodeServerFrame,
  encodeHello,
  encodePing,
  encodePong,
  type DiscontinuityFrame,
  type ErrorFrame,
  type MessageFrame,
  type TopicMessageFrame,
  type PubAckFrame,
  type ServerFrame,
  type SubOkFrame,
  type UnsubOkFrame,
  type WelcomeFrame,
} from './codec.js';
import { CorebusError } from './errors.js';
import { SUBPROTOCOL, type Clock, type WebSocketConstructor, type WebSocketLike } from './transport.js';

/**
 * What the connection does for one request while it waits for the answer.
 *
 * @internal
 */
export interface PendingRequest {
  kind: 'publish' | 'subscribe' | 'unsubscribe';
  /** For subscribe and unsubscribe: the `sub_id` the answer must name. */
  subId?: number;
  /** The answer arrived: returns a violation message if it is not acceptable. */
  answered(frame: PubAckFrame | SubOkFrame | UnsubOkFrame): string | undefined;
  /** A non-fatal `ERROR` with this request's id. */
  refused(error: CorebusError): void;
  /** The connection ended before an answer. */
  lost(error: CorebusError): void;
}

/**
 * What a subscription's delivery looks like to the connection: it routes
 * `MESSAGE`s and `DISCONTINUITY`s by `sub_id` to one of these. The methods
 * return a violation message when the frame breaks section 7.7.
 *
 * @internal
 */
export interface SubscriptionSink {
  subId: number;
  /** No `SUB_OK` yet, so no `MESSAGE` may come. */
  awaitingSubOk: boolean;
  message(frame: MessageFrame): string | undefined;
  /** A pattern subscription's item. */
  topicMessage(frame: TopicMessageFrame): string | undefined;
  discontinuity(frame: DiscontinuityFrame): string | undefined;
  /** The `sub_id` has ended (`UNSUB_OK`) and is free again. */
  ended(): void;
}

/**
 * What a connection reports to its owner.
 *
 * @internal
 */
export interface ConnectionEvents {
  welcome(connection: Connection): void;
  /** Called exactly once, when the connection is over. */
  closed(connection: Connection, error: CorebusError): void;
  goaway(connection: Connection, drainMs: number, message: string): void;
  /** A non-fatal `ERROR` that answers no outstanding request. */
  unmatchedError(connection: Connection, error: CorebusError, publishedTo?: { namespace: string; topic: string }): void;
}

/**
 * Settings of one connection, fixed by the client.
 *
 * @internal
 */
export interface ConnectionSettings {
  url: string;
  WebSocket: WebSocketConstructor;
  token: string | undefined;
  clientName: string;
  clock: Clock;
  handshakeTimeoutMs: number;
  pingIntervalMs: number;
  pongTimeoutMs: number;
}

/** How many request ids of unacknowledged publishes are remembered. */
const RECENT_UNACKED = 1024;
/**
 * WebSocket messages the client packs several frames into stay this small,
 * and never above `max_frame + 4`: the broker closes a session whose message
 * is larger (code 1009), whatever the frames inside.
 */
const PACK_LIMIT = 64 * 1024;
/** Close code for a connection the client drops (4000-4999: application). */
const CLOSE_PROTOCOL = 4000;

type Phase = 'connecting' | 'handshaking' | 'open' | 'draining' | 'closed';

/**
 * One connection's life: `connecting` (socket opening), `handshaking`
 * (`HELLO` sent), `open` (after `WELCOME`), `draining` (after `GOAWAY`, or
 * retired by the client: no new requests), `closed`.
 *
 * @internal
 */
export class Connection {
  readonly token: string | undefined;
  welcomeFrame: WelcomeFrame | undefined;
  /** Set when the server sent `GOAWAY`. */
  goawayReceived = false;
  private phase: Phase = 'connecting';
  private readonly socket: WebSocketLike;
  private readonly splitter = new FrameSplitter(MAX_PREHANDSHAKE_FRAME);
  private readonly requests = new Map<number, PendingRequest>();
  private readonly sinks = new Map<number, SubscriptionSink>();
  private readonly unackedPublishes = new Map<number, { namespace: string; topic: string }>();
  private lastRequestId = 0;
  private lastSubId = 0;
  private ackedInFlight = 0;
  private handshakeTimer: unknown;
  private pingTimer: unknown;
  private pongTimer: unknown;
  private drainTimer: unknown;
  private pingNonce = 0n;
  private outstandingPing: bigint | undefined;
  private socketClosed = false;
  private readonly socketClosedWaiters: Array<() => void> = [];
  private closeReason: CorebusError | undefined;
  private socketError: string | undefined;

  constructor(
    private readonly settings: ConnectionSettings,
    private readonly events: ConnectionEvents,
  ) {
    this.token = settings.token;
    const { clock } = settings;
    let socket: WebSocketLike;
    try {
      socket = new settings.WebSocket(settings.url, SUBPROTOCOL) as WebSocketLike;
    } catch (cause) {
      // A malformed URL throws synchronously; report it like any failure,
      // after the constructor returns.
      this.socket = { binaryType: '', protocol: '', send() {}, close() {}, addEventListener() {} };
      this.phase = 'closed';
      this.socketClosed = true;
      const error = new CorebusError('invalid_argument', `cannot open a WebSocket to ${settings.url}: ${String(cause)}`, {
        fatal: true,
        cause,
      });
      queueMicrotask(() => events.closed(this, error));
      return;
    }
    this.socket = socket;
    socket.binaryType = 'arraybuffer';
    socket.addEventListener('open', () => this.handleOpen());
    socket.addEventListener('message', (event: { data: unknown }) => this.handleMessage(event.data));
    socket.addEventListener('error', (event: { message?: unknown; error?: { message?: unknown } }) => {
      // Browsers say nothing here (on purpose); ws names the cause. The close
      // event that follows ends the connection.
      const detail = event?.message ?? event?.error?.message;
      if (typeof detail === 'string' && detail !== '') this.socketError = detail;
    });
    socket.addEventListener('close', (event: { code?: number; reason?: string }) => this.handleSocketClose(event));
    this.handshakeTimer = clock.setTimeout(() => {
      this.fail(
        new CorebusError('handshake_timeout', `no WELCOME within ${settings.handshakeTimeoutMs} ms`, { fatal: true }),
      );
    }, settings.handshakeTimeoutMs);
  }

  /** Whether new requests may be sent: open, not draining. */
  get usable(): boolean {
    return this.phase === 'open';
  }

  get isClosed(): boolean {
    return this.phase === 'closed';
  }

  /** `WELCOME.max_frame`: the longest frame the server accepts. */
  get maxFrame(): number {
    return this.welcomeFrame?.maxFrame ?? 0;
  }

  get pendingRequestCount(): number {
    return this.requests.size;
  }

  get acknowledgedPublishesInFlight(): number {
    return this.ackedInFlight;
  }

  /** Resolves once the WebSocket has reported its close. */
  whenSocketClosed(): Promise<void> {
    if (this.socketClosed) return Promise.resolve();
    return new Promise((resolve) => this.socketClosedWaiters.push(resolve));
  }

  // -------------------------------------------------------------------------
  // Sending

  /** A request id unused among outstanding requests; never 0. */
  private allocateRequestId(): number {
    do {
      this.lastRequestId = this.lastRequestId >= 0xffffffff ? 1 : this.lastRequestId + 1;
    } while (this.requests.has(this.lastRequestId));
    return this.lastRequestId;
  }

  /** A `sub_id` unused among this connection's subscriptions. */
  allocateSubId(): number {
    do {
      this.lastSubId = this.lastSubId >= 0xffffffff ? 1 : this.lastSubId + 1;
    } while (this.sinks.has(this.lastSubId));
    return this.lastSubId;
  }

  /**
   * Registers a request and returns its id, for the caller to encode into
   * the request's frame and send with {@link Connection.sendFrames}.
   */
  registerRequest(pending: PendingRequest): number {
    const requestId = this.allocateRequestId();
    this.requests.set(requestId, pending);
    if (pending.kind === 'publish') this.ackedInFlight++;
    return requestId;
  }

  /** Forgets a request whose frame could not be built. */
  unregisterRequest(requestId: number): void {
    const pending = this.requests.get(requestId);
    if (pending === undefined) return;
    this.requests.delete(requestId);
    if (pending.kind === 'publish') this.ackedInFlight--;
  }

  /** Allocates the id of a publish that wants no `PUB_ACK`. */
  registerUnackedPublish(namespace: string, topic: string): number {
    const requestId = this.allocateRequestId();
    // An ERROR may still answer it (section 7.3); remember where it went so
    // the report can say so. Map order is insertion order: drop the oldest.
    this.unackedPublishes.set(requestId, { namespace, topic });
    if (this.unackedPublishes.size > RECENT_UNACKED) {
      const oldest = this.unackedPublishes.keys().next().value as number;
      this.unackedPublishes.delete(oldest);
    }
    return requestId;
  }

  /** Routes `MESSAGE`s and `DISCONTINUITY`s of `sink.subId` to `sink`. */
  addSink(sink: SubscriptionSink): void {
    this.sinks.set(sink.subId, sink);
  }

  /** Sends one frame, or several packed into as few messages as fit. */
  sendFrames(frames: Uint8Array[]): void {
    if (this.phase !== 'open' && this.phase !== 'handshaking') return;
    const limit = Math.min(PACK_LIMIT, this.maxFrame + 4);
    let batch: Uint8Array[] = [];
    let batchBytes = 0;
    const flush = (): void => {
      if (batch.length === 0) return;
      this.transmit(batch.length === 1 ? batch[0]! : concat(batch, batchBytes));
      batch = [];
      batchBytes = 0;
    };
    for (const frame of frames) {
      if (batchBytes + frame.length > limit) flush();
      batch.push(frame);
      batchBytes += frame.length;
    }
    flush();
  }

  private transmit(bytes: Uint8Array): void {
    try {
      this.socket.send(bytes);
    } catch (cause) {
      this.fail(new CorebusError('connection_lost', `WebSocket send failed: ${String(cause)}`, { fatal: true, cause }));
    }
  }

  // -------------------------------------------------------------------------
  // Ending

  /**
   * Stops new requests; the connection closes once its outstanding requests
   * are answered, or after `timeoutMs`. Subscriptions must already have been
   * detached by the caller.
   */
  retire(timeoutMs: number): void {
    if (this.phase === 'closed') return;
    this.phase = 'draining';
    this.stopHeartbeat();
    if (this.requests.size === 0) {
      this.close();
      return;
    }
    this.drainTimer = this.settings.clock.setTimeout(() => this.close(), timeoutMs);
  }

  /**
   * Closes the connection normally (the client's own decision); outstanding
   * requests fail with `error`, by default `connection_lost`.
   */
  close(error = new CorebusError('connection_lost', 'the client closed the connection', { fatal: true })): void {
    this.finish(error, 1000, error.message);
  }

  /** Closes the connection because of `error`. */
  fail(error: CorebusError): void {
    this.finish(error, CLOSE_PROTOCOL, error.code);
  }

  private finish(error: CorebusError, code: number, reason: string): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    this.closeReason = error;
    const { clock } = this.settings;
    clock.clearTimeout(this.handshakeTimer);
    clock.clearTimeout(this.drainTimer);
    this.stopHeartbeat();
    if (!this.socketClosed) {
      try {
        this.socket.close(code, reason.slice(0, 100));
      } catch {
        // Closing an already failed socket may throw; it is over either way.
      }
    }
    const lost =
      error.code === 'connection_lost' || error.code === 'client_closed'
        ? error
        : new CorebusError('connection_lost', `connection ended before an answer: ${error.message}`, {
            fatal: true,
            cause: error,
          });
    const requests = [...this.requests.values()];
    this.requests.clear();
    this.ackedInFlight = 0;
    this.sinks.clear();
    for (const pending of requests) pending.lost(lost);
    this.events.closed(this, error);
  }

  private handleSocketClose(event: { code?: number; reason?: string }): void {
    this.socketClosed = true;
    for (const resolve of this.socketClosedWaiters.splice(0)) resolve();
    if (this.phase === 'closed') return;
    const detail = [`code ${event.code ?? 'unknown'}`, event.reason, this.socketError].filter(Boolean).join(', ');
    const message = this.goawayReceived
      ? `connection closed after GOAWAY (${detail})`
      : this.phase === 'connecting'
        ? `WebSocket connection to ${this.settings.url} failed (${detail})`
        : `WebSocket closed (${detail})`;
    this.finish(new CorebusError('connection_lost', message, { fatal: true }), 1000, message);
  }

  /** Why the connection ended; set once it has. */
  get endedBy(): CorebusError | undefined {
    return this.closeReason;
  }

  // -------------------------------------------------------------------------
  // Receiving

  private handleOpen(): void {
    if (this.phase !== 'connecting') return;
    // The server must pick the subprotocol we asked for; an empty string means
    // the implementation does not report it, which browsers and ws both do.
    if (this.socket.protocol !== '' && this.socket.protocol !== undefined && this.socket.protocol !== SUBPROTOCOL) {
      this.fail(
        new CorebusError('protocol_violation', `server chose subprotocol ${JSON.stringify(this.socket.protocol)}`, {
          fatal: true,
        }),
      );
      return;
    }
    this.phase = 'handshaking';
    // HELLO goes first and at once: the server's handshake deadline runs from
    // its accept (section 7.1), so nothing may be awaited before this send.
    this.sendFrames([encodeHello({ clientName: this.settings.clientName, credentials: this.token })]);
  }

  private handleMessage(data: unknown): void {
    if (this.phase === 'closed' || this.phase === 'connecting') return;
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) {
      bytes = new Uint8Array(data);
    } else if (ArrayBuffer.isView(data)) {
      bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    } else if (typeof data === 'string') {
      this.violation('the server sent a text WebSocket message; corebus.v1 carries binary messages only');
      return;
    } else {
      this.violation('the WebSocket delivered a message that is not an ArrayBuffer (is binaryType "arraybuffer"?)');
      return;
    }
    this.splitter.push(bytes);
    for (;;) {
      let frame: ServerFrame;
      try {
        const whole = this.splitter.next();
        if (whole === undefined) break;
        frame = decodeServerFrame(whole);
      } catch (error) {
        if (!(error instanceof CorebusError)) throw error;
        this.fail(
          new CorebusError('protocol_violation', `bad frame from the server: ${error.message}`, { fatal: true, cause: error }),
        );
        return;
      }
      this.handleFrame(frame);
      if (this.isClosed) return;
    }
    // The transport promises whole frames per message; a partial one left
    // over means the framing is off, and guessing would only go further wrong.
    if (this.splitter.pendingBytes > 0) {
      this.violation(`a WebSocket message ended inside a frame (${this.splitter.pendingBytes} bytes left over)`);
    }
  }

  private violation(message: string): void {
    this.fail(new CorebusError('protocol_violation', message, { fatal: true }));
  }

  private handleFrame(frame: ServerFrame): void {
    if (this.phase === 'handshaking') {
      if (frame.type === 'welcome') this.handleWelcome(frame);
      else if (frame.type === 'error' && frame.fatal) this.handleError(frame);
      else this.violation(`the server sent ${frame.type} before WELCOME`);
      return;
    }
    switch (frame.type) {
      case 'welcome':
        this.violation('a second WELCOME');
        return;
      case 'ping':
        this.sendFrames([encodePong(frame.nonce)]);
        return;
      case 'pong':
        if (frame.nonce === this.outstandingPing) {
          this.outstandingPing = undefined;
          this.settings.clock.clearTimeout(this.pongTimer);
        }
        return;
      case 'pub_ack':
      case 'sub_ok':
      case 'unsub_ok':
        this.handleAnswer(frame);
        return;
      case 'message':
      case 'topic_message':
      case 'discontinuity':
        this.handleDelivery(frame);
        return;
      case 'goaway':
        this.handleGoaway(frame.drainMs, frame.message);
        return;
      case 'error':
        this.handleError(frame);
        return;
      case 'token':
      case 'webhook_reply':
        // This client sends neither TOKEN_REQUEST nor WEBHOOK_REQUEST.
        this.violation(`${frame.type} for request ${frame.requestId}, which this client never sent`);
        return;
    }
  }

  private handleWelcome(frame: WelcomeFrame): void {
    if (frame.version !== PROTOCOL_VERSION) {
      this.violation(`the server answered with protocol version ${frame.version}; this client speaks ${PROTOCOL_VERSION}`);
      return;
    }
    this.settings.clock.clearTimeout(this.handshakeTimer);
    this.welcomeFrame = frame;
    // Section 9, item 4: a MESSAGE may be 10 bytes longer than the largest
    // PUBLISH; an ERROR may carry a 65535-byte message whatever max_frame is.
    this.splitter.maxLength = Math.max(frame.maxFrame + 10, MAX_PREHANDSHAKE_FRAME);
    this.phase = 'open';
    this.schedulePing();
    this.events.welcome(this);
  }

  private handleAnswer(frame: PubAckFrame | SubOkFrame | UnsubOkFrame): void {
    const pending = this.requests.get(frame.requestId);
    const expected = frame.type === 'pub_ack' ? 'publish' : frame.type === 'sub_ok' ? 'subscribe' : 'unsubscribe';
    if (pending === undefined || pending.kind !== expected) {
      this.violation(`${frame.type} for request ${frame.requestId}, which is not an outstanding ${expected}`);
      return;
    }
    if (frame.type !== 'pub_ack' && frame.subId !== pending.subId) {
      this.violation(`${frame.type} for request ${frame.requestId} names sub_id ${frame.subId}, not ${pending.subId}`);
      return;
    }
    this.requests.delete(frame.requestId);
    if (pending.kind === 'publish') this.ackedInFlight--;
    if (frame.type === 'unsub_ok') this.endSubscription(frame.subId);
    const problem = pending.answered(frame);
    if (problem !== undefined) this.violation(problem);
    else this.closeIfDrained();
  }

  /** A retired connection closes once its last request is answered. */
  private closeIfDrained(): void {
    if (this.phase === 'draining' && !this.goawayReceived && this.requests.size === 0) this.close();
  }

  /** `UNSUB_OK`: the `sub_id` is free, and settles its unanswered `SUBSCRIBE` (section 7.5). */
  private endSubscription(subId: number): void {
    const sink = this.sinks.get(subId);
    if (sink === undefined) return;
    this.sinks.delete(subId);
    for (const [requestId, pending] of this.requests) {
      if (pending.kind === 'subscribe' && pending.subId === subId) this.requests.delete(requestId);
    }
    sink.ended();
  }

  private handleDelivery(frame: MessageFrame | TopicMessageFrame | DiscontinuityFrame): void {
    const sink = this.sinks.get(frame.subId);
    if (sink === undefined) {
      this.violation(`${frame.type} for sub_id ${frame.subId}, which is not an active subscription`);
      return;
    }
    if (sink.awaitingSubOk) {
      this.violation(`${frame.type} for sub_id ${frame.subId} before its SUB_OK`);
      return;
    }
    const problem =
      frame.type === 'message'
        ? sink.message(frame)
        : frame.type === 'topic_message'
          ? sink.topicMessage(frame)
          : sink.discontinuity(frame);
    if (problem !== undefined) this.violation(problem);
  }

  private handleGoaway(drainMs: number, message: string): void {
    // Section 7.10: stop sending, keep reading what was queued, and expect
    // the server to close within drain_ms; close ourselves if it does not.
    this.goawayReceived = true;
    this.phase = 'draining';
    this.stopHeartbeat();
    this.drainTimer = this.settings.clock.setTimeout(
      () =>
        this.close(
          new CorebusError('connection_lost', `the server did not close ${drainMs} ms after GOAWAY`, { fatal: true }),
        ),
      drainMs + 1000,
    );
    this.events.goaway(this, drainMs, message);
  }

  private handleError(frame: ErrorFrame): void {
    const error = CorebusError.fromWire(frame.code, frame.fatal, frame.message, frame.requestId);
    if (frame.fatal) {
      // Section 7.11: the server closes right after; everything outstanding is lost.
      this.finish(error, 1000, error.code);
      return;
    }
    const pending = frame.requestId === 0 ? undefined : this.requests.get(frame.requestId);
    if (pending !== undefined) {
      this.requests.delete(frame.requestId);
      if (pending.kind === 'publish') this.ackedInFlight--;
      pending.refused(error);
      this.closeIfDrained();
      return;
    }
    const publishedTo = this.unackedPublishes.get(frame.requestId);
    if (publishedTo !== undefined) this.unackedPublishes.delete(frame.requestId);
    this.events.unmatchedError(this, error, publishedTo);
  }

  // -------------------------------------------------------------------------
  // Heartbeat

  private schedulePing(): void {
    const { pingIntervalMs, clock } = this.settings;
    if (pingIntervalMs <= 0) return;
    this.pingTimer = clock.setTimeout(() => this.sendPing(), pingIntervalMs);
  }

  private sendPing(): void {
    if (this.phase !== 'open') return;
    if (this.outstandingPing !== undefined) {
      // The previous PING's own deadline is still running.
      this.schedulePing();
      return;
    }
    const { clock, pongTimeoutMs } = this.settings;
    this.pingNonce++;
    this.outstandingPing = this.pingNonce;
    this.sendFrames([encodePing(this.pingNonce)]);
    this.pongTimer = clock.setTimeout(() => {
      this.fail(new CorebusError('ping_timeout', `no PONG within ${pongTimeoutMs} ms`, { fatal: true }));
    }, pongTimeoutMs);
    this.schedulePing();
  }

  private stopHeartbeat(): void {
    const { clock } = this.settings;
    clock.clearTimeout(this.pingTimer);
    clock.clearTimeout(this.pongTimer);
    this.outstandingPing = undefined;
  }
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  const joined = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    joined.set(part, offset);
    offset += part.length;
  }
  return joined;
}
