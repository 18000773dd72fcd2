'use strict';
// The debug console page on one herald node, driven in headless Chromium.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');

const h = require('../lib/harness');

let herald;
let browser;
const contexts = [];

before(async () => {
  herald = await h.startHerald();
  browser = await h.launchBrowser();
});

after(async () => {
  h.disconnectAll();
  if (browser) await browser.close();
  if (herald) await herald.stop();
});

afterEach(async () => {
  h.disconnectAll();
  while (contexts.length) await contexts.pop().close().catch(() => {});
});

async function page() {
  const { context, page: p } = await h.newPage(browser);
  contexts.push(context);
  return p;
}

const TOKEN_KEY = 'herald-console.token';
const apiRequests = (p) => p.requests.filter((r) => r.url.includes('/console/api/'));
const cellText = (row, col) => row.locator(`[data-col="${col}"]`).innerText();

test('the token from #token= opens the console, the fragment is removed, the token never goes into a URL', async () => {
  const p = await page();
  await p.goto(`${herald.base}/console#token=${h.TOKEN}`);
  await p.getByTestId('app-view').waitFor({ state: 'visible' });
  await h.waitForLive(p);

  assert.equal(new URL(p.url()).hash, '', `fragment still in the URL: ${p.url()}`);
  assert.ok(!p.url().includes(h.TOKEN));
  assert.equal(await p.evaluate((k) => sessionStorage.getItem(k), TOKEN_KEY), h.TOKEN);
  assert.equal(await p.evaluate((k) => localStorage.getItem(k), TOKEN_KEY), null);
  // app selector filled from /console/api/apps, node id shown
  assert.equal(await p.getByTestId('app-select').inputValue(), 'app1');
  assert.match(await p.getByTestId('app-select').innerText(), /app1/);
  assert.match(await p.getByTestId('node-name').innerText(), /n1/);

  const calls = apiRequests(p);
  assert.ok(calls.some((r) => r.url.includes('/console/api/apps')), 'no call to /console/api/apps');
  assert.ok(calls.some((r) => r.url.includes('/console/api/feed?app=app1')), 'no call to /console/api/feed');
  for (const r of p.requests) assert.ok(!r.url.includes(h.TOKEN), `token in a request URL: ${r.url}`);
  for (const r of calls) assert.equal(r.headers.authorization, `Bearer ${h.TOKEN}`, `${r.url} without the bearer token`);
  assert.deepEqual(p.errors, []);
});

test('the login field: a wrong token is refused with a message, the right one opens the console, log out forgets it', async () => {
  const p = await page();
  await p.goto(`${herald.base}/console`);
  await p.getByTestId('login-view').waitFor({ state: 'visible' });
  assert.ok(await p.getByTestId('app-view').isHidden());

  await p.getByTestId('login-token').fill('not-the-token');
  await p.getByTestId('login-submit').click();
  await h.waitFor(async () => (await p.getByTestId('login-message').innerText()).trim() !== '', { what: 'login message after a wrong token' });
  assert.ok(await p.getByTestId('login-view').isVisible());
  assert.equal(await p.evaluate((k) => sessionStorage.getItem(k), TOKEN_KEY), null);

  await p.getByTestId('login-token').fill(h.TOKEN);
  await p.getByTestId('login-submit').click();
  await p.getByTestId('app-view').waitFor({ state: 'visible' });
  await h.waitForLive(p);
  assert.equal(await p.getByTestId('app-select').inputValue(), 'app1');
  assert.equal(await p.evaluate((k) => sessionStorage.getItem(k), TOKEN_KEY), h.TOKEN);

  // the session survives a reload of the tab
  await p.reload();
  await p.getByTestId('app-view').waitFor({ state: 'visible' });

  await p.getByTestId('logout').click();
  await p.getByTestId('login-view').waitFor({ state: 'visible' });
  assert.equal(await p.evaluate((k) => sessionStorage.getItem(k), TOKEN_KEY), null);
  await p.reload();
  await p.getByTestId('login-view').waitFor({ state: 'visible' });
  assert.deepEqual(p.errors, []);
});

test('a 401 from the API sends the page back to the login view with a message', async () => {
  const p = await page();
  await p.goto(`${herald.base}/console#token=wrong-token`);
  await p.getByTestId('login-view').waitFor({ state: 'visible' });
  await h.waitFor(async () => (await p.getByTestId('login-message').innerText()).trim() !== '', { what: 'login message' });
  assert.equal(new URL(p.url()).hash, '');
  assert.equal(await p.evaluate((k) => sessionStorage.getItem(k), TOKEN_KEY), null, 'a refused token stays stored');
});

test('a pusher-js client connects and subscribes: connection_opened and subscribed rows, live counts', async () => {
  const p = await page();
  await h.openConsole(p, herald);

  const client = await h.pusherClient(herald.port);
  const socketId = client.connection.socket_id;
  await h.subscribe(client, 'orders');

  const opened = h.rows(p, 'connection_opened').filter({ has: p.locator(`[data-col=socket]`, { hasText: socketId }) });
  await opened.first().waitFor();
  assert.equal(await cellText(opened.first(), 'node'), 'n1');

  const subscribed = h.rows(p, 'subscribed', 'orders');
  await subscribed.first().waitFor();
  assert.equal(await cellText(subscribed.first(), 'channel'), 'orders');
  assert.equal(await cellText(subscribed.first(), 'socket'), socketId);

  // new rows on top: the subscription came after the connection
  const types = await p.locator('[data-testid=row]').evaluateAll((trs) => trs.map((tr) => tr.dataset.type));
  assert.ok(types.indexOf('subscribed') < types.indexOf('connection_opened'), `order: ${types}`);

  // counts panel (polled every 2 s)
  await h.waitFor(async () => Number(await p.getByTestId('stats-connections').innerText()) >= 1, { what: 'stats-connections >= 1' });
  const ch = p.locator('[data-testid=stats-channels] [data-channel="orders"]');
  await ch.waitFor();
  assert.equal(await ch.locator('[data-testid=subscription-count] b').innerText(), '1');
  const node = p.locator('[data-testid=nodes] [data-testid=node][data-node="n1"]');
  await node.waitFor();
  assert.equal(await node.getAttribute('data-ready'), 'true');

  client.disconnect();
  await h.rows(p, 'connection_closed').filter({ has: p.locator('[data-col=socket]', { hasText: socketId }) }).first().waitFor();
  assert.deepEqual(p.errors, []);
});

test('an event triggered with the Node SDK shows as an api_event row with channel, name, size and sockets', async () => {
  const p = await page();
  await h.openConsole(p, herald);
  const client = await h.pusherClient(herald.port);
  const ch = await h.subscribe(client, 'orders');
  const got = new Promise((resolve) => ch.bind('order-created', resolve));

  const data = { id: 42, item: 'tea' };
  await h.sdk(herald.port).trigger('orders', 'order-created', data);
  assert.deepEqual(await got, data);

  const row = h.rows(p, 'api_event', 'orders').and(p.locator('[data-event="order-created"]')).first();
  await row.waitFor();
  assert.equal(await cellText(row, 'channel'), 'orders');
  assert.match(await cellText(row, 'event'), /order-created/);
  assert.equal(await cellText(row, 'size'), `${Buffer.byteLength(JSON.stringify(data))} B`);
  const sockets = Number(await cellText(row, 'sockets'));
  assert.ok(sockets >= 1, `sockets = ${sockets}`);
});

test('a refused subscription (private channel, bad signature) shows as a subscription_refused row with a reason', async () => {
  const p = await page();
  await h.openConsole(p, herald);
  const client = await h.pusherClient(herald.port, {
    channelAuthorization: { customHandler: (_params, callback) => callback(null, { auth: 'key1:bad' }) },
  });
  await assert.rejects(h.subscribe(client, 'private-secrets'), /refused/);

  const row = h.rows(p, 'subscription_refused', 'private-secrets').first();
  await row.waitFor();
  assert.equal(await cellText(row, 'socket'), client.connection.socket_id);
  const reason = (await cellText(row, 'event')).trim();
  assert.ok(reason.length > 0, 'no reason shown');
});

test('the publish form delivers an event to a pusher-js client and shows the result; an error is shown too', async () => {
  const p = await page();
  await h.openConsole(p, herald);
  const client = await h.pusherClient(herald.port);
  const ch = await h.subscribe(client, 'orders');
  const got = new Promise((resolve) => ch.bind('from-console', resolve));

  await p.getByTestId('publish-channel').fill('orders');
  await p.getByTestId('publish-event').fill('from-console');
  await p.getByTestId('publish-data').fill('{"hello":1}');
  const resp = p.waitForResponse((r) => r.url().endsWith('/console/api/publish'));
  await p.getByTestId('publish-submit').click();
  assert.equal((await resp).status(), 200);
  assert.deepEqual(await Promise.race([got, h.delay(5000).then(() => 'timed out')]), { hello: 1 });
  await h.waitFor(async () => /published/i.test(await p.getByTestId('publish-result').innerText()), { what: 'publish result' });
  await h.rows(p, 'api_event', 'orders').and(p.locator('[data-event="from-console"]')).first().waitFor();

  // an invalid channel name: the server's error is shown
  await p.getByTestId('publish-channel').fill('not a valid channel!');
  const bad = p.waitForResponse((r) => r.url().endsWith('/console/api/publish'));
  await p.getByTestId('publish-submit').click();
  const badResp = await bad;
  assert.ok(badResp.status() >= 400, `publish to an invalid channel answered ${badResp.status()}`);
  const errBody = await badResp.json();
  await h.waitFor(async () => (await p.getByTestId('publish-result').getAttribute('class')).includes('err'), { what: 'publish error shown' });
  assert.ok((await p.getByTestId('publish-result').innerText()).includes(errBody.error), 'the server error is not shown');
});

test('payloads are off by default (no data in the feed nor the page) and shown once the switch is on', async () => {
  const p = await page();
  await h.openConsole(p, herald);
  const server = h.sdk(herald.port);
  assert.equal(await p.getByTestId('payloads-toggle').isChecked(), false);
  const feedCalls = () => apiRequests(p).filter((r) => r.url.includes('/console/api/feed'));
  assert.ok(feedCalls().every((r) => /[?&]payloads=0(&|$)/.test(r.url)), feedCalls().map((r) => r.url).join(', '));

  // the same feed read from node, to see exactly what the server sends with payloads=0
  const raw = await h.openFeed(herald.adminPort, 'app=app1&payloads=0');
  assert.equal(raw.status, 200);
  assert.match(raw.headers['content-type'] || '', /^text\/event-stream/);
  try {
    await h.waitFor(async () => {
      // the raw feed may not be registered yet when its headers arrive: trigger until it sees one
      await server.trigger('orders', 'secret-off', { card: 'OFF-1234' });
      return raw.events.some((e) => e.type === 'api_event' && e.event === 'secret-off');
    }, { interval: 200, what: 'api_event on the raw feed' });
    const ev = raw.events.find((e) => e.type === 'api_event' && e.event === 'secret-off');
    assert.ok(!('data' in ev), `payloads=0 feed carried data: ${JSON.stringify(ev)}`);
    assert.equal(typeof ev.size, 'number');
  } finally {
    raw.close();
  }

  const off = h.rows(p, 'api_event', 'orders').and(p.locator('[data-event="secret-off"]')).first();
  await off.waitFor();
  assert.equal(await off.getAttribute('data-payload'), null, 'the page got data with payloads off');
  assert.equal(await off.locator('[data-col=data]').count(), 0);
  assert.ok(!(await p.locator('#events').innerText()).includes('OFF-1234'), 'payload visible with payloads off');

  // switch on: the feed reconnects with payloads=1
  const reconnect = p.waitForRequest((r) => r.url().includes('/console/api/feed') && /[?&]payloads=1(&|$)/.test(r.url()));
  await p.getByTestId('payloads-toggle').check();
  await reconnect;
  await h.waitForLive(p);
  assert.equal(await p.evaluate(() => sessionStorage.getItem('herald-console.payloads.app1')), '1');

  const data = { card: 'ON-5678', note: '<img src=x onerror=alert(1)>' };
  await h.waitFor(async () => {
    await server.trigger('orders', 'secret-on', data);
    return (await h.rows(p, 'api_event', 'orders').and(p.locator('[data-event="secret-on"]')).count()) > 0;
  }, { interval: 300, what: 'api_event row with payloads on' });
  const on = h.rows(p, 'api_event', 'orders').and(p.locator('[data-event="secret-on"]')).first();
  assert.equal(await on.getAttribute('data-payload'), '1');
  const cell = on.locator('[data-col=data]');
  assert.ok(await cell.isVisible(), 'data not visible');
  assert.equal(await cell.innerText(), JSON.stringify(data));
  assert.equal(await p.locator('#events img').count(), 0, 'data was inserted as HTML');
  // click expands to pretty-printed JSON
  await on.click();
  assert.equal(await cell.innerText(), JSON.stringify(data, null, 2));

  // remembered for this app in this tab
  await p.reload();
  await p.getByTestId('app-view').waitFor({ state: 'visible' });
  assert.equal(await p.getByTestId('payloads-toggle').isChecked(), true);
  assert.deepEqual(p.errors, []);
});

test('filters (channel prefix, event name) and pause/resume with a pending count', async () => {
  const p = await page();
  await h.openConsole(p, herald);
  const server = h.sdk(herald.port);
  await server.trigger('orders-eu', 'created', { n: 1 });
  await server.trigger('chat', 'message', { n: 2 });
  await h.rows(p, 'api_event', 'orders-eu').first().waitFor();
  await h.rows(p, 'api_event', 'chat').first().waitFor();

  await p.getByTestId('filter-channel').fill('orders');
  assert.ok(await h.rows(p, 'api_event', 'chat').first().isHidden(), 'chat row shown with channel filter "orders"');
  assert.ok(await h.rows(p, 'api_event', 'orders-eu').first().isVisible());
  // applies to new rows too
  await server.trigger('chat', 'message', { n: 3 });
  await server.trigger('orders-eu', 'paid', { n: 4 });
  await h.rows(p, 'api_event', 'orders-eu').and(p.locator('[data-event="paid"]')).first().waitFor();
  assert.equal(await h.rows(p, 'api_event', 'chat').filter({ visible: true }).count(), 0);

  await p.getByTestId('filter-event').fill('paid');
  assert.ok(await h.rows(p, 'api_event', 'orders-eu').and(p.locator('[data-event="created"]')).first().isHidden());
  await p.getByTestId('filter-channel').fill('');
  await p.getByTestId('filter-event').fill('');
  assert.ok(await h.rows(p, 'api_event', 'chat').first().isVisible());

  // pause: new events wait, counted; resume shows them
  await p.getByTestId('pause').click();
  await server.trigger('paused-channel', 'later', { n: 5 });
  await server.trigger('paused-channel', 'later', { n: 6 });
  await h.waitFor(async () => /^2 pending/.test(await p.getByTestId('pending-count').innerText()), { what: '2 pending' });
  assert.equal(await h.rows(p, 'api_event', 'paused-channel').count(), 0);
  await p.getByTestId('pause').click();
  await h.waitFor(async () => (await h.rows(p, 'api_event', 'paused-channel').count()) === 2, { what: '2 rows after resume' });
  assert.ok(await p.getByTestId('pending-count').isHidden());
});

test('the page keeps at most 500 rows, parses comments and CRLF, shows dropped notices and a notice after a reconnect (feed stubbed in the browser)', async () => {
  const p = await page();
  // The first feed request gets a synthetic body; the reconnect that follows its end is held
  // until the checks below are done, then goes through to herald.
  let served = 0;
  let release;
  const released = new Promise((r) => { release = r; });
  await p.route((url) => url.pathname.endsWith('/console/api/feed'), async (route) => {
    if (served++) {
      await released;
      return route.continue();
    }
    let body = ': keep-alive\n\n';
    for (let i = 0; i < 600; i++) {
      const ev = { type: 'api_event', time: Date.now(), node: 'n1', app: 'app1', channel: `c${i}`, event: 'e', size: 2, sockets: 0 };
      body += i % 2 ? `data: ${JSON.stringify(ev)}\r\n\r\n` : `: ping\ndata: ${JSON.stringify(ev)}\n\n`;
    }
    body += `data: ${JSON.stringify({ type: 'dropped', time: Date.now(), node: 'n1', app: 'app1', count: 17 })}\n\n`;
    await route.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream' }, body });
  });
  await p.goto(`${herald.base}/console#token=${h.TOKEN}`);
  await h.rows(p, 'dropped').first().waitFor();
  const all = p.locator('[data-testid=row]');
  assert.equal(await all.count(), 500);
  // newest on top; the oldest were dropped
  assert.equal(await all.first().getAttribute('data-type'), 'dropped');
  assert.equal(await all.nth(1).getAttribute('data-channel'), 'c599');
  assert.equal(await h.rows(p, 'api_event', 'c100').count(), 0);
  assert.equal(await h.rows(p, 'api_event', 'c101').count(), 1);
  assert.match(await h.rows(p, 'dropped').first().innerText(), /17 events/);

  // the stream ended: the page reconnects (after a second) and says events may be missing
  release();
  await h.rows(p, 'console_gap').first().waitFor();
  await h.waitForLive(p);
  assert.equal(await all.count(), 500);
  assert.equal(await all.first().getAttribute('data-type'), 'console_gap');
  assert.ok(served >= 2);
  assert.deepEqual(p.errors, []);
});

test('presence channels: user_count in the counts panel, a click shows the members', async () => {
  const p = await page();
  await h.openConsole(p, herald);
  const server = h.sdk(herald.port);
  const client = await h.pusherClient(herald.port, {
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) =>
        callback(null, server.authorizeChannel(socketId, channelName, { user_id: '7', user_info: { name: 'Ada <b>' } })),
    },
  });
  await h.subscribe(client, 'presence-room');
  const ch = p.locator('[data-testid=stats-channels] [data-channel="presence-room"]');
  await ch.waitFor();
  assert.equal(await ch.locator('[data-testid=user-count] b').innerText(), '1');
  await ch.getByTestId('presence-channel').click();
  const member = p.locator('[data-testid=members] [data-testid=member][data-member="7"]');
  await member.waitFor();
  assert.match(await member.innerText(), /Ada <b>/);
});

test('the feed refuses requests without a token and with a wrong one (401, JSON error)', async (t) => {
  const none = await h.request(herald.adminPort, 'GET', '/console/api/feed?app=app1&payloads=0');
  assert.equal(none.status, 401);
  assert.equal(typeof JSON.parse(none.body).error, 'string');

  const wrong = await h.request(herald.adminPort, 'GET', '/console/api/feed?app=app1&payloads=0',
    { headers: { authorization: 'Bearer wrong-token' } });
  assert.equal(wrong.status, 401);
  assert.equal(typeof JSON.parse(wrong.body).error, 'string');

  const apps = await h.request(herald.adminPort, 'GET', '/console/api/apps', { headers: { authorization: 'Bearer wrong-token' } });
  assert.equal(apps.status, 401);

  // the page itself needs no token
  const pageResp = await h.request(herald.adminPort, 'GET', '/console');
  assert.equal(pageResp.status, 200);
  assert.match(pageResp.headers['content-type'] || '', /^text\/html/);
  if (pageResp.body !== fs.readFileSync(h.PAGE_SOURCE, 'utf8')) {
    t.diagnostic(`the page served by ${h.HERALD_BIN} is not the current ${h.PAGE_SOURCE} (a build older than the page?)` +
      (h.PAGE_FROM_SOURCE ? '; the browser tests used the source file (CONSOLE_PAGE_FROM_SOURCE=1)' : ''));
  }

  const good = await h.request(herald.adminPort, 'GET', '/console/api/apps', { headers: { authorization: `Bearer ${h.TOKEN}` } });
  assert.equal(good.status, 200);
  assert.deepEqual(JSON.parse(good.body), { node: 'n1', apps: [{ id: 'app1', key: 'key1' }] });
});
