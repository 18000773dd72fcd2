'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../harness');

let herald;
let server;
before(async () => { herald = await h.startHerald(); server = herald.sdk('app1'); });
after(async () => { if (herald) await herald.stop(); });

/** Record every event `name` on a channel. */
function record(channel, name) {
  const got = [];
  channel.bind(name, (data, meta) => got.push({ data, meta }));
  return got;
}

test('public subscribe + SDK trigger delivers exact data', async () => {
  const p = await herald.connectedClient();
  const ch = await h.subscribe(p, 'public-news');
  const payload = { message: 'hello', n: 42, nested: { a: [1, 2, 3], u: 'é✓' } };
  const got = h.once(ch, 'news-event', { what: 'news-event' });
  const res = await server.trigger('public-news', 'news-event', payload);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
  assert.deepEqual(await got, payload);
  // the wire frame carries the publisher's string verbatim
  const frame = p.frames.find((f) => f.event === 'news-event');
  assert.equal(frame.channel, 'public-news');
  assert.deepEqual(frame.data, payload);

  // string data is delivered verbatim as a string
  const got2 = h.once(ch, 'plain', { what: 'plain' });
  await server.trigger('public-news', 'plain', 'just a string, not JSON');
  assert.equal(await got2, 'just a string, not JSON');
  p.disconnect();
});

test('socket_id exclusion: sender does not receive, others do', async () => {
  const a = await herald.connectedClient();
  const b = await herald.connectedClient();
  const cha = await h.subscribe(a, 'public-excl');
  const chb = await h.subscribe(b, 'public-excl');
  const aGot = record(cha, 'update');
  const bGot = h.once(chb, 'update', { what: 'update on b' });
  await server.trigger('public-excl', 'update', { v: 1 }, { socket_id: a.connection.socket_id });
  assert.deepEqual(await bGot, { v: 1 });
  // sentinel (not excluded) proves a would have had the first event by now
  const aSentinel = h.once(cha, 'sentinel', { what: 'sentinel on a' });
  await server.trigger('public-excl', 'sentinel', {});
  await aSentinel;
  assert.deepEqual(aGot, [], `excluded socket got the event; frames=${JSON.stringify(a.frames)}`);
  a.disconnect(); b.disconnect();
});

test('trigger to several channels', async () => {
  const p = await herald.connectedClient();
  const names = ['multi-1', 'multi-2', 'multi-3'];
  const chans = [];
  for (const n of names) chans.push(await h.subscribe(p, n));
  const other = await h.subscribe(p, 'multi-not-targeted');
  const otherGot = record(other, 'multi-ev');
  const waits = chans.map((c) => h.once(c, 'multi-ev', { what: `multi-ev on ${c.name}` }));
  const res = await server.trigger(names, 'multi-ev', { x: 'y' });
  assert.equal(res.status, 200);
  const datas = await Promise.all(waits);
  for (const d of datas) assert.deepEqual(d, { x: 'y' });
  const s = h.once(other, 'sentinel');
  await server.trigger('multi-not-targeted', 'sentinel', {});
  await s;
  assert.deepEqual(otherGot, []);
  // each targeted channel got it exactly once
  for (const n of names) {
    assert.equal(p.frames.filter((f) => f.event === 'multi-ev' && f.channel === n).length, 1, n);
  }
  p.disconnect();
});

test('triggerBatch delivers each event to its channel', async () => {
  const p = await herald.connectedClient();
  const c1 = await h.subscribe(p, 'batch-a');
  const c2 = await h.subscribe(p, 'batch-b');
  const w1 = h.once(c1, 'ev-1');
  const w2 = h.once(c2, 'ev-2');
  const w3 = h.once(c1, 'ev-3');
  const res = await server.triggerBatch([
    { channel: 'batch-a', name: 'ev-1', data: { i: 1 } },
    { channel: 'batch-b', name: 'ev-2', data: { i: 2 } },
    { channel: 'batch-a', name: 'ev-3', data: 'three' },
  ]);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
  assert.deepEqual(await w1, { i: 1 });
  assert.deepEqual(await w2, { i: 2 });
  assert.equal(await w3, 'three');
  // order within a channel is preserved
  const order = p.frames.filter((f) => f.channel === 'batch-a' && /^ev-/.test(f.event)).map((f) => f.event);
  assert.deepEqual(order, ['ev-1', 'ev-3']);
  p.disconnect();
});

test('laravel-echo (broadcaster pusher, client: pusher-js instance): listen, here, whisper', async () => {
  const { default: Echo } = await import('laravel-echo');
  const p1 = herald.client({ user: { user_id: 'echo-1', user_info: { name: 'Echo One' } } });
  const p2 = herald.client({ user: { user_id: 'echo-2', user_info: { name: 'Echo Two' } } });
  const echo1 = new Echo({ broadcaster: 'pusher', client: p1 });
  const echo2 = new Echo({ broadcaster: 'pusher', client: p2 });
  await h.waitForState(p1, 'connected');
  await h.waitForState(p2, 'connected');

  // public channel, namespaced Laravel event name
  const shipped = new Promise((resolve) => echo1.channel('orders').listen('OrderShipped', resolve));
  const subscribed = new Promise((resolve) => echo1.channel('orders').subscribed(resolve));
  await subscribed;
  await server.trigger('orders', 'App\\Events\\OrderShipped', { order: { id: 7 } });
  assert.deepEqual(await shipped, { order: { id: 7 } });

  // presence: here() lists user_info objects
  const here1 = new Promise((resolve) => echo1.join('lobby').here(resolve));
  assert.deepEqual(await here1, [{ name: 'Echo One' }]);
  const joining = new Promise((resolve) => echo1.join('lobby').joining(resolve));
  const here2 = new Promise((resolve) => echo2.join('lobby').here(resolve));
  const list = await here2;
  assert.deepEqual(list.map((u) => u.name).sort(), ['Echo One', 'Echo Two']);
  assert.deepEqual(await joining, { name: 'Echo Two' });

  // whisper = client event on the presence channel
  const whisper = new Promise((resolve) => echo1.join('lobby').listenForWhisper('typing', resolve));
  echo2.join('lobby').whisper('typing', { who: 'two' });
  assert.deepEqual(await whisper, { who: 'two' });

  echo1.disconnect(); echo2.disconnect();
});
