// The client over a real WebSocket: the `ws` package on both ends, on
// loopback, with a small script playing the broker's /v1/ws transport. This
// checks what the fake cannot: subprotocol negotiation, binaryType, and that
// `ws`'s class fits the WebSocket option.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { connect, CorebusError } from '../dist/index.js';
import { concatBytes, parseClientFrames, recorder, server, waitFor } from './helpers.js';

const EPOCH = 0x0123456789abcdefn;

/** A tiny broker: one topic, answers HELLO, SUBSCRIBE, PUBLISH (ack) and UNSUBSCRIBE. */
function startBroker({ acceptToken }) {
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    path: '/v1/ws',
    handleProtocols: (protocols) => (protocols.has('corebus.v1') ? 'corebus.v1' : false),
  });
  const seen = { hellos: [], textMessages: 0 };
  wss.on('connection', (socket) => {
    let seq = 0n;
    const subscribers = new Set();
    socket.on('message', (data, isBinary) => {
      if (!isBinary) {
        seen.textMessages++;
        return;
      }
      const replies = [];
      for (const frame of parseClientFrames(new Uint8Array(data))) {
        switch (frame.type) {
          case 'hello':
            seen.hellos.push(frame);
            if (frame.credentials !== acceptToken) {
              socket.send(server.error(0, 15, true, 'unknown credentials'));
              socket.close();
              return;
            }
            replies.push(server.welcome({ shard: 0, shardCount: 1 }));
            break;
          case 'subscribe':
            subscribers.add(frame.subId);
            replies.push(server.subOk(frame.requestId, frame.subId, EPOCH, seq));
            break;
          case 'publish':
            seq++;
            if (frame.ack) replies.push(server.pubAck(frame.requestId, seq));
            for (const subId of subscribers) replies.push(server.message(subId, EPOCH, seq, frame.payload));
            break;
          case 'unsubscribe':
            subscribers.delete(frame.subId);
            replies.push(server.unsubOk(frame.requestId, frame.subId));
            break;
          default:
            break;
        }
      }
      // The transport packs many frames into one binary message.
      if (replies.length > 0) socket.send(concatBytes(...replies));
    });
  });
  return new Promise((resolve) => {
    wss.on('listening', () => {
      const { port } = wss.address();
      resolve({ url: `ws://127.0.0.1:${port}/v1/ws`, seen, close: () => new Promise((done) => wss.close(done)) });
    });
  });
}

test('over ws on loopback: handshake, subscribe, publish with ack, items, unsubscribe, close', async () => {
  const broker = await startBroker({ acceptToken: 'good' });
  try {
    const client = await connect({ url: broker.url, token: 'good', name: 'ws-test', WebSocket, pingIntervalMs: 0 });
    assert.equal(client.state, 'connected');
    assert.equal(broker.seen.hellos[0].name, 'ws-test');
    const log = recorder();
    const subscription = await client.subscribe('app', 'news', log.handlers);
    assert.deepEqual(subscription.position, { epoch: EPOCH, seq: 0n });
    assert.equal(await client.publish('app', 'news', 'first', { ack: true }), 1n);
    assert.equal(await client.publish('app', 'news', new Uint8Array([1, 2, 3]), { ack: true }), 2n);
    await waitFor(() => log.items.length === 2, 'two items');
    assert.deepEqual(log.seqs(), [1n, 2n]);
    assert.equal(log.items[0].text(), 'first');
    assert.deepEqual([...log.items[1].payload], [1, 2, 3]);
    await subscription.unsubscribe();
    await client.publish('app', 'news', 'after', { ack: true });
    assert.equal(log.items.length, 2, 'nothing after unsubscribe (the PUB_ACK is the fence)');
    assert.equal(broker.seen.textMessages, 0);
    await client.close();
    assert.equal(client.state, 'closed');
  } finally {
    await broker.close();
  }
});

test('over ws on loopback: refused credentials reject connect with unauthorized', async () => {
  const broker = await startBroker({ acceptToken: 'good' });
  try {
    await assert.rejects(
      connect({ url: broker.url, token: 'bad', WebSocket, pingIntervalMs: 0 }),
      (error) => error instanceof CorebusError && error.code === 'unauthorized' && error.fatal,
    );
  } finally {
    await broker.close();
  }
});

test('over ws: nothing listening rejects connect with connection_lost', async () => {
  const broker = await startBroker({ acceptToken: 'good' });
  const url = broker.url;
  await broker.close();
  await assert.rejects(
    connect({ url, token: 'good', WebSocket, pingIntervalMs: 0 }),
    (error) => error instanceof CorebusError && error.code === 'connection_lost',
  );
});
