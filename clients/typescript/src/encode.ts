/**
 * Encoders for the frames a client sends (docs/protocol.md, section 6), and
 * the name rules of section 4. Each returns one whole frame, length prefix
 * included, or throws a {@link CodecError} before anything is sent.
 *
 * @module
 */

import { encodeHeaders, FORMAT_HEADERS, headersAreEmpty, type Headers } from './headers.js';
import { CodecError, DEFAULT_MAX_FRAME, FORMAT_ZSTD, MAX_CLIENT_NAME_BYTES, MAX_NAMESPACE_BYTES, MAX_TOPIC_BYTES, Opcode, PROTOCOL_VERSION } from './wire.js';

const MAGIC = [0x43, 0x42, 0x55, 0x53]; // "CBUS"
const U64_LIMIT = 1n << 64n;
const U32_LIMIT = 2 ** 32;

const utf8Encoder = new TextEncoder();
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
  const names = {
    namespace: encodeName(namespace, 'namespace', MAX_NAMESPACE_BYTES),
    topic: encodeName(topic, 'topic', MAX_TOPIC_BYTES),
  };
  // Most names hold no `>`: they are not split.
  if (topic.includes('>') && topic.split('/').slice(0, -1).includes('>')) {
    throw new CodecError('invalid_name', `topic ${JSON.stringify(topic)}: \`>\` may only be the last segment of a pattern`);
  }
  return names;
}

/**
 * Whether a topic is a pattern: one of its `/`-separated segments is exactly
 * `*` (any one segment) or `>` (one or more trailing segments). A pattern can
 * be subscribed to, never published to (section 4).
 *
 * @example
 * ```ts
 * isPattern('orders/*'); // true
 * isPattern('orders/eu*'); // false: `*` inside a segment is a character
 * ```
 */
export function isPattern(topic: string): boolean {
  return (topic.includes('*') || topic.includes('>')) && topic.split('/').some((segment) => segment === '*' || segment === '>');
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

/**
 * Fields of a `HELLO` frame (section 6.1).
 *
 * @example
 * ```ts
 * const hello: HelloFields = { clientName: 'dashboard', credentials: token };
 * ```
 */
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

/**
 * Fields of a `PUBLISH` frame (section 6.3).
 *
 * @example
 * ```ts
 * const fields: PublishFields = { requestId: 1, ack: true, namespace: 'app', topic: 'news', payload };
 * ```
 */
export interface PublishFields {
  requestId: number;
  /** Ask for a `PUB_ACK` (flags bit 0). */
  ack: boolean;
  namespace: string;
  topic: string;
  /** The payload is a zstd frame the caller made (format bit 0); default false. */
  compressed?: boolean;
  /** Headers to send with the message (format bit 3, protocol version 2). */
  headers?: Headers;
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
 * // 00000013 02 00000001 01 03 617070 0004 6e657773 00 6869
 * ```
 */
export function encodePublish(fields: PublishFields, maxFrame: number = DEFAULT_MAX_FRAME): Uint8Array {
  checkU32(fields.requestId, 'request id');
  const names = validateName(fields.namespace, fields.topic);
  if (isPattern(fields.topic)) {
    throw new CodecError(
      'invalid_name',
      `topic ${JSON.stringify(fields.topic)} is a pattern: a message is published to one topic`,
    );
  }
  const block = headersAreEmpty(fields.headers) ? undefined : encodeHeaders(fields.headers!);
  const blockLength = block === undefined ? 0 : block.length;
  const length = 10 + names.namespace.length + names.topic.length + blockLength + fields.payload.length;
  const format = (fields.compressed === true ? FORMAT_ZSTD : 0) | (block === undefined ? 0 : FORMAT_HEADERS);
  return new FrameWriter(Opcode.PUBLISH, length, maxFrame)
    .u32(fields.requestId)
    .u8(fields.ack ? 0x01 : 0x00)
    .u8(names.namespace.length)
    .raw(names.namespace)
    .u16(names.topic.length)
    .raw(names.topic)
    .u8(format)
    .raw(block ?? [])
    .raw(fields.payload)
    .finish();
}

/**
 * Fields of a `SUBSCRIBE` frame (section 6.5).
 *
 * @example
 * ```ts
 * const fields: SubscribeFields = { requestId: 2, subId: 7, resumeEpoch: 0n, resumeSeq: 0n, namespace: 'app', topic: 'news' };
 * ```
 */
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

/** Fields of {@link encodeSubscribeShared}. */
export interface SubscribeSharedFields {
  requestId: number;
  subId: number;
  /** The group: 1 to 255 UTF-8 bytes, no `/`, `+`, `#`, `*`, `>` or control character. */
  group: string;
  namespace: string;
  /** A topic or a pattern. */
  topic: string;
}

/**
 * Whether `group` can name a shared subscription's group: 1 to 255 UTF-8
 * bytes without `/`, `+`, `#`, `*`, `>` or a control character.
 *
 * @example
 * ```ts
 * isGroupName('workers'); // true
 * isGroupName('a/b'); // false
 * ```
 */
export function isGroupName(group: string): boolean {
  const bytes = utf8Encoder.encode(group).length;
  // eslint-disable-next-line no-control-regex
  return bytes >= 1 && bytes <= 255 && !/[/+#*>\u0000-\u001f\u007f-\u009f]/u.test(group);
}

/**
 * Encodes `SUBSCRIBE_SHARED` (section 6.23): joins `group`'s shared
 * subscription to a topic or pattern, whose messages go to one member each.
 *
 * @example
 * ```ts
 * encodeSubscribeShared({ requestId: 5, subId: 9, group: 'g', namespace: 'a', topic: '*' });
 * // 00000010 0c 00000005 00000009 01 67 01 61 0001 2a
 * ```
 */
export function encodeSubscribeShared(fields: SubscribeSharedFields, maxFrame: number = DEFAULT_MAX_FRAME): Uint8Array {
  checkU32(fields.requestId, 'request id');
  checkU32(fields.subId, 'subscription id');
  if (!isGroupName(fields.group)) {
    throw new CodecError('invalid_name', `group ${JSON.stringify(fields.group)}: 1 to 255 bytes, no / + # * > or control characters`);
  }
  const group = utf8Encoder.encode(fields.group);
  const names = validateName(fields.namespace, fields.topic);
  const length = 13 + group.length + names.namespace.length + names.topic.length;
  return new FrameWriter(Opcode.SUBSCRIBE_SHARED, length, maxFrame)
    .u32(fields.requestId)
    .u32(fields.subId)
    .u8(group.length)
    .raw(group)
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
