'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../harness');

let herald;
before(async () => { herald = await h.startHerald(); });
after(async () => { if (herald) await herald.stop(); });

/** Extract pusher error codes from what pusher-js surfaced on connection 'error'. */
function errorCodes(pusher) {
  return pusher.errors.map((e) => {
    if (e && e.error && e.error.data && e.error.data.code !== undefined) return e.error.data.code;
    if (e && e.data && e.data.code !== undefined) return e.data.code;
    return undefined;
  }).filter((c) => c !== undefined);
}

test('pusher-js connects: state connected, socket_id format', async () => {
  const p = herald.client();
  await h.waitForState(p, 'connected');
  assert.equal(p.connection.state, 'connected');
  assert.match(p.connection.socket_id, h.SOCKET_ID_RE);
  // two connections get distinct socket ids
  const q = await herald.connectedClient();
  assert.match(q.connection.socket_id, h.SOCKET_ID_RE);
  assert.notEqual(p.connection.socket_id, q.connection.socket_id);
  p.disconnect(); q.disconnect();
});

test('unknown app key: error 4001, client gives up and does not reconnect', async () => {
  const p = herald.client({ key: 'no-such-key', app: 'app1' });
  await h.waitFor(() => ['disconnected', 'failed', 'unavailable'].includes(p.connection.state), { timeout: 8000, what: 'pusher-js to give up' })
    .catch((e) => { e.message += `; states=${p.states.join('>')} frames=${JSON.stringify(p.frames)}`; throw e; });
  const codes = errorCodes(p);
  assert.ok(codes.includes(4001), `expected error code 4001, got ${JSON.stringify(p.errors)}; frames ${JSON.stringify(p.frames)}`);
  const statesAtGiveUp = p.states.length;
  // pusher-js' backoff retry would fire after 1 s; give it 1.5 s to prove nothing happens.
  await h.delay(1500);
  assert.deepEqual(p.states.slice(statesAtGiveUp), [], `client reconnected: states ${p.states.join('>')}`);
  assert.notEqual(p.connection.state, 'connected');
  p.disconnect();
});

test('unknown app key at the wire: pusher:error 4001 and close 4001', async () => {
  const rc = herald.raw('no-such-key');
  const closed = await rc.waitClose(5000);
  const err = rc.frames.find((f) => f.event === 'pusher:error');
  const codeInFrame = err ? h.frameData(err).code : undefined;
  assert.ok(codeInFrame === 4001 || closed.code === 4001,
    `expected 4001 in pusher:error or close; frames=${JSON.stringify(rc.frames)} close=${JSON.stringify(closed)}`);
  assert.ok(!rc.frames.some((f) => f.event === 'pusher:connection_established'), 'must not establish');
  assert.equal(closed.code, 4001, `close code: ${JSON.stringify(closed)}; frames=${JSON.stringify(rc.frames)}`);
});

test('app2 max_connections=3: 4th connection refused with 4004, slot frees on disconnect', async () => {
  const server2 = herald.sdk('app2');
  const three = [];
  for (let i = 0; i < 3; i++) three.push(await herald.connectedClient({ app: 'app2', server: server2 }));

  const fourth = herald.client({ app: 'app2', server: server2 });
  await h.waitFor(() => errorCodes(fourth).length > 0 ||
    ['disconnected', 'failed', 'unavailable'].includes(fourth.connection.state),
  { timeout: 8000, what: '4th connection to be refused' })
    .catch((e) => { e.message += `; states=${fourth.states.join('>')} frames=${JSON.stringify(fourth.frames)}`; throw e; });
  await h.waitFor(() => fourth.connection.state !== 'connecting', { timeout: 3000, what: '4th to leave connecting' }).catch(() => {});
  assert.ok(errorCodes(fourth).includes(4004),
    `expected 4004, errors=${JSON.stringify(fourth.errors)} states=${fourth.states.join('>')} frames=${JSON.stringify(fourth.frames)}`);
  assert.notEqual(fourth.connection.state, 'connected');
  assert.ok(three.every((c) => c.connection.state === 'connected'), 'the first three stay connected');
  fourth.disconnect();

  // raw view of the refusal
  const rc = herald.raw('key2');
  const closed = await rc.waitClose(5000);
  const err = rc.frames.find((f) => f.event === 'pusher:error');
  assert.ok((err && h.frameData(err).code === 4004) || closed.code === 4004,
    `raw: frames=${JSON.stringify(rc.frames)} close=${JSON.stringify(closed)}`);
  assert.ok(!rc.frames.some((f) => f.event === 'pusher:connection_established'));

  // free one slot: a new connection must eventually be accepted
  three[0].disconnect();
  await h.waitFor(async () => {
    const r = herald.raw('key2');
    const f = await r.next(() => true, { timeout: 2000 }).catch(() => null);
    const ok = f && f.event === 'pusher:connection_established';
    if (!ok) r.close();
    return ok;
  }, { timeout: 5000, interval: 100, what: 'a freed slot on app2' });
  for (const c of three) c.disconnect();
});
