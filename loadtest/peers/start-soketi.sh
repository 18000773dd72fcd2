#!/usr/bin/env bash
# Start soketi in the foreground for the benchmarks (exec: the pid is the server's).
#   start-soketi.sh PORT [REDIS_PORT] [NODE]
# Local adapter without REDIS_PORT, Redis adapter with it. Everything binds 127.0.0.1,
# including its UDP discovery (cluster.*) and the metrics/usage port. One app:
# app-id / app-key / app-secret with no rate limits.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="$here/.work/soketi"
port="$1"; redis="${2:-}"; node="${3:-1}"
[[ -x "$dir/node_modules/.bin/soketi" ]] || { echo "soketi is not installed: run $here/install-soketi.sh" >&2; exit 1; }
conf="$(mktemp -t soketi-XXXX.json)"
adapter='"adapter.driver": "local",'
if [[ -n "$redis" ]]; then
  adapter="\"adapter.driver\": \"redis\", \"database.redis.host\": \"127.0.0.1\", \"database.redis.port\": $redis,"
fi
cat >"$conf" <<JSON
{
  "host": "127.0.0.1",
  "port": $port,
  $adapter
  "metrics.enabled": false,
  "metrics.host": "127.0.0.1",
  "metrics.port": $((19700 + node)),
  "cluster.hostname": "127.0.0.1",
  "cluster.broadcast": "127.0.0.1",
  "cluster.port": $((11700 + node)),
  "appManager.array.apps": [{"id": "app-id", "key": "app-key", "secret": "app-secret",
    "maxConnections": -1, "enableClientMessages": true, "enabled": true,
    "maxBackendEventsPerSecond": -1, "maxClientEventsPerSecond": -1, "maxReadRequestsPerSecond": -1,
    "webhooks": []}]
}
JSON
exec "$dir/node_modules/.bin/soketi" start --config="$conf"
