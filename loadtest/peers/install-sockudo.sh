#!/usr/bin/env bash
# Build and install Sockudo (the Rust Pusher-protocol server) for the benchmarks.
# Nothing is committed: the binary goes to loadtest/peers/.work/sockudo/bin, the build
# tree to /tmp so it does not share a cargo lock or target dir with Herald.
# Needs: protobuf-compiler, cmake (apt-get install -y protobuf-compiler cmake).
# Low priority and one job so it does not starve other builds on a small machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/.work/sockudo"
version="${SOCKUDO_VERSION:-}"
if [[ -x "$root/bin/sockudo" && -z "${FORCE:-}" ]]; then
  echo "sockudo already installed: $root/bin/sockudo"; exit 0
fi
mkdir -p "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/sockudo-target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
args=(install sockudo --locked --features redis --root "$root")
[[ -n "$version" ]] && args+=(--version "$version")
nice -n 19 cargo "${args[@]}"
"$root/bin/sockudo" --version || true
