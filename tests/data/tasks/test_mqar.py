"""MQAR and induction: an independent solver reproduces every scored label."""

import numpy as np
import pytest
import torch

import seqlab
from seqlab.config import ExperimentConfig, ModelConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.errors import ConfigError
from seqlab.objectives import build_objective


def make(name: str, **options):
    options.setdefault("eval_examples", 32)
    return build_task(ExperimentConfig(task=TaskConfig(name=name, options=options)))


def rows(task, split):
    """(tokens, mask) numpy rows of `split`: training batches or the evaluation set."""
    if split == "train":
        batches = [task.batch("train", step, 32, seed=0) for step in range(4)]
    else:
        batches = list(task.eval_batches(split, 32))
    return [(t.numpy(), m.numpy()) for b in batches for t, m in zip(b.tokens, b.mask, strict=True)]


@pytest.mark.parametrize("random_non_queries", [True, False])
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_mqar_labels_are_the_values_of_the_queried_keys(split, random_non_queries):
    task = make("mqar", seq_len=64, num_kv_pairs=8, random_non_queries=random_non_queries)
    half = task.vocab_size // 2
    for tokens, mask in rows(task, split):
        keys, values = tokens[0:16:2], tokens[1:16:2]
        assert len(set(keys)) == 8 and all(1 <= k < half for k in keys)
        assert len(set(values)) == 8 and all(v >= half for v in values)
        scored = np.flatnonzero(mask)
        assert len(scored) == 8 and scored.min() > 16
        queried = tokens[scored - 1]
        assert sorted(queried) == sorted(keys), "every key is queried exactly once"
        for t in scored:
            first = int(np.flatnonzero(tokens == tokens[t - 1])[0])
            assert first < 16 and first % 2 == 0
            assert tokens[t] == tokens[first + 1]


def test_mqar_queries_follow_power_law_gaps():
    task = make("mqar", seq_len=128, num_kv_pairs=4, power_a=0.01)
    slots = np.concatenate([(np.flatnonzero(m) - 1 - 8) // 2 for _, m in rows(task, "train")])
    uniform_mean = ((129 - 8) // 2 - 1) / 2
    assert slots.min() >= 0 and slots.mean() < 0.6 * uniform_mean
    assert (slots == 0).mean() > 3 * (slots == 30).mean()


def test_mqar_trains_on_the_mixture_and_tests_on_num_kv_pairs():
    task = make("mqar", seq_len=64, num_kv_pairs=8, kv_pairs_mix=[2, 4, 8])
    train_counts = {int(m.sum()) for _, m in rows(task, "train")}
    assert train_counts == {2, 4, 8}
    assert {int(m.sum()) for _, m in rows(task, "test")} == {8}
    model = seqlab.build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, vocab_size=256))
    metrics = task.evaluate(model, build_objective("ar"), split="validation")
    slices = {k: v for k, v in metrics.items() if k.startswith("accuracy_kv")}
    assert set(slices) == {"accuracy_kv2", "accuracy_kv4", "accuracy_kv8"}
    assert all(0 <= v <= 1 for v in slices.values())
    counts = np.array(task.eval_set("validation").infos)
    weights = [(counts == k).sum() * k for k in (2, 4, 8)]
    pooled = sum(w * slices[f"accuracy_kv{k}"] for w, k in zip(weights, (2, 4, 8), strict=True))
    assert abs(pooled / sum(weights) - metrics["accuracy"]) < 1e-9
    test_metrics = task.evaluate(model, build_objective("ar"), split="test")
    assert not any(k.startswith("accuracy_kv") for k in test_metrics)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_induction_label_is_the_token_after_the_first_trigger(split):
    task = make("induction", seq_len=20, test_seq_len=50, alphabet_size=6)
    for tokens, mask in rows(task, split):
        length = int((tokens != 0).sum())
        assert length == (51 if split == "test" else 21)
        triggers = np.flatnonzero(tokens == 1)
        assert len(triggers) == 2 and triggers[1] == length - 2
        assert np.flatnonzero(mask).tolist() == [length - 1]
        assert tokens[length - 1] == tokens[triggers[0] + 1]


def test_induction_test_rows_are_longer_than_training_rows():
    task = make("induction", seq_len=16, test_seq_len=64)
    train = torch.stack([torch.from_numpy(t) for t, _ in rows(task, "train")])
    test = torch.stack([torch.from_numpy(t) for t, _ in rows(task, "test")])
    assert (train != 0).sum(1).max() < (test != 0).sum(1).min()
    assert task.seq_len == 65


def without_copies(tokens, mask, n, times, segment):
    """A repeated-context row with every extra copy of each instance's context removed."""
    length = segment + (times - 1) * 2 * n
    parts = []
    for start in range(0, len(tokens), length):
        piece = slice(start, start + length)
        t, m = tokens[piece], mask[piece]
        assert not m[: 2 * n * times].any(), "no context copy is scored"
        for copy in range(1, times):
            assert (t[2 * n * copy : 2 * n * (copy + 1)] == t[: 2 * n]).all()
        keep = np.r_[0 : 2 * n, 2 * n * times : length]
        parts.append((t[keep], m[keep]))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_repeat_context_repeats_the_pairs_and_keeps_the_same_questions(split):
    """JRT-Prompt: the context read twice, answers unchanged, and the very same examples as
    the context read once (for every split, training batches included)."""
    options = {"seq_len": 32, "num_kv_pairs": 4, "vocab_size": 64}
    once = make("mqar", **options)
    twice = make("mqar", repeat_context=2, **options)
    assert twice.seq_len == once.seq_len + 8
    pairs = list(zip(rows(once, split), rows(twice, split), strict=True))
    for (tokens, mask), (tokens2, mask2) in pairs:
        assert len(tokens2) == len(tokens) + 8 and mask2.sum() == mask.sum() == 4
        stripped, stripped_mask = without_copies(tokens2, mask2, 4, 2, 33)
        assert (stripped == tokens).all() and (stripped_mask == mask).all()


def test_stacked_instances_are_answered_from_their_own_context():
    task = make("mqar", seq_len=32, num_kv_pairs=3, vocab_size=16, stacked=3, repeat_context=2)
    assert task.seq_len == 3 * (33 + 6)
    overwritten = 0
    for tokens, mask in rows(task, "train"):
        assert len(tokens) == task.seq_len and mask.sum() == 9
        for start in range(0, len(tokens), 39):
            t, m = tokens[start : start + 39], mask[start : start + 39]
            pairs = dict(zip(t[0:6:2].tolist(), t[1:6:2].tolist(), strict=True))
            assert (t[6:12] == t[:6]).all() and not m[:12].any()
            scored = np.flatnonzero(m)
            assert sorted(t[scored - 1].tolist()) == sorted(pairs)
            assert all(t[i] == pairs[t[i - 1]] for i in scored)
            if start:
                earlier = tokens[:start]
                for key, value in pairs.items():
                    seen = earlier[np.flatnonzero(earlier[:-1] == key) + 1]
                    overwritten += bool(len(seen)) and value not in seen
    assert overwritten > 0, "later instances rebind keys of earlier ones"


def test_repeated_and_stacked_batches_are_a_pure_function_of_seed_split_and_step():
    options = {"seq_len": 32, "num_kv_pairs": 4, "repeat_context": 3, "stacked": 2}
    a, b = make("mqar", **options), make("mqar", **options)
    first = a.batch("train", 5, 8, seed=1)
    a.batch("train", 6, 8, seed=1)
    for other in (a.batch("train", 5, 8, seed=1), b.batch("train", 5, 8, seed=1)):
        assert torch.equal(other.tokens, first.tokens) and torch.equal(other.mask, first.mask)
    assert not torch.equal(a.batch("train", 5, 8, seed=2).tokens, first.tokens)


@pytest.mark.parametrize(
    "options",
    [
        {"repeat_context": 0},
        {"repeat_context": True},
        {"repeat_context": 2.5},
        {"stacked": 0},
        {"stacked": 65},
    ],
)
def test_bad_repeat_and_stack_options_are_config_errors(options):
    name = next(iter(options))
    with pytest.raises(ConfigError, match=f"{name} must be (an integer in|int)"):
        make("mqar", **options)
