"""Shared pieces of the train.sequence_parallel tests: process launch, tiny float64 models and
the exactness check (sharded outputs, loss and every gradient equal the single-process run)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seqlab.config import ModelConfig
from seqlab.model import Model, build_model
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.sequence_parallel import SequenceShard, sharded, split_bounds
from tests.helpers import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, size: int, *args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    mp.spawn(fn, args=(size, *args), nprocs=size, join=True)


def setup(rank: int, size: int) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
    dist.init_process_group("gloo", rank=rank, world_size=size)


def tiny_model(
    layers: list[str], options: dict[str, dict] | None = None, n_heads: int = 2, **fields: Any
) -> Model:
    """A float64 model of `layers` (d_model 16, vocabulary 11), seeded."""
    torch.manual_seed(0)
    options = options or {}
    config = ModelConfig(
        layers=layers,
        d_model=16,
        n_heads=n_heads,
        vocab_size=11,
        mixer_options={name: options[name] for name in layers if name in options},
        **fields,
    )
    return build_model(config).double()


def random_batch() -> Batch:
    """18 inputs in two rows (uneven shards), about 20 % of the targets unscored."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (2, 19), generator=generator)
    return Batch(tokens=tokens, mask=torch.rand(2, 19, generator=generator) < 0.8)


def shard_logits(model: Model, tokens: torch.Tensor, shard: SequenceShard, mask=None):
    """This rank's logits of the inputs tokens[:, :-1] under `shard` (columns as the loss
    splits them; `mask`: the batch's, whose targets mask[:, 1:] the tokens split balances)."""
    scored = None if mask is None else mask[:, 1:]
    bounds = tuple(split_bounds(tokens.shape[1] - 1, shard.size, shard.split, scored))
    start, end = bounds[shard.rank]
    with sharded(dataclasses.replace(shard, start=start, bounds=bounds)), torch.no_grad():
        logits, _ = model(tokens[:, start:end], positions=torch.arange(start, end))
    return logits, (start, end)


def assert_exact(model: Model, batch: Batch, shard: SequenceShard) -> None:
    """The shard's logits, the group-mean loss and every group-mean gradient equal the
    single-process run's (float64 tolerances)."""
    objective = Autoregressive()
    reference, _ = objective.loss(model, batch)
    params = list(model.parameters())
    full_grads = torch.autograd.grad(reference, params, materialize_grads=True)
    full_logits, _ = model(batch.tokens[:, :-1])

    loss, _ = objective.sharded_loss(model, batch, shard)
    grads = torch.autograd.grad(loss, params, materialize_grads=True)
    logits, (start, end) = shard_logits(model, batch.tokens, shard, batch.mask)
    torch.testing.assert_close(logits, full_logits[:, start:end], rtol=1e-9, atol=1e-10)

    whole = objective.nll(model, batch)
    nll = objective.sharded_nll(model, batch, shard)  # what validation runs on every rank
    assert nll.tokens == whole.tokens
    assert abs(nll.nats - whole.nats) <= 1e-9 * abs(whole.nats)

    total = loss.detach().clone()
    dist.all_reduce(total, group=shard.group)
    torch.testing.assert_close(total / shard.size, reference.detach(), rtol=1e-10, atol=1e-12)
    names = [name for name, _ in model.named_parameters()]
    for name, grad, full in zip(names, grads, full_grads, strict=True):
        summed = grad.clone()
        dist.all_reduce(summed, group=shard.group)
        torch.testing.assert_close(summed / shard.size, full, rtol=1e-8, atol=1e-10, msg=name)


def exactness(rank: int, size: int, layers: list[str], options: dict[str, dict]) -> None:
    """`assert_exact` of a model of `layers` on `random_batch` (a `spawn` target)."""
    setup(rank, size)
    try:
        shard = SequenceShard(dist.group.WORLD, rank, size)
        assert_exact(tiny_model(layers, options), random_batch(), shard)
        dist.barrier()  # no rank tears down while another still exchanges
    finally:
        dist.destroy_process_group()


def read_losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def torchrun(processes: int, *args: str) -> subprocess.CompletedProcess:
    """`seqlab train ARGS` on `processes` CPU processes (torchrun, gloo); asserts success."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, str(processes), "-m", "seqlab", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
