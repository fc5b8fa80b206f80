#!/usr/bin/env bash
# Builds every fuzz target (cargo fuzz, AddressSanitizer) and runs each one for a few seconds on
# its committed seeds, one target at a time. Exits non-zero on any crash, panic, leak, timeout
# or out-of-memory (libFuzzer's own exit status), or if a target fails to build.
#
#   bash fuzz/smoke.sh                      # every target, 5 s each
#   FUZZ_SECONDS=150 bash fuzz/smoke.sh ws_frames   # one target, longer
#
# Installs cargo-fuzz from crates.io when it is missing. Uses the nightly toolchain when rustup
# has one; otherwise the default toolchain with RUSTC_BOOTSTRAP=1 (cargo fuzz needs -Z flags,
# and the stable toolchain ships the AddressSanitizer runtime too). New corpus entries go to
# fuzz/corpus/<target> and crashes to fuzz/artifacts/<target>, both ignored by git.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_EACH="${FUZZ_SECONDS:-5}"
TARGETS=(ws_frames http_request client_message api_request config_load cluster_wire)
if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
fi
# Per run: RSS bound for the process, and a bound on any single allocation.
FLAGS=(
  "-max_total_time=${SECONDS_EACH}"
  -rss_limit_mb=2048
  -malloc_limit_mb=256
  -timeout=10
  -print_final_stats=1
)

if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-fuzz" ]; then
  echo "smoke: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
fi

if rustup run nightly rustc --version >/dev/null 2>&1; then
  FUZZ=(cargo +nightly fuzz)
else
  echo "smoke: no nightly toolchain; using $(rustc --version) with RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
fi

TARGET_DIR_ARGS=()
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  TARGET_DIR_ARGS=(--target-dir "$FUZZ_TARGET_DIR")
fi

echo "smoke: building ${TARGETS[*]}"
for t in "${TARGETS[@]}"; do
  "${FUZZ[@]}" build "${TARGET_DIR_ARGS[@]}" "$t"
done

failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  echo "=== fuzz $t (${SECONDS_EACH}s)"
  if ! "${FUZZ[@]}" run "${TARGET_DIR_ARGS[@]}" "$t" "corpus/$t" "seeds/$t" -- "${FLAGS[@]}"; then
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "smoke: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "smoke: ${#TARGETS[@]} targets ran clean"
