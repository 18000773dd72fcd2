'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../harness');

let herald;
let server;
before(async () => { herald = await h.startHerald(); server = herald.sdk('app1'); });
after(async () => { if (herald) await herald.stop(); });

function assertErrorShape(f) {
  assert.equal(f.event, 'pusher:error');
  assert.equal(typeof f.data, 'object', `pusher:error data must be an object, got ${JSON.stringify(f)}`);
  assert.ok(f.data !== null && 'code' in f.data, `pusher:error data needs code: ${JSON.stringify(f)}`);
  assert.ok(f.data.code === null || Number.isInteger(f.data.code), `code: ${JSON.stringify(f)}`);
  assert.equal(typeof f.data.message, 'string', `message: ${JSON.stringify(f)}`);
}

test('first frame is pusher:connection_established with activity_timeout 120', async () => {
  const rc = herald.raw();
  const first = await rc.next(() => true, { what: 'first frame' });
  assert.equal(first.event, 'pusher:connection_established', JSON.stringify(first));
  assert.equal(typeof first.data, 'string', 'data is a JSON-encoded string');
  const d = JSON.parse(first.data);
  assert.match(d.socket_id, h.SOCKET_ID_RE);
  assert.equal(d.activity_timeout, 120);
  assert.equal(first.channel, undefined);
  rc.close();
});

test('pusher:ping -> pusher:pong', async () => {
  const rc = await herald.rawConnected();
  const pong = await rc.ping();
  assert.equal(pong.event, 'pusher:pong');
  // ping with string data (some clients) also answered
  const from = rc.frames.length;
  rc.send({ event: 'pusher:ping', data: '{}' });
  await rc.next((f) => f.event === 'pusher:pong', { from, what: 'second pong' });
  rc.close();
});

test('subscribe frame shapes and exact event data string', async () => {
  const rc = await herald.rawConnected();
  const sub = await rc.subscribe('raw-chan');
  assert.equal(sub.channel, 'raw-chan');
  if (sub.data !== undefined) assert.deepEqual(h.frameData(sub), {});
  const data = '{"exact":"string","n":1,  "spaces":"kept"}';
  const from = rc.frames.length;
  await server.trigger('raw-chan', 'raw-ev', data);
  const f = await rc.next((x) => x.event === 'raw-ev', { from, what: 'raw-ev' });
  assert.deepEqual(f, { event: 'raw-ev', channel: 'raw-chan', data });
  // subscribe with data as a JSON string is accepted too
  const from2 = rc.frames.length;
  rc.send({ event: 'pusher:subscribe', data: JSON.stringify({ channel: 'raw-chan-2', auth: '' }) });
  await rc.next((x) => x.event === 'pusher_internal:subscription_succeeded' && x.channel === 'raw-chan-2',
    { from: from2, what: 'subscription with string data' });
  rc.close();
});

test('malformed JSON -> pusher:error, connection stays open', async () => {
  const rc = await herald.rawConnected();
  const from = rc.frames.length;
  rc.send('{"event": "pusher:subscribe", "data": {');
  const err = await rc.next((f) => f.event === 'pusher:error', { from, what: 'pusher:error for malformed JSON' });
  assertErrorShape(err);
  assert.equal(rc.closed, null);
  await rc.ping();
  await rc.subscribe('after-malformed');
  assert.equal(rc.closed, null);
  rc.close();
});

test('subscribing twice to the same channel -> pusher:error', async () => {
  const rc = await herald.rawConnected();
  await rc.subscribe('twice');
  const from = rc.frames.length;
  rc.send({ event: 'pusher:subscribe', data: { auth: '', channel: 'twice' } });
  const err = await rc.next((f) => f.event === 'pusher:error', { from, what: 'pusher:error for duplicate subscribe' });
  assertErrorShape(err);
  await rc.ping();
  // still subscribed exactly once: one copy of the event
  const from2 = rc.frames.length;
  await server.trigger('twice', 'once-only', {});
  await rc.next((f) => f.event === 'once-only', { from: from2 });
  await server.trigger('twice', 'sentinel', {});
  await rc.next((f) => f.event === 'sentinel', { from: from2 });
  assert.equal(rc.frames.slice(from2).filter((f) => f.event === 'once-only').length, 1);
  rc.close();
});

test('private subscribe without auth -> pusher:error, no subscription', async () => {
  const rc = await herald.rawConnected();
  const from = rc.frames.length;
  rc.send({ event: 'pusher:subscribe', data: { channel: 'private-noauth' } });
  const err = await rc.next((f) => f.event === 'pusher:error' ||
    (f.event === 'pusher:subscription_error' && f.channel === 'private-noauth') ||
    f.event === 'pusher_internal:subscription_succeeded', { from, what: 'reply to unauthenticated private subscribe' });
  assert.notEqual(err.event, 'pusher_internal:subscription_succeeded');
  if (err.event === 'pusher:error') assertErrorShape(err);
  await rc.ping();
  rc.close();
});

test('unknown pusher: event and client event without channel do not kill the connection', async () => {
  const rc = await herald.rawConnected();
  rc.send({ event: 'pusher:no-such-thing', data: {} });
  rc.send({ event: 'client-orphan', data: {} });
  rc.send({ no_event_field: true });
  await rc.ping();
  assert.equal(rc.closed, null);
  rc.close();
});

test('binary frame -> error or close; other clients keep working', async () => {
  const bystander = await herald.rawConnected();
  await bystander.subscribe('binary-bystander');
  const rc = await herald.rawConnected();
  const from = rc.frames.length;
  rc.sendBinary(Buffer.from(JSON.stringify({ event: 'pusher:ping', data: {} })));
  const outcome = await Promise.race([
    rc.next((f) => f.event === 'pusher:error', { from, what: 'pusher:error for binary frame' }).then((f) => ({ err: f })),
    rc.waitClose(5000).then((c) => ({ closed: c })),
  ]).catch((e) => ({ timeout: e }));
  assert.ok(!outcome.timeout, `neither pusher:error nor close after binary frame: ${outcome.timeout && outcome.timeout.message}`);
  if (outcome.err) assertErrorShape(outcome.err);

  // bystander unaffected
  await bystander.ping();
  const from2 = bystander.frames.length;
  await server.trigger('binary-bystander', 'still-alive', { ok: 1 });
  const f = await bystander.next((x) => x.event === 'still-alive', { from: from2 });
  assert.equal(f.data, '{"ok":1}');
  // and new connections are still accepted
  const fresh = await herald.rawConnected();
  await fresh.ping();
  fresh.close(); bystander.close(); rc.close();
});

test('WebSocket-level ping frame is answered with a pong frame', async () => {
  const rc = await herald.rawConnected();
  const pong = new Promise((resolve) => rc.ws.once('pong', (d) => resolve(d.toString())));
  rc.ws.ping('hb');
  assert.equal(await Promise.race([pong, h.delay(3000).then(() => 'no pong')]), 'hb');
  rc.close();
});
