/**
 * Subscriptions: the application's view ({@link Subscription}), which lives
 * across connections and keeps the resume position, and its binding to one
 * connection, which tracks that connection's `SUB_OK` epoch and expected
 * sequence number as section 7.7 of the protocol requires.
 *
 * A subscription may be bound to two connections at once while the client
 * switches connections (token refresh); the position it keeps is what makes
 * that safe: an item at or before the last delivered (epoch, seq) is dropped,
 * so the application never sees one twice.
 *
 * @module
 */

import type { Headers } from './headers.js';
import {
  encodeSubscribe,
  encodeSubscribeShared,
  encodeUnsubscribe,
  isPattern,
  type DiscontinuityFrame,
  type MessageFrame,
  type SubOkFrame,
  type TopicMessageFrame,
} from './codec.js';
import type { Connection, SubscriptionSink } from './connection.js';
import { CorebusError } from './errors.js';
import { decompressPayload } from './zstd.js';

/**
 * A point in a topic's stream: a message's epoch and sequence number.
 *
 * @example
 * ```ts
 * const saved: StreamPosition = { epoch: 0x0123456789abcdefn, seq: 41n };
 * await client.subscribe('app', 'news', handlers, { after: saved });
 * ```
 */
export interface StreamPosition {
  /** The topic's epoch: random, compared for equality only. */
  readonly epoch: bigint;
  /** Sequence number within the epoch (the first message is 1). */
  readonly seq: bigint;
}

/**
 * One message delivered to a subscription.
 *
 * @example
 * ```ts
 * onItem(item) {
 *   console.log(`${item.topic} #${item.seq}: ${item.text()}`);
 * }
 * ```
 */
export interface Item {
  readonly namespace: string;
  readonly topic: string;
  readonly epoch: bigint;
  readonly seq: bigint;
  /** The bytes exactly as published (decompressed, when the publisher compressed them). */
  readonly payload: Uint8Array;
  /** Whether the payload travelled zstd-compressed. */
  readonly compressed: boolean;
  /** The publisher's headers (or an MQTT 5.0 publisher's properties), when it set any. */
  readonly headers: Headers | undefined;
  /** The payload decoded as UTF-8 (invalid bytes become U+FFFD). */
  text(): string;
}

/**
 * Messages a subscription will never receive. When `epochChanged` is false,
 * the lost messages are exactly `lastSeq + 1 .. nextSeq - 1` of `epoch`.
 * When the topic's epoch changed (broker restart, eviction), whatever
 * followed `lastSeq` in `previousEpoch` is lost, and so are `1 .. nextSeq - 1`
 * of the new `epoch` (section 7.7).
 *
 * @example
 * ```ts
 * onDiscontinuity(gap) {
 *   if (!gap.epochChanged) console.warn(`lost ${gap.nextSeq - gap.lastSeq - 1n} messages`);
 *   reloadFromDatabase();
 * }
 * ```
 */
export interface Discontinuity {
  readonly namespace: string;
  readonly topic: string;
  /** The epoch delivery continues in. */
  readonly epoch: bigint;
  /** The last sequence number received (or asked for, minus one). */
  readonly lastSeq: bigint;
  /** The sequence number of the next item, in `epoch`. */
  readonly nextSeq: bigint;
  /** The epoch `lastSeq` belongs to, when one was known. */
  readonly previousEpoch: bigint | undefined;
  /** Whether delivery moved to another epoch. */
  readonly epochChanged: boolean;
}

/**
 * What a subscription calls. An error thrown by one of these callbacks does
 * not disturb delivery: it goes to the client's `error` event as
 * `handler_failed`, or, when nothing listens there, is rethrown
 * asynchronously as an uncaught error.
 *
 * @example
 * ```ts
 * const handlers: SubscriptionHandlers = {
 *   onItem: (item) => render(item.text()),
 *   onDiscontinuity: (gap) => console.warn('messages lost', gap),
 *   onError: (error) => console.error(error.code, error.message),
 * };
 * ```
 */
export interface SubscriptionHandlers {
  /** Each item, in sequence order, at most once. */
  onItem(item: Item): void;
  /** Messages were lost (resume point too old, epoch change, slow consumer). */
  onDiscontinuity?(discontinuity: Discontinuity): void;
  /**
   * The subscription hit a problem: a broken sequence from the server (the
   * client then reconnects and resumes), a refused resubscribe after a
   * reconnect (the subscription has then ended), the client closing for
   * good after a fatal error (ended too), or a compressed message that could
   * not be decompressed (`decompress_failed`: that message is skipped and
   * the subscription goes on).
   */
  onError?(error: CorebusError): void;
}

/**
 * Where a new subscription starts. Without either field it is live: it gets
 * the messages published after it took effect.
 *
 * @example
 * ```ts
 * await client.subscribe('app', 'news', handlers, { from: 1n }); // what the replay ring still holds
 * ```
 */
export interface SubscribeOptions {
  /** First sequence number wanted, in the topic's current epoch (>= 1). */
  from?: bigint;
  /** Continue after this position, the last one received (e.g. saved by a page). */
  after?: StreamPosition;
  /**
   * Join this group's shared subscription (protocol section 6.23): each
   * message goes to one member of the group, whichever connections joined
   * it (MQTT clients with `$share/{group}/{filter}` too). Items carry their
   * topic, as a pattern's do; a member gets only its share of each topic's
   * sequence, so no gap is reported. Live only (not with `from` or
   * `after`). 1 to 255 UTF-8 bytes, no `/`, `+`, `#`, `*`, `>` or control
   * characters.
   */
  group?: string;
}

/**
 * An active subscription. It survives reconnects: the client resubscribes it
 * on every new connection from {@link Subscription.position}.
 *
 * @example
 * ```ts
 * const sub = await client.subscribe('app', 'news', { onItem: console.log });
 * localStorage.setItem('news', String(sub.position?.seq));
 * await sub.unsubscribe();
 * ```
 */
export interface Subscription {
  readonly namespace: string;
  readonly topic: string;
  /**
   * The last (epoch, seq) delivered, or, before any item, the point the
   * subscription started after. A resume continues right after it.
   */
  readonly position: StreamPosition | undefined;
  /** False once unsubscribed or ended by an error. */
  readonly active: boolean;
  /** Ends the subscription; resolves when the server confirmed (or the connection is gone). */
  unsubscribe(): Promise<void>;
}

/**
 * What a subscription needs from the client that owns it.
 *
 * @internal
 */
export interface SubscriptionHost {
  /** The subscription ended; stop resubscribing it. */
  forget(subscription: SubscriptionImpl): void;
  /** A connection finished subscribing one of its bindings. */
  bindingSettled(connection: Connection): void;
  /** An application callback threw `error`. */
  handlerFailed(error: unknown, callback: string): void;
}

/** The subscription on one connection (section 7.7's per-`sub_id` state). */
class Binding implements SubscriptionSink {
  awaitingSubOk = true;
  /** Unsubscribed or retired: frames still arriving are dropped. */
  detached = false;
  epoch = 0n;
  expected = 0n;
  /** `SUB_OK` left a gap from the resume point that a `DISCONTINUITY` must report. */
  awaitingDiscontinuity = false;

  constructor(
    readonly subscription: SubscriptionImpl,
    readonly connection: Connection,
    readonly subId: number,
    /** The position sent in `SUBSCRIBE` (resume after it); undefined: live. */
    readonly resumeAfter: StreamPosition | undefined,
  ) {}

  message(frame: MessageFrame): string | undefined {
    return this.subscription.handleMessage(this, frame);
  }
  topicMessage(frame: TopicMessageFrame): string | undefined {
    return this.subscription.handleTopicMessage(this, frame);
  }
  discontinuity(frame: DiscontinuityFrame): string | undefined {
    return this.subscription.handleDiscontinuity(this, frame);
  }
  ended(): void {
    this.subscription.bindingEnded(this);
  }
}

const textDecoder = new TextDecoder();

class DeliveredItem implements Item {
  constructor(
    readonly namespace: string,
    readonly topic: string,
    readonly epoch: bigint,
    readonly seq: bigint,
    readonly payload: Uint8Array,
    readonly compressed: boolean,
    readonly headers: Headers | undefined,
  ) {}
  text(): string {
    return textDecoder.decode(this.payload);
  }
}

/**
 * The implementation behind {@link Subscription}. Who mutates it: only the
 * client that owns it, on its event loop, through the methods below.
 *
 * @internal
 */
export class SubscriptionImpl implements Subscription {
  /** Resolves on the first `SUB_OK`; rejects if the first `SUBSCRIBE` is refused. */
  readonly ready: Promise<Subscription>;
  private resolveReady!: (subscription: Subscription) => void;
  private rejectReady!: (error: CorebusError) => void;
  private state: 'pending' | 'active' | 'ended' = 'pending';
  /** A pattern subscription (`orders/*`), or a shared one: live only, items of many topics. */
  readonly pattern: boolean;
  /** A shared subscription's group. */
  private readonly group: string | undefined;
  /**
   * A pattern's last delivered position per topic: a repeat (two
   * connections during a switch-over) is dropped, a jump is reported.
   */
  private readonly topicPositions = new Map<string, StreamPosition>();
  /** Topics whose position a pattern keeps, at most; the oldest go first. */
  static readonly MAX_TOPIC_POSITIONS = 10_000;
  /** Epoch 0 stands for "the topic's current epoch" until a `SUB_OK` names it. */
  private resumePoint: StreamPosition | undefined;
  private readonly bindings = new Map<Connection, Binding>();

  constructor(
    private readonly host: SubscriptionHost,
    readonly namespace: string,
    readonly topic: string,
    private readonly handlers: SubscriptionHandlers,
    options: SubscribeOptions,
    /** Most bytes a compressed payload may decompress to. */
    private readonly maxDecompressed: number,
  ) {
    this.group = options.group;
    this.pattern = isPattern(topic) || this.group !== undefined;
    if (options.after !== undefined) this.resumePoint = { epoch: options.after.epoch, seq: options.after.seq };
    else if (options.from !== undefined) this.resumePoint = { epoch: 0n, seq: options.from - 1n };
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
  }

  get position(): StreamPosition | undefined {
    const point = this.resumePoint;
    return point === undefined || point.epoch === 0n ? undefined : { epoch: point.epoch, seq: point.seq };
  }

  get active(): boolean {
    return this.state !== 'ended';
  }

  /** Whether a resubscribe would resume from a point (not start live). */
  get hasResumePoint(): boolean {
    return this.resumePoint !== undefined;
  }

  /** Whether `connection` has this subscription, answered or not. */
  isBoundTo(connection: Connection): boolean {
    return this.bindings.has(connection);
  }

  /** Whether `connection` still owes this subscription its `SUB_OK`. */
  isSubscribingOn(connection: Connection): boolean {
    return this.bindings.get(connection)?.awaitingSubOk === true;
  }

  /**
   * Registers the subscription on `connection` and returns its `SUBSCRIBE`
   * frame, resuming right after the current position. Throws a
   * {@link CorebusError} (`frame_too_large`) if the frame cannot be sent.
   */
  subscribeFrame(connection: Connection): Uint8Array {
    const subId = connection.allocateSubId();
    // A pattern resubscribes live: its topics' positions are its own.
    const resumeAfter = this.pattern ? undefined : this.resumePoint;
    const binding = new Binding(this, connection, subId, resumeAfter);
    const requestId = connection.registerRequest({
      kind: 'subscribe',
      subId,
      answered: (frame) => this.handleSubOk(binding, frame as SubOkFrame),
      refused: (error) => this.handleRefused(binding, error),
      lost: () => this.dropBinding(binding),
    });
    let frame: Uint8Array;
    try {
      frame =
        this.group === undefined
          ? encodeSubscribe(
              {
                requestId,
                subId,
                resumeEpoch: resumeAfter === undefined ? 0n : resumeAfter.epoch,
                resumeSeq: resumeAfter === undefined ? 0n : resumeAfter.seq + 1n,
                namespace: this.namespace,
                topic: this.topic,
              },
              connection.maxFrame,
            )
          : encodeSubscribeShared(
              { requestId, subId, group: this.group, namespace: this.namespace, topic: this.topic },
              connection.maxFrame,
            );
    } catch (error) {
      connection.unregisterRequest(requestId);
      throw error;
    }
    connection.addSink(binding);
    this.bindings.set(connection, binding);
    return frame;
  }

  /**
   * Leaves `connection` without telling the server (the connection is being
   * retired or is gone): frames still arriving for it are dropped.
   */
  detach(connection: Connection): void {
    const binding = this.bindings.get(connection);
    if (binding === undefined) return;
    binding.detached = true;
    this.bindings.delete(connection);
  }

  unsubscribe(): Promise<void> {
    if (this.state === 'ended') return Promise.resolve();
    return this.end(undefined);
  }

  /**
   * Ends the subscription: `error` (if any) goes to the application, every
   * binding on a usable connection is unsubscribed, the rest are dropped.
   */
  end(error: CorebusError | undefined): Promise<void> {
    const wasPending = this.state === 'pending';
    this.state = 'ended';
    this.host.forget(this);
    const confirmations: Promise<void>[] = [];
    for (const binding of [...this.bindings.values()]) {
      binding.detached = true;
      this.bindings.delete(binding.connection);
      if (binding.connection.usable) confirmations.push(this.sendUnsubscribe(binding));
    }
    if (error !== undefined) {
      if (wasPending) this.rejectReady(error);
      else this.callSafely('onError', () => this.handlers.onError?.(error));
    }
    return Promise.all(confirmations).then(() => undefined);
  }

  /** Called when the client closes: pending subscribes fail, nothing is sent. */
  abandon(error: CorebusError, tellApplication: boolean): void {
    if (this.state === 'ended') return;
    const wasPending = this.state === 'pending';
    this.state = 'ended';
    for (const binding of this.bindings.values()) binding.detached = true;
    this.bindings.clear();
    if (wasPending) this.rejectReady(error);
    else if (tellApplication) this.callSafely('onError', () => this.handlers.onError?.(error));
  }

  private sendUnsubscribe(binding: Binding): Promise<void> {
    const connection = binding.connection;
    return new Promise((resolve) => {
      // Any outcome ends the subscription on this connection: UNSUB_OK, an
      // ERROR (unknown_subscription: it was already gone), or a lost connection.
      const requestId = connection.registerRequest({
        kind: 'unsubscribe',
        subId: binding.subId,
        answered: () => {
          resolve();
          return undefined;
        },
        refused: () => resolve(),
        lost: () => resolve(),
      });
      connection.sendFrames([encodeUnsubscribe({ requestId, subId: binding.subId })]);
    });
  }

  // -------------------------------------------------------------------------
  // Frames from one connection (section 7.7)

  private handleSubOk(binding: Binding, frame: SubOkFrame): string | undefined {
    binding.awaitingSubOk = false;
    binding.epoch = frame.epoch;
    binding.expected = frame.startAfter + 1n;
    if (this.pattern) {
      if (!binding.detached && this.state === 'pending') {
        this.state = 'active';
        this.resolveReady(this);
      }
      this.host.bindingSettled(binding.connection);
      return undefined;
    }
    if (!binding.detached) {
      const sent = binding.resumeAfter;
      if (sent === undefined) {
        if (this.resumePoint === undefined) this.resumePoint = { epoch: frame.epoch, seq: frame.startAfter };
      } else {
        // Section 7.6: a SUB_OK starting past the resume point, or in another
        // epoch, is followed by a DISCONTINUITY before any MESSAGE.
        const otherEpoch = sent.epoch !== 0n && sent.epoch !== frame.epoch;
        binding.awaitingDiscontinuity = otherEpoch || frame.startAfter > sent.seq;
        if (this.resumePoint !== undefined && this.resumePoint.epoch === 0n) {
          this.resumePoint = { epoch: frame.epoch, seq: this.resumePoint.seq };
        }
      }
      if (this.state === 'pending') {
        this.state = 'active';
        this.resolveReady(this);
      }
    }
    this.host.bindingSettled(binding.connection);
    return undefined;
  }

  private handleRefused(binding: Binding, error: CorebusError): void {
    this.bindings.delete(binding.connection);
    binding.detached = true;
    if (this.state !== 'ended') void this.end(error);
    this.host.bindingSettled(binding.connection);
  }

  private dropBinding(binding: Binding): void {
    binding.detached = true;
    if (this.bindings.get(binding.connection) === binding) this.bindings.delete(binding.connection);
  }

  bindingEnded(binding: Binding): void {
    this.dropBinding(binding);
    this.host.bindingSettled(binding.connection);
  }

  /**
   * A pattern's item: each topic keeps its own order. A seq at or before the
   * topic's last one (of the same epoch) was delivered already; one further
   * on, or in another epoch, means messages of that topic were missed
   * (while reconnecting, or dropped for a slow consumer): reported, then
   * delivered.
   */
  handleTopicMessage(binding: Binding, frame: TopicMessageFrame): string | undefined {
    if (!this.pattern) return `TOPIC_MESSAGE for ${this.topic}, which is not a pattern subscription`;
    if (binding.detached || this.state === 'ended') return undefined;
    const last = this.topicPositions.get(frame.topic);
    if (last !== undefined && last.epoch === frame.epoch && frame.seq <= last.seq) return undefined;
    // Re-inserted, so that the map's order is the order of last use, and
    // bounded: a pattern may match any number of topics.
    this.topicPositions.delete(frame.topic);
    this.topicPositions.set(frame.topic, { epoch: frame.epoch, seq: frame.seq });
    if (this.topicPositions.size > SubscriptionImpl.MAX_TOPIC_POSITIONS) {
      const oldest = this.topicPositions.keys().next().value;
      if (oldest !== undefined) this.topicPositions.delete(oldest);
    }
    // A shared subscription's member gets a share of each topic: its gaps
    // are other members' messages.
    if (this.group === undefined && last !== undefined && (last.epoch !== frame.epoch || frame.seq > last.seq + 1n)) {
      const gap: Discontinuity = {
        namespace: this.namespace,
        topic: frame.topic,
        epoch: frame.epoch,
        lastSeq: last.seq,
        nextSeq: frame.seq,
        previousEpoch: last.epoch,
        epochChanged: last.epoch !== frame.epoch,
      };
      this.callSafely('onDiscontinuity', () => this.handlers.onDiscontinuity?.(gap));
    }
    this.deliver(frame.topic, frame);
    return undefined;
  }

  /**
   * Hands one item of `topic` to `onItem`, decompressed when it travelled
   * compressed; one that cannot be is skipped and reported to `onError`,
   * and delivery goes on (the stream itself is sound).
   */
  private deliver(topic: string, frame: MessageFrame | TopicMessageFrame): void {
    let payload = frame.payload;
    if (frame.compressed) {
      try {
        payload = decompressPayload(payload, this.maxDecompressed);
      } catch (error) {
        const problem = error as CorebusError;
        const failure = new CorebusError('decompress_failed', `${topic} #${frame.seq}: ${problem.message}`, { cause: problem });
        this.callSafely('onError', () => this.handlers.onError?.(failure));
        return;
      }
    }
    const item = new DeliveredItem(this.namespace, topic, frame.epoch, frame.seq, payload, frame.compressed, frame.headers);
    this.callSafely('onItem', () => this.handlers.onItem(item));
  }

  handleMessage(binding: Binding, frame: MessageFrame): string | undefined {
    if (this.pattern) return `MESSAGE for the pattern subscription ${this.topic}`;
    if (frame.epoch !== binding.epoch) {
      return this.broken(binding, `MESSAGE seq ${frame.seq} in epoch ${hex(frame.epoch)}, but SUB_OK said epoch ${hex(binding.epoch)}`);
    }
    if (frame.seq !== binding.expected) {
      return this.broken(binding, `MESSAGE seq ${frame.seq} where seq ${binding.expected} was due`);
    }
    binding.expected = frame.seq + 1n;
    if (binding.awaitingDiscontinuity) {
      return this.broken(binding, `MESSAGE seq ${frame.seq} without the DISCONTINUITY its SUB_OK called for`);
    }
    if (binding.detached || this.state === 'ended') return undefined;
    const point = this.resumePoint;
    // Another connection (during a switch-over) may have delivered it already.
    if (point !== undefined && point.epoch === frame.epoch && frame.seq <= point.seq) return undefined;
    this.resumePoint = { epoch: frame.epoch, seq: frame.seq };
    this.deliver(this.topic, frame);
    return undefined;
  }

  handleDiscontinuity(binding: Binding, frame: DiscontinuityFrame): string | undefined {
    if (frame.epoch !== binding.epoch) {
      // The topic went on in another epoch (in a cluster, its owner died:
      // protocol.md 7.4), from where this subscription was.
      if (binding.awaitingDiscontinuity || frame.lastSeq !== binding.expected - 1n) {
        return this.broken(
          binding,
          `DISCONTINUITY into epoch ${hex(frame.epoch)} after seq ${frame.lastSeq}, but the subscription was at seq ${binding.expected - 1n} of epoch ${hex(binding.epoch)}`,
        );
      }
      binding.epoch = frame.epoch;
    } else if (frame.nextSeq < binding.expected) {
      return this.broken(binding, `DISCONTINUITY next_seq ${frame.nextSeq} is below the expected seq ${binding.expected}`);
    }
    binding.expected = frame.nextSeq;
    binding.awaitingDiscontinuity = false;
    if (binding.detached || this.state === 'ended') return undefined;
    const point = this.resumePoint;
    const sameEpoch = point !== undefined && point.epoch === frame.epoch;
    // Nothing the application has not seen was lost (the other connection of
    // a switch-over delivered it): no report, and the position stays.
    if (sameEpoch && frame.nextSeq <= point.seq + 1n) return undefined;
    const previousEpoch = point === undefined || point.epoch === 0n ? undefined : point.epoch;
    const gap: Discontinuity = {
      namespace: this.namespace,
      topic: this.topic,
      epoch: frame.epoch,
      lastSeq: sameEpoch && point.seq > frame.lastSeq ? point.seq : frame.lastSeq,
      nextSeq: frame.nextSeq,
      previousEpoch,
      epochChanged: previousEpoch !== undefined && previousEpoch !== frame.epoch,
    };
    this.resumePoint = { epoch: frame.epoch, seq: frame.nextSeq - 1n };
    this.callSafely('onDiscontinuity', () => this.handlers.onDiscontinuity?.(gap));
    return undefined;
  }

  /** Runs an application callback; its errors must not break delivery. */
  private callSafely(name: string, callback: () => void): void {
    try {
      callback();
    } catch (error) {
      this.host.handlerFailed(error, name);
    }
  }

  /** Reports a broken stream to the application; the connection is then dropped. */
  private broken(binding: Binding, problem: string): string {
    const message = `${this.namespace}/${this.topic} (sub_id ${binding.subId}): ${problem}`;
    if (!binding.detached && this.state !== 'ended') {
      const error = new CorebusError('protocol_violation', message, { fatal: true });
      this.callSafely('onError', () => this.handlers.onError?.(error));
    }
    return message;
  }
}

function hex(value: bigint): string {
  return `0x${value.toString(16).padStart(16, '0')}`;
}
