// Test helpers: hex, an independent frame builder and parser (written from
// docs/protocol.md, not from src/codec.ts, so that the codec is checked
// against a second reading of the spec), a fake clock and a fake WebSocket
// whose far end the test plays as the broker.

import assert from 'node:assert/strict';

/** Bytes from hex text; spaces and newlines are ignored. */
export function hex(text) {
  const clean = text.replace(/\s+/g, '');
  assert.equal(clean.length % 2, 0, `odd hex: ${text}`);
  const bytes = new Uint8Array(clean.length / 2);
  for (let index = 0; index < bytes.length; index++) {
    bytes[index] = parseInt(clean.slice(index * 2, index * 2 + 2), 16);
  }
  return bytes;
}

/** Hex text of bytes, no spaces. */
export function toHex(bytes) {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

export function concatBytes(...parts) {
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  const joined = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    joined.set(part, offset);
    offset += part.length;
  }
  return joined;
}

const utf8 = new TextEncoder();

/** One frame from [type, value] fields; the length prefix is computed. */
function frame(opcode, fields) {
  const body = [];
  for (const [type, value] of fields) {
    const buffer = new ArrayBuffer(8);
    const view = new DataView(buffer);
    switch (type) {
      case 'u8':
        body.push(Uint8Array.of(value));
        break;
      case 'u16':
        view.setUint16(0, value);
        body.push(new Uint8Array(buffer, 0, 2));
        break;
      case 'u32':
        view.setUint32(0, value);
        body.push(new Uint8Array(buffer, 0, 4));
        break;
      case 'u64':
        view.setBigUint64(0, BigInt(value));
        body.push(new Uint8Array(buffer, 0, 8));
        break;
      case 'str16': {
        const bytes = utf8.encode(value);
        view.setUint16(0, bytes.length);
        body.push(new Uint8Array(buffer, 0, 2), bytes);
        break;
      }
      case 'raw':
        body.push(typeof value === 'string' ? utf8.encode(value) : value);
        break;
      default:
        throw new Error(`unknown field type ${type}`);
    }
  }
  const payload = concatBytes(Uint8Array.of(opcode), ...body);
  const prefix = new Uint8Array(4);
  new DataView(prefix.buffer).setUint32(0, payload.length);
  return concatBytes(prefix, payload);
}

/** Server frames, built from docs/protocol.md section 6. */
export const server = {
  welcome: ({ version = 2, maxFrame = 1_048_576, shard = 0, shardCount = 1 } = {}) =>
    frame(0x81, [['u16', version], ['u32', maxFrame], ['u16', shard], ['u16', shardCount]]),
  pubAck: (requestId, seq) => frame(0x82, [['u32', requestId], ['u64', seq]]),
  subOk: (requestId, subId, epoch, startAfter) =>
    frame(0x83, [['u32', requestId], ['u32', subId], ['u64', epoch], ['u64', startAfter]]),
  unsubOk: (requestId, subId) => frame(0x84, [['u32', requestId], ['u32', subId]]),
  message: (subId, epoch, seq, payload = '', format = 0) =>
    frame(0x85, [['u32', subId], ['u64', epoch], ['u64', seq], ['u8', format], ['raw', payload]]),
  topicMessage: (subId, epoch, seq, topic, payload = '', format = 0) =>
    frame(0x8c, [['u32', subId], ['u64', epoch], ['u64', seq], ['str16', topic], ['u8', format], ['raw', payload]]),
  discontinuity: (subId, epoch, lastSeq, nextSeq) =>
    frame(0x86, [['u32', subId], ['u64', epoch], ['u64', lastSeq], ['u64', nextSeq]]),
  goaway: (drainMs, message = '') => frame(0x87, [['u32', drainMs], ['str16', message]]),
  ping: (nonce) => frame(0x05, [['u64', nonce]]),
  pong: (nonce) => frame(0x06, [['u64', nonce]]),
  error: (requestId, code, fatal, message = '') =>
    frame(0x8f, [['u32', requestId], ['u16', code], ['u8', fatal ? 1 : 0], ['str16', message]]),
};

/** Error codes of section 7.11 used by the tests. */
export const CODE = { forbidden: 16, unauthorized: 15, token_expired: 17, slow_consumer: 10, invalid_name: 6 };

const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/** Parses the client frames in `bytes` (whole frames only) from section 6. */
export function parseClientFrames(bytes) {
  const frames = [];
  let offset = 0;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  while (offset < bytes.length) {
    const length = view.getUint32(offset);
    assert.ok(length > 0 && offset + 4 + length <= bytes.length, `client sent a partial or empty frame at ${offset}`);
    const end = offset + 4 + length;
    const opcode = bytes[offset + 4];
    let at = offset + 5;
    const u8 = () => bytes[at++];
    const u16 = () => ((at += 2), view.getUint16(at - 2));
    const u32 = () => ((at += 4), view.getUint32(at - 4));
    const u64 = () => ((at += 8), view.getBigUint64(at - 8));
    const take = (count) => ((at += count), bytes.slice(at - count, at));
    const text = (count) => utf8Decoder.decode(take(count));
    let parsed;
    switch (opcode) {
      case 0x01: {
        assert.equal(toHex(take(4)), '43425553', 'HELLO magic');
        const version = u16();
        const name = text(u8());
        const credentials = text(u16());
        parsed = { type: 'hello', version, name, credentials };
        break;
      }
      case 0x02: {
        const requestId = u32();
        const flags = u8();
        const namespace = text(u8());
        const topic = text(u16());
        const format = u8();
        parsed = { type: 'publish', requestId, ack: flags === 1, flags, namespace, topic, format, payload: take(end - at) };
        break;
      }
      case 0x03:
        parsed = {
          type: 'subscribe',
          requestId: u32(),
          subId: u32(),
          resumeEpoch: u64(),
          resumeSeq: u64(),
          namespace: text(u8()),
          topic: text(u16()),
        };
        break;
      case 0x0c:
        parsed = {
          type: 'subscribe',
          shared: true,
          requestId: u32(),
          subId: u32(),
          group: text(u8()),
          namespace: text(u8()),
          topic: text(u16()),
        };
        break;
      case 0x04:
        parsed = { type: 'unsubscribe', requestId: u32(), subId: u32() };
        break;
      case 0x05:
        parsed = { type: 'ping', nonce: u64() };
        break;
      case 0x06:
        parsed = { type: 'pong', nonce: u64() };
        break;
      default:
        assert.fail(`client sent opcode 0x${opcode.toString(16)}`);
    }
    assert.equal(at, end, `client frame ${parsed.type} has ${end - at} bytes left over`);
    frames.push(parsed);
    offset = end;
  }
  return frames;
}

/** Lets promise callbacks and queued tasks run. */
export async function settle(turns = 5) {
  for (let turn = 0; turn < turns; turn++) await new Promise((resolve) => setImmediate(resolve));
}

/**
 * Polls `condition` until it returns a truthy value, and returns it; fails
 * with `what` after `timeoutMs` of real time.
 */
export async function waitFor(condition, what, timeoutMs = 2000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = condition();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** A clock whose time moves only when the test says so. */
export class FakeClock {
  constructor(start = 1_750_000_000_000) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
  }
  now() {
    return this.time;
  }
  setTimeout(callback, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + Math.max(0, ms), callback, id });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  /** Delays (from now) of the pending timers, smallest first. */
  pendingDelays() {
    return [...this.timers.values()].map((timer) => timer.at - this.time).sort((a, b) => a - b);
  }
  /** Moves time forward, firing due timers in order and letting promises settle between them. */
  async advance(ms) {
    const target = this.time + ms;
    for (;;) {
      let next;
      for (const timer of this.timers.values()) {
        if (timer.at <= target && (next === undefined || timer.at < next.at || (timer.at === next.at && timer.id < next.id))) {
          next = timer;
        }
      }
      if (next === undefined) break;
      this.timers.delete(next.id);
      this.time = next.at;
      next.callback();
      await settle();
    }
    this.time = target;
    await settle();
  }
}

/**
 * A WebSocket class whose sockets the test drives from the server side.
 * `network.sockets` lists every socket the client opened.
 */
export function fakeNetwork() {
  const network = { sockets: [] };

  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.requestedProtocols = protocols;
      this.protocol = '';
      this.binaryType = 'blob';
      this.readyState = 0;
      this.listeners = new Map();
      this.inbox = [];
      this.sentMessages = 0;
      this.sentSizes = [];
      this.closedByClient = undefined;
      network.sockets.push(this);
    }
    addEventListener(type, listener) {
      if (!this.listeners.has(type)) this.listeners.set(type, []);
      this.listeners.get(type).push(listener);
    }
    dispatch(type, event) {
      for (const listener of this.listeners.get(type) ?? []) listener(event);
    }
    // Client side -----------------------------------------------------------
    send(data) {
      if (this.readyState !== 1) throw new Error(`send on a socket in readyState ${this.readyState}`);
      assert.ok(data instanceof Uint8Array, 'the client sends binary messages');
      this.sentMessages++;
      this.sentSizes.push(data.length);
      this.inbox.push(...parseClientFrames(data));
    }
    close(code, reason) {
      if (this.readyState === 3) return;
      if (code !== undefined) {
        assert.ok(code === 1000 || (code >= 3000 && code <= 4999), `browsers refuse close code ${code}`);
      }
      this.closedByClient = { code, reason };
      this.readyState = 3;
      queueMicrotask(() => this.dispatch('close', { code: code ?? 1005, reason: reason ?? '' }));
    }
    // Server side -----------------------------------------------------------
    /** Completes the WebSocket handshake, choosing corebus.v1. */
    accept() {
      assert.equal(this.requestedProtocols, 'corebus.v1');
      this.readyState = 1;
      this.protocol = 'corebus.v1';
      this.dispatch('open', {});
    }
    /** The connection cannot be made. */
    refuse() {
      this.readyState = 3;
      this.dispatch('error', {});
      this.dispatch('close', { code: 1006, reason: '' });
    }
    /** One binary message holding these whole frames. */
    deliver(...frames) {
      assert.equal(this.binaryType, 'arraybuffer', 'the client set binaryType to arraybuffer');
      const bytes = concatBytes(...frames);
      this.dispatch('message', { data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) });
    }
    deliverText(text) {
      this.dispatch('message', { data: text });
    }
    /** The server (or network) closes the connection. */
    drop(code = 1006) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.dispatch('close', { code, reason: '' });
    }
    /** Next frame the client sent, waiting for it if need be. */
    async next(type) {
      const found = await waitFor(() => this.inbox.length > 0 && this.inbox.shift(), `a ${type ?? 'client'} frame`);
      if (type !== undefined) assert.equal(found.type, type, `expected ${type}, got ${JSON.stringify(found, jsonBigint)}`);
      return found;
    }
    /** Accepts, reads HELLO, sends WELCOME; returns the HELLO. */
    async handshake(welcome = {}) {
      this.accept();
      const hello = await this.next('hello');
      this.deliver(server.welcome(welcome));
      return hello;
    }
  }

  network.WebSocket = FakeWebSocket;
  network.socket = async (index) => waitFor(() => network.sockets[index], `socket ${index}`);
  return network;
}

export function jsonBigint(_key, value) {
  return typeof value === 'bigint' ? `${value}n` : value;
}

/** An unsigned JWT with these claims (the client never checks signatures). */
export function jwt(claims) {
  const encode = (object) => Buffer.from(JSON.stringify(object)).toString('base64url');
  return `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}.c2lnbmF0dXJl`;
}

/** Records a subscription's callbacks. */
export function recorder() {
  const log = { items: [], gaps: [], errors: [] };
  log.handlers = {
    onItem: (item) => log.items.push(item),
    onDiscontinuity: (gap) => log.gaps.push(gap),
    onError: (error) => log.errors.push(error),
  };
  log.seqs = () => log.items.map((item) => item.seq);
  return log;
}
