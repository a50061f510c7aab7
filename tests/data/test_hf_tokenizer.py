"""`data.tokenizer: hf:PATH`: a pretrained tokenizer from local files, documents ended by its
end-of-sequence token, the vocabulary size taken from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from seqlab.config import ExperimentConfig, from_dict
from seqlab.data.corpora import load_corpus
from seqlab.data.tasks.text import TextTask
from seqlab.data.tokenizers import HFTokenizer, load_tokenizer
from seqlab.errors import DataError, UnknownNameError
from tests.helpers import tiny_config

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "def f(x): return x + 1"]


def make_tokenizer(directory: Path, eos: str = "</s>", config_eos: str | None = None) -> Path:
    """A tiny word-level tokenizer saved as directory/tokenizer.json (and, with
    `config_eos`, a tokenizer_config.json naming that token)."""
    directory.mkdir(parents=True, exist_ok=True)
    words = sorted({w for text in TEXTS for w in text.split()} | {"x", "+", "1"})
    vocab = {"<unk>": 0, eos: 1, **{w: i + 2 for i, w in enumerate(words)}}
    if config_eos is not None:
        vocab[config_eos] = len(vocab)
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = tokenizers.decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([eos] + ([config_eos] if config_eos else []))
    tokenizer.save(str(directory / "tokenizer.json"))
    if config_eos is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": config_eos}))
    return directory


def test_reads_a_tokenizer_json_file_and_finds_its_eos(tmp_path):
    folder = make_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(f"hf:{folder / 'tokenizer.json'}")
    assert isinstance(tok, HFTokenizer)
    assert tok.eos_token == "</s>" and tok.eos_id == 1
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    assert tok.vocab_size == len(vocab)
    ids = tok.encode("the cat sat")
    assert len(ids) == 3 and 0 not in ids
    assert tok.decode(ids) == "the cat sat"


def test_a_folder_with_tokenizer_config_names_the_eos(tmp_path):
    folder = make_tokenizer(tmp_path / "tok", config_eos="<|eod|>")
    tok = load_tokenizer(f"hf:{folder}")
    assert tok.eos_token == "<|eod|>" and tok.eos_id == tok.vocab_size - 1


def test_saved_copy_is_read_first_and_round_trips(tmp_path):
    folder = make_tokenizer(tmp_path / "tok", config_eos="<|eod|>")
    tok = load_tokenizer(f"hf:{folder}")
    tok.save(tmp_path / "run")
    (folder / "tokenizer.json").unlink()  # the run must not need the original any more
    again = load_tokenizer(f"hf:{folder}", tmp_path / "run")
    assert again.eos_token == "<|eod|>" and again.encode("a dog") == tok.encode("a dog")


def test_bad_names_and_files_are_user_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="hf:PATH"):
        load_tokenizer("sentencepiece")
    with pytest.raises(DataError, match="tokenizer.json file or a tokenizer folder"):
        load_tokenizer(f"hf:{tmp_path / 'missing.json'}")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizers JSON"):
        load_tokenizer(f"hf:{tmp_path / 'bad.json'}")
    folder = make_tokenizer(tmp_path / "noeos", eos="<pad>")
    with pytest.raises(DataError, match="no end-of-sequence token"):
        load_tokenizer(f"hf:{folder}")


def test_corpus_documents_end_with_eos_and_vocab_comes_from_the_tokenizer(tmp_path):
    folder = make_tokenizer(tmp_path / "tok")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(150):  # enough files that every split of the per-file hash split has some
        (corpus / f"doc{i:03d}.txt").write_text(TEXTS[i % 3] + "\n")
    name = f"hf:{folder}"
    tokens = load_corpus("path", path=str(corpus), tokenizer=name, cache_dir=tmp_path / "cache")
    tok = load_tokenizer(name)
    train = np.asarray(tokens.tokens("train"))
    eos_positions = np.flatnonzero(train == tok.eos_id)
    assert len(eos_positions) > 100 and eos_positions[-1] == len(train) - 1
    first = train[: eos_positions[0]].tolist()
    assert tok.decode(first) in TEXTS
    assert tokens.tokenizer.vocab_size == tok.vocab_size
    config = from_dict(
        ExperimentConfig,
        tiny_config(corpus, tmp_path / "cache", data={"tokenizer": name, "seq_len": 8}),
    )
    assert TextTask(config.data).vocab_size == tok.vocab_size


def test_a_folder_without_tokenizer_json_goes_through_auto_tokenizer(tmp_path):
    folder = tmp_path / "gpt2-style"
    folder.mkdir()
    vocab = {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    tok = load_tokenizer(f"hf:{folder}")
    assert tok.eos_token == "<|endoftext|>" and tok.vocab_size == 5
    assert tok.encode("ab a") == [3, 4, 1] and tok.decode([3, 4, 1]) == "ab a"
    tok.save(tmp_path / "run")
    assert load_tokenizer(f"hf:{folder}", tmp_path / "run").encode("ab a") == [3, 4, 1]
