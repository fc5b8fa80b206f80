#!/usr/bin/env bash
# Side-by-side comparison of ringpush and Sockudo with bench-harness.
# Thin wrapper around perf/compare.py (which does the work): raises the
# open-file limit to the hard limit and passes every argument through.
#   perf/compare.sh                 # full set (~15-20 min on 2 cores)
#   perf/compare.sh --set quick     # quick set (~3 min)
#   perf/compare.sh --only idle,connect
# See perf/README.md.
set -euo pipefail
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 "$(dirname "${BASH_SOURCE[0]}")/compare.py" "$@"
