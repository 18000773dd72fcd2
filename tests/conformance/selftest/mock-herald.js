#!/usr/bin/env node
'use strict';
// SELF-TEST ONLY: a tiny stand-in for herald used to check the conformance
// suite itself (`HERALD_BIN=selftest/mock-herald.js npm test`). It implements
// the official behaviour from docs/pusher-protocol.md as the suite expects it.
// It is not herald and says nothing about herald's conformance.

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const WebSocket = require(path.join(__dirname, '..', 'node_modules', 'ws'));

const cfgPath = process.argv[process.argv.indexOf('--config') + 1];
const toml = fs.readFileSync(cfgPath, 'utf8');
const server = {};
const apps = [];
let cur = null;
for (const line of toml.split('\n')) {
  const l = line.trim();
  if (!l || l.startsWith('#')) continue;
  if (l === '[server]') { cur = server; continue; }
  if (l === '[[apps]]') { cur = {}; apps.push(cur); continue; }
  const m = /^(\w+)\s*=\s*(.+)$/.exec(l);
  if (m) cur[m[1]] = JSON.parse(m[2]);
}
const [host, port] = server.listen.split(':');
const [ahost, aport] = server.admin_listen.split(':');

const byKey = new Map(apps.map((a) => [a.key, a]));
const byId = new Map(apps.map((a) => [a.id, a]));
const state = new Map(apps.map((a) => [a.id, { conns: new Set(), channels: new Map() }]));
// channel -> Map(socket -> {user_id, user_info})

const hmac = (secret, s) => crypto.createHmac('sha256', secret).update(s).digest('hex');
const rnd = () => Math.floor(Math.random() * 1e9) + 1;
const send = (sock, obj) => { if (sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify(obj)); };
const err = (sock, code, message) => send(sock, { event: 'pusher:error', data: { code, message } });

function members(ch) {
  const hash = {};
  for (const m of ch.values()) if (!(m.user_id in hash)) hash[m.user_id] = m.user_info;
  return hash;
}

function leave(app, sock, name) {
  const st = state.get(app.id);
  const ch = st.channels.get(name);
  if (!ch || !ch.has(sock)) return;
  const m = ch.get(sock);
  ch.delete(sock);
  if (name.startsWith('presence-') && ![...ch.values()].some((x) => x.user_id === m.user_id)) {
    for (const s of ch.keys()) send(s, { event: 'pusher_internal:member_removed', channel: name, data: JSON.stringify({ user_id: m.user_id }) });
  }
  if (ch.size === 0) st.channels.delete(name);
}

const wss = new WebSocket.WebSocketServer({ noServer: true });
const httpServer = http.createServer(handleHttp);
httpServer.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (sock) => onConn(sock, req));
});

function onConn(sock, req) {
  const m = /^\/app\/([^/?]+)/.exec(req.url);
  const app = m && byKey.get(m[1]);
  if (!app) { err(sock, 4001, `App key ${m && m[1]} not in this cluster.`); sock.close(4001, 'unknown app'); return; }
  const st = state.get(app.id);
  if (app.max_connections && st.conns.size >= app.max_connections) {
    err(sock, 4004, 'Application is over connection quota'); sock.close(4004, 'over quota'); return;
  }
  st.conns.add(sock);
  const socketId = `${rnd()}.${rnd()}`;
  sock.socketId = socketId;
  const subs = new Set();
  send(sock, { event: 'pusher:connection_established', data: JSON.stringify({ socket_id: socketId, activity_timeout: server.activity_timeout }) });
  sock.on('close', () => { st.conns.delete(sock); for (const c of subs) leave(app, sock, c); });
  sock.on('message', (raw, isBinary) => {
    if (isBinary) { err(sock, null, 'Binary frames are not supported'); return; }
    let msg;
    try { msg = JSON.parse(raw.toString()); } catch { err(sock, null, 'Invalid JSON'); return; }
    if (!msg || typeof msg.event !== 'string') { err(sock, null, 'Invalid message'); return; }
    let data = msg.data;
    if (typeof data === 'string' && (msg.event.startsWith('pusher:'))) { try { data = JSON.parse(data); } catch { /* keep */ } }
    switch (msg.event) {
      case 'pusher:ping': send(sock, { event: 'pusher:pong', data: '{}' }); return;
      case 'pusher:pong': return;
      case 'pusher:subscribe': {
        const name = data && data.channel;
        if (!name) { err(sock, null, 'channel required'); return; }
        if (subs.has(name)) { err(sock, null, `Existing subscription to channel ${name}`); return; }
        let member = {};
        if (name.startsWith('private-') || name.startsWith('presence-')) {
          const auth = String(data.auth || '');
          if (!auth) { err(sock, null, `Auth info required to subscribe to ${name}`); return; }
          const toSign = name.startsWith('presence-') ? `${socketId}:${name}:${data.channel_data}` : `${socketId}:${name}`;
          const want = `${app.key}:${hmac(app.secret, toSign)}`;
          if (auth !== want) {
            err(sock, null, `Invalid signature: Expected HMAC SHA256 hex digest of ${toSign}, but got ${auth}`);
            send(sock, { event: 'pusher:subscription_error', channel: name, data: JSON.stringify({ type: 'AuthError', error: 'Invalid signature', status: 401 }) });
            return;
          }
          if (name.startsWith('presence-')) {
            const cd = JSON.parse(data.channel_data);
            member = { user_id: String(cd.user_id), user_info: cd.user_info };
          }
        }
        subs.add(name);
        if (!st.channels.has(name)) st.channels.set(name, new Map());
        const ch = st.channels.get(name);
        if (name.startsWith('presence-')) {
          const isNew = ![...ch.values()].some((x) => x.user_id === member.user_id);
          if (isNew) for (const s of ch.keys()) send(s, { event: 'pusher_internal:member_added', channel: name, data: JSON.stringify(member) });
          ch.set(sock, member);
          const hash = members(ch);
          send(sock, { event: 'pusher_internal:subscription_succeeded', channel: name, data: JSON.stringify({ presence: { ids: Object.keys(hash), hash, count: Object.keys(hash).length } }) });
        } else {
          ch.set(sock, member);
          send(sock, { event: 'pusher_internal:subscription_succeeded', channel: name, data: '{}' });
        }
        return;
      }
      case 'pusher:unsubscribe': {
        const name = data && data.channel;
        if (subs.delete(name)) leave(app, sock, name);
        return;
      }
      default:
        if (msg.event.startsWith('client-')) {
          const name = msg.channel;
          if (!app.client_events) { err(sock, 4301, 'The app does not have client messaging enabled.'); return; }
          if (!name || !(name.startsWith('private-') || name.startsWith('presence-'))) {
            err(sock, null, 'Client event rejected - only supported on private and presence channels'); return;
          }
          if (!subs.has(name)) { err(sock, null, 'Client event rejected - not subscribed'); return; }
          const ch = st.channels.get(name);
          const out = { event: msg.event, channel: name, data: typeof msg.data === 'string' ? msg.data : JSON.stringify(msg.data) };
          if (name.startsWith('presence-')) out.user_id = ch.get(sock).user_id;
          for (const s of ch.keys()) if (s !== sock) send(s, out);
          return;
        }
        err(sock, null, `Unsupported event ${msg.event}`);
    }
  });
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function handleHttp(req, res) {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    const u = new URL(req.url, 'http://x');
    const m = /^\/apps\/([^/]+)(\/.*)$/.exec(u.pathname);
    if (!m) return reply(res, 404, { error: 'not found' });
    const app = byId.get(m[1]);
    if (!app) return reply(res, 404, { error: 'unknown app' });
    const q = Object.fromEntries(u.searchParams);
    const sig = q.auth_signature;
    delete q.auth_signature;
    const qs = Object.keys(q).sort().map((k) => `${k.toLowerCase()}=${q[k]}`).join('&');
    if (q.auth_key !== app.key || sig !== hmac(app.secret, `${req.method}\n${u.pathname}\n${qs}`)) return reply(res, 401, { error: 'bad signature' });
    if (Math.abs(Date.now() / 1000 - Number(q.auth_timestamp)) > 600) return reply(res, 401, { error: 'Timestamp expired' });
    if ((body || q.body_md5) && q.body_md5 !== crypto.createHash('md5').update(body).digest('hex')) return reply(res, 401, { error: 'body_md5' });
    const st = state.get(app.id);
    const rest = m[2];
    const info = (q.info || '').split(',').filter(Boolean);
    const attrs = (name, inf) => {
      const ch = st.channels.get(name);
      const o = {};
      if (inf.includes('user_count')) o.user_count = ch ? Object.keys(members(ch)).length : 0;
      if (inf.includes('subscription_count')) o.subscription_count = ch ? ch.size : 0;
      return o;
    };
    const publish = (ev) => {
      const chans = ev.channels || (ev.channel ? [ev.channel] : []);
      for (const name of chans) {
        const ch = st.channels.get(name);
        if (!ch) continue;
        for (const s of ch.keys()) if (s.socketId !== ev.socket_id) send(s, { event: ev.name, channel: name, data: ev.data });
      }
    };
    if (req.method === 'POST' && rest === '/events') {
      const ev = JSON.parse(body);
      const chans = ev.channels || [ev.channel];
      if (chans.length > 100) return reply(res, 400, { error: 'too many channels' });
      if (Buffer.byteLength(ev.data) > 10240) return reply(res, 413, { error: 'too big' });
      publish(ev);
      if (ev.info) {
        const out = {};
        for (const c of chans) out[c] = attrs(c, ev.info.split(','));
        return reply(res, 200, { channels: out });
      }
      return reply(res, 200, {});
    }
    if (req.method === 'POST' && rest === '/batch_events') {
      const { batch } = JSON.parse(body);
      if (batch.length > 10) return reply(res, 400, { error: 'batch too big' });
      if (batch.some((e) => Buffer.byteLength(e.data) > 10240)) return reply(res, 413, { error: 'too big' });
      batch.forEach(publish);
      if (batch.some((e) => e.info)) return reply(res, 200, { batch: batch.map((e) => attrs(e.channel, (e.info || '').split(','))) });
      return reply(res, 200, {});
    }
    if (req.method === 'GET' && rest === '/channels') {
      const prefix = q.filter_by_prefix || '';
      if (info.includes('user_count') && !prefix.startsWith('presence-')) return reply(res, 400, { error: 'user_count needs presence- prefix' });
      const out = {};
      for (const name of st.channels.keys()) if (name.startsWith(prefix)) out[name] = attrs(name, info);
      return reply(res, 200, { channels: out });
    }
    let mm = /^\/channels\/([^/]+)$/.exec(rest);
    if (req.method === 'GET' && mm) {
      const name = decodeURIComponent(mm[1]);
      const pres = name.startsWith('presence-');
      if ((info.includes('user_count') && !pres) || (info.includes('subscription_count') && pres)) return reply(res, 400, { error: 'bad info' });
      return reply(res, 200, { occupied: st.channels.has(name), ...(st.channels.has(name) ? attrs(name, info) : {}) });
    }
    mm = /^\/channels\/([^/]+)\/users$/.exec(rest);
    if (req.method === 'GET' && mm) {
      const name = decodeURIComponent(mm[1]);
      if (!name.startsWith('presence-')) return reply(res, 400, { error: 'presence only' });
      const ch = st.channels.get(name);
      return reply(res, 200, { users: ch ? Object.keys(members(ch)).map((id) => ({ id })) : [] });
    }
    return reply(res, 404, { error: 'no route' });
  });
}

httpServer.listen(Number(port), host);
http.createServer((req, res) => { res.writeHead(req.url === '/healthz' ? 200 : 404); res.end('ok'); }).listen(Number(aport), ahost);
process.on('SIGTERM', () => process.exit(0));
