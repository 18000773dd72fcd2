'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const h = require('../harness');

let herald;
let server;
before(async () => { herald = await h.startHerald(); server = herald.sdk('app1'); });
after(async () => { if (herald) await herald.stop(); });

test('private channel: valid auth subscribes and receives events', async () => {
  const p = await herald.connectedClient();
  const ch = await h.subscribe(p, 'private-ok');
  assert.equal(ch.subscribed, true);
  const sub = p.frames.find((f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === 'private-ok');
  assert.ok(sub, 'subscription_succeeded frame carries the channel');
  const got = h.once(ch, 'secret-ev');
  await server.trigger('private-ok', 'secret-ev', { s: 1 });
  assert.deepEqual(await got, { s: 1 });
  p.disconnect();
});

async function forgedCase(name, authorize) {
  const p = await herald.connectedClient({ authorize });
  const ch = p.subscribe(name);
  const succeeded = [];
  ch.bind('pusher:subscription_succeeded', () => succeeded.push(true));
  const chErr = [];
  ch.bind('pusher:subscription_error', (e) => chErr.push(e));
  // herald must answer with pusher:error (global) and/or pusher:subscription_error on the channel
  await h.waitFor(() => chErr.length > 0 || p.errors.some((e) => e.type === 'PusherError'),
    { timeout: 5000, what: `an error for ${name}` })
    .catch((e) => { e.message += `; frames=${JSON.stringify(p.frames)}`; throw e; });
  const errFrame = p.frames.find((f) => f.event === 'pusher:error');
  if (errFrame) {
    assert.equal(typeof errFrame.data, 'object', 'pusher:error data is an object');
    assert.ok('code' in errFrame.data && typeof errFrame.data.message === 'string',
      `pusher:error shape ${JSON.stringify(errFrame)}`);
    assert.ok(errFrame.data.code === null || (errFrame.data.code >= 4000 && errFrame.data.code < 4300),
      `non-fatal code expected, got ${errFrame.data.code}`);
  }

  // nothing published on the private channel may reach this socket...
  await server.trigger(name, 'leak', { leaked: true });
  // ...and the connection stays usable: public subscribe + event afterwards
  assert.equal(p.connection.state, 'connected');
  const pub = await h.subscribe(p, `after-${name}`);
  const got = h.once(pub, 'after');
  await server.trigger(`after-${name}`, 'after', { ok: true });
  assert.deepEqual(await got, { ok: true });
  assert.deepEqual(succeeded, [], `forged subscription succeeded; frames=${JSON.stringify(p.frames)}`);
  assert.equal(ch.subscribed, false);
  assert.ok(!p.frames.some((f) => f.event === 'leak'), `leaked event; frames=${JSON.stringify(p.frames)}`);
  assert.equal(p.connection.state, 'connected');
  assert.ok(!p.states.includes('disconnected'), `connection dropped: ${p.states.join('>')}`);
  p.disconnect();
  return { frames: p.frames };
}

test('private channel: forged signature (wrong secret) is rejected, connection stays usable', async () => {
  await forgedCase('private-forged', (socketId, channel) => ({
    auth: 'key1:' + crypto.createHmac('sha256', 'not-the-secret').update(`${socketId}:${channel}`).digest('hex'),
  }));
});

test('private channel: signature for another socket id is rejected', async () => {
  await forgedCase('private-stolen', (socketId, channel) => server.authorizeChannel('1234.5678', channel));
});

test('presence channel: channel_data not covered by signature is rejected', async () => {
  await forgedCase('presence-forged', (socketId, channel) => {
    const good = server.authorizeChannel(socketId, channel, { user_id: 'honest' });
    return { auth: good.auth, channel_data: JSON.stringify({ user_id: 'admin' }) };
  });
});
