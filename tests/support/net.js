'use strict';
// Helpers shared by the JavaScript test suites (tests/conformance, tests/console, clients/js):
// free ports, waiting for a port or a condition. Only 127.0.0.1 is ever contacted.

const net = require('node:net');

const HOST = '127.0.0.1';

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves with the first truthy value of `fn`, polled every `interval` ms; fails after `timeout`. */
async function waitFor(fn, { timeout = 5000, interval = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}` +
        (last instanceof Error ? ` (last error: ${last.message})` : ''));
    }
    await delay(interval);
  }
}

/** A port nothing listens on right now (the OS picks it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Whether something accepts TCP connections on `port`. */
function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: HOST, port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => { s.destroy(); resolve(false); });
  });
}

module.exports = { HOST, delay, waitFor, freePort, canConnect };
