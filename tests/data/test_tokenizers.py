import sys

import numpy as np
import pytest
import torch

from seqlab.data import BPETokenizer, ByteTokenizer, load_tokenizer
from seqlab.data.tokenizers import Tokenizer
from seqlab.errors import DataError, SeqlabError

TRICKY = [
    "",
    "plain ascii\n",
    "héllo wörld, naïve café",
    "日本語のテキスト and 中文",
    "emoji 🙂🚀 and combining e\u0301",
    "tabs\tand\r\nwindows newlines\n\n\n    indented",
    "nul \x00 and control \x07 chars",
    "  leading and trailing spaces  ",
]


def training_text() -> list[str]:
    return [
        "".join(f"def function_{i}_{j}(x):\n    return x * {j} + {i}\n" for j in range(40))
        for i in range(20)
    ]


def test_byte_round_trip_is_lossless_including_non_ascii():
    tokenizer = ByteTokenizer()
    for text in TRICKY:
        ids = tokenizer.encode(text)
        assert ids == list(text.encode("utf-8"))
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text
    assert tokenizer.name == "byte" and tokenizer.vocab_size == 256
    assert isinstance(tokenizer, Tokenizer)


def test_byte_decode_accepts_arrays_and_tensors_and_replaces_invalid_utf8():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("é!")
    assert tokenizer.decode(np.array(ids, dtype=np.uint16)) == "é!"
    assert tokenizer.decode(torch.tensor(ids)) == "é!"
    assert tokenizer.decode(ids[1:]) == "\ufffd!"


def test_byte_decode_rejects_ids_outside_the_byte_range():
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        ByteTokenizer().decode([65, 300])


def test_byte_save_writes_nothing(tmp_path):
    ByteTokenizer().save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bpe_train_respects_vocab_size_and_round_trips_any_text():
    tokenizer = BPETokenizer.train(training_text(), vocab_size=300)
    assert tokenizer.name == "bpe" and tokenizer.vocab_size == 300
    assert isinstance(tokenizer, Tokenizer)
    sample = training_text()[0]
    assert len(tokenizer.encode(sample)) < len(sample.encode("utf-8")) / 2
    for text in [*TRICKY, sample]:
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text
    batch = tokenizer.encode_batch(TRICKY)
    assert [list(ids) for ids in batch] == [tokenizer.encode(text) for text in TRICKY]


def test_bpe_vocab_is_capped_by_what_the_text_supports():
    tokenizer = BPETokenizer.train(["abab abab"], vocab_size=50_000)
    assert 256 < tokenizer.vocab_size < 300


def test_bpe_save_load_gives_identical_tokenizer(tmp_path):
    tokenizer = BPETokenizer.train(training_text(), vocab_size=320)
    tokenizer.save(tmp_path / "tok")
    assert [p.name for p in (tmp_path / "tok").iterdir()] == ["tokenizer.json"]
    for loaded in (BPETokenizer.load(tmp_path / "tok"), load_tokenizer("bpe", tmp_path / "tok")):
        assert isinstance(loaded, BPETokenizer)
        assert loaded.vocab_size == tokenizer.vocab_size
        for text in [*TRICKY, training_text()[3]]:
            assert loaded.encode(text) == tokenizer.encode(text)
            assert loaded.decode(loaded.encode(text)) == text


def test_bpe_training_is_deterministic():
    first = BPETokenizer.train(training_text(), vocab_size=320)
    second = BPETokenizer.train(training_text(), vocab_size=320)
    text = training_text()[5]
    assert first.encode(text) == second.encode(text)


def test_load_tokenizer_byte():
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)


def test_load_tokenizer_unknown_name_lists_valid_names():
    with pytest.raises(SeqlabError, match="unknown tokenizer 'gpt2'.*bpe, byte"):
        load_tokenizer("gpt2")


def test_load_tokenizer_bpe_without_saved_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"tokenizer\.json"):
        load_tokenizer("bpe", tmp_path)
    with pytest.raises(SeqlabError, match="directory"):
        load_tokenizer("bpe")


def test_load_tokenizer_bpe_corrupt_file_is_a_data_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid"):
        load_tokenizer("bpe", tmp_path)


def test_bpe_vocab_smaller_than_byte_alphabet_is_rejected():
    with pytest.raises(SeqlabError, match="at least 256"):
        BPETokenizer.train(["abc"], vocab_size=100)


def test_bpe_without_tokenizers_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(SeqlabError, match=r"pip install 'seqlab\[bpe\]'"):
        BPETokenizer.train(["abc"], vocab_size=300)
