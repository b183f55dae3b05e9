// The page under test. It uses the built client (/dist/index.js, the
// package's dist/) with the browser's own WebSocket, and the browser's own
// EventSource for Server-Sent Events. The test drives it through
// `window.bus` (page.evaluate); the page itself checks what arrives (order,
// sequence numbers, payloads, duplicates) and shows every error in the DOM
// (#error, with the code in data-code), where the test reads it back.

import { connect, CorebusError, decompressPayload } from '/dist/index.js';

const $ = (id) => document.getElementById(id);

function log(text) {
  const line = document.createElement('li');
  line.textContent = text;
  $('log').append(line);
  while ($('log').childElementCount > 50) $('log').firstElementChild.remove();
}

function setState(text) {
  $('state').textContent = text;
}

function showError(source, code, message) {
  const element = $('error');
  element.hidden = false;
  element.dataset.code = code;
  element.dataset.source = source;
  element.textContent = `${source} refused [${code}]: ${message}`;
  log(`error from ${source}: ${code}: ${message}`);
}

/**
 * Checks one subscription's stream as it arrives: one epoch, sequence numbers
 * consecutive from the first expected one, each exactly once, and each
 * payload the one published for its seq (`expected[seq]` if given, else
 * `PREFIX` + seq).
 */
class StreamCheck {
  constructor(prefix, expected = {}) {
    this.prefix = prefix;
    this.expected = expected;
    this.count = 0;
    this.epoch = undefined;
    this.expectedFirst = undefined;
    this.firstSeq = undefined;
    this.lastSeq = undefined;
    this.duplicates = 0;
    this.problems = [];
    this.seen = new Set();
    /** Sequence numbers of the items that travelled compressed. */
    this.compressed = [];
  }

  problem(text) {
    if (this.problems.length < 20) this.problems.push(text);
  }

  /** The subscription was confirmed: items start after `startAfter`. */
  subscribed(epoch, startAfter) {
    if (this.epoch === undefined) {
      this.epoch = epoch;
      this.expectedFirst = startAfter + 1;
    } else if (epoch !== this.epoch) {
      this.problem(`subscribed again in epoch ${epoch}, was ${this.epoch}`);
    }
  }

  item(epoch, seq, text, compressed = false) {
    this.count++;
    if (compressed && this.compressed.length < 100) this.compressed.push(seq);
    if (this.epoch === undefined) this.epoch = epoch;
    else if (epoch !== this.epoch) this.problem(`seq ${seq} in epoch ${epoch}, expected ${this.epoch}`);
    if (this.seen.has(seq)) {
      this.duplicates++;
      this.problem(`seq ${seq} delivered again`);
    }
    this.seen.add(seq);
    if (this.lastSeq === undefined) {
      if (this.expectedFirst !== undefined && seq !== this.expectedFirst) {
        this.problem(`first seq ${seq}, expected ${this.expectedFirst}`);
      }
      this.firstSeq = seq;
    } else if (seq !== this.lastSeq + 1) {
      this.problem(`seq ${seq} after ${this.lastSeq}`);
    }
    const wanted = this.expected[seq] ?? `${this.prefix}${seq}`;
    if (text !== wanted) this.problem(`seq ${seq} carried ${JSON.stringify(text)}, expected ${JSON.stringify(wanted)}`);
    this.lastSeq = seq;
  }

  summary() {
    return {
      count: this.count,
      epoch: this.epoch,
      firstSeq: this.firstSeq,
      lastSeq: this.lastSeq,
      duplicates: this.duplicates,
      problems: this.problems,
      compressed: this.compressed,
    };
  }
}

function describe(error) {
  return {
    corebusError: error instanceof CorebusError,
    code: error?.code ?? 'not_a_corebus_error',
    message: String(error?.message ?? error),
    fatal: error?.fatal,
  };
}

// ---------------------------------------------------------------------------
// WebSocket, through the TypeScript client

const ws = {
  client: undefined,
  subscription: undefined,
  check: undefined,
  states: [],
  disconnects: [],
  reconnects: [],
  errors: [],
  pendingResume: undefined,
  tokensFetched: 0,
};

/**
 * Connects and subscribes; resolves with where the subscription starts, or
 * with the refusal (also shown in the DOM) and the stage that got it.
 */
async function wsStart({ url, token, tokenFromTest, namespace, topic, prefix, expectedPayloads, backoff }) {
  ws.check = new StreamCheck(prefix, expectedPayloads);
  setState('connecting');
  let stage = 'connect';
  // With tokenFromTest the client asks for every token (the first, each
  // reconnect's, each refresh's) through a function the test exposed, as a
  // page asks its back end.
  const tokenProvider = tokenFromTest
    ? async () => {
        ws.tokensFetched++;
        return window.testMintToken();
      }
    : undefined;
  try {
    ws.client = await connect({ url, token: tokenProvider ? undefined : token, tokenProvider, name: 'browser-test-page', backoff });
    setState(ws.client.state);
    ws.client.on('state', ({ state }) => {
      ws.states.push(state);
      setState(state);
    });
    ws.client.on('error', (error) => ws.errors.push(describe(error)));
    ws.client.on('disconnected', ({ error }) => {
      // One record per outage, however many attempts fail during it; the
      // first item after it shows where the stream resumed.
      if (ws.pendingResume !== undefined) {
        ws.pendingResume.failedAttempts++;
        return;
      }
      const record = { code: error?.code, count: ws.check.count, lastSeq: ws.check.lastSeq, failedAttempts: 0, firstSeqAfter: undefined };
      ws.disconnects.push(record);
      ws.pendingResume = record;
      log(`disconnected (${error?.code}) after seq ${ws.check.lastSeq}`);
    });
    ws.client.on('connected', () => {
      ws.reconnects.push({ count: ws.check.count, lastSeq: ws.check.lastSeq });
      log(`connected again after seq ${ws.check.lastSeq}`);
    });
    stage = 'subscribe';
    ws.subscription = await ws.client.subscribe(namespace, topic, {
      onItem: (item) => {
        const seq = Number(item.seq);
        if (ws.pendingResume !== undefined) {
          ws.pendingResume.firstSeqAfter = seq;
          ws.pendingResume = undefined;
        }
        ws.check.item(item.epoch.toString(), seq, item.text(), item.compressed);
        if (seq % 100 === 0) log(`item seq ${seq}`);
      },
      onDiscontinuity: (gap) => {
        ws.check.problem(`discontinuity: lastSeq ${gap.lastSeq} nextSeq ${gap.nextSeq} epochChanged ${gap.epochChanged}`);
        showError('subscription', 'discontinuity', `seqs ${gap.lastSeq + 1n} to ${gap.nextSeq - 1n} were lost`);
      },
      onError: (error) => {
        ws.errors.push(describe(error));
        showError('subscription', error.code, error.message);
      },
    });
    const { epoch, seq } = ws.subscription.position;
    ws.check.subscribed(epoch.toString(), Number(seq));
    log(`subscribed to ${namespace}/${topic} after seq ${seq}`);
    return { ok: true, epoch: epoch.toString(), startAfter: Number(seq), state: ws.client.state };
  } catch (error) {
    const described = describe(error);
    showError(stage === 'connect' ? 'broker' : 'subscription', described.code, described.message);
    setState(ws.client?.state ?? 'failed');
    return { ok: false, stage, ...described, state: ws.client?.state ?? 'never connected' };
  }
}

function wsSummary() {
  return {
    state: ws.client?.state,
    stream: ws.check?.summary(),
    states: ws.states,
    disconnects: ws.disconnects,
    reconnects: ws.reconnects,
    errors: ws.errors,
    tokensFetched: ws.tokensFetched,
  };
}

async function wsClose() {
  await ws.client?.close();
  return ws.client?.state;
}

// A pattern subscription over WebSocket: items of many topics, recorded as
// they come (each topic's own sequence), with the discontinuities and errors.
const patterns = { client: undefined, items: [], gaps: [], errors: [] };

async function wsPatternStart({ url, token, namespace, pattern }) {
  try {
    patterns.client = await connect({ url, token, name: 'pattern-page', pingIntervalMs: 0 });
    await patterns.client.subscribe(namespace, pattern, {
      onItem: (item) => patterns.items.push({ topic: item.topic, seq: Number(item.seq), text: item.text() }),
      onDiscontinuity: (gap) => patterns.gaps.push({ topic: gap.topic, lastSeq: Number(gap.lastSeq), nextSeq: Number(gap.nextSeq) }),
      onError: (error) => patterns.errors.push(describe(error)),
    });
    return { ok: true };
  } catch (error) {
    return { ok: false, error: describe(error) };
  }
}

function wsPatternSummary() {
  return { items: patterns.items, gaps: patterns.gaps, errors: patterns.errors };
}

// ---------------------------------------------------------------------------
// Server-Sent Events, with the browser's EventSource and no library

const sse = {
  source: undefined,
  check: undefined,
  subscribed: [],
  errors: [],
  brokerErrors: [],
  lastId: undefined,
  disconnects: [],
  pendingResume: undefined,
  raw: [],
};

/**
 * Opens the event stream; resolves at the first `subscribed` event, at a
 * `broker-error` (the page then closes the stream and shows the error), or
 * when the browser gives the stream up.
 */
function sseStart({ url, prefix, expectedPayloads }) {
  sse.check = new StreamCheck(prefix, expectedPayloads);
  setState('sse connecting');
  return new Promise((resolve) => {
    const source = new EventSource(url);
    sse.source = source;
    source.addEventListener('subscribed', (event) => {
      const data = JSON.parse(event.data);
      sse.subscribed.push({ id: event.lastEventId, data });
      sse.lastId = event.lastEventId;
      sse.check.subscribed(data.epoch, data.start_after);
      setState('sse subscribed');
      log(`subscribed (id ${event.lastEventId})`);
      resolve({ ok: true, id: event.lastEventId, data });
    });
    // An item: an unnamed event with the payload as text, `binary` with it
    // in base64 (not UTF-8, or holding a CR), or `zstd` with the compressed
    // payload in base64, which the client's decoder reads.
    const onItem = (event) => {
      if (sse.raw.length < 20) {
        const data = event.type === 'zstd' ? `${event.data.length} base64 characters` : event.data;
        sse.raw.push({ type: event.type, id: event.lastEventId, data });
      }
      const match = /^(\d+):(\d+)$/.exec(event.lastEventId);
      if (!match) {
        sse.check.problem(`event id ${JSON.stringify(event.lastEventId)} is not EPOCH:SEQ`);
        return;
      }
      const bytes = () => Uint8Array.from(atob(event.data), (char) => char.charCodeAt(0));
      let text = event.data;
      try {
        if (event.type === 'binary') text = new TextDecoder().decode(bytes());
        if (event.type === 'zstd') text = new TextDecoder().decode(decompressPayload(bytes()));
      } catch (error) {
        sse.check.problem(`event ${event.lastEventId}: ${error.message}`);
        return;
      }
      sse.lastId = event.lastEventId;
      if (sse.pendingResume !== undefined) {
        sse.pendingResume.firstIdAfter = event.lastEventId;
        sse.pendingResume = undefined;
      }
      sse.check.item(match[1], Number(match[2]), text, event.type === 'zstd');
      if (Number(match[2]) % 100 === 0) log(`event ${event.lastEventId}`);
    };
    source.addEventListener('message', onItem);
    source.addEventListener('binary', onItem);
    source.addEventListener('zstd', onItem);
    source.addEventListener('discontinuity', (event) => {
      sse.check.problem(`discontinuity ${event.data}`);
      showError('event stream', 'discontinuity', event.data);
    });
    source.addEventListener('broker-error', (event) => {
      const data = JSON.parse(event.data);
      sse.brokerErrors.push(data);
      // Refused: reconnecting would not help.
      source.close();
      setState('sse closed');
      showError('event stream', data.code, data.message);
      resolve({ ok: false, via: 'broker-error', ...data });
    });
    source.addEventListener('error', () => {
      // The browser lost the stream; it reconnects by itself (CONNECTING)
      // unless it gave up (CLOSED).
      const reconnecting = source.readyState === EventSource.CONNECTING;
      sse.errors.push({ readyState: source.readyState, lastId: sse.lastId, count: sse.check.count });
      if (reconnecting) {
        const record = { lastId: sse.lastId, count: sse.check.count, lastSeq: sse.check.lastSeq, firstIdAfter: undefined };
        sse.disconnects.push(record);
        sse.pendingResume = record;
        setState('sse reconnecting');
        log(`stream lost after ${sse.lastId}; the browser reconnects`);
      } else {
        setState('sse failed');
        showError('event stream', 'stream_failed', `EventSource gave up (readyState ${source.readyState}) on ${url.split('?')[0]}`);
        resolve({ ok: false, via: 'error', readyState: source.readyState });
      }
    });
  });
}

function sseSummary() {
  return {
    readyState: sse.source?.readyState,
    stream: sse.check?.summary(),
    subscribed: sse.subscribed,
    errors: sse.errors,
    brokerErrors: sse.brokerErrors,
    disconnects: sse.disconnects,
    lastId: sse.lastId,
    raw: sse.raw,
  };
}

function sseClose() {
  sse.source?.close();
  return sse.source?.readyState;
}

window.bus = { wsStart, wsSummary, wsClose, wsPatternStart, wsPatternSummary, sseStart, sseSummary, sseClose };
window.busReady = true;
