#!/usr/bin/env bash
# Runs the third-party-client compatibility suites against an already built ringpush binary.
#   RINGPUSH_BIN   server binary (default: <repo>/target/debug/ringpush). This script never builds it.
#   RINGPUSH_CLUSTER=1  run every test against a three-node cluster behind a round-robin balancer
#                  instead of one server (tests/compat-cluster.sh sets it).
# Dependencies must be installed first: tests/install-compat-deps.sh
# Exits non-zero if either suite fails.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
export RINGPUSH_BIN="${RINGPUSH_BIN:-$REPO/target/debug/ringpush}"

if [ ! -x "$RINGPUSH_BIN" ]; then
  echo "compat.sh: server binary not found or not executable: $RINGPUSH_BIN" >&2
  exit 2
fi
if [ ! -d "$HERE/node/node_modules" ]; then
  echo "compat.sh: tests/node/node_modules missing; run tests/install-compat-deps.sh" >&2
  exit 2
fi

PY="python3"
if [ -x "$HERE/python/.venv/bin/python" ]; then
  PY="$HERE/python/.venv/bin/python"
fi

RINGPUSH_CLUSTER="${RINGPUSH_CLUSTER:-}"
MODE=""
case "${RINGPUSH_CLUSTER,,}" in
  "" | 0 | false | no) ;;
  *) MODE=" [cluster: 3 nodes + redis behind a round-robin balancer]" ;;
esac

status=0
echo "== node compatibility suite (pusher-js, pusher, laravel-echo)$MODE =="
( cd "$HERE/node" && node --test --test-concurrency=1 test/*.test.js ) || status=1

echo "== python compatibility suite (pusher, pysher)$MODE =="
( cd "$HERE/python" && "$PY" -m pytest -q -p no:cacheprovider ) || status=1

if [ "$status" -ne 0 ]; then
  echo "compat.sh: FAILED$MODE" >&2
else
  echo "compat.sh: all compatibility suites passed$MODE"
fi
exit "$status"
