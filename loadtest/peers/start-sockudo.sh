#!/usr/bin/env bash
# Start Sockudo in the foreground for the benchmarks (exec: the pid is the server's).
#   start-sockudo.sh PORT [REDIS_URL] [NODE]
# Local adapter without REDIS_URL; Redis adapter (horizontal scaling) with it. One app:
# app-id / app-key / app-secret, with its per-app limits raised so they are not what is measured.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${SOCKUDO_BIN:-$here/.work/sockudo/bin/sockudo}"
port="$1"; redis="${2:-}"; node="${3:-1}"
[[ -x "$bin" ]] || { echo "sockudo is not installed: run $here/install-sockudo.sh" >&2; exit 1; }
export HOST=127.0.0.1 PORT="$port" DEBUG=false
export METRICS_ENABLED=false METRICS_HOST=127.0.0.1 METRICS_PORT=$((19600 + node))
export RATE_LIMITER_ENABLED=false HTTP_API_USAGE_ENABLED=false
export APP_MANAGER_DRIVER=memory CACHE_DRIVER=memory QUEUE_DRIVER=memory
export SOCKUDO_DEFAULT_APP_ID=app-id SOCKUDO_DEFAULT_APP_KEY=app-key SOCKUDO_DEFAULT_APP_SECRET=app-secret
export SOCKUDO_DEFAULT_APP_ENABLED=true SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true
export SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000
export SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=1000000
export SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=1000000
export SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=1000000
export SOCKUDO_DEFAULT_APP_MAX_EVENT_BATCH_SIZE=10
export SOCKUDO_DEFAULT_APP_MAX_CHANNEL_NAME_LENGTH=200
export INSTANCE_PROCESS_ID="bench-sockudo-$node"
if [[ -n "$redis" ]]; then
  # Clustered Sockudo refuses a node-local cache, so the cache moves to Redis as well.
  export ADAPTER_DRIVER=redis REDIS_URL="$redis" CACHE_DRIVER=redis
else
  export ADAPTER_DRIVER=local
fi
cd "$(mktemp -d -t sockudo-run-XXXX)"   # it looks for ./config; keep it from finding one
exec "$bin"
