'use strict';
// User authentication (pusher:signin), server-to-user events, terminate,
// presence from the sign-in identity, authorized connections — driven with
// pusher-js 8 (signin(), user.bind) and the Node SDK (authenticateUser,
// sendToUser, terminateUserConnections), plus raw frames for bad input.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const h = require('../harness');

let herald;
let server;
before(async () => { herald = await h.startHerald(); server = herald.sdk('app1'); });
after(async () => { if (herald) await herald.stop(); });

const hmac = (secret, s) => crypto.createHmac('sha256', secret).update(s).digest('hex');

/** Hand-made signin payload (for data the SDK refuses to sign). */
function signinPayload(rc, userDataString, { key = 'key1', secret = 'secret1' } = {}) {
  return {
    event: 'pusher:signin',
    data: { auth: `${key}:${hmac(secret, `${rc.socketId}::user::${userDataString}`)}`, user_data: userDataString },
  };
}

/** Wait for a pusher-js decoded frame matching pred (from index `from`). */
async function frame(p, pred, what, from = 0) {
  try {
    return await h.waitFor(() => p.frames.slice(from).find(pred), { timeout: 3000, what });
  } catch (e) {
    e.message += `; states: ${p.states.join(' -> ')}; frames: ${JSON.stringify(p.frames)}`;
    throw e;
  }
}

/** pusher-js client signed in as `user` (via the SDK's authenticateUser); resolves when
 *  signin_success arrived and the #server-to-user channel is subscribed. */
async function signedIn(user, opts = {}) {
  const p = await herald.connectedClient({ signin: user, ...opts });
  p.signin();
  await frame(p, (f) => f.event === 'pusher:signin_success', `signin_success for ${user.id}`);
  await frame(p, (f) => f.event === 'pusher_internal:subscription_succeeded' &&
    f.channel === `#server-to-user-${user.id}`, `#server-to-user-${user.id} subscription_succeeded`);
  return p;
}

/** Raw socket signed in as userData (an object or exact string) with the app1 secret. */
async function rawSignedIn(userData) {
  const rc = await herald.rawConnected('key1');
  const ud = typeof userData === 'string' ? userData : JSON.stringify(userData);
  rc.send(signinPayload(rc, ud));
  const ok = await rc.next((f) => f.event === 'pusher:signin_success', { what: 'signin_success' });
  assert.equal(h.frameData(ok).user_data, ud);
  return rc;
}

test('pusher-js signin(): signin_success echoes user_data; #server-to-user subscribed; user.bind gets sendToUser on every connection of that user only', async () => {
  const U1 = { id: 'u1', user_info: { name: 'User One' } };
  const a = await signedIn(U1);
  const ok = a.frames.find((f) => f.event === 'pusher:signin_success');
  // the exact string the SDK signed, echoed back
  const sent = server.authenticateUser(a.connection.socket_id, U1).user_data;
  assert.equal(ok.data.user_data, sent);
  assert.deepEqual(a.user.user_data, U1);
  // pusher-js subscribed explicitly after signin_success
  assert.ok(a.user.serverToUserChannel && a.user.serverToUserChannel.subscribed);

  const a2 = await signedIn(U1); // second connection of the same user
  const b = await signedIn({ id: 'u2' });

  const gotA = h.once(a.user, 'direct', { what: 'direct on u1#1' });
  const gotA2 = h.once(a2.user, 'direct', { what: 'direct on u1#2' });
  const bGot = [];
  b.user.bind('direct', (d) => bGot.push(d));
  await server.sendToUser('u1', 'direct', { hello: 'u1' });
  assert.deepEqual(await gotA, { hello: 'u1' });
  assert.deepEqual(await gotA2, { hello: 'u1' });
  const f = a.frames.find((x) => x.event === 'direct');
  assert.equal(f.channel, '#server-to-user-u1');

  // sentinel to u2 proves u2 got nothing before it
  const sentB = h.once(b.user, 'sentinel', { what: 'sentinel on u2' });
  await server.sendToUser('u2', 'sentinel', {});
  await sentB;
  assert.deepEqual(bGot, []);
});

test('raw: signin_success data is {"user_data": <same string>}; API publish to #server-to-user reaches a signed-in socket', async () => {
  const ud = '{"id":"raw-user","user_info":{"k":"v"}}';
  const rc = await rawSignedIn(ud);
  const ok = rc.frames.find((f) => f.event === 'pusher:signin_success');
  const data = typeof ok.data === 'string' ? JSON.parse(ok.data) : ok.data;
  assert.deepEqual(data, { user_data: ud });
  await server.sendToUser('raw-user', 'ping-user', 'payload');
  const ev = await rc.next((f) => f.event === 'ping-user', { what: 'ping-user' });
  assert.equal(ev.channel, '#server-to-user-raw-user');
  assert.equal(ev.data, 'payload'); // the SDK sends string data as is
});

test('terminateUserConnections: closes that user\'s connections (4200, pusher-js reconnects and re-signs in); others stay', async () => {
  const T1 = { id: 'term-1' };
  const a = await signedIn(T1);
  const a2 = await signedIn(T1);
  const other = await signedIn({ id: 'term-2' });
  const rawA = await rawSignedIn(T1);
  // same id, but only as a presence member (never signed in): not terminated (docs)
  const presenceOnly = await herald.connectedClient({ user: { user_id: 'term-1' } });
  await h.subscribe(presenceOnly, 'presence-term-room');
  const presenceStates = presenceOnly.states.length;
  const aStates = a.states.length;
  const a2States = a2.states.length;
  const otherStates = other.states.length;

  const res = await server.terminateUserConnections('term-1');
  assert.equal(res.status, 200);
  assert.deepEqual(JSON.parse(await res.text()), {});

  const closed = await rawA.waitClose();
  assert.equal(closed.code, 4200, `raw close ${JSON.stringify(closed)}`);
  // both pusher-js connections of term-1 leave `connected`…
  await h.waitFor(() => a.states.slice(aStates).some((s) => s !== 'connected'), { what: 'term-1#1 left connected' });
  await h.waitFor(() => a2.states.slice(a2States).some((s) => s !== 'connected'), { what: 'term-1#2 left connected' });
  // …and, being closed with 4200, reconnect at once and sign in again
  await h.waitForState(a, 'connected');
  // (connection_established is not surfaced as a pusher-js message: count sign-ins instead)
  const signins = () => a.frames.filter((f) => f.event === 'pusher:signin_success').length;
  await frame(a, () => signins() === 2, 'second signin_success (after reconnect)');
  const from = a.frames.findLastIndex((f) => f.event === 'pusher:signin_success');
  await frame(a, (f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === '#server-to-user-term-1',
    '#server-to-user-term-1 after reconnect', from);
  const again = h.once(a.user, 'after', { what: 'sendToUser after reconnect' });
  await server.sendToUser('term-1', 'after', { n: 1 });
  assert.deepEqual(await again, { n: 1 });

  // the other user's connection never left `connected`
  const sentinel = h.once(other.user, 'sentinel', { what: 'sentinel to term-2' });
  await server.sendToUser('term-2', 'sentinel', {});
  await sentinel;
  assert.deepEqual(other.states.slice(otherStates), [], `term-2 states: ${other.states.join(' -> ')}`);
  assert.equal(other.connection.state, 'connected');
  const ps = h.once(presenceOnly.channel('presence-term-room'), 'sentinel', { what: 'sentinel to presence-only term-1' });
  await server.trigger('presence-term-room', 'sentinel', {});
  await ps;
  assert.deepEqual(presenceOnly.states.slice(presenceStates), [], `presence-only states: ${presenceOnly.states.join(' -> ')}`);
});

test('terminate for an unknown user: 200 {} and nothing is closed', async () => {
  const a = await signedIn({ id: 'stay-1' });
  const rc = await rawSignedIn({ id: 'stay-2' });
  const before = a.states.length;
  const res = await server.terminateUserConnections('nobody-here');
  assert.equal(res.status, 200);
  assert.deepEqual(JSON.parse(await res.text()), {});
  // both still live: they answer
  await rc.ping();
  const got = h.once(a.user, 'still', { what: 'still there' });
  await server.sendToUser('stay-1', 'still', {});
  await got;
  assert.equal(rc.closed, null);
  assert.deepEqual(a.states.slice(before), []);
});

test('presence subscribe without channel_data on a signed-in pusher-js connection uses the sign-in identity', async () => {
  const P1 = { id: 'pres-1', user_info: { name: 'Pres One' } };
  const P2 = { id: 'pres-2', user_info: { name: 'Pres Two' } };
  // no opts.user: authorizeChannel signs socket_id:channel only, no channel_data
  const a = await signedIn(P1);
  const chA = await h.subscribe(a, 'presence-signin-room');
  assert.equal(chA.members.count, 1);
  assert.deepEqual(chA.members.me, { id: 'pres-1', info: P1.user_info });
  const added = h.once(chA, 'pusher:member_added', { what: 'member_added pres-2' });
  const b = await signedIn(P2);
  const chB = await h.subscribe(b, 'presence-signin-room');
  assert.equal(chB.members.count, 2);
  assert.deepEqual(chB.members.get('pres-1'), { id: 'pres-1', info: P1.user_info });
  assert.deepEqual(await added, { id: 'pres-2', info: P2.user_info });
});

test('forged signin (pusher-js, wrong secret): pusher:error, not signed in, no #server-to-user subscription', async () => {
  const bad = herald.sdk('app1', { secret: 'not-the-secret' });
  const p = await herald.connectedClient({ authenticateUser: (sid) => bad.authenticateUser(sid, { id: 'forger' }) });
  p.signin();
  const err = await frame(p, (f) => f.event === 'pusher:error', 'pusher:error after forged signin');
  assert.ok(err.data && typeof err.data.message === 'string', JSON.stringify(err));
  // a publish to that user's channel does not reach it; a public sentinel proves ordering
  const ch = await h.subscribe(p, 'forged-sentinel');
  await server.sendToUser('forger', 'leak', {});
  const s = h.once(ch, 'sentinel', { what: 'sentinel' });
  await server.trigger('forged-sentinel', 'sentinel', {});
  await s;
  assert.equal(p.frames.find((f) => f.event === 'pusher:signin_success'), undefined, JSON.stringify(p.frames));
  assert.equal(p.frames.find((f) => f.event === 'leak'), undefined);
  assert.equal(p.user.user_data, null);
  assert.equal(p.frames.find((f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === '#server-to-user-forger'), undefined);
});

test('raw bad signins: forged hex, missing id, non-string id, oversized user_info — pusher:error and not signed in', async () => {
  const cases = [
    ['forged', (rc) => ({ event: 'pusher:signin', data: { auth: `key1:${'ab'.repeat(32)}`, user_data: '{"id":"x1"}' } }), 'x1'],
    ['no id', (rc) => signinPayload(rc, '{"user_info":{"a":1}}'), null],
    ['numeric id', (rc) => signinPayload(rc, '{"id":42}'), '42'],
    ['empty id', (rc) => signinPayload(rc, '{"id":""}'), null],
    ['oversized user_info (20 KB)', (rc) => signinPayload(rc, JSON.stringify({ id: 'big', user_info: { blob: 'x'.repeat(20000) } })), 'big'],
    ['user_info just over 1 KB', (rc) => signinPayload(rc, JSON.stringify({ id: 'big2', user_info: { blob: 'x'.repeat(1100) } })), 'big2'],
    ['user_data not JSON', (rc) => signinPayload(rc, 'not json'), null],
  ];
  for (const [name, make, id] of cases) {
    const rc = await herald.rawConnected('key1');
    rc.send(make(rc));
    const err = await rc.next((f) => f.event === 'pusher:error', { what: `pusher:error for ${name}` });
    const d = h.frameData(err);
    assert.equal(typeof d.message, 'string', `${name}: ${JSON.stringify(err)}`);
    if (id) {
      // not signed in as that id: its #server-to-user channel is refused
      if (rc.closed) continue; // a server may also close after a failed signin
      const from = rc.frames.length;
      rc.send({ event: 'pusher:subscribe', data: { auth: '', channel: `#server-to-user-${id}` } });
      await rc.next((f) => (f.event === 'pusher:subscription_error' || f.event === 'pusher:error'), { from, what: `${name}: refusal of #server-to-user-${id}` });
      await rc.ping();
      assert.equal(rc.frames.find((f) => f.event === 'pusher:signin_success'), undefined, `${name}: ${JSON.stringify(rc.frames)}`);
      assert.equal(rc.frames.find((f) => f.event === 'pusher_internal:subscription_succeeded'), undefined, `${name}: ${JSON.stringify(rc.frames)}`);
    }
    rc.close();
  }
});

test('subscribing to someone else\'s #server-to-user- channel is refused and receives nothing', async () => {
  const alice = await rawSignedIn({ id: 'alice-s2u' });
  await rawSignedIn({ id: 'bob-s2u' });
  const from = alice.frames.length;
  alice.send({ event: 'pusher:subscribe', data: { auth: '', channel: '#server-to-user-bob-s2u' } });
  const refusal = await alice.next((f) => f.event === 'pusher:subscription_error' ||
    (f.event === 'pusher:error'), { from, what: 'refusal of bob\'s channel' });
  assert.ok(refusal);
  await server.sendToUser('bob-s2u', 'secret-for-bob', {});
  await server.sendToUser('alice-s2u', 'sentinel', {});
  await alice.next((f) => f.event === 'sentinel', { what: 'sentinel for alice' });
  assert.equal(alice.frames.find((f) => f.event === 'secret-for-bob'), undefined, JSON.stringify(alice.frames));
  assert.equal(alice.frames.find((f) => f.event === 'pusher_internal:subscription_succeeded' &&
    f.channel === '#server-to-user-bob-s2u'), undefined);
  // an unsigned socket is refused too
  const anon = await herald.rawConnected('key1');
  anon.send({ event: 'pusher:subscribe', data: { auth: '', channel: '#server-to-user-alice-s2u' } });
  await anon.next((f) => f.event === 'pusher:subscription_error' || f.event === 'pusher:error', { what: 'refusal for anonymous socket' });
});

test('re-signing as another user on the same connection is refused; the first identity stays', async () => {
  const rc = await rawSignedIn({ id: 'first-id' });
  const from = rc.frames.length;
  rc.send(signinPayload(rc, '{"id":"second-id"}'));
  await rc.next((f) => f.event === 'pusher:error', { from, what: 'pusher:error on re-signin as another user' });
  await server.sendToUser('second-id', 'not-mine', {});
  await server.sendToUser('first-id', 'mine', {});
  await rc.next((f) => f.event === 'mine', { what: 'event for first-id' });
  assert.equal(rc.frames.find((f) => f.event === 'not-mine'), undefined, JSON.stringify(rc.frames));
  assert.equal(rc.frames.filter((f) => f.event === 'pusher:signin_success').length, 1);
});

test('authorized connections (app timeout 1 s): an idle anonymous connection is closed with 4009; signed-in and private ones stay', async () => {
  const sdk4 = herald.sdk('app4');
  const anon = await herald.rawConnected('key4');
  const signed = await herald.rawConnected('key4');
  signed.send({ event: 'pusher:signin', data: sdk4.authenticateUser(signed.socketId, { id: 'ok-user' }) });
  await signed.next((f) => f.event === 'pusher:signin_success', { what: 'signin_success on app4' });
  const priv = await herald.connectedClient({ app: 'app4' });
  await h.subscribe(priv, 'private-keeps-me');
  const closed = await anon.waitClose(4000);
  assert.equal(closed.code, 4009, JSON.stringify(closed));
  await signed.ping();
  assert.equal(signed.closed, null);
  assert.equal(priv.connection.state, 'connected');
});
