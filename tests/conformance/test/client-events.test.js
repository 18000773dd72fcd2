'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../harness');

let herald;
let server;
before(async () => { herald = await h.startHerald(); server = herald.sdk('app1'); });
after(async () => { if (herald) await herald.stop(); });

function record(ch, name) {
  const got = [];
  ch.bind(name, (data, meta) => got.push({ data, meta }));
  return got;
}

async function pair(channel, { app = 'app1', users = [] } = {}) {
  const sdk = herald.sdk(app);
  const p1 = await herald.connectedClient({ app, server: sdk, user: users[0] });
  const p2 = await herald.connectedClient({ app, server: sdk, user: users[1] });
  const c1 = await h.subscribe(p1, channel);
  const c2 = await h.subscribe(p2, channel);
  return { sdk, p1, p2, c1, c2 };
}

async function sentinel(sdk, channel, chans) {
  const waits = chans.map((c) => h.once(c, 'sentinel', { what: `sentinel on ${channel}` }));
  await sdk.trigger(channel, 'sentinel', {});
  await Promise.all(waits);
}

function pusherErrors(p) {
  return p.errors.filter((e) => e.type === 'PusherError');
}

test('client events on a private channel: delivered to others, not echoed, no user_id', async () => {
  const { sdk, p1, p2, c1, c2 } = await pair('private-chat');
  const echoed = record(c1, 'client-msg');
  const got = h.once(c2, 'client-msg', { what: 'client-msg at p2', withMeta: true });
  assert.equal(c1.trigger('client-msg', { text: 'hi', n: 1 }), true);
  const { data, meta } = await got;
  assert.deepEqual(data, { text: 'hi', n: 1 });
  assert.equal(meta.user_id, undefined);
  const frame = p2.frames.find((f) => f.event === 'client-msg');
  assert.equal(frame.channel, 'private-chat');
  assert.equal(frame.user_id, undefined, `private client event must not carry user_id: ${JSON.stringify(frame)}`);
  await sentinel(sdk, 'private-chat', [c1, c2]);
  assert.deepEqual(echoed, [], `client event echoed to sender; frames=${JSON.stringify(p1.frames)}`);
  assert.deepEqual(pusherErrors(p1), []);
  p1.disconnect(); p2.disconnect();
});

test('client events on a presence channel carry the sender user_id', async () => {
  const { sdk, p1, p2, c1, c2 } = await pair('presence-chat', {
    users: [{ user_id: 'u-one', user_info: { n: 1 } }, { user_id: 'u-two', user_info: { n: 2 } }],
  });
  const echoed = record(c1, 'client-typing');
  const got = h.once(c2, 'client-typing', { what: 'client-typing at p2', withMeta: true });
  c1.trigger('client-typing', { typing: true });
  const { data, meta } = await got;
  assert.deepEqual(data, { typing: true });
  assert.equal(meta.user_id, 'u-one', `frames=${JSON.stringify(p2.frames)}`);
  const frame = p2.frames.find((f) => f.event === 'client-typing');
  assert.equal(frame.user_id, 'u-one');
  assert.equal(frame.channel, 'presence-chat');

  // and the other direction
  const back = h.once(c1, 'client-reply', { what: 'client-reply at p1', withMeta: true });
  c2.trigger('client-reply', { ok: 1 });
  assert.equal((await back).meta.user_id, 'u-two');

  await sentinel(sdk, 'presence-chat', [c1, c2]);
  assert.deepEqual(echoed, []);
  assert.ok(!p2.frames.some((f) => f.event === 'client-reply'), 'client-reply echoed to its sender');
  p1.disconnect(); p2.disconnect();
});

test('client events on a public channel are rejected', async () => {
  const { sdk, p1, p2, c1, c2 } = await pair('public-chat');
  const leaked = record(c2, 'client-sneaky');
  c1.trigger('client-sneaky', { x: 1 });
  await h.waitFor(() => pusherErrors(p1).length > 0, { what: 'pusher:error at sender' })
    .catch((e) => { e.message += `; sender frames=${JSON.stringify(p1.frames)}`; throw e; });
  await sentinel(sdk, 'public-chat', [c1, c2]);
  assert.deepEqual(leaked, [], `public client event delivered; frames=${JSON.stringify(p2.frames)}`);
  const err = p1.frames.find((f) => f.event === 'pusher:error');
  assert.equal(typeof err.data, 'object');
  assert.equal(typeof err.data.message, 'string');
  assert.equal(p1.connection.state, 'connected');
  p1.disconnect(); p2.disconnect();
});

test('client events refused on app2 (client_events = false)', async () => {
  const { sdk, p1, p2, c1, c2 } = await pair('private-app2', { app: 'app2' });
  const leaked = record(c2, 'client-nope');
  c1.trigger('client-nope', { x: 1 });
  await h.waitFor(() => pusherErrors(p1).length > 0, { what: 'pusher:error at sender (app2)' })
    .catch((e) => { e.message += `; sender frames=${JSON.stringify(p1.frames)}`; throw e; });
  await sentinel(sdk, 'private-app2', [c1, c2]);
  assert.deepEqual(leaked, [], `client event delivered on app2; frames=${JSON.stringify(p2.frames)}`);
  assert.equal(p1.connection.state, 'connected');
  p1.disconnect(); p2.disconnect();
});

test('client event to a channel the sender has not joined is not delivered', async () => {
  const sdk = server;
  const p1 = await herald.connectedClient();
  const p2 = await herald.connectedClient();
  const c2 = await h.subscribe(p2, 'private-members-only');
  const leaked = record(c2, 'client-intruder');
  // p1 never subscribed: send the frame directly
  p1.send_event('client-intruder', { x: 1 }, 'private-members-only');
  await h.subscribe(p1, 'marker-intruder'); // herald has processed p1's frame by now
  await sentinel(sdk, 'private-members-only', [c2]);
  assert.deepEqual(leaked, [], `non-member client event delivered; frames=${JSON.stringify(p2.frames)}`);
  p1.disconnect(); p2.disconnect();
});
