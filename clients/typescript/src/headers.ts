/**
 * A message's headers (protocol version 2, section 6.3): the publisher's
 * name-value pairs and a few well-known fields. They travel in the body,
 * between the format byte and the payload; MQTT 5.0 properties map onto
 * them one for one.
 *
 * @module
 */
import { CodecError } from './wire.js';

/**
 * Headers a publisher may set and a subscriber reads.
 *
 * @example
 * ```ts
 * const headers: Headers = { contentType: 'application/json', user: [['trace', '4bf92f']] };
 * await client.publish('app', 'events', '{}', { headers });
 * ```
 */
export interface Headers {
  /** Name-value pairs in the publisher's order; a name may repeat. */
  user?: [string, string][];
  /** What the payload is (a MIME type, by convention). */
  contentType?: string;
  /** Where a reply should go. */
  responseTopic?: string;
  /** What a reply should carry so the requester can match it. */
  correlationData?: Uint8Array;
  /** The publisher says the payload is UTF-8 text. */
  utf8Payload?: boolean;
  /** When the message expires, in Unix milliseconds. */
  expiresAtMs?: number;
}

/** Bit 3 of the format byte: a headers block follows it. */
export const FORMAT_HEADERS = 0x08;

/** The most bytes a headers block holds (its entries). */
export const MAX_HEADERS_BYTES = 0xffff;

const USER = 1;
const CONTENT_TYPE = 2;
const RESPONSE_TOPIC = 3;
const CORRELATION_DATA = 4;
const UTF8_PAYLOAD = 5;
const EXPIRES_AT = 6;

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Whether `headers` sets nothing (a body then has no headers block).
 *
 * @example
 * ```ts
 * headersAreEmpty({}); // true
 * ```
 */
export function headersAreEmpty(headers: Headers | undefined): boolean {
  return (
    headers === undefined ||
    ((headers.user === undefined || headers.user.length === 0) &&
      headers.contentType === undefined &&
      headers.responseTopic === undefined &&
      headers.correlationData === undefined &&
      headers.utf8Payload !== true &&
      headers.expiresAtMs === undefined)
  );
}

/**
 * Encodes a headers block: its `u16` length, then one entry per header.
 * Throws `invalid_argument` when it would exceed {@link MAX_HEADERS_BYTES}.
 *
 * @example
 * ```ts
 * encodeHeaders({ contentType: 'a/b' }); // 0006 020003 612f62
 * ```
 */
export function encodeHeaders(headers: Headers): Uint8Array {
  const entries: [number, Uint8Array][] = [];
  for (const [name, value] of headers.user ?? []) {
    const n = encoder.encode(name);
    const v = encoder.encode(value);
    const entry = new Uint8Array(2 + n.length + v.length);
    new DataView(entry.buffer).setUint16(0, n.length);
    entry.set(n, 2);
    entry.set(v, 2 + n.length);
    entries.push([USER, entry]);
  }
  if (headers.contentType !== undefined) entries.push([CONTENT_TYPE, encoder.encode(headers.contentType)]);
  if (headers.responseTopic !== undefined) entries.push([RESPONSE_TOPIC, encoder.encode(headers.responseTopic)]);
  if (headers.correlationData !== undefined) entries.push([CORRELATION_DATA, headers.correlationData]);
  if (headers.utf8Payload === true) entries.push([UTF8_PAYLOAD, new Uint8Array(0)]);
  if (headers.expiresAtMs !== undefined) {
    const at = new Uint8Array(8);
    new DataView(at.buffer).setBigUint64(0, BigInt(Math.max(0, Math.floor(headers.expiresAtMs))));
    entries.push([EXPIRES_AT, at]);
  }
  const length = entries.reduce((sum, [, value]) => sum + 3 + value.length, 0);
  if (length > MAX_HEADERS_BYTES || entries.some(([, value]) => value.length > MAX_HEADERS_BYTES - 3)) {
    throw new CodecError('out_of_range', `headers of ${length} bytes: a message's headers hold at most ${MAX_HEADERS_BYTES}`);
  }
  const block = new Uint8Array(2 + length);
  const view = new DataView(block.buffer);
  view.setUint16(0, length);
  let at = 2;
  for (const [kind, value] of entries) {
    block[at] = kind;
    view.setUint16(at + 1, value.length);
    block.set(value, at + 3);
    at += 3 + value.length;
  }
  return block;
}

/**
 * Decodes a headers block's entries (what follows its length); kinds this
 * version does not know are skipped.
 *
 * @example
 * ```ts
 * decodeHeaders(new Uint8Array([2, 0, 3, 0x61, 0x2f, 0x62])); // { contentType: 'a/b' }
 * ```
 */
export function decodeHeaders(block: Uint8Array): Headers {
  const headers: Headers = {};
  const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
  const text = (bytes: Uint8Array): string => {
    try {
      return decoder.decode(bytes);
    } catch {
      throw new CodecError('invalid_utf8', 'a text header is not valid UTF-8');
    }
  };
  let at = 0;
  while (at < block.length) {
    if (block.length - at < 3) throw new CodecError('truncated', 'a header entry is cut short', at);
    const kind = block[at]!;
    const length = view.getUint16(at + 1);
    const start = at + 3;
    if (block.length - start < length) throw new CodecError('truncated', 'a header value runs past the block', at);
    const value = block.slice(start, start + length);
    at = start + length;
    switch (kind) {
      case USER: {
        if (value.length < 2) throw new CodecError('truncated', 'a user header has no name length', at);
        const nameLength = (value[0]! << 8) | value[1]!;
        if (value.length - 2 < nameLength) throw new CodecError('truncated', "a user header's name runs past its entry", at);
        (headers.user ??= []).push([text(value.subarray(2, 2 + nameLength)), text(value.subarray(2 + nameLength))]);
        break;
      }
      case CONTENT_TYPE:
        headers.contentType = text(value);
        break;
      case RESPONSE_TOPIC:
        headers.responseTopic = text(value);
        break;
      case CORRELATION_DATA:
        headers.correlationData = value;
        break;
      case UTF8_PAYLOAD:
        headers.utf8Payload = true;
        break;
      case EXPIRES_AT:
        if (value.length !== 8) throw new CodecError('truncated', 'the expiry header is not 8 bytes', at);
        headers.expiresAtMs = Number(new DataView(value.buffer).getBigUint64(0));
        break;
      default:
        break;
    }
  }
  return headers;
}
