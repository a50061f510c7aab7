#!/usr/bin/env bash
# Writes data/ml-100k/ml-100k.inter: MovieLens-100k (943 users, 1,682 movies, 100,000 ratings
# with timestamps) in RecBole's atomic format, as it ships inside the recbole wheel, for the
# `seqrec` task. Only the wheel is downloaded (pip download, no install); an existing file is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
target=data/ml-100k/ml-100k.inter
if [ -e "$target" ]; then
    echo "$target exists; kept"
    exit 0
fi
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
mkdir -p "$(dirname "$target")"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary :all: recbole==1.2.1 -d "$wheels"
"$python" - "$wheels" "$target" <<'PY'
import pathlib
import sys
import zipfile

wheel = next(pathlib.Path(sys.argv[1]).glob("recbole-*.whl"))
member = "recbole/dataset_example/ml-100k/ml-100k.inter"
target = pathlib.Path(sys.argv[2])
partial = target.with_suffix(".partial")
partial.write_bytes(zipfile.ZipFile(wheel).read(member))
partial.rename(target)
print(f"wrote {target} ({target.stat().st_size:,} bytes)")
PY
