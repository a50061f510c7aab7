#!/usr/bin/env bash
# The whole test suite on CPU (sets up .venv first), one pytest worker per core.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
ruff check src tests benchmarks examples
workers=$(python -c "import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))")
python -m pytest -q -n "$workers" "$@"
