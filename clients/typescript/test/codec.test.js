// The codec against docs/protocol.md: the hex examples of section 6 byte for
// byte, the server side of the worked session of section 8 at every split
// point, and malformed input.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  CodecError,
  FrameSplitter,
  checkFrame,
  decodeServerFrame,
  encodeHello,
  encodePing,
  encodePong,
  encodePublish,
  encodeHeaders,
  decodeHeaders,
  encodeSubscribe,
  encodeSubscribeShared,
  encodeUnsubscribe,
  isGroupName,
  validateName,
} from '../dist/codec.js';
import { CorebusError } from '../dist/index.js';
import { hex, toHex, concatBytes, server } from './helpers.js';

const E = 0x0123456789abcdefn;
const hi = new TextEncoder().encode('hi');

/** Asserts that `run` throws a CodecError with this reason (and code, offset). */
function assertCodecError(run, { reason, code, offset }) {
  assert.throws(run, (error) => {
    assert.ok(error instanceof CodecError, `expected a CodecError, got ${error}`);
    assert.ok(error instanceof CorebusError, 'a CodecError is a CorebusError');
    assert.equal(error.reason, reason, error.message);
    if (code !== undefined) assert.equal(error.code, code);
    if (offset !== undefined) assert.equal(error.offset, offset, `offset of: ${error.message}`);
    return true;
  });
}

describe('section 6 examples, client frames encoded byte for byte', () => {
  test('6.1 HELLO without credentials', () => {
    assert.equal(toHex(encodeHello({ clientName: 'cli' })), '0000000d0143425553000203636c690000');
  });
  test('6.1 HELLO with the API key "key"', () => {
    assert.equal(toHex(encodeHello({ clientName: 'cli', credentials: 'key' })), toHex(hex('00000010 01 43425553 0002 03 636c69 0003 6b6579')));
    assert.equal(toHex(encodeHello({ clientName: 'cli', credentials: new TextEncoder().encode('key') })), toHex(hex('00000010 01 43425553 0002 03 636c69 0003 6b6579')));
  });
  test('6.3 PUBLISH req 1, ack, app/news, "hi"', () => {
    const bytes = encodePublish({ requestId: 1, ack: true, namespace: 'app', topic: 'news', payload: hi });
    assert.equal(toHex(bytes), toHex(hex('00000013 02 00000001 01 03 617070 0004 6e657773 00 6869')));
  });
  test('6.3 PUBLISH without ack clears the flag', () => {
    const bytes = encodePublish({ requestId: 1, ack: false, namespace: 'app', topic: 'news', payload: hi });
    assert.equal(toHex(bytes), toHex(hex('00000013 02 00000001 00 03 617070 0004 6e657773 00 6869')));
  });
  test('SUBSCRIBE_SHARED (6.23): the example bytes; a group that breaks the rules is refused', () => {
    const bytes = encodeSubscribeShared({ requestId: 5, subId: 9, group: 'g', namespace: 'a', topic: '*' });
    assert.equal(toHex(bytes), toHex(hex('00000010 0c 00000005 00000009 01 67 01 61 0001 2a')));
    for (const group of ['', 'a/b', 'a+', '#', 'x*', '>', 'tab\t', 'g'.repeat(256)]) {
      assert.equal(isGroupName(group), false, JSON.stringify(group));
      assertCodecError(() => encodeSubscribeShared({ requestId: 1, subId: 1, group, namespace: 'a', topic: 't' }), {
        reason: 'invalid_name',
      });
    }
    assert.equal(isGroupName('workers-é'), true);
  });

  test('6.5 SUBSCRIBE live', () => {
    const bytes = encodeSubscribe({ requestId: 2, subId: 7, resumeEpoch: 0n, resumeSeq: 0n, namespace: 'app', topic: 'news' });
    assert.equal(
      toHex(bytes),
      toHex(hex('00000023 03 00000002 00000007 0000000000000000 0000000000000000 03 617070 0004 6e657773')),
    );
  });
  test('6.5 SUBSCRIBE resuming at seq 3 of epoch E', () => {
    const bytes = encodeSubscribe({ requestId: 4, subId: 8, resumeEpoch: E, resumeSeq: 3n, namespace: 'app', topic: 'news' });
    assert.equal(
      toHex(bytes),
      toHex(hex('00000023 03 00000004 00000008 0123456789abcdef 0000000000000003 03 617070 0004 6e657773')),
    );
  });
  test('6.7 UNSUBSCRIBE', () => {
    assert.equal(toHex(encodeUnsubscribe({ requestId: 3, subId: 7 })), toHex(hex('00000009 04 00000003 00000007')));
  });
  test('6.11 PING and PONG, nonce 42', () => {
    assert.equal(toHex(encodePing(42n)), toHex(hex('00000009 05 000000000000002a')));
    assert.equal(toHex(encodePong(42n)), toHex(hex('00000009 06 000000000000002a')));
  });
  test('u64 fields keep all 64 bits', () => {
    const bytes = encodeSubscribe({
      requestId: 0xffffffff,
      subId: 1,
      resumeEpoch: 0xffffffffffffffffn,
      resumeSeq: 0x8000000000000001n,
      namespace: 'n',
      topic: 't',
    });
    assert.equal(toHex(bytes.subarray(5, 29)), 'ffffffff00000001ffffffffffffffff8000000000000001');
  });
});

describe('section 6 examples, server frames decoded', () => {
  const cases = [
    ['6.2 WELCOME', '0000000b 81 0002 00100000 0001 0002', { type: 'welcome', version: 2, maxFrame: 1_048_576, shard: 1, shardCount: 2 }],
    ['6.4 PUB_ACK', '0000000d 82 00000001 0000000000000005', { type: 'pub_ack', requestId: 1, seq: 5n }],
    [
      '6.6 SUB_OK',
      '00000019 83 00000002 00000007 0123456789abcdef 0000000000000005',
      { type: 'sub_ok', requestId: 2, subId: 7, epoch: E, startAfter: 5n },
    ],
    ['6.7 UNSUB_OK', '00000009 84 00000003 00000007', { type: 'unsub_ok', requestId: 3, subId: 7 }],
    [
      '6.8 MESSAGE',
      '00000018 85 00000007 0123456789abcdef 0000000000000006 00 6869',
      { type: 'message', subId: 7, epoch: E, seq: 6n, compressed: false, payload: hi },
    ],
    [
      '6.9 DISCONTINUITY',
      '0000001d 86 00000007 0123456789abcdef 0000000000000002 0000000000000006',
      { type: 'discontinuity', subId: 7, epoch: E, lastSeq: 2n, nextSeq: 6n },
    ],
    ['6.10 GOAWAY', '0000000a 87 00002710 0003 627965', { type: 'goaway', drainMs: 10_000, message: 'bye' }],
    ['6.11 PING', '00000009 05 000000000000002a', { type: 'ping', nonce: 42n }],
    ['6.11 PONG', '00000009 06 000000000000002a', { type: 'pong', nonce: 42n }],
    [
      '6.12 ERROR',
      '0000000d 8f 00000004 0006 00 0003 626164',
      { type: 'error', requestId: 4, code: 6, fatal: false, message: 'bad' },
    ],
    ['6.14 TOKEN', '0000000c 88 00000005 0005 742e6b2e6e', { type: 'token', requestId: 5, token: 't.k.n' }],
    [
      '6.16 WEBHOOK_REPLY',
      '00000014 89 00000006 7b22776562686f6f6b73223a5b5d7d',
      { type: 'webhook_reply', requestId: 6, result: '{"webhooks":[]}' },
    ],
  ];
  for (const [name, bytes, expected] of cases) {
    test(name, () => assert.deepEqual(decodeServerFrame(hex(bytes)), expected));
  }
  test('a fatal ERROR (unauthorized, flags 01)', () => {
    assert.deepEqual(decodeServerFrame(server.error(0, 15, true, 'no')), {
      type: 'error',
      requestId: 0,
      code: 15,
      fatal: true,
      message: 'no',
    });
  });
  test('an empty MESSAGE payload and an empty GOAWAY message', () => {
    assert.equal(decodeServerFrame(server.message(1, 1n, 1n)).payload.length, 0);
    assert.equal(decodeServerFrame(hex('00000007 87 00000000 0000')).message, '');
  });
  test('the format byte: bit 0 says zstd; a MESSAGE without it, or with undefined bits, is malformed', () => {
    const zstd = decodeServerFrame(hex('00000018 85 00000007 0123456789abcdef 0000000000000006 01 6869'));
    assert.equal(zstd.compressed, true);
    assert.equal(toHex(zstd.payload), '6869');
    assert.throws(
      () => decodeServerFrame(hex('00000015 85 00000007 0123456789abcdef 0000000000000006')),
      (error) => error.reason === 'truncated',
    );
    assert.throws(
      () => decodeServerFrame(hex('00000016 85 00000007 0123456789abcdef 0000000000000006 20')),
      (error) => error.reason === 'reserved_flags' && error.code === 'malformed_frame',
    );
  });
  test('format bit 3: a headers block between the format byte and the payload', () => {
    const frame = decodeServerFrame(hex('00000020 85 00000007 0123456789abcdef 0000000000000006 08 0006 020003 612f62 6869'));
    assert.deepEqual(frame.headers, { contentType: 'a/b' });
    assert.equal(toHex(frame.payload), '6869');
    assert.equal(decodeServerFrame(hex('00000018 85 00000007 0123456789abcdef 0000000000000006 00 6869')).headers, undefined);
    assert.throws(
      () => decodeServerFrame(hex('0000001c 85 00000007 0123456789abcdef 0000000000000006 08 0009 020003 61')),
      (error) => error.reason === 'truncated',
    );
    assert.throws(
      () => decodeServerFrame(hex('0000001c 85 00000007 0123456789abcdef 0000000000000006 08 0004 020001 ff')),
      (error) => error.reason === 'invalid_utf8',
    );
  });
  test('headers round trip through a PUBLISH, every kind, unknown kinds skipped', () => {
    const headers = {
      user: [['a', '1'], ['a', '2'], ['ключ', '']],
      contentType: 'text/plain',
      responseTopic: 'replies/7',
      correlationData: new Uint8Array([0, 1, 2]),
      utf8Payload: true,
      expiresAtMs: 1_700_000_000_123,
    };
    const block = encodeHeaders(headers);
    assert.deepEqual(decodeHeaders(block.subarray(2)), headers);
    const bytes = encodePublish({ requestId: 1, ack: false, namespace: 'app', topic: 'news', headers, payload: hi });
    assert.equal(bytes[4 + 1 + 4 + 1 + 4 + 2 + 4], 0x08, 'format bit 3');
    assert.deepEqual(decodeHeaders(new Uint8Array([0x7f, 0, 1, 0xaa, 2, 0, 1, 0x61])), { contentType: 'a' });
    assert.equal(toHex(encodePublish({ requestId: 1, ack: false, namespace: 'app', topic: 'news', headers: {}, payload: hi })),
      toHex(hex('00000013 02 00000001 00 03 617070 0004 6e657773 00 6869')), 'empty headers: no block');
    assert.throws(() => encodeHeaders({ user: [['big', 'v'.repeat(70_000)]] }), (error) => error.reason === 'out_of_range');
  });
  test('a PUBLISH of a payload the caller compressed carries format 01', () => {
    const bytes = encodePublish({ requestId: 1, ack: false, namespace: 'app', topic: 'news', compressed: true, payload: hi });
    assert.equal(toHex(bytes), toHex(hex('00000013 02 00000001 00 03 617070 0004 6e657773 01 6869')));
  });
  test('the payload is a copy that outlives the message buffer', () => {
    const bytes = hex('00000018 85 00000007 0123456789abcdef 0000000000000006 00 6869');
    const frame = decodeServerFrame(bytes);
    bytes.fill(0);
    assert.equal(toHex(frame.payload), '6869');
  });
});

// Section 8, rows sent by the server, in order.
const SESSION_SERVER_ROWS = [
  '0000000b 81 0002 00100000 0001 0002',
  '0000000d 82 00000001 0000000000000005',
  '00000019 83 00000002 00000007 0123456789abcdef 0000000000000005',
  '00000018 85 00000007 0123456789abcdef 0000000000000006 00 6869',
  '00000009 84 00000003 00000007',
  '00000019 83 00000004 00000008 0123456789abcdef 0000000000000005',
  '0000001d 86 00000008 0123456789abcdef 0000000000000002 0000000000000006',
  '00000018 85 00000008 0123456789abcdef 0000000000000006 00 6869',
  '00000009 05 000000000000002a',
  '0000000a 87 00002710 0003 627965',
];
const SESSION_STREAM = concatBytes(...SESSION_SERVER_ROWS.map(hex));
const SESSION_TYPES = ['welcome', 'pub_ack', 'sub_ok', 'message', 'unsub_ok', 'sub_ok', 'discontinuity', 'message', 'ping', 'goaway'];

function splitAll(chunks, maxLength) {
  const splitter = new FrameSplitter(maxLength);
  const frames = [];
  for (const chunk of chunks) {
    splitter.push(chunk);
    for (let frame = splitter.next(); frame !== undefined; frame = splitter.next()) frames.push(toHex(frame));
  }
  assert.equal(splitter.pendingBytes, 0, 'nothing left over');
  return frames;
}

describe('FrameSplitter', () => {
  const expectedFrames = SESSION_SERVER_ROWS.map((row) => toHex(hex(row)));

  test('the worked session of section 8 in one message gives each server frame', () => {
    const frames = splitAll([SESSION_STREAM]);
    assert.deepEqual(frames, expectedFrames);
    assert.deepEqual(
      frames.map((frame) => decodeServerFrame(hex(frame)).type),
      SESSION_TYPES,
    );
  });

  test('the same frames at every split point of the stream', () => {
    for (let cut = 0; cut <= SESSION_STREAM.length; cut++) {
      const frames = splitAll([SESSION_STREAM.subarray(0, cut), SESSION_STREAM.subarray(cut)]);
      assert.deepEqual(frames, expectedFrames, `split at byte ${cut}`);
    }
  });

  test('the same frames fed one byte at a time, none early', () => {
    const splitter = new FrameSplitter();
    const ends = [];
    let end = 0;
    for (const row of SESSION_SERVER_ROWS) ends.push((end += hex(row).length));
    const frames = [];
    for (let index = 0; index < SESSION_STREAM.length; index++) {
      splitter.push(SESSION_STREAM.subarray(index, index + 1));
      const frame = splitter.next();
      if (ends.includes(index + 1)) {
        assert.ok(frame !== undefined, `frame complete at byte ${index + 1}`);
        frames.push(toHex(frame));
        assert.equal(splitter.next(), undefined);
      } else {
        assert.equal(frame, undefined, `no frame before byte ${index + 1} completes one`);
      }
    }
    assert.deepEqual(frames, expectedFrames);
  });

  test('every pair of split points (three chunks)', () => {
    const stream = SESSION_STREAM.subarray(0, 89); // the first four frames
    const whole = expectedFrames.slice(0, 4);
    for (let first = 0; first <= stream.length; first++) {
      for (let second = first; second <= stream.length; second++) {
        const frames = splitAll([stream.subarray(0, first), stream.subarray(first, second), stream.subarray(second)]);
        assert.deepEqual(frames, whole, `splits at ${first} and ${second}`);
      }
    }
  });

  test('a zero length prefix is a broken stream', () => {
    const splitter = new FrameSplitter();
    splitter.push(concatBytes(hex('00000009 05 000000000000002a'), hex('00000000 05')));
    assert.ok(splitter.next());
    assertCodecError(() => splitter.next(), { reason: 'zero_length', code: 'malformed_frame', offset: 13 });
  });

  test('a length prefix above the inbound limit fails before the body arrives', () => {
    const splitter = new FrameSplitter(1000);
    splitter.push(hex('000003e9'));
    assertCodecError(() => splitter.next(), { reason: 'frame_too_large', code: 'frame_too_large', offset: 0 });
    const atLimit = new FrameSplitter(1000);
    atLimit.push(hex('000003e8 05'));
    assert.equal(atLimit.next(), undefined, 'a prefix at the limit waits for its body');
  });

  test('a TLS alert read as a frame is rejected at once (section 1)', () => {
    const splitter = new FrameSplitter(1_048_586);
    splitter.push(hex('15 03 03 00 02 02 46'));
    assertCodecError(() => splitter.next(), { reason: 'frame_too_large' });
  });

  test('checkFrame reads only the prefix', () => {
    assert.equal(checkFrame(hex('000000'), 0, 100), 0);
    assert.equal(checkFrame(hex('00000009'), 0, 100), 13);
    assert.equal(checkFrame(hex('ff 00000009'), 1, 100), 13);
  });
});

describe('malformed server frames', () => {
  test('a field running past the end', () => {
    // PUB_ACK whose seq is one byte short.
    assertCodecError(() => decodeServerFrame(hex('0000000c 82 00000001 00000000000005')), {
      reason: 'truncated',
      code: 'malformed_frame',
      offset: 9,
    });
  });
  test('trailing bytes after a fixed-layout frame', () => {
    assertCodecError(() => decodeServerFrame(hex('0000000a 05 000000000000002a ff')), {
      reason: 'trailing_bytes',
      code: 'malformed_frame',
      offset: 13,
    });
  });
  test('a str16 length running past the end', () => {
    assertCodecError(() => decodeServerFrame(hex('0000000a 87 00002710 0004 627965')), { reason: 'truncated', offset: 11 });
  });
  test('text that is not UTF-8', () => {
    assertCodecError(() => decodeServerFrame(hex('0000000a 87 00002710 0003 62ff65')), {
      reason: 'invalid_utf8',
      code: 'malformed_frame',
      offset: 11,
    });
  });
  test('a MESSAGE whose format byte carries a delivery QoS decodes; QoS 3 and higher bits do not', () => {
    const frame = decodeServerFrame(hex('00000018 85 00000007 0000000000000001 0000000000000002 05 6869'));
    assert.equal(frame.type, 'message');
    assert.equal(frame.compressed, true, 'bit 0 still says zstd');
    assert.deepEqual([...frame.payload], [0x68, 0x69]);
    assert.equal(decodeServerFrame(hex('00000018 85 00000007 0000000000000001 0000000000000002 02 6869')).compressed, false);
    for (const format of ['06', '20']) {
      assertCodecError(() => decodeServerFrame(hex(`00000018 85 00000007 0000000000000001 0000000000000002 ${format} 6869`)), {
        reason: 'reserved_flags',
        code: 'malformed_frame',
      });
    }
  });
  test('reserved ERROR flag bits', () => {
    assertCodecError(() => decodeServerFrame(hex('0000000a 8f 00000000 0001 02 0000')), {
      reason: 'reserved_flags',
      code: 'malformed_frame',
    });
  });
  for (const opcode of ['8a', '8e', '00', '09', '80', '90', 'ff']) {
    test(`undefined opcode 0x${opcode}`, () => {
      assertCodecError(() => decodeServerFrame(hex(`00000001 ${opcode}`)), { reason: 'unknown_opcode', code: 'unknown_opcode', offset: 4 });
    });
  }
  for (const [name, opcode] of [['HELLO', '01'], ['PUBLISH', '02'], ['SUBSCRIBE', '03'], ['UNSUBSCRIBE', '04'], ['TOKEN_REQUEST', '07'], ['WEBHOOK_REQUEST', '08']]) {
    test(`client-only ${name} from the server`, () => {
      assertCodecError(() => decodeServerFrame(hex(`00000001 ${opcode}`)), { reason: 'wrong_direction', code: 'wrong_direction' });
    });
  }
  test('a frame whose prefix disagrees with its size', () => {
    assertCodecError(() => decodeServerFrame(hex('00000009 05 0000000000002a')), { reason: 'truncated' });
    assertCodecError(() => decodeServerFrame(hex('00000009 05 000000000000002a 00')), { reason: 'trailing_bytes' });
  });
  test('a zero length prefix', () => {
    assertCodecError(() => decodeServerFrame(hex('00000000')), { reason: 'zero_length' });
  });
  test('every truncation of every session frame fails with a CodecError, never another error', () => {
    for (const row of SESSION_SERVER_ROWS) {
      const bytes = hex(row);
      for (let cut = 0; cut < bytes.length; cut++) {
        assert.throws(() => decodeServerFrame(bytes.subarray(0, cut)), CodecError, `${row} cut at ${cut}`);
      }
    }
  });
});

describe('names (section 4) and limits', () => {
  test('valid names, including non-ASCII, slashes and spaces', () => {
    validateName('app', 'news');
    validateName('ünïcode', 'トピック');
    validateName('n', 'a/b c.d');
    validateName('x'.repeat(128), 't'.repeat(1024));
    validateName('ü'.repeat(64), 'ü'.repeat(512)); // 128 and 1024 bytes
  });
  const invalid = [
    ['', 'news', 'empty namespace'],
    ['app', '', 'empty topic'],
    ['x'.repeat(129), 'news', 'namespace of 129 bytes'],
    ['ü'.repeat(65), 'news', 'namespace of 130 bytes in 65 characters'],
    ['app', 't'.repeat(1025), 'topic of 1025 bytes'],
    ['app', 'bad\ntopic', 'a newline'],
    ['a\u0000', 'news', 'a NUL'],
    ['app', 'del\u007f', 'DEL (0x7f)'],
    ['app', '\u001f', '0x1f'],
    ['app', 'lone \ud800 surrogate', 'a lone surrogate'],
  ];
  for (const [namespace, topic, what] of invalid) {
    test(`invalid: ${what}`, () => {
      assertCodecError(() => validateName(namespace, topic), { reason: 'invalid_name', code: 'invalid_name' });
      assertCodecError(
        () => encodePublish({ requestId: 1, ack: false, namespace, topic, payload: hi }),
        { reason: 'invalid_name' },
      );
      assertCodecError(
        () => encodeSubscribe({ requestId: 1, subId: 1, resumeEpoch: 0n, resumeSeq: 0n, namespace, topic }),
        { reason: 'invalid_name' },
      );
    });
  }
  test('the offending byte is named with its offset', () => {
    assertCodecError(() => validateName('ab\tc', 'x'), { reason: 'invalid_name', offset: 2 });
  });

  test('a PUBLISH is checked against WELCOME.max_frame', () => {
    const maxFrame = 100;
    // length = 10 + N + T + P; with "n"/"t" the payload may be 88 bytes.
    const fits = encodePublish({ requestId: 1, ack: true, namespace: 'n', topic: 't', payload: new Uint8Array(88) }, maxFrame);
    assert.equal(new DataView(fits.buffer).getUint32(0), 100);
    assertCodecError(
      () => encodePublish({ requestId: 1, ack: true, namespace: 'n', topic: 't', payload: new Uint8Array(89) }, maxFrame),
      { reason: 'frame_too_large', code: 'frame_too_large' },
    );
  });

  test('a long client name is cut on a UTF-8 character boundary', () => {
    const bytes = encodeHello({ clientName: 'é'.repeat(200) }); // 400 bytes of UTF-8
    assert.equal(bytes[11], 254, 'cut to 127 two-byte characters, not 255 bytes');
    assert.equal(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(12, 12 + 254)), 'é'.repeat(127));
    assert.equal(encodeHello({ clientName: 'a'.repeat(300) })[11], 255);
  });

  test('values out of range are refused', () => {
    assertCodecError(() => encodePing(-1n), { reason: 'out_of_range', code: 'invalid_argument' });
    assertCodecError(() => encodePing(1n << 64n), { reason: 'out_of_range' });
    assertCodecError(() => encodeUnsubscribe({ requestId: 2 ** 32, subId: 1 }), { reason: 'out_of_range' });
    assertCodecError(() => encodeHello({ credentials: new Uint8Array(65_536) }), { reason: 'out_of_range' });
  });
});
