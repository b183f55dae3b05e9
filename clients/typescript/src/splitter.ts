/**
 * Cuts a byte stream into whole frames by their length prefix.
 *
 * @module
 */

import { checkFrame } from './decode.js';
import { CodecError, DEFAULT_MAX_FRAME } from './wire.js';

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
