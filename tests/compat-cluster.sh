#!/usr/bin/env bash
# Runs the third-party-client compatibility suites (tests/compat.sh: tests/node and tests/python)
# once more against a cluster: every server a test starts becomes a fresh redis-server, three
# ringpush nodes sharing it (the test's config plus [cluster] adapter = "redis", a prefix of
# their own, node_timeout = 2; two workers each) and a round-robin TCP balancer in front
# (tests/cluster/balancer.js), whose address the tests get as "the server". Consecutive
# connections and HTTP calls (each API call on a connection of its own) land on different
# nodes. Tests wait for every node to see the other two before they run.
#   RINGPUSH_BIN   server binary, as for compat.sh (never built here)
# Needs what compat.sh needs plus redis-server (tests/install-compat-deps.sh installs both).
# Exits non-zero if either suite fails.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v "${REDIS_SERVER:-redis-server}" >/dev/null; then
  echo "compat-cluster.sh: redis-server not found; run tests/install-compat-deps.sh" >&2
  exit 2
fi
export RINGPUSH_CLUSTER=1
exec bash "$HERE/compat.sh"
