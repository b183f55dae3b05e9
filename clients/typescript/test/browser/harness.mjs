// What the browser tests run around the page: the corebus broker, a native
// publisher (the `corebus pub` command, over the native TCP protocol), static
// servers for the page, a TCP proxy that can cut connections, token minting,
// headless Chromium, and the bookkeeping that ends every process the run
// started, also when a case fails or the run is interrupted.

import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createTcpServer, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { extname, join, normalize, sep } from 'node:path';
import { createInterface } from 'node:readline';

// ---------------------------------------------------------------------------
// Deadlines

/** Rejects with `what` when `promise` has not settled within `ms`. */
export function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * Polls `probe` until `until(value)` holds (by default: the value is truthy)
 * and returns that value; after `ms`, fails naming `what` and showing the
 * last value (through `show`).
 */
export async function waitFor(probe, { ms, what, until = Boolean, show = JSON.stringify, every = 50 }) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (until(value)) return value;
    if (Date.now() >= end) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}; last seen: ${show(value ?? null)}`);
    }
    await sleep(every);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------
// Cleanup: everything started registers how to stop it.

const cleanups = [];
const children = new Set();
/** Every process started, in order, for diagnostics. */
export const processes = [];

/** Registers `fn` to run at cleanup (last registered, first run). */
export function onCleanup(name, fn) {
  cleanups.push({ name, fn });
}

/** How many cleanups are registered: a mark for {@link cleanupDownTo}. */
export function cleanupMark() {
  return cleanups.length;
}

/**
 * Runs the cleanups registered since `mark` (a case's own processes, pages
 * and servers), each bounded in time; never throws.
 */
export async function cleanupDownTo(mark) {
  while (cleanups.length > mark) {
    const { name, fn } = cleanups.pop();
    try {
      await withDeadline(Promise.resolve().then(fn), 10_000, `cleanup of ${name}`);
    } catch (error) {
      console.error(`# cleanup of ${name} failed: ${error.message}`);
    }
  }
}

/** Runs every cleanup, then kills whatever child is still running. */
export async function cleanupAll() {
  await cleanupDownTo(0);
  killChildrenNow();
}

/** Last resort (also on process exit): SIGKILL every child still running. */
export function killChildrenNow() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

/** Temporary directories not removed yet (removed on exit at the latest). */
const tempDirs = new Set();

process.on('exit', () => {
  killChildrenNow();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/**
 * Spawns a process whose stdout and stderr are kept (the last 200 lines of
 * each) for diagnostics; it is stopped at cleanup (SIGTERM, then SIGKILL).
 */
export function startProcess(name, command, args, options = {}) {
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], ...options });
  children.add(child);
  const output = { stdout: [], stderr: [] };
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
    child.on('error', (error) => resolve({ code: null, signal: null, error }));
  });
  for (const stream of ['stdout', 'stderr']) {
    createInterface({ input: child[stream] }).on('line', (line) => {
      output[stream].push(line);
      if (output[stream].length > 200) output[stream].shift();
      child.emit(`${stream}-line`, line);
    });
  }
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const done = await Promise.race([exited.then(() => true), sleep(3000).then(() => false)]);
      if (!done) {
        child.kill('SIGKILL');
        await exited;
      }
    }
    children.delete(child);
  };
  onCleanup(name, stop);
  const proc = { child, output, exited, stop, name };
  processes.push(proc);
  return proc;
}

/** Resolves with the first line of `proc`'s stdout that matches `pattern`. */
export function waitForLine(proc, pattern, ms) {
  const seen = proc.output.stdout.find((line) => pattern.test(line));
  if (seen !== undefined) return Promise.resolve(seen.match(pattern));
  const found = new Promise((resolve, reject) => {
    const onLine = (line) => {
      const match = line.match(pattern);
      if (match) {
        proc.child.off('stdout-line', onLine);
        resolve(match);
      }
    };
    proc.child.on('stdout-line', onLine);
    proc.exited.then(({ code, signal, error }) => {
      reject(
        new Error(
          `${proc.name} ended (code ${code}, signal ${signal}${error ? `, ${error.message}` : ''}) before printing ${pattern}; ` +
            `stderr: ${proc.output.stderr.slice(-10).join(' | ')}`,
        ),
      );
    });
  });
  return withDeadline(found, ms, `${proc.name} to print ${pattern}`);
}

// ---------------------------------------------------------------------------
// Temporary files

/** A fresh temporary directory, removed at cleanup unless `keep`. */
export function tempDir(prefix, { keep = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  if (!keep) {
    tempDirs.add(dir);
    onCleanup(`remove ${dir}`, () => {
      rmSync(dir, { recursive: true, force: true });
      tempDirs.delete(dir);
    });
  }
  return dir;
}

// ---------------------------------------------------------------------------
// Tokens: HS256 JWTs, minted as a web back end would (docs/security.md).

export function makeSecret(dir) {
  const secret = randomBytes(32).toString('hex');
  const file = join(dir, 'token-secret');
  writeFileSync(file, `${secret}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  return { secret, file };
}

export function mintToken(secret, claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

export const unixNow = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------
// The broker

/**
 * Starts `corebus serve` on port 0 for both listeners; resolves once it has
 * printed both addresses.
 */
export async function startBroker({ bin, secretFile, allowedOrigins, extraArgs = [] }) {
  const args = ['serve', '--listen', '127.0.0.1:0', '--ws-listen', '127.0.0.1:0', '--log-level', 'warn'];
  for (const origin of allowedOrigins) args.push('--ws-allowed-origin', origin);
  args.push(...extraArgs);
  const env = { ...process.env, COREBUS_TOKEN_SECRET_FILE: secretFile };
  delete env.COREBUS_TOKEN_SECRET;
  delete env.COREBUS_CONFIG;
  const proc = startProcess('broker', bin, args, { env });
  proc.child.stdin.end();
  const [, nativeAddr] = await waitForLine(proc, /^corebus listening on (\S+) with \d+ shards?$/, 15_000);
  const [, wsAddr] = await waitForLine(proc, /^corebus browsers on (\S+)$/, 15_000);
  return { proc, nativeAddr, wsAddr, args };
}

/**
 * A native publisher: one `corebus pub --stdin` process (the native TCP
 * protocol), which publishes each line written to it as one message, in
 * order, as soon as it arrives.
 */
export function startPublisher({ bin, server, token, namespace, topic }) {
  const env = { ...process.env, COREBUS_CREDENTIALS: token };
  const proc = startProcess(`publisher ${namespace}/${topic}`, bin, ['pub', '--stdin', '--server', server, namespace, topic], {
    env,
  });
  let written = 0;
  return {
    get written() {
      return written;
    },
    /** Writes lines; resolves once the pipe took them. */
    write(lines) {
      written += lines.length;
      const ok = proc.child.stdin.write(lines.map((line) => `${line}\n`).join(''));
      return ok ? Promise.resolve() : new Promise((resolve) => proc.child.stdin.once('drain', resolve));
    },
    /**
     * Ends the input and waits for the process; returns how many messages it
     * reports published and the last seq, and fails if it failed.
     */
    async finish(ms = 15_000) {
      proc.child.stdin.end();
      const { code, signal } = await withDeadline(proc.exited, ms, `${proc.name} to finish`);
      const all = [...proc.output.stdout, ...proc.output.stderr].join('\n');
      if (code !== 0) throw new Error(`${proc.name} exited with ${code ?? signal}: ${all}`);
      const match = /published (\d+) messages?, last seq (\d+)/.exec(all);
      if (!match) throw new Error(`${proc.name} printed no summary: ${all}`);
      return { published: Number(match[1]), lastSeq: Number(match[2]) };
    },
  };
}

/** Publishes one message with `corebus pub NS TOPIC MESSAGE`; resolves with its seq. */
export async function publishOne({ bin, server, token, namespace, topic, message, compress = false }) {
  const args = ['pub', '--server', server, namespace, topic, message, ...(compress ? ['--compress'] : [])];
  const proc = startProcess(`corebus pub ${namespace}/${topic}`, bin, args, {
    env: { ...process.env, COREBUS_CREDENTIALS: token },
  });
  proc.child.stdin.end();
  const { code, signal } = await withDeadline(proc.exited, 10_000, proc.name);
  const output = [...proc.output.stdout, ...proc.output.stderr].join('\n');
  if (code !== 0 || !/^\d+$/.test(proc.output.stdout[0] ?? '')) throw new Error(`${proc.name} exited with ${code ?? signal}: ${output}`);
  return Number(proc.output.stdout[0]);
}

// ---------------------------------------------------------------------------
// Static servers

const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
  '.css': 'text/css',
};

/**
 * A static HTTP server on 127.0.0.1:0 serving `routes` (URL prefix ->
 * directory); resolves with its origin.
 */
export async function startStaticServer(name, routes) {
  const server = createHttpServer(async (request, response) => {
    const path = decodeURIComponent(new URL(request.url, 'http://x').pathname);
    for (const [prefix, dir] of Object.entries(routes)) {
      if (!path.startsWith(prefix)) continue;
      const rest = path.slice(prefix.length) || 'index.html';
      const file = normalize(join(dir, rest));
      if (!file.startsWith(dir + sep)) break;
      try {
        const data = await readFile(file);
        response.writeHead(200, { 'Content-Type': types[extname(file)] ?? 'application/octet-stream', 'Cache-Control': 'no-store' });
        response.end(data);
        return;
      } catch {
        break;
      }
    }
    response.writeHead(404, { 'Content-Type': 'text/plain' });
    response.end('not found');
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  onCleanup(name, () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(() => resolve()));
  });
  return { origin: `http://127.0.0.1:${server.address().port}`, server };
}

/** A port nobody listens on at the moment (for a server that needs a fixed one). */
export async function freePort() {
  const server = createTcpServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// ---------------------------------------------------------------------------
// The TCP proxy between the page and the broker's browser listener

/**
 * Forwards every connection to `target` ("host:port"). It keeps, per
 * connection, the request head the browser sent and the first line the
 * broker answered, so a test can read the HTTP exchange (the Last-Event-ID
 * of a reconnect, a 403). `cut()` resets every open connection; while
 * `down`, new connections are reset at once; `delayMs` delays what the broker
 * sends.
 */
export async function startProxy(name, target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const pairs = new Set();
  const connections = [];
  let down = false;
  let proxy;
  const server = createTcpServer((client) => {
    if (down) {
      client.resetAndDestroy();
      return;
    }
    const record = { requestHead: '', responseLine: '', cut: false, note: undefined };
    connections.push(record);
    record.note = proxy.onAccept?.(record);
    const upstream = tcpConnect(port, host);
    const pair = { client, upstream, record };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('data', (chunk) => {
      if (!record.requestHead.includes('\r\n\r\n') && record.requestHead.length < 16384) {
        record.requestHead += chunk.toString('latin1');
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (!record.responseLine.includes('\r\n') && record.responseLine.length < 1024) {
        record.responseLine += chunk.toString('latin1');
        if (record.responseLine.includes('\r\n')) record.responseLine = record.responseLine.split('\r\n')[0];
      }
      // Timers of one duration fire in the order they were set: the delay
      // keeps the bytes in order.
      if (proxy.delayMs > 0) setTimeout(() => client.destroyed || client.write(chunk), proxy.delayMs);
      else client.write(chunk);
    });
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  proxy = {
    /** Called with each connection's record as it is accepted; its result is kept as `note`. */
    onAccept: undefined,
    /** Holds what the broker sends this long before passing it on (a slow network). */
    delayMs: 0,
    addr: `127.0.0.1:${server.address().port}`,
    /** Every connection so far: { requestHead, responseLine, cut, note }. */
    connections,
    get open() {
      return pairs.size;
    },
    /** Resets every open connection (the browser sees its socket drop). */
    cut() {
      const count = pairs.size;
      for (const pair of [...pairs]) {
        pair.record.cut = true;
        pairs.delete(pair);
        pair.client.resetAndDestroy();
        pair.upstream.destroy();
      }
      return count;
    },
    set down(value) {
      down = value;
    },
    get down() {
      return down;
    },
  };
  onCleanup(name, () => {
    proxy.cut();
    return new Promise((resolve) => server.close(() => resolve()));
  });
  return proxy;
}

// ---------------------------------------------------------------------------
// Chromium

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Debian's Chromium through playwright-core, with a fresh temporary profile
 * (removed at cleanup). Never downloads a browser.
 */
export async function launchChromium(executablePath) {
  const { chromium } = await import('playwright-core');
  const profile = tempDir('corebus-chromium-profile-');
  const context = await withDeadline(
    chromium.launchPersistentContext(profile, {
      executablePath,
      headless: true,
      args: CHROMIUM_ARGS,
      // The run's own handlers close the browser, then the rest, then exit.
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
      viewport: { width: 900, height: 700 },
    }),
    30_000,
    `Chromium (${executablePath}) to start`,
  );
  // Registered after the profile's removal, so it runs before it.
  onCleanup('chromium', () => context.close());
  return context;
}
