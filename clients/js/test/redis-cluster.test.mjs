// Nodes on a Redis Cluster of three masters: resuming on another node.
import { before, after, test } from 'node:test';
import h from '../harness.js';

const { Herald, startRedisCluster, acrossNodes } = h;

let cluster;
before(async () => { cluster = await startRedisCluster(); });
after(async () => { if (cluster) await cluster.stop(); });

test('Redis Cluster, across nodes: left node A, resumed on node B', async (t) => {
  const a = await Herald.start({ bus: { clusterUrls: cluster.urls } });
  t.after(() => a.stop());
  const b = await Herald.start({ bus: { clusterUrls: cluster.urls } });
  t.after(() => b.stop());
  await acrossNodes(t, a, b, 'orders.4');
});
