#!/usr/bin/env bash
# The main job on the built-in default: the `quickstart` comparison (several backbones trained
# at equal budget on associative recall and on Python source), printed as a leaderboard.
# Rerunning skips finished runs; extra arguments go to `seqlab compare`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
seqlab compare quickstart --out runs/quickstart "$@"
