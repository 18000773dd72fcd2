#!/usr/bin/env bash
# Deployment checks: Helm chart, kustomize manifests, Kubernetes schemas,
# yamllint, dashboard/alerts and the metrics check against a herald binary.
#
#   deploy/check/run.sh                               # binary from target/
#   deploy/check/run.sh --herald-bin target/debug/herald
#   deploy/check/run.sh --no-metrics                  # before the binary exists
#
# Creates (or reuses) the virtualenv .venv-deploy at the repository root.
# Needs python3 (3.11+) and kubectl on PATH.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${HERALD_DEPLOY_VENV:-$root/.venv-deploy}"
req="$root/deploy/check/requirements.txt"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "deploy/check: python 3.11+ required (tomllib)" >&2
  exit 2
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "deploy/check: kubectl not found on PATH (needed for kubectl kustomize)" >&2
fi

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "--- preparing $venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

cd "$root"
exec "$venv/bin/python" "$root/deploy/check/check_deploy.py" "$@"
