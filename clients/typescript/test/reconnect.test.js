// Reconnects, resume, backoff, GOAWAY, fatal errors and token refresh, with a
// fake clock: a 20 s backoff or a token's lifetime passes in microseconds.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { backoffDelay, backoffPolicy, connect, jwtExpiry, tokenRefreshDelay } from '../dist/index.js';
import { FakeClock, fakeNetwork, jwt, recorder, server, settle, CODE } from './helpers.js';
import { E, E2, URL, openClient, subscribeWith } from './setup.js';

/** Drops `socket`, waits out the announced backoff and returns the next socket, handshake done. */
async function reconnect(setup, socket, index, welcome) {
  const disconnectsBefore = setup.eventsNamed('disconnected').length;
  socket.drop();
  const disconnected = setup.eventsNamed('disconnected');
  assert.equal(disconnected.length, disconnectsBefore + 1, 'a disconnected event');
  await setup.clock.advance(disconnected.at(-1).reconnectInMs);
  const next = await setup.network.socket(index);
  const hello = await next.handshake(welcome);
  return { next, hello };
}

describe('reconnect and resume', () => {
  test('after a drop every subscription resumes at (last epoch, last seq + 1); duplicates are dropped', async () => {
    const setup = await openClient();
    const { client, socket } = setup;
    const news = recorder();
    const sport = recorder();
    const { frame: newsFrame, subscription } = await subscribeWith(client, socket, news, { topic: 'news', startAfter: 5n });
    const { frame: sportFrame } = await subscribeWith(client, socket, sport, { topic: 'sport', epoch: E2, startAfter: 0n });
    socket.deliver(server.message(newsFrame.subId, E, 6n), server.message(newsFrame.subId, E, 7n));
    // sport has received nothing: it resumes right after its SUB_OK's start.

    const { next } = await reconnect(setup, socket, 1);
    assert.equal(client.state, 'connected');
    const resubscribes = [await next.next('subscribe'), await next.next('subscribe')];
    assert.equal(next.sentMessages, 2, 'HELLO, then both SUBSCRIBEs packed into one WebSocket message');
    const newsAgain = resubscribes.find((frame) => frame.topic === 'news');
    const sportAgain = resubscribes.find((frame) => frame.topic === 'sport');
    assert.deepEqual([newsAgain.resumeEpoch, newsAgain.resumeSeq], [E, 8n]);
    assert.deepEqual([sportAgain.resumeEpoch, sportAgain.resumeSeq], [E2, 1n]);

    // A server that replays from further back than asked: 6 and 7 come again.
    next.deliver(
      server.subOk(newsAgain.requestId, newsAgain.subId, E, 5n),
      server.message(newsAgain.subId, E, 6n),
      server.message(newsAgain.subId, E, 7n),
      server.message(newsAgain.subId, E, 8n),
      server.subOk(sportAgain.requestId, sportAgain.subId, E2, 0n),
      server.message(sportAgain.subId, E2, 1n),
    );
    assert.deepEqual(news.seqs(), [6n, 7n, 8n], 'each item once');
    assert.deepEqual(sport.seqs(), [1n]);
    assert.deepEqual(subscription.position, { epoch: E, seq: 8n });
    assert.equal(news.gaps.length + news.errors.length, 0);
    assert.notEqual(newsFrame.subId, sportFrame.subId);
    await client.close();
  });

  test('a resume older than the replay ring: SUB_OK past the point, then the DISCONTINUITY is delivered', async () => {
    const setup = await openClient();
    const log = recorder();
    const { frame } = await subscribeWith(setup.client, setup.socket, log, { startAfter: 1n });
    setup.socket.deliver(server.message(frame.subId, E, 2n));
    const { next } = await reconnect(setup, setup.socket, 1);
    const again = await next.next('subscribe');
    assert.deepEqual([again.resumeEpoch, again.resumeSeq], [E, 3n]);
    // Section 8, rows 11-13: the ring holds only seq 6.
    next.deliver(
      server.subOk(again.requestId, again.subId, E, 5n),
      server.discontinuity(again.subId, E, 2n, 6n),
      server.message(again.subId, E, 6n, 'hi'),
    );
    assert.deepEqual(log.seqs(), [2n, 6n]);
    assert.equal(log.gaps.length, 1);
    assert.equal(log.gaps[0].lastSeq, 2n);
    assert.equal(log.gaps[0].nextSeq, 6n);
    assert.equal(log.gaps[0].epochChanged, false);
    await setup.client.close();
  });

  test('a resume into a new epoch (broker restarted) reports the epoch change', async () => {
    const setup = await openClient();
    const log = recorder();
    const { frame, subscription } = await subscribeWith(setup.client, setup.socket, log, { startAfter: 6n });
    setup.socket.deliver(server.message(frame.subId, E, 7n));
    const { next } = await reconnect(setup, setup.socket, 1);
    const again = await next.next('subscribe');
    assert.deepEqual([again.resumeEpoch, again.resumeSeq], [E, 8n]);
    next.deliver(
      server.subOk(again.requestId, again.subId, E2, 0n),
      server.discontinuity(again.subId, E2, 7n, 1n),
      server.message(again.subId, E2, 1n),
    );
    assert.equal(log.gaps.length, 1);
    assert.deepEqual({ ...log.gaps[0] }, {
      namespace: 'app',
      topic: 'news',
      epoch: E2,
      lastSeq: 7n,
      nextSeq: 1n,
      previousEpoch: E,
      epochChanged: true,
    });
    assert.deepEqual(log.items.map((item) => [item.epoch, item.seq]), [[E, 7n], [E2, 1n]]);
    assert.deepEqual(subscription.position, { epoch: E2, seq: 1n });
    await setup.client.close();
  });

  test('a resume SUB_OK with a gap but no DISCONTINUITY is a broken stream', async () => {
    const setup = await openClient();
    const log = recorder();
    const { frame } = await subscribeWith(setup.client, setup.socket, log, { startAfter: 6n });
    setup.socket.deliver(server.message(frame.subId, E, 7n));
    const { next } = await reconnect(setup, setup.socket, 1);
    const again = await next.next('subscribe');
    next.deliver(server.subOk(again.requestId, again.subId, E, 9n), server.message(again.subId, E, 10n));
    assert.deepEqual(log.seqs(), [7n], 'seq 10 is not delivered over an unreported gap');
    assert.equal(log.errors[0]?.code, 'protocol_violation');
    assert.equal(next.closedByClient?.code, 4000);
    await setup.client.close();
  });

  test('resubscribes are packed into messages of at most max_frame + 4 bytes', async () => {
    const setup = await openClient({}, { maxFrame: 100 });
    for (const topic of ['t1', 't2', 't3']) await subscribeWith(setup.client, setup.socket, recorder(), { topic });
    // Each SUBSCRIBE of app/tN is 4 + 28 + 3 + 2 = 37 bytes: two fit in 104, three do not.
    const { next } = await reconnect(setup, setup.socket, 1, { maxFrame: 100 });
    const frames = [await next.next('subscribe'), await next.next('subscribe'), await next.next('subscribe')];
    assert.deepEqual(frames.map((frame) => frame.topic).sort(), ['t1', 't2', 't3']);
    assert.deepEqual(next.sentSizes.slice(1), [74, 37], 'HELLO, then 2 + 1 SUBSCRIBEs');
    await setup.client.close();
  });

  test('a subscribe made while disconnected is sent on the next connection and resolves then', async () => {
    const setup = await openClient();
    setup.socket.drop();
    assert.equal(setup.client.state, 'disconnected');
    const log = recorder();
    let subscribed = false;
    const pending = setup.client.subscribe('app', 'later', log.handlers).then((sub) => ((subscribed = true), sub));
    await settle();
    assert.equal(subscribed, false);
    await setup.clock.advance(setup.eventsNamed('disconnected')[0].reconnectInMs);
    const next = await setup.network.socket(1);
    await next.handshake();
    const frame = await next.next('subscribe');
    assert.equal(frame.topic, 'later');
    next.deliver(server.subOk(frame.requestId, frame.subId, E, 0n));
    const sub = await pending;
    assert.equal(sub.topic, 'later');
    await setup.client.close();
  });

  test('state events: connected, disconnected, connecting, connected', async () => {
    const setup = await openClient();
    await reconnect(setup, setup.socket, 1);
    assert.deepEqual(
      setup.eventsNamed('state').map((change) => `${change.previous}->${change.state}`),
      ['connected->disconnected', 'disconnected->connecting', 'connecting->connected'],
    );
    assert.equal(setup.eventsNamed('connected').length, 1);
    assert.equal(setup.eventsNamed('connecting')[0].attempt, 0);
    await setup.client.close();
  });
});

describe('backoff', () => {
  test('the delay formula: exponential, capped, jittered down by at most jitter', () => {
    const policy = backoffPolicy({ initialMs: 100, maxMs: 1000, multiplier: 2, jitter: 0.5 });
    const bases = [100, 200, 400, 800, 1000, 1000];
    bases.forEach((base, attempt) => {
      assert.equal(backoffDelay(policy, attempt, () => 0), base, `attempt ${attempt}, no jitter`);
      assert.equal(backoffDelay(policy, attempt, () => 0.5), base * 0.75);
      assert.equal(backoffDelay(policy, attempt, () => 0.999999), Math.round(base * 0.5000005));
    });
    assert.equal(backoffDelay(backoffPolicy({ initialMs: 100, jitter: 0 }), 0, () => 0.9), 100);
    assert.throws(() => backoffPolicy({ initialMs: 10, maxMs: 5 }), RangeError);
    assert.throws(() => backoffPolicy({ jitter: 2 }), RangeError);
  });

  test('failed reconnects wait growing, jittered delays, and no attempt starts early', async () => {
    // A seeded generator: the jitter draws differ from one attempt to the next.
    let seed = 42;
    const draws = [];
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      draws.push(seed / 2147483648);
      return draws.at(-1);
    };
    const setup = await openClient({ random, backoff: { initialMs: 100, maxMs: 2000, multiplier: 2, jitter: 0.5 } });
    const { network, clock } = setup;
    setup.socket.drop();
    const delays = [];
    for (let attempt = 0; attempt < 8; attempt++) {
      const announced = setup.eventsNamed('disconnected').at(-1).reconnectInMs;
      delays.push(announced);
      const base = Math.min(2000, 100 * 2 ** attempt);
      assert.ok(announced >= base / 2 && announced <= base, `attempt ${attempt}: ${announced} within [${base / 2}, ${base}]`);
      assert.equal(announced, Math.round(base * (1 - 0.5 * draws[attempt])), 'the delay uses the injected random source');
      const socketsBefore = network.sockets.length;
      await clock.advance(announced - 1);
      assert.equal(network.sockets.length, socketsBefore, `attempt ${attempt} does not start before its delay`);
      await clock.advance(1);
      assert.equal(network.sockets.length, socketsBefore + 1, `attempt ${attempt} starts after ${announced} ms`);
      network.sockets.at(-1).refuse();
    }
    assert.ok(new Set(delays.slice(5)).size > 1, 'capped delays still vary (jitter)');
    assert.ok(delays[3] > delays[0] && delays[4] > delays[1], 'delays grow');
    // A success resets the backoff to its first step.
    const last = setup.eventsNamed('disconnected').at(-1).reconnectInMs;
    await clock.advance(last);
    await network.sockets.at(-1).handshake();
    assert.equal(setup.client.state, 'connected');
    network.sockets.at(-1).drop();
    assert.ok(setup.eventsNamed('disconnected').at(-1).reconnectInMs <= 100);
    await setup.client.close();
  });
});

describe('GOAWAY and fatal errors', () => {
  test('GOAWAY: stop sending, read until the server closes, then reconnect at once and resume', async () => {
    const setup = await openClient();
    const log = recorder();
    const { frame } = await subscribeWith(setup.client, setup.socket, log);
    setup.socket.deliver(server.goaway(10_000, 'bye'));
    assert.equal(setup.client.state, 'disconnected');
    assert.equal(setup.eventsNamed('disconnected')[0].reconnectInMs, undefined);
    await assert.rejects(setup.client.publish('app', 'news', 'x'), (error) => error.code === 'not_connected');
    // What the server had queued before GOAWAY still arrives.
    setup.socket.deliver(server.message(frame.subId, E, 6n));
    assert.deepEqual(log.seqs(), [6n]);
    assert.equal(setup.network.sockets.length, 1, 'no new connection while the old one drains');
    setup.socket.drop(1001);
    const next = await setup.network.socket(1); // no clock advance: at once
    await next.handshake();
    const again = await next.next('subscribe');
    assert.deepEqual([again.resumeEpoch, again.resumeSeq], [E, 7n]);
    assert.equal(setup.socket.inbox.length, 0, 'nothing was sent after GOAWAY');
    await setup.client.close();
  });

  test('GOAWAY without a close: the client closes after drain_ms', async () => {
    const setup = await openClient();
    setup.socket.deliver(server.goaway(2000, ''));
    await setup.clock.advance(2999);
    assert.equal(setup.socket.closedByClient, undefined);
    await setup.clock.advance(1);
    assert.equal(setup.socket.closedByClient?.code, 1000);
    await (await setup.network.socket(1)).handshake();
    assert.equal(setup.client.state, 'connected');
    await setup.client.close();
  });

  test('a fatal token_expired with a static token closes the client for good', async () => {
    const setup = await openClient();
    const log = recorder();
    await subscribeWith(setup.client, setup.socket, log);
    setup.socket.deliver(server.error(0, CODE.token_expired, true, 'token expired'));
    setup.socket.drop();
    assert.equal(setup.client.state, 'closed');
    const [closed] = setup.eventsNamed('closed');
    assert.equal(closed.error.code, 'token_expired');
    assert.equal(log.errors[0]?.code, 'token_expired', 'the subscription is told it ended');
    await setup.clock.advance(10 * 60_000);
    assert.equal(setup.network.sockets.length, 1, 'no reconnect');
  });

  for (const [code, name] of [[15, 'unauthorized'], [17, 'token_expired'], [4, 'unsupported_version'], [5, 'handshake_required']]) {
    test(`a fatal ${name} on a reconnect with a static token stops reconnecting`, async () => {
      const setup = await openClient();
      setup.socket.drop();
      await setup.clock.advance(setup.eventsNamed('disconnected')[0].reconnectInMs);
      const next = await setup.network.socket(1);
      next.accept();
      await next.next('hello');
      next.deliver(server.error(0, code, true, 'refused'));
      assert.equal(setup.client.state, 'closed');
      assert.equal(setup.eventsNamed('closed')[0].error.code, name);
      await setup.clock.advance(10 * 60_000);
      assert.equal(setup.network.sockets.length, 2);
    });
  }

  test('a retryable fatal error (slow_consumer) reconnects', async () => {
    const setup = await openClient();
    setup.socket.deliver(server.error(0, CODE.slow_consumer, true, 'queue full'));
    assert.equal(setup.client.state, 'disconnected');
    assert.equal(setup.eventsNamed('error')[0].code, 'slow_consumer');
    await setup.clock.advance(setup.eventsNamed('disconnected')[0].reconnectInMs);
    await (await setup.network.socket(1)).handshake();
    assert.equal(setup.client.state, 'connected');
    await setup.client.close();
  });
});

describe('tokens', () => {
  test('jwtExpiry reads exp; tokenRefreshDelay refreshes at 80%, at least the lead before, never in a loop', () => {
    const now = 1_750_000_000_000;
    const token = jwt({ sub: 'u', exp: now / 1000 + 60 });
    assert.equal(jwtExpiry(token), now / 1000 + 60);
    assert.equal(jwtExpiry('an-api-key'), undefined);
    assert.equal(jwtExpiry('a.b.c'), undefined);
    assert.equal(tokenRefreshDelay(token, now), 48_000);
    assert.equal(tokenRefreshDelay(jwt({ exp: now / 1000 + 10 }), now), 5_000, '5 s before a 10 s token');
    assert.equal(tokenRefreshDelay(jwt({ exp: now / 1000 + 4 }), now), 2_000, 'half of a very short life');
    assert.equal(tokenRefreshDelay(jwt({ exp: now / 1000 + 3600 }), now, 5_000), 2_880_000);
    // A clock running ahead: the token's own lifetime counts from now.
    assert.equal(tokenRefreshDelay(jwt({ iat: now / 1000 - 7200, exp: now / 1000 - 7140 }), now), 48_000);
    assert.equal(tokenRefreshDelay('an-api-key', now), undefined);
  });

  test('the tokenProvider is called for the first connection and for every reconnect', async () => {
    let calls = 0;
    const tokenProvider = async () => `token-${++calls}`;
    const setup = await openClient({ tokenProvider });
    assert.equal(setup.hello.credentials, 'token-1');
    const { hello } = await reconnect(setup, setup.socket, 1);
    assert.equal(hello.credentials, 'token-2');
    assert.equal(calls, 2);
    await setup.client.close();
  });

  test('with a tokenProvider, token_expired reconnects with a fresh token', async () => {
    let calls = 0;
    const setup = await openClient({ tokenProvider: async () => `token-${++calls}` });
    setup.socket.deliver(server.error(0, CODE.token_expired, true, 'expired'));
    assert.equal(setup.client.state, 'disconnected');
    await setup.clock.advance(setup.eventsNamed('disconnected')[0].reconnectInMs);
    const hello = await (await setup.network.socket(1)).handshake();
    assert.equal(hello.credentials, 'token-2');
    assert.equal(setup.client.state, 'connected');
    await setup.client.close();
  });

  test('before expiry: a new connection resubscribes from the last position, takes over, the old one closes; no gap, no duplicate', async () => {
    const clock = new FakeClock();
    const issued = [];
    const tokenProvider = async () => {
      const token = jwt({ sub: 'u', n: issued.length + 1, exp: Math.floor(clock.now() / 1000) + 60 });
      issued.push(token);
      return token;
    };
    const setup = await openClient({ clock, tokenProvider });
    const { client, socket: old, network } = setup;
    assert.equal(setup.hello.credentials, issued[0]);
    const log = recorder();
    const { frame } = await subscribeWith(client, old, log, { startAfter: 5n });
    old.deliver(server.message(frame.subId, E, 6n), server.message(frame.subId, E, 7n));

    await clock.advance(47_999);
    assert.equal(issued.length, 1, 'not yet: 80% of 60 s is 48 s');
    await clock.advance(1);
    assert.equal(issued.length, 2, 'the provider is asked at 48 s');
    const fresh = await network.socket(1);
    const hello = await fresh.handshake();
    assert.equal(hello.credentials, issued[1]);
    const again = await fresh.next('subscribe');
    assert.deepEqual([again.resumeEpoch, again.resumeSeq], [E, 8n], 'resumes after the last item');

    // Until the new SUB_OK, the old connection keeps delivering.
    old.deliver(server.message(frame.subId, E, 8n), server.message(frame.subId, E, 9n));
    assert.equal(old.closedByClient, undefined);
    fresh.deliver(
      server.subOk(again.requestId, again.subId, E, 7n),
      server.message(again.subId, E, 8n),
      server.message(again.subId, E, 9n),
      server.message(again.subId, E, 10n),
    );
    assert.equal(old.closedByClient?.code, 1000, 'the old connection is closed once the new one has taken over');
    fresh.deliver(server.message(again.subId, E, 11n));
    assert.deepEqual(log.seqs(), [6n, 7n, 8n, 9n, 10n, 11n], 'no gap, no duplicate');
    assert.equal(log.gaps.length + log.errors.length, 0);
    assert.deepEqual(setup.eventsNamed('state'), [], 'the client stayed connected');

    // Requests now go to the new connection, and the next refresh is scheduled.
    const published = client.publish('app', 'news', 'x', { ack: true });
    const publish = await fresh.next('publish');
    fresh.deliver(server.pubAck(publish.requestId, 12n));
    assert.equal(await published, 12n);
    await clock.advance(48_000);
    assert.equal(issued.length, 3);
    await client.close();
  });

  test('during a switch-over, a loss the old connection already covered is not reported', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const tokenProvider = async () => jwt({ n: ++calls, exp: Math.floor(clock.now() / 1000) + 60 });
    const setup = await openClient({ clock, tokenProvider });
    const log = recorder();
    const { frame } = await subscribeWith(setup.client, setup.socket, log, { startAfter: 5n });
    setup.socket.deliver(server.message(frame.subId, E, 6n), server.message(frame.subId, E, 7n));
    await clock.advance(48_000);
    const fresh = await setup.network.socket(1);
    await fresh.handshake();
    const again = await fresh.next('subscribe');
    assert.equal(again.resumeSeq, 8n);
    setup.socket.deliver(server.message(frame.subId, E, 8n), server.message(frame.subId, E, 9n));
    // Meanwhile the ring moved on: it starts at 9, so the new connection reports 8 as lost;
    // but the old connection delivered 8 already.
    fresh.deliver(
      server.subOk(again.requestId, again.subId, E, 8n),
      server.discontinuity(again.subId, E, 7n, 9n),
      server.message(again.subId, E, 9n),
      server.message(again.subId, E, 10n),
    );
    assert.deepEqual(log.seqs(), [6n, 7n, 8n, 9n, 10n]);
    assert.deepEqual(log.gaps, [], 'nothing the application missed');
    // A loss beyond what was delivered is still reported, from the last item delivered.
    fresh.deliver(server.discontinuity(again.subId, E, 10n, 13n), server.message(again.subId, E, 13n));
    assert.equal(log.gaps.length, 1);
    assert.equal(log.gaps[0].lastSeq, 10n);
    assert.equal(log.gaps[0].nextSeq, 13n);
    await setup.client.close();
  });

  test('during a switch-over, a loss partly covered by the old connection is reported from the last item delivered', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const tokenProvider = async () => jwt({ n: ++calls, exp: Math.floor(clock.now() / 1000) + 60 });
    const setup = await openClient({ clock, tokenProvider });
    const log = recorder();
    const { frame } = await subscribeWith(setup.client, setup.socket, log, { startAfter: 7n });
    await clock.advance(48_000);
    const fresh = await setup.network.socket(1);
    await fresh.handshake();
    const again = await fresh.next('subscribe');
    assert.equal(again.resumeSeq, 8n);
    setup.socket.deliver(server.message(frame.subId, E, 8n), server.message(frame.subId, E, 9n));
    fresh.deliver(
      server.subOk(again.requestId, again.subId, E, 10n),
      server.discontinuity(again.subId, E, 7n, 11n),
      server.message(again.subId, E, 11n),
    );
    assert.deepEqual(log.seqs(), [8n, 9n, 11n]);
    assert.equal(log.gaps.length, 1);
    assert.equal(log.gaps[0].lastSeq, 9n, 'only seq 10 was missed');
    assert.equal(log.gaps[0].nextSeq, 11n);
    await setup.client.close();
  });

  test('a live subscription made during a switch-over goes to the old connection, then resumes on the new one', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const tokenProvider = async () => jwt({ n: ++calls, exp: Math.floor(clock.now() / 1000) + 60 });
    const setup = await openClient({ clock, tokenProvider });
    const first = recorder();
    const { frame: firstFrame } = await subscribeWith(setup.client, setup.socket, first, { topic: 'first', startAfter: 0n });
    await clock.advance(48_000);
    const fresh = await setup.network.socket(1);
    await fresh.handshake();
    const firstAgain = await fresh.next('subscribe');
    assert.equal(firstAgain.topic, 'first');

    const late = recorder();
    const pending = setup.client.subscribe('app', 'late', late.handlers);
    const lateFrame = await setup.socket.next('subscribe');
    setup.socket.deliver(server.subOk(lateFrame.requestId, lateFrame.subId, E2, 10n), server.message(lateFrame.subId, E2, 11n));
    await pending;
    // The new connection takes over once 'first' is confirmed there; then 'late' follows,
    // resuming after what the old connection delivered, not live.
    fresh.deliver(server.subOk(firstAgain.requestId, firstAgain.subId, E, 0n));
    const lateAgain = await fresh.next('subscribe');
    assert.equal(lateAgain.topic, 'late');
    assert.deepEqual([lateAgain.resumeEpoch, lateAgain.resumeSeq], [E2, 12n]);
    assert.equal(setup.socket.closedByClient?.code, 1000);
    fresh.deliver(server.subOk(lateAgain.requestId, lateAgain.subId, E2, 11n), server.message(lateAgain.subId, E2, 12n));
    assert.deepEqual(late.seqs(), [11n, 12n]);
    assert.equal(firstFrame.topic, 'first');
    await setup.client.close();
  });

  test('a live subscription still unanswered when the new connection opens follows at the takeover', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const tokenProvider = async () => jwt({ n: ++calls, exp: Math.floor(clock.now() / 1000) + 60 });
    const setup = await openClient({ clock, tokenProvider });
    await subscribeWith(setup.client, setup.socket, recorder(), { topic: 'first', startAfter: 0n });
    const late = recorder();
    const pending = setup.client.subscribe('app', 'late', late.handlers);
    const lateFrame = await setup.socket.next('subscribe');
    await clock.advance(48_000);
    const fresh = await setup.network.socket(1);
    await fresh.handshake();
    const firstAgain = await fresh.next('subscribe');
    assert.equal(firstAgain.topic, 'first');
    await settle();
    assert.equal(fresh.inbox.length, 0, "'late' is not subscribed live on the new connection");
    setup.socket.deliver(server.subOk(lateFrame.requestId, lateFrame.subId, E2, 10n), server.message(lateFrame.subId, E2, 11n));
    await pending;
    fresh.deliver(server.subOk(firstAgain.requestId, firstAgain.subId, E, 0n));
    const lateAgain = await fresh.next('subscribe');
    assert.deepEqual([lateAgain.topic, lateAgain.resumeEpoch, lateAgain.resumeSeq], ['late', E2, 12n]);
    await setup.client.close();
  });

  test('a tokenProvider that never answers times out, and the reconnect is retried', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const tokenProvider = () => (++calls === 2 ? new Promise(() => {}) : Promise.resolve(`token-${calls}`));
    const setup = await openClient({ clock, tokenProvider, handshakeTimeoutMs: 3000 });
    setup.socket.drop();
    await clock.advance(setup.eventsNamed('disconnected')[0].reconnectInMs);
    assert.equal(calls, 2);
    assert.equal(setup.client.state, 'connecting');
    await clock.advance(3000);
    assert.equal(setup.client.state, 'disconnected');
    assert.equal(setup.eventsNamed('error').at(-1).code, 'token_provider_failed');
    await clock.advance(setup.eventsNamed('disconnected').at(-1).reconnectInMs);
    const hello = await (await setup.network.socket(1)).handshake();
    assert.equal(hello.credentials, 'token-3');
    assert.equal(setup.client.state, 'connected');
    await setup.client.close();
  });

  test('the old connection finishes its outstanding requests before it closes', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const tokenProvider = async () => jwt({ n: ++calls, exp: Math.floor(clock.now() / 1000) + 60 });
    const setup = await openClient({ clock, tokenProvider });
    const pending = setup.client.publish('app', 'news', 'in flight', { ack: true });
    const publish = await setup.socket.next('publish');
    await clock.advance(48_000);
    await (await setup.network.socket(1)).handshake();
    await settle();
    assert.equal(setup.socket.closedByClient, undefined, 'waits for the PUB_ACK');
    setup.socket.deliver(server.pubAck(publish.requestId, 3n));
    assert.equal(await pending, 3n);
    assert.equal(setup.socket.closedByClient?.code, 1000);
    await setup.client.close();
  });

  test('a failed refresh keeps the working connection and tries again', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const tokenProvider = async () => {
      calls++;
      if (calls === 2) throw new Error('auth server down');
      return jwt({ n: calls, exp: Math.floor(clock.now() / 1000) + 60 });
    };
    const setup = await openClient({ clock, tokenProvider, random: () => 0 });
    await clock.advance(48_000);
    assert.equal(calls, 2);
    const [error] = setup.eventsNamed('error');
    assert.equal(error.code, 'token_provider_failed');
    assert.match(error.message, /auth server down/);
    assert.equal(setup.client.state, 'connected');
    assert.equal(setup.network.sockets.length, 1);
    await clock.advance(500); // backoff's first step with no jitter
    assert.equal(calls, 3);
    await (await setup.network.socket(1)).handshake();
    assert.equal(setup.socket.closedByClient?.code, 1000, 'the refresh completed');
    await setup.client.close();
  });

  test('if the old connection dies during the refresh, the new one takes over at once', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const tokenProvider = async () => jwt({ n: ++calls, exp: Math.floor(clock.now() / 1000) + 60 });
    const setup = await openClient({ clock, tokenProvider });
    const log = recorder();
    const { frame } = await subscribeWith(setup.client, setup.socket, log, { startAfter: 0n });
    setup.socket.deliver(server.message(frame.subId, E, 1n));
    await clock.advance(48_000);
    const fresh = await setup.network.socket(1);
    await fresh.handshake();
    const again = await fresh.next('subscribe');
    setup.socket.drop();
    assert.equal(setup.client.state, 'connected', 'the new connection is usable');
    fresh.deliver(server.subOk(again.requestId, again.subId, E, 1n), server.message(again.subId, E, 2n));
    assert.deepEqual(log.seqs(), [1n, 2n]);
    assert.equal(setup.network.sockets.length, 2);
    await setup.client.close();
  });
});

test('connect() calls the tokenProvider before opening the socket', async () => {
  const network = fakeNetwork();
  let socketsWhenAsked;
  const connecting = connect({
    url: URL,
    WebSocket: network.WebSocket,
    clock: new FakeClock(),
    tokenProvider: async () => {
      socketsWhenAsked = network.sockets.length;
      return 'fresh';
    },
  });
  const socket = await network.socket(0);
  assert.equal(socketsWhenAsked, 0, 'the handshake deadline does not run while the token is fetched');
  assert.equal((await socket.handshake()).credentials, 'fresh');
  await (await connecting).close();
});
