/**
 * What every part of the codec shares: the protocol's constants and opcodes
 * (docs/protocol.md, sections 2 to 5) and {@link CodecError}.
 *
 * @module
 */

import { CorebusError, type ErrorCode } from './errors.js';

/**
 * The protocol version this codec speaks (`HELLO.version`): 2, which adds
 * a message's headers to version 1.
 *
 * @example
 * ```ts
 * PROTOCOL_VERSION; // 2
 * ```
 */
export const PROTOCOL_VERSION = 2;

/**
 * Bit 0 of the format byte before every `PUBLISH` and `MESSAGE` payload: the
 * payload is one zstd frame (section 6.3).
 *
 * @example
 * ```ts
 * if (frame.compressed) payload = decompressPayload(frame.payload, limit);
 * ```
 */
export const FORMAT_ZSTD = 0x01;

/**
 * Bits 1 and 2 of the format byte: the delivery QoS the publisher asked for,
 * as MQTT counts it (0 to 2; section 6.3). Set by MQTT publishers; this
 * client reads past it.
 *
 * @example
 * ```ts
 * const qos = (formatByte & FORMAT_QOS_MASK) >> 1; // 0, 1 or 2
 * ```
 */
export const FORMAT_QOS_MASK = 0x06;

/**
 * Bit 4 of the format byte (version 2): the publisher asked the broker to
 * keep the message as its topic's retained message (an MQTT retained
 * publish). This client reads past it.
 *
 * @example
 * ```ts
 * const retained = (formatByte & FORMAT_RETAIN) !== 0;
 * ```
 */
export const FORMAT_RETAIN = 0x10;

/**
 * The most bytes a received compressed payload may decompress to, unless
 * `connect({ maxDecompressedBytes })` says otherwise: 16 MiB, as the Rust
 * client's default.
 *
 * @example
 * ```ts
 * const payload = decompressPayload(compressed, DEFAULT_MAX_DECOMPRESSED);
 * ```
 */
export const DEFAULT_MAX_DECOMPRESSED = 16 << 20;

/**
 * The server's default limit on a frame's `length` field: 1 MiB (section 2).
 *
 * @example
 * ```ts
 * encodePublish(fields, welcome?.maxFrame ?? DEFAULT_MAX_FRAME);
 * ```
 */
export const DEFAULT_MAX_FRAME = 1_048_576;

/**
 * The largest `length` a server frame can have before `WELCOME` tells the
 * real limit: an `ERROR` with the longest message (10 + 65 535). Everything
 * else a server may send before `WELCOME` is smaller.
 *
 * @example
 * ```ts
 * const splitter = new FrameSplitter(MAX_PREHANDSHAKE_FRAME); // until WELCOME
 * ```
 */
export const MAX_PREHANDSHAKE_FRAME = 65_545;

/**
 * Longest namespace, in UTF-8 bytes (section 4).
 *
 * @example
 * ```ts
 * new TextEncoder().encode(namespace).length <= MAX_NAMESPACE_BYTES;
 * ```
 */
export const MAX_NAMESPACE_BYTES = 128;

/**
 * Longest topic name, in UTF-8 bytes (section 4).
 *
 * @example
 * ```ts
 * new TextEncoder().encode(topic).length <= MAX_TOPIC_BYTES;
 * ```
 */
export const MAX_TOPIC_BYTES = 1024;

/**
 * Longest client name `HELLO` can carry; longer names are cut (section 3).
 *
 * @example
 * ```ts
 * encodeHello({ clientName: 'x'.repeat(300) })[11]; // 255 = MAX_CLIENT_NAME_BYTES
 * ```
 */
export const MAX_CLIENT_NAME_BYTES = 255;

/**
 * Opcodes of protocol version 1 (section 5).
 *
 * @example
 * ```ts
 * const isMessage = frame[4] === Opcode.MESSAGE;
 * ```
 */
export const Opcode = {
  HELLO: 0x01,
  PUBLISH: 0x02,
  SUBSCRIBE: 0x03,
  UNSUBSCRIBE: 0x04,
  PING: 0x05,
  PONG: 0x06,
  TOKEN_REQUEST: 0x07,
  WEBHOOK_REQUEST: 0x08,
  SUBSCRIBE_SHARED: 0x0c,
  WELCOME: 0x81,
  PUB_ACK: 0x82,
  SUB_OK: 0x83,
  UNSUB_OK: 0x84,
  MESSAGE: 0x85,
  TOPIC_MESSAGE: 0x8c,
  DISCONTINUITY: 0x86,
  GOAWAY: 0x87,
  TOKEN: 0x88,
  WEBHOOK_REPLY: 0x89,
  ERROR: 0x8f,
} as const;

/**
 * What exactly is wrong with the bytes (or, when encoding, the values):
 *
 * - `zero_length`: a length prefix of 0;
 * - `frame_too_large`: a length prefix above the limit in force;
 * - `truncated`: a field runs past the end of the frame;
 * - `trailing_bytes`: bytes after the last field of a fixed-layout frame;
 * - `unknown_opcode`: an opcode version 1 does not define;
 * - `wrong_direction`: a client-only opcode from the server;
 * - `invalid_utf8`: a text field that is not UTF-8;
 * - `reserved_flags`: reserved flag bits set;
 * - `invalid_name`: a namespace or topic that breaks section 4;
 * - `out_of_range`: a value to encode that its field cannot hold.
 *
 * @example
 * ```ts
 * const cutShort = error instanceof CodecError && error.reason === 'truncated';
 * ```
 */
export type CodecErrorReason =
  | 'zero_length'
  | 'frame_too_large'
  | 'truncated'
  | 'trailing_bytes'
  | 'unknown_opcode'
  | 'wrong_direction'
  | 'invalid_utf8'
  | 'reserved_flags'
  | 'invalid_name'
  | 'out_of_range';

const REASON_CODES: Record<CodecErrorReason, ErrorCode> = {
  zero_length: 'malformed_frame',
  frame_too_large: 'frame_too_large',
  truncated: 'malformed_frame',
  trailing_bytes: 'malformed_frame',
  unknown_opcode: 'unknown_opcode',
  wrong_direction: 'wrong_direction',
  invalid_utf8: 'malformed_frame',
  reserved_flags: 'malformed_frame',
  invalid_name: 'invalid_name',
  out_of_range: 'invalid_argument',
};

/**
 * A frame that cannot be decoded, or values that cannot be encoded. Its
 * `code` is the protocol's name for the fault (`malformed_frame`,
 * `frame_too_large`, `unknown_opcode`, `wrong_direction`, `invalid_name`) or
 * `invalid_argument`; `reason` says exactly what, and `offset` where in the
 * frame (from its first length byte) it was found.
 *
 * @example
 * ```ts
 * try {
 *   decodeServerFrame(bytes);
 * } catch (error) {
 *   if (error instanceof CodecError) console.log(error.reason, error.offset);
 * }
 * ```
 */
export class CodecError extends CorebusError {
  /** What exactly is wrong. */
  readonly reason: CodecErrorReason;
  /** Byte offset in the frame (or stream) where the fault was found. */
  readonly offset: number;

  constructor(reason: CodecErrorReason, message: string, offset = 0) {
    super(REASON_CODES[reason], message);
    this.name = 'CodecError';
    this.reason = reason;
    this.offset = offset;
  }
}
