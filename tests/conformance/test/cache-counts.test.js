'use strict';
// Cache channels and subscription counts through pusher-js and the Node SDK,
// on app3 (subscription_count_events = true, cache_ttl = 2 s).
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../harness');

let herald;
let sdk;
before(async () => { herald = await h.startHerald(); sdk = herald.sdk('app3'); });
after(async () => { if (herald) await herald.stop(); });

const client = (opts = {}) => herald.connectedClient({ app: 'app3', ...opts });

async function getChannel(name, info) {
  const res = await sdk.get({ path: `/channels/${name}`, params: info ? { info } : {} });
  assert.equal(res.status, 200);
  return res.json();
}

/** Index of the first pusher-js frame matching pred (or -1). */
const idx = (p, pred) => p.frames.findIndex(pred);

test('cache channel miss: subscription_succeeded, then pusher:cache_miss on the channel', async () => {
  const p = await client();
  const ch = p.subscribe('cache-empty');
  const miss = h.once(ch, 'pusher:cache_miss', { what: 'pusher:cache_miss' });
  await h.once(ch, 'pusher:subscription_succeeded');
  await miss;
  const s = idx(p, (f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === 'cache-empty');
  const m = idx(p, (f) => f.event === 'pusher:cache_miss' && f.channel === 'cache-empty');
  assert.ok(s >= 0 && m > s, `order: ${JSON.stringify(p.frames)}`);

  const info = await getChannel('cache-empty', 'cache');
  assert.equal(info.occupied, true);
  assert.equal(info.cache, null, JSON.stringify(info));
});

test('cache channel hit: a late pusher-js subscriber gets the last API event right after subscription_succeeded; info=cache via the SDK', async () => {
  const early = await client();
  const chE = await h.subscribe(early, 'cache-news');
  const live = [];
  chE.bind('headline', (d) => live.push(d));
  await sdk.trigger('cache-news', 'headline', { v: 1 });
  await sdk.trigger('cache-news', 'headline', { v: 2 });
  await h.waitFor(() => live.length === 2, { what: 'live events on the early subscriber' });

  const late = await client();
  const chL = late.subscribe('cache-news');
  const got = h.once(chL, 'headline', { what: 'cached headline' });
  const missed = [];
  chL.bind('pusher:cache_miss', () => missed.push(1));
  assert.deepEqual(await got, { v: 2 });
  const s = idx(late, (f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === 'cache-news');
  const c = idx(late, (f) => f.event === 'headline');
  assert.equal(c, s + 1, `cached event must follow subscription_succeeded: ${JSON.stringify(late.frames)}`);
  assert.equal(late.frames[c].channel, 'cache-news');
  assert.deepEqual(missed, []);
  // the early subscriber does not get the cached copy again
  assert.equal(live.length, 2);

  const info = await getChannel('cache-news', 'cache');
  assert.equal(info.occupied, true);
  assert.ok(info.cache, JSON.stringify(info));
  assert.equal(info.cache.data, '{"v":2}');
  if ('event' in info.cache) assert.equal(info.cache.event, 'headline');
  assert.equal(typeof info.cache.ttl, 'number');
  assert.ok(info.cache.ttl > 0 && info.cache.ttl <= 2, `ttl ${info.cache.ttl}`);
});

test('cache TTL (2 s): the entry expires, info=cache becomes null and new subscribers get cache_miss', async () => {
  await sdk.trigger('cache-short', 'tick', { n: 1 });
  const first = await client();
  const c1 = first.subscribe('cache-short');
  assert.deepEqual(await h.once(c1, 'tick', { what: 'cached tick' }), { n: 1 });
  await h.waitFor(async () => (await getChannel('cache-short', 'cache')).cache === null,
    { timeout: 4500, interval: 200, what: 'cache entry to expire' });
  const second = await client();
  const c2 = second.subscribe('cache-short');
  await h.once(c2, 'pusher:cache_miss', { what: 'cache_miss after expiry' });
  assert.equal(second.frames.find((f) => f.event === 'tick'), undefined);
});

test('private-cache and presence-cache: authorized subscribers get the cache; bad auth gets an error and no cache frame', async () => {
  await sdk.trigger('private-cache-secret', 'state', { s: 'on' });
  const good = await client();
  const ch = good.subscribe('private-cache-secret');
  assert.deepEqual(await h.once(ch, 'state', { what: 'cached state on private-cache' }), { s: 'on' });

  // bad auth (raw, so nothing retries)
  const rc = await herald.rawConnected('key3');
  rc.send({ event: 'pusher:subscribe', data: { auth: `key3:${'0'.repeat(64)}`, channel: 'private-cache-secret' } });
  await rc.next((f) => f.event === 'pusher:subscription_error' || f.event === 'pusher:error', { what: 'auth refusal' });
  await rc.ping();
  // and a subscribe without any auth
  rc.send({ event: 'pusher:subscribe', data: { auth: '', channel: 'private-cache-secret' } });
  await rc.ping();
  await rc.ping();
  const leaked = rc.frames.filter((f) => f.event === 'state' || f.event === 'pusher:cache_miss' ||
    f.event === 'pusher_internal:subscription_succeeded');
  assert.deepEqual(leaked, [], JSON.stringify(rc.frames));

  // pusher-js with a forged authorizer gets pusher:subscription_error, no cache frame
  const forged = await client({ authorize: (sid, name) => ({ auth: `key3:${'1'.repeat(64)}` }) });
  const fch = forged.subscribe('private-cache-secret');
  const e = await h.once(fch, 'pusher:subscription_error', { what: 'subscription_error' });
  assert.ok(e);
  assert.equal(forged.frames.find((f) => f.event === 'state' || f.event === 'pusher:cache_miss'), undefined);

  // presence-cache-: miss, then hit
  const user = { user_id: 'pc-1', user_info: { n: 1 } };
  const p1 = await client({ user });
  const pc = p1.subscribe('presence-cache-room');
  await h.once(pc, 'pusher:cache_miss', { what: 'presence-cache miss' });
  await sdk.trigger('presence-cache-room', 'topic', 'hello');
  const p2 = await client({ user: { user_id: 'pc-2' } });
  const pc2 = p2.subscribe('presence-cache-room');
  assert.equal(await h.once(pc2, 'topic', { what: 'presence-cache hit' }), 'hello');
  assert.equal(pc2.members.count, 2);
});

test('client events are not cached on cache channels', async () => {
  const a = await client({ user: undefined });
  const b = await client();
  const chA = await h.subscribe(a, 'private-cache-chat');
  const chB = await h.subscribe(b, 'private-cache-chat');
  const got = h.once(chB, 'client-typing', { what: 'client event at b' });
  assert.ok(chA.trigger('client-typing', { who: 'a' }));
  await got;
  const c = await client();
  const chC = c.subscribe('private-cache-chat');
  await h.once(chC, 'pusher:cache_miss', { what: 'cache_miss (client events not cached)' });
  assert.equal(c.frames.find((f) => f.event === 'client-typing'), undefined);
});

test('subscription counts in pusher-js: pusher:subscription_count and channel.subscriptionCount follow (un)subscribes', async () => {
  const a = await client();
  const chA = a.subscribe('counted');
  const first = await h.once(chA, 'pusher:subscription_count', { what: 'first subscription_count' });
  assert.deepEqual(first, { subscription_count: 1 });
  assert.equal(chA.subscriptionCount, 1);

  const b = await client();
  const chB = b.subscribe('counted');
  await h.waitFor(() => chA.subscriptionCount === 2, { what: `a sees 2 (frames ${JSON.stringify(a.frames)})` });
  await h.waitFor(() => chB.subscriptionCount === 2, { what: `b sees 2 (frames ${JSON.stringify(b.frames)})` });
  const frame = a.frames.filter((f) => f.event === 'pusher_internal:subscription_count').pop();
  assert.equal(frame.channel, 'counted');
  assert.deepEqual(frame.data, { subscription_count: 2 });

  const c = await client();
  await h.subscribe(c, 'counted');
  await h.waitFor(() => chA.subscriptionCount === 3, { what: 'a sees 3' });
  const api = await getChannel('counted', 'subscription_count');
  assert.equal(api.subscription_count, 3);

  b.unsubscribe('counted');
  await h.waitFor(() => chA.subscriptionCount === 2, { what: 'a sees 2 after unsubscribe' });
  c.disconnect();
  await h.waitFor(() => chA.subscriptionCount === 1, { what: 'a sees 1 after disconnect' });
});

test('subscription counts: none on presence channels, none on an app without the flag', async () => {
  const a = await client({ user: { user_id: 'cnt-1' } });
  const b = await client({ user: { user_id: 'cnt-2' } });
  const pa = await h.subscribe(a, 'presence-counted');
  await h.subscribe(b, 'presence-counted');
  const s = h.once(pa, 'sentinel');
  await sdk.trigger('presence-counted', 'sentinel', {});
  await s;
  assert.equal(a.frames.find((f) => f.event === 'pusher_internal:subscription_count'), undefined, JSON.stringify(a.frames));

  const x = await herald.connectedClient({ app: 'app1' });
  const y = await herald.connectedClient({ app: 'app1' });
  const cx = await h.subscribe(x, 'uncounted');
  await h.subscribe(y, 'uncounted');
  const s2 = h.once(cx, 'sentinel');
  await herald.sdk('app1').trigger('uncounted', 'sentinel', {});
  await s2;
  assert.equal(x.frames.find((f) => f.event === 'pusher_internal:subscription_count'), undefined, JSON.stringify(x.frames));
});
