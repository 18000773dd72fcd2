#!/usr/bin/env bash
# `make bench`: the standard benchmark set, Herald side by side with Sockudo and soketi on this
# machine. Each scenario gets a freshly started server (so memory figures start from a clean
# process); the cluster scenario gets a fresh redis-server and three nodes per server.
#
# Results: target/bench/<UTC time>/ — one JSON + text log per (scenario, server), summary.md
# with the side-by-side tables, and SVG latency plots.
#
# Environment:
#   BENCH_SERVERS    servers to run (default "herald sockudo soketi"; missing peers are skipped,
#                    install them with loadtest/peers/install-*.sh)
#   BENCH_SCENARIOS  scenarios (default "idle idle-max fanout fanout-1k burst burst-batch storm
#                    presence cluster cluster-sharded"; cluster-sharded runs Herald on a 3-master
#                    Redis Cluster)
#   BENCH_N          connections for idle, fanout, burst and storm (default 10000)
#   BENCH_N_MAX      connections for idle-max (default 19900: under a 20,000 open-files limit)
#   BENCH_OUT        output directory
#   BENCH_HERALD_BIN the herald binary (default target/release/herald), e.g. an older build to
#                    compare with in the same run
#
# Herald-only scenarios (not in the default set): fanout-history and cluster-history (fanout
# and cluster with every channel keeping history), recovery (5,000 clients of 100 history
# channels on a Redis-backed node drop, miss 20 events each, and resume at once), fanout-console
# (fanout with a debug console reading the app's feed, payloads on, for the whole run).
#
# Also not in the default set: fanout-spread and fanout-1k-spread, fanout and fanout-1k with the
# four publishers started evenly apart. In the default scenarios they publish at the same
# moments, so events arrive four at a time (10 msg/s is 4 events every 400 ms); spread, they
# arrive one at a time at the stated rate.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="$root/loadtest/peers"
out="${BENCH_OUT:-$root/target/bench/$(date -u +%Y%m%dT%H%M%SZ)}"
servers="${BENCH_SERVERS:-herald sockudo soketi}"
scenarios="${BENCH_SCENARIOS:-idle idle-max fanout fanout-1k burst burst-batch storm presence cluster cluster-sharded}"
n="${BENCH_N:-10000}"
n_max="${BENCH_N_MAX:-19900}"
lt="$root/target/release/herald-loadtest"
herald="${BENCH_HERALD_BIN:-$root/target/release/herald}"
mkdir -p "$out"

[[ -x "$herald" ]] || cargo build -j2 --release --bin herald
cargo build -j2 --release -p herald-loadtest

available() {
  case "$1" in
    herald) [[ -x "$herald" ]] ;;
    sockudo) [[ -x "${SOCKUDO_BIN:-$peers/.work/sockudo/bin/sockudo}" ]] ;;
    soketi) [[ -x "$peers/.work/soketi/node_modules/.bin/soketi" ]] ;;
    *) return 1 ;;
  esac
}
run_servers=()
for s in $servers; do
  if available "$s"; then run_servers+=("$s"); else echo "skipping $s: not installed (see loadtest/peers/)" >&2; fi
done

# Two cores are easily disturbed: say so when something else is using them.
busy="$(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 > 20 && $2 !~ /^(ps|awk|bench.sh)$/ {print $2}' | head -3 | xargs)"
[[ -n "$busy" ]] && echo "warning: other busy processes ($busy); figures will be noisy" >&2
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

pids=()
port=7100
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_port() {
  for _ in $(seq 100); do
    curl -s -o /dev/null -m 1 "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2
  return 1
}

stop() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# start SERVER PORT [REDIS_PORT] [NODE] — sets PID. With HISTORY_PREFIX set, Herald keeps
# history (100 events, 300 s) on channels starting with it ("" = every channel).
start() {
  local server="$1" p="$2" redis="${3:-}" node="${4:-1}" log="$out/server-$1-$2.log"
  case "$server" in
    herald)
      local conf="$out/herald-$p.toml"
      cat >"$conf" <<TOML
[server]
listen = "127.0.0.1:$p"
admin_listen = "127.0.0.1:$((p + 1000))"
node_id = "bench-$node"
max_connections = 1000000
handshakes_per_second = 100000

[log]
level = "warn"

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
TOML
      if [[ -n "${CONSOLE_FEED:-}" ]]; then
        printf '\n[admin]\ntoken = "bench-console-token"\n' >>"$conf"
      fi
      if [[ -n "${HISTORY_PREFIX+set}" ]]; then
        printf '\n[[apps.history]]\nprefix = "%s"\nsize = 100\nttl = 300\n' "$HISTORY_PREFIX" >>"$conf"
      fi
      if [[ "$redis" == cluster:* ]]; then
        local seeds=""
        for rp in ${redis#cluster:}; do seeds+="${seeds:+, }\"redis://127.0.0.1:$rp\""; done
        printf '\n[bus]\ndriver = "redis"\ncluster_urls = [%s]\n' "$seeds" >>"$conf"
      elif [[ -n "$redis" ]]; then
        printf '\n[bus]\ndriver = "redis"\nurl = "redis://127.0.0.1:%s"\n' "$redis" >>"$conf"
      fi
      "$herald" --config "$conf" >"$log" 2>&1 &
      ;;
    sockudo) "$peers/start-sockudo.sh" "$p" "${redis:+redis://127.0.0.1:$redis}" "$node" >"$log" 2>&1 & ;;
    soketi) "$peers/start-soketi.sh" "$p" "$redis" "$node" >"$log" 2>&1 & ;;
  esac
  PID=$!
  pids+=("$PID")
  wait_port "$p"
}

# loadtest SCENARIO SERVER SUBCOMMAND ARGS... — runs the tool, keeps JSON and the printed table.
loadtest() {
  local name="$1" server="$2"; shift 2
  echo "== $name: $server" >&2
  timeout 200 "$lt" "$@" --label "$server" --max-seconds 180 \
    --out "$out/$name-$server.json" >"$out/$name-$server.txt" 2>"$out/$name-$server.err" || echo "   $name on $server failed (see $out/$name-$server.err)" >&2
  grep -E "subscribed|per second|per connection|all back|time until|lost|p99|deliver |join |cross-node|error" "$out/$name-$server.txt" | sed 's/^/   /' >&2 || true
}

# herald_only NAME SERVER: true for herald; says why a peer is skipped.
herald_only() {
  [[ "$2" == herald ]] && return 0
  echo "skipping $1 on $2 (Herald only)" >&2
  return 1
}

single() {
  local name="$1" server="$2"; shift 2
  port=$((port + 2))
  start "$server" "$port"
  local pid=$PID feed=""
  if [[ -n "${CONSOLE_FEED:-}" ]]; then
    # A console reading every record with payloads, as the page does (its CPU is not counted).
    curl -sN -H "Authorization: Bearer bench-console-token" \
      "http://127.0.0.1:$((port + 1000))/console/api/feed?app=app-id&payloads=1" >"$out/$name-feed.txt" &
    feed=$!
    sleep 0.5
  fi
  loadtest "$name" "$server" "$@" --url "ws://127.0.0.1:$port" --server-pid "$pid"
  [[ -n "$feed" ]] && { kill "$feed" 2>/dev/null || true; echo "   console records read: $(grep -c '^data:' "$out/$name-feed.txt")" >&2; }
  stop "$pid"
}

cluster() {
  local server="$1" name="${2:-cluster}" redis_port ports=() urls=() spids=()
  port=$((port + 10)); redis_port=$port
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$out" >"$out/redis-$server.log" 2>&1 &
  local rpid=$!; pids+=("$rpid")
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  for node in 1 2 3; do
    local p=$((redis_port + node * 2))
    start "$server" "$p" "$redis_port" "$node"
    urls+=(--url "ws://127.0.0.1:$p"); spids+=(--server-pid "$PID"); ports+=("$PID")
  done
  spids+=(--server-pid "$rpid")
  sleep 1
  loadtest "$name" "$server" cluster "${urls[@]}" "${spids[@]}" \
    --connections 3000 --channels 1000 --rate 5000 --messages 25000 --publishers 8
  for p in "${ports[@]}"; do stop "$p"; done
  stop "$rpid"
}

# One Herald node on a redis-server; the recovery storm (Redis's CPU counted with the node's).
recovery() {
  local server="$1" redis_port
  port=$((port + 10)); redis_port=$port
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$out" >"$out/redis-recovery.log" 2>&1 &
  local rpid=$!; pids+=("$rpid")
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  local p=$((redis_port + 2))
  HISTORY_PREFIX="recovery-" start "$server" "$p" "$redis_port" 1
  local hpid=$PID
  loadtest recovery "$server" recovery --url "ws://127.0.0.1:$p" --server-pid "$hpid" \
    --server-pid "$rpid" --connections 5000 --channels 100 --missed 20
  stop "$hpid"
  stop "$rpid"
}

# Herald's nodes on a three-master Redis Cluster (sharded pub/sub, one hash tag per channel).
# The same load as `cluster`; herald only (the peers are measured on one Redis).
cluster_sharded() {
  local server="$1" base rports=() ports=() urls=() spids=()
  if [[ "$server" != herald ]]; then
    echo "skipping cluster-sharded on $server (run for herald only)" >&2
    return 0
  fi
  port=$((port + 20)); base=$port
  for i in 0 1 2; do
    local rp=$((base + i)) d="$out/redis-cluster-$((base + i))"
    mkdir -p "$d"
    redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no --dir "$d" \
      --cluster-enabled yes --cluster-config-file nodes.conf >"$d/log" 2>&1 &
    spids+=(--server-pid "$!"); pids+=("$!"); rports+=("$rp")
  done
  for rp in "${rports[@]}"; do
    for _ in $(seq 50); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${rports[@]}") --cluster-replicas 0 --cluster-yes >/dev/null
  for rp in "${rports[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$rp" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
  done
  for node in 1 2 3; do
    local p=$((base + 4 + node * 2))
    start "$server" "$p" "cluster:${rports[*]}" "$node"
    urls+=(--url "ws://127.0.0.1:$p"); spids+=(--server-pid "$PID"); ports+=("$PID")
  done
  sleep 1
  loadtest cluster-sharded "herald-redis-cluster" cluster "${urls[@]}" "${spids[@]}" \
    --connections 3000 --channels 1000 --rate 5000 --messages 25000 --publishers 8
  for p in "${ports[@]}"; do stop "$p"; done
  for rp in "${rports[@]}"; do redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true; done
  port=$((base + 30))
}

files=()
for scenario in $scenarios; do
  for server in "${run_servers[@]}"; do
    case "$scenario" in
      idle) single idle "$server" idle --connections "$n" --hold 3 ;;
      idle-max) single idle-max "$server" idle --connections "$n_max" --hold 3 ;;
      fanout) single fanout "$server" fanout --connections "$n" --rate 10 --messages 100 ;;
      fanout-1k) single fanout-1k "$server" fanout --connections 1000 --rate 50 --messages 500 ;;
      fanout-spread) single fanout-spread "$server" fanout --connections "$n" --rate 10 --messages 100 --spread ;;
      fanout-1k-spread) single fanout-1k-spread "$server" fanout --connections 1000 --rate 50 --messages 500 --spread ;;
      fanout-console) herald_only "$scenario" "$server" && CONSOLE_FEED=1 single fanout-console "$server" fanout --connections "$n" --rate 10 --messages 100 ;;
      fanout-history) herald_only "$scenario" "$server" && HISTORY_PREFIX="" single fanout-history "$server" fanout --connections "$n" --rate 10 --messages 100 ;;
      cluster-history) herald_only "$scenario" "$server" && HISTORY_PREFIX="" cluster "$server" cluster-history ;;
      recovery) herald_only "$scenario" "$server" && recovery "$server" ;;
      burst) single burst "$server" burst --connections "$n" --messages 200 --publishers 4 ;;
      burst-batch) single burst-batch "$server" burst --connections "$n" --messages 200 --publishers 4 --batch 10 ;;
      storm) single storm "$server" storm --connections "$n" ;;
      presence) single presence "$server" presence --channels 50 --members 50 --rate 500 --duration 5 ;;
      cluster) command -v redis-server >/dev/null && cluster "$server" || echo "skipping cluster: no redis-server" >&2 ;;
      cluster-sharded) command -v redis-server >/dev/null && cluster_sharded "$server" || echo "skipping cluster-sharded: no redis-server" >&2 ;;
      *) echo "unknown scenario $scenario" >&2; continue ;;
    esac
    for f in "$out/$scenario-$server.json" "$out/$scenario-$server-redis-cluster.json"; do
      [[ -f "$f" ]] && files+=("$f")
    done
  done
done

{
  echo "# Benchmark run $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r); load average before the run: $load_before"
  echo
  echo "- herald: $(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
  available sockudo && echo "- sockudo: $("${SOCKUDO_BIN:-$peers/.work/sockudo/bin/sockudo}" --version 2>/dev/null | head -1)"
  available soketi && echo "- soketi: $(node -p 'require(process.argv[1]).version' "$peers/.work/soketi/node_modules/@soketi/soketi/package.json") on node $(node --version)"
  echo "- redis: $(redis-server --version 2>/dev/null | cut -d' ' -f3)"
  "$lt" report "${files[@]}"
} >"$out/summary.md"
for s in fanout fanout-1k burst burst-batch cluster; do
  f=("$out/$s"-*.json)
  [[ -e "${f[0]}" ]] && "$lt" report --plot "$out/$s.svg" --series "publish→deliver" "${f[@]}" >/dev/null
done
[[ -e "$out/cluster-herald.json" ]] && "$lt" report --plot "$out/cluster-cross-node.svg" --series "cross-node" "$out"/cluster-*.json >/dev/null
echo "results: $out/summary.md" >&2
