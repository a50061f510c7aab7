import numpy as np
import pytest
import torch

from seqlab.data import ByteTokenizer, TextData, TokenCorpus, load_corpus
from seqlab.errors import DataError

SEQ_LEN = 8


def make_corpus(sizes: dict[str, int] | None = None) -> TokenCorpus:
    """Token value = position (mod 256) plus a per-split offset, so windows are recognisable."""
    sizes = sizes or {"train": 5000, "validation": 301, "test": 100}
    splits = {
        split: np.arange(size, dtype=np.int64).astype(np.uint16) % 256
        for split, size in sizes.items()
    }
    return TokenCorpus(ByteTokenizer(), splits, {s: 2 * n for s, n in sizes.items()}, "synthetic")


def test_batch_rows_are_windows_of_the_split():
    data = TextData(make_corpus(), SEQ_LEN)
    batch = data.batch("train", step=3, batch_size=16, seed=0)
    assert batch.shape == (16, SEQ_LEN + 1) and batch.dtype == torch.int64
    for row in batch:
        assert torch.equal(row, (row[0] + torch.arange(SEQ_LEN + 1)) % 256)


def test_same_seed_split_and_step_give_the_same_batch_even_after_restart():
    first = TextData(make_corpus(), SEQ_LEN).batch("train", step=7, batch_size=8, seed=1)
    resumed = TextData(make_corpus(), SEQ_LEN)
    resumed.batch("train", step=6, batch_size=8, seed=1)
    assert torch.equal(resumed.batch("train", step=7, batch_size=8, seed=1), first)


def test_different_steps_seeds_and_splits_give_different_batches():
    data = TextData(make_corpus({"train": 5000, "validation": 5000, "test": 5000}), SEQ_LEN)
    base = data.batch("train", step=0, batch_size=8, seed=0)
    assert not torch.equal(base, data.batch("train", step=1, batch_size=8, seed=0))
    assert not torch.equal(base, data.batch("train", step=0, batch_size=8, seed=1))
    assert not torch.equal(base, data.batch("validation", step=0, batch_size=8, seed=0))


def test_ranks_get_disjoint_rows_of_the_same_global_batch():
    data = TextData(make_corpus(), SEQ_LEN)
    whole = data.batch("train", step=5, batch_size=12, seed=3)
    parts = [
        data.batch("train", step=5, batch_size=4, seed=3, rank=rank, world_size=3)
        for rank in range(3)
    ]
    assert torch.equal(torch.cat(parts), whole)


def test_batch_rejects_bad_arguments():
    data = TextData(make_corpus(), SEQ_LEN)
    with pytest.raises(ValueError, match="rank"):
        data.batch("train", step=0, batch_size=4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="non-negative"):
        data.batch("train", step=-1, batch_size=4, seed=0)
    with pytest.raises(DataError, match="unknown split 'dev'.*train, validation, test"):
        data.batch("dev", step=0, batch_size=4, seed=0)


@pytest.mark.parametrize("max_tokens", [None, 8, 100, 10_000])
def test_eval_batches_predict_each_token_exactly_once(max_tokens):
    corpus = make_corpus()
    data = TextData(corpus, SEQ_LEN)
    batches = list(data.eval_batches("validation", batch_size=5, max_tokens=max_tokens))
    n = len(corpus.splits["validation"])
    targets = min(n - 1, max_tokens or n) // SEQ_LEN * SEQ_LEN
    assert all(b.shape[1] == SEQ_LEN + 1 and b.dtype == torch.int64 for b in batches)
    assert all(len(b) == 5 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 5
    rows = torch.cat(batches)
    assert torch.equal(rows[1:, 0], rows[:-1, -1])
    predicted = rows[:, 1:].reshape(-1)
    expected = torch.arange(1, targets + 1) % 256
    assert torch.equal(predicted, expected)
    again = list(data.eval_batches("validation", batch_size=5, max_tokens=max_tokens))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_eval_batches_reject_max_tokens_below_one_window():
    data = TextData(make_corpus(), SEQ_LEN)
    with pytest.raises(ValueError, match="max_tokens=3"):
        next(data.eval_batches("test", batch_size=2, max_tokens=3))


def test_too_short_split_names_the_split_and_what_seq_len_needs():
    corpus = make_corpus({"train": 1000, "validation": 50, "test": 1000})
    with pytest.raises(DataError, match="validation split has 50 tokens.*seq_len=64.*at least 65"):
        TextData(corpus, 64)


def test_vocab_size_and_bytes_per_token_pass_through():
    data = TextData(make_corpus(), SEQ_LEN)
    assert data.vocab_size == 256
    assert data.bytes_per_token("test") == 2.0


def test_text_data_over_a_cached_corpus(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    data = TextData(load_corpus("path", path=str(path), cache_dir=tmp_path / "cache"), 32)
    batch = data.batch("train", step=0, batch_size=4, seed=0)
    text = data.corpus.tokenizer.decode(batch[0])
    assert text in path.read_text()
    evaluated = sum(b.shape[0] for b in data.eval_batches("test", batch_size=4)) * 32
    assert 0 < len(data.corpus.splits["test"]) - 1 - evaluated < 32
