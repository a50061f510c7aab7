#!/usr/bin/env bash
# Writes data/enwiki-sample.xml.bz2: the 206-page English Wikipedia dump (2016, shortened)
# that ships inside gensim's wheel, a second real-text corpus for `data.corpus: wikipedia`.
# Only the wheel is downloaded (pip download, no install); an existing file is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
target=data/enwiki-sample.xml.bz2
if [ -e "$target" ]; then
    echo "$target exists; kept"
    exit 0
fi
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
mkdir -p data
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary :all: gensim==4.4.0 -d "$wheels"
"$python" - "$wheels" "$target" <<'PY'
import pathlib
import sys
import zipfile

wheel = next(pathlib.Path(sys.argv[1]).glob("gensim-*.whl"))
member = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
target = pathlib.Path(sys.argv[2])
partial = target.with_suffix(".partial")
partial.write_bytes(zipfile.ZipFile(wheel).read(member))
partial.rename(target)
print(f"wrote {target} ({target.stat().st_size:,} bytes)")
PY
