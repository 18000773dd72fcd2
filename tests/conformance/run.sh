#!/usr/bin/env bash
# Herald conformance suite: drives the real herald binary with official Pusher clients.
# Usage: tests/conformance/run.sh   (HERALD_BIN=/path/to/herald to override the binary)
# Runs the suite three times: on one node; on one node with every channel keeping history
# (CONFORMANCE_HISTORY=1: stock clients must see no difference); split over two nodes on a real
# redis-server with the WebSocket clients on one and the HTTP API on the other, with history
# (CONFORMANCE_SPLIT=1).
set -uo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund || exit $?
fi
echo "--- conformance: one node"
npm test || exit $?
echo "--- conformance: one node, every channel keeping history"
CONFORMANCE_HISTORY=1 npm test || exit $?
echo "--- conformance: clients on one node, the HTTP API on another (Redis bus), with history"
CONFORMANCE_SPLIT=1 CONFORMANCE_HISTORY=1 npm test
exit $?
