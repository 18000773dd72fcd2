'use strict';
// laravel-echo 2 (broadcaster 'pusher', pusher-js 8 underneath) against herald:
// private(), join() with here/joining/leaving, whisper/listenForWhisper, and
// encryptedPrivate() receiving a real encrypted trigger from the Node SDK
// (encryptionMasterKeyBase64). Plus the server-side rules for encrypted channels.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const h = require('../harness');

const MASTER_KEY = crypto.randomBytes(32).toString('base64');

let Echo;
let herald;
let sdk; // Node SDK with the encryption master key, as a Laravel app would have
before(async () => {
  // laravel-echo 2 is an ES module package (its CommonJS build cannot be require()d
  // under "type": "module"), so load it the way an ESM app does.
  ({ default: Echo } = await import('laravel-echo'));
  herald = await h.startHerald();
  sdk = herald.sdk('app1', { encryptionMasterKeyBase64: MASTER_KEY });
});
after(async () => { if (herald) await herald.stop(); });

/**
 * Echo configured the way Laravel's docs show for a custom authorizer; the
 * authorizer is the app server's job, done here by the SDK's authorizeChannel
 * (which adds shared_secret for private-encrypted- channels).
 */
function echo(user) {
  const e = new Echo({
    broadcaster: 'pusher',
    Pusher: h.PusherJS,
    key: 'key1',
    wsHost: h.HOST,
    wsPort: herald.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    authorizer: (channel) => ({
      authorize: (socketId, callback) => {
        try {
          callback(null, sdk.authorizeChannel(socketId, channel.name,
            channel.name.startsWith('presence-') ? user : undefined));
        } catch (err) {
          callback(err, null);
        }
      },
    }),
  });
  const p = e.connector.pusher;
  p.frames = [];
  p.connection.bind('message', (m) => p.frames.push(m));
  herald.clients.add(p);
  return e;
}

/** Resolve when an Echo channel's subscription succeeded. */
function subscribed(ch, what) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out waiting for ${what} subscription`)), 3000);
    ch.subscribed(() => { clearTimeout(t); resolve(); });
    ch.error((e) => { clearTimeout(t); reject(new Error(`${what}: subscription error ${JSON.stringify(e)}`)); });
  });
}

/** First value delivered to `register(cb)`, with a timeout. */
function first(register, what) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), 3000);
    let done = false;
    register((v) => { if (!done) { done = true; clearTimeout(t); resolve(v); } });
  });
}

test('echo.private(): listen() receives SDK triggers (explicit .name and the App\\Events namespace)', async () => {
  const e = echo();
  const ch = e.private('orders');
  await subscribed(ch, 'private-orders');
  const explicit = first((cb) => ch.listen('.order.shipped', cb), '.order.shipped');
  const namespaced = first((cb) => ch.listen('OrderPaid', cb), 'OrderPaid');
  await sdk.trigger('private-orders', 'order.shipped', { id: 7 });
  await sdk.trigger('private-orders', 'App\\Events\\OrderPaid', { id: 8 });
  assert.deepEqual(await explicit, { id: 7 });
  assert.deepEqual(await namespaced, { id: 8 });
  assert.ok(e.socketId() && h.SOCKET_ID_RE.test(e.socketId()));
  assert.equal(e.connectionStatus(), 'connected');
});

test('echo.join(): here / joining / leaving with user_info objects', async () => {
  const ALICE = { user_id: 1, user_info: { id: 1, name: 'Alice' } };
  const BOB = { user_id: 2, user_info: { id: 2, name: 'Bob' } };
  const ea = echo(ALICE);
  const joiningAtA = [];
  const leavingAtA = [];
  const hereA = first((cb) => ea.join('chat')
    .here(cb)
    .joining((u) => joiningAtA.push(u))
    .leaving((u) => leavingAtA.push(u)), 'here() for alice');
  assert.deepEqual(await hereA, [ALICE.user_info]);

  const eb = echo(BOB);
  const hereB = await first((cb) => eb.join('chat').here(cb), 'here() for bob');
  const byId = (a, b) => a.id - b.id;
  assert.deepEqual([...hereB].sort(byId), [ALICE.user_info, BOB.user_info]);
  await h.waitFor(() => joiningAtA.length === 1, { what: 'joining at alice' });
  assert.deepEqual(joiningAtA, [BOB.user_info]);

  eb.leave('chat');
  await h.waitFor(() => leavingAtA.length === 1, { what: `leaving at alice; frames ${JSON.stringify(ea.connector.pusher.frames)}` });
  assert.deepEqual(leavingAtA, [BOB.user_info]);
});

test('whisper / listenForWhisper on private and presence channels (not echoed to the sender)', async () => {
  const ea = echo({ user_id: 'wa', user_info: { name: 'A' } });
  const eb = echo({ user_id: 'wb', user_info: { name: 'B' } });
  const pa = ea.private('typing-room');
  const pb = eb.private('typing-room');
  await Promise.all([subscribed(pa, 'a private'), subscribed(pb, 'b private')]);
  const selfGot = [];
  pa.listenForWhisper('typing', (d) => selfGot.push(d));
  const atB = first((cb) => pb.listenForWhisper('typing', cb), 'whisper at b');
  pa.whisper('typing', { name: 'A', typing: true });
  assert.deepEqual(await atB, { name: 'A', typing: true });

  const ra = ea.join('typing-presence');
  const rb = eb.join('typing-presence');
  await Promise.all([subscribed(ra, 'a presence'), subscribed(rb, 'b presence')]);
  const atA = first((cb) => ra.listenForWhisper('reaction', cb), 'presence whisper at a');
  rb.whisper('reaction', { emoji: 'ok' });
  assert.deepEqual(await atA, { emoji: 'ok' });
  const frameAtA = ea.connector.pusher.frames.find((f) => f.event === 'client-reaction');
  assert.equal(frameAtA.user_id, 'wb', `presence client events carry user_id: ${JSON.stringify(frameAtA)}`);
  assert.equal(frameAtA.channel, 'presence-typing-presence');

  // the sender does not get its own whisper back (a later whisper from b proves ordering)
  const back = first((cb) => pa.listenForWhisper('done', cb), 'whisper done at a');
  pb.whisper('done', {});
  await back;
  assert.deepEqual(selfGot, []);
});

test('echo.encryptedPrivate(): a real encrypted trigger from the Node SDK is decrypted by pusher-js; herald passes ciphertext untouched', async () => {
  const e = echo();
  const ch = e.encryptedPrivate('vault');
  await subscribed(ch, 'private-encrypted-vault');

  // a raw observer, authorized like a private channel (no shared secret needed by the server)
  const rc = await herald.rawConnected('key1');
  const auth = sdk.authorizeChannel(rc.socketId, 'private-encrypted-vault');
  assert.ok(auth.shared_secret, 'SDK returns shared_secret for encrypted channels');
  await rc.subscribe('private-encrypted-vault', { auth: auth.auth });

  const got = first((cb) => ch.listen('.secret.message', cb), 'decrypted event');
  await sdk.trigger('private-encrypted-vault', 'secret.message', { top: 'secret', n: 42 });
  assert.deepEqual(await got, { top: 'secret', n: 42 });

  const wire = await rc.next((f) => f.event === 'secret.message', { what: 'encrypted frame on the raw socket' });
  assert.equal(wire.channel, 'private-encrypted-vault');
  assert.equal(typeof wire.data, 'string');
  const env = JSON.parse(wire.data);
  assert.deepEqual(Object.keys(env).sort(), ['ciphertext', 'nonce']);
  assert.equal(Buffer.from(env.nonce, 'base64').length, 24);
  // The plaintext is in neither field (checked on the decoded bytes: random base64 text can
  // contain any short string, such as "42", by chance).
  for (const field of [Buffer.from(env.nonce, 'base64'), Buffer.from(env.ciphertext, 'base64')]) {
    assert.ok(!field.includes('"top":"secret"'), `plaintext leaked: ${wire.data}`);
  }
  assert.ok(!wire.data.includes('"top"'), `plaintext leaked: ${wire.data}`);
});

test('encrypted channels: multi-channel trigger including one → 400; client events refused; subscribe needs auth', async () => {
  const body = JSON.stringify({ name: 'ev', channels: ['private-encrypted-a', 'public-b'], data: '{}' });
  const res = await herald.signedRequest({ method: 'POST', path: '/apps/app1/events', body });
  assert.equal(res.status, 400, res.body);
  // alone it is accepted
  const ok = await herald.signedRequest({ method: 'POST', path: '/apps/app1/events',
    body: JSON.stringify({ name: 'ev', channels: ['private-encrypted-a'], data: '{"nonce":"x","ciphertext":"y"}' }) });
  assert.equal(ok.status, 200, ok.body);

  const a = await herald.rawConnected('key1');
  const b = await herald.rawConnected('key1');
  for (const rc of [a, b]) {
    await rc.subscribe('private-encrypted-chat', { auth: sdk.authorizeChannel(rc.socketId, 'private-encrypted-chat').auth });
  }
  const from = a.frames.length;
  a.send({ event: 'client-hi', channel: 'private-encrypted-chat', data: '{"nonce":"x","ciphertext":"y"}' });
  await a.next((f) => f.event === 'pusher:error', { from, what: 'pusher:error for an encrypted client event' });
  await b.ping();
  assert.equal(b.frames.find((f) => f.event === 'client-hi'), undefined, JSON.stringify(b.frames));

  const anon = await herald.rawConnected('key1');
  anon.send({ event: 'pusher:subscribe', data: { auth: '', channel: 'private-encrypted-chat' } });
  await anon.next((f) => f.event === 'pusher:subscription_error' || f.event === 'pusher:error', { what: 'refusal without auth' });
  assert.equal(anon.frames.find((f) => f.event === 'pusher_internal:subscription_succeeded'), undefined);
});
