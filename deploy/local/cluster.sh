#!/usr/bin/env bash
# `make cluster`: a local Redis and three Herald nodes on one machine, for trying the cluster.
# Ctrl-C stops everything. Ports: Redis 6390, nodes 8081-8083 (admin 9611-9613).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${HERALD_BIN:-$root/target/debug/herald}"
work="$(mktemp -d -t herald-cluster-XXXX)"
redis_port="${REDIS_PORT:-6390}"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

for i in 1 2 3; do
  cat >"$work/node$i.toml" <<TOML
[server]
listen = "127.0.0.1:808$i"
admin_listen = "127.0.0.1:961$i"
node_id = "node-$i"

[bus]
driver = "redis"
url = "redis://127.0.0.1:$redis_port"

[log]
format = "text"

[[apps]]
id = "demo"
key = "demo-key"
secret = "demo-secret"
TOML
  "$bin" --config "$work/node$i.toml" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
sleep 1
for i in 1 2 3; do
  curl -fsS "http://127.0.0.1:961$i/readyz" >/dev/null 2>&1 || { echo "node $i is not ready; log:"; cat "$work/node$i.log"; exit 1; }
done

cat <<TXT

Three Herald nodes share Redis at 127.0.0.1:$redis_port.

  node-1  ws/API http://127.0.0.1:8081   admin http://127.0.0.1:9611/metrics
  node-2  ws/API http://127.0.0.1:8082   admin http://127.0.0.1:9612/metrics
  node-3  ws/API http://127.0.0.1:8083   admin http://127.0.0.1:9613/metrics

  app id demo, key demo-key, secret demo-secret

Subscribe through one node and publish through another, e.g. pusher-js with
  new Pusher('demo-key', { wsHost: '127.0.0.1', wsPort: 8082, forceTLS: false,
                           enabledTransports: ['ws'], cluster: 'herald' })
and the Node SDK with { appId: 'demo', key: 'demo-key', secret: 'demo-secret',
                        host: '127.0.0.1', port: 8081, useTLS: false }.

Logs: $work. Ctrl-C stops the cluster.
TXT
wait
