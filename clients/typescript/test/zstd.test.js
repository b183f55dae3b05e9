// Compressed payloads: the bounded decompressor (src/zstd.ts) on frames
// built by hand from RFC 8878 (raw blocks, whose sizes are plain to see) and
// on a frame zstd itself wrote, and the subscription's handling: a
// compressed item arrives decompressed, one that cannot be read is reported
// to onError and the next one still arrives.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CorebusError, decompressPayload, zstdContentSize } from '../dist/index.js';
import { concatBytes, hex, recorder, server } from './helpers.js';
import { E, openClient, subscribeWith } from './setup.js';

const utf8 = new TextEncoder();
const ROW = '{"id":12345,"price":100.25,"side":"buy"},';
/** 2000 bytes of ROW repeated, as `zstd --no-check` compressed them (60 bytes). */
const ROWS = ROW.repeat(60).slice(0, 2000);
const ROWS_ZSTD = hex(
  '28b52ffd60d00695010094027b226964223a31323334352c227072696365223a3130302e3235' +
    '2c2273696465223a22627579227d2c0100219dfdaa0c',
);

/**
 * One single-segment frame holding `content` (under 256 bytes) in one raw
 * block, whose header announces `announced` bytes.
 */
function rawFrame(content, announced = content.length) {
  const block = (content.length << 3) | 1; // last block, type raw
  return concatBytes(
    hex('28b52ffd 20'),
    Uint8Array.of(announced),
    Uint8Array.of(block & 0xff, (block >> 8) & 0xff, block >> 16),
    content,
  );
}

function failsWith(pattern) {
  return (error) => {
    assert.ok(error instanceof CorebusError, `expected a CorebusError, got ${error}`);
    assert.equal(error.code, 'decompress_failed');
    assert.match(error.message, pattern);
    return true;
  };
}

describe('decompressPayload', () => {
  test('a frame zstd wrote comes back as it was, its size read from the header', () => {
    assert.equal(zstdContentSize(ROWS_ZSTD), 2000);
    assert.equal(new TextDecoder().decode(decompressPayload(ROWS_ZSTD)), ROWS);
    const hello = utf8.encode('hello');
    assert.deepEqual([...decompressPayload(rawFrame(hello))], [...hello]);
  });

  test('a frame announcing more than the limit is refused before decoding', () => {
    assert.throws(() => decompressPayload(ROWS_ZSTD, 1999), failsWith(/2000 bytes, over the limit of 1999/));
    assert.equal(decompressPayload(ROWS_ZSTD, 2000).length, 2000);
  });

  test('a header that understates or overstates its content is refused, not cut or padded', () => {
    const content = utf8.encode('0123456789');
    // Understated, the content overflows the window the header sized.
    assert.throws(() => decompressPayload(rawFrame(content, 4)), failsWith(/not valid zstd|announced 4 bytes/));
    assert.throws(() => decompressPayload(rawFrame(content, 20)), failsWith(/announced 20 bytes and held 10/));
  });

  test('two frames, a cut frame, a reserved block type and bytes that are not zstd are refused', () => {
    const one = rawFrame(utf8.encode('abc'));
    assert.throws(() => decompressPayload(concatBytes(one, one)), failsWith(/more than one zstd frame/));
    assert.throws(() => decompressPayload(one.subarray(0, one.length - 1)), failsWith(/cut short/));
    const reserved = rawFrame(utf8.encode('abc'));
    reserved[6] |= 0x06; // block type 3
    assert.throws(() => decompressPayload(reserved), failsWith(/reserved type/));
    assert.throws(() => decompressPayload(utf8.encode('plain text')), failsWith(/does not start with a zstd frame/));
  });

  test('a frame without its size is bounded by its window and by what it yields', () => {
    // Not single-segment, no content size: a window descriptor of 1 KiB
    // (exponent 0, mantissa 0) and one raw block.
    const content = utf8.encode('x'.repeat(200));
    const block = (content.length << 3) | 1;
    const frame = concatBytes(hex('28b52ffd 00 00'), Uint8Array.of(block & 0xff, (block >> 8) & 0xff, block >> 16), content);
    assert.equal(zstdContentSize(frame), undefined);
    assert.equal(decompressPayload(frame, 1024).length, 200);
    assert.throws(() => decompressPayload(frame, 1023), failsWith(/1024-byte window/));
  });
});

describe('compressed items', () => {
  test('a compressed MESSAGE reaches onItem decompressed, marked compressed', async () => {
    const { client, socket } = await openClient();
    const log = recorder();
    const { frame } = await subscribeWith(client, socket, log, { startAfter: 5n });
    socket.deliver(server.message(frame.subId, E, 6n, ROWS_ZSTD, 1), server.message(frame.subId, E, 7n, 'plain'));
    assert.deepEqual(log.seqs(), [6n, 7n]);
    const [six, seven] = log.items;
    assert.equal(six.text(), ROWS);
    assert.equal(six.compressed, true);
    assert.equal(seven.text(), 'plain');
    assert.equal(seven.compressed, false);
    assert.equal(log.errors.length, 0);
    await client.close();
  });

  test('one over maxDecompressedBytes goes to onError; the next item still arrives', async () => {
    const { client, socket } = await openClient({ maxDecompressedBytes: 1000 });
    const log = recorder();
    const { frame, subscription } = await subscribeWith(client, socket, log, { startAfter: 5n });
    socket.deliver(server.message(frame.subId, E, 6n, ROWS_ZSTD, 1), server.message(frame.subId, E, 7n, 'after'));
    assert.deepEqual(log.seqs(), [7n]);
    assert.equal(log.errors.length, 1);
    assert.equal(log.errors[0].code, 'decompress_failed');
    assert.match(log.errors[0].message, /news #6: .*over the limit of 1000/);
    assert.deepEqual(subscription.position, { epoch: E, seq: 7n });
    assert.equal(subscription.active, true);
    await client.close();
  });
});
