#!/usr/bin/env bash
# The whole test suite on CPU (sets up .venv first).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
ruff check src tests benchmarks
python -m pytest -q "$@"
