'use strict';
// Webhooks from herald, checked with the official Node SDK's webhook validator.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { startHerald, PusherServer, HOST, waitFor, subscribe } = require('../harness');

const HOOKED = { id: 'app5', key: 'key5', secret: 'secret5' };

function receiver() {
  const got = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      got.push({ headers: req.headers, rawBody: body });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  return new Promise((resolve) => server.listen(0, HOST, () => resolve({ server, got, port: server.address().port })));
}

test('webhooks validate with the Node SDK and carry the expected events', async (t) => {
  const hooks = await receiver();
  t.after(() => hooks.server.close());
  const extraToml = `\n[[apps]]\nid = "${HOOKED.id}"\nkey = "${HOOKED.key}"\nsecret = "${HOOKED.secret}"\n` +
    `\n[[apps.webhooks]]\nurl = "http://${HOST}:${hooks.port}/pusher/webhooks"\n`;
  const herald = await startHerald({ extraToml });
  t.after(() => herald.stop());
  const sdk = new PusherServer({ appId: HOOKED.id, key: HOOKED.key, secret: HOOKED.secret, host: HOST, port: herald.apiPort, useTLS: false });

  const client = herald.client({ key: HOOKED.key, server: sdk });
  await subscribe(client, 'hooked-channel');
  const all = () => hooks.got.flatMap((r) => {
    const wh = sdk.webhook({ headers: r.headers, rawBody: r.rawBody });
    assert.ok(wh.isValid(), `webhook signature must validate: ${r.rawBody}`);
    assert.equal(r.headers['content-type'], 'application/json');
    return wh.getEvents();
  });
  await waitFor(() => all().some((e) => e.name === 'channel_occupied' && e.channel === 'hooked-channel'),
    { timeout: 5000, what: 'channel_occupied webhook' });

  // A tampered body does not validate.
  const r = hooks.got[0];
  const forged = sdk.webhook({ headers: r.headers, rawBody: r.rawBody.replace('hooked-channel', 'other-channel') });
  assert.equal(forged.isValid(), false);

  client.unsubscribe('hooked-channel');
  await waitFor(() => all().some((e) => e.name === 'channel_vacated' && e.channel === 'hooked-channel'),
    { timeout: 8000, what: 'channel_vacated webhook (3 s delay)' });
  const timeMs = JSON.parse(hooks.got[hooks.got.length - 1].rawBody).time_ms;
  assert.ok(Math.abs(Date.now() - timeMs) < 60_000, 'time_ms is current');
});
