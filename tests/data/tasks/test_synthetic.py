"""Contract tests every synthetic task passes: shapes, seeding, rank slicing, disjoint splits,
evaluation sets, option errors and an evaluation smoke test."""

import math

import numpy as np
import pytest
import torch

import seqlab
from seqlab.config import ExperimentConfig, ModelConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.data.tasks.synthetic import PAD, SyntheticTask, held_out
from seqlab.errors import ConfigError, DataError
from seqlab.objectives import build_objective

EVAL = {"eval_examples": 24}
CONFIGS = [
    ("mqar", {"seq_len": 32, "num_kv_pairs": 4, "vocab_size": 64}),
    ("mqar", {"seq_len": 32, "num_kv_pairs": 4, "kv_pairs_mix": [1, 2, 4], "vocab_size": 64}),
    ("induction", {"seq_len": 16, "test_seq_len": 40}),
    ("copy", {"min_len": 2, "max_len": 6, "test_max_len": 12}),
    ("reverse", {"min_len": 2, "max_len": 6, "test_max_len": 12}),
    ("selective_copy", {"seq_len": 24, "num_tokens": 4}),
    ("state_tracking", {"kind": "parity", "max_len": 10, "test_max_len": 20}),
    ("state_tracking", {"kind": "mod_add", "max_len": 10, "test_max_len": 20}),
    ("state_tracking", {"kind": "mod_add", "brackets": True, "max_len": 11, "test_max_len": 21}),
    ("formal", {"kind": "even_pairs", "max_len": 8, "test_max_len": 16}),
    ("formal", {"kind": "cycle_navigation", "max_len": 8, "test_max_len": 16}),
    ("formal", {"kind": "reverse_string", "max_len": 8, "test_max_len": 16}),
    ("formal", {"kind": "duplicate_string", "max_len": 8, "test_max_len": 16}),
    ("formal", {"kind": "bucket_sort", "max_len": 8, "test_max_len": 16}),
    ("regbench", {"seq_len": 48, "max_states": 6, "max_string_len": 8}),
    ("listops", {"max_depth": 2, "max_len": 24}),
    ("sort", {"max_items": 6, "num_values": 16}),
    ("pathfinder", {"size": 17, "contour_length": 3, "dash_length": 1, "seed_distance": 4}),
    ("star_graph", {"degree": 3, "path_length": 4, "num_nodes": 12}),
]
IDS = [f"{name}-{'-'.join(str(v) for v in options.values())}" for name, options in CONFIGS]
# Example spaces small enough that train and evaluation would share examples without the
# held-out partition.
TINY = [
    ("state_tracking", {"kind": "parity", "min_len": 1, "max_len": 6, "test_max_len": 8}),
    ("formal", {"kind": "even_pairs", "min_len": 1, "max_len": 6, "test_max_len": 8}),
    ("formal", {"kind": "bucket_sort", "min_len": 1, "max_len": 3, "test_max_len": 5}),
    ("sort", {"min_items": 1, "max_items": 3, "num_values": 5}),
    ("listops", {"max_depth": 1, "max_args": 2, "max_len": 4}),
    ("selective_copy", {"seq_len": 6, "num_tokens": 2, "alphabet_size": 3}),
    ("star_graph", {"degree": 2, "path_length": 2, "num_nodes": 5}),
]


def make(name: str, options: dict) -> SyntheticTask:
    return build_task(ExperimentConfig(task=TaskConfig(name=name, options={**EVAL, **options})))


def rows_of(tokens: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in tokens}


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
def test_batches_have_the_declared_shape_vocabulary_and_scored_answers(name, options):
    task = make(name, options)
    train = task.batch("train", 0, 8, seed=0)
    assert not (train.tokens[:, -1] == PAD).all(), "padded only to the longest row"
    batches = [train, *task.eval_batches("test", 8)]
    for batch in batches:
        assert batch.tokens.dtype == torch.int64 and batch.mask.dtype == torch.bool
        assert batch.tokens.shape[1] <= task.seq_len and batch.mask.shape == batch.tokens.shape
        assert int(batch.tokens.min()) >= 0 and int(batch.tokens.max()) < task.vocab_size
        assert batch.mask.any(dim=1).all(), "every example has an answer"
        assert not batch.mask[:, 0].any(), "the first token has no prefix to predict it from"
        padding = batch.tokens == PAD
        assert not (batch.mask & padding).any()
        if name != "mqar":  # elsewhere PAD is no content token: padding is the row's tail
            length = (~padding).sum(dim=1)
            width = batch.tokens.shape[1]
            assert torch.equal(padding, torch.arange(width) >= length[:, None])


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
def test_batches_are_a_pure_function_of_seed_split_and_step(name, options):
    first = make(name, options).batch("train", 3, 6, seed=1)
    other = make(name, options)
    other.batch("train", 2, 6, seed=1)
    again = other.batch("train", 3, 6, seed=1)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.mask, again.mask)
    assert not torch.equal(first.tokens, other.batch("train", 4, 6, seed=1).tokens)
    assert not torch.equal(first.tokens, other.batch("train", 3, 6, seed=2).tokens)


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
def test_each_rank_takes_its_rows_of_the_global_batch(name, options):
    whole = make(name, options).batch("train", 5, 6, seed=3)
    task = make(name, options)
    parts = [task.batch("train", 5, 3, seed=3, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([p.tokens for p in parts]), whole.tokens)
    assert torch.equal(torch.cat([p.mask for p in parts]), whole.mask)


@pytest.mark.parametrize(("name", "options"), CONFIGS + TINY, ids=IDS + [n for n, _ in TINY])
def test_no_evaluation_example_ever_appears_in_training(name, options):
    task = make(name, {**options, "eval_examples": 64})
    train = set()
    for step in range(16):
        train |= rows_of(task.batch("train", step, 64, seed=step % 3).tokens)
    evaluation = set()
    for split in ("validation", "test"):
        evaluation |= rows_of(torch.cat([b.tokens for b in task.eval_batches(split, 64)]))
    assert not train & evaluation
    validation = task.eval_set("validation")
    assert len(validation.tokens) == 64


@pytest.mark.parametrize(("name", "options"), TINY, ids=[n for n, _ in TINY])
def test_small_example_spaces_would_overlap_without_the_partition(name, options):
    """The disjointness above is not luck: in these spaces a plain draw repeats examples,
    and the partition puts every validation example in the held-out bucket."""
    task = make(name, options)
    rng = np.random.default_rng(0)
    keys = [task.sample(rng, "train").key for _ in range(400)]
    assert len(set(keys)) < len(keys) * 0.8
    assert any(held_out(k) for k in keys) and not all(held_out(k) for k in keys)
    examples = task.examples(np.random.default_rng(1), "validation", 20)
    assert all(held_out(e.key) for e in examples)


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
def test_evaluation_sets_are_fixed_and_max_tokens_keeps_a_prefix(name, options):
    task, other = make(name, options), make(name, options)
    for split in ("validation", "test"):
        full = torch.cat([b.tokens for b in task.eval_batches(split, 5)])
        assert len(full) == EVAL["eval_examples"]
        assert torch.equal(full, torch.cat([b.tokens for b in other.eval_batches(split, 7)]))
        width = full.shape[1]  # the split's longest row: test rows may be longer
        capped = torch.cat([b.tokens for b in task.eval_batches(split, 5, 10 * width)])
        assert torch.equal(capped, full[:10])
        assert len(list(task.eval_batches(split, 100, 10 * width + width - 1))) == 1
    assert not torch.equal(
        task.eval_set("validation").tokens, task.batch("validation", 0, 24, seed=0).tokens
    )


def test_bad_arguments_are_rejected():
    task = make("sort", {})
    with pytest.raises(DataError, match="unknown split 'dev'.*train, validation, test"):
        task.batch("dev", 0, 4, seed=0)
    with pytest.raises(ValueError, match="rank"):
        task.batch("train", 0, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="non-negative"):
        task.batch("train", -1, 4, seed=0)
    with pytest.raises(ValueError, match="max_tokens"):
        list(task.eval_batches("test", 4, max_tokens=task.seq_len - 1))


@pytest.mark.parametrize(
    "name",
    sorted({n for n, _ in CONFIGS}),
)
def test_unknown_options_name_the_valid_ones(name):
    with pytest.raises(ConfigError, match="unknown option.*bogus.*valid options:.*eval_examples"):
        make(name, {"bogus": 1})


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mqar", {"num_kv_pairs": 40}, "kv-pair counts"),
        ("mqar", {"kv_pairs_mix": [2, 0]}, "kv-pair counts"),
        ("copy", {"max_len": 30, "test_max_len": 20}, "test_max_len"),
        ("state_tracking", {"kind": "xor"}, "valid kinds: parity, mod_add"),
        ("state_tracking", {"kind": "parity", "brackets": True}, "brackets need"),
        ("state_tracking", {"kind": "parity", "modulus": 3}, "modulo 2"),
        ("formal", {"kind": "stack"}, "valid kinds: even_pairs, cycle_navigation"),
        ("regbench", {"max_states": 30}, "num_symbols"),
        ("sort", {"max_items": 100}, "num_values"),
        ("listops", {"max_args": 1}, "max_args"),
        ("selective_copy", {"num_tokens": 40}, "num_tokens"),
        ("induction", {"test_seq_len": 8}, "test_seq_len"),
        ("sort", {"eval_examples": 0}, "eval_examples"),
    ],
)
def test_bad_option_values_raise_config_errors(name, options, message):
    with pytest.raises(ConfigError, match=message):
        make(name, options)


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
def test_evaluate_scores_a_tiny_attention_model(name, options):
    task = make(name, {**options, "eval_examples": 6})
    model = seqlab.build_model(
        ModelConfig(d_model=16, n_layers=1, n_heads=2, vocab_size=task.vocab_size)
    )
    for split in ("validation", "test"):
        metrics = task.evaluate(model, build_objective("ar"), split=split, batch_size=4)
        assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["exact_match"] <= 1
        assert math.isfinite(metrics["nll"]) and metrics["nll"] > 0
        assert metrics["tokens"] == int(task.eval_set(split).mask[:, 1:].sum())
    assert model.training


def test_the_partition_puts_each_key_on_one_side():
    task = make("copy", {})
    keys = [bytes([i, j]) for i in range(16) for j in range(16)]
    held = [k for k in keys if held_out(k)]
    assert 0.05 < len(held) / len(keys) < 0.25
    for key in keys:
        assert task.in_split(key, "train") != task.in_split(key, "validation")
        assert task.in_split(key, "test"), "copy's test strings are longer than any in training"
    assert task.in_split(held[0], "test") == make("sort", {}).in_split(held[0], "test")
    never = next(k for k in keys if not held_out(k))
    with pytest.raises(DataError, match="too few distinct examples"):
        task.first_in_split("validation", lambda: (never, None))
