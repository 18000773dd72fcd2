'use strict';
// Test harness: real herald nodes, throw-away redis-servers, a TCP proxy that decides when a
// client may reconnect (and to which node), and pusher-js clients. Only 127.0.0.1 is used.

const { spawn, execFile } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const assert = require('node:assert/strict');

const PusherJS = require('pusher-js');
const PusherServer = require('pusher');

const { HOST, delay, waitFor, freePort, canConnect } = require('../../tests/support/net.js');
// HERALD_BIN as given (relative to the working directory); by default the workspace's debug build.
const HERALD_BIN = process.env.HERALD_BIN
  ? path.resolve(process.env.HERALD_BIN)
  : path.resolve(__dirname, '../../target/debug/herald');
const APP = { appId: 'app1', key: 'key1', secret: 'secret1' };





function httpStatus(port, urlPath) {
  return new Promise((resolve) => {
    const req = http.get({ host: HOST, port, path: urlPath, timeout: 1000, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => { req.destroy(); resolve(null); });
    req.on('error', () => resolve(null));
  });
}

// Every child is killed when the test process ends, whatever happened.
const children = new Set();
process.on('exit', () => {
  for (const p of children) { try { p.kill('SIGKILL'); } catch { /* gone */ } }
});

function track(proc) {
  children.add(proc);
  proc.exited = new Promise((resolve) => proc.once('exit', (code, signal) => {
    children.delete(proc);
    resolve({ code, signal });
  }));
  return proc;
}

async function killProc(proc, signal = 'SIGKILL') {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill(signal);
  await proc.exited;
}

function tmpDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

// ---------------------------------------------------------------------------
// Redis

/** A throw-away redis-server; `restart()` brings it back empty on the same port. */
class Redis {
  static async start(extraArgs = [], port = null) {
    const r = new Redis(port || await freePort(), extraArgs);
    await r.launch();
    return r;
  }

  constructor(port, extraArgs) {
    this.port = port;
    this.extraArgs = extraArgs;
    this.url = `redis://${HOST}:${port}`;
  }

  async launch() {
    this.dir = tmpDir('herald-js-redis-');
    this.proc = track(spawn('redis-server', ['--port', String(this.port), '--bind', HOST,
      '--save', '', '--appendonly', 'no', '--dir', this.dir, ...this.extraArgs],
    { stdio: 'ignore' }));
    await waitFor(() => canConnect(this.port), { what: `redis-server on ${this.port}` });
  }

  async kill() {
    await killProc(this.proc);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  async restartEmpty() {
    await this.kill();
    await this.launch();
  }
}

function redisCli(args) {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', args, { timeout: 20000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`redis-cli ${args.join(' ')}: ${err.message}\n${stdout}${stderr}`));
      else resolve(stdout);
    });
  });
}

/** A port P whose cluster bus port P + 10000 is free as well. */
async function clusterPort() {
  for (;;) {
    const p = await freePort();
    if (p + 10000 < 65536 && !(await canConnect(p + 10000))) return p;
  }
}

/** A Redis Cluster of three masters; resolves {urls, stop()}. */
async function startRedisCluster() {
  const nodes = [];
  for (let i = 0; i < 3; i++) {
    const port = await clusterPort();
    nodes.push(await Redis.start(['--cluster-enabled', 'yes',
      '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '2000'], port));
  }
  await redisCli(['--cluster', 'create', ...nodes.map((n) => `${HOST}:${n.port}`), '--cluster-yes']);
  for (const n of nodes) {
    await waitFor(async () => /cluster_state:ok/.test(
      await redisCli(['-h', HOST, '-p', String(n.port), 'cluster', 'info'])),
    { timeout: 15000, interval: 100, what: `cluster_state:ok on ${n.port}` });
  }
  return {
    nodes,
    urls: nodes.map((n) => n.url),
    async stop() { for (const n of nodes) await n.kill(); },
  };
}

// ---------------------------------------------------------------------------
// Herald

const HISTORY_RULES = [
  ['orders.', 100], ['private-orders.', 100], ['presence-orders.', 100],
  ['private-encrypted-orders.', 100], ['small.', 5],
];

function configToml({ port, adminPort, nodeId, bus }) {
  let toml = `[server]
listen = "${HOST}:${port}"
admin_listen = "${HOST}:${adminPort}"
node_id = "${nodeId}"
`;
  if (bus && bus.url) {
    toml += `\n[bus]\ndriver = "redis"\nurl = "${bus.url}"\nlease_seconds = 2\n`;
  } else if (bus && bus.clusterUrls) {
    toml += `\n[bus]\ndriver = "redis"\ncluster_urls = ${JSON.stringify(bus.clusterUrls)}\nlease_seconds = 2\n`;
  }
  toml += `\n[[apps]]\nid = "${APP.appId}"\nkey = "${APP.key}"\nsecret = "${APP.secret}"\n`;
  for (const [prefix, size] of HISTORY_RULES) {
    toml += `\n[[apps.history]]\nprefix = "${prefix}"\nsize = ${size}\nttl = 300\n`;
  }
  return toml;
}

/** The child's environment: herald reads HERALD_* variables as configuration. */
function heraldEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^HERALD_/i.test(k)) env[k] = v;
  return env;
}

let nodeCounter = 0;

class Herald {
  /** Starts a node; `bus`: {url} or {clusterUrls} for Redis, nothing for a single node. */
  static async start({ bus } = {}) {
    if (!fs.existsSync(HERALD_BIN)) {
      throw new Error(`herald binary not found at ${HERALD_BIN}: build it or set HERALD_BIN`);
    }
    const h = new Herald();
    h.port = await freePort();
    do h.adminPort = await freePort(); while (h.adminPort === h.port);
    h.nodeId = `js-${process.pid}-${++nodeCounter}`;
    h.dir = tmpDir('herald-js-');
    const config = path.join(h.dir, 'herald.toml');
    fs.writeFileSync(config, configToml({ ...h, bus }));
    h.logPath = path.join(h.dir, 'herald.log');
    const log = fs.openSync(h.logPath, 'a');
    h.proc = track(spawn(HERALD_BIN, ['--config', config],
      { stdio: ['ignore', log, log], env: heraldEnv() }));
    fs.closeSync(log);
    await waitFor(async () => {
      if (h.proc.exitCode !== null) throw new Error(`herald exited:\n${h.log()}`);
      return (await httpStatus(h.adminPort, '/healthz')) === 200;
    }, { timeout: 15000, interval: 50, what: `herald ${h.nodeId} /healthz` });
    h.sdk = new PusherServer({ ...APP, host: HOST, port: h.port, useTLS: false, timeout: 5000 });
    h.unconfirmed = [];
    return h;
  }

  log() {
    try { return fs.readFileSync(this.logPath, 'utf8'); } catch { return ''; }
  }

  async kill(signal = 'SIGKILL') {
    await killProc(this.proc, signal);
  }

  async stop() {
    await this.kill('SIGKILL');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /**
   * Publishes one event to a history channel. A 503 published nothing: retried. A 504 "may
   * have been delivered" (Herald answers it while the cluster recovers, e.g. for about 3 s
   * after a node with subscribers of the channel crashed): for a history channel the stream
   * tells, so once a late publish can no longer land (about a second, per the README) the
   * event counts as published if the stream has it and is retried if not, never sent twice.
   * Every 504 is kept in `unconfirmed` for the report. Anything else fails the test.
   */
  async publish(channel, event, data, { timeout = 10000 } = {}) {
    const deadline = Date.now() + timeout;
    for (;;) {
      let status;
      try {
        await this.sdk.trigger(channel, event, data);
        return;
      } catch (e) {
        status = e.status;
        if ((status !== 503 && status !== 504) || Date.now() > deadline) {
          throw new Error(`publish ${event} on ${channel} via ${this.nodeId}: ` +
            `${e.status || ''} ${e.message} ${e.body || ''}`);
        }
        if (status === 504) this.unconfirmed.push({ channel, event, data, body: e.body });
      }
      if (status === 504) {
        await delay(1200);
        const stream = await waitFor(() => this.history(channel, { limit: 100 }).catch(() => null),
          { timeout: 5000, what: `the history of ${channel}` });
        const stored = stream.events.some((ev) => ev.event === event && ev.data === JSON.stringify(data));
        this.unconfirmed[this.unconfirmed.length - 1].inStream = stored;
        if (stored) return;
      } else {
        await delay(50);
      }
    }
  }

  /** The channel's history from the HTTP API ({epoch, offset, events}). */
  async history(channel, params = {}) {
    const res = await this.sdk.get({ path: `/channels/${channel}/history`, params });
    return res.json();
  }
}

// ---------------------------------------------------------------------------
// TCP proxy: the client's only way to a node, so a test decides when it reconnects and where.

/**
 * Splits what a WebSocket server sends into its HTTP response head and whole frames (server
 * frames are not masked); each unit as {bytes, text}, text being a text frame's payload.
 */
class ServerFrames {
  constructor() {
    this.buf = Buffer.alloc(0);
    this.inHead = true;
  }

  push(chunk) {
    this.buf = Buffer.concat([this.buf, chunk]);
    const out = [];
    if (this.inHead) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end === -1) return out;
      out.push({ bytes: this.buf.subarray(0, end + 4), text: null });
      this.buf = this.buf.subarray(end + 4);
      this.inHead = false;
    }
    for (;;) {
      if (this.buf.length < 2) return out;
      const opcode = this.buf[0] & 0x0f;
      let len = this.buf[1] & 0x7f;
      let head = 2;
      if (len === 126) {
        if (this.buf.length < 4) return out;
        len = this.buf.readUInt16BE(2);
        head = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) return out;
        len = Number(this.buf.readBigUInt64BE(2));
        head = 10;
      }
      if (this.buf.length < head + len) return out;
      const bytes = this.buf.subarray(0, head + len);
      out.push({ bytes, text: opcode === 1 ? bytes.subarray(head).toString('utf8') : null });
      this.buf = this.buf.subarray(head + len);
    }
  }
}

// The client's only way: the client's only way to a node, so a test decides when it reconnects and where.

class Proxy {
  static async start(targetPort) {
    const p = new Proxy(targetPort);
    await new Promise((resolve, reject) => {
      p.server.once('error', reject);
      p.server.listen(0, HOST, resolve);
    });
    p.port = p.server.address().port;
    return p;
  }

  constructor(targetPort) {
    this.target = targetPort;
    this.holding = false;
    this.pairs = new Set(); // {client, upstream} piped both ways
    this.held = []; // {client, chunks, onData}: accepted, not yet forwarded
    this.accepted = 0;
    this.forwardedTo = []; // the target port of each connection forwarded, in order
    this.cutAfter = null; // (frame text) => true: cut that connection right after the frame
    this.server = net.createServer((client) => this.accept(client));
  }

  accept(client) {
    this.accepted++;
    client.setNoDelay(true);
    client.on('error', () => client.destroy());
    if (!this.holding) {
      this.forward(client, []);
      return;
    }
    // Held: the client's TCP connection is open but goes nowhere yet. pusher-js waits for the
    // WebSocket handshake (up to 15 s) and retries only then, so holding gives a reconnect
    // that completes the moment the test releases it (a refused one would wait 15 s).
    const entry = { client, chunks: [] };
    entry.onData = (chunk) => entry.chunks.push(chunk);
    client.on('data', entry.onData);
    client.once('close', () => { this.held = this.held.filter((e) => e !== entry); });
    this.held.push(entry);
  }

  forward(client, chunks) {
    this.forwardedTo.push(this.target);
    const upstream = net.connect({ host: HOST, port: this.target });
    upstream.setNoDelay(true);
    const pair = { client, upstream };
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const c of chunks) upstream.write(c);
    client.pipe(upstream);
    // The server's side is forwarded frame by frame, so a test can cut right after one.
    const frames = new ServerFrames();
    upstream.on('data', (chunk) => {
      for (const { bytes, text } of frames.push(chunk)) {
        if (!this.pairs.has(pair)) return;
        client.write(bytes);
        if (text !== null && this.cutAfter && this.cutAfter(text)) {
          this.cutAfter = null;
          this.pairs.delete(pair);
          upstream.destroy();
          client.end(); // after what was written: the client gets this frame, then nothing
          return;
        }
      }
    });
    for (const s of [client, upstream]) {
      s.on('error', end);
      s.on('close', end);
    }
  }

  /** New connections wait until release(). */
  hold() { this.holding = true; }

  /** Forwards the waiting connections (to the current target) and lets new ones through. */
  release() {
    this.holding = false;
    const held = this.held;
    this.held = [];
    for (const e of held) {
      e.client.removeListener('data', e.onData);
      this.forward(e.client, e.chunks);
    }
  }

  /** Cuts every forwarded connection at once (the client sees its socket close, unclean). */
  cut() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  setTarget(port) { this.target = port; }

  /** Cut, keep the client away until `whileAway` is done, then let it reconnect. */
  async outage(whileAway) {
    this.hold();
    this.cut();
    await whileAway();
    // The client has tried to reconnect while away, so the reconnect is its own.
    await waitFor(() => this.held.length > 0, { timeout: 5000, what: 'the client to try to reconnect' });
    this.release();
  }

  async close() {
    this.holding = false;
    for (const e of this.held) e.client.destroy();
    this.held = [];
    this.cut();
    await new Promise((r) => this.server.close(() => r()));
  }
}

// ---------------------------------------------------------------------------
// Clients

/** pusher-js as a browser would configure it, signing private/presence subscribes with the SDK. */
function pusherClient(port, { sdk, user, options = {} } = {}) {
  return new PusherJS(APP.key, {
    wsHost: HOST,
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        try {
          cb(null, sdk.authorizeChannel(socketId, channelName,
            channelName.startsWith('presence-') ? user : undefined));
        } catch (e) {
          cb(e, null);
        }
      },
    },
    ...options,
  });
}

function waitConnected(pusher, timeout = 5000) {
  return waitFor(() => pusher.connection.state === 'connected',
    { timeout, what: 'pusher-js to connect' });
}

/**
 * Records, in arrival order, every event a channel emits to its bindings (pusher:* included),
 * as [name, data].
 */
function record(channel) {
  const log = [];
  channel.bind_global((name, data) => log.push([name, data]));
  return log;
}

/** The events of `log` named `name`, their data. */
function named(log, name) {
  return log.filter(([n]) => n === name).map(([, d]) => d);
}

/** The log without pusher:* events (what the application sees of the channel). */
function appEvents(log) {
  return log.filter(([n]) => !n.startsWith('pusher:'));
}

function subscribed(channel, timeout = 5000) {
  return waitFor(() => channel.subscribed, { timeout, what: `subscription to ${channel.name}` });
}

/** Waits until no new entry arrived in `log` for `ms` (nothing else is on its way). */
async function settle(log, ms = 300) {
  let n = -1;
  while (n !== log.length) {
    n = log.length;
    await delay(ms);
  }
}

// ---------------------------------------------------------------------------
// Steps shared by test files

const evt = (n) => ['evt', { n }];

async function publishRange(channel, from, to, via) {
  for (let n = from; n <= to; n++) await via.publish(channel, 'evt', { n });
}

/**
 * A client on node A (through the proxy) gets events published on B; while it is away the
 * proxy is pointed at B and events are published on A; it resumes on B with exactly those.
 */
async function acrossNodes(t, a, b, name) {
  const { withRecovery } = require('herald-recovery');
  const proxy = await Proxy.start(a.port);
  const pusher = withRecovery(pusherClient(proxy.port));
  t.after(async () => { pusher.disconnect(); await proxy.close(); });
  await waitConnected(pusher);
  const channel = pusher.subscribe(name);
  const log = record(channel);
  await subscribed(channel);
  await publishRange(name, 1, 2, b);
  await waitFor(() => named(log, 'evt').length === 2, { what: 'events published on B, on A' });

  proxy.setTarget(b.port);
  await proxy.outage(() => publishRange(name, 3, 5, a));
  await waitFor(() => named(log, 'evt').length === 5, { what: 'the missed events, on B' });
  await publishRange(name, 6, 7, a);
  await waitFor(() => named(log, 'evt').length === 7, { what: 'live events published on A, on B' });
  await settle(log);

  assert.deepEqual(proxy.forwardedTo, [a.port, b.port]);
  assert.deepEqual(appEvents(log), [
    evt(1), evt(2),
    ['herald:recovery', { recovered: true, replayed: 3 }],
    evt(3), evt(4), evt(5), evt(6), evt(7),
  ]);
}

module.exports = {
  evt, publishRange, acrossNodes,
  HOST, APP, HERALD_BIN, delay, waitFor, freePort, Redis, startRedisCluster, Herald, Proxy,
  pusherClient, waitConnected, record, named, appEvents, subscribed, settle, assert,
};
