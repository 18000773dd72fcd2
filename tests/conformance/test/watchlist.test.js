'use strict';
// Watchlist events (app3 has watchlist_events = true) seen through pusher-js's
// pusher.user.watchlist, and the 100-id limit (pusher:error 4302).
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../harness');

let herald;
before(async () => { herald = await h.startHerald(); });
after(async () => { if (herald) await herald.stop(); });

/** Watchlist recorder: every online/offline emission in arrival order. */
function recordWatchlist(p) {
  const seen = [];
  p.user.watchlist.bind('online', (e) => seen.push({ name: 'online', ids: [...e.user_ids].sort() }));
  p.user.watchlist.bind('offline', (e) => seen.push({ name: 'offline', ids: [...e.user_ids].sort() }));
  return seen;
}

async function waitSeen(seen, p, pred, what) {
  try {
    return await h.waitFor(() => seen.find(pred), { timeout: 3000, what });
  } catch (e) {
    e.message += `; watchlist seen: ${JSON.stringify(seen)}; frames: ${JSON.stringify(p.frames)}`;
    throw e;
  }
}

async function signedIn(user) {
  const p = await herald.connectedClient({ app: 'app3', signin: user });
  const seen = recordWatchlist(p);
  p.signin();
  await h.waitFor(() => p.frames.find((f) => f.event === 'pusher:signin_success'),
    { what: `signin_success for ${user.id}` });
  return { p, seen };
}

const has = (name, id) => (e) => e.name === name && e.ids.includes(id);

test('pusher-js watchlist: initial offline state, online on sign-in, offline when the last connection goes', async () => {
  const w = await signedIn({ id: 'watcher', watchlist: ['wl-a', 'wl-b'] });
  // initial state: both watched users are offline
  await waitSeen(w.seen, w.p, has('offline', 'wl-a'), 'initial offline wl-a');
  await waitSeen(w.seen, w.p, has('offline', 'wl-b'), 'initial offline wl-b');
  assert.equal(w.seen.find((e) => e.name === 'online'), undefined, JSON.stringify(w.seen));
  // the wire frame has no channel and the documented shape
  const wf = w.p.frames.find((f) => f.event === 'pusher_internal:watchlist_events');
  assert.equal(wf.channel, undefined);
  assert.ok(Array.isArray(wf.data.events), JSON.stringify(wf));

  const a1 = await signedIn({ id: 'wl-a' });
  await waitSeen(w.seen, w.p, has('online', 'wl-a'), 'online wl-a');
  // a second connection of wl-a, then closing only one of them: wl-a stays online
  const a2 = await signedIn({ id: 'wl-a' });
  a1.p.disconnect();
  // wl-b comes online: when that arrives, an offline for wl-a (if any) would already be there
  const b = await signedIn({ id: 'wl-b' });
  await waitSeen(w.seen, w.p, has('online', 'wl-b'), 'online wl-b');
  assert.equal(w.seen.filter(has('offline', 'wl-a')).length, 1,
    `wl-a went offline while a connection remained: ${JSON.stringify(w.seen)}`);

  // last connection of wl-a goes away → offline
  a2.p.disconnect();
  await waitSeen(w.seen, w.p, () => w.seen.filter(has('offline', 'wl-a')).length === 2, 'offline wl-a after last disconnect');

  // a second watcher signing in now gets wl-b online and wl-a offline as its initial state
  const w2 = await signedIn({ id: 'watcher-2', watchlist: ['wl-a', 'wl-b'] });
  await waitSeen(w2.seen, w2.p, has('online', 'wl-b'), 'initial online wl-b for watcher-2');
  await waitSeen(w2.seen, w2.p, has('offline', 'wl-a'), 'initial offline wl-a for watcher-2');
  assert.equal(w2.seen.find(has('online', 'wl-a')), undefined);

  b.p.disconnect();
  await waitSeen(w2.seen, w2.p, has('offline', 'wl-b'), 'offline wl-b for watcher-2');
});

test('watchlist over 100 ids: signin succeeds, pusher:error 4302, only the first 100 are watched', async () => {
  const ids = Array.from({ length: 105 }, (_, i) => `big-${i}`);
  const w = await signedIn({ id: 'big-watcher', watchlist: ids });
  const err = await h.waitFor(() => w.p.frames.find((f) => f.event === 'pusher:error'),
    { what: `pusher:error 4302; frames: ${JSON.stringify(w.p.frames)}` });
  assert.equal(err.data.code, 4302, JSON.stringify(err));
  assert.equal(w.p.connection.state, 'connected');
  assert.deepEqual(w.p.user.user_data.id, 'big-watcher');

  // initial offline state covers exactly the first 100
  await waitSeen(w.seen, w.p, has('offline', 'big-99'), 'initial offline big-99');
  const reported = new Set(w.seen.flatMap((e) => e.ids));
  assert.equal(reported.has('big-100'), false, 'id #101 reported');
  assert.equal(reported.has('big-104'), false, 'id #105 reported');

  // big-104 (beyond the limit) comes online, then big-0 (inside): only big-0 is reported
  await signedIn({ id: 'big-104' });
  await signedIn({ id: 'big-0' });
  await waitSeen(w.seen, w.p, has('online', 'big-0'), 'online big-0');
  assert.equal(w.seen.find(has('online', 'big-104')), undefined, JSON.stringify(w.seen));
});

test('no watchlist_events on an app without the flag', async () => {
  const p = await herald.connectedClient({ app: 'app1', signin: { id: 'plain', watchlist: ['x'] } });
  p.signin();
  await h.waitFor(() => p.frames.find((f) => f.event === 'pusher_internal:subscription_succeeded'),
    { what: 'server-to-user subscription' });
  // a round trip after sign-in: an API event to the user
  const sdk = herald.sdk('app1');
  const got = h.once(p.user, 'sentinel');
  await sdk.sendToUser('plain', 'sentinel', {});
  await got;
  assert.equal(p.frames.find((f) => f.event === 'pusher_internal:watchlist_events'), undefined, JSON.stringify(p.frames));
});
