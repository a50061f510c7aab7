import hashlib
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from seqlab.data import BPETokenizer, ByteTokenizer, TokenCorpus, corpora, load_corpus
from seqlab.errors import DataError, SeqlabError

SPLITS = ("train", "validation", "test")


def hash_split(relative: str) -> str:
    """The documented rule: sha1 of the relative path as a fraction, 2% validation, 2% test."""
    u = int.from_bytes(hashlib.sha1(relative.encode()).digest()[:8], "big") / 2**64
    return "validation" if u < 0.02 else "test" if u < 0.04 else "train"


def split_texts(corpus: TokenCorpus) -> dict[str, str]:
    return {split: corpus.tokenizer.decode(corpus.splits[split]) for split in SPLITS}


def entry_dirs(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "corpora").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def stdlib_files() -> dict[str, list[bytes]]:
    """Contents of the stdlib's UTF-8 .py files by split, in sorted relative-path order."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files: dict[str, list[bytes]] = {split: [] for split in SPLITS}
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root)
        if {"site-packages", "dist-packages"} & set(relative.parts) or not path.is_file():
            continue
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if b"\0" not in data:
            files[hash_split(relative.as_posix())].append(data)
    return files


@pytest.fixture(scope="module")
def stdlib_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stdlib-cache")


@pytest.fixture(scope="module")
def stdlib(stdlib_cache) -> TokenCorpus:
    return load_corpus("stdlib", cache_dir=stdlib_cache)


def test_stdlib_splits_are_disjoint_by_file_and_non_empty(stdlib, stdlib_files):
    for split in ("validation", "test"):
        expected = b"".join(data + b"\n" for data in stdlib_files[split])
        assert len(stdlib_files[split]) > 5
        assert np.array_equal(stdlib.splits[split], np.frombuffer(expected, dtype=np.uint8))
    train = stdlib.splits["train"]
    first = stdlib_files["train"][0] + b"\n"
    assert np.array_equal(train[: len(first)], np.frombuffer(first, dtype=np.uint8))
    assert len(train) == sum(len(data) + 1 for data in stdlib_files["train"])
    for split in SPLITS:
        assert len(stdlib.splits[split]) > 200_000, split
    assert "standard library" in stdlib.source and "hash" in stdlib.source


def test_stdlib_num_bytes_equals_utf8_size_of_split_texts_plus_separators(stdlib, stdlib_files):
    for split in SPLITS:
        expected = sum(len(data) + 1 for data in stdlib_files[split])
        assert stdlib.num_bytes[split] == expected == len(stdlib.splits[split])
        assert stdlib.bytes_per_token(split) == 1.0


def test_stdlib_splits_are_read_only_uint16_memmaps(stdlib):
    assert isinstance(stdlib.tokenizer, ByteTokenizer)
    for split in SPLITS:
        tokens = stdlib.splits[split]
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and tokens.ndim == 1
        assert not tokens.flags.writeable


def test_stdlib_is_deterministic_across_independent_builds(stdlib, tmp_path):
    again = load_corpus("stdlib", cache_dir=tmp_path)
    assert again.source == stdlib.source and again.num_bytes == stdlib.num_bytes
    for split in SPLITS:
        assert np.array_equal(again.splits[split], stdlib.splits[split])


def test_stdlib_cache_is_reused_without_retokenising(stdlib, stdlib_cache, monkeypatch):
    (entry,) = entry_dirs(stdlib_cache)
    mtimes = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}

    def fail(*args, **kwargs):
        raise AssertionError("the cached corpus was tokenised again")

    monkeypatch.setattr(ByteTokenizer, "encode_batch", fail)
    again = load_corpus("stdlib", cache_dir=stdlib_cache)
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == mtimes
    assert {"train.bin", "validation.bin", "test.bin", "meta.json"} <= set(mtimes)
    assert again.num_bytes == stdlib.num_bytes
    assert np.array_equal(again.splits["test"], stdlib.splits["test"])


def test_cache_dir_defaults_to_seqlab_cache_env(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("hello world\n" * 50)
    monkeypatch.setenv("SEQLAB_CACHE", str(tmp_path / "env-cache"))
    load_corpus("path", path=str(tmp_path / "a.txt"))
    assert len(entry_dirs(tmp_path / "env-cache")) == 1


def write_files(root: Path, contents: dict[str, bytes | str]) -> Path:
    for name, content in contents.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
    return root


def test_folder_corpus_splits_by_file_hash(tmp_path):
    names = [f"doc_{i:03d}.txt" for i in range(150)]
    folder = write_files(tmp_path / "docs", {n: f"text of {n}, ünïcode\n" * 3 for n in names})
    corpus = load_corpus("path", path=str(folder), cache_dir=tmp_path / "cache")
    expected = {split: "" for split in SPLITS}
    for name in names:
        expected[hash_split(name)] += (folder / name).read_text(encoding="utf-8") + "\n"
    assert all(expected.values())
    assert split_texts(corpus) == expected
    assert corpus.num_bytes == {split: len(expected[split].encode()) for split in SPLITS}
    assert "hash" in corpus.source


def test_tiny_folder_falls_back_to_position_split_and_says_so(tmp_path):
    folder = write_files(
        tmp_path / "docs",
        {
            "b.txt": "second file\n" * 30,
            "a.md": "first file ✓\n" * 30,
            "sub/c.py": "print('third')\n" * 30,
            "image.bin": bytes(range(256)) * 4,
            "latin1.txt": "caf\xe9".encode("latin-1"),
            ".hidden/secret.txt": "hidden dir\n",
            ".dotfile": "hidden file\n",
        },
    )
    corpus = load_corpus("path", path=str(folder), cache_dir=tmp_path / "cache")
    texts = split_texts(corpus)
    everything = "".join(
        (folder / name).read_text(encoding="utf-8") + "\n" for name in ("a.md", "b.txt", "sub/c.py")
    )
    assert "".join(texts[split] for split in SPLITS) == everything
    assert all(texts.values())
    assert len(texts["train"].encode()) == pytest.approx(0.9 * len(everything.encode()), abs=4)
    assert sum(corpus.num_bytes.values()) == len(everything.encode())
    assert "by position" in corpus.source and "too few files" in corpus.source


def test_single_file_splits_by_position_at_character_boundaries(tmp_path):
    text = "a" * 899 + "é" + "b" * 48 + "ü" + "c" * 49  # 1000 bytes; cuts at bytes 900 and 950
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus("path", path=str(path), cache_dir=tmp_path / "cache")
    texts = split_texts(corpus)
    assert texts == {"train": "a" * 899 + "é", "validation": "b" * 48 + "ü", "test": "c" * 49}
    assert corpus.num_bytes == {"train": 901, "validation": 50, "test": 49}
    assert "by position" in corpus.source and str(path) in corpus.source


def test_changed_file_gets_a_new_cache_entry(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("first version\n" * 40)
    cache = tmp_path / "cache"
    load_corpus("path", path=str(path), cache_dir=cache)
    path.write_text("the second, longer version\n" * 40)
    corpus = load_corpus("path", path=str(path), cache_dir=cache)
    assert split_texts(corpus)["train"].startswith("the second")
    assert len(entry_dirs(cache)) == 2


def test_incomplete_cache_entry_is_rebuilt(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("some text to cache\n" * 40)
    cache = tmp_path / "cache"
    load_corpus("path", path=str(path), cache_dir=cache)
    (entry,) = entry_dirs(cache)
    with open(entry / "train.bin", "r+b") as handle:
        handle.truncate(10)
    corpus = load_corpus("path", path=str(path), cache_dir=cache)
    assert "".join(split_texts(corpus).values()) == "some text to cache\n" * 40
    assert not [p for p in entry.iterdir() if p.name.endswith(".tmp")]


def test_bpe_corpus_trains_on_train_split_only_and_caches_its_tokenizer(tmp_path):
    train_part = "alpha beta gamma delta\n" * 900
    held_out = "zyxwvutsrq\n" * 100  # only in the last 5% (the test split)
    path = tmp_path / "book.txt"
    path.write_text(train_part + held_out)
    cache = tmp_path / "cache"
    corpus = load_corpus("path", path=str(path), tokenizer="bpe", vocab_size=300, cache_dir=cache)
    assert isinstance(corpus.tokenizer, BPETokenizer) and corpus.tokenizer.vocab_size <= 300
    assert len(corpus.tokenizer.encode(" gamma")) == 1
    assert len(corpus.tokenizer.encode("zyxwvutsrq")) > 3
    texts = split_texts(corpus)
    assert "".join(texts[split] for split in SPLITS) == train_part + held_out
    assert corpus.num_bytes == {split: len(texts[split].encode()) for split in SPLITS}
    assert corpus.bytes_per_token("train") > 2
    (entry,) = entry_dirs(cache)
    assert (entry / "tokenizer.json").is_file()
    again = load_corpus("path", path=str(path), tokenizer="bpe", vocab_size=300, cache_dir=cache)
    assert again.tokenizer.encode(train_part[:200]) == corpus.tokenizer.encode(train_part[:200])
    assert np.array_equal(again.splits["train"], corpus.splits["train"])
    load_corpus("path", path=str(path), tokenizer="bpe", vocab_size=280, cache_dir=cache)
    assert len(entry_dirs(cache)) == 2


def test_unknown_corpus_lists_valid_names():
    with pytest.raises(SeqlabError, match="unknown corpus 'wiki'.*hf, path, stdlib"):
        load_corpus("wiki")


def test_unknown_tokenizer_lists_valid_names(tmp_path):
    with pytest.raises(SeqlabError, match="unknown tokenizer 'wordpiece'.*bpe, byte"):
        load_corpus("stdlib", tokenizer="wordpiece", cache_dir=tmp_path)


def test_missing_path_is_a_data_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "corpus.txt"
    with pytest.raises(DataError, match="nowhere/corpus.txt"):
        load_corpus("path", path=str(missing), cache_dir=tmp_path)


def test_bad_option_combinations_are_rejected(tmp_path):
    with pytest.raises(SeqlabError, match="needs path"):
        load_corpus("path", cache_dir=tmp_path)
    with pytest.raises(SeqlabError, match="takes no path"):
        load_corpus("stdlib", path=str(tmp_path), cache_dir=tmp_path)
    with pytest.raises(SeqlabError, match="hf_split only applies"):
        load_corpus("path", path=str(tmp_path), hf_split="train", cache_dir=tmp_path)
    with pytest.raises(SeqlabError, match="at least 256"):
        load_corpus("path", path=str(tmp_path), tokenizer="bpe", vocab_size=10)


def test_non_utf8_file_is_a_data_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1") * 100)
    with pytest.raises(DataError, match="not UTF-8"):
        load_corpus("path", path=str(path), cache_dir=tmp_path / "cache")


def test_folder_without_text_files_is_a_data_error(tmp_path):
    folder = write_files(tmp_path / "bin", {"a.bin": b"\x00\x01\xff" * 10, ".hidden": "text"})
    with pytest.raises(DataError, match="no UTF-8 text files"):
        load_corpus("path", path=str(folder), cache_dir=tmp_path / "cache")


def test_empty_split_reports_a_data_error(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abcdefghij")  # 10 bytes: validation gets [9, 9), nothing
    corpus = load_corpus("path", path=str(path), cache_dir=tmp_path / "cache")
    assert len(corpus.splits["validation"]) == 0
    with pytest.raises(DataError, match="validation split is empty"):
        corpus.bytes_per_token("validation")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        corpus.bytes_per_token("dev")


def test_concurrent_loads_build_the_entry_once(tmp_path, monkeypatch):
    path = tmp_path / "book.txt"
    path.write_text("shared corpus text\n" * 100)
    builds = []
    real_build = corpora._build

    def slow_build(*args, **kwargs):
        builds.append(args[0])
        time.sleep(0.3)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(corpora, "_build", slow_build)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(2) as pool:
        load = partial(load_corpus, "path", path=str(path), cache_dir=cache)
        results = list(pool.map(lambda _: load(), range(2)))
    assert len(builds) == 1
    assert np.array_equal(results[0].splits["train"], results[1].splits["train"])
    (entry,) = entry_dirs(cache)
    assert not [p.name for p in entry.iterdir() if p.name.endswith(".tmp")]
