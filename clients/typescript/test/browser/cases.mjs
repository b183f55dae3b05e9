// The browser test cases. Each gets the run's environment (`env`: the
// broker, the page's two origins, Chromium, tokens) and throws on any
// failure; whatever it starts is stopped after it (harness cleanup marks).

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { existsSync } from 'node:fs';

import { publishOne, sleep, startProcess, startProxy, startPublisher, waitFor, waitForLine, withDeadline } from './harness.mjs';

/** The namespace of the cases' own topics (the example uses `notifications`). */
const NS = 'browser-tests';

/** Publishes `total` messages `PREFIX1`.. over time, `batch` every `everyMs`. */
async function publishSteadily(publisher, { total, batch, everyMs, prefix, stop }) {
  for (let next = 1; next <= total; ) {
    const lines = [];
    for (; lines.length < batch && next <= total; next++) lines.push(`${prefix}${next}`);
    await publisher.write(lines);
    if (stop?.()) break;
    await sleep(everyMs);
  }
}

/** What the page's stream check reports, short: for a timeout's message. */
function showSummary(summary) {
  const { count, firstSeq, lastSeq, duplicates, problems } = summary?.stream ?? {};
  const errors = summary?.errors?.slice(-3);
  return JSON.stringify({ count, firstSeq, lastSeq, duplicates, problems: problems?.slice(0, 5), errors });
}

/**
 * Waits until the page's stream (`ws` or `sse`) has `count` items or has
 * reached seq `lastSeq`, and returns the page's summary. Stopping at the last
 * seq lets a stream that skipped items fail on what the page saw, not on a
 * timeout.
 */
function waitForStream(env, page, kind, { count, lastSeq = Infinity, ms, what }) {
  const probe = kind === 'ws' ? () => window.bus.wsSummary() : () => window.bus.sseSummary();
  return waitFor(() => env.evaluate(page, probe), {
    until: (summary) => summary.stream.count >= count || summary.stream.lastSeq >= lastSeq,
    show: showSummary,
    ms,
    what,
  });
}

/** The part of the proxy's connections that asked for `path`. */
function requestsFor(proxy, path) {
  return proxy.connections.filter((record) => record.requestHead.startsWith(`GET ${path}`));
}

function headerValue(head, name) {
  const line = head.split('\r\n').find((candidate) => candidate.toLowerCase().startsWith(`${name.toLowerCase()}:`));
  return line === undefined ? undefined : line.slice(line.indexOf(':') + 1).trim();
}

/** Reads the page's error line back from the DOM. */
async function shownError(page) {
  const element = page.locator('#error');
  return {
    visible: await element.isVisible(),
    text: (await element.textContent()) ?? '',
    code: await element.getAttribute('data-code'),
  };
}

function assertCleanStream(stream, { count, firstSeq = 1 }) {
  assert.deepEqual(stream.problems, [], `the page found problems in the stream: ${stream.problems.join('; ')}`);
  assert.equal(stream.duplicates, 0, 'items delivered twice');
  assert.equal(stream.count, count, `the page got ${stream.count} items, expected ${count}`);
  assert.equal(stream.firstSeq, firstSeq, 'first seq');
  assert.equal(stream.lastSeq, firstSeq + count - 1, 'last seq');
}

/**
 * Opens a page that subscribes to `topic` over WebSocket (the client) and
 * SSE (the browser's EventSource), each checking the items against
 * `payloads` (seq -> text); returns the page.
 */
async function subscribeBoth(env, topic, payloads) {
  const page = await env.openPage(env.siteA.origin);
  const token = env.userToken('ada', [topic]);
  const viaWs = await env.evaluate(page, (o) => window.bus.wsStart(o), {
    url: env.wsUrl,
    token,
    namespace: NS,
    topic,
    prefix: '',
    expectedPayloads: payloads,
  });
  assert.equal(viaWs.ok, true, `subscribe failed: ${JSON.stringify(viaWs)}`);
  const query = new URLSearchParams({ ns: NS, topic, token });
  const viaSse = await env.evaluate(page, (o) => window.bus.sseStart(o), {
    url: `http://${env.broker.wsAddr}/v1/sse?${query}`,
    prefix: '',
    expectedPayloads: payloads,
  });
  assert.equal(viaSse.ok, true, `the event stream failed: ${JSON.stringify(viaSse)}`);
  return page;
}

export const cases = [
  {
    id: '1',
    name: 'WebSocket: 1,000 messages from the native client arrive in order with consecutive seqs',
    async run(env) {
      const topic = 'ws-order';
      const page = await env.openPage(env.siteA.origin);
      const started = await env.evaluate(page, (options) => window.bus.wsStart(options), {
        url: env.wsUrl,
        token: env.userToken('ada', [topic]),
        namespace: NS,
        topic,
        prefix: 'm',
      });
      assert.equal(started.ok, true, `subscribe failed: ${JSON.stringify(started)}`);
      assert.equal(started.startAfter, 0, 'a fresh topic starts after seq 0');

      const publisher = env.publisher(NS, topic);
      await publisher.write(Array.from({ length: 1000 }, (_, index) => `m${index + 1}`));
      const published = await publisher.finish();
      assert.deepEqual(published, { published: 1000, lastSeq: 1000 }, 'what corebus pub reports');

      await waitForStream(env, page, 'ws', {
        count: 1000,
        lastSeq: 1000,
        ms: 20_000,
        what: 'the page to receive 1,000 items',
      });
      const summary = await env.evaluate(page, () => window.bus.wsSummary());
      assertCleanStream(summary.stream, { count: 1000 });
      assert.equal(summary.stream.epoch, started.epoch, 'one epoch');
      assert.deepEqual(summary.disconnects, [], 'the connection never dropped');
      assert.equal(summary.state, 'connected');
      assert.equal((await shownError(page)).visible, false, 'no error shown');
      return `1000 items, seq 1..1000, epoch ${summary.stream.epoch}`;
    },
  },

  {
    id: '2',
    name: 'WebSocket: the connection is cut while publishing; the client reconnects and resumes, nothing lost or repeated',
    async run(env) {
      const topic = 'ws-cut';
      const total = 2000;
      const proxy = await startProxy('proxy (case 2)', env.broker.wsAddr);
      const page = await env.openPage(env.siteA.origin);
      const started = await env.evaluate(page, (options) => window.bus.wsStart(options), {
        url: `ws://${proxy.addr}/v1/ws`,
        token: env.userToken('ada', [topic]),
        namespace: NS,
        topic,
        prefix: 'm',
        backoff: { initialMs: 200, maxMs: 1000 },
      });
      assert.equal(started.ok, true, `subscribe failed: ${JSON.stringify(started)}`);

      const publisher = env.publisher(NS, topic);
      // Each connection through the proxy notes how many lines had been
      // written to the publisher when it arrived.
      proxy.onAccept = () => publisher.written;
      const publishing = publishSteadily(publisher, { total, batch: 20, everyMs: 50, prefix: 'm' });
      let publishingFailed;
      publishing.catch((error) => (publishingFailed = error));

      await waitForStream(env, page, 'ws', {
        count: 300,
        lastSeq: 300,
        ms: 15_000,
        what: 'the page to receive 300 items before the cut',
      });
      // The cut: the page's socket is reset, and new connections are reset
      // too for 800 ms while the publisher goes on.
      proxy.down = true;
      const writtenAtCut = publisher.written;
      const cutSockets = proxy.cut();
      await sleep(800);
      proxy.down = false;
      assert.equal(cutSockets, 1, 'the proxy cut the page connection');

      await withDeadline(publishing, 30_000, 'the publisher to write every line');
      if (publishingFailed) throw publishingFailed;
      const published = await publisher.finish();
      assert.deepEqual(published, { published: total, lastSeq: total }, 'what corebus pub reports');

      await waitForStream(env, page, 'ws', {
        count: total,
        lastSeq: total,
        ms: 20_000,
        what: `the page to receive ${total} items`,
      });
      const summary = await env.evaluate(page, () => window.bus.wsSummary());
      assertCleanStream(summary.stream, { count: total });
      assert.ok(summary.disconnects.length >= 1, 'the client saw the connection drop');
      const [drop] = summary.disconnects;
      assert.equal(drop.code, 'connection_lost', 'the drop is reported as connection_lost');
      assert.ok(summary.reconnects.length >= 1, 'the client connected again');
      assert.equal(summary.disconnects.length, 1, 'one outage');
      assert.equal(drop.firstSeqAfter, drop.lastSeq + 1, 'the stream resumed right after the last item before the cut');
      const upgrades = requestsFor(proxy, '/v1/ws');
      assert.equal(upgrades.length, 2, 'two WebSocket connections went through: the first and the reconnect');
      const writtenAtReconnect = upgrades[1].note;
      assert.ok(
        writtenAtReconnect - drop.lastSeq >= 100,
        `at least 100 messages were published after the page's last item and before it reconnected ` +
          `(last item ${drop.lastSeq}, ${writtenAtReconnect} written at the reconnect): the resume came from the replay buffer`,
      );
      assert.equal(summary.state, 'connected');
      return (
        `cut after seq ${drop.lastSeq} (${writtenAtCut} lines written then); ${drop.failedAttempts} reconnect attempt(s) refused while the proxy was down; ` +
        `reconnected when ${writtenAtReconnect} were written, resumed at seq ${drop.firstSeqAfter}; ` +
        `${summary.stream.count} items, each once, in order`
      );
    },
  },

  {
    id: '2b',
    name: 'WebSocket: short tokens refreshed through tokenProvider while publishing: new connections take over, nothing lost or repeated',
    async run(env) {
      const topic = 'ws-refresh';
      const total = 2400;
      const lifetime = 4; // seconds: the client refreshes about every 2 s
      const proxy = await startProxy('proxy (case 2b)', env.broker.wsAddr);
      // 100 ms on the way to the page: when a refresh subscribes on the new
      // connection, the old one still has about 40 items in flight, which the
      // new one replays too. The client must show each once.
      proxy.delayMs = 100;
      const page = await env.openPage(env.siteA.origin);
      let minted = 0;
      await page.exposeFunction('testMintToken', () => {
        minted++;
        return env.userToken('ada', [topic], { expOffset: lifetime });
      });
      const started = await env.evaluate(page, (options) => window.bus.wsStart(options), {
        url: `ws://${proxy.addr}/v1/ws`,
        tokenFromTest: true,
        namespace: NS,
        topic,
        prefix: 'm',
      });
      assert.equal(started.ok, true, `subscribe failed: ${JSON.stringify(started)}`);

      const publisher = env.publisher(NS, topic);
      // 400 a second for 6 s: at least two refreshes happen meanwhile.
      await withDeadline(publishSteadily(publisher, { total, batch: 20, everyMs: 50, prefix: 'm' }), 30_000, 'the publisher');
      const published = await publisher.finish();
      assert.deepEqual(published, { published: total, lastSeq: total }, 'what corebus pub reports');

      await waitForStream(env, page, 'ws', { count: total, lastSeq: total, ms: 20_000, what: `the page to receive ${total} items` });
      const summary = await env.evaluate(page, () => window.bus.wsSummary());
      assertCleanStream(summary.stream, { count: total });
      const upgrades = requestsFor(proxy, '/v1/ws');
      assert.ok(upgrades.length >= 3, `at least two refreshes, each a new connection: ${upgrades.length} connections`);
      assert.ok(summary.tokensFetched >= 3 && minted === summary.tokensFetched, `tokens: ${summary.tokensFetched} asked, ${minted} minted`);
      assert.deepEqual(summary.disconnects, [], 'the switch-overs never left the client disconnected');
      assert.deepEqual(summary.states, [], 'the client stayed connected throughout');
      assert.deepEqual(summary.errors, [], 'no error reported');
      assert.equal(summary.state, 'connected');
      // Each replaced connection is closed by the client (or, at the latest,
      // by the broker when its token expires): one stays open.
      await waitFor(() => proxy.open, { until: (open) => open === 1, ms: 8_000, what: 'the replaced connections to close' });
      return `${summary.tokensFetched} tokens of ${lifetime} s, ${upgrades.length} connections, ${total} items each once, in order, never disconnected`;
    },
  },

  {
    id: '3',
    name: "WebSocket: a token for another user's topic is refused with forbidden, naming the topic, shown by the page",
    async run(env) {
      const page = await env.openPage(env.siteA.origin);
      const result = await env.evaluate(page, (options) => window.bus.wsStart(options), {
        url: env.wsUrl,
        token: env.userToken('ada', ['user-ada']),
        namespace: NS,
        topic: 'user-bob',
        prefix: 'm',
      });
      assert.equal(result.ok, false, 'subscribing to user-bob with ada\'s token must fail');
      assert.equal(result.stage, 'subscribe', 'connect succeeds, the subscribe is refused');
      assert.equal(result.corebusError, true, 'the rejection is a CorebusError');
      assert.equal(result.code, 'forbidden');
      assert.match(result.message, /user-bob/, 'the message names the topic');
      assert.equal(result.state, 'connected', 'the refusal does not end the connection');
      const shown = await shownError(page);
      assert.equal(shown.visible, true, 'the page shows the error');
      assert.equal(shown.code, 'forbidden');
      assert.match(shown.text, /forbidden/);
      assert.match(shown.text, /user-bob/);
      return `shown: "${shown.text}"`;
    },
  },

  {
    id: '4',
    name: 'WebSocket: an expired token is refused at connect (fatal), shown by the page',
    async run(env) {
      const page = await env.openPage(env.siteA.origin);
      const result = await env.evaluate(page, (options) => window.bus.wsStart(options), {
        url: env.wsUrl,
        token: env.userToken('ada', ['user-ada'], { iatOffset: -600, expOffset: -60 }),
        namespace: NS,
        topic: 'user-ada',
        prefix: 'm',
      });
      assert.equal(result.ok, false, 'connect with an expired token must fail');
      assert.equal(result.stage, 'connect');
      assert.equal(result.corebusError, true, 'the rejection is a CorebusError');
      assert.ok(['token_expired', 'unauthorized'].includes(result.code), `code ${result.code}`);
      assert.equal(result.fatal, true, 'the refusal is fatal');
      assert.equal(result.state, 'never connected', 'connect() rejected; no client');
      const shown = await shownError(page);
      assert.equal(shown.visible, true, 'the page shows the error');
      assert.equal(shown.code, result.code);
      assert.match(shown.text, new RegExp(result.code));
      return `shown: "${shown.text}"`;
    },
  },

  {
    id: '5',
    name: 'A page from a disallowed origin is refused (WebSocket and EventSource), the page reports it',
    async run(env) {
      const topic = 'origin';
      const proxy = await startProxy('proxy (case 5)', env.broker.wsAddr);
      const token = env.userToken('ada', [topic]);
      const options = { url: `ws://${proxy.addr}/v1/ws`, token, namespace: NS, topic, prefix: 'm' };

      // The control: the same page, token and URL from the allowed origin.
      const allowed = await env.openPage(env.siteA.origin);
      const fine = await env.evaluate(allowed, (o) => window.bus.wsStart(o), options);
      assert.equal(fine.ok, true, `from the allowed origin it works: ${JSON.stringify(fine)}`);
      await env.evaluate(allowed, () => window.bus.wsClose());

      const page = await env.openPage(env.siteB.origin);
      const result = await env.evaluate(page, (o) => window.bus.wsStart(o), options);
      assert.equal(result.ok, false, 'the connection from the other origin must fail');
      assert.equal(result.stage, 'connect');
      assert.equal(result.corebusError, true);
      const shown = await shownError(page);
      assert.equal(shown.visible, true, 'the page shows the failure');
      assert.equal(shown.code, result.code);
      const upgrades = requestsFor(proxy, '/v1/ws');
      const refused = upgrades.filter((record) => headerValue(record.requestHead, 'Origin') === env.siteB.origin);
      assert.ok(refused.length >= 1, 'the page sent its WebSocket upgrade with its own Origin');
      for (const record of refused) assert.match(record.responseLine, /^HTTP\/1\.1 403 /, 'the broker answered 403');

      // The same over Server-Sent Events: the browser gives the stream up.
      const query = new URLSearchParams({ ns: NS, topic, token });
      const sse = await env.evaluate(page, (o) => window.bus.sseStart(o), {
        url: `http://${proxy.addr}/v1/sse?${query}`,
        prefix: 'm',
      });
      assert.equal(sse.ok, false, 'the event stream from the other origin must fail');
      assert.equal(sse.via, 'error');
      assert.equal(sse.readyState, 2, 'EventSource CLOSED: the browser does not retry a 403');
      const streams = requestsFor(proxy, '/v1/sse').filter(
        (record) => headerValue(record.requestHead, 'Origin') === env.siteB.origin,
      );
      assert.ok(streams.length >= 1, 'the event stream request carried the page origin');
      for (const record of streams) assert.match(record.responseLine, /^HTTP\/1\.1 403 /, 'the broker answered 403');
      const shownSse = await shownError(page);
      assert.equal(shownSse.code, 'stream_failed');
      return `WebSocket: [${result.code}] ${result.message}; both answered "${refused[0].responseLine}"`;
    },
  },

  {
    id: '6a',
    name: 'SSE: items arrive in order with EPOCH:SEQ ids; after a cut the browser resumes with Last-Event-ID, nothing lost or repeated',
    async run(env) {
      const topic = 'sse-cut';
      const total = 1500;
      const proxy = await startProxy('proxy (case 6a)', env.broker.wsAddr);
      const page = await env.openPage(env.siteA.origin);
      const query = new URLSearchParams({ ns: NS, topic, token: env.userToken('ada', [topic]) });
      const started = await env.evaluate(page, (o) => window.bus.sseStart(o), {
        url: `http://${proxy.addr}/v1/sse?${query}`,
        prefix: 'm',
      });
      assert.equal(started.ok, true, `the event stream failed: ${JSON.stringify(started)}`);
      assert.match(started.id, /^\d+:0$/, 'subscribed id is EPOCH:0 on a fresh topic');
      assert.equal(started.id, `${started.data.epoch}:${started.data.start_after}`, 'id and data agree');

      const publisher = env.publisher(NS, topic);
      proxy.onAccept = () => publisher.written;
      const publishing = publishSteadily(publisher, { total, batch: 20, everyMs: 50, prefix: 'm' });
      let publishingFailed;
      publishing.catch((error) => (publishingFailed = error));

      await waitForStream(env, page, 'sse', {
        count: 300,
        lastSeq: 300,
        ms: 15_000,
        what: 'the page to receive 300 events before the cut',
      });
      // Shorter than the stream's `retry: 1000`: the browser's reconnect
      // finds the proxy open again.
      proxy.down = true;
      const cutSockets = proxy.cut();
      await sleep(400);
      proxy.down = false;
      assert.equal(cutSockets, 1, 'the proxy cut the event stream');

      await withDeadline(publishing, 30_000, 'the publisher to write every line');
      if (publishingFailed) throw publishingFailed;
      const published = await publisher.finish();
      assert.deepEqual(published, { published: total, lastSeq: total }, 'what corebus pub reports');

      await waitForStream(env, page, 'sse', {
        count: total,
        lastSeq: total,
        ms: 20_000,
        what: `the page to receive ${total} events`,
      });
      const summary = await env.evaluate(page, () => window.bus.sseSummary());
      assertCleanStream(summary.stream, { count: total });
      assert.equal(summary.stream.epoch, started.data.epoch, 'the ids carry the subscription epoch');
      assert.equal(summary.lastId, `${started.data.epoch}:${total}`, 'the last id');
      assert.equal(summary.disconnects.length, 1, 'the browser saw the stream drop once');
      const [drop] = summary.disconnects;
      assert.equal(drop.firstIdAfter, `${started.data.epoch}:${drop.lastSeq + 1}`, 'resumed right after the last event');
      const streams = requestsFor(proxy, '/v1/sse');
      assert.equal(streams.length, 2, 'two event-stream requests: the first and the reconnect');
      const writtenAtReconnect = streams[1].note;
      assert.ok(
        writtenAtReconnect - drop.lastSeq >= 100,
        `at least 100 messages were published after the page's last event and before it reconnected ` +
          `(last ${drop.lastSeq}, ${writtenAtReconnect} written at the reconnect): the resume came from the replay buffer`,
      );
      assert.equal(headerValue(streams[0].requestHead, 'Last-Event-ID'), undefined, 'the first request has no Last-Event-ID');
      assert.equal(
        headerValue(streams[1].requestHead, 'Last-Event-ID'),
        drop.lastId,
        'the reconnect sent Last-Event-ID: the last id the page had',
      );
      for (const record of streams) assert.match(record.responseLine, /^HTTP\/1\.1 200 /);
      assert.equal(summary.subscribed.length, 2, 'a subscribed event per request');
      assert.equal(summary.subscribed[1].data.start_after, drop.lastSeq, 'the second stream starts after the last id');
      assert.equal(summary.readyState, 1, 'the stream is open');
      return (
        `ids ${started.data.epoch}:1..${total}; cut after ${drop.lastId}; reconnect sent Last-Event-ID ${headerValue(streams[1].requestHead, 'Last-Event-ID')}; ` +
        `resumed at ${drop.firstIdAfter}; ${writtenAtReconnect - drop.lastSeq} published in between`
      );
    },
  },

  {
    id: '6b',
    name: "SSE: a token for another user's topic yields the broker-error event the page shows",
    async run(env) {
      const page = await env.openPage(env.siteA.origin);
      const query = new URLSearchParams({ ns: NS, topic: 'user-bob', token: env.userToken('ada', ['user-ada']) });
      const result = await env.evaluate(page, (o) => window.bus.sseStart(o), {
        url: `http://${env.broker.wsAddr}/v1/sse?${query}`,
        prefix: 'm',
      });
      assert.equal(result.ok, false, 'the event stream for user-bob must be refused');
      assert.equal(result.via, 'broker-error', 'refused with a broker-error event');
      assert.equal(result.code, 'forbidden');
      assert.match(result.message, /user-bob/, 'the message names the topic');
      const summary = await env.evaluate(page, () => window.bus.sseSummary());
      assert.equal(summary.readyState, 2, 'the page closed its EventSource');
      assert.equal(summary.stream.count, 0, 'no item arrived');
      const shown = await shownError(page);
      assert.equal(shown.visible, true);
      assert.equal(shown.code, 'forbidden');
      assert.match(shown.text, /user-bob/);
      return `shown: "${shown.text}"`;
    },
  },

  {
    id: '6c',
    name: 'SSE and WebSocket: a two-line payload and one with a CR (SSE `binary`, base64) arrive exactly as published',
    async run(env) {
      const topic = 'payloads';
      const payloads = { 1: 'two\nlines', 2: 'carriage\rreturn', 3: 'plain' };
      const page = await subscribeBoth(env, topic, payloads);
      for (const [seq, message] of Object.entries(payloads)) {
        assert.equal(await env.publishOne(NS, topic, message), Number(seq), 'corebus pub prints the seq');
      }
      const ws = await waitForStream(env, page, 'ws', { count: 3, lastSeq: 3, ms: 10_000, what: 'three items over WebSocket' });
      assertCleanStream(ws.stream, { count: 3 });
      const sse = await waitForStream(env, page, 'sse', { count: 3, lastSeq: 3, ms: 10_000, what: 'three events' });
      assertCleanStream(sse.stream, { count: 3 });
      const epoch = sse.stream.epoch;
      assert.deepEqual(
        sse.raw,
        [
          { type: 'message', id: `${epoch}:1`, data: 'two\nlines' },
          { type: 'binary', id: `${epoch}:2`, data: Buffer.from('carriage\rreturn').toString('base64') },
          { type: 'message', id: `${epoch}:3`, data: 'plain' },
        ],
        'the events as the browser parsed them',
      );
      return `WebSocket: 3 items exact; SSE: ${sse.raw.map((event) => `${event.type} ${JSON.stringify(event.data)}`).join(', ')}`;
    },
  },

  {
    id: '6d',
    name: 'Compression: `corebus pub --compress` (the Rust client) to the page over WebSocket and SSE (`zstd`), read as published',
    async run(env) {
      const topic = 'compressed';
      const book = JSON.stringify({ bids: Array.from({ length: 400 }, (_, i) => [100 - i / 100, i % 7]) });
      const payloads = { 1: book, 2: 'short' };
      const page = await subscribeBoth(env, topic, payloads);
      for (const [seq, message] of Object.entries(payloads)) {
        assert.equal(await env.publishOne(NS, topic, message, { compress: true }), Number(seq), 'corebus pub prints the seq');
      }
      const ws = await waitForStream(env, page, 'ws', { count: 2, lastSeq: 2, ms: 10_000, what: 'two items over WebSocket' });
      assertCleanStream(ws.stream, { count: 2 });
      assert.deepEqual(ws.stream.compressed, [1], 'the book travelled compressed, the short one plain');
      const sse = await waitForStream(env, page, 'sse', { count: 2, lastSeq: 2, ms: 10_000, what: 'two events' });
      assertCleanStream(sse.stream, { count: 2 });
      assert.deepEqual(sse.stream.compressed, [1]);
      assert.deepEqual(sse.raw.map((event) => event.type), ['zstd', 'message']);
      return `${book.length}-byte book: WebSocket item decompressed; SSE ${sse.raw[0].data} decompressed by the page`;
    },
  },

  {
    id: '6e',
    name: 'A pattern (`orders/*`) over WebSocket: items of every matching topic, each with its topic and its own sequence',
    async run(env) {
      const page = await env.openPage(env.siteA.origin);
      const token = env.userToken('ada', ['orders/'], { prefix: true });
      const started = await env.evaluate(page, (o) => window.bus.wsPatternStart(o), {
        url: env.wsUrl,
        token,
        namespace: NS,
        pattern: 'orders/*',
      });
      assert.equal(started.ok, true, `subscribe failed: ${JSON.stringify(started)}`);
      for (const [topic, message] of [['orders/eu', 'one'], ['orders/us', 'two'], ['invoices/eu', 'no'], ['orders/eu', 'three']]) {
        await env.publishOne(NS, topic, message);
      }
      const summary = await waitFor(() => env.evaluate(page, () => window.bus.wsPatternSummary()), {
        until: (s) => s.items.length >= 3,
        show: (s) => JSON.stringify(s),
        ms: 10_000,
        what: 'three pattern items',
      });
      assert.deepEqual(summary.items, [
        { topic: 'orders/eu', seq: 1, text: 'one' },
        { topic: 'orders/us', seq: 1, text: 'two' },
        { topic: 'orders/eu', seq: 2, text: 'three' },
      ]);
      assert.deepEqual([summary.gaps, summary.errors], [[], []]);
      return summary.items.map((item) => `${item.topic} #${item.seq}`).join(', ');
    },
  },

  {
    id: '7',
    name: 'The notifications example end to end: sign in, two jobs, two notifications, screenshot',
    async run(env) {
      const exampleDir = join(env.repoRoot, 'examples', 'notifications');
      if (!existsSync(join(exampleDir, 'node_modules', 'ws')) || !existsSync(join(exampleDir, 'node_modules', 'corebus'))) {
        throw new Error(`${exampleDir}/node_modules is missing ws or corebus: run clients/typescript/scripts/setup.sh`);
      }
      const server = startProcess('notifications example', process.execPath, [join(exampleDir, 'server.mjs')], {
        cwd: exampleDir,
        env: {
          ...process.env,
          PORT: String(env.examplePort),
          HOST: '127.0.0.1',
          COREBUS_WS_URL: env.wsUrl,
          TOKEN_SECRET_FILE: env.secretFile,
        },
      });
      server.child.stdin.end();
      await waitForLine(server, /^notifications example on http:\/\/127\.0\.0\.1:\d+/, 15_000);

      const page = await env.openPage(env.exampleOrigin, { path: '/', waitForBus: false });
      await page.fill('#name', 'ada');
      await page.click('#login button');
      // Subscribed, or an error the page shows (then fail with it at once).
      await withDeadline(
        page.waitForFunction(() => window.corebusReady === true || !document.getElementById('error').hidden, null, {
          timeout: 15_000,
        }),
        16_000,
        'the example page to subscribe',
      );
      const signInError = page.locator('#error');
      if (await signInError.isVisible()) throw new Error(`the example page shows an error: ${await signInError.textContent()}`);
      assert.equal(await page.textContent('#user'), 'ada');
      assert.equal(await page.textContent('#topic'), 'notifications/user-ada');
      assert.equal(await page.textContent('#state'), 'connected');

      const jobs = ['quarterly report', 'invoices'];
      for (const job of jobs) {
        await page.fill('#job-name', job);
        await page.click('#job button');
      }
      await withDeadline(
        page.waitForFunction(() => document.querySelectorAll('#notifications li').length >= 2, null, { timeout: 15_000 }),
        16_000,
        'both notifications to appear',
      );
      await sleep(300); // a third (wrong) one would show up now
      const items = await page.$$eval('#notifications li', (elements) =>
        elements.map((element) => ({
          title: element.firstChild.textContent,
          detail: element.querySelector('small').textContent,
          className: element.className,
        })),
      );
      assert.equal(items.length, 2, `two notifications: ${JSON.stringify(items)}`);
      // Newest first; jobs are published in the order they were started.
      const parsed = items.map((item) => {
        const match = /^job (\d+) · .* · seq (\d+)$/.exec(item.detail);
        assert.ok(match, `detail line: ${item.detail}`);
        assert.equal(item.className, '', 'not a gap notice');
        return { title: item.title, job: Number(match[1]), seq: Number(match[2]) };
      });
      assert.deepEqual(
        parsed.map(({ title }) => title),
        [`${jobs[1]} is ready`, `${jobs[0]} is ready`],
        'the two jobs, newest first',
      );
      assert.equal(parsed[0].seq, parsed[1].seq + 1, 'consecutive seqs');
      assert.equal(parsed[0].job, parsed[1].job + 1, 'consecutive job ids');
      assert.equal(await page.locator('#error').isVisible(), false, 'no error shown');
      assert.equal(await page.textContent('#state'), 'connected');
      assert.equal(server.output.stderr.filter((line) => /could not notify/.test(line)).length, 0, 'the back end published both');

      const screenshot = join(env.screenshotDir, 'notifications.png');
      await page.screenshot({ path: screenshot, fullPage: true });
      env.artifacts.push(screenshot);
      return `${parsed.map((p) => `"${p.title}" (job ${p.job}, seq ${p.seq})`).join(', ')}; screenshot ${screenshot}`;
    },
  },
  {
    id: 'm1',
    name: 'MQTT.js in the page over /mqtt, 3.1.1 and 5.0: a wrong token refused (0x86), overlapping + and # filters (a/# also a) at QoS 1, one copy each, QoS 1 and 2 from the page, a native publish to the page',
    async run(env) {
      const page = await env.openPage(env.siteA.origin, { path: '/mqtt.html', waitForBus: false });
      await page.waitForFunction(() => window.mqttReady === true, null, { timeout: 10_000 });
      const refused = await env.evaluate(
        page,
        ({ url }) =>
          new Promise((resolve) => {
            const client = window.mqtt.connect(url, { protocolVersion: 5, username: 'ada', password: 'not-a-token', reconnectPeriod: 0 });
            client.on('error', (error) => {
              client.end(true);
              resolve({ code: error.code, message: error.message });
            });
            client.on('connect', () => {
              client.end(true);
              resolve({ connected: true });
            });
          }),
        { url: env.mqttUrl },
      );
      assert.equal(refused.code, 0x86, `a wrong token: ${JSON.stringify(refused)}`);
      const token = env.mqttToken('ada', ['rooms']);
      const seen = [];
      for (const protocolVersion of [4, 5]) {
        const granted = await env.evaluate(
          page,
          ({ url, token, protocolVersion }) =>
            new Promise((resolve, reject) => {
              window.mqttGot = [];
              const sub = window.mqtt.connect(url, { protocolVersion, username: 'ada', password: token, clientId: `page-sub-${protocolVersion}`, reconnectPeriod: 0 });
              window.mqttSub = sub;
              sub.on('message', (topic, payload) => window.mqttGot.push([topic, new TextDecoder().decode(payload)]));
              sub.on('error', (error) => reject(new Error(`subscriber: ${error.message}`)));
              sub.on('connect', () =>
                sub.subscribe(['rooms/+/chat', 'rooms/#'], { qos: 1 }, (error, granted) =>
                  error ? reject(error) : resolve(granted.map((grant) => grant.qos)),
                ),
              );
            }),
          { url: env.mqttUrl, token, protocolVersion },
        );
        assert.deepEqual(granted, [1, 1], 'granted the QoS asked');
        await env.evaluate(
          page,
          ({ url, token, protocolVersion }) =>
            new Promise((resolve, reject) => {
              const pub = window.mqtt.connect(url, { protocolVersion, username: 'ada', password: token, clientId: `page-pub-${protocolVersion}`, reconnectPeriod: 0 });
              pub.on('error', (error) => reject(new Error(`publisher: ${error.message}`)));
              pub.on('connect', () =>
                pub.publish('rooms/1/chat', 'hello', { qos: 1 }, (error) => {
                  if (error) return reject(error);
                  pub.publish('rooms/2', 'two', { qos: 2 }, (error2) => {
                    pub.end();
                    return error2 ? reject(error2) : resolve(true);
                  });
                }),
              );
            }),
          { url: env.mqttUrl, token, protocolVersion },
        );
        await publishOne({
          bin: env.bin,
          server: env.broker.nativeAddr,
          token: env.mqttToken('native', ['rooms']),
          namespace: 'mqtt',
          topic: 'rooms',
          message: 'from native',
        });
        const got = await waitFor(() => env.evaluate(page, () => window.mqttGot), {
          until: (messages) => messages.length >= 3,
          ms: 10_000,
          what: "the page's MQTT messages",
        });
        await sleep(200);
        const all = await env.evaluate(page, () => window.mqttGot);
        assert.deepEqual(
          [...all].sort(),
          [
            ['rooms', 'from native'],
            ['rooms/1/chat', 'hello'],
            ['rooms/2', 'two'],
          ].sort(),
          `MQTT ${protocolVersion}: rooms/1/chat once for both filters, rooms/2 and rooms (the parent) by rooms/#: ${JSON.stringify(got)}`,
        );
        await env.evaluate(page, () => window.mqttSub.end(true));
        seen.push(`${protocolVersion === 4 ? '3.1.1' : '5.0'}: ${all.length} messages`);
      }
      return `wrong token refused with 0x86; ${seen.join(', ')}`;
    },
  },
];
