"""torchrun with 2 CPU processes (gloo): ranks end with identical parameters; mixers with
parameters a layout leaves unused train under DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.layout import Layout, LayoutKind
from seqlab.model import build_model
from seqlab.registry import MIXERS
from tests.helpers import ROOT, run_cli, tiny_config, write_config, write_corpus
from tests.train.sp_helpers import read_losses


def test_two_process_ddp_keeps_ranks_identical_and_matches_one_process(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config = write_config(
        tmp_path / "c.yaml",
        tiny_config(
            corpus, tmp_path / "cache", train={"steps": 8, "batch_size": 4, "checkpoint_every": 4}
        ),
    )
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "seqlab",
            "train",
            "--config",
            str(config),
            "--out",
            str(run),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["param_fingerprints"]
    assert first == second
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000008"
    assert not list(tmp_path.glob("ddp*/**/rank1*"))

    single = tmp_path / "single"
    run_cli("train", "--config", str(config), "--out", str(single), check=True)
    one = json.loads((single / "summary.json").read_text())
    assert abs(one["final_loss"] - summary["final_loss"]) < 1e-4


def test_mixers_declare_the_parameters_the_causal_layout_leaves_unused():
    """`Mixer.unused_in_causal` names exactly the parameters without a gradient after a
    causal forward (DDP's find_unused_parameters follows it)."""
    torch.manual_seed(0)
    for name in MIXERS.names():
        mixer_class = MIXERS.get(name).target
        if LayoutKind.CAUSAL not in mixer_class.layouts:
            continue
        config = ModelConfig(layers=[name], d_model=8, n_heads=2, vocab_size=5)
        model = build_model(config)
        logits, _ = model(torch.randint(0, 5, (1, 4)))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(logits.sum(), [p for _, p in named], allow_unused=True)
        unused = [n for (n, _), grad in zip(named, grads, strict=True) if grad is None]
        assert unused == model.unused_parameters(Layout.CAUSAL), name
        assert model.unused_parameters(Layout(LayoutKind.BIDIRECTIONAL)) == []


def torchrun_train(config: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    result = subprocess.run(
        [*command, "--nproc_per_node", "2", "-m", "seqlab", "train", "--config", str(config)]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_ddp_trains_a_mixer_with_parameters_unused_in_the_causal_layout(tmp_path):
    """s4d's ssm_reverse gets no gradient under ar: two data-parallel processes, and two
    sequence-parallel ones, follow the single-process loss curve."""
    corpus = write_corpus(tmp_path / "corpus")
    model = {"mixer": "s4d", "d_model": 16, "mixer_options": {"s4d": {"d_state": 4}}}
    train = {"steps": 3, "checkpoint_every": 3, "eval_every": 3}
    single = tiny_config(corpus, tmp_path / "cache", model=model, train=train)
    run_cli(
        "train",
        "--config",
        str(write_config(tmp_path / "1.yaml", single)),
        "--out",
        str(tmp_path / "one"),
        check=True,
    )
    expected = read_losses(tmp_path / "one")
    assert len(expected) == 3
    for name, options in (("ddp", {}), ("sp", {"sequence_parallel": 2})):
        config = tiny_config(corpus, tmp_path / "cache", model=model, train={**train, **options})
        torchrun_train(write_config(tmp_path / f"{name}.yaml", config), tmp_path / name)
        assert read_losses(tmp_path / name) == pytest.approx(expected, rel=1e-4), name
