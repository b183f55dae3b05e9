/**
 * Reading compressed payloads: a publisher may compress a payload with zstd
 * (section 6.3's format byte); the broker forwards it untouched and the
 * subscriber decompresses it. Decompression is `fzstd`'s (pure JavaScript);
 * what this module adds is the bound: a payload is decompressed only when its
 * frame header announces its size and that size is within the limit, into a
 * buffer of exactly that size, so a hostile publisher cannot make a page
 * allocate more than the limit.
 *
 * @module
 */

import { Decompress } from 'fzstd';

import { CorebusError } from './errors.js';
import { DEFAULT_MAX_DECOMPRESSED } from './wire.js';

const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

/** What a zstd frame header says (RFC 8878, section 3.1.1.1). */
interface FrameHeader {
  /** The announced content size, when the header has one. */
  contentSize: number | undefined;
  /** The window a decoder allocates: the content size for a single-segment frame. */
  windowSize: number;
  /** Whether a 4-byte checksum follows the last block. */
  checksum: boolean;
  /** Where the first block starts. */
  end: number;
}

function failed(message: string): CorebusError {
  return new CorebusError('decompress_failed', message);
}

function readHeader(frame: Uint8Array): FrameHeader {
  if (frame.length < 5 || ZSTD_MAGIC.some((byte, i) => frame[i] !== byte)) {
    throw failed('the payload is flagged zstd but does not start with a zstd frame');
  }
  const descriptor = frame[4]!;
  if ((descriptor & 0x08) !== 0) throw failed('the zstd frame header sets its reserved bit');
  const sizeFlag = descriptor >> 6;
  const singleSegment = (descriptor >> 5) & 1;
  const dictionaryBytes = [0, 1, 2, 4][descriptor & 0x03]!;
  const sizeBytes = sizeFlag === 0 ? singleSegment : 1 << sizeFlag;
  const at = 5 + (singleSegment === 1 ? 0 : 1) + dictionaryBytes;
  const end = at + sizeBytes;
  if (frame.length < end) throw failed('the zstd frame header is cut short');
  let contentSize: number | undefined;
  if (sizeBytes > 0) {
    let size = 0;
    for (let i = sizeBytes - 1; i >= 0; i--) size = size * 256 + frame[at + i]!;
    // A two-byte field counts from 256 (the one-byte form covers 0 to 255).
    contentSize = sizeBytes === 2 ? size + 256 : size;
  }
  let windowSize = contentSize ?? 0;
  if (singleSegment === 0) {
    const exponent = frame[5]! >> 3;
    const base = 2 ** (10 + exponent);
    windowSize = base + (base / 8) * (frame[5]! & 0x07);
  }
  return { contentSize, windowSize, checksum: (descriptor & 0x04) !== 0, end };
}

/**
 * Walks the frame's blocks (their 3-byte headers say their sizes) and checks
 * that the payload is this one frame and nothing more: a second frame would
 * bring a second header, and with it an allocation nobody checked.
 */
function checkOneFrame(frame: Uint8Array, header: FrameHeader): void {
  let at = header.end;
  for (;;) {
    if (frame.length < at + 3) throw failed('the zstd frame is cut short');
    const block = frame[at]! | (frame[at + 1]! << 8) | (frame[at + 2]! << 16);
    const type = (block >> 1) & 0x03;
    if (type === 3) throw failed('the zstd frame has a block of the reserved type');
    // A raw or compressed block holds its size in bytes; an RLE block one byte.
    at += 3 + (type === 1 ? 1 : block >>> 3);
    if ((block & 1) === 1) break;
  }
  if (header.checksum) at += 4;
  if (at !== frame.length) {
    throw failed(at < frame.length ? 'the payload holds more than one zstd frame' : 'the zstd frame is cut short');
  }
}

/**
 * The content size a zstd frame's header announces (RFC 8878, section
 * 3.1.1.1), or `undefined` when the header leaves it out. Throws
 * `decompress_failed` when `frame` does not start with a zstd frame header.
 *
 * @example
 * ```ts
 * zstdContentSize(compressed); // 16384 for a 16 KiB payload the Rust client compressed
 * ```
 */
export function zstdContentSize(frame: Uint8Array): number | undefined {
  return readHeader(frame).contentSize;
}

/**
 * Decompresses a payload that travelled compressed (`MessageFrame.compressed`,
 * or an event stream's `event: zstd` after base64 decoding) into at most
 * `limit` bytes. Throws a {@link CorebusError} with code `decompress_failed`
 * when the payload is not exactly one valid zstd frame, announces more than
 * `limit` bytes (or a larger window), yields more than `limit`, or does not
 * hold what its header announced.
 *
 * @example
 * ```ts
 * source.addEventListener('zstd', (event) => {
 *   const compressed = Uint8Array.from(atob(event.data), (c) => c.charCodeAt(0));
 *   render(new TextDecoder().decode(decompressPayload(compressed)));
 * });
 * ```
 */
export function decompressPayload(payload: Uint8Array, limit: number = DEFAULT_MAX_DECOMPRESSED): Uint8Array {
  const header = readHeader(payload);
  if (header.contentSize !== undefined && header.contentSize > limit) {
    throw failed(`the payload decompresses to ${header.contentSize} bytes, over the limit of ${limit}`);
  }
  // The decoder allocates the frame's window before it reads a block.
  if (header.windowSize > limit) {
    throw failed(`the zstd frame asks for a ${header.windowSize}-byte window, over the limit of ${limit}`);
  }
  checkOneFrame(payload, header);
  const parts: Uint8Array[] = [];
  let total = 0;
  const decoder = new Decompress((chunk) => {
    total += chunk.length;
    if (total > limit) throw failed(`the payload decompresses to more than the limit of ${limit} bytes`);
    // The decoder reuses its window: keep a copy.
    parts.push(chunk.slice());
  });
  try {
    decoder.push(payload, true);
  } catch (cause) {
    if (cause instanceof CorebusError) throw cause;
    throw new CorebusError('decompress_failed', `the payload is not valid zstd: ${(cause as Error).message}`, { cause });
  }
  if (header.contentSize !== undefined && total !== header.contentSize) {
    throw failed(`the zstd frame announced ${header.contentSize} bytes and held ${total}`);
  }
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
