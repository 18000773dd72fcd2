#!/usr/bin/env bash
# Herald conformance suite: drives the real herald binary with official Pusher clients.
# Usage: tests/conformance/run.sh   (HERALD_BIN=/path/to/herald to override the binary)
set -uo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund || exit $?
fi
npm test
exit $?
