#!/usr/bin/env bash
# Writes data/ucr/<Name>/<Name>_TRAIN.ts and <Name>_TEST.ts: the UCR/UEA classification sets
# that ship inside the sktime wheel, for the `ts_classification` task. Univariate: ACSF1,
# ArrowHead, GunPoint, ItalyPowerDemand, OSULeaf, PLAID (unequal lengths); multivariate:
# BasicMotions (6 dims), JapaneseVowels (12 dims, unequal lengths). Only the wheel is
# downloaded (pip download, no install); existing files are kept.
# Usage: scripts/ucr.sh [NAME ...]   (default: all eight)
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(ACSF1 ArrowHead BasicMotions GunPoint ItalyPowerDemand
    JapaneseVowels OSULeaf PLAID)
missing=()
for name in "${names[@]}"; do
    if [ -e "data/ucr/$name/${name}_TRAIN.ts" ] && [ -e "data/ucr/$name/${name}_TEST.ts" ]; then
        echo "data/ucr/$name exists; kept"
    else
        missing+=("$name")
    fi
done
[ ${#missing[@]} -gt 0 ] || exit 0
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary :all: sktime==1.2.0 -d "$wheels"
"$python" - "$wheels" "${missing[@]}" <<'PY'
import pathlib
import sys
import zipfile

wheel = zipfile.ZipFile(next(pathlib.Path(sys.argv[1]).glob("sktime-*.whl")))
members = set(wheel.namelist())
for name in sys.argv[2:]:
    folder = pathlib.Path("data/ucr") / name
    wanted = [f"sktime/datasets/data/{name}/{name}_{part}.ts" for part in ("TRAIN", "TEST")]
    absent = [m for m in wanted if m not in members]
    if absent:
        sys.exit(f"the sktime wheel has no {absent[0]}")
    folder.mkdir(parents=True, exist_ok=True)
    for member in wanted:
        target = folder / pathlib.PurePosixPath(member).name
        if target.exists():
            continue
        partial = target.with_suffix(".partial")
        partial.write_bytes(wheel.read(member))
        partial.rename(target)
        print(f"wrote {target} ({target.stat().st_size:,} bytes)")
PY
