// The notifications example's back end: it signs users in (a demo: any
// name, no password), gives each page a short-lived token that may only
// subscribe to its own user's topic, and runs "jobs" that notify the user
// through corebus when they finish.
//
// The page never holds a key. Tokens are HS256 JWTs signed with the broker's
// token secret (docs/security.md, Tokens): minting one is a local HMAC, with
// no call to the broker.
//
// Settings (environment): PORT (8080), HOST (127.0.0.1), COREBUS_WS_URL
// (ws://127.0.0.1:7401/v1/ws), TOKEN_SECRET_FILE (./.token-secret, which
// broker.sh makes).

import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

import { connect } from 'corebus';
import WebSocket from 'ws';

const here = fileURLToPath(new URL('.', import.meta.url));
const port = Number(process.env.PORT ?? 8080);
const host = process.env.HOST ?? '127.0.0.1';
const brokerUrl = process.env.COREBUS_WS_URL ?? 'ws://127.0.0.1:7401/v1/ws';
const secret = readFileSync(process.env.TOKEN_SECRET_FILE ?? join(here, '.token-secret'), 'utf8').trim();

const NAMESPACE = 'notifications';
const PAGE_TOKEN_SECONDS = 10 * 60;
const BACKEND_TOKEN_SECONDS = 30 * 60;

/** A JWT signed with the broker's secret. */
function mint(claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`;
  const signature = createHmac('sha256', secret).update(body).digest('base64url');
  return `${body}.${signature}`;
}

const now = () => Math.floor(Date.now() / 1000);

/** What a signed-in user's page may do: read its own topic, nothing else. */
function pageToken(user) {
  return mint({
    sub: user,
    iat: now(),
    exp: now() + PAGE_TOKEN_SECONDS,
    perm: [{ ns: NAMESPACE, topic: `user-${user}`, sub: true }],
  });
}

/** What the back end itself may do: publish to every user's topic. */
function backendToken() {
  return mint({
    sub: 'notifications-backend',
    iat: now(),
    exp: now() + BACKEND_TOKEN_SECONDS,
    perm: [{ ns: NAMESPACE, topic: 'user-', prefix: true, pub: true }],
  });
}

// One connection for all the back end's publishes; the client reconnects and
// refreshes its token by itself.
const bus = await connect({
  url: brokerUrl,
  tokenProvider: async () => backendToken(),
  name: 'notifications-backend',
  WebSocket,
});

/** session id -> user name */
const sessions = new Map();

function sessionUser(request) {
  const cookie = request.headers.cookie ?? '';
  const match = /(?:^|;\s*)sid=([A-Za-z0-9_-]+)/.exec(cookie);
  return match ? sessions.get(match[1]) : undefined;
}

async function body(request) {
  let text = '';
  for await (const chunk of request) {
    text += chunk;
    if (text.length > 4096) throw new Error('body too large');
  }
  return text ? JSON.parse(text) : {};
}

function send(response, status, value, headers = {}) {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  response.writeHead(status, {
    'Content-Type': typeof value === 'string' ? 'text/plain; charset=utf-8' : 'application/json',
    'Cache-Control': 'no-store',
    ...headers,
  });
  response.end(text);
}

const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.map': 'application/json' };

/** Serves a file under `root`, refusing paths that leave it. */
async function serveFile(response, root, path) {
  const file = normalize(join(root, path));
  if (!file.startsWith(root + sep)) return send(response, 404, 'not found');
  try {
    const data = await readFile(file);
    response.writeHead(200, { 'Content-Type': types[extname(file)] ?? 'application/octet-stream' });
    response.end(data);
  } catch {
    send(response, 404, 'not found');
  }
}

const publicDir = join(here, 'public');
const clientDir = join(here, '..', '..', 'clients', 'typescript', 'dist');
// The client's one dependency, the zstd decoder, which the page's import map
// names (a page without a bundler resolves bare imports that way).
const fzstdDir = join(here, '..', '..', 'clients', 'typescript', 'node_modules', 'fzstd', 'esm');
let nextJob = 1;

async function handle(request, response) {
  const url = new URL(request.url, `http://${request.headers.host ?? host}`);
  const user = sessionUser(request);
  if (request.method === 'POST' && url.pathname === '/api/login') {
    const { name } = await body(request);
    if (typeof name !== 'string' || !/^[a-z0-9-]{1,32}$/.test(name)) {
      return send(response, 400, { error: 'a name is 1 to 32 lower-case letters, digits or dashes' });
    }
    const sid = randomBytes(18).toString('base64url');
    sessions.set(sid, name);
    return send(response, 200, { user: name }, { 'Set-Cookie': `sid=${sid}; HttpOnly; SameSite=Strict; Path=/` });
  }
  if (url.pathname.startsWith('/api/') && user === undefined) {
    return send(response, 401, { error: 'sign in first' });
  }
  if (request.method === 'GET' && url.pathname === '/api/me') {
    return send(response, 200, { user, namespace: NAMESPACE, topic: `user-${user}`, broker: brokerUrl });
  }
  if (request.method === 'GET' && url.pathname === '/api/corebus-token') {
    return send(response, 200, pageToken(user));
  }
  if (request.method === 'POST' && url.pathname === '/api/jobs') {
    const { name } = await body(request);
    const job = { id: nextJob++, name: String(name ?? 'report').slice(0, 64) };
    // The job runs a while, then tells its user; the page may have been
    // closed and reopened meanwhile (the replay buffer keeps the message).
    setTimeout(() => {
      const notification = { job: job.id, title: `${job.name} is ready`, at: new Date().toISOString() };
      bus.publish(NAMESPACE, `user-${user}`, JSON.stringify(notification), { ack: true }).catch((error) => {
        console.error(`job ${job.id}: could not notify ${user}: ${error.message}`);
      });
    }, 1000);
    return send(response, 202, job);
  }
  if (request.method === 'GET' && url.pathname.startsWith('/corebus/')) {
    return serveFile(response, clientDir, url.pathname.slice('/corebus/'.length));
  }
  if (request.method === 'GET' && url.pathname.startsWith('/fzstd/')) {
    return serveFile(response, fzstdDir, url.pathname.slice('/fzstd/'.length));
  }
  if (request.method === 'GET') {
    return serveFile(response, publicDir, url.pathname === '/' ? 'index.html' : url.pathname);
  }
  send(response, 404, 'not found');
}

createServer((request, response) => {
  handle(request, response).catch((error) => send(response, 400, { error: error.message }));
}).listen(port, host, () => {
  console.log(`notifications example on http://${host}:${port} (broker ${brokerUrl})`);
});
