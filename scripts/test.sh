#!/usr/bin/env bash
# The whole test suite on CPU (sets up .venv first). First the statistical tests (verdicts on
# trained models and sampled rates) on another ATen kernel path and thread count, so that a
# verdict that holds only for this CPU's float rounding fails here before it fails on a
# user's machine; then every test, one pytest worker per core (its summary line comes last).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
ruff check src tests benchmarks examples
# One process with 2 threads (~15 s): several multi-threaded workers would oversubscribe the cores.
echo "statistical tests with ATEN_CPU_CAPABILITY=default and 2 torch threads:"
status=0
ATEN_CPU_CAPABILITY=default SEQLAB_TEST_THREADS=2 OMP_NUM_THREADS=2 \
  python -m pytest -q -p no:xdist -m statistical "$@" || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then  # 5: the arguments selected none of them
  exit "$status"
fi
echo "every test:"
workers=$(python -c "import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))")
python -m pytest -q -n "$workers" "$@"
