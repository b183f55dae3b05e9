/**
 * The client's states and events, and the small typed emitter behind
 * {@link Client.on}.
 *
 * @module
 */

import type { CorebusError } from './errors.js';

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
 * What the broker said in `WELCOME`.
 *
 * @example
 * ```ts
 * client.on('connected', (info: ServerInfo) => console.log(`shard ${info.shard} of ${info.shardCount}`));
 * ```
 */
export interface ServerInfo {
  /** Largest frame the server accepts; longer publishes are refused locally. */
  maxFrame: number;
  shard: number;
  shardCount: number;
}

/**
 * Payload of the `state` event.
 *
 * @example
 * ```ts
 * client.on('state', ({ state, previous }: StateChange) => console.log(`${previous} -> ${state}`));
 * ```
 */
export interface StateChange {
  state: ClientState;
  previous: ClientState;
}

/**
 * Payload of the `disconnected` event.
 *
 * @example
 * ```ts
 * client.on('disconnected', ({ error, reconnectInMs }: DisconnectedEvent) =>
 *   console.warn(`offline (${error.code}), retrying in ${reconnectInMs ?? 0} ms`));
 * ```
 */
export interface DisconnectedEvent {
  /** Why the connection ended. */
  error: CorebusError;
  /** When the next attempt starts; undefined after `GOAWAY` (it starts when the server closes). */
  reconnectInMs: number | undefined;
}

/**
 * Payload of the `closed` event.
 *
 * @example
 * ```ts
 * client.on('closed', ({ error }: ClosedEvent) => error && showFatal(error.message));
 * ```
 */
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

/**
 * A listener of event `K`.
 *
 * @example
 * ```ts
 * const onError: Listener<'error'> = (error) => console.warn(error.message);
 * client.on('error', onError);
 * ```
 */
export type Listener<K extends keyof ClientEvents> = (payload: ClientEvents[K]) => void;

/**
 * @internal A typed event emitter. A listener that throws does not stop the
 * others, nor the client: its error is rethrown asynchronously.
 */
export class Emitter<Events> {
  private readonly listeners = new Map<keyof Events, Set<(payload: never) => void>>();

  on<K extends keyof Events>(event: K, listener: (payload: Events[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as (payload: never) => void);
    return () => this.off(event, listener);
  }

  off<K extends keyof Events>(event: K, listener: (payload: Events[K]) => void): void {
    this.listeners.get(event)?.delete(listener as (payload: never) => void);
  }

  listenerCount(event: keyof Events): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.listeners.get(event);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        (listener as (payload: Events[K]) => void)(payload);
      } catch (error) {
        // A listener's bug must not derail the state machine; let it surface.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
