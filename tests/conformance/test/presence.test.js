'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../harness');

let herald;
let server;
before(async () => { herald = await h.startHerald(); server = herald.sdk('app1'); });
after(async () => { if (herald) await herald.stop(); });

const ROOM = 'presence-room';
const ALICE = { user_id: 'alice', user_info: { name: 'Alice', role: 'admin' } };
const BOB = { user_id: 'bob', user_info: { name: 'Bob' } };
const CAROL = { user_id: 'carol', user_info: { name: 'Carol' } };

function membersOf(ch) {
  const out = {};
  ch.members.each((m) => { out[m.id] = m.info; });
  return out;
}

function track(ch) {
  const t = { added: [], removed: [] };
  ch.bind('pusher:member_added', (m) => t.added.push(m.id));
  ch.bind('pusher:member_removed', (m) => t.removed.push(m.id));
  return t;
}

async function join(user) {
  const p = await herald.connectedClient({ user });
  const ch = p.subscribe(ROOM);
  const t = track(ch);
  const succeeded = h.once(ch, 'pusher:subscription_succeeded', { what: `${user.user_id} subscription` })
    .catch((e) => { e.message += `; frames=${JSON.stringify(p.frames)}`; throw e; });
  const members = await succeeded;
  return { p, ch, t, members };
}

/** SDK-triggered sentinel: once every listed socket has it, earlier frames have arrived. */
async function sentinel(socks, tag) {
  const waits = socks.map((s) => h.once(s.ch, 'sentinel', { what: `sentinel ${tag} on ${s.p.connection.socket_id}` }));
  await server.trigger(ROOM, 'sentinel', { tag });
  await Promise.all(waits);
}

test('presence: two users x two sockets — counts, me, member_added/removed once per user', async () => {
  const a1 = await join(ALICE);
  assert.equal(a1.members.count, 1);
  assert.deepEqual(a1.ch.members.me, { id: 'alice', info: ALICE.user_info });
  assert.deepEqual(membersOf(a1.ch), { alice: ALICE.user_info });

  // wire format of subscription_succeeded presence data
  const subFrame = a1.p.frames.find((f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === ROOM);
  assert.deepEqual(subFrame.data.presence.ids, ['alice']);
  assert.deepEqual(subFrame.data.presence.hash, { alice: ALICE.user_info });
  assert.equal(subFrame.data.presence.count, 1);

  const addedB = h.once(a1.ch, 'pusher:member_added', { what: 'member_added bob at alice#1' });
  const b1 = await join(BOB);
  assert.equal(b1.members.count, 2);
  assert.deepEqual(b1.ch.members.me, { id: 'bob', info: BOB.user_info });
  assert.deepEqual(membersOf(b1.ch), { alice: ALICE.user_info, bob: BOB.user_info });
  const m = await addedB;
  assert.deepEqual(m, { id: 'bob', info: BOB.user_info });
  const addFrame = a1.p.frames.find((f) => f.event === 'pusher_internal:member_added');
  assert.deepEqual(addFrame.data, { user_id: 'bob', user_info: BOB.user_info });
  assert.equal(addFrame.channel, ROOM);

  // second sockets of the same users: no member_added anywhere
  const a2 = await join(ALICE);
  assert.equal(a2.members.count, 2, `alice#2 count; frames=${JSON.stringify(a2.p.frames)}`);
  assert.deepEqual(membersOf(a2.ch), { alice: ALICE.user_info, bob: BOB.user_info });
  assert.deepEqual(a2.ch.members.me, { id: 'alice', info: ALICE.user_info });
  const b2 = await join(BOB);
  assert.equal(b2.members.count, 2);
  assert.deepEqual(membersOf(b2.ch), { alice: ALICE.user_info, bob: BOB.user_info });

  const all = [a1, b1, a2, b2];
  await sentinel(all, 'after-joins');
  assert.deepEqual(a1.t.added, ['bob'], 'alice#1 saw bob added exactly once');
  assert.deepEqual(b1.t.added, [], `bob#1 must not see alice#2 join; frames=${JSON.stringify(b1.p.frames)}`);
  assert.deepEqual(a2.t.added, [], `alice#2 must not see bob#2 join; frames=${JSON.stringify(a2.p.frames)}`);
  assert.deepEqual(b2.t.added, []);
  for (const s of all) assert.equal(s.ch.members.count, 2);

  // HTTP API view
  const users = await (await server.get({ path: `/channels/${ROOM}/users` })).json();
  assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob']);
  const info = await (await server.get({ path: `/channels/${ROOM}`, params: { info: 'user_count' } })).json();
  assert.equal(info.occupied, true);
  assert.equal(info.user_count, 2);

  // alice#1 leaves (unsubscribe). A marker subscription on the same socket proves herald
  // processed the unsubscribe; the sentinel then proves no member_removed was queued.
  a1.p.unsubscribe(ROOM);
  await h.subscribe(a1.p, 'marker-a1');
  await sentinel([b1, a2, b2], 'after-alice1-left');
  assert.deepEqual(b1.t.removed, [], `member_removed sent while alice still has a socket; frames=${JSON.stringify(b1.p.frames)}`);
  assert.deepEqual(b2.t.removed, []);
  assert.equal(b1.ch.members.count, 2);

  // alice's last socket disconnects: member_removed exactly once at each remaining socket
  const removedAtB1 = h.once(b1.ch, 'pusher:member_removed', { what: 'member_removed alice at bob#1' });
  const removedAtB2 = h.once(b2.ch, 'pusher:member_removed', { what: 'member_removed alice at bob#2' });
  a2.p.disconnect();
  assert.deepEqual(await removedAtB1, { id: 'alice', info: ALICE.user_info });
  await removedAtB2;
  const remFrame = b1.p.frames.find((f) => f.event === 'pusher_internal:member_removed');
  assert.equal(remFrame.channel, ROOM);
  assert.equal(remFrame.data.user_id, 'alice');
  await sentinel([b1, b2], 'after-alice-gone');
  assert.deepEqual(b1.t.removed, ['alice']);
  assert.deepEqual(b2.t.removed, ['alice']);
  assert.equal(b1.ch.members.count, 1);
  assert.deepEqual(membersOf(b2.ch), { bob: BOB.user_info });

  // "here" list for a newcomer is correct
  const addedC = h.once(b1.ch, 'pusher:member_added', { what: 'carol added at bob#1' });
  const c1 = await join(CAROL);
  assert.equal(c1.members.count, 2);
  assert.deepEqual(membersOf(c1.ch), { bob: BOB.user_info, carol: CAROL.user_info });
  assert.deepEqual((await addedC).id, 'carol');
  await h.waitFor(async () => {
    const u = await (await server.get({ path: `/channels/${ROOM}/users` })).json();
    return JSON.stringify(u.users.map((x) => x.id).sort()) === JSON.stringify(['bob', 'carol']);
  }, { what: '/users to show bob and carol' });

  // bob#1 disconnects, bob#2 remains: carol sees nothing; then bob#2 leaves -> removed once
  b1.p.unsubscribe(ROOM);
  await h.subscribe(b1.p, 'marker-b1');
  await sentinel([b2, c1], 'after-bob1-left');
  assert.deepEqual(c1.t.removed, []);
  const removedBob = h.once(c1.ch, 'pusher:member_removed', { what: 'bob removed at carol' });
  b2.p.unsubscribe(ROOM);
  assert.equal((await removedBob).id, 'bob');
  await sentinel([c1], 'end');
  assert.deepEqual(c1.t.removed, ['bob']);
  assert.equal(c1.ch.members.count, 1);

  for (const s of [a1, b1, b2, c1]) s.p.disconnect();
});

test('presence: numeric user_id and member list via SDK-signed channel_data', async () => {
  const p = await herald.connectedClient({ user: { user_id: 42, user_info: { n: 1 } } });
  const ch = p.subscribe('presence-numeric');
  const members = await h.once(ch, 'pusher:subscription_succeeded', { what: 'numeric presence subscribe' })
    .catch((e) => { e.message += `; frames=${JSON.stringify(p.frames)}`; throw e; });
  assert.equal(members.count, 1);
  assert.equal(String(members.me.id), '42');
  assert.deepEqual(members.me.info, { n: 1 });
  p.disconnect();
});
