// The real-browser tests of corebus and its TypeScript client: headless
// Chromium (Debian's, through playwright-core) loads a page that uses the
// built client (dist/) with the browser's own WebSocket and EventSource,
// against a real broker.
//
//   npm run test:browser                         # builds, then runs every case
//   COREBUS_BIN=/path/to/corebus node test/browser/run.mjs [CASE_ID...]
//
// Environment: COREBUS_BIN (default: <repo>/target/debug/corebus),
// SCREENSHOT_DIR (default: a new temporary directory, printed), CHROMIUM
// (default: /usr/bin/chromium). Arguments: case ids to run (default: all).
// Exits 1 if any case fails. The whole run is bounded (RUN_DEADLINE_MS);
// every process it starts is stopped at the end, also on failure or Ctrl-C.

import { existsSync, mkdirSync, accessSync, constants } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { mkdtempSync } from 'node:fs';

import {
  cleanupAll,
  cleanupDownTo,
  cleanupMark,
  freePort,
  launchChromium,
  makeSecret,
  mintToken,
  onCleanup,
  processes,
  publishOne,
  startBroker,
  startPublisher,
  startStaticServer,
  tempDir,
  unixNow,
  withDeadline,
} from './harness.mjs';
import { cases } from './cases.mjs';

const RUN_DEADLINE_MS = 180_000;
const CASE_DEADLINE_MS = 60_000;

const here = dirname(fileURLToPath(import.meta.url));
const clientRoot = resolve(here, '..', '..');
const repoRoot = resolve(clientRoot, '..', '..');

function fail(message) {
  console.error(`test:browser: ${message}`);
  process.exit(2);
}

function findBinary() {
  const bin = process.env.COREBUS_BIN ? resolve(process.env.COREBUS_BIN) : join(repoRoot, 'target', 'debug', 'corebus');
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    fail(
      `no executable corebus binary at ${bin}` +
        (process.env.COREBUS_BIN ? ' (COREBUS_BIN)' : '; build it (cargo build -p corebus) or set COREBUS_BIN to one'),
    );
  }
  return bin;
}

const runStarted = Date.now();

async function main() {
  const bin = findBinary();
  const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
  if (!existsSync(chromiumPath)) fail(`no Chromium at ${chromiumPath}; run clients/typescript/scripts/setup.sh`);
  if (!existsSync(join(clientRoot, 'dist', 'index.js'))) fail('dist/index.js is missing: run npm run build first');
  const only = process.argv.slice(2);
  const selected = only.length === 0 ? cases : cases.filter((testCase) => only.includes(testCase.id));
  if (selected.length === 0) fail(`no case matches ${only.join(', ')}; cases: ${cases.map((c) => c.id).join(', ')}`);

  let screenshotDir = process.env.SCREENSHOT_DIR;
  if (screenshotDir) mkdirSync(screenshotDir, { recursive: true });
  else screenshotDir = mkdtempSync(join(tmpdir(), 'corebus-browser-screenshots-'));
  screenshotDir = resolve(screenshotDir);

  console.log(`# corebus: ${bin}`);
  console.log(`# chromium: ${chromiumPath}`);
  console.log(`# screenshots: ${screenshotDir}`);

  const work = tempDir('corebus-browser-test-');
  const { secret, file: secretFile } = makeSecret(work);

  // Two origins for the same page: A is allowed by the broker, B is not.
  const routes = {
    '/dist/': join(clientRoot, 'dist'),
    '/fzstd/': join(clientRoot, 'node_modules', 'fzstd', 'esm'),
    // MQTT.js's browser bundle, for the MQTT-over-WebSocket case.
    '/mqtt-js/': join(clientRoot, 'node_modules', 'mqtt', 'dist'),
    '/': join(here, 'page'),
  };
  const siteA = await startStaticServer('page server (allowed origin)', routes);
  const siteB = await startStaticServer('page server (other origin)', routes);
  // The example's server needs a fixed port, and the broker its origin.
  const examplePort = await freePort();
  const exampleOrigin = `http://127.0.0.1:${examplePort}`;

  const broker = await startBroker({
    bin,
    secretFile,
    allowedOrigins: [siteA.origin, exampleOrigin],
    // The replay window: far more than any cut below leaves unread. MQTT on,
    // for MQTT over WebSocket on the browser listener's /mqtt.
    extraArgs: ['--ring-messages', '8192', '--mqtt-listen', '127.0.0.1:0'],
  });
  console.log(`# broker: native ${broker.nativeAddr}, browsers ${broker.wsAddr}; allowed origins ${siteA.origin}, ${exampleOrigin}; other origin ${siteB.origin}`);

  const context = await launchChromium(chromiumPath);
  context.setDefaultTimeout(10_000);
  console.log(`# browser: Chromium ${context.browser()?.version() ?? ''}`);

  const publisherToken = mintToken(secret, {
    sub: 'browser-test-publisher',
    iat: unixNow(),
    exp: unixNow() + 1800,
    perm: [{ ns: 'browser-tests', topic: '', prefix: true, pub: true }],
  });

  let pageLog = [];
  const env = {
    repoRoot,
    bin,
    secret,
    secretFile,
    siteA,
    siteB,
    examplePort,
    exampleOrigin,
    broker,
    wsUrl: `ws://${broker.wsAddr}/v1/ws`,
    mqttUrl: `ws://${broker.wsAddr}/mqtt`,
    /** A token that may publish and subscribe to `topics` (prefixes) of the MQTT namespace. */
    mqttToken(user, topics) {
      return mintToken(secret, {
        sub: user,
        iat: unixNow(),
        exp: unixNow() + 600,
        perm: topics.map((topic) => ({ ns: 'mqtt', topic, prefix: true, pub: true, sub: true })),
      });
    },
    context,
    screenshotDir,
    artifacts: [],
    /** A subscribe-only token for `topics` of browser-tests, as a back end mints it. */
    userToken(user, topics, { iatOffset = 0, expOffset = 600, prefix = false } = {}) {
      return mintToken(secret, {
        sub: user,
        iat: unixNow() + iatOffset,
        exp: unixNow() + expOffset,
        perm: topics.map((topic) => ({ ns: 'browser-tests', topic, sub: true, ...(prefix ? { prefix: true } : {}) })),
      });
    },
    publisher(namespace, topic) {
      return startPublisher({ bin, server: broker.nativeAddr, token: publisherToken, namespace, topic });
    },
    publishOne(namespace, topic, message, { compress = false } = {}) {
      return publishOne({ bin, server: broker.nativeAddr, token: publisherToken, namespace, topic, message, compress });
    },
    /** A new tab on `origin`; closed after the case. */
    async openPage(origin, { path = '/index.html', waitForBus = true } = {}) {
      const page = await withDeadline(context.newPage(), 10_000, 'a new tab');
      onCleanup('page', () => page.close());
      page.on('console', (message) => pageLog.push(`[${origin} console.${message.type()}] ${message.text()}`));
      page.on('pageerror', (error) => pageLog.push(`[${origin} page error] ${error.message}`));
      await page.goto(`${origin}${path}`, { timeout: 10_000 });
      if (waitForBus) await page.waitForFunction(() => window.busReady === true, null, { timeout: 10_000 });
      return page;
    },
    /** page.evaluate, bounded in time. */
    evaluate(page, fn, argument) {
      return withDeadline(page.evaluate(fn, argument), 20_000, 'page.evaluate');
    },
  };

  const results = [];
  for (const testCase of selected) {
    pageLog = [];
    const mark = cleanupMark();
    const firstProcess = processes.length;
    const started = Date.now();
    let outcome;
    try {
      const detail = await withDeadline(testCase.run(env), CASE_DEADLINE_MS, `case ${testCase.id}`);
      outcome = { ok: true, detail };
    } catch (error) {
      outcome = { ok: false, error };
    }
    await cleanupDownTo(mark);
    const seconds = (Date.now() - started) / 1000;
    results.push({ ...testCase, ...outcome, seconds });
    if (outcome.ok) {
      console.log(`ok ${testCase.id} - ${testCase.name} (${seconds.toFixed(2)} s)`);
      if (outcome.detail) console.log(`  # ${outcome.detail}`);
    } else {
      console.log(`not ok ${testCase.id} - ${testCase.name} (${seconds.toFixed(2)} s)`);
      console.log(`  # ${String(outcome.error?.stack ?? outcome.error).split('\n').join('\n  # ')}`);
      for (const line of pageLog.slice(-30)) console.log(`  # ${line}`);
      const brokerErrors = broker.proc.output.stderr.filter((line) => !/corebus::doctor/.test(line)).slice(-10);
      for (const line of brokerErrors) console.log(`  # [broker] ${line}`);
      for (const proc of processes.slice(firstProcess)) {
        for (const line of [...proc.output.stdout, ...proc.output.stderr].slice(-10)) console.log(`  # [${proc.name}] ${line}`);
      }
    }
  }

  const failed = results.filter((result) => !result.ok);
  console.log('');
  console.log(`# ${results.length - failed.length}/${results.length} passed in ${((Date.now() - runStarted) / 1000).toFixed(1)} s`);
  for (const result of results) {
    console.log(`#   ${result.ok ? 'pass' : 'FAIL'}  ${result.id.padEnd(3)} ${result.seconds.toFixed(2).padStart(6)} s  ${result.name}`);
  }
  for (const artifact of env.artifacts) console.log(`# screenshot: ${artifact}`);
  return failed.length === 0;
}

let exitCode = 1;
const watchdog = setTimeout(async () => {
  console.error(`test:browser: the run took longer than ${RUN_DEADLINE_MS / 1000} s; stopping`);
  await cleanupAll();
  process.exit(1);
}, RUN_DEADLINE_MS);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, async () => {
    console.error(`test:browser: ${signal}; stopping`);
    await cleanupAll();
    process.exit(130);
  });
}

try {
  exitCode = (await main()) ? 0 : 1;
} catch (error) {
  console.error(`test:browser: setup failed: ${error.stack ?? error}`);
  exitCode = 1;
} finally {
  await cleanupAll();
  clearTimeout(watchdog);
}
process.exit(exitCode);
