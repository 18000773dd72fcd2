#!/usr/bin/env node
// Memory with many slow clients: N clients subscribe to one channel and stop reading; K fast
// clients keep reading; a burst is published through the API. Reports the server's RSS before,
// at the peak and after, how many slow clients were closed with 4100, and whether every fast
// client got every message.
//
//   node loadtest/scripts/slow-clients.js --bin target/release/herald --slow 1000 --fast 10 \
//        --messages 2000 --size 10000
// Needs the `ws` and `pusher` packages: run `npm ci` in tests/conformance first.
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const net = require('node:net');
const { spawn } = require('node:child_process');
const mods = path.resolve(__dirname, '../../tests/conformance/node_modules');
const WebSocket = require(path.join(mods, 'ws'));
const Pusher = require(path.join(mods, 'pusher'));

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, v, i, a) => (v.startsWith('--') ? acc.concat([[v.slice(2), a[i + 1]]]) : acc), []));
const BIN = path.resolve(args.bin || 'target/release/herald');
const SLOW = Number(args.slow || 1000), FAST = Number(args.fast || 10);
const MESSAGES = Number(args.messages || 2000), SIZE = Number(args.size || 10000);
const QUEUE = Number(args.queue || 1048576);

const freePort = () => new Promise((res) => { const s = net.createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); }); });
const rss = (pid) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function client(port, { reading }) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/app/k?protocol=7`);
    const c = { ws, got: 0, closeCode: null };
    ws.on('message', (m) => {
      const msg = JSON.parse(m.toString());
      if (msg.event === 'pusher:connection_established') ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: 'burst' } }));
      else if (msg.event === 'pusher_internal:subscription_succeeded') { if (!reading) ws._socket.pause(); resolve(c); }
      else if (msg.event === 'b') c.got++;
    });
    ws.on('close', (code) => { c.closeCode = code; });
    ws.on('error', reject);
  });
}

(async () => {
  const port = await freePort(), admin = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-slow-'));
  fs.writeFileSync(path.join(dir, 'h.toml'), `[server]\nlisten = "127.0.0.1:${port}"\nadmin_listen = "127.0.0.1:${admin}"\nhandshakes_per_second = 100000\noutbound_queue_bytes = ${QUEUE}\n[log]\nlevel = "warn"\n[[apps]]\nid = "a"\nkey = "k"\nsecret = "s"\n`);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  const herald = spawn(BIN, ['--config', path.join(dir, 'h.toml')], { stdio: 'ignore', env });
  for (let i = 0; i < 100; i++) { try { await new Promise((res, rej) => { const s = net.connect(port, '127.0.0.1', () => { s.end(); res(); }); s.on('error', rej); }); break; } catch { await sleep(50); } }
  const base = rss(herald.pid);
  const slow = [];
  for (let i = 0; i < SLOW; i++) slow.push(await client(port, { reading: false }));
  const fast = [];
  for (let i = 0; i < FAST; i++) fast.push(await client(port, { reading: true }));
  const connected = rss(herald.pid);
  const api = new Pusher({ appId: 'a', key: 'k', secret: 's', host: '127.0.0.1', port, useTLS: false });
  const data = 'x'.repeat(SIZE);
  let peak = connected;
  const t0 = Date.now();
  for (let i = 0; i < MESSAGES; i += 10) {
    await api.triggerBatch(Array.from({ length: 10 }, () => ({ channel: 'burst', name: 'b', data })));
    if (i % 200 === 0) peak = Math.max(peak, rss(herald.pid));
  }
  for (let i = 0; i < 200 && fast.some((c) => c.got < MESSAGES); i++) { await sleep(50); peak = Math.max(peak, rss(herald.pid)); }
  const elapsed = (Date.now() - t0) / 1000;
  await sleep(500);
  peak = Math.max(peak, rss(herald.pid));
  const after = rss(herald.pid);
  for (const c of slow) c.ws._socket.resume();
  await sleep(2000);
  const closed4100 = slow.filter((c) => c.closeCode === 4100).length;
  const drained = rss(herald.pid);
  const fastComplete = fast.filter((c) => c.got === MESSAGES).length;
  const result = {
    slow_clients: SLOW, fast_clients: FAST, messages: MESSAGES, message_bytes: SIZE, outbound_queue_bytes: QUEUE,
    rss_mib: { start: +base.toFixed(1), connected: +connected.toFixed(1), peak: +peak.toFixed(1), after_burst: +after.toFixed(1) },
    rss_after_slow_clients_read_mib: +drained.toFixed(1),
    slow_closed_4100: closed4100, fast_complete: fastComplete, burst_seconds: elapsed,
    fast_received: fast.map((c) => c.got), fast_close_codes: fast.map((c) => c.closeCode),
  };
  console.log(JSON.stringify(result, null, 2));
  herald.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
  process.exit(fastComplete === FAST ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(1); });
