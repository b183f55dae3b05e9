/**
 * The one error type of the package, {@link CorebusError}, and the error codes
 * of the corebus protocol (docs/protocol.md, section 7.11).
 *
 * @module
 */

/**
 * Names of the protocol's error codes, indexed by their number on the wire
 * (section 7.11). Index 0 is unused.
 */
const WIRE_CODE_NAMES = [
  undefined,
  'malformed_frame',
  'unknown_opcode',
  'frame_too_large',
  'unsupported_version',
  'handshake_required',
  'invalid_name',
  'duplicate_subscription',
  'unknown_subscription',
  'too_many_subscriptions',
  'slow_consumer',
  'shutting_down',
  'internal',
  'wrong_direction',
  'idle_timeout',
  'unauthorized',
  'forbidden',
  'token_expired',
  'too_many_connections',
  'too_many_in_flight',
  'handshake_timeout',
  'invalid_request',
  'owner_unavailable',
  'unavailable',
  'taken_over',
] as const;

/**
 * An error code a corebus server sends in an `ERROR` frame (section 7.11).
 *
 * @example
 * ```ts
 * const code: ProtocolErrorCode = 'forbidden';
 * ```
 */
export type ProtocolErrorCode = Exclude<(typeof WIRE_CODE_NAMES)[number], undefined>;

/**
 * An error code this client raises itself, with no `ERROR` frame behind it:
 *
 * - `unknown_error`: the server sent an error code this version does not know
 *   (see {@link CorebusError.wireCode});
 * - `connection_lost`: the connection closed before the request was answered
 *   (a publish may or may not have happened);
 * - `not_connected`: the client has no open connection to send the request on;
 * - `client_closed`: {@link Client.close} was called;
 * - `protocol_violation`: the server broke the protocol (a frame that does not
 *   parse, an answer to an unknown request, a gap in a subscription's
 *   sequence); the client drops that connection and reconnects;
 * - `ping_timeout`: the server did not answer the client's `PING` in time;
 * - `token_provider_failed`: the `tokenProvider` threw or returned no string;
 * - `no_websocket`: no WebSocket implementation was found;
 * - `invalid_argument`: an option or argument is not usable;
 * - `handler_failed`: an application callback (`onItem`, ...) threw; the
 *   error it threw is the `cause`;
 * - `decompress_failed`: a message arrived compressed and could not be
 *   decompressed (not valid zstd, or larger than `maxDecompressedBytes`); the
 *   subscription's `onError` gets it and delivery goes on with the next item.
 *
 * @example
 * ```ts
 * const code: LocalErrorCode = 'connection_lost';
 * ```
 */
export type LocalErrorCode =
  | 'unknown_error'
  | 'connection_lost'
  | 'not_connected'
  | 'client_closed'
  | 'protocol_violation'
  | 'ping_timeout'
  | 'token_provider_failed'
  | 'no_websocket'
  | 'invalid_argument'
  | 'handler_failed'
  | 'decompress_failed';

/**
 * Every code a {@link CorebusError} can carry.
 *
 * @example
 * ```ts
 * function isAuthProblem(code: ErrorCode): boolean {
 *   return code === 'unauthorized' || code === 'token_expired';
 * }
 * ```
 */
export type ErrorCode = ProtocolErrorCode | LocalErrorCode;

/**
 * The name of a wire error code, or `undefined` for a number this version
 * does not know (a later protocol version may add codes; section 7.11).
 *
 * @example
 * ```ts
 * errorCodeName(16); // 'forbidden'
 * errorCodeName(99); // undefined
 * ```
 */
export function errorCodeName(wireCode: number): ProtocolErrorCode | undefined {
  return WIRE_CODE_NAMES[wireCode] ?? undefined;
}

/**
 * The wire number of a protocol error code.
 *
 * @example
 * ```ts
 * errorCodeNumber('forbidden'); // 16
 * ```
 */
export function errorCodeNumber(code: ProtocolErrorCode): number {
  return WIRE_CODE_NAMES.indexOf(code);
}

/**
 * Fields of a {@link CorebusError} besides its code and message.
 *
 * @example
 * ```ts
 * new CorebusError('connection_lost', 'socket closed', { fatal: true });
 * ```
 */
export interface CorebusErrorDetails {
  /** Whether the error ended the connection (the `ERROR` frame's fatal bit). */
  fatal?: boolean;
  /** The code's number, when the error came from an `ERROR` frame. */
  wireCode?: number;
  /** The request the error answers; absent for connection-level errors. */
  requestId?: number;
  /** The error that caused this one, if any. */
  cause?: unknown;
}

/**
 * The error every promise of this package rejects with, and every `error`
 * event and `onError` handler receives.
 *
 * `code` is the protocol's name for errors the server reported in an `ERROR`
 * frame (`forbidden`, `unauthorized`, `token_expired`, ...), or one of the
 * {@link LocalErrorCode}s. `fatal` is true when the error ended a connection.
 *
 * @example
 * ```ts
 * try {
 *   await client.subscribe('chat', 'room/1', { onItem: show });
 * } catch (error) {
 *   if (error instanceof CorebusError && error.code === 'forbidden') {
 *     showBanner('You may not read this room.');
 *   }
 * }
 * ```
 */
export class CorebusError extends Error {
  /** The error's code: a protocol error name or a {@link LocalErrorCode}. */
  readonly code: ErrorCode;
  /** Whether the error ended the connection it happened on. */
  readonly fatal: boolean;
  /** The number from the `ERROR` frame; `undefined` for local errors. */
  readonly wireCode: number | undefined;
  /** The request id the server's `ERROR` answered, if it named one. */
  readonly requestId: number | undefined;

  constructor(code: ErrorCode, message: string, details: CorebusErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'CorebusError';
    this.code = code;
    this.fatal = details.fatal ?? false;
    this.wireCode = details.wireCode;
    this.requestId = details.requestId;
  }

  /**
   * The error an `ERROR` frame reports. Unknown codes become `unknown_error`
   * with their number kept in {@link CorebusError.wireCode}.
   *
   * @example
   * ```ts
   * const error = CorebusError.fromWire(16, false, 'not permitted', 4);
   * error.code; // 'forbidden'
   * ```
   */
  static fromWire(wireCode: number, fatal: boolean, message: string, requestId: number): CorebusError {
    const code = errorCodeName(wireCode) ?? 'unknown_error';
    const text = message === '' ? code : `${code}: ${message}`;
    return new CorebusError(code, text, {
      fatal,
      wireCode,
      requestId: requestId === 0 ? undefined : requestId,
    });
  }
}
