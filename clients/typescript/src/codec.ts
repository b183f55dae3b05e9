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

export * from './wire.js';
export * from './encode.js';
export * from './decode.js';
export * from './splitter.js';
export * from './headers.js';
