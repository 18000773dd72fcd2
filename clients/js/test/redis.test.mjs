// Nodes on Redis: resuming on another node, after a node was killed, and after Redis lost
// everything.
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { withRecovery } from 'herald-recovery';
import h from '../harness.js';

const { Redis, Herald, Proxy, pusherClient, record, named, appEvents, subscribed, settle,
  waitFor, waitConnected, acrossNodes, evt, publishRange } = h;

let redis;
before(async () => { redis = await Redis.start(); });
after(async () => { if (redis) await redis.kill(); });

async function nodes(t, n, bus) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const node = await Herald.start({ bus });
    t.after(() => node.stop());
    out.push(node);
    // 504s the publishes met (they are expected while the cluster recovers): in the output.
    t.after(() => {
      for (const u of node.unconfirmed) t.diagnostic(`504 from ${node.nodeId}: ${JSON.stringify(u)}`);
    });
  }
  return out;
}

async function clientVia(t, proxy) {
  const pusher = withRecovery(pusherClient(proxy.port));
  t.after(async () => { pusher.disconnect(); await proxy.close(); });
  await waitConnected(pusher);
  return pusher;
}

test('across nodes: left node A, resumed on node B', async (t) => {
  const [a, b] = await nodes(t, 2, { url: redis.url });
  await acrossNodes(t, a, b, 'orders.3');
});

test('a node killed (SIGKILL) under the client: resumed on another node', async (t) => {
  const [a, b] = await nodes(t, 2, { url: redis.url });
  const proxy = await Proxy.start(a.port);
  const pusher = await clientVia(t, proxy);
  const channel = pusher.subscribe('orders.5');
  const log = record(channel);
  await subscribed(channel);
  await publishRange('orders.5', 1, 2, b);
  await waitFor(() => named(log, 'evt').length === 2, { what: 'events published on B, on A' });

  proxy.hold();
  proxy.setTarget(b.port);
  await a.kill('SIGKILL'); // the proxy passes the closed connection on to the client
  await publishRange('orders.5', 3, 5, b);
  await waitFor(() => proxy.held.length > 0, { what: 'the client to try to reconnect' });
  proxy.release();
  await waitFor(() => named(log, 'evt').length === 5, { what: 'the missed events' });
  await publishRange('orders.5', 6, 7, b);
  await waitFor(() => named(log, 'evt').length === 7, { what: 'live events' });
  await settle(log);

  assert.deepEqual(proxy.forwardedTo, [a.port, b.port]);
  assert.deepEqual(appEvents(log), [
    evt(1), evt(2),
    ['herald:recovery', { recovered: true, replayed: 3 }],
    evt(3), evt(4), evt(5), evt(6), evt(7),
  ]);
});

test('Redis restarted empty while the client is away: not recovered, then live again', async (t) => {
  const own = await Redis.start(); // restarted below: not shared with other tests
  t.after(() => own.kill());
  const [a] = await nodes(t, 1, { url: own.url });
  const proxy = await Proxy.start(a.port);
  const pusher = await clientVia(t, proxy);
  const channel = pusher.subscribe('orders.6');
  const log = record(channel);
  await subscribed(channel);
  await publishRange('orders.6', 1, 2, a);
  await waitFor(() => named(log, 'evt').length === 2);
  const before = await a.history('orders.6');

  await proxy.outage(async () => {
    await own.restartEmpty();
    await publishRange('orders.6', 3, 4, a); // retried while the node answers 503
  });
  await waitFor(() => named(log, 'herald:recovery').length === 1, { what: 'the verdict' });
  const afterRestart = await a.history('orders.6');
  assert.notEqual(afterRestart.epoch, before.epoch, 'a new stream');

  // The client now holds the new stream's position: the next outage recovers.
  await proxy.outage(() => publishRange('orders.6', 5, 6, a));
  await waitFor(() => named(log, 'evt').length === 4, { what: 'the 2 missed events' });
  await publishRange('orders.6', 7, 7, a);
  await waitFor(() => named(log, 'evt').length === 5, { what: 'live events' });
  await settle(log);
  assert.deepEqual(appEvents(log), [
    evt(1), evt(2),
    ['herald:recovery', { recovered: false, replayed: 0, reason: 'epoch_changed' }],
    ['herald:recovery', { recovered: true, replayed: 2 }], evt(5), evt(6),
    evt(7),
  ]);
});
