'use strict';
// Two herald nodes on a throw-away redis-server: a pusher-js client on node A, the console on
// node B, and the client's events show in B's console.
//
// Nodes tell each other which apps their consoles watch every 2 s (herald-hub console.rs,
// WATCH_EVERY), and a node sends its records to the bus only for apps watched elsewhere: events
// on A in the first seconds after B's console opens are not seen by B. The tests first wait for
// that hand-shake (a probe client on A until its connection shows on B), bounded, and say how
// long it took.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');

const h = require('../lib/harness');

let redis;
let nodeA;
let nodeB;
let browser;
const contexts = [];

before(async () => {
  redis = await h.startRedis();
  [nodeA, nodeB] = await Promise.all([
    h.startHerald({ nodeId: 'na', redisPort: redis.port }),
    h.startHerald({ nodeId: 'nb', redisPort: redis.port }),
  ]);
  browser = await h.launchBrowser();
});

after(async () => {
  h.disconnectAll();
  while (contexts.length) await contexts.pop().close().catch(() => {});
  if (browser) await browser.close();
  await Promise.all([nodeA && nodeA.stop(), nodeB && nodeB.stop()]);
  if (redis) await redis.stop();
});

async function consoleOn(node) {
  const { context, page } = await h.newPage(browser);
  contexts.push(context);
  await h.openConsole(page, node);
  return page;
}

const bySocket = (page, type, socketId) =>
  h.rows(page, type).filter({ has: page.locator('[data-col=socket]', { hasText: socketId }) });

/** Connect probe clients on `node` until one shows in `page`'s console; resolves the ms it took. */
async function crossNodeReady(page, node, { timeout = 8000 } = {}) {
  const t0 = Date.now();
  await h.waitFor(async () => {
    const probe = await h.pusherClient(node.port);
    const seen = await bySocket(page, 'connection_opened', probe.connection.socket_id).first()
      .waitFor({ timeout: 700 }).then(() => true, () => false);
    probe.disconnect();
    return seen;
  }, { timeout, interval: 0, what: `events of ${node.nodeId} in another node's console` });
  return Date.now() - t0;
}

test('a client on node A shows in the console of node B (connection, subscription, event), and B lists both nodes', async (t) => {
  const p = await consoleOn(nodeB);
  assert.match(await p.getByTestId('node-name').innerText(), /nb/);
  t.diagnostic(`events of na reached nb's console ${await crossNodeReady(p, nodeA)} ms after it opened`);

  const client = await h.pusherClient(nodeA.port);
  const socketId = client.connection.socket_id;
  const ch = await h.subscribe(client, 'orders');

  const opened = bySocket(p, 'connection_opened', socketId).first();
  await opened.waitFor();
  assert.equal(await opened.locator('[data-col=node]').innerText(), 'na');
  const subscribed = h.rows(p, 'subscribed', 'orders').filter({ has: p.locator('[data-col=socket]', { hasText: socketId }) }).first();
  await subscribed.waitFor();
  assert.equal(await subscribed.locator('[data-col=node]').innerText(), 'na');

  // published through B's HTTP API, delivered by A: A's api_event row (1 socket) shows in B's console
  const got = new Promise((resolve) => ch.bind('cross', resolve));
  await h.sdk(nodeB.port).trigger('orders', 'cross', { n: 1 });
  assert.deepEqual(await got, { n: 1 });
  const fromA = h.rows(p, 'api_event', 'orders').and(p.locator('[data-event="cross"]'))
    .filter({ has: p.locator('[data-col=node]', { hasText: /^na$/ }) }).first();
  await fromA.waitFor();
  assert.ok(Number(await fromA.locator('[data-col=sockets]').innerText()) >= 1);

  // the counts panel of B knows both nodes, ready
  for (const id of ['na', 'nb']) {
    const node = p.locator(`[data-testid=nodes] [data-testid=node][data-node="${id}"]`);
    await node.waitFor();
    assert.equal(await node.getAttribute('data-ready'), 'true', `node ${id} not ready`);
  }
  assert.deepEqual(p.errors, []);
});

test('with consoles open on both nodes, each event shows once in each (no echo of a node\'s own records from the bus)', async (t) => {
  const pa = await consoleOn(nodeA);
  const pb = await consoleOn(nodeB);
  t.diagnostic(`na -> nb console: ${await crossNodeReady(pb, nodeA)} ms; nb -> na console: ${await crossNodeReady(pa, nodeB)} ms`);

  const client = await h.pusherClient(nodeA.port);
  const socketId = client.connection.socket_id;
  await bySocket(pb, 'connection_opened', socketId).first().waitFor();
  // B got A's batch from Redis, so A was sent the same message; a later record of B reaching A's
  // console means A has handled that message too.
  const marker = await h.pusherClient(nodeB.port);
  await bySocket(pa, 'connection_opened', marker.connection.socket_id).first().waitFor();
  await bySocket(pb, 'connection_opened', marker.connection.socket_id).first().waitFor();
  // and B has handled its own marker batch coming back (if it comes back): wait for A's next record on B
  const marker2 = await h.pusherClient(nodeA.port);
  await bySocket(pb, 'connection_opened', marker2.connection.socket_id).first().waitFor();
  await bySocket(pa, 'connection_opened', marker2.connection.socket_id).first().waitFor();

  const counts = {
    'A console, A client': await bySocket(pa, 'connection_opened', socketId).count(),
    'B console, A client': await bySocket(pb, 'connection_opened', socketId).count(),
    'A console, B client': await bySocket(pa, 'connection_opened', marker.connection.socket_id).count(),
    'B console, B client': await bySocket(pb, 'connection_opened', marker.connection.socket_id).count(),
  };
  assert.deepEqual(counts, {
    'A console, A client': 1, 'B console, A client': 1, 'A console, B client': 1, 'B console, B client': 1,
  }, `connection_opened rows per console: ${JSON.stringify(counts)}`);
});
