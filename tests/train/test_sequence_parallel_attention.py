"""Softmax attention under train.sequence_parallel (ring, ring_bidirectional, ulysses) and
hybrids with linear recurrences: 2 or 4 CPU processes (gloo) give the single-process
outputs, every gradient and the loss curve; token-balanced splits balance the tokens."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from seqlab.config import TrainConfig
from seqlab.errors import ConfigError
from seqlab.objectives.base import Batch
from seqlab.ops.attention import attention_reference, causal_mask
from seqlab.ops.ring_attention import sharded_attention
from seqlab.sequence_parallel import (
    SequenceShard,
    check_model,
    check_supported,
    shard_bounds,
    split_bounds,
)
from tests.helpers import run_cli, tiny_config, write_config, write_corpus
from tests.train.sp_helpers import (
    assert_exact,
    read_losses,
    setup,
    spawn,
    tiny_model,
    torchrun,
)


def _kernels(rank: int, size: int, mode: str, bounds: list[tuple[int, int]]) -> None:
    """Each scheme's shard output and q/k/v gradients equal the plain attention's rows, GQA
    (4 query heads, 2 key/value heads), on uneven shards (one of a single token)."""
    setup(rank, size)
    try:
        generator = torch.Generator().manual_seed(3)
        t = bounds[-1][1]
        q = torch.randn(2, t, 4, 6, generator=generator, dtype=torch.float64)
        k, v = (torch.randn(2, t, 2, 6, generator=generator, dtype=torch.float64) for _ in "kv")
        weights = torch.randn(2, t, 4, 6, generator=generator, dtype=torch.float64)
        full = [x.clone().requires_grad_() for x in (q, k, v)]
        reference = attention_reference(*full, mask=causal_mask(t, t))
        full_grads = torch.autograd.grad((reference * weights).sum(), full)

        start, end = bounds[rank]
        local = [x[:, start:end].clone().requires_grad_() for x in (q, k, v)]
        o = sharded_attention(*local, bounds, rank, dist.group.WORLD, mode)
        torch.testing.assert_close(o, reference[:, start:end].detach(), rtol=1e-10, atol=1e-12)
        grads = torch.autograd.grad((o * weights[:, start:end]).sum(), local)
        for grad, whole in zip(grads, full_grads, strict=True):
            torch.testing.assert_close(grad, whole[:, start:end], rtol=1e-9, atol=1e-11)
        dist.barrier()  # no rank tears down while another still exchanges
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("mode", "bounds"),
    [
        ("ring", [(0, 3), (3, 10), (10, 11), (11, 13)]),
        ("ring_bidirectional", [(0, 3), (3, 10), (10, 11), (11, 13)]),
        ("ulysses", [(0, 7), (7, 13)]),
    ],
)
def test_every_scheme_equals_plain_attention_forward_and_backward(mode, bounds):
    spawn(_kernels, len(bounds), mode, bounds)


def _autocast(rank: int, size: int, modes: list[str]) -> None:
    """Under CPU bf16 autocast with bf16 q/k/v (what bf16-mixed projections give), each
    scheme's output and gradients stay within bf16 rounding of float32 attention."""
    setup(rank, size)
    try:
        generator = torch.Generator().manual_seed(4)
        bounds, t = [(0, 9), (9, 16)], 16
        q, k, v = (torch.randn(2, t, 4, 8, generator=generator) * 2 for _ in "qkv")
        weights = torch.randn(2, t, 4, 8, generator=generator)
        full = [x.bfloat16().float().requires_grad_() for x in (q, k, v)]
        reference = attention_reference(*full, mask=causal_mask(t, t))
        full_grads = torch.autograd.grad((reference * weights).sum(), full)
        start, end = bounds[rank]
        for mode in modes:
            local = [x[:, start:end].clone().requires_grad_() for x in (q, k, v)]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                o = sharded_attention(
                    *(x.bfloat16() for x in local), bounds, rank, dist.group.WORLD, mode
                )
                assert o.dtype == torch.bfloat16, mode
                grads = torch.autograd.grad((o.float() * weights[:, start:end]).sum(), local)
            for got, want in zip((o, *grads), (reference, *full_grads), strict=True):
                want = want[:, start:end].detach()
                error = (got.float() - want).abs().max()
                assert error < 0.03 * want.abs().max(), (mode, error)
        dist.barrier()  # no rank tears down while another still exchanges
    finally:
        dist.destroy_process_group()


def test_ring_schemes_under_bf16_autocast_match_float32():
    spawn(_autocast, 2, ["ring", "ring_bidirectional"])


def attention_model(layers: list[str], n_kv_heads: int | None = None, window: int | None = None):
    options = {"gla": {"chunk_size": 4}}
    return tiny_model(layers, options, n_heads=4, n_kv_heads=n_kv_heads, window=window)


def padded_batch() -> Batch:
    """18 inputs in two rows, the second right-padded after 7 tokens."""
    tokens = torch.randint(0, 11, (2, 19), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[1, 7:] = False
    return Batch(tokens=tokens, mask=mask)


def _model(rank: int, size: int, layers: list[str], kv: int | None, mode: str, split: str):
    setup(rank, size)
    try:
        model = attention_model(layers, kv)
        shard = SequenceShard(dist.group.WORLD, rank, size, attention=mode, split=split)
        check_model(model, shard)
        assert_exact(model, padded_batch(), shard)
        dist.barrier()  # no rank tears down while another still exchanges
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("layers", "kv", "mode", "split", "size"),
    [
        (["attention", "attention"], None, "ring", "positions", 2),
        (["attention"], 2, "ring_bidirectional", "tokens", 4),
        (["attention"], 2, "ulysses", "positions", 2),
        (["gla", "attention"], None, "ring", "tokens", 4),
        (["gla", "attention"], 2, "ring_bidirectional", "positions", 2),
        (["attention", "gla"], None, "ulysses", "tokens", 2),
    ],
)
def test_model_outputs_and_every_gradient_equal_one_process(layers, kv, mode, split, size):
    spawn(_model, size, layers, kv, mode, split)


def test_token_split_balances_scored_targets():
    mask = torch.zeros(3, 24, dtype=torch.bool)  # 24 inputs; rows of 24, 8 and 4 targets
    for row, length in enumerate([24, 8, 4]):
        mask[row, :length] = True

    def counts(bounds):
        return [int(mask[:, s:e].sum()) for s, e in bounds]

    assert counts(split_bounds(24, 2, "positions", mask)) == [24, 12]
    assert split_bounds(24, 2, "tokens", mask) == [(0, 7), (7, 24)]
    assert counts(split_bounds(24, 2, "tokens", mask)) == [18, 18]
    balanced = counts(split_bounds(24, 4, "tokens", mask))
    assert balanced == [9, 9, 9, 9]
    assert counts(split_bounds(24, 4, "positions", mask)) == [16, 8, 6, 6]
    assert split_bounds(24, 4, "tokens", None) == shard_bounds(24, 4)
    # every rank keeps at least one column, even where the tokens sit in the first columns
    one = torch.zeros(1, 8, dtype=torch.bool)
    one[0, 0] = True
    assert split_bounds(8, 4, "tokens", one) == [(0, 1), (1, 2), (2, 3), (3, 8)]


def test_refusals_are_one_line():
    shard = SequenceShard(None, 0, 4, attention="ulysses")
    with pytest.raises(ConfigError, match="heads .4 query, 2 key/value. divisible by"):
        check_model(attention_model(["attention"], 2), shard)
    check_model(attention_model(["attention"], 2), dataclasses.replace(shard, size=2))
    windowed = attention_model(["attention"], window=4)
    with pytest.raises(ConfigError, match="attention without window or sparsity"):
        check_model(windowed, dataclasses.replace(shard, attention="ring"))
    with pytest.raises(ConfigError, match="sequence_parallel_attention must be one of"):
        TrainConfig(sequence_parallel_attention="tree")
    with pytest.raises(ConfigError, match="sequence_split must be one of"):
        TrainConfig(sequence_split="bytes")
    check_supported(["gla", "attention"])


def test_hybrid_training_loss_curve_equals_one_process(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    train = {"steps": 4, "checkpoint_every": 4, "eval_every": 4, "log_every": 1}
    model = {"layers": ["gla", "attention"], "mixer_options": {"gla": {"chunk_size": 8}}}
    single = tiny_config(corpus, tmp_path / "cache", model=model, train=train)
    run_cli(
        "train",
        "--config",
        str(write_config(tmp_path / "1.yaml", single)),
        "--out",
        str(tmp_path / "single"),
        check=True,
    )
    options = {"sequence_parallel": 2, "sequence_parallel_attention": "ring_bidirectional"}
    parallel = tiny_config(corpus, tmp_path / "cache", model=model, train={**train, **options})
    config = write_config(tmp_path / "2.yaml", parallel)
    torchrun(2, "--config", str(config), "--out", str(tmp_path / "sp"))
    expected = read_losses(tmp_path / "single")
    assert len(expected) == 4
    assert read_losses(tmp_path / "sp") == pytest.approx(expected, rel=1e-4)
