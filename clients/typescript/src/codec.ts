/**
 * The corebus wire codec (docs/protocol.md, sections 2 to 6): encoders for
 * the frames a client sends, a decoder for every frame a server sends, and a
 * {@link FrameSplitter} that cuts a byte stream into whole frames.
 *
 * It is a pure codec: no I/O, no timers, no WebSocket. Decoding is two-phase,
 * as the protocol's reference codec does it: {@link checkFrame} reads only the
 * 4-byte length prefix (allocating nothing) and says how long the frame is or
 * that more bytes are needed; {@link decodeServerFrame} then parses one whole
 * frame. Every failure is a {@link CodecError} carrying the offset it was
 * found at.
 *
 * @example
 * ```ts
 * import { encodeHello, FrameSplitter, decodeServerFrame } from 'corebus/codec';
 * socket.send(encodeHello({ clientName: 'cli', credentials: 'key' }));
 * const splitter = new FrameSplitter();
 * splitter.push(bytesFromSocket);
 * for (let frame = splitter.next(); frame; frame = splitter.next()) {
 *   console.log(decodeServerFrame(frame));
 * }
 * ```
 *
 * @module
 */

import { CorebusError, type ErrorCode } from './errors.js';

/** The protocol version this codec speaks (`HELLO.version`). */
export const PROTOCOL_VERSION = 1;

/** The server's default limit on a frame's `length` field: 1 MiB (section 2). */
export const DEFAULT_MAX_FRAME = 1_048_576;

/**
 * The largest `length` a server frame can have before `WELCOME` tells the
 * real limit: an `ERROR` with the longest message (10 + 65 535). Everything
 * else a server may send before `WELCOME` is smaller.
 */
export const MAX_PREHANDSHAKE_FRAME = 65_545;

/** Longest namespace, in UTF-8 bytes (section 4). */
export const MAX_NAMESPACE_BYTES = 128;

/** Longest topic name, in UTF-8 bytes (section 4). */
export const MAX_TOPIC_BYTES = 1024;

/** Longest client name `HELLO` can carry; longer names are cut (section 3). */
export const MAX_CLIENT_NAME_BYTES = 255;

/** Opcodes of protocol version 1 (section 5). */
export const Opcode = {
  HELLO: 0x01,
  PUBLISH: 0x02,
  SUBSCRIBE: 0x03,
  UNSUBSCRIBE: 0x04,
  PING: 0x05,
  PONG: 0x06,
  TOKEN_REQUEST: 0x07,
  WEBHOOK_REQUEST: 0x08,
  WELCOME: 0x81,
  PUB_ACK: 0x82,
  SUB_OK: 0x83,
  UNSUB_OK: 0x84,
  MESSAGE: 0x85,
  DISCONTINUITY: 0x86,
  GOAWAY: 0x87,
  TOKEN: 0x88,
  WEBHOOK_REPLY: 0x89,
  ERROR: 0x8f,
} as const;

const MAGIC = [0x43, 0x42, 0x55, 0x53]; // "CBUS"
const U64_LIMIT = 1n << 64n;
const U32_LIMIT = 2 ** 32;

// ---------------------------------------------------------------------------
// Errors

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

// ---------------------------------------------------------------------------
// Text and names

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
// In a `u` regular expression a surrogate pair is one code point, so this
// matches only lone surrogates, which UTF-8 cannot encode.
const LONE_SURROGATE = /\p{Cs}/u;

function encodeText(text: string, what: string): Uint8Array {
  if (LONE_SURROGATE.test(text)) {
    throw new CodecError('invalid_utf8', `${what} contains a lone UTF-16 surrogate, which UTF-8 cannot encode`);
  }
  return utf8Encoder.encode(text);
}

/**
 * Checks a namespace and topic against the rules of section 4 and returns
 * their UTF-8 bytes: 1 to 128 bytes of namespace, 1 to 1024 of topic, no
 * control bytes (0x00-0x1f, 0x7f).
 *
 * @throws {@link CodecError} with reason `invalid_name`.
 * @example
 * ```ts
 * validateName('app', 'news');          // ok
 * validateName('app', 'bad\ntopic');   // throws CodecError (invalid_name)
 * ```
 */
export function validateName(namespace: string, topic: string): { namespace: Uint8Array; topic: Uint8Array } {
  return {
    namespace: encodeName(namespace, 'namespace', MAX_NAMESPACE_BYTES),
    topic: encodeName(topic, 'topic', MAX_TOPIC_BYTES),
  };
}

function encodeName(name: string, what: string, maxBytes: number): Uint8Array {
  if (typeof name !== 'string') {
    throw new CodecError('invalid_name', `${what} must be a string`);
  }
  if (LONE_SURROGATE.test(name)) {
    throw new CodecError('invalid_name', `${what} ${JSON.stringify(name)} is not valid Unicode (lone surrogate)`);
  }
  const bytes = utf8Encoder.encode(name);
  if (bytes.length === 0 || bytes.length > maxBytes) {
    throw new CodecError('invalid_name', `${what} must be 1 to ${maxBytes} bytes of UTF-8, got ${bytes.length}`);
  }
  for (let index = 0; index < bytes.length; index++) {
    const byte = bytes[index]!;
    if (byte < 0x20 || byte === 0x7f) {
      throw new CodecError(
        'invalid_name',
        `${what} ${JSON.stringify(name)} holds the control byte 0x${byte.toString(16).padStart(2, '0')} at byte ${index}`,
        index,
      );
    }
  }
  return bytes;
}

/** Cuts UTF-8 bytes to at most `limit` bytes without splitting a character. */
function cutUtf8(bytes: Uint8Array, limit: number): Uint8Array {
  if (bytes.length <= limit) return bytes;
  let end = limit;
  // Back off over continuation bytes (10xxxxxx) to the start of a character.
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

// ---------------------------------------------------------------------------
// Encoding

function checkU32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value >= U32_LIMIT) {
    throw new CodecError('out_of_range', `${what} must be an integer in 0..2^32-1, got ${value}`);
  }
}

function checkU64(value: bigint, what: string): void {
  if (typeof value !== 'bigint' || value < 0n || value >= U64_LIMIT) {
    throw new CodecError('out_of_range', `${what} must be a bigint in 0..2^64-1, got ${String(value)}`);
  }
}

/**
 * Writes one frame: reserves the 4-byte length prefix and the opcode, and
 * fills the prefix from the size the caller announced, which must be exact.
 */
class FrameWriter {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  private offset = 5;

  constructor(opcode: number, length: number, maxLength: number) {
    if (length > maxLength) {
      throw new CodecError(
        'frame_too_large',
        `frame length ${length} exceeds the server's limit of ${maxLength} bytes (WELCOME.max_frame)`,
      );
    }
    this.bytes = new Uint8Array(4 + length);
    this.view = new DataView(this.bytes.buffer);
    this.view.setUint32(0, length);
    this.bytes[4] = opcode;
  }

  u8(value: number): this {
    this.bytes[this.offset++] = value;
    return this;
  }
  u16(value: number): this {
    this.view.setUint16(this.offset, value);
    this.offset += 2;
    return this;
  }
  u32(value: number): this {
    this.view.setUint32(this.offset, value);
    this.offset += 4;
    return this;
  }
  u64(value: bigint): this {
    this.view.setBigUint64(this.offset, value);
    this.offset += 8;
    return this;
  }
  raw(bytes: Uint8Array | readonly number[]): this {
    this.bytes.set(bytes, this.offset);
    this.offset += bytes.length;
    return this;
  }
  finish(): Uint8Array {
    if (this.offset !== this.bytes.length) {
      throw new Error(`corebus codec bug: wrote ${this.offset} of ${this.bytes.length} bytes`);
    }
    return this.bytes;
  }
}

/** Fields of a `HELLO` frame (section 6.1). */
export interface HelloFields {
  /** Free-form name for the server's logs; cut to 255 UTF-8 bytes. */
  clientName?: string;
  /** An API key or JWT (as text or bytes); omit when the client has none. */
  credentials?: string | Uint8Array;
}

/**
 * Encodes `HELLO`: magic `CBUS`, version 1, the client name (cut on a
 * character boundary to 255 bytes) and the credentials (at most 65 535 bytes).
 *
 * @example
 * ```ts
 * encodeHello({ clientName: 'cli', credentials: 'key' });
 * // 00000010 01 43425553 0001 03 636c69 0003 6b6579
 * ```
 */
export function encodeHello(fields: HelloFields = {}): Uint8Array {
  const name = cutUtf8(encodeText(fields.clientName ?? '', 'client name'), MAX_CLIENT_NAME_BYTES);
  const credentials =
    typeof fields.credentials === 'string'
      ? encodeText(fields.credentials, 'credentials')
      : (fields.credentials ?? new Uint8Array(0));
  if (credentials.length > 0xffff) {
    throw new CodecError('out_of_range', `credentials are ${credentials.length} bytes; HELLO holds at most 65535`);
  }
  // Before WELCOME the server takes at most max_hello_frame (16 KiB by
  // default); the server says so itself, so only the field bound is checked.
  return new FrameWriter(Opcode.HELLO, 10 + name.length + credentials.length, Infinity)
    .raw(MAGIC)
    .u16(PROTOCOL_VERSION)
    .u8(name.length)
    .raw(name)
    .u16(credentials.length)
    .raw(credentials)
    .finish();
}

/** Fields of a `PUBLISH` frame (section 6.3). */
export interface PublishFields {
  requestId: number;
  /** Ask for a `PUB_ACK` (flags bit 0). */
  ack: boolean;
  namespace: string;
  topic: string;
  payload: Uint8Array;
}

/**
 * Encodes `PUBLISH`. `maxFrame` is the server's `WELCOME.max_frame`; a frame
 * longer than that throws `frame_too_large` instead of being sent.
 *
 * @example
 * ```ts
 * encodePublish({ requestId: 1, ack: true, namespace: 'app', topic: 'news',
 *   payload: new TextEncoder().encode('hi') });
 * // 00000012 02 00000001 01 03 617070 0004 6e657773 6869
 * ```
 */
export function encodePublish(fields: PublishFields, maxFrame: number = DEFAULT_MAX_FRAME): Uint8Array {
  checkU32(fields.requestId, 'request id');
  const names = validateName(fields.namespace, fields.topic);
  const length = 9 + names.namespace.length + names.topic.length + fields.payload.length;
  return new FrameWriter(Opcode.PUBLISH, length, maxFrame)
    .u32(fields.requestId)
    .u8(fields.ack ? 0x01 : 0x00)
    .u8(names.namespace.length)
    .raw(names.namespace)
    .u16(names.topic.length)
    .raw(names.topic)
    .raw(fields.payload)
    .finish();
}

/** Fields of a `SUBSCRIBE` frame (section 6.5). */
export interface SubscribeFields {
  requestId: number;
  subId: number;
  /** Epoch of the resume point; 0 = the topic's current epoch. */
  resumeEpoch: bigint;
  /** First sequence number wanted; 0 = live messages only. */
  resumeSeq: bigint;
  namespace: string;
  topic: string;
}

/**
 * Encodes `SUBSCRIBE`. To continue after the last received (epoch, seq), pass
 * `resumeEpoch = epoch, resumeSeq = seq + 1`; for live messages only, 0 and 0.
 *
 * @example
 * ```ts
 * encodeSubscribe({ requestId: 2, subId: 7, resumeEpoch: 0n, resumeSeq: 0n,
 *   namespace: 'app', topic: 'news' });
 * ```
 */
export function encodeSubscribe(fields: SubscribeFields, maxFrame: number = DEFAULT_MAX_FRAME): Uint8Array {
  checkU32(fields.requestId, 'request id');
  checkU32(fields.subId, 'subscription id');
  checkU64(fields.resumeEpoch, 'resume epoch');
  checkU64(fields.resumeSeq, 'resume seq');
  const names = validateName(fields.namespace, fields.topic);
  const length = 28 + names.namespace.length + names.topic.length;
  return new FrameWriter(Opcode.SUBSCRIBE, length, maxFrame)
    .u32(fields.requestId)
    .u32(fields.subId)
    .u64(fields.resumeEpoch)
    .u64(fields.resumeSeq)
    .u8(names.namespace.length)
    .raw(names.namespace)
    .u16(names.topic.length)
    .raw(names.topic)
    .finish();
}

/**
 * Encodes `UNSUBSCRIBE` (section 6.7).
 *
 * @example
 * ```ts
 * encodeUnsubscribe({ requestId: 3, subId: 7 }); // 00000009 04 00000003 00000007
 * ```
 */
export function encodeUnsubscribe(fields: { requestId: number; subId: number }): Uint8Array {
  checkU32(fields.requestId, 'request id');
  checkU32(fields.subId, 'subscription id');
  return new FrameWriter(Opcode.UNSUBSCRIBE, 9, Infinity).u32(fields.requestId).u32(fields.subId).finish();
}

/**
 * Encodes `PING` with a nonce of the sender's choosing (section 6.11).
 *
 * @example
 * ```ts
 * encodePing(42n); // 00000009 05 000000000000002a
 * ```
 */
export function encodePing(nonce: bigint): Uint8Array {
  checkU64(nonce, 'nonce');
  return new FrameWriter(Opcode.PING, 9, Infinity).u64(nonce).finish();
}

/**
 * Encodes `PONG`, which echoes the nonce of the `PING` it answers.
 *
 * @example
 * ```ts
 * encodePong(42n); // 00000009 06 000000000000002a
 * ```
 */
export function encodePong(nonce: bigint): Uint8Array {
  checkU64(nonce, 'nonce');
  return new FrameWriter(Opcode.PONG, 9, Infinity).u64(nonce).finish();
}

// ---------------------------------------------------------------------------
// Decoding

/** `WELCOME` (0x81): the handshake succeeded. */
export interface WelcomeFrame {
  type: 'welcome';
  version: number;
  /** Largest `length` the server accepts; never send a longer frame. */
  maxFrame: number;
  shard: number;
  shardCount: number;
}
/** `PUB_ACK` (0x82): the acknowledged publish got `seq`. */
export interface PubAckFrame {
  type: 'pub_ack';
  requestId: number;
  seq: bigint;
}
/** `SUB_OK` (0x83): the subscription gets the messages of `epoch` after `startAfter`. */
export interface SubOkFrame {
  type: 'sub_ok';
  requestId: number;
  subId: number;
  epoch: bigint;
  startAfter: bigint;
}
/** `UNSUB_OK` (0x84): the subscription has ended. */
export interface UnsubOkFrame {
  type: 'unsub_ok';
  requestId: number;
  subId: number;
}
/** `MESSAGE` (0x85): one delivery to one subscription. */
export interface MessageFrame {
  type: 'message';
  subId: number;
  epoch: bigint;
  seq: bigint;
  /** The published bytes (a copy, owned by the frame). */
  payload: Uint8Array;
}
/** `DISCONTINUITY` (0x86): messages after `lastSeq` up to `nextSeq` (excluded) were lost. */
export interface DiscontinuityFrame {
  type: 'discontinuity';
  subId: number;
  epoch: bigint;
  lastSeq: bigint;
  nextSeq: bigint;
}
/** `GOAWAY` (0x87): the server is shutting down. */
export interface GoawayFrame {
  type: 'goaway';
  drainMs: number;
  message: string;
}
/** `PING` (0x05) from the server; answer with a `PONG` of the same nonce. */
export interface PingFrame {
  type: 'ping';
  nonce: bigint;
}
/** `PONG` (0x06): the answer to one of the client's `PING`s. */
export interface PongFrame {
  type: 'pong';
  nonce: bigint;
}
/** `TOKEN` (0x88): a token minted on request. */
export interface TokenFrame {
  type: 'token';
  requestId: number;
  token: string;
}
/** `WEBHOOK_REPLY` (0x89): the JSON result of a webhook command. */
export interface WebhookReplyFrame {
  type: 'webhook_reply';
  requestId: number;
  result: string;
}
/** `ERROR` (0x8f): a failed request, or the end of the connection if `fatal`. */
export interface ErrorFrame {
  type: 'error';
  requestId: number;
  /** The numeric code (section 7.11); unknown codes are kept as they are. */
  code: number;
  fatal: boolean;
  message: string;
}

/**
 * Any frame a server sends.
 *
 * @example
 * ```ts
 * const frame: ServerFrame = decodeServerFrame(bytes);
 * if (frame.type === 'message') console.log(frame.seq);
 * ```
 */
export type ServerFrame =
  | WelcomeFrame
  | PubAckFrame
  | SubOkFrame
  | UnsubOkFrame
  | MessageFrame
  | DiscontinuityFrame
  | GoawayFrame
  | PingFrame
  | PongFrame
  | TokenFrame
  | WebhookReplyFrame
  | ErrorFrame;

/**
 * Reads the length prefix at `offset` and tells how many bytes the whole
 * frame occupies (`4 + length`), or 0 when fewer than 4 bytes are there yet.
 * Allocates nothing and does not look past the prefix.
 *
 * @param maxLength the largest `length` accepted (the client's inbound limit).
 * @throws {@link CodecError} `zero_length` or `frame_too_large`: the framing is
 *   broken and the stream cannot be read further.
 * @example
 * ```ts
 * checkFrame(Uint8Array.of(0, 0, 0, 9, 5), 0, 1 << 20); // 13
 * ```
 */
export function checkFrame(bytes: Uint8Array, offset: number, maxLength: number): number {
  if (bytes.length - offset < 4) return 0;
  const length =
    bytes[offset]! * 0x1000000 + ((bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!);
  if (length === 0) {
    throw new CodecError('zero_length', 'frame length prefix is 0 (a frame needs at least an opcode)', offset);
  }
  if (length > maxLength) {
    throw new CodecError(
      'frame_too_large',
      `frame length prefix ${length} is above the inbound limit of ${maxLength} bytes`,
      offset,
    );
  }
  return 4 + length;
}

/** Reads fields in wire order from one whole frame, checking every bound. */
class FrameReader {
  private readonly view: DataView;
  private offset = 5;

  constructor(
    private readonly bytes: Uint8Array,
    private readonly frameName: string,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private need(count: number, field: string): number {
    const start = this.offset;
    if (this.bytes.length - start < count) {
      throw new CodecError(
        'truncated',
        `${this.frameName}: field ${field} needs ${count} bytes at offset ${start}, only ${this.bytes.length - start} left`,
        start,
      );
    }
    this.offset += count;
    return start;
  }

  u8(field: string): number {
    return this.bytes[this.need(1, field)]!;
  }
  u16(field: string): number {
    return this.view.getUint16(this.need(2, field));
  }
  u32(field: string): number {
    return this.view.getUint32(this.need(4, field));
  }
  u64(field: string): bigint {
    return this.view.getBigUint64(this.need(8, field));
  }
  str16(field: string): string {
    const length = this.u16(`${field} length`);
    const start = this.need(length, field);
    return this.text(start, this.offset, field);
  }
  /** Every byte to the end of the frame, copied. */
  rest(): Uint8Array {
    const start = this.offset;
    this.offset = this.bytes.length;
    return this.bytes.slice(start);
  }
  restText(field: string): string {
    const start = this.offset;
    this.offset = this.bytes.length;
    return this.text(start, this.bytes.length, field);
  }
  private text(start: number, end: number, field: string): string {
    try {
      return utf8Decoder.decode(this.bytes.subarray(start, end));
    } catch {
      throw new CodecError('invalid_utf8', `${this.frameName}: field ${field} is not valid UTF-8`, start);
    }
  }
  /** Fixed-layout frames end at their last field (section 3). */
  finish(): void {
    if (this.offset !== this.bytes.length) {
      throw new CodecError(
        'trailing_bytes',
        `${this.frameName}: ${this.bytes.length - this.offset} trailing bytes after the last field`,
        this.offset,
      );
    }
  }
}

const CLIENT_ONLY_NAMES: Record<number, string> = {
  [Opcode.HELLO]: 'HELLO',
  [Opcode.PUBLISH]: 'PUBLISH',
  [Opcode.SUBSCRIBE]: 'SUBSCRIBE',
  [Opcode.UNSUBSCRIBE]: 'UNSUBSCRIBE',
  [Opcode.TOKEN_REQUEST]: 'TOKEN_REQUEST',
  [Opcode.WEBHOOK_REQUEST]: 'WEBHOOK_REQUEST',
};

/**
 * Decodes one whole server frame, length prefix included (as
 * {@link FrameSplitter.next} returns it). The length prefix must match the
 * size of `frame`.
 *
 * @throws {@link CodecError}: a client-only or unknown opcode, a field past
 *   the end, trailing bytes, reserved flag bits, text that is not UTF-8.
 * @example
 * ```ts
 * const frame = decodeServerFrame(hex('00000009 05 000000000000002a'));
 * // { type: 'ping', nonce: 42n }
 * ```
 */
export function decodeServerFrame(frame: Uint8Array): ServerFrame {
  const size = checkFrame(frame, 0, Number.MAX_SAFE_INTEGER);
  if (size === 0) {
    throw new CodecError('truncated', `a frame needs a 4-byte length prefix; got ${frame.length} bytes`, 0);
  }
  if (size !== frame.length) {
    throw new CodecError(
      size > frame.length ? 'truncated' : 'trailing_bytes',
      `frame holds ${frame.length} bytes but its length prefix says ${size}`,
      Math.min(size, frame.length),
    );
  }
  const opcode = frame[4]!;
  switch (opcode) {
    case Opcode.WELCOME: {
      const reader = new FrameReader(frame, 'WELCOME');
      const welcome: WelcomeFrame = {
        type: 'welcome',
        version: reader.u16('version'),
        maxFrame: reader.u32('max_frame'),
        shard: reader.u16('shard'),
        shardCount: reader.u16('shard_count'),
      };
      reader.finish();
      return welcome;
    }
    case Opcode.PUB_ACK: {
      const reader = new FrameReader(frame, 'PUB_ACK');
      const ack: PubAckFrame = { type: 'pub_ack', requestId: reader.u32('request_id'), seq: reader.u64('seq') };
      reader.finish();
      return ack;
    }
    case Opcode.SUB_OK: {
      const reader = new FrameReader(frame, 'SUB_OK');
      const ok: SubOkFrame = {
        type: 'sub_ok',
        requestId: reader.u32('request_id'),
        subId: reader.u32('sub_id'),
        epoch: reader.u64('epoch'),
        startAfter: reader.u64('start_after'),
      };
      reader.finish();
      return ok;
    }
    case Opcode.UNSUB_OK: {
      const reader = new FrameReader(frame, 'UNSUB_OK');
      const ok: UnsubOkFrame = { type: 'unsub_ok', requestId: reader.u32('request_id'), subId: reader.u32('sub_id') };
      reader.finish();
      return ok;
    }
    case Opcode.MESSAGE: {
      const reader = new FrameReader(frame, 'MESSAGE');
      return {
        type: 'message',
        subId: reader.u32('sub_id'),
        epoch: reader.u64('epoch'),
        seq: reader.u64('seq'),
        payload: reader.rest(),
      };
    }
    case Opcode.DISCONTINUITY: {
      const reader = new FrameReader(frame, 'DISCONTINUITY');
      const gap: DiscontinuityFrame = {
        type: 'discontinuity',
        subId: reader.u32('sub_id'),
        epoch: reader.u64('epoch'),
        lastSeq: reader.u64('last_seq'),
        nextSeq: reader.u64('next_seq'),
      };
      reader.finish();
      return gap;
    }
    case Opcode.GOAWAY: {
      const reader = new FrameReader(frame, 'GOAWAY');
      const goaway: GoawayFrame = { type: 'goaway', drainMs: reader.u32('drain_ms'), message: reader.str16('message') };
      reader.finish();
      return goaway;
    }
    case Opcode.PING:
    case Opcode.PONG: {
      const reader = new FrameReader(frame, opcode === Opcode.PING ? 'PING' : 'PONG');
      const nonce = reader.u64('nonce');
      reader.finish();
      return opcode === Opcode.PING ? { type: 'ping', nonce } : { type: 'pong', nonce };
    }
    case Opcode.TOKEN: {
      const reader = new FrameReader(frame, 'TOKEN');
      const token: TokenFrame = { type: 'token', requestId: reader.u32('request_id'), token: reader.str16('token') };
      reader.finish();
      return token;
    }
    case Opcode.WEBHOOK_REPLY: {
      const reader = new FrameReader(frame, 'WEBHOOK_REPLY');
      return { type: 'webhook_reply', requestId: reader.u32('request_id'), result: reader.restText('result') };
    }
    case Opcode.ERROR: {
      const reader = new FrameReader(frame, 'ERROR');
      const requestId = reader.u32('request_id');
      const code = reader.u16('code');
      const flags = reader.u8('flags');
      if ((flags & 0xfe) !== 0) {
        throw new CodecError('reserved_flags', `ERROR: reserved flag bits set (flags 0x${flags.toString(16)})`, 11);
      }
      const error: ErrorFrame = {
        type: 'error',
        requestId,
        code,
        fatal: (flags & 0x01) !== 0,
        message: reader.str16('message'),
      };
      reader.finish();
      return error;
    }
    default: {
      const clientOnly = CLIENT_ONLY_NAMES[opcode];
      if (clientOnly !== undefined) {
        throw new CodecError('wrong_direction', `the server sent ${clientOnly}, a frame only clients send`, 4);
      }
      throw new CodecError('unknown_opcode', `opcode 0x${opcode.toString(16).padStart(2, '0')} is not defined in version 1`, 4);
    }
  }
}

// ---------------------------------------------------------------------------
// Stream splitting

/**
 * Cuts a byte stream into whole frames by their length prefix (section 2),
 * however the bytes were split into chunks. A chunk whose frames are all
 * whole (the WebSocket case) is cut without copying: the frames returned are
 * views into it, so a pushed chunk must not be modified afterwards.
 *
 * @example
 * ```ts
 * const splitter = new FrameSplitter(1_048_576 + 10);
 * splitter.push(chunk);
 * for (let frame = splitter.next(); frame !== undefined; frame = splitter.next()) {
 *   handle(decodeServerFrame(frame));
 * }
 * ```
 */
export class FrameSplitter {
  /** The largest `length` prefix accepted; a larger one throws `frame_too_large`. */
  maxLength: number;
  private chunks: Uint8Array[] = [];
  /** Read position in `chunks[0]`. */
  private head = 0;
  private buffered = 0;
  /** Stream offset of the first unread byte, for error reports. */
  private consumed = 0;

  constructor(maxLength: number = DEFAULT_MAX_FRAME + 10) {
    this.maxLength = maxLength;
  }

  /** Appends bytes received from the transport. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** Bytes received but not yet returned as part of a frame. */
  get pendingBytes(): number {
    return this.buffered;
  }

  /**
   * The next whole frame (length prefix included), or `undefined` when more
   * bytes are needed.
   *
   * @throws {@link CodecError} `zero_length` / `frame_too_large` when the
   *   length prefix is broken; the stream cannot be resynchronised after that.
   */
  next(): Uint8Array | undefined {
    if (this.buffered < 4) return undefined;
    if (this.chunks[0]!.length - this.head < 4) this.merge(4);
    let size: number;
    try {
      size = checkFrame(this.chunks[0]!, this.head, this.maxLength);
    } catch (error) {
      if (error instanceof CodecError) {
        throw new CodecError(error.reason, `${error.message} (stream offset ${this.consumed})`, this.consumed);
      }
      throw error;
    }
    if (this.buffered < size) return undefined;
    if (this.chunks[0]!.length - this.head < size) this.merge(size);
    const first = this.chunks[0]!;
    const frame = first.subarray(this.head, this.head + size);
    this.head += size;
    this.buffered -= size;
    this.consumed += size;
    if (this.head === first.length) {
      this.chunks.shift();
      this.head = 0;
    }
    return frame;
  }

  /** Copies the first `count` unread bytes into one chunk at the head. */
  private merge(count: number): void {
    const merged = new Uint8Array(count);
    let filled = 0;
    while (filled < count) {
      const chunk = this.chunks[0]!;
      const take = Math.min(count - filled, chunk.length - this.head);
      merged.set(chunk.subarray(this.head, this.head + take), filled);
      filled += take;
      this.head += take;
      if (this.head === chunk.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    // The merged bytes go back in front, followed by the rest of the chunk
    // they came from (if any), so `head` stays 0 for them.
    if (this.head > 0) {
      this.chunks[0] = this.chunks[0]!.subarray(this.head);
      this.head = 0;
    }
    this.chunks.unshift(merged);
  }
}
