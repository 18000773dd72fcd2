'use strict';
// The package itself: both entry points, one implementation, the install contract. No server.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const PusherJS = require('pusher-js');
const { withRecovery } = require('herald-recovery');
const { freePort } = require('../harness.js');

const root = path.join(__dirname, '..');

test('CommonJS and ES module entries export the same function', async () => {
  const esm = await import('herald-recovery');
  assert.equal(typeof withRecovery, 'function');
  assert.equal(esm.withRecovery, withRecovery);
});

test('package.json: exports map, types, no dependencies, pusher-js as a peer', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  assert.equal(pkg.name, 'herald-recovery');
  assert.deepEqual(pkg.exports['.'], { types: './index.d.ts', import: './index.mjs', require: './index.cjs' });
  assert.equal(pkg.dependencies, undefined);
  assert.ok(pkg.peerDependencies['pusher-js']);
  for (const f of ['index.cjs', 'index.mjs', 'index.d.ts']) {
    assert.ok(pkg.files.includes(f), f);
    assert.ok(fs.existsSync(path.join(root, f)), f);
  }
  assert.match(fs.readFileSync(path.join(root, 'index.d.ts'), 'utf8'), /export function withRecovery/);
});

test('returns the same instance, installs once, refuses what is not pusher-js', async () => {
  // Nothing listens on the port: the instance never connects, and is disconnected at the end.
  const pusher = new PusherJS('key1', { wsHost: '127.0.0.1', wsPort: await freePort(),
    forceTLS: false, enabledTransports: ['ws'], cluster: 'mt1' });
  try {
    assert.equal(withRecovery(pusher), pusher);
    const sendEvent = pusher.send_event;
    const unsubscribe = pusher.unsubscribe;
    assert.equal(withRecovery(pusher), pusher);
    assert.equal(pusher.send_event, sendEvent, 'not wrapped twice');
    assert.equal(pusher.unsubscribe, unsubscribe, 'not wrapped twice');
  } finally {
    pusher.disconnect();
  }
  assert.throws(() => withRecovery({}), TypeError);
  assert.throws(() => withRecovery(null), TypeError);
});
