#!/usr/bin/env bash
# The whole test suite: formatting and lints, Rust unit and integration tests, the compatibility
# suites with third-party clients (pusher-js, laravel-echo, the pusher Node and Python SDKs,
# pysher), and a bench-harness smoke run. Integration and compatibility suites run twice: on
# io_uring and on monoio's epoll fallback (MONOIO_FORCE_LEGACY_DRIVER=1).
# Installs the compatibility dependencies first (idempotent; npm and PyPI only).
set -uo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
bash tests/install-compat-deps.sh || { echo "installing test dependencies failed"; exit 1; }

passed=0
failed=0
failures=()
step() {
  local name="$1"
  shift
  echo "=== $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$name")
  fi
}

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build" cargo build --workspace
# The binary cargo just built, wherever the target directory is (CARGO_TARGET_DIR, config).
target_dir="$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
export RINGPUSH_BIN="$target_dir/debug/ringpush"
step "cargo test (io_uring)" cargo test --workspace
step "cargo test (epoll)" env MONOIO_FORCE_LEGACY_DRIVER=1 cargo test --workspace --tests
step "compat suites (io_uring)" bash tests/compat.sh
step "compat suites (epoll)" env MONOIO_FORCE_LEGACY_DRIVER=1 bash tests/compat.sh
step "compat suites, cluster (io_uring)" bash tests/compat-cluster.sh
step "compat suites, cluster (epoll)" env MONOIO_FORCE_LEGACY_DRIVER=1 bash tests/compat-cluster.sh
step "fuzz smoke (every target, a few seconds each)" bash fuzz/smoke.sh
step "perf report schema self-test" python3 perf/compare.py --self-test
step "bench-harness smoke" bash perf/run-smoke.sh

echo
if [ "$failed" -gt 0 ]; then
  printf 'failed step: %s\n' "${failures[@]}"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
