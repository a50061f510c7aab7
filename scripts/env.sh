#!/usr/bin/env bash
# Create or refresh ./.venv with the CPU build of torch and seqlab installed in editable mode.
# Sourced by the other scripts; safe to run repeatedly (re-installs only when pyproject changes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.seqlab-installed"
want="$(sha256sum "$root/pyproject.toml" "$root/scripts/env.sh" | sha256sum | cut -c1-16)"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # torch==2.13.0 resolves to the CPU wheel on these machines; the multi-GB CUDA build is
  # never wanted here. Installed first so that seqlab's "torch>=2.4" is already satisfied.
  "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
  "$venv/bin/python" -m pip install --quiet -e "$root[dev]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
