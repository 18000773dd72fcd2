#!/usr/bin/env node
// Memory a node holds per connection that subscribes to many channels.
// Usage: node loadtest/scripts/subscriptions-memory.js PORT PID [CONNECTIONS] [CHANNELS]
// (a running herald on 127.0.0.1:PORT with the app key `key1`, its process id PID). Each
// connection subscribes to CHANNELS channels of its own; prints the node's RSS growth per
// connection. Needs the `ws` package (tests/conformance/node_modules).
'use strict';
const fs = require('fs');
const path = require('path');
const WebSocket = require(path.join(__dirname, '../../tests/conformance/node_modules/ws'));

const [port, pid, conns = '200', chans = '1000'] = process.argv.slice(2);
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

function connect(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/app/key1?protocol=7`);
    let acked = 0;
    ws.on('message', (m) => {
      const f = JSON.parse(m);
      if (f.event === 'pusher:connection_established') {
        for (let j = 0; j < Number(chans); j++) {
          ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: `m-${i}-${j}` } }));
        }
      } else if (f.event === 'pusher_internal:subscription_succeeded' && ++acked === Number(chans)) {
        resolve(ws);
      }
    });
    ws.on('error', reject);
  });
}

(async () => {
  const before = rss();
  const open = [];
  for (let i = 0; i < Number(conns); i++) open.push(await connect(i));
  await new Promise((r) => setTimeout(r, 2000));
  const after = rss();
  console.log(`${conns} connections x ${chans} channels: RSS ${before} -> ${after} KiB, ` +
    `${((after - before) / Number(conns)).toFixed(1)} KiB per connection`);
  for (const ws of open) ws.terminate();
})().catch((e) => { console.error(e); process.exit(1); });
