'use strict';
// Conformance harness: starts the real `herald` binary with a temp config and
// gives tests official clients (pusher-js, the `pusher` Node SDK, raw `ws`)
// pointed at it. Only 127.0.0.1 is ever contacted.

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const PusherJS = require('pusher-js');
const PusherServer = require('pusher');
const WebSocket = require('ws');

const { HOST, delay, waitFor, freePort, canConnect } = require('../support/net.js');
const SUITE_DIR = __dirname;
const HERALD_BIN = process.env.HERALD_BIN
  ? path.resolve(process.env.HERALD_BIN)
  : path.resolve(SUITE_DIR, '../../target/debug/herald');

const APPS = {
  app1: { id: 'app1', key: 'key1', secret: 'secret1', client_events: true },
  app2: { id: 'app2', key: 'key2', secret: 'secret2', client_events: false, max_connections: 3 },
  // protocol-7 extras switched on: watchlists, subscription counts, short cache TTL
  app3: {
    id: 'app3', key: 'key3', secret: 'secret3', client_events: true,
    watchlist_events: true, subscription_count_events: true, cache_ttl: 2,
  },
  // authorized connections: unauthorized sockets are closed (4009) after 1 s
  app4: { id: 'app4', key: 'key4', secret: 'secret4', client_events: true, authorized_connections_timeout: 1 },
};

const SOCKET_ID_RE = /^\d+\.\d+$/;
// How long to wait for an expected frame/event. Herald runs locally, so anything
// slower than this is a failure; kept short so a broken server fails fast.
const T = Number(process.env.CONFORMANCE_TIMEOUT_MS || 3000);

// ---------------------------------------------------------------------------
// small async helpers



/** Promise that resolves when `bindable.bind(event)` fires (first time); withMeta -> {data, meta}. */
function once(bindable, event, { timeout = T, what, withMeta = false } = {}) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      bindable.unbind(event, handler);
      reject(new Error(`timed out after ${timeout} ms waiting for ${what || event}`));
    }, timeout);
    function handler(data, meta) {
      clearTimeout(t);
      bindable.unbind(event, handler);
      resolve(withMeta ? { data, meta } : data);
    }
    bindable.bind(event, handler);
  });
}

// ---------------------------------------------------------------------------
// ports / process management



/** Plain HTTP GET to 127.0.0.1; resolves {status, body} or null on connection error. */
function httpGet(port, urlPath, { timeout = 1000 } = {}) {
  return new Promise((resolve) => {
    const req = http.get({ host: HOST, port, path: urlPath, timeout, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, body, headers: res.headers }));
    });
    req.on('timeout', () => { req.destroy(); resolve(null); });
    req.on('error', () => resolve(null));
  });
}

/** Raw HTTP request (for hand-signed API calls). */
function httpRequest(port, method, urlPath, body) {
  return new Promise((resolve, reject) => {
    const headers = { connection: 'close' };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = Buffer.byteLength(body);
    }
    const req = http.request({ host: HOST, port, method, path: urlPath, headers, agent: false }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { data += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: data, headers: res.headers }));
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function tomlValue(v) {
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}

function configToml(port, adminPort) {
  let out = `[server]
listen = "${HOST}:${port}"
admin_listen = "${HOST}:${adminPort}"
activity_timeout = 120
`;
  for (const a of Object.values(APPS)) {
    out += '\n[[apps]]\n';
    for (const [k, v] of Object.entries(a)) out += `${k} = ${tomlValue(v)}\n`;
    // CONFORMANCE_HISTORY=1: every channel keeps history, and stock clients must not notice.
    if (process.env.CONFORMANCE_HISTORY === '1') {
      out += '\n[[apps.history]]\nprefix = ""\nsize = 100\nttl = 300\n';
    }
  }
  return out;
}

/**
 * Environment for the child: herald treats every HERALD_* variable as a config
 * override and rejects unknown keys, so HERALD_BIN (ours) and any stray
 * HERALD_* from the caller's shell must not leak into it; the temp config file
 * is the only configuration source.
 */
function heraldEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^HERALD_/i.test(k)) env[k] = v;
  env.RUST_LOG = process.env.RUST_LOG || 'info';
  env.RUST_BACKTRACE = '1';
  return env;
}

const liveProcs = new Set();
process.on('exit', () => {
  for (const p of liveProcs) { try { p.kill('SIGKILL'); } catch { /* gone */ } }
});

// CONFORMANCE_SPLIT=1: every test runs against two nodes on a real redis-server, with the
// WebSocket clients on one node and the HTTP API (SDK and signed requests) on the other.
const SPLIT = process.env.CONFORMANCE_SPLIT === '1';

/** A throw-away redis-server on a free port; resolves {port, proc}. */
async function startRedis() {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-conf-redis-'));
  const proc = spawn('redis-server', ['--port', String(port), '--bind', HOST, '--save', '',
    '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  liveProcs.add(proc);
  proc.on('exit', () => liveProcs.delete(proc));
  await waitFor(() => canConnect(port), { timeout: 5000, what: `redis-server on ${port}` });
  return { port, proc, dir };
}

function busToml(redisPort) {
  return `\n[bus]\ndriver = "redis"\nurl = "redis://${HOST}:${redisPort}"\nlease_seconds = 5\n`;
}

async function spawnOnce(extraToml = '', nodeId = undefined) {
  const port = await freePort();
  let adminPort = await freePort();
  while (adminPort === port) adminPort = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-conf-'));
  const configPath = path.join(dir, 'herald.toml');
  fs.writeFileSync(configPath, configToml(port, adminPort) + extraToml);
  const logPath = path.join(dir, 'herald.log');
  const logFd = fs.openSync(logPath, 'a');

  const env = heraldEnv();
  if (nodeId) env.HERALD_SERVER__NODE_ID = nodeId;
  const proc = spawn(HERALD_BIN, ['--config', configPath], {
    stdio: ['ignore', logFd, logFd],
    env,
  });
  fs.closeSync(logFd);
  liveProcs.add(proc);
  let exited = null;
  proc.on('exit', (code, signal) => { exited = { code, signal }; liveProcs.delete(proc); });

  const readLog = () => { try { return fs.readFileSync(logPath, 'utf8'); } catch { return ''; } };

  try {
    await waitUntilUp(proc, port, adminPort, () => exited, readLog);
  } catch (e) {
    try { proc.kill('SIGKILL'); } catch { /* gone */ }
    if (process.env.CONFORMANCE_KEEP_LOGS !== '1') fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }

  return {
    port, adminPort, proc, dir, configPath, logPath, readLog,
    get exited() { return exited; },
  };
}

async function waitUntilUp(proc, port, adminPort, getExited, readLog) {
  const spawnError = new Promise((resolve) => proc.once('error', resolve));
  const deadline = Date.now() + 15000;
  let errored = null;
  spawnError.then((e) => { errored = e; });
  for (;;) {
    if (errored) throw new Error(`cannot spawn ${HERALD_BIN}: ${errored.message}`);
    const exited = getExited();
    if (exited) {
      const err = new Error(`herald exited early (${JSON.stringify(exited)}); log:\n${readLog()}`);
      err.exitedEarly = true;
      err.log = readLog();
      throw err;
    }
    if (await canConnect(port)) break;
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`herald did not accept connections on ${port} within 15 s; log:\n${readLog()}`);
    }
    await delay(50);
  }

  // Admin /healthz: if the admin port answers, wait for a 200 (up to 5 s);
  // if nothing listens there, don't insist (admin listener is optional here).
  const hzDeadline = Date.now() + 5000;
  let refusedSince = Date.now();
  for (;;) {
    const r = await httpGet(adminPort, '/healthz');
    if (r && r.status === 200) break;
    if (r) refusedSince = Date.now();
    if (!r && Date.now() - refusedSince > 1000) break; // admin port not answering at all
    if (Date.now() > hzDeadline) break;
    await delay(50);
  }
}

/**
 * Start herald. Returns a handle with ports, SDK/client factories and stop().
 */
async function startHerald({ extraToml = '' } = {}) {
  if (!fs.existsSync(HERALD_BIN)) {
    throw new Error(`herald binary not found at ${HERALD_BIN} (build it or set HERALD_BIN)`);
  }
  const spawnRetrying = async (toml, nodeId) => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await spawnOnce(toml, nodeId);
      } catch (e) {
        // port race with another process: retry with fresh ports
        if (e.exitedEarly && attempt < 2 && /in use|AddrInUse|address already/i.test(e.log || '')) continue;
        throw e;
      }
    }
  };
  if (!SPLIT) return new Herald(await spawnRetrying(extraToml));
  const redis = await startRedis();
  const toml = extraToml + busToml(redis.port);
  const suffix = crypto.randomBytes(4).toString('hex');
  const ws = await spawnRetrying(toml, `conf-ws-${suffix}`);
  const api = await spawnRetrying(toml, `conf-api-${suffix}`);
  return new Herald(ws, { api, redis });
}

// ---------------------------------------------------------------------------

class Herald {
  /**
   * `inst` is the node clients connect to; in split mode `split.api` is the node the HTTP
   * API goes to (`apiPort`) and `split.redis` their bus.
   */
  constructor(inst, split = null) {
    Object.assign(this, inst);
    this.split = split;
    this.apiPort = split ? split.api.port : inst.port;
    this.clients = new Set();
    // one keep-alive agent for all SDK instances so stop() can close idle HTTP connections
    this.agent = new http.Agent({ keepAlive: true });
  }

  /** Official Node server SDK bound to this herald. */
  sdk(app = 'app1', overrides = {}) {
    const a = APPS[app];
    return new PusherServer({
      appId: a.id, key: a.key, secret: a.secret,
      host: HOST, port: this.apiPort, useTLS: false, timeout: 5000, agent: this.agent,
      ...overrides,
    });
  }

  /**
   * pusher-js client, configured as a browser would, with channelAuthorization
   * served by the SDK (`server.authorizeChannel`).
   * opts.user: presence data {user_id, user_info}
   * opts.authorize: custom (socketId, channelName) => {auth, channel_data?}
   * opts.signin: user data {id, user_info?, watchlist?} for userAuthentication
   *   (signed by the SDK's authenticateUser); opts.authenticateUser: custom
   *   socketId => {auth, user_data}. pusher.signin() is left to the test.
   */
  client(opts = {}) {
    const app = opts.app || 'app1';
    const key = opts.key || APPS[app].key;
    const server = opts.server || this.sdk(app);
    const authorize = opts.authorize ||
      ((socketId, channelName) => server.authorizeChannel(
        socketId, channelName, channelName.startsWith('presence-') ? opts.user : undefined));
    const authenticateUser = opts.authenticateUser ||
      ((socketId) => server.authenticateUser(socketId, opts.signin));
    const pusher = new PusherJS(key, {
      wsHost: HOST,
      wsPort: this.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      cluster: 'mt1',
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, cb) => {
          try { cb(null, authorize(socketId, channelName)); } catch (e) { cb(e, null); }
        },
      },
      userAuthentication: {
        customHandler: ({ socketId }, cb) => {
          try { cb(null, authenticateUser(socketId)); } catch (e) { cb(e, null); }
        },
      },
      ...(opts.pusherOptions || {}),
    });
    // diagnostics: every decoded frame and every state change
    pusher.frames = [];
    pusher.states = [pusher.connection.state]; // constructor already started connecting
    pusher.errors = [];
    pusher.connection.bind('message', (m) => pusher.frames.push(m));
    pusher.connection.bind('state_change', (s) => pusher.states.push(s.current));
    pusher.connection.bind('error', (e) => pusher.errors.push(e));
    this.clients.add(pusher);
    return pusher;
  }

  async connectedClient(opts) {
    const p = this.client(opts);
    await waitForState(p, 'connected');
    return p;
  }

  /** Raw WebSocket to /app/KEY with a frame recorder. */
  raw(key = 'key1', query = 'protocol=7&client=js&version=8.4.0&flash=false') {
    const ws = new WebSocket(`ws://${HOST}:${this.port}/app/${key}?${query}`);
    const rc = new RawClient(ws);
    this.clients.add(rc);
    return rc;
  }

  async rawConnected(key) {
    const rc = this.raw(key);
    const est = await rc.next((f) => f.event === 'pusher:connection_established');
    rc.socketId = JSON.parse(est.data).socket_id;
    return rc;
  }

  /** GET/POST signed with a caller-chosen timestamp (for auth checks). */
  async signedRequest({ app = 'app1', method = 'GET', path: p, params = {}, body, timestamp, secret }) {
    const a = APPS[app];
    const q = {
      auth_key: a.key,
      auth_timestamp: String(timestamp ?? Math.floor(Date.now() / 1000)),
      auth_version: '1.0',
      ...params,
    };
    if (body !== undefined) q.body_md5 = crypto.createHash('md5').update(body).digest('hex');
    const qs = Object.keys(q).sort().map((k) => `${k}=${q[k]}`).join('&');
    const sig = crypto.createHmac('sha256', secret || a.secret)
      .update(`${method}\n${p}\n${qs}`).digest('hex');
    const enc = Object.keys(q).sort().map((k) => `${k}=${encodeURIComponent(q[k])}`).join('&');
    const url = `${p}?${enc}&auth_signature=${sig}`;
    return httpRequest(this.apiPort, method, url, body);
  }

  async stop() {
    for (const c of this.clients) {
      try { c.disconnect ? c.disconnect() : c.close(); } catch { /* ignore */ }
    }
    this.clients.clear();
    this.agent.destroy();
    await delay(100); // let herald see the client sockets close before draining
    const nodes = [{ proc: this.proc, exited: () => this.exited }];
    if (this.split) nodes.push({ proc: this.split.api.proc, exited: () => this.split.api.exited });
    await Promise.all(nodes.map(async ({ proc, exited }) => {
      if (exited()) return;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      // herald drains gracefully; a test run does not need to wait for the whole window
      const t = setTimeout(() => { try { proc.kill('SIGKILL'); } catch { /* ignore */ } }, 1500);
      await gone;
      clearTimeout(t);
    }));
    if (this.split) {
      try { this.split.redis.proc.kill('SIGKILL'); } catch { /* gone */ }
      try { fs.rmSync(this.split.redis.dir, { recursive: true, force: true }); } catch { /* ignore */ }
    }
    this.cleanup();
  }

  /** Remove the temp config/log dir unless CONFORMANCE_KEEP_LOGS=1. */
  cleanup() {
    if (process.env.CONFORMANCE_KEEP_LOGS === '1') return;
    for (const dir of [this.dir, this.split && this.split.api.dir]) {
      if (dir) try { fs.rmSync(dir, { recursive: true, force: true }); } catch { /* ignore */ }
    }
  }
}

function waitForState(pusher, state, timeout = T) {
  if (pusher.connection.state === state) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      pusher.connection.unbind('state_change', h);
      reject(new Error(`timed out waiting for connection state ${state}; states seen: ` +
        `${pusher.states.join(' -> ')}; frames: ${JSON.stringify(pusher.frames)}`));
    }, timeout);
    function h(s) {
      if (s.current === state) {
        clearTimeout(t);
        pusher.connection.unbind('state_change', h);
        resolve();
      }
    }
    pusher.connection.bind('state_change', h);
  });
}

/** Subscribe with pusher-js and wait for pusher:subscription_succeeded. */
async function subscribe(pusher, name, timeout = T) {
  const ch = pusher.subscribe(name);
  if (ch.subscribed) return ch;
  try {
    await once(ch, 'pusher:subscription_succeeded', { timeout, what: `subscription_succeeded on ${name}` });
  } catch (e) {
    e.message += `; frames: ${JSON.stringify(pusher.frames)}`;
    throw e;
  }
  return ch;
}

// ---------------------------------------------------------------------------

class RawClient {
  constructor(ws) {
    this.ws = ws;
    this.frames = [];        // parsed JSON frames (or {raw} when not JSON)
    this.waiters = [];
    this.closed = null;      // {code, reason}
    this.openPromise = new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    this.openPromise.catch(() => {});
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => {
      let f;
      try { f = JSON.parse(data.toString('utf8')); } catch { f = { raw: data.toString('utf8'), isBinary }; }
      this.frames.push(f);
      this._check();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this._check();
    });
  }

  _check() {
    for (const w of [...this.waiters]) {
      const idx = this.frames.findIndex((f, i) => i >= w.from && w.pred(f));
      if (idx >= 0) {
        w.done(this.frames[idx], idx);
      } else if (this.closed && w.rejectOnClose) {
        w.fail(new Error(`socket closed (${this.closed.code} ${this.closed.reason}) while waiting for ${w.what}; frames: ${JSON.stringify(this.frames)}`));
      }
    }
  }

  /** Wait for the first frame (from index `from`) matching pred. */
  next(pred, { timeout = T, from = 0, what = 'frame' } = {}) {
    return new Promise((resolve, reject) => {
      const w = {
        pred, from, what, rejectOnClose: true,
        done: (f, idx) => { clearTimeout(w.t); this.waiters.splice(this.waiters.indexOf(w), 1); w.index = idx; resolve(f); },
        fail: (e) => { clearTimeout(w.t); this.waiters.splice(this.waiters.indexOf(w), 1); reject(e); },
      };
      w.t = setTimeout(() => w.fail(new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames)}; closed: ${JSON.stringify(this.closed)}`)), timeout);
      this.waiters.push(w);
      this._check();
    });
  }

  /** Wait for close; resolves {code, reason}. */
  waitClose(timeout = T) {
    if (this.closed) return Promise.resolve(this.closed);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timed out waiting for close; frames: ${JSON.stringify(this.frames)}`)), timeout);
      this.ws.once('close', () => { clearTimeout(t); resolve(this.closed); });
    });
  }

  send(obj) { this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj)); }
  sendBinary(buf) { this.ws.send(buf, { binary: true }); }

  async ping() {
    const from = this.frames.length;
    this.send({ event: 'pusher:ping', data: {} });
    return this.next((f) => f.event === 'pusher:pong', { from, what: 'pusher:pong' });
  }

  async subscribe(channel, extra = {}) {
    const from = this.frames.length;
    this.send({ event: 'pusher:subscribe', data: { auth: '', ...extra, channel } });
    return this.next((f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === channel,
      { from, what: `subscription_succeeded for ${channel}` });
  }

  close() { try { this.ws.terminate(); } catch { /* ignore */ } }
}

/** Parse a frame's data whether herald double-encoded it or not. */
function frameData(f) {
  if (typeof f.data === 'string') {
    try { return JSON.parse(f.data); } catch { return f.data; }
  }
  return f.data;
}

module.exports = {
  HOST, APPS, HERALD_BIN, SOCKET_ID_RE,
  startHerald, waitFor, waitForState, once, subscribe, delay, frameData, httpGet, httpRequest,
  PusherJS, PusherServer, WebSocket,
};
