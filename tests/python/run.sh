#!/usr/bin/env bash
# Herald Python-SDK suite: drives the real herald binary with the official
# `pusher` PyPI SDK (pusher-http-python) and raw WebSockets (websocket-client).
# Usage: tests/python/run.sh   (HERALD_BIN=/path/to/herald to override the binary)
# Last line: "python-sdk: N passed, M failed"; exit status non-zero on any failure.
set -uo pipefail
# a relative HERALD_BIN means relative to the caller's directory
if [ -n "${HERALD_BIN:-}" ] && [[ "$HERALD_BIN" != /* ]]; then
  HERALD_BIN="$PWD/$HERALD_BIN"
  export HERALD_BIN
fi
cd "$(dirname "$0")"
VENV=.venv
STAMP="$VENV/.requirements.installed"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" || { echo "python-sdk: cannot create venv" >&2; exit 2; }
fi
if ! cmp -s requirements.txt "$STAMP" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt \
    || { echo "python-sdk: pip install failed" >&2; exit 2; }
  cp requirements.txt "$STAMP"
fi
# Only 127.0.0.1 is contacted: keep any proxy settings away from it.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"
exec "$VENV/bin/python" run_tests.py "$@"
