#!/usr/bin/env bash
# Installs what the tests need: the npm packages of tests/node (from package-lock.json), the
# PyPI packages of tests/python/requirements.txt (into tests/python/.venv), and Debian's
# redis-server for the cluster tests.
# Idempotent; needs Node >= 20 with npm and Python >= 3.9 on PATH, and registry access only.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

command -v node >/dev/null || { echo "install-compat-deps.sh: node not found (need Node 20)" >&2; exit 1; }
command -v npm >/dev/null || { echo "install-compat-deps.sh: npm not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "install-compat-deps.sh: python3 not found" >&2; exit 1; }
# compat.sh runs `node --test --test-concurrency=1`, which needs Node 20.10 or later.
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=10)?0:1)' || {
  echo "install-compat-deps.sh: Node $(node --version) is too old; need 20.10 or later" >&2
  exit 1
}

echo "== npm ci (tests/node) =="
( cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error )

echo "== python venv + requirements (tests/python/.venv) =="
VENV="$HERE/python/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 without ensurepip: install python3-venv when we can, then retry
    rm -rf "$VENV"
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    fi
    python3 -m venv "$VENV"
  fi
fi
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$HERE/python/requirements.txt"
echo "== redis-server (the cluster tests start their own instances) =="
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    # Debian starts a system instance on install; the tests do not use it.
    (service redis-server stop || pkill -x redis-server || true) >/dev/null 2>&1
  else
    echo "install-compat-deps.sh: redis-server not found; install Debian's redis-server" >&2
    exit 1
  fi
fi
echo "install-compat-deps.sh: done"
