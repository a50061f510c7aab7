#!/usr/bin/env bash
# The main job on the built-in default: train the default model on the Python standard
# library, evaluate it on the test split, and print a sample.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
out="${1:-runs/quickstart}"
if [ -f "$out/checkpoints/latest" ]; then
  seqlab train --out "$out" --resume
else
  seqlab train --config default --out "$out"
fi
seqlab eval "$out" --split test
seqlab sample "$out" --prompt "def " --max-new-tokens 200 --temperature 0.8 --top-k 40
