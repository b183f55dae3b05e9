// The client on one connection: handshake, subscribe, items, discontinuities,
// publish, refusals, protocol violations, close. The test plays the broker
// through a fake WebSocket.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { connect, CorebusError } from '../dist/index.js';
import { FakeClock, fakeNetwork, recorder, server, settle, waitFor, CODE } from './helpers.js';
import { E, URL, openClient, subscribeWith } from './setup.js';

function isCorebusError(code, extra = {}) {
  return (error) => {
    assert.ok(error instanceof CorebusError, `expected a CorebusError, got ${error}`);
    assert.equal(error.code, code, error.message);
    for (const [key, value] of Object.entries(extra)) assert.equal(error[key], value, `${key} of ${error.message}`);
    return true;
  };
}

describe('handshake', () => {
  test('HELLO goes first with name and token over corebus.v1; connect resolves on WELCOME', async () => {
    const network = fakeNetwork();
    let resolved = false;
    const connecting = connect({ url: URL, token: 'secret-key', name: 'page', WebSocket: network.WebSocket, clock: new FakeClock() });
    connecting.then(() => (resolved = true));
    const socket = await network.socket(0);
    assert.equal(socket.url, URL);
    assert.equal(socket.requestedProtocols, 'corebus.v1');
    assert.equal(socket.binaryType, 'arraybuffer');
    socket.accept();
    const hello = await socket.next('hello');
    assert.deepEqual(hello, { type: 'hello', version: 2, name: 'page', credentials: 'secret-key' });
    await settle();
    assert.equal(resolved, false, 'connect waits for WELCOME');
    assert.equal(socket.inbox.length, 0, 'nothing is sent before WELCOME');
    socket.deliver(server.welcome({ maxFrame: 4096, shard: 3, shardCount: 4 }));
    const client = await connecting;
    assert.equal(client.state, 'connected');
    assert.deepEqual(client.serverInfo, { maxFrame: 4096, shard: 3, shardCount: 4 });
    await client.close();
  });

  test('a fatal unauthorized rejects connect with that code, and nothing retries', async () => {
    const network = fakeNetwork();
    const clock = new FakeClock();
    const connecting = connect({ url: URL, token: 'wrong', WebSocket: network.WebSocket, clock });
    const socket = await network.socket(0);
    socket.accept();
    await socket.next('hello');
    socket.deliver(server.error(0, CODE.unauthorized, true, 'unknown key'));
    await assert.rejects(connecting, isCorebusError('unauthorized', { fatal: true, wireCode: 15, requestId: undefined }));
    assert.match((await connecting.catch((error) => error)).message, /unknown key/);
    await clock.advance(10 * 60_000);
    assert.equal(network.sockets.length, 1, 'no second connection');
  });

  test('a token_expired at the handshake rejects connect with token_expired', async () => {
    const network = fakeNetwork();
    const connecting = connect({ url: URL, token: 'old', WebSocket: network.WebSocket, clock: new FakeClock() });
    const socket = await network.socket(0);
    socket.accept();
    await socket.next('hello');
    socket.deliver(server.error(0, CODE.token_expired, true, 'expired'));
    await assert.rejects(connecting, isCorebusError('token_expired', { fatal: true }));
  });

  test('a tokenProvider that throws rejects connect with token_provider_failed, before any socket', async () => {
    const network = fakeNetwork();
    const connecting = connect({
      url: URL,
      WebSocket: network.WebSocket,
      clock: new FakeClock(),
      tokenProvider: async () => {
        throw new Error('session expired');
      },
    });
    await assert.rejects(connecting, (error) => {
      assert.equal(error.code, 'token_provider_failed');
      assert.match(error.message, /session expired/);
      return true;
    });
    assert.equal(network.sockets.length, 0);
  });

  test('an unreachable broker rejects connect with connection_lost', async () => {
    const network = fakeNetwork();
    const clock = new FakeClock();
    const connecting = connect({ url: URL, WebSocket: network.WebSocket, clock });
    (await network.socket(0)).refuse();
    await assert.rejects(connecting, isCorebusError('connection_lost'));
    await clock.advance(60_000);
    assert.equal(network.sockets.length, 1);
  });

  test('no WELCOME within the handshake timeout rejects with handshake_timeout', async () => {
    const network = fakeNetwork();
    const clock = new FakeClock();
    const connecting = connect({ url: URL, WebSocket: network.WebSocket, clock, handshakeTimeoutMs: 3000 });
    const socket = await network.socket(0);
    socket.accept();
    await socket.next('hello');
    const rejected = assert.rejects(connecting, isCorebusError('handshake_timeout'));
    await clock.advance(2999);
    assert.equal(socket.closedByClient, undefined);
    await clock.advance(1);
    await rejected;
    assert.equal(socket.closedByClient.code, 4000);
  });

  test('anything but WELCOME or a fatal ERROR before WELCOME is a protocol violation', async () => {
    const network = fakeNetwork();
    const connecting = connect({ url: URL, WebSocket: network.WebSocket, clock: new FakeClock() });
    const socket = await network.socket(0);
    socket.accept();
    await socket.next('hello');
    socket.deliver(server.ping(1n));
    await assert.rejects(connecting, isCorebusError('protocol_violation'));
  });

  test('a WELCOME of another version is refused', async () => {
    const network = fakeNetwork();
    const connecting = connect({ url: URL, WebSocket: network.WebSocket, clock: new FakeClock() });
    const socket = await network.socket(0);
    socket.accept();
    await socket.next('hello');
    socket.deliver(server.welcome({ version: 3 }));
    await assert.rejects(connecting, isCorebusError('protocol_violation'));
  });

  test('without a WebSocket class, connect says how to get one', async () => {
    const saved = globalThis.WebSocket;
    delete globalThis.WebSocket;
    try {
      await assert.rejects(connect({ url: URL }), (error) => {
        assert.equal(error.code, 'no_websocket');
        assert.match(error.message, /ws/);
        return true;
      });
    } finally {
      if (saved !== undefined) globalThis.WebSocket = saved;
    }
  });

  test('a URL that is not ws:// or wss:// is refused', async () => {
    await assert.rejects(connect({ url: 'http://x/v1/ws', WebSocket: fakeNetwork().WebSocket }), isCorebusError('invalid_argument'));
  });
});

describe('subscribe and items', () => {
  test('live SUBSCRIBE, SUB_OK, then items in order, several frames per message', async () => {
    const { client, socket } = await openClient();
    const log = recorder();
    const { subscription, frame } = await subscribeWith(client, socket, log, { startAfter: 5n });
    assert.equal(frame.resumeEpoch, 0n);
    assert.equal(frame.resumeSeq, 0n, 'live: no resume point');
    assert.equal(frame.namespace, 'app');
    assert.equal(frame.topic, 'news');
    assert.ok(frame.subId > 0 && frame.requestId > 0, 'ids skip 0');
    assert.deepEqual(subscription.position, { epoch: E, seq: 5n });
    socket.deliver(
      server.message(frame.subId, E, 6n, 'six'),
      server.message(frame.subId, E, 7n, new Uint8Array([0, 255])),
      server.message(frame.subId, E, 8n, 'ünï'),
    );
    assert.deepEqual(log.seqs(), [6n, 7n, 8n]);
    const [six, seven, eight] = log.items;
    assert.equal(six.namespace, 'app');
    assert.equal(six.topic, 'news');
    assert.equal(six.epoch, E);
    assert.equal(six.text(), 'six');
    assert.deepEqual([...seven.payload], [0, 255]);
    assert.equal(eight.text(), 'ünï');
    assert.deepEqual(subscription.position, { epoch: E, seq: 8n });
    assert.equal(subscription.active, true);
    assert.equal(log.errors.length, 0);
    await client.close();
  });

  test('answers are matched by request id, not by order', async () => {
    const { client, socket } = await openClient();
    const first = recorder();
    const second = recorder();
    const pendingFirst = client.subscribe('app', 'one', first.handlers);
    const pendingSecond = client.subscribe('app', 'two', second.handlers);
    const frameOne = await socket.next('subscribe');
    const frameTwo = await socket.next('subscribe');
    assert.notEqual(frameOne.subId, frameTwo.subId);
    socket.deliver(server.subOk(frameTwo.requestId, frameTwo.subId, E, 0n));
    socket.deliver(server.subOk(frameOne.requestId, frameOne.subId, E, 10n));
    const [subOne, subTwo] = await Promise.all([pendingFirst, pendingSecond]);
    assert.deepEqual(subOne.position, { epoch: E, seq: 10n });
    assert.deepEqual(subTwo.position, { epoch: E, seq: 0n });
    socket.deliver(server.message(frameTwo.subId, E, 1n, 'b'), server.message(frameOne.subId, E, 11n, 'a'));
    assert.deepEqual(first.items.map((item) => item.text()), ['a']);
    assert.deepEqual(second.items.map((item) => item.text()), ['b']);
    await client.close();
  });

  test('subscribe from a sequence number sends (0, from) and resumes in the epoch SUB_OK names', async () => {
    const { client, socket, network, clock } = await openClient();
    const log = recorder();
    const { frame, subscription } = await subscribeWith(client, socket, log, { startAfter: 2n, options: { from: 3n } });
    assert.equal(frame.resumeEpoch, 0n);
    assert.equal(frame.resumeSeq, 3n);
    socket.deliver(server.message(frame.subId, E, 3n, 'x'));
    assert.deepEqual(subscription.position, { epoch: E, seq: 3n });
    socket.drop();
    await clock.advance(1000);
    const next = await network.socket(1);
    await next.handshake();
    const again = await next.next('subscribe');
    assert.equal(again.resumeEpoch, E);
    assert.equal(again.resumeSeq, 4n);
    await client.close();
  });

  test('subscribe after a saved position sends (epoch, seq + 1)', async () => {
    const { client, socket } = await openClient();
    const pending = client.subscribe('app', 'news', recorder().handlers, { after: { epoch: E, seq: 41n } });
    const frame = await socket.next('subscribe');
    assert.equal(frame.resumeEpoch, E);
    assert.equal(frame.resumeSeq, 42n);
    socket.deliver(server.subOk(frame.requestId, frame.subId, E, 41n));
    await pending;
    await client.close();
  });

  test('a DISCONTINUITY reaches onDiscontinuity and delivery continues at next_seq', async () => {
    const { client, socket } = await openClient();
    const log = recorder();
    const { frame, subscription } = await subscribeWith(client, socket, log, { startAfter: 5n });
    socket.deliver(server.message(frame.subId, E, 6n), server.discontinuity(frame.subId, E, 6n, 10n), server.message(frame.subId, E, 10n));
    assert.deepEqual(log.seqs(), [6n, 10n]);
    assert.equal(log.gaps.length, 1);
    assert.deepEqual({ ...log.gaps[0] }, {
      namespace: 'app',
      topic: 'news',
      epoch: E,
      lastSeq: 6n,
      nextSeq: 10n,
      previousEpoch: E,
      epochChanged: false,
    });
    assert.deepEqual(subscription.position, { epoch: E, seq: 10n });
    assert.equal(log.errors.length, 0);
    await client.close();
  });

  test('a DISCONTINUITY into another epoch (an owner node died) goes on in that epoch', async () => {
    const { client, socket } = await openClient();
    const log = recorder();
    const { frame, subscription } = await subscribeWith(client, socket, log, { startAfter: 5n });
    const F = E + 7n;
    socket.deliver(server.message(frame.subId, E, 6n), server.discontinuity(frame.subId, F, 6n, 1n), server.message(frame.subId, F, 1n));
    assert.deepEqual(log.seqs(), [6n, 1n]);
    assert.deepEqual({ ...log.gaps[0] }, {
      namespace: 'app',
      topic: 'news',
      epoch: F,
      lastSeq: 6n,
      nextSeq: 1n,
      previousEpoch: E,
      epochChanged: true,
    });
    assert.deepEqual(subscription.position, { epoch: F, seq: 1n });
    assert.equal(log.errors.length, 0);
    assert.equal(client.state, 'connected');
    await client.close();
  });

  test('a SUBSCRIBE refused with forbidden rejects with code forbidden; the connection stays usable', async () => {
    const { client, socket, network, clock } = await openClient();
    const log = recorder();
    const pending = client.subscribe('users', 'someone-else', log.handlers);
    const frame = await socket.next('subscribe');
    socket.deliver(server.error(frame.requestId, CODE.forbidden, false, 'subscribe to users/someone-else'));
    await assert.rejects(pending, isCorebusError('forbidden', { fatal: false, wireCode: 16, requestId: frame.requestId }));
    assert.equal(client.state, 'connected');
    const published = client.publish('app', 'news', 'still fine', { ack: true });
    const publish = await socket.next('publish');
    socket.deliver(server.pubAck(publish.requestId, 9n));
    assert.equal(await published, 9n);
    // The refused subscription does not come back after a reconnect.
    socket.drop();
    await clock.advance(1000);
    const next = await network.socket(1);
    await next.handshake();
    const fence = client.publish('app', 'news', 'fence');
    await fence;
    assert.equal((await next.next()).type, 'publish', 'no SUBSCRIBE before the fence');
    await client.close();
  });

  test('invalid names and arguments reject without a round trip', async () => {
    const { client, socket } = await openClient();
    await assert.rejects(client.subscribe('app', 'bad\nname', recorder().handlers), isCorebusError('invalid_name'));
    await assert.rejects(client.subscribe('', 'x', recorder().handlers), isCorebusError('invalid_name'));
    await assert.rejects(client.subscribe('app', 'x', {}), isCorebusError('invalid_argument'));
    await assert.rejects(client.subscribe('app', 'x', recorder().handlers, { from: 0n }), isCorebusError('invalid_argument'));
    await assert.rejects(client.publish('app', 'x'.repeat(1025), 'p'), isCorebusError('invalid_name'));
    await settle();
    assert.equal(socket.inbox.length, 0, 'nothing was sent');
    await client.close();
  });

  test('unsubscribe sends UNSUBSCRIBE, drops what still arrives, resolves on UNSUB_OK', async () => {
    const { client, socket } = await openClient();
    const log = recorder();
    const { frame, subscription } = await subscribeWith(client, socket, log);
    let done = false;
    const unsubscribing = subscription.unsubscribe().then(() => (done = true));
    const unsubscribe = await socket.next('unsubscribe');
    assert.equal(unsubscribe.subId, frame.subId);
    assert.equal(subscription.active, false);
    socket.deliver(server.message(frame.subId, E, 6n, 'late'));
    await settle();
    assert.equal(done, false, 'waits for UNSUB_OK');
    socket.deliver(server.unsubOk(unsubscribe.requestId, frame.subId));
    await unsubscribing;
    assert.equal(log.items.length, 0, 'nothing after unsubscribe() is delivered');
    assert.equal(client.state, 'connected', 'frames before UNSUB_OK are no violation');
    await client.close();
  });
});

describe('protocol violations drop the connection', () => {
  const cases = [
    ['a gap in seq', (subId) => [server.message(subId, E, 6n), server.message(subId, E, 8n)], [6n]],
    ['a repeated seq', (subId) => [server.message(subId, E, 6n), server.message(subId, E, 6n)], [6n]],
    ['a MESSAGE of another epoch', (subId) => [server.message(subId, E + 1n, 6n)], []],
    ['a DISCONTINUITY going backwards', (subId) => [server.message(subId, E, 6n), server.discontinuity(subId, E, 6n, 6n)], [6n]],
    ['a DISCONTINUITY into another epoch from elsewhere', (subId) => [server.message(subId, E, 6n), server.discontinuity(subId, E + 1n, 4n, 1n)], [6n]],
    ['a MESSAGE for an unknown sub_id', (subId) => [server.message(subId + 100, E, 6n)], []],
  ];
  for (const [what, frames, delivered] of cases) {
    test(what, async () => {
      const { client, socket, eventsNamed } = await openClient();
      const log = recorder();
      const { frame } = await subscribeWith(client, socket, log);
      socket.deliver(...frames(frame.subId));
      assert.deepEqual(log.seqs(), delivered, 'items before the fault are delivered, none after');
      assert.equal(socket.closedByClient?.code, 4000, 'the client closed the connection');
      assert.equal(client.state, 'disconnected');
      const errors = eventsNamed('error');
      assert.equal(errors.length, 1);
      assert.equal(errors[0].code, 'protocol_violation');
      if (!what.includes('unknown')) {
        assert.equal(log.errors.length, 1, 'the subscription is told');
        assert.equal(log.errors[0].code, 'protocol_violation');
      }
      await client.close();
    });
  }

  test('a text WebSocket message', async () => {
    const { client, socket, eventsNamed } = await openClient();
    socket.deliverText('hello');
    assert.equal(socket.closedByClient?.code, 4000);
    assert.match(eventsNamed('error')[0].message, /text/);
    await client.close();
  });

  test('a frame cut across two WebSocket messages', async () => {
    const { client, socket, eventsNamed } = await openClient();
    const ping = server.ping(1n);
    socket.deliver(ping.subarray(0, 6));
    assert.equal(socket.closedByClient?.code, 4000);
    assert.match(eventsNamed('error')[0].message, /inside a frame/);
    await client.close();
  });

  test('a SUB_OK for a request that was never sent', async () => {
    const { client, socket } = await openClient();
    socket.deliver(server.subOk(77, 1, E, 0n));
    assert.equal(socket.closedByClient?.code, 4000);
    await client.close();
  });

  test('a SUB_OK naming another sub_id than its request', async () => {
    const { client, socket } = await openClient();
    const pending = client.subscribe('app', 'news', recorder().handlers);
    const frame = await socket.next('subscribe');
    socket.deliver(server.subOk(frame.requestId, frame.subId + 1, E, 0n));
    assert.equal(socket.closedByClient?.code, 4000);
    assert.equal(client.state, 'disconnected');
    await client.close();
    await assert.rejects(pending, (error) => error.code === 'client_closed');
  });

  test('a PUB_ACK answering a SUBSCRIBE', async () => {
    const { client, socket } = await openClient();
    const pending = client.subscribe('app', 'news', recorder().handlers);
    const frame = await socket.next('subscribe');
    socket.deliver(server.pubAck(frame.requestId, 1n));
    assert.equal(socket.closedByClient?.code, 4000);
    await client.close();
    await assert.rejects(pending, (error) => error.code === 'client_closed');
  });

  test('a non-fatal ERROR for no request is reported, not fatal', async () => {
    const { client, socket, eventsNamed } = await openClient();
    socket.deliver(server.error(0, 1, false, 'malformed'));
    assert.equal(eventsNamed('error')[0].code, 'malformed_frame');
    assert.equal(socket.closedByClient, undefined);
    assert.equal(client.state, 'connected');
    await client.close();
  });
});

describe('publish', () => {
  test('with ack resolves with the seq; answers are matched by request id', async () => {
    const { client, socket } = await openClient();
    const first = client.publish('app', 'news', 'one', { ack: true });
    const second = client.publish('app', 'other', new Uint8Array([1, 2]), { ack: true });
    const frameOne = await socket.next('publish');
    const frameTwo = await socket.next('publish');
    assert.equal(frameOne.flags, 1);
    assert.equal(new TextDecoder().decode(frameOne.payload), 'one');
    assert.deepEqual([...frameTwo.payload], [1, 2]);
    assert.notEqual(frameOne.requestId, frameTwo.requestId);
    socket.deliver(server.pubAck(frameTwo.requestId, 1n), server.pubAck(frameOne.requestId, 0xffffffffffffffffn));
    assert.equal(await first, 0xffffffffffffffffn);
    assert.equal(await second, 1n);
    await client.close();
  });

  test('without ack resolves once sent; a later ERROR becomes an error event naming the topic', async () => {
    const { client, socket, eventsNamed } = await openClient();
    assert.equal(await client.publish('app', 'news', 'fire'), undefined);
    const frame = await socket.next('publish');
    assert.equal(frame.flags, 0);
    socket.deliver(server.error(frame.requestId, CODE.forbidden, false, 'publish to app/news'));
    const [error] = eventsNamed('error');
    assert.equal(error.code, 'forbidden');
    assert.match(error.message, /app\/news/);
    assert.equal(client.state, 'connected');
    await client.close();
  });

  test('a refused acknowledged publish rejects with the code', async () => {
    const { client, socket } = await openClient();
    const pending = client.publish('app', 'news', 'x', { ack: true });
    const frame = await socket.next('publish');
    socket.deliver(server.error(frame.requestId, CODE.forbidden, false, 'no'));
    await assert.rejects(pending, isCorebusError('forbidden', { fatal: false }));
    await client.close();
  });

  test('a payload above WELCOME.max_frame is refused locally', async () => {
    const { client, socket } = await openClient({}, { maxFrame: 64 });
    // 10 + 3 + 4 + P <= 64 (the 10: request id, flags, name lengths and the
    // format byte): 47 bytes fit, 48 do not.
    await assert.rejects(client.publish('app', 'news', new Uint8Array(48), { ack: true }), isCorebusError('frame_too_large'));
    await assert.rejects(client.publish('app', 'news', new Uint8Array(48)), isCorebusError('frame_too_large'));
    const fits = client.publish('app', 'news', new Uint8Array(47), { ack: true });
    const frame = await socket.next('publish');
    assert.equal(frame.payload.length, 47);
    assert.equal(frame.format, 0, 'this client publishes uncompressed');
    socket.deliver(server.pubAck(frame.requestId, 1n));
    assert.equal(await fits, 1n);
    await client.close();
  });

  test('acknowledged publishes beyond maxInFlightPublishes are refused locally', async () => {
    const { client, socket } = await openClient({ maxInFlightPublishes: 2 });
    const one = client.publish('app', 'news', '1', { ack: true });
    const two = client.publish('app', 'news', '2', { ack: true });
    await assert.rejects(client.publish('app', 'news', '3', { ack: true }), isCorebusError('too_many_in_flight'));
    const frame = await socket.next('publish');
    socket.deliver(server.pubAck(frame.requestId, 1n));
    await one;
    const three = client.publish('app', 'news', '3', { ack: true });
    const frameTwo = await socket.next('publish');
    const frameThree = await socket.next('publish');
    socket.deliver(server.pubAck(frameTwo.requestId, 2n), server.pubAck(frameThree.requestId, 3n));
    assert.deepEqual(await Promise.all([two, three]), [2n, 3n]);
    await client.close();
  });

  test('an acknowledged publish whose connection drops rejects with connection_lost', async () => {
    const { client, socket } = await openClient();
    const pending = client.publish('app', 'news', 'x', { ack: true });
    await socket.next('publish');
    socket.drop();
    await assert.rejects(pending, isCorebusError('connection_lost'));
    await assert.rejects(client.publish('app', 'news', 'y'), isCorebusError('not_connected'));
    await client.close();
  });
});

describe('heartbeat', () => {
  test('a server PING is answered with a PONG of the same nonce', async () => {
    const { client, socket } = await openClient();
    socket.deliver(server.ping(0xdeadbeefcafef00dn));
    assert.deepEqual(await socket.next('pong'), { type: 'pong', nonce: 0xdeadbeefcafef00dn });
    await client.close();
  });

  test('own PINGs; no PONG in time drops the connection and reconnects', async () => {
    const { client, socket, clock, network, eventsNamed } = await openClient({ pingIntervalMs: 1000, pongTimeoutMs: 500 });
    await clock.advance(1000);
    const first = await socket.next('ping');
    socket.deliver(server.pong(first.nonce));
    await clock.advance(1000);
    const second = await socket.next('ping');
    assert.notEqual(second.nonce, first.nonce);
    await clock.advance(499);
    assert.equal(socket.closedByClient, undefined, 'still waiting for the PONG');
    await clock.advance(1);
    assert.equal(socket.closedByClient?.code, 4000);
    assert.equal(eventsNamed('error')[0].code, 'ping_timeout');
    assert.equal(client.state, 'disconnected');
    await clock.advance(eventsNamed('disconnected')[0].reconnectInMs);
    await (await network.socket(1)).handshake();
    assert.equal(client.state, 'connected');
    await client.close();
  });
});

describe('close', () => {
  test('close() fails what is pending, closes the socket with 1000 and never reconnects', async () => {
    const { client, socket, clock, network, eventsNamed } = await openClient();
    const log = recorder();
    await subscribeWith(client, socket, log);
    const pending = client.publish('app', 'news', 'x', { ack: true });
    await socket.next('publish');
    const closing = client.close();
    await assert.rejects(pending, isCorebusError('client_closed'));
    await closing;
    assert.equal(socket.closedByClient.code, 1000);
    assert.equal(client.state, 'closed');
    assert.deepEqual(eventsNamed('closed'), [{ error: undefined }]);
    assert.equal(log.errors.length, 0, 'a deliberate close is not a subscription error');
    await assert.rejects(client.publish('app', 'news', 'y'), isCorebusError('client_closed'));
    await assert.rejects(client.subscribe('app', 'news', log.handlers), isCorebusError('client_closed'));
    await clock.advance(60_000);
    assert.equal(network.sockets.length, 1);
  });

  test('a handler that throws does not stop delivery; the error event reports it', async () => {
    const { client, socket, eventsNamed } = await openClient();
    const seen = [];
    const pending = client.subscribe('app', 'news', {
      onItem: (item) => {
        seen.push(item.seq);
        if (item.seq === 6n) throw new Error('application bug');
      },
    });
    const frame = await socket.next('subscribe');
    socket.deliver(server.subOk(frame.requestId, frame.subId, E, 5n));
    await pending;
    socket.deliver(server.message(frame.subId, E, 6n), server.message(frame.subId, E, 7n));
    assert.deepEqual(seen, [6n, 7n]);
    const [error] = eventsNamed('error');
    assert.equal(error.code, 'handler_failed');
    assert.equal(error.cause.message, 'application bug');
    assert.equal(client.state, 'connected');
    await client.close();
  });
});
