'use strict';
// A screenshot of the console with a few rows (1280x800): console.png in a temporary directory,
// or in CONSOLE_SCREENSHOT_DIR (`CONSOLE_SCREENSHOT_DIR=../../docs` for docs/console.png).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const h = require('../lib/harness');

let herald;
let browser;

before(async () => {
  herald = await h.startHerald();
  browser = await h.launchBrowser();
});

after(async () => {
  h.disconnectAll();
  if (browser) await browser.close();
  if (herald) await herald.stop();
});

test('screenshot of the console with a few rows (console.png)', async () => {
  const { context, page: p } = await h.newPage(browser);
  try {
    await h.openConsole(p, herald);
    await p.getByTestId('payloads-toggle').check();
    await h.waitForLive(p);

    const server = h.sdk(herald.port);
    const shop = await h.pusherClient(herald.port);
    await h.subscribe(shop, 'orders');
    const people = [['7', 'Ada'], ['9', 'Grace']];
    for (const [id, name] of people) {
      const c = await h.pusherClient(herald.port, {
        channelAuthorization: {
          customHandler: ({ socketId, channelName }, cb) =>
            cb(null, server.authorizeChannel(socketId, channelName, { user_id: id, user_info: { name } })),
        },
      });
      await h.subscribe(c, 'presence-support');
    }
    const intruder = await h.pusherClient(herald.port, {
      channelAuthorization: { customHandler: (_p, cb) => cb(null, { auth: 'key1:bad' }) },
    });
    await h.subscribe(intruder, 'private-admin').catch(() => {});
    await server.trigger('orders', 'order-created', { id: 1042, total: '19.90', currency: 'EUR' });
    await server.trigger('presence-support', 'ticket-opened', { ticket: 77, subject: 'Cannot log in' });

    await h.rows(p, 'api_event', 'presence-support').first().waitFor();
    await h.rows(p, 'subscription_refused').first().waitFor();
    const presence = p.locator('[data-testid=stats-channels] [data-channel="presence-support"] [data-testid=presence-channel]');
    await presence.click();
    await p.locator('[data-testid=members] [data-testid=member]').nth(1).waitFor();
    await p.getByTestId('publish-channel').fill('orders');
    await p.getByTestId('publish-event').fill('order-shipped');
    await p.getByTestId('publish-data').fill('{"id":1042,"carrier":"DHL"}');
    await p.getByTestId('publish-submit').click();
    await h.rows(p, 'api_event', 'orders').and(p.locator('[data-event="order-shipped"]')).first().waitFor();
    await h.waitFor(async () => /published/i.test(await p.getByTestId('publish-result').innerText()), { what: 'publish result' });

    const out = path.join(h.SCREENSHOT_DIR, 'console.png');
    fs.mkdirSync(h.SCREENSHOT_DIR, { recursive: true });
    await p.screenshot({ path: out });
    const png = fs.readFileSync(out);
    assert.equal(png.toString('latin1', 1, 4), 'PNG');
    assert.equal(png.readUInt32BE(16), 1280);
    assert.equal(png.readUInt32BE(20), 800);
    assert.ok((await p.locator('[data-testid=row]').count()) >= 5);
    assert.deepEqual(p.errors, []);
  } finally {
    await context.close();
  }
});
