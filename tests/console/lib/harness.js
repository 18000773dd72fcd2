'use strict';
// Harness for the console tests: starts the real `herald` binary (and, for the cluster case, a
// throw-away redis-server) on free 127.0.0.1 ports with a TOML config file, launches the system
// Chromium through playwright-core, and gives the tests pusher-js clients and the Node server SDK.
// Only 127.0.0.1 is ever contacted.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const { HOST, delay, waitFor, freePort, canConnect } = require('../../support/net.js');
const SUITE_DIR = path.resolve(__dirname, '..');
const HERALD_BIN = path.resolve(SUITE_DIR, process.env.HERALD_BIN || '../../target/debug/herald');
const CHROMIUM = '/usr/bin/chromium';
// The brief's config has token = "test-token-123" (14 characters), but herald refuses admin tokens
// shorter than 16 ("configuration error: admin.token: at least 16 characters"), so the suite uses
// a longer one.
const TOKEN = 'test-token-123-console';
const APP = { id: 'app1', key: 'key1', secret: 'secret1' };
// Where the screenshot case writes console.png: a temporary directory, unless
// CONSOLE_SCREENSHOT_DIR names one (`CONSOLE_SCREENSHOT_DIR=../../docs` refreshes the docs' copy).
const SCREENSHOT_DIR = process.env.CONSOLE_SCREENSHOT_DIR
  ? path.resolve(process.env.CONSOLE_SCREENSHOT_DIR)
  : path.join(require('os').tmpdir(), 'herald-console-screenshot');
const PAGE_SOURCE = path.resolve(SUITE_DIR, '../../crates/herald-node/src/console/index.html');
// CONSOLE_PAGE_FROM_SOURCE=1: the browser gets the page from the source file instead of the copy
// embedded in the binary (for working on the page without rebuilding); the API is still herald's.
const PAGE_FROM_SOURCE = process.env.CONSOLE_PAGE_FROM_SOURCE === '1';





/** Plain HTTP request to 127.0.0.1; resolves {status, headers, body}. */
function request(port, method, urlPath, { headers = {}, body, timeout = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const h = { connection: 'close', ...headers };
    if (body !== undefined) h['content-length'] = Buffer.byteLength(body);
    const req = http.request({ host: HOST, port, method, path: urlPath, headers: h, agent: false, timeout }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { data += c; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath}: timed out`)));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/**
 * Open the console feed from node (not the browser) and collect its events.
 * Resolves once the response headers are in: {status, headers, events, close(), body}.
 */
function openFeed(port, query, token = TOKEN) {
  return new Promise((resolve, reject) => {
    const headers = { accept: 'text/event-stream' };
    if (token !== null) headers.authorization = `Bearer ${token}`;
    const req = http.request({ host: HOST, port, method: 'GET', path: `/console/api/feed?${query}`, headers, agent: false });
    req.on('error', reject);
    req.on('response', (res) => {
      const out = { status: res.statusCode, headers: res.headers, events: [], body: '', close: () => req.destroy() };
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        out.body += chunk.length + out.body.length < 1e6 ? chunk : '';
        buf += chunk;
        let i;
        while ((i = buf.search(/\r?\n\r?\n/)) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(buf.slice(i).match(/^\r?\n\r?\n/)[0].length + i);
          const data = block.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, ''));
          if (data.length) {
            try { out.events.push(JSON.parse(data.join('\n'))); } catch { out.events.push({ unparsable: data.join('\n') }); }
          }
        }
      });
      res.on('error', () => {});
      resolve(out);
    });
    req.end();
  });
}

// ---------------------------------------------------------------- processes

const liveProcs = new Set();
process.on('exit', () => {
  for (const p of liveProcs) { try { p.kill('SIGKILL'); } catch { /* gone */ } }
});

/** The environment for children: no HERALD_* variable (herald reads them as config overrides). */
function childEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^HERALD_/i.test(k)) env[k] = v;
  env.RUST_LOG = process.env.RUST_LOG || 'info';
  return env;
}

async function startRedis() {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-console-redis-'));
  const proc = spawn('redis-server', ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: 'ignore', env: childEnv() });
  liveProcs.add(proc);
  let spawnError = null;
  proc.on('error', (e) => { spawnError = e; });
  proc.on('exit', () => liveProcs.delete(proc));
  await waitFor(() => {
    if (spawnError) {
      throw Object.assign(new Error(`cannot start redis-server: ${spawnError.message} (Debian package redis-server)`), { fatal: true });
    }
    return canConnect(port);
  }, { timeout: 5000, what: `redis-server on ${port}` });
  return {
    port,
    async stop() {
      await stopProc(proc);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function stopProc(proc) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
    const t = setTimeout(() => { try { proc.kill('SIGKILL'); } catch { /* gone */ } }, 3000);
    proc.once('exit', () => { clearTimeout(t); resolve(); });
    try { proc.kill('SIGTERM'); } catch { clearTimeout(t); resolve(); }
  });
}

/**
 * Start herald with a config file. opts: nodeId (default n1), redisPort (cluster bus).
 * Returns {port, adminPort, nodeId, base, logPath, readLog(), stop()}.
 */
async function startHerald({ nodeId = 'n1', redisPort = null } = {}) {
  if (!fs.existsSync(HERALD_BIN)) {
    throw new Error(`herald binary not found at ${HERALD_BIN} (build it, or set HERALD_BIN)`);
  }
  for (let attempt = 0; ; attempt++) {
    try {
      return await spawnHerald(nodeId, redisPort);
    } catch (e) {
      // another process took a port between freePort() and herald's bind: retry on fresh ports
      if (attempt < 2 && /in use|AddrInUse/i.test(e.log || '')) continue;
      throw e;
    }
  }
}

async function spawnHerald(nodeId, redisPort) {
  const port = await freePort();
  let adminPort = await freePort();
  while (adminPort === port) adminPort = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-console-'));
  const configPath = path.join(dir, 'herald.toml');
  let toml = `[server]
listen = "${HOST}:${port}"
admin_listen = "${HOST}:${adminPort}"
node_id = "${nodeId}"

[admin]
token = "${TOKEN}"

[[apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
`;
  if (redisPort) {
    toml += `
[bus]
driver = "redis"
url = "redis://${HOST}:${redisPort}"
lease_seconds = 2
`;
  }
  fs.writeFileSync(configPath, toml);
  const logPath = path.join(dir, 'herald.log');
  const logFd = fs.openSync(logPath, 'a');
  const proc = spawn(HERALD_BIN, ['--config', configPath], { stdio: ['ignore', logFd, logFd], env: childEnv() });
  fs.closeSync(logFd);
  liveProcs.add(proc);
  let exited = null;
  let spawnError = null;
  proc.on('error', (e) => { spawnError = e; });
  proc.on('exit', (code, signal) => { exited = { code, signal }; liveProcs.delete(proc); });
  const readLog = () => { try { return fs.readFileSync(logPath, 'utf8'); } catch { return ''; } };

  try {
    await waitFor(async () => {
      if (spawnError) throw Object.assign(new Error(`cannot start ${HERALD_BIN}: ${spawnError.message}`), { fatal: true });
      if (exited) {
        throw Object.assign(new Error(`herald exited early (${JSON.stringify(exited)}); log:\n${readLog()}`),
          { fatal: true, log: readLog() });
      }
      const r = await request(adminPort, 'GET', '/healthz', { timeout: 1000 }).catch(() => null);
      return r && r.status === 200;
    }, { timeout: 15000, interval: 50, what: `herald /healthz on ${adminPort}` });
  } catch (e) {
    await stopProc(proc);
    const err = e.fatal ? e : new Error(`${e.message}; log:\n${readLog()}`);
    err.log = e.log || readLog();
    throw err;
  }

  // This suite needs a build with the console: say so plainly if /console is not there.
  const page = await request(adminPort, 'GET', '/console');
  if (page.status !== 200) {
    await stopProc(proc);
    throw new Error(`GET /console on ${HERALD_BIN} answered ${page.status}, not 200: this build has no debug console ` +
      '(set HERALD_BIN to a build with it)');
  }

  return {
    port, adminPort, nodeId, logPath, readLog,
    base: `http://${HOST}:${adminPort}`,
    async stop() {
      await stopProc(proc);
      if (process.env.CONSOLE_KEEP_LOGS !== '1') fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------- browser

const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: these tests drive the system Chromium; install the Debian package ` +
      '`chromium` (apt-get install chromium)');
  }
  const { chromium } = require('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

/**
 * A fresh browser context (own sessionStorage) and page on the console, 1280x800.
 * Records every request the page makes in page.requests ({url, method, headers}).
 * Page errors fail the test that reads page.errors.
 */
async function newPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.requests = [];
  page.errors = [];
  page.on('request', async (req) => {
    const entry = { url: req.url(), method: req.method(), headers: {} };
    page.requests.push(entry);
    try { entry.headers = await req.allHeaders(); } catch { /* page gone */ }
  });
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.setDefaultTimeout(5000);
  if (PAGE_FROM_SOURCE) {
    await page.route((url) => url.pathname === '/console', (route) =>
      route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: fs.readFileSync(PAGE_SOURCE) }));
  }
  return { context, page };
}

/** Load the console with the token in the fragment and wait until the feed is live. */
async function openConsole(page, herald) {
  await page.goto(`${herald.base}/console#token=${TOKEN}`);
  await page.getByTestId('app-view').waitFor({ state: 'visible' });
  await waitForLive(page);
}

async function waitForLive(page) {
  await page.waitForFunction(() => document.querySelector('[data-testid=feed-status]').dataset.state === 'live');
}

/** Locator of the rows of `type` (optionally with a given channel). */
function rows(page, type, channel) {
  let sel = `[data-testid=row][data-type="${type}"]`;
  if (channel !== undefined) sel += `[data-channel="${channel}"]`;
  return page.locator(sel);
}

// ---------------------------------------------------------------- Pusher clients

const clients = new Set();

/** pusher-js client to herald's WebSocket port; resolves once connected (with socket_id). */
async function pusherClient(port, opts = {}) {
  const Pusher = require('pusher-js');
  const client = new Pusher(APP.key, {
    wsHost: HOST, wsPort: port, forceTLS: false, enabledTransports: ['ws'], cluster: 'mt1',
    ...opts,
  });
  clients.add(client);
  await waitFor(() => client.connection.state === 'connected' && client.connection.socket_id,
    { timeout: 5000, what: 'pusher-js connected' });
  return client;
}

/** Subscribe and wait for pusher:subscription_succeeded (or reject on subscription_error). */
function subscribe(client, name, timeout = 5000) {
  const ch = client.subscribe(name);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`subscription to ${name} timed out`)), timeout);
    ch.bind('pusher:subscription_succeeded', () => { clearTimeout(t); resolve(ch); });
    ch.bind('pusher:subscription_error', (e) => { clearTimeout(t); reject(Object.assign(new Error(`subscription to ${name} refused`), { detail: e })); });
  });
}

function disconnectAll() {
  for (const c of clients) { try { c.disconnect(); } catch { /* gone */ } }
  clients.clear();
}

/** Node server SDK pointed at herald's HTTP port. */
function sdk(port) {
  const PusherServer = require('pusher');
  return new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: HOST, port, useTLS: false, timeout: 5000 });
}

module.exports = {
  HOST, TOKEN, APP, HERALD_BIN, SCREENSHOT_DIR, PAGE_SOURCE, PAGE_FROM_SOURCE, delay, waitFor, freePort, request, openFeed,
  startHerald, startRedis, launchBrowser, newPage, openConsole, waitForLive, rows,
  pusherClient, subscribe, disconnectAll, sdk,
};
