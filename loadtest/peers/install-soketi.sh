#!/usr/bin/env bash
# Install soketi (Node.js Pusher-protocol server) for the benchmarks into loadtest/peers/.work/soketi.
# soketi pins uWebSockets.js to a git host that is unreachable here, so an npm `overrides` entry
# maps it to a published build with Node 20 binaries. Nothing is committed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="$here/.work/soketi"
version="${SOKETI_VERSION:-1.6.1}"
if [[ -x "$dir/node_modules/.bin/soketi" && -z "${FORCE:-}" ]]; then
  echo "soketi already installed: $dir"; exit 0
fi
mkdir -p "$dir"
cat > "$dir/package.json" <<JSON
{
  "name": "herald-bench-soketi",
  "private": true,
  "dependencies": { "@soketi/soketi": "$version" },
  "overrides": {
    "uWebSockets.js": "npm:@trufflesuite/uws-js-unofficial@20.30.0-unofficial.0"
  }
}
JSON
cd "$dir"
npm install --no-audit --no-fund --omit=dev
node -e 'console.log("soketi", require("@soketi/soketi/package.json").version)'
