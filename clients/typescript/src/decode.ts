/**
 * The decoder for every frame a server sends (docs/protocol.md, section 6),
 * in two phases: {@link checkFrame} reads only the length prefix, then
 * {@link decodeServerFrame} parses one whole frame, checking every bound.
 *
 * @module
 */

import { decodeHeaders, FORMAT_HEADERS, type Headers } from './headers.js';
import { CodecError, FORMAT_QOS_MASK, FORMAT_RETAIN, FORMAT_ZSTD, Opcode } from './wire.js';

const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * `WELCOME` (0x81): the handshake succeeded.
 *
 * @example
 * ```ts
 * if (frame.type === 'welcome') maxFrame = frame.maxFrame;
 * ```
 */
export interface WelcomeFrame {
  type: 'welcome';
  version: number;
  /** Largest `length` the server accepts; never send a longer frame. */
  maxFrame: number;
  shard: number;
  shardCount: number;
}
/**
 * `PUB_ACK` (0x82): the acknowledged publish got `seq`.
 *
 * @example
 * ```ts
 * if (frame.type === 'pub_ack') acks.get(frame.requestId)?.(frame.seq);
 * ```
 */
export interface PubAckFrame {
  type: 'pub_ack';
  requestId: number;
  seq: bigint;
}
/**
 * `SUB_OK` (0x83): the subscription gets the messages of `epoch` after `startAfter`.
 *
 * @example
 * ```ts
 * if (frame.type === 'sub_ok') expected = frame.startAfter + 1n;
 * ```
 */
export interface SubOkFrame {
  type: 'sub_ok';
  requestId: number;
  subId: number;
  epoch: bigint;
  startAfter: bigint;
}
/**
 * `UNSUB_OK` (0x84): the subscription has ended.
 *
 * @example
 * ```ts
 * if (frame.type === 'unsub_ok') subscriptions.delete(frame.subId);
 * ```
 */
export interface UnsubOkFrame {
  type: 'unsub_ok';
  requestId: number;
  subId: number;
}
/**
 * `MESSAGE` (0x85): one delivery to one subscription.
 *
 * @example
 * ```ts
 * if (frame.type === 'message') console.log(frame.subId, frame.seq, frame.payload);
 * ```
 */
export interface MessageFrame {
  type: 'message';
  subId: number;
  epoch: bigint;
  seq: bigint;
  /** Whether the payload is a zstd frame (the format byte's bit 0, section 6.8). */
  compressed: boolean;
  /** The publisher's headers (format bit 3), when it set any. */
  headers?: Headers;
  /** The payload as it travelled, compressed or not (a copy, owned by the frame). */
  payload: Uint8Array;
}
/**
 * `TOPIC_MESSAGE` (0x8c): one delivery to a pattern subscription, with the
 * concrete topic and that topic's own epoch and sequence number.
 *
 * @example
 * ```ts
 * if (frame.type === 'topic_message') console.log(frame.topic, frame.seq);
 * ```
 */
export interface TopicMessageFrame {
  type: 'topic_message';
  subId: number;
  epoch: bigint;
  seq: bigint;
  topic: string;
  /** Whether the payload is a zstd frame. */
  compressed: boolean;
  /** The publisher's headers, when it set any. */
  headers?: Headers;
  /** The payload as it travelled (a copy, owned by the frame). */
  payload: Uint8Array;
}
/**
 * `DISCONTINUITY` (0x86): messages after `lastSeq` up to `nextSeq` (excluded) were lost.
 *
 * @example
 * ```ts
 * if (frame.type === 'discontinuity') expected = frame.nextSeq;
 * ```
 */
export interface DiscontinuityFrame {
  type: 'discontinuity';
  subId: number;
  epoch: bigint;
  lastSeq: bigint;
  nextSeq: bigint;
}
/**
 * `GOAWAY` (0x87): the server is shutting down.
 *
 * @example
 * ```ts
 * if (frame.type === 'goaway') stopSending();
 * ```
 */
export interface GoawayFrame {
  type: 'goaway';
  drainMs: number;
  message: string;
}
/**
 * `PING` (0x05) from the server; answer with a `PONG` of the same nonce.
 *
 * @example
 * ```ts
 * if (frame.type === 'ping') socket.send(encodePong(frame.nonce));
 * ```
 */
export interface PingFrame {
  type: 'ping';
  nonce: bigint;
}
/**
 * `PONG` (0x06): the answer to one of the client's `PING`s.
 *
 * @example
 * ```ts
 * if (frame.type === 'pong' && frame.nonce === sentNonce) alive = true;
 * ```
 */
export interface PongFrame {
  type: 'pong';
  nonce: bigint;
}
/**
 * `TOKEN` (0x88): a token minted on request.
 *
 * @example
 * ```ts
 * if (frame.type === 'token') useToken(frame.token);
 * ```
 */
export interface TokenFrame {
  type: 'token';
  requestId: number;
  token: string;
}
/**
 * `WEBHOOK_REPLY` (0x89): the JSON result of a webhook command.
 *
 * @example
 * ```ts
 * if (frame.type === 'webhook_reply') console.log(JSON.parse(frame.result));
 * ```
 */
export interface WebhookReplyFrame {
  type: 'webhook_reply';
  requestId: number;
  result: string;
}
/**
 * `ERROR` (0x8f): a failed request, or the end of the connection if `fatal`.
 *
 * @example
 * ```ts
 * if (frame.type === 'error' && frame.fatal) closeConnection();
 * ```
 */
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
  | TopicMessageFrame
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
  /** The headers block a format byte announces (bit 3), or `undefined`. */
  headers(format: number): Headers | undefined {
    if ((format & FORMAT_HEADERS) === 0) return undefined;
    const length = this.u16('headers length');
    const start = this.need(length, 'headers');
    try {
      return decodeHeaders(this.bytes.subarray(start, start + length));
    } catch (error) {
      if (error instanceof CodecError) {
        throw new CodecError(error.reason, `${this.frameName}: ${error.message}`, start + error.offset);
      }
      throw error;
    }
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
      const subId = reader.u32('sub_id');
      const epoch = reader.u64('epoch');
      const seq = reader.u64('seq');
      const format = reader.u8('format');
      if (!formatIsValid(format)) {
        throw new CodecError('reserved_flags', `MESSAGE: undefined format bits set (format 0x${format.toString(16)})`, 25);
      }
      const headers = reader.headers(format);
      const message: MessageFrame = { type: 'message', subId, epoch, seq, compressed: (format & FORMAT_ZSTD) !== 0, payload: reader.rest() };
      if (headers !== undefined) message.headers = headers;
      return message;
    }
    case Opcode.TOPIC_MESSAGE: {
      const reader = new FrameReader(frame, 'TOPIC_MESSAGE');
      const subId = reader.u32('sub_id');
      const epoch = reader.u64('epoch');
      const seq = reader.u64('seq');
      const topic = reader.str16('topic');
      const format = reader.u8('format');
      if (!formatIsValid(format)) {
        throw new CodecError('reserved_flags', `TOPIC_MESSAGE: undefined format bits set (format 0x${format.toString(16)})`);
      }
      const headers = reader.headers(format);
      const message: TopicMessageFrame = { type: 'topic_message', subId, epoch, seq, topic, compressed: (format & FORMAT_ZSTD) !== 0, payload: reader.rest() };
      if (headers !== undefined) message.headers = headers;
      return message;
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

/**
 * Whether a body's format byte sets only defined bits: bit 0 (zstd) and a
 * delivery QoS of 0 to 2 in bits 1 and 2 (protocol section 6.3; the client
 * reads past the QoS, which only MQTT subscribers use).
 */
function formatIsValid(format: number): boolean {
  return (format & ~(FORMAT_ZSTD | FORMAT_QOS_MASK | FORMAT_HEADERS | FORMAT_RETAIN)) === 0 && (format & FORMAT_QOS_MASK) !== FORMAT_QOS_MASK;
}
