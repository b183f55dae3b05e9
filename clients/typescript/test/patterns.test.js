// Pattern subscriptions (`orders/*`, `orders/>`): items of many topics,
// each with its own topic, epoch and sequence; live resubscription after a
// reconnect, with a jump in a topic's sequence reported as that topic's
// discontinuity; publishing to a pattern refused before anything is sent.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CorebusError, isPattern } from '../dist/index.js';
import { recorder, server } from './helpers.js';
import { E, E2, openClient, subscribeWith } from './setup.js';

describe('pattern subscriptions', () => {
  test('items carry their own topic and sequence; repeats are dropped; MESSAGE is a violation', async () => {
    const setup = await openClient();
    const { client, socket } = setup;
    const log = recorder();
    const { frame, subscription } = await subscribeWith(client, socket, log, { topic: 'orders/*', epoch: 0n, startAfter: 0n });
    assert.deepEqual([frame.resumeEpoch, frame.resumeSeq], [0n, 0n], 'live');
    assert.equal(subscription.topic, 'orders/*');
    socket.deliver(
      server.topicMessage(frame.subId, E, 4n, 'orders/eu', 'a'),
      server.topicMessage(frame.subId, E2, 9n, 'orders/us', 'b'),
      server.topicMessage(frame.subId, E, 5n, 'orders/eu', 'c'),
      server.topicMessage(frame.subId, E, 5n, 'orders/eu', 'c again'),
    );
    assert.deepEqual(
      log.items.map((item) => [item.topic, item.epoch, item.seq, item.text()]),
      [
        ['orders/eu', E, 4n, 'a'],
        ['orders/us', E2, 9n, 'b'],
        ['orders/eu', E, 5n, 'c'],
      ],
    );
    assert.equal(log.gaps.length + log.errors.length, 0);
    assert.equal(subscription.position, undefined, 'a pattern has no single position');
    await client.close();
  });

  test('after a reconnect it subscribes live again; a topic that skipped seqs reports them', async () => {
    const setup = await openClient();
    const { client, socket } = setup;
    const log = recorder();
    const { frame } = await subscribeWith(client, socket, log, { topic: 'orders/>', epoch: 0n, startAfter: 0n });
    socket.deliver(server.topicMessage(frame.subId, E, 1n, 'orders/eu/1', 'one'));
    socket.drop();
    const disconnected = setup.eventsNamed('disconnected');
    await setup.clock.advance(disconnected.at(-1).reconnectInMs);
    const next = await setup.network.socket(1);
    await next.handshake();
    const again = await next.next('subscribe');
    assert.equal(again.topic, 'orders/>');
    assert.deepEqual([again.resumeEpoch, again.resumeSeq], [0n, 0n], 'live again');
    next.deliver(
      server.subOk(again.requestId, again.subId, 0n, 0n),
      server.topicMessage(again.subId, E, 4n, 'orders/eu/1', 'four'),
      server.topicMessage(again.subId, E, 1n, 'orders/us', 'first of another topic'),
    );
    assert.deepEqual(log.items.map((item) => item.text()), ['one', 'four', 'first of another topic']);
    assert.equal(log.gaps.length, 1);
    assert.deepEqual({ ...log.gaps[0] }, {
      namespace: 'app',
      topic: 'orders/eu/1',
      epoch: E,
      lastSeq: 1n,
      nextSeq: 4n,
      previousEpoch: E,
      epochChanged: false,
    });
    await client.close();
  });

  test('the positions kept per topic are bounded; the least recently seen goes first', async () => {
    const setup = await openClient();
    const { client, socket } = setup;
    const log = recorder();
    const { frame } = await subscribeWith(client, socket, log, { topic: 'orders/*', epoch: 0n, startAfter: 0n });
    const frames = [];
    for (let i = 0; i <= 10_000; i++) frames.push(server.topicMessage(frame.subId, E, 1n, `orders/t${i}`, 'x'));
    socket.deliver(...frames);
    assert.equal(log.items.length, 10_001);
    // orders/t0 was forgotten: its seq 1 again is not recognised as a repeat;
    // orders/t10000 is still known.
    socket.deliver(server.topicMessage(frame.subId, E, 1n, 'orders/t0', 'again'), server.topicMessage(frame.subId, E, 1n, 'orders/t10000', 'repeat'));
    assert.equal(log.items.length, 10_002);
    assert.equal(log.items.at(-1).text(), 'again');
    await client.close();
  });

  test('a MESSAGE on a pattern subscription breaks the stream', async () => {
    const setup = await openClient();
    const { client, socket } = setup;
    const log = recorder();
    const { frame } = await subscribeWith(client, socket, log, { topic: 'orders/*', epoch: 0n, startAfter: 0n });
    socket.deliver(server.message(frame.subId, E, 1n, 'x'));
    const disconnected = setup.eventsNamed('disconnected');
    assert.equal(disconnected.length, 1);
    assert.equal(disconnected[0].error.code, 'protocol_violation');
    assert.equal(log.items.length, 0);
    await client.close();
  });

  test('publishing to a pattern, or a pattern with `>` inside, is refused locally', async () => {
    const { client } = await openClient();
    await assert.rejects(client.publish('app', 'orders/*', 'x'), (error) => error instanceof CorebusError && error.code === 'invalid_name');
    await assert.rejects(client.subscribe('app', 'orders/>/x', recorder().handlers), (error) => error.code === 'invalid_name');
    assert.equal(isPattern('orders/*'), true);
    assert.equal(isPattern('orders/eu*'), false);
    await client.close();
  });

  test('a shared subscription sends SUBSCRIBE_SHARED and reports no gaps in its share', async () => {
    const setup = await openClient();
    const { client, socket } = setup;
    const log = recorder();
    const { frame } = await subscribeWith(client, socket, log, {
      topic: 'jobs/*',
      epoch: 0n,
      startAfter: 0n,
      options: { group: 'workers' },
    });
    assert.deepEqual([frame.shared, frame.group, frame.namespace, frame.topic], [true, 'workers', 'app', 'jobs/*']);
    socket.deliver(
      server.topicMessage(frame.subId, E, 2n, 'jobs/eu', 'a'),
      server.topicMessage(frame.subId, E, 5n, 'jobs/eu', 'b'),
      server.topicMessage(frame.subId, E, 9n, 'jobs/eu', 'c'),
    );
    assert.deepEqual(
      log.items.map((item) => item.text()),
      ['a', 'b', 'c'],
    );
    assert.equal(log.gaps.length + log.errors.length, 0, 'other members took 3, 4, 6, 7 and 8');
    await assert.rejects(client.subscribe('app', 'jobs/*', log.handlers, { group: 'a/b' }), (error) => error.code === 'invalid_argument');
    await assert.rejects(client.subscribe('app', 'jobs/*', log.handlers, { group: 'g', from: 1n }), (error) => error.code === 'invalid_argument');
    await client.close();
  });
});
