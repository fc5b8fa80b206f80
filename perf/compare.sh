#!/usr/bin/env bash
# Side-by-side comparison of ringpush and Sockudo with bench-harness.
# Thin wrapper around perf/compare.py (which does the work): raises the
# open-file limit to the hard limit and passes every argument through.
#   perf/compare.sh                 # full set (~15-20 min on 2 cores)
#   perf/compare.sh --set quick     # quick set (~3 min)
#   perf/compare.sh --only idle,connect
#   perf/compare.sh --raw-dir DIR   # keep the raw per-run output in DIR
# Results (comparison.md, params.json, state.json, fan-out plots) go to
# perf/results/<timestamp>/. The raw per-run output (harness JSON and plots,
# summaries, server logs, runs.jsonl) goes to a temporary directory that
# compare.py deletes at the end, unless --raw-dir is given or a run failed.
# See perf/README.md.
set -euo pipefail
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 "$(dirname "${BASH_SOURCE[0]}")/compare.py" "$@"
