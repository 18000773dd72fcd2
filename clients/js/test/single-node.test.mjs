// One node, no Redis: the plugin with pusher-js and laravel-echo, refusals, stock clients, and
// what the plugin sends.
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import Echo from 'laravel-echo';
import PusherServer from 'pusher';
import { withRecovery } from 'herald-recovery';
import h from '../harness.js';

const { Herald, Proxy, pusherClient, record, named, appEvents, subscribed, settle, waitFor,
  waitConnected } = h;

let node;
before(async () => { node = await Herald.start(); });
after(async () => { if (node) await node.stop(); });

/** A proxy to the node and a client through it, both closed when the test ends. */
async function setUp(t, { plugin = true, sdk = node.sdk, user } = {}) {
  const proxy = await Proxy.start(node.port);
  const client = pusherClient(proxy.port, { sdk, user });
  const pusher = plugin ? withRecovery(client) : client;
  t.after(async () => { pusher.disconnect(); await proxy.close(); });
  await waitConnected(pusher);
  return { proxy, pusher };
}

const { evt } = h;
const publishRange = (channel, from, to) => h.publishRange(channel, from, to, node);

test('pusher-js + plugin: the missed events once, in order, then live ones', async (t) => {
  const { proxy, pusher } = await setUp(t);
  const channel = pusher.subscribe('orders.1');
  const log = record(channel);
  await subscribed(channel);
  await publishRange('orders.1', 1, 2);
  await waitFor(() => named(log, 'evt').length === 2, { what: 'the first 2 events' });
  const socketBefore = pusher.connection.socket_id;

  await proxy.outage(() => publishRange('orders.1', 3, 5));
  await waitFor(() => named(log, 'evt').length === 5, { what: 'the 3 missed events' });
  assert.notEqual(pusher.connection.socket_id, socketBefore, 'a new connection');
  await publishRange('orders.1', 6, 7);
  await waitFor(() => named(log, 'evt').length === 7, { what: 'the live events' });
  await settle(log);

  assert.deepEqual(appEvents(log), [
    evt(1), evt(2),
    ['herald:recovery', { recovered: true, replayed: 3 }],
    evt(3), evt(4), evt(5), evt(6), evt(7),
  ]);
  assert.equal(named(log, 'pusher:subscription_succeeded').length, 2);
});

test('a connection cut during a replay resumes from the last event the client got', async (t) => {
  const { proxy, pusher } = await setUp(t);
  const channel = pusher.subscribe('orders.r');
  const log = record(channel);
  await subscribed(channel);
  await publishRange('orders.r', 1, 2);
  await waitFor(() => named(log, 'evt').length === 2);
  const verdicts = () => named(log, 'herald:recovery').length;

  // 1. Cut right after the verdict: subscription_succeeded told the channel's position (5),
  //    but the client never got 3..5, so it must resume from 2 again.
  proxy.cutAfter = (text) => text.includes('"herald:recovery"');
  proxy.hold();
  proxy.cut();
  await publishRange('orders.r', 3, 5);
  await waitFor(() => proxy.held.length > 0, { what: 'a reconnect' });
  proxy.release();
  proxy.hold(); // the reconnect after the next cut waits
  await waitFor(() => verdicts() === 1 && proxy.held.length > 0, { what: 'the verdict, then the cut' });
  // 2. Cut right after the first replayed event: resume from 3.
  proxy.cutAfter = (text) => text.includes('"evt"');
  await publishRange('orders.r', 6, 6);
  proxy.release();
  proxy.hold();
  await waitFor(() => verdicts() === 2 && proxy.held.length > 0, { what: 'the second verdict, then the cut' });
  // 3. Nothing cut.
  proxy.release();
  await waitFor(() => named(log, 'evt').length === 6, { what: 'every event' });
  await publishRange('orders.r', 7, 7);
  await waitFor(() => named(log, 'evt').length === 7);
  await settle(log);

  assert.deepEqual(appEvents(log), [
    evt(1), evt(2),
    ['herald:recovery', { recovered: true, replayed: 3 }],
    ['herald:recovery', { recovered: true, replayed: 4 }], evt(3),
    ['herald:recovery', { recovered: true, replayed: 3 }], evt(4), evt(5), evt(6),
    evt(7),
  ]);
});

test('laravel-echo + plugin: public, private and presence channels resume', async (t) => {
  const user = { user_id: 'u1', user_info: { name: 'Ada' } };
  const { proxy, pusher } = await setUp(t, { user });
  const echo = new Echo({ broadcaster: 'reverb', client: pusher, key: 'key1' });
  const channels = { 'orders.2': echo.channel('orders.2'), 'private-orders.x': echo.private('orders.x'),
    'presence-orders.p': echo.join('orders.p') };
  const logs = {};
  for (const [name, ch] of Object.entries(channels)) {
    const log = (logs[name] = []);
    ch.listen('.evt', (d) => log.push(['evt', d]))
      .listen('.herald:recovery', (d) => log.push(['herald:recovery', d]));
  }
  const here = [];
  channels['presence-orders.p'].here((members) => here.push(members));
  for (const name of Object.keys(channels)) await subscribed(pusher.channel(name));
  assert.deepEqual(here, [[{ name: 'Ada' }]]);

  for (const name of Object.keys(channels)) await publishRange(name, 1, 1);
  await waitFor(() => Object.values(logs).every((l) => l.length === 1), { what: 'one event each' });
  await proxy.outage(async () => {
    for (const name of Object.keys(channels)) await publishRange(name, 2, 3);
  });
  await waitFor(() => Object.values(logs).every((l) => l.length === 4), { what: 'the missed events' });
  for (const name of Object.keys(channels)) await publishRange(name, 4, 4);
  await waitFor(() => Object.values(logs).every((l) => l.length === 5), { what: 'the live events' });
  await settle(logs['orders.2']);

  for (const [name, log] of Object.entries(logs)) {
    assert.deepEqual(log, [evt(1), ['herald:recovery', { recovered: true, replayed: 2 }],
      evt(2), evt(3), evt(4)], name);
  }
  // Presence was re-established as usual (pusher-js's own re-subscribe, plus a position).
  assert.deepEqual(here, [[{ name: 'Ada' }], [{ name: 'Ada' }]]);
});

test('a gap larger than the channel keeps: not recovered (too_many_missed), live events resume', async (t) => {
  const { proxy, pusher } = await setUp(t);
  const channel = pusher.subscribe('small.1');
  const log = record(channel);
  await subscribed(channel);
  await publishRange('small.1', 1, 1);
  await waitFor(() => named(log, 'evt').length === 1);

  await proxy.outage(() => publishRange('small.1', 2, 9)); // 8 missed, the rule keeps 5
  await waitFor(() => named(log, 'herald:recovery').length === 1, { what: 'the verdict' });
  // Not recovered: the client starts again from the channel's position at that subscribe
  // (9), so a second outage right away, with no live event in between, recovers.
  await proxy.outage(() => publishRange('small.1', 10, 11));
  await waitFor(() => named(log, 'evt').length === 3, { what: 'the 2 missed events' });
  await publishRange('small.1', 12, 13);
  await waitFor(() => named(log, 'evt').length === 5, { what: 'live events' });
  await settle(log);
  assert.deepEqual(appEvents(log), [
    evt(1),
    ['herald:recovery', { recovered: false, replayed: 0, reason: 'too_many_missed' }],
    ['herald:recovery', { recovered: true, replayed: 2 }], evt(10), evt(11),
    evt(12), evt(13),
  ]);
});

test('stock pusher-js without the plugin: events as usual, no position, no herald:recovery', async (t) => {
  const { proxy, pusher } = await setUp(t, { plugin: false });
  const raw = [];
  const decoded = [];
  const rawTap = () => pusher.connection.connection.transport.bind('message', (m) => raw.push(JSON.parse(m.data)));
  rawTap();
  pusher.connection.bind('connected', rawTap);
  pusher.connection.bind('message', (m) => decoded.push(m));
  const global = [];
  pusher.bind_global((name, data) => global.push([name, data]));
  const channel = pusher.subscribe('orders.8');
  const log = record(channel);
  // A client with the plugin on the same channel, to show that it is a history channel.
  const { pusher: withPlugin } = await setUp(t);
  const pluginRaw = [];
  withPlugin.connection.connection.transport.bind('message', (m) => pluginRaw.push(JSON.parse(m.data)));
  const pluginChannel = withPlugin.subscribe('orders.8');
  await subscribed(channel);
  await subscribed(pluginChannel);
  await publishRange('orders.8', 1, 2);
  await waitFor(() => named(log, 'evt').length === 2);

  // Without the plugin pusher-js re-subscribes without a position: what was published while
  // away is not replayed (as with any Pusher server), and nothing about recovery shows.
  await proxy.outage(() => publishRange('orders.8', 3, 3));
  await waitFor(() => named(log, 'pusher:subscription_succeeded').length === 2);
  await publishRange('orders.8', 4, 4);
  await waitFor(() => named(log, 'evt').length === 3);
  await waitFor(() => pluginRaw.filter((f) => f.event === 'evt').length === 4);
  await settle(log);

  assert.deepEqual(appEvents(log), [evt(1), evt(2), evt(4)]);
  assert.equal(global.filter(([n]) => n === 'herald:recovery').length, 0);
  // The frames themselves are as a Pusher server sends them: no position, no verdict ...
  assert.deepEqual(raw.filter((f) => f.channel === 'orders.8').map((f) => f.event), [
    'pusher_internal:subscription_succeeded', 'evt', 'evt',
    'pusher_internal:subscription_succeeded', 'evt',
  ]);
  for (const f of raw) {
    assert.equal(f.position, undefined, `frame to a stock client: ${JSON.stringify(f)}`);
    assert.notEqual(f.event, 'herald:recovery');
  }
  // ... while the plugin's connection gets positions on the same channel.
  for (const f of pluginRaw.filter((x) => x.event === 'evt' || x.event.endsWith('subscription_succeeded'))) {
    assert.equal(typeof f.position?.epoch, 'string', `frame to the plugin: ${JSON.stringify(f)}`);
  }
  // And pusher-js's decoded messages have only the stock keys.
  assert.ok(decoded.length >= 5);
  for (const m of decoded) {
    assert.ok(Object.keys(m).every((k) => ['event', 'channel', 'data', 'user_id'].includes(k)),
      `decoded message with extra keys: ${JSON.stringify(m)}`);
  }
});

test('what the plugin sends: no position on first subscribes, none after unsubscribing', async (t) => {
  const { proxy, pusher } = await setUp(t);
  // Wrapped below the plugin: what goes on the wire.
  const sent = [];
  const sendEvent = pusher.connection.send_event.bind(pusher.connection);
  pusher.connection.send_event = (name, data, channel) => {
    sent.push([name, structuredClone(data), pusher.connection.socket_id]);
    return sendEvent(name, data, channel);
  };
  const subscribes = (name) => sent.filter(([n, d]) => n === 'pusher:subscribe' && d.channel === name)
    .map(([, d]) => d);

  const kept = pusher.subscribe('orders.9a');
  const left = pusher.subscribe('orders.9b');
  const plain = pusher.subscribe('news.9'); // no history rule: no positions at all
  // Leaves the channel from its own event handler, before the plugin reads the frame.
  const leftInHandler = pusher.subscribe('orders.9c');
  leftInHandler.bind('evt', () => pusher.unsubscribe('orders.9c'));
  for (const ch of [kept, left, plain, leftInHandler]) await subscribed(ch);
  // Unsubscribed while its subscribe is pending: pusher-js leaves once subscribed.
  pusher.subscribe('orders.9d');
  pusher.unsubscribe('orders.9d');
  const keptLog = record(kept);
  for (const name of ['orders.9a', 'orders.9b', 'news.9', 'orders.9c']) await publishRange(name, 1, 2);
  await waitFor(() => named(keptLog, 'evt').length === 2);
  await waitFor(() => sent.some(([n, d]) => n === 'pusher:unsubscribe' && d.channel === 'orders.9c'));
  await waitFor(() => sent.some(([n, d]) => n === 'pusher:unsubscribe' && d.channel === 'orders.9d'));
  pusher.unsubscribe('orders.9b');

  for (const name of ['orders.9a', 'orders.9b', 'news.9', 'orders.9c', 'orders.9d']) {
    assert.equal(subscribes(name).length, 1, name);
    assert.equal(subscribes(name)[0].position, undefined, `first subscribe of ${name}`);
  }

  await proxy.outage(async () => {});
  await subscribed(kept);
  await subscribed(plain);
  const { epoch } = await node.history('orders.9a', { limit: 1 });
  assert.deepEqual(subscribes('orders.9a')[1].position, { epoch, offset: 2 });
  assert.equal(subscribes('news.9')[1].position, undefined, 'a channel without history');
  // Channels left are not re-subscribed by pusher-js at all.
  for (const name of ['orders.9b', 'orders.9c', 'orders.9d']) assert.equal(subscribes(name).length, 1, name);

  // The plugin asked for positions once on each connection, before its first subscribe.
  const sockets = [...new Set(sent.map(([, , socket]) => socket))];
  assert.equal(sockets.length, 2);
  for (const socket of sockets) {
    const names = sent.filter(([, , s]) => s === socket).map(([n]) => n)
      .filter((n) => n === 'herald:positions' || n === 'pusher:subscribe');
    assert.equal(names[0], 'herald:positions', socket);
    assert.equal(names.filter((n) => n === 'herald:positions').length, 1, socket);
  }

  // Subscribing again after leaving is a first subscribe: no position, no verdict.
  const again = [pusher.subscribe('orders.9b'), pusher.subscribe('orders.9c'), pusher.subscribe('orders.9d')];
  const logs = again.map(record);
  for (const ch of again) await subscribed(ch);
  for (const name of ['orders.9b', 'orders.9c', 'orders.9d']) {
    assert.equal(subscribes(name).length, 2, name);
    assert.equal(subscribes(name)[1].position, undefined, `subscribe of ${name} after leaving it`);
  }
  await settle(keptLog);
  assert.ok(logs.every((l) => named(l, 'herald:recovery').length === 0));
  assert.deepEqual(named(keptLog, 'herald:recovery'), [{ recovered: true, replayed: 0 }]);
});

test('the plugin leaves stock features alone: client events, presence, encrypted channels', async (t) => {
  const key = Buffer.alloc(32, 7).toString('base64');
  const sdk = new PusherServer({ appId: 'app1', key: 'key1', secret: 'secret1', host: '127.0.0.1',
    port: node.port, useTLS: false, encryptionMasterKeyBase64: key });
  const a = await setUp(t, { sdk, user: { user_id: 'a', user_info: { n: 'A' } } });
  const b = await setUp(t, { sdk, user: { user_id: 'b', user_info: { n: 'B' } } });

  // Client events on a private history channel: delivered, and never given a position.
  const rawB = [];
  b.pusher.connection.connection.transport.bind('message', (m) => rawB.push(JSON.parse(m.data)));
  const chatA = a.pusher.subscribe('private-orders.chat');
  const chatB = b.pusher.subscribe('private-orders.chat');
  const chatLog = record(chatB);
  await subscribed(chatA);
  await subscribed(chatB);
  chatA.trigger('client-typing', { who: 'a' });
  await waitFor(() => named(chatLog, 'client-typing').length === 1, { what: 'the client event' });
  assert.deepEqual(named(chatLog, 'client-typing'), [{ who: 'a' }]);
  const frame = rawB.find((f) => f.event === 'client-typing');
  assert.equal(frame.position, undefined, `client event frame: ${JSON.stringify(frame)}`);

  // Presence: members come and go as usual.
  const roomA = a.pusher.subscribe('presence-orders.room');
  const roomLog = record(roomA);
  await subscribed(roomA);
  const roomB = b.pusher.subscribe('presence-orders.room');
  await subscribed(roomB);
  await waitFor(() => named(roomLog, 'pusher:member_added').length === 1);
  assert.deepEqual(named(roomLog, 'pusher:member_added'), [{ id: 'b', info: { n: 'B' } }]);
  b.pusher.unsubscribe('presence-orders.room');
  await waitFor(() => named(roomLog, 'pusher:member_removed').length === 1);
  assert.equal(roomA.members.count, 1);

  // Encrypted: decrypted as usual, live and replayed.
  const secret = a.pusher.subscribe('private-encrypted-orders.e');
  const secretLog = record(secret);
  await subscribed(secret);
  await sdk.trigger('private-encrypted-orders.e', 'evt', { n: 1 });
  await waitFor(() => named(secretLog, 'evt').length === 1);
  await a.proxy.outage(() => sdk.trigger('private-encrypted-orders.e', 'evt', { n: 2 }));
  await waitFor(() => named(secretLog, 'evt').length === 2);
  await settle(secretLog);
  assert.deepEqual(appEvents(secretLog), [evt(1), ['herald:recovery', { recovered: true, replayed: 1 }], evt(2)]);
});
