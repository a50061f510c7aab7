"""The needle-in-a-haystack task: one planted key-value pair recalled at the end."""

import numpy as np
import pytest

from seqlab.errors import ConfigError
from seqlab.registry import TASKS


@pytest.mark.parametrize("needles", [1, 3])
def test_the_queried_key_was_planted_once_with_its_value(needles):
    task = TASKS.build("needle", seq_len=40, vocab_size=32, needles=needles)
    rng = np.random.default_rng(0)
    for _ in range(50):
        example = task.sample(rng, "train")
        tokens, depth = example.tokens, example.info
        assert len(tokens) == 41 and example.scored.tolist() == [False] * 40 + [True]
        key, value = tokens[-2], tokens[-1]
        assert 1 <= key < 8 and 8 <= value < 32  # values share the filler's ids
        assert tokens[depth] == key and tokens[depth + 1] == value
        body = tokens[:-2]
        assert (body < 8).sum() == needles and (body[body < 8] != key).sum() == needles - 1
        assert np.all(body[np.flatnonzero(body < 8) + 1] >= 8)  # each key followed by a value


def test_batches_are_reproducible_and_options_are_checked():
    task = TASKS.build("needle", seq_len=20)
    first = task.batch("train", 3, 4, seed=1)
    assert first.tokens.shape == (4, 21)
    assert (first.tokens == task.batch("train", 3, 4, seed=1).tokens).all()
    with pytest.raises(ConfigError, match="needles must be an integer"):
        TASKS.build("needle", needles=0)
    with pytest.raises(ConfigError, match="seq_len must be an integer >= 2"):
        TASKS.build("needle", seq_len=3, needles=1)
