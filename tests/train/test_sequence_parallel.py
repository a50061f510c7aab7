"""train.sequence_parallel: each sequence split across 2 or 4 CPU processes (gloo) gives the
single-process outputs, gradients, loss curve and checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.model import build_model
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.sequence_parallel import SequenceShard, check_supported, shard_bounds, sharded
from tests.helpers import ROOT, run_cli, tiny_config, write_config, write_corpus

LAYERS = {
    "linear": ["linear_attention", "gla", "gateloop"],
    "delta": ["gated_deltanet", "deltanet", "rwkv7"],
    "scan": ["mamba2", "retnet"],
}
OPTIONS = {
    "gla": {"chunk_size": 4},
    "linear_attention": {"chunk_size": 4},
    "retnet": {"chunk_size": 4, "rotary": True},
    "mamba2": {"chunk_size": 4},
    "deltanet": {"chunk_size": 4},
    "gated_deltanet": {"chunk_size": 4},
    "rwkv7": {"chunk_size": 4, "decay_rank": 4, "iclr_rank": 4, "gate_rank": 4},
    "gateloop": {"chunk_size": 4},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, size: int, *args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    mp.spawn(fn, args=(size, *args), nprocs=size, join=True)


def tiny_model(layers: list[str]):
    torch.manual_seed(0)
    config = ModelConfig(
        layers=layers,
        d_model=16,
        n_heads=2,
        vocab_size=11,
        mixer_options={name: OPTIONS[name] for name in layers},
    )
    return build_model(config).double()


def _exactness(rank: int, size: int, layers: list[str]) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        model = tiny_model(layers)
        objective = Autoregressive()
        generator = torch.Generator().manual_seed(1)
        tokens = torch.randint(0, 11, (2, 19), generator=generator)  # 18 inputs, uneven shards
        mask = torch.rand(2, 19, generator=generator) < 0.8
        batch = Batch(tokens=tokens, mask=mask)

        reference, _ = objective.loss(model, batch)
        full_grads = torch.autograd.grad(
            reference, list(model.parameters()), materialize_grads=True
        )
        full_logits, _ = model(tokens[:, :-1])

        shard = SequenceShard(dist.group.WORLD, rank, size)
        loss, _ = objective.sharded_loss(model, batch, shard)
        grads = torch.autograd.grad(loss, list(model.parameters()), materialize_grads=True)
        start, end = shard_bounds(18, size)[rank]
        with sharded(SequenceShard(dist.group.WORLD, rank, size, start)), torch.no_grad():
            logits, _ = model(tokens[:, start:end])
        torch.testing.assert_close(logits, full_logits[:, start:end], rtol=1e-9, atol=1e-10)

        total = loss.detach().clone()
        dist.all_reduce(total)
        torch.testing.assert_close(total / size, reference.detach(), rtol=1e-10, atol=1e-12)
        names = [name for name, _ in model.named_parameters()]
        for name, grad, full in zip(names, grads, full_grads, strict=True):
            summed = grad.clone()
            dist.all_reduce(summed)
            torch.testing.assert_close(summed / size, full, rtol=1e-8, atol=1e-10, msg=name)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("family", "size"), [("linear", 2), ("delta", 4), ("scan", 2)])
def test_outputs_and_every_gradient_equal_one_process(family, size):
    spawn(_exactness, size, LAYERS[family])


def test_four_ranks_linear_and_scan():
    spawn(_exactness, 4, ["gla", "mamba2", "retnet", "gateloop"])


def test_unsupported_mixers_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="not a linear recurrence nor softmax attention"):
        check_supported(["gla", "lstm"])
    reasons = {
        "lightnet": "log-sum-exp key normaliser",
        "mega": "has no sharded kernel",
        "hydra": "bidirectional only",
    }
    for name, reason in reasons.items():
        with pytest.raises(ConfigError, match=reason) as refusal:
            check_supported(["gla", name])
        assert "\n" not in str(refusal.value)
    check_supported(["rwkv7", "gateloop"])


def read_losses(run) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 6-step run in one process and the same run with sequence_parallel 2 (torchrun)."""
    root = tmp_path_factory.mktemp("sp")
    corpus = write_corpus(root / "corpus")
    train = {"steps": 6, "checkpoint_every": 3, "eval_every": 6, "log_every": 1}
    model = {
        "layers": ["gla", "gated_deltanet"],
        "mixer_options": {"gla": {"chunk_size": 8}, "gated_deltanet": {"chunk_size": 8}},
    }
    single = write_config(
        root / "single.yaml", tiny_config(corpus, root / "cache", model=model, train=train)
    )
    run_cli("train", "--config", str(single), "--out", str(root / "single"), check=True)
    parallel = write_config(
        root / "sp.yaml",
        tiny_config(corpus, root / "cache", model=model, train={**train, "sequence_parallel": 2}),
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*torchrun, "--nproc_per_node", "2", "-m", "seqlab", "train"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "--config", str(parallel), "--out", str(root / "sp")],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_training_loss_curve_equals_one_process(runs):
    summary = json.loads((runs / "sp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["param_fingerprints"]
    assert first == second
    expected = read_losses(runs / "single")
    assert len(expected) == 6
    assert read_losses(runs / "sp") == pytest.approx(expected, rel=1e-4)


def test_checkpoint_written_under_sequence_parallel_resumes(runs, tmp_path):
    run = tmp_path / "cut"
    shutil.copytree(runs / "sp", run)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    (run / "checkpoints" / "latest").write_text("step-00000003\n")
    (run / "summary.json").unlink()
    config = (run / "config.yaml").read_text()
    # The checkpoint is the ordinary replicated one: here it resumes in one process.
    (run / "config.yaml").write_text(config.replace("sequence_parallel: 2", "sequence_parallel: 1"))
    run_cli("train", "--out", str(run), "--resume", check=True)
    assert read_losses(run) == pytest.approx(read_losses(runs / "single"), rel=1e-4)


def test_unsupported_configurations_are_refused(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config = write_config(
        tmp_path / "c.yaml",
        tiny_config(
            corpus, tmp_path / "cache", model={"mixer": "lstm"}, train={"sequence_parallel": 2}
        ),
    )
    result = run_cli("train", "--config", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode != 0
    assert "does not support mixer 'lstm' (its state is not a linear" in result.stderr
