"""Text corpora tokenised once into cached, memory-mapped train/validation/test token arrays.

Four sources:

* ``stdlib``: every ``*.py`` file of the running Python's standard library (no
  ``site-packages``/``dist-packages``), offline and about 30 MB. Each file goes to one split by
  a hash of its path relative to the stdlib root (see "Splits").
* ``path``: a UTF-8 text file, or a folder of them (recursively, in sorted order; hidden
  files and folders, binary and non-UTF-8 files are skipped).
* ``hf``: a Hugging Face dataset, by hub name (``name`` or ``name:config``) or a local
  directory written by ``save_to_disk``; the text is the ``text_field`` column.
* ``wikipedia``: a MediaWiki XML dump (Wikipedia's ``pages-articles``, ``.xml`` or
  ``.xml.bz2``), streamed; each article (namespace 0, not a redirect, at least
  ``MIN_ARTICLE_CHARS`` characters once cleaned by `seqlab.data.wikitext`) is one document:
  its title, a newline, its plain text. The cleaned documents are spooled to anonymous
  temporary files (not held in memory) while tokenising.

Splits
    Per-document hash split (stdlib, folders, dumps): sha1 of the relative POSIX path (of a
    dump: the title), first 8 bytes read as a fraction u in [0, 1): u < 0.02 is validation,
    u < 0.04 test, the rest train (96 / 2 / 2). On the 3.11 stdlib that is about 500 KB each
    for validation and test.
    Position split (a single file, a folder or dump whose hash split leaves validation or test
    empty): the text's first 90% of bytes is train, the next 5% validation, the last 5% test
    (cuts moved forward to a character boundary). Hugging Face datasets keep their own
    train/validation/test splits ("valid" and "dev" count as validation); missing ones are cut
    from the end of train by row position, 5% of its rows each, validation before test.

Documents
    Each document (file, dataset row, article) is tokenised on its own as its text followed by
    "\\n", for the byte and BPE tokenizers, so documents are separated by a newline and
    ``num_bytes`` counts the UTF-8 bytes of exactly the text tokenised, separators included.
    A pretrained tokenizer (``hf:PATH``) ends each document with its end-of-sequence token
    instead of the newline (``num_bytes`` still counts the newline: the token stands for
    it). A position split has no added separators (a folder's or dump's concatenation
    already has them).

BPE
    Trained on the first ~2 MB (characters) of the train split, in corpus order, then used for
    all splits; its ``tokenizer.json`` lives in the cache entry.

Cache
    ``<cache_dir>/corpora/<corpus>-<tokenizer>-<hash>/`` holds ``train.bin``,
    ``validation.bin``, ``test.bin`` (raw little-endian uint16, or uint32 for vocabularies over
    65536), ``tokenizer.json`` for BPE and ``hf:PATH`` (the latter's directory named ``hf``,
    keyed by a hash of the tokenizer's content) and ``meta.json``. The hash covers the corpus
    kind, the resolved path, the (relative file, size, mtime_ns) listing or the dataset
    fingerprints (for a dump also the cleaner's version and minimum article length), the
    tokenizer and its vocabulary size, and the recipe above. Every file is written to a
    temporary name and moved into place; ``meta.json`` comes last and marks the entry complete.
    Concurrent builders of the same entry (e.g. several ranks) wait on a lock file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqlab.data import wikitext
from seqlab.data.tokenizers import (
    HF_PREFIX,
    MIN_BPE_VOCAB,
    BPETokenizer,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    check_tokenizer_name,
    load_tokenizer,
)
from seqlab.errors import DataError, SeqlabError, UnknownNameError
from seqlab.files import atomic_write_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, concurrent builders just repeat the work
    fcntl = None

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
CORPORA = ("stdlib", "path", "hf", "wikipedia")
HASH_FRACTIONS = {"validation": 0.02, "test": 0.02}
POSITION_FRACTIONS = {"train": 0.90, "validation": 0.05, "test": 0.05}
HF_CUT_FRACTION = 0.05
HF_SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
}
BPE_SAMPLE_CHARS = 2_000_000
ENCODE_BATCH_CHARS = 4_000_000
CHUNK_CHARS = 1_000_000
MIN_ARTICLE_CHARS = 200
FORMAT_VERSION = 1
RECIPE = {
    "format": FORMAT_VERSION,
    "hash_fractions": HASH_FRACTIONS,
    "position_fractions": POSITION_FRACTIONS,
    "hf_cut_fraction": HF_CUT_FRACTION,
    "separator": "\n",
    "bpe_sample_chars": BPE_SAMPLE_CHARS,
}
META_FILE = "meta.json"
EXCLUDED_STDLIB_DIRS = frozenset({"site-packages", "dist-packages"})

TextStream = Callable[[], Iterator[str]]


@dataclass
class TokenCorpus:
    """Token ids of a corpus's three splits, with the tokenizer that made them.

    ``splits`` maps "train", "validation" and "test" to read-only 1-D arrays (memory-mapped
    from the cache), ``num_bytes`` to the UTF-8 size of the text each split covers, and
    ``source`` describes where the text came from and how it was split.
    """

    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]
    num_bytes: dict[str, int]
    source: str

    def tokens(self, split: str) -> np.ndarray:
        """The token ids of `split`; an unknown split name raises DataError."""
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        return self.splits[split]

    def bytes_per_token(self, split: str) -> float:
        """Average UTF-8 bytes per token of `split`: bits/byte = nats/token / (ln 2 * this)."""
        num_tokens = len(self.tokens(split))
        if num_tokens == 0:
            raise DataError(f"the {split} split is empty (corpus: {self.source})")
        return self.num_bytes[split] / num_tokens


@dataclass
class _Splits:
    """How to produce each split's text, as restartable streams of pieces to tokenise."""

    texts: dict[str, TextStream]
    description: str
    documents: bool = True  # each piece is one document and its "\n" (not a position split)


@dataclass
class _Source:
    """A corpus resolved far enough to know its cache identity; `prepare` reads the text."""

    identity: dict[str, Any]
    prepare: Callable[[], _Splits]


def load_corpus(
    corpus: str = "stdlib",
    *,
    path: str | None = None,
    tokenizer: str = "byte",
    vocab_size: int = 4096,
    cache_dir: str | os.PathLike[str] | None = None,
    text_field: str = "text",
    hf_split: str | None = None,
) -> TokenCorpus:
    """Tokenise `corpus` (or read it from the cache) into train/validation/test token arrays.

    `path` is the file, folder, hub name, ``save_to_disk`` directory or dump file for "path",
    "hf" and "wikipedia";
    `vocab_size` only matters for "bpe"; `text_field` and `hf_split` (use only that split of
    the dataset and cut it by row position; hub names accept slices like "train[:10%]") only
    for "hf". `cache_dir` defaults to ``$SEQLAB_CACHE`` or ``~/.cache/seqlab``.
    """
    check_tokenizer_name(tokenizer)
    pretrained = HFTokenizer.load(tokenizer) if tokenizer.startswith(HF_PREFIX) else None
    if tokenizer == "bpe" and vocab_size < MIN_BPE_VOCAB:
        raise SeqlabError(
            f"BPE vocab_size must be at least {MIN_BPE_VOCAB} (the byte alphabet), got {vocab_size}"
        )
    if hf_split is not None and corpus != "hf":
        raise SeqlabError(f"hf_split only applies to the 'hf' corpus, not {corpus!r}")
    if corpus == "stdlib":
        if path is not None:
            raise SeqlabError("the 'stdlib' corpus takes no path; use corpus='path' for your files")
        source = _stdlib_source()
    elif corpus == "path":
        source = _path_source(_require_path(corpus, path))
    elif corpus == "hf":
        source = _hf_source(_require_path(corpus, path), text_field, hf_split)
    elif corpus == "wikipedia":
        source = _wikipedia_source(_require_path(corpus, path))
    else:
        raise UnknownNameError("corpus", corpus, CORPORA)

    identity = {
        "corpus": corpus,
        "source": source.identity,
        "tokenizer": tokenizer if pretrained is None else pretrained.fingerprint(),
        "vocab_size": vocab_size if tokenizer == "bpe" else ByteTokenizer.vocab_size,
        "recipe": RECIPE,
    }
    if pretrained is not None:
        identity["vocab_size"] = pretrained.vocab_size
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    kind = "hf" if pretrained is not None else tokenizer
    entry = cache_root(cache_dir) / "corpora" / f"{corpus}-{kind}-{digest}"
    meta = _read_meta(entry, tokenizer)
    if meta is None:
        with build_lock(entry):
            meta = _read_meta(entry, tokenizer)
            if meta is None:
                meta = _build(entry, source.prepare(), tokenizer, vocab_size, pretrained)
    return _open(entry, meta, tokenizer)


def _require_path(corpus: str, path: str | None) -> str:
    if not path:
        raise SeqlabError(f"the {corpus!r} corpus needs path=...")
    return path


def cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The data cache folder: `cache_dir`, else ``$SEQLAB_CACHE``, else ``~/.cache/seqlab``."""
    if cache_dir is None:
        cache_dir = os.environ.get("SEQLAB_CACHE") or Path.home() / ".cache" / "seqlab"
    return Path(cache_dir).expanduser()


# ---------------------------------------------------------------------------- sources


def _stdlib_source() -> _Source:
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = list_files(root, suffix=".py", excluded_dirs=EXCLUDED_STDLIB_DIRS)
    version = ".".join(map(str, sys.version_info[:3]))

    def prepare() -> _Splits:
        splits = _hash_split(root, files)
        if splits is None:
            raise DataError(f"too few readable .py files in the standard library at {root}")
        return _Splits(splits[0], f"Python {version} standard library at {root}: {splits[1]}")

    return _Source(_file_identity(root, files), prepare)


def _path_source(path: str) -> _Source:
    resolved = Path(path).expanduser().resolve()
    if resolved.is_file():
        identity = _file_identity(resolved.parent, [_stat_entry(resolved.parent, resolved)])
        return _Source(identity, lambda: _single_file_splits(resolved))
    if not resolved.is_dir():
        raise DataError(f"corpus path {path!r} does not exist (resolved to {resolved})")
    files = list_files(resolved)

    def prepare() -> _Splits:
        splits = _hash_split(resolved, files)
        if splits is not None:
            return _Splits(splits[0], f"folder {resolved}: {splits[1]}")
        data = bytearray()
        for relative, _, _ in files:
            text = read_text(resolved / relative)
            if text is not None:
                data += text.encode("utf-8") + b"\n"
        if not data:
            raise DataError(f"folder {resolved} has no UTF-8 text files")
        return _Splits(
            _position_split(data),
            f"folder {resolved}: too few files for a per-file split, so the concatenation of "
            f"its text files (each followed by a newline) is split by position: "
            f"{_describe_position()}",
            documents=False,
        )

    return _Source(_file_identity(resolved, files), prepare)


def _single_file_splits(path: Path) -> _Splits:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"corpus file {path} is not UTF-8 text ({err})") from None
    return _Splits(
        _position_split(data),
        f"text file {path} ({len(data)} bytes), split by position: {_describe_position()}",
        documents=False,
    )


def _hf_source(path: str, text_field: str, hf_split: str | None) -> _Source:
    try:
        import datasets
    except ImportError:
        raise SeqlabError(
            "the 'hf' corpus needs the 'datasets' package: pip install 'seqlab[hf]'"
        ) from None
    local = Path(path).expanduser()
    if local.is_dir():
        where = str(local.resolve())
        try:
            loaded = datasets.load_from_disk(where)
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"{where} is not a dataset saved with save_to_disk ({err})") from None
        if hf_split is not None:
            if not isinstance(loaded, datasets.DatasetDict):
                raise DataError(f"dataset at {where} has no named splits; drop hf_split")
            if hf_split not in loaded:
                raise DataError(
                    f"dataset at {where} has no split {hf_split!r}; its splits: {', '.join(loaded)}"
                )
            loaded = loaded[hf_split]
    else:
        where = path
        name, _, config = path.partition(":")
        try:
            loaded = datasets.load_dataset(name, config or None, split=hf_split)
        except (FileNotFoundError, ConnectionError, ValueError) as err:
            raise DataError(f"cannot load Hugging Face dataset {path!r}: {err}") from None

    parts = {"": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    base, whole, plan = _plan_hf_splits(list(parts), where)
    used = sorted({base, *whole.values()})
    for part in used:
        _check_text_column(parts[part], text_field, where)
    cut = [s for s in ("validation", "test") if s not in whole]
    rows = _cut_rows(len(parts[base]), cut, where)
    feeds = {split: (whole[split], 0, len(parts[whole[split]])) for split in whole}
    feeds.update({split: (base, *rows[split]) for split in rows})

    def stream(split: str) -> TextStream:
        part, start, stop = feeds[split]

        def texts() -> Iterator[str]:
            column = parts[part].select_columns([text_field]).select(range(start, stop))
            for batch in column.iter(batch_size=1000):
                yield from (text + "\n" for text in batch[text_field] if text is not None)

        return texts

    description = f"Hugging Face dataset {where!r}, column {text_field!r}: {plan}"
    identity = {
        "dataset": where,
        "hf_split": hf_split,
        "text_field": text_field,
        "fingerprints": {part: parts[part]._fingerprint for part in used},
    }
    return _Source(identity, lambda: _Splits({s: stream(s) for s in SPLITS}, description))


def _plan_hf_splits(names: list[str], where: str) -> tuple[str, dict[str, str], str]:
    """The dataset split that train comes from, the validation/test splits used whole, and a
    description; validation/test splits not used whole are cut from the end of the first."""
    whole: dict[str, str] = {}
    for name in sorted(names, key=lambda n: n not in SPLITS):  # exact names win over aliases
        canonical = HF_SPLIT_ALIASES.get(name.lower())
        if canonical is not None:
            whole.setdefault(canonical, name)
    if "train" in whole:
        base = whole.pop("train")
    elif len(names) == 1:
        base, whole = names[0], {}
    else:
        raise DataError(
            f"dataset {where} has no train split (splits: {', '.join(names)}); "
            "pick one with hf_split"
        )
    cut = [s for s in ("validation", "test") if s not in whole]
    used = [f"train={base!r}" if base else "train"] + [f"{s}={n!r}" for s, n in whole.items()]
    plan = ", ".join(used)
    if cut:
        plan += f"; {' and '.join(cut)} cut from the end of train by row position"
        plan += f" ({round(100 * HF_CUT_FRACTION)}% of its rows each)"
    return base, whole, plan


def _cut_rows(num_rows: int, cut: list[str], where: str) -> dict[str, tuple[int, int]]:
    """Row ranges: train first, then each split in `cut` taking HF_CUT_FRACTION of the rows."""
    size = max(1, round(HF_CUT_FRACTION * num_rows)) if cut else 0
    train_end = num_rows - size * len(cut)
    if train_end < 1:
        raise DataError(
            f"dataset {where} has {num_rows} rows, too few to cut {' and '.join(cut)} from train"
        )
    rows = {"train": (0, train_end)}
    for index, split in enumerate(cut):
        rows[split] = (train_end + index * size, train_end + (index + 1) * size)
    return rows


def _check_text_column(dataset: Any, text_field: str, where: str) -> None:
    if text_field not in dataset.column_names:
        raise DataError(
            f"dataset {where} has no column {text_field!r}; its columns: "
            f"{', '.join(dataset.column_names)} (choose one with text_field)"
        )
    dtype = getattr(dataset.features[text_field], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise DataError(f"column {text_field!r} of dataset {where} holds {dtype}, not text")


def _wikipedia_source(path: str) -> _Source:
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise DataError(
            f"wikipedia corpus path {path!r} is not a file (resolved to {resolved}); expected "
            "a MediaWiki XML dump, .xml or .xml.bz2"
        )
    identity = {
        **_file_identity(resolved.parent, [_stat_entry(resolved.parent, resolved)]),
        "cleaner": wikitext.CLEANER_VERSION,
        "min_article_chars": MIN_ARTICLE_CHARS,
    }
    return _Source(identity, lambda: _wikipedia_splits(resolved))


def _wikipedia_splits(path: Path) -> _Splits:
    """One pass over the dump: each kept article is spooled to its split's temporary file,
    NUL-terminated (XML text cannot hold NUL)."""
    # The spools live as long as the returned streams; the OS deletes them once closed.
    spools = {
        split: tempfile.TemporaryFile("w+", encoding="utf-8", newline="")  # noqa: SIM115
        for split in SPLITS
    }
    counts = dict.fromkeys(SPLITS, 0)
    for title, document in _dump_articles(path):
        split = _hash_split_of(title)
        spools[split].write(document + "\0")
        counts[split] += 1
    kept = sum(counts.values())
    if not kept:
        raise DataError(
            f"MediaWiki dump {path} has no article (namespace 0, not a redirect) with at least "
            f"{MIN_ARTICLE_CHARS} characters of text"
        )
    what = (
        f"MediaWiki dump {path}: {kept} articles (namespace 0, no redirects, at least "
        f"{MIN_ARTICLE_CHARS} characters of plain text), each its title, a newline and its text"
    )
    if all(counts.values()):
        percent = {s: round(100 * f) for s, f in HASH_FRACTIONS.items()}
        return _Splits(
            {split: _spooled_documents(spools[split]) for split in SPLITS},
            f"{what}, split by a hash of the title: train {100 - sum(percent.values())}% / "
            f"validation {percent['validation']}% / test {percent['test']}% "
            f"({'/'.join(map(str, counts.values()))} articles), each followed by a newline",
        )
    for spool in spools.values():
        spool.close()
    data = "".join(document + "\n" for _, document in _dump_articles(path)).encode("utf-8")
    return _Splits(
        _position_split(data),
        f"{what}: too few articles for a per-article split, so their concatenation (each "
        f"followed by a newline) is split by position: {_describe_position()}",
        documents=False,
    )


def _dump_articles(path: Path) -> Iterator[tuple[str, str]]:
    """(title, document) of the dump's articles with enough text, in dump order."""
    for page in wikitext.iter_pages(path):
        if wikitext.is_article(page):
            text = wikitext.clean_wikitext(page.text)
            if len(text) >= MIN_ARTICLE_CHARS:
                yield page.title, f"{page.title}\n{text}"


def _spooled_documents(spool: Any) -> TextStream:
    def texts() -> Iterator[str]:
        spool.seek(0)
        rest = ""
        while chunk := spool.read(CHUNK_CHARS):
            *documents, rest = (rest + chunk).split("\0")
            yield from (document + "\n" for document in documents)

    return texts


# ---------------------------------------------------------------------------- files


FileEntry = tuple[str, int, int]


def _stat_entry(root: Path, path: Path) -> FileEntry:
    info = path.stat()
    return path.relative_to(root).as_posix(), info.st_size, info.st_mtime_ns


def list_files(
    root: Path, suffix: str = "", excluded_dirs: frozenset[str] = frozenset()
) -> list[FileEntry]:
    """(relative POSIX path, size, mtime_ns) of the regular, non-hidden files under `root`."""
    entries = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in excluded_dirs]
        for filename in filenames:
            if filename.startswith(".") or not filename.endswith(suffix):
                continue
            path = Path(directory, filename)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(path.stat().st_mode):
                    entries.append(_stat_entry(root, path))
    return sorted(entries)


def _file_identity(root: Path, files: list[FileEntry]) -> dict[str, Any]:
    return {"root": str(root), "files": files}


def read_text(path: Path) -> str | None:
    """The file's text if it is UTF-8 without NUL bytes, else None (binary or other encoding)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read corpus file {path}: {err}") from None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def hash_fraction(relative: str) -> float:
    return int.from_bytes(hashlib.sha1(relative.encode("utf-8")).digest()[:8], "big") / 2**64


def _hash_split_of(relative: str) -> str:
    u = hash_fraction(relative)
    if u < HASH_FRACTIONS["validation"]:
        return "validation"
    if u < HASH_FRACTIONS["validation"] + HASH_FRACTIONS["test"]:
        return "test"
    return "train"


def _hash_split(root: Path, files: list[FileEntry]) -> tuple[dict[str, TextStream], str] | None:
    """Per-file split streams and a description, or None if validation or test has no file."""
    members: dict[str, list[Path]] = {split: [] for split in SPLITS}
    skipped = 0
    for relative, _, _ in files:
        path = root / relative
        if read_text(path) is None:
            skipped += 1
        else:
            members[_hash_split_of(relative)].append(path)
    if not all(members.values()):
        return None

    def stream(paths: list[Path]) -> TextStream:
        def texts() -> Iterator[str]:
            for path in paths:
                text = read_text(path)
                if text is not None:
                    yield text + "\n"

        return texts

    kept = sum(map(len, members.values()))
    counts = "/".join(str(len(members[s])) for s in SPLITS)
    percent = {s: round(100 * f) for s, f in HASH_FRACTIONS.items()}
    description = (
        f"{kept} text files ({skipped} binary or non-UTF-8 skipped), split by a hash of the "
        f"relative path: train {100 - sum(percent.values())}% / validation "
        f"{percent['validation']}% / test {percent['test']}% ({counts} files), "
        "each file followed by a newline"
    )
    return {split: stream(members[split]) for split in SPLITS}, description


def _describe_position() -> str:
    f = POSITION_FRACTIONS
    return (
        f"train first {round(100 * f['train'])}% / validation next "
        f"{round(100 * f['validation'])}% / test last {round(100 * f['test'])}% of bytes"
    )


def _char_boundary(data: bytes | bytearray, index: int) -> int:
    """`index` moved forward past UTF-8 continuation bytes."""
    while index < len(data) and data[index] & 0xC0 == 0x80:
        index += 1
    return index


def _position_split(data: bytes | bytearray) -> dict[str, TextStream]:
    train_end = _char_boundary(data, int(len(data) * POSITION_FRACTIONS["train"]))
    valid_end = _char_boundary(
        data, int(len(data) * (POSITION_FRACTIONS["train"] + POSITION_FRACTIONS["validation"]))
    )
    bounds = {
        "train": (0, train_end),
        "validation": (train_end, valid_end),
        "test": (valid_end, len(data)),
    }

    def stream(start: int, stop: int) -> TextStream:
        return lambda: _line_chunks(data[start:stop].decode("utf-8"), CHUNK_CHARS)

    return {split: stream(*bounds[split]) for split in SPLITS}


def _line_chunks(text: str, size: int) -> Iterator[str]:
    """`text` in consecutive pieces of about `size` characters, cut after a newline if any."""
    start = 0
    while start < len(text):
        stop = min(len(text), start + size)
        if stop < len(text):
            newline = text.rfind("\n", start, stop)
            if newline >= 0:
                stop = newline + 1
        yield text[start:stop]
        start = stop


# ---------------------------------------------------------------------------- cache


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _read_meta(entry: Path, tokenizer: str) -> dict[str, Any] | None:
    """The entry's metadata if the entry is complete and its files have the right sizes."""
    try:
        meta = json.loads((entry / META_FILE).read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in SPLITS:
            if (entry / f"{split}.bin").stat().st_size != meta["num_tokens"][split] * itemsize:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if tokenizer != "byte" and not (entry / "tokenizer.json").is_file():
        return None
    return meta


@contextlib.contextmanager
def build_lock(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on cache entry `entry` (a file beside it) while building it."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(entry.parent / f"{entry.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _take_chars(texts: Iterable[str], limit: int) -> Iterator[str]:
    """The first `limit` characters of a stream of pieces."""
    for text in texts:
        if limit <= 0:
            return
        yield text[:limit]
        limit -= len(text)


def _batched(texts: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_tokens(
    path: Path,
    texts: Iterable[str],
    tokenizer: ByteTokenizer | BPETokenizer | HFTokenizer,
    dtype: np.dtype,
    documents: bool,
) -> tuple[int, int]:
    """Tokenise `texts` into `path` atomically; returns (num_tokens, num_bytes). With
    `documents`, a pretrained tokenizer ends each piece with its end-of-sequence token."""
    encode = tokenizer.encode_batch
    if documents and isinstance(tokenizer, HFTokenizer):
        encode = tokenizer.encode_documents
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    num_tokens = num_bytes = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for batch in _batched(texts, ENCODE_BATCH_CHARS):
                for ids in encode(batch):
                    out.write(ids.astype(dtype.newbyteorder("<"), copy=False).tobytes())
                    num_tokens += len(ids)
                num_bytes += sum(len(text.encode("utf-8")) for text in batch)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return num_tokens, num_bytes


def _build(
    entry: Path,
    splits: _Splits,
    tokenizer_name: str,
    vocab_size: int,
    pretrained: HFTokenizer | None = None,
) -> dict[str, Any]:
    entry.mkdir(parents=True, exist_ok=True)
    (entry / META_FILE).unlink(missing_ok=True)
    log.info("tokenising %s with %s into %s", splits.description, tokenizer_name, entry)
    tokenizer: ByteTokenizer | BPETokenizer | HFTokenizer
    if pretrained is not None:
        tokenizer = pretrained
        tokenizer.save(entry)
    elif tokenizer_name == "bpe":
        sample = _take_chars(splits.texts["train"](), BPE_SAMPLE_CHARS)
        tokenizer = BPETokenizer.train(sample, vocab_size)
        tokenizer.save(entry)
    else:
        tokenizer = ByteTokenizer()
    dtype = _dtype_for(tokenizer.vocab_size)
    num_tokens, num_bytes = {}, {}
    for split in SPLITS:
        num_tokens[split], num_bytes[split] = _write_tokens(
            entry / f"{split}.bin", splits.texts[split](), tokenizer, dtype, splits.documents
        )
    meta = {
        "format": FORMAT_VERSION,
        "source": splits.description,
        "tokenizer": tokenizer_name,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "num_tokens": num_tokens,
        "num_bytes": num_bytes,
    }
    atomic_write_json(entry / META_FILE, meta)
    log.info("cached %s tokens in %s", num_tokens, entry)
    return meta


def _open(entry: Path, meta: dict[str, Any], tokenizer_name: str) -> TokenCorpus:
    tokenizer = load_tokenizer(tokenizer_name, entry)
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    splits: dict[str, np.ndarray] = {}
    for split in SPLITS:
        if meta["num_tokens"][split]:
            splits[split] = np.memmap(entry / f"{split}.bin", dtype=dtype, mode="r")
        else:  # mmap cannot map an empty file
            splits[split] = np.empty(0, dtype=dtype)
            splits[split].flags.writeable = False
    return TokenCorpus(tokenizer, splits, dict(meta["num_bytes"]), meta["source"])
