#!/usr/bin/env bash
# The whole benchmark suite, one command (≤ 30 min on a 2-core machine):
#     bench/run_all.sh            # full run; writes bench/results/report.md
#     bench/run_all.sh --quick    # smoke run with tiny sizes (not a measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m bench.run_all "$@"
