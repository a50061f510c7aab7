"""train.strategy fsdp (FSDP2) under torchrun with 2 CPU processes (gloo), sharded
checkpoints that resume exactly, and activation checkpointing."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from seqlab.config import ExperimentConfig, ModelConfig, TrainConfig, from_dict
from seqlab.errors import CheckpointError, ConfigError
from seqlab.io import load, model_state
from seqlab.model import Model
from seqlab.train import train
from seqlab.train.checkpoint import load_checkpoint, verify_checkpoint
from seqlab.train.dist import DistInfo
from seqlab.train.logging import read_metrics
from seqlab.train.strategy import Sharded, build_strategy, checkpoint_activations
from tests.helpers import ROOT, tiny_config, write_config, write_corpus

STEPS = 8


def torchrun(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "seqlab", "train", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]


def fsdp_config(root, **train_options):
    corpus = write_corpus(root / "corpus", files=4, lines=20)
    options = {
        "steps": STEPS,
        "batch_size": 4,
        "grad_accum": 2,
        "checkpoint_every": 4,
        "eval_every": 4,
        "strategy": "fsdp",
        "activation_checkpointing": True,
        **train_options,
    }
    return tiny_config(corpus, root / "cache", train=options)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """An 8-step fsdp run of 2 processes (activation checkpointing and accumulation on)."""
    root = tmp_path_factory.mktemp("fsdp")
    config = fsdp_config(root)
    run = root / "run"
    torchrun("--config", str(write_config(root / "c.yaml", config)), "--out", str(run))
    return config, run


def test_fsdp_matches_one_process_and_writes_a_full_model(fsdp_run, tmp_path):
    config, run = fsdp_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    step = run / "checkpoints" / "step-00000008"
    state = verify_checkpoint(step)
    assert state["format"] == "dcp" and state["world_size"] == 2
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(state["sha256"])
    with pytest.raises(CheckpointError, match="sharded checkpoint .* train.strategy: fsdp"):
        load_checkpoint(step)

    plain = dict(config, train={**config["train"], "strategy": "ddp"})
    plain["train"]["activation_checkpointing"] = False
    single = train(from_dict(ExperimentConfig, plain), tmp_path / "single", progress=False)
    got = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    want = [r["loss"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl")]
    assert len(got) == STEPS and got == pytest.approx(want, abs=1e-3)
    assert summary["validation"]["nll"] == pytest.approx(single["validation"]["nll"], abs=1e-3)

    model = load(run)  # also checks the weights against summary.json's fingerprint
    weights = model_state(model)
    assert all(t.dtype == torch.float32 for t in weights.values())
    reference = model_state(load(tmp_path / "single"))
    assert weights.keys() == reference.keys()
    for name, tensor in weights.items():
        assert torch.allclose(tensor, reference[name], atol=2e-3), name


def test_sharded_checkpoint_resumes_exactly(fsdp_run, tmp_path):
    _, run = fsdp_run
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    (killed / "summary.json").unlink()
    shutil.rmtree(killed / "checkpoints" / "step-00000008")
    (killed / "checkpoints" / "latest").write_text("step-00000004\n")
    torchrun("--out", str(killed), "--resume")

    got, want = read_metrics(killed / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    resumed = json.loads((killed / "summary.json").read_text())
    expected = json.loads((run / "summary.json").read_text())
    assert resumed["param_fingerprints"] == expected["param_fingerprints"]
    assert resumed["validation"] == expected["validation"]

    shard = killed / "checkpoints" / "step-00000008" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        verify_checkpoint(shard.parent)


def tiny_model(**options):
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_layers=2, n_heads=2, vocab_size=11, **options)
    return Model(config).double()


@pytest.mark.parametrize("layers", [None, ["attention", "mamba2"]])
def test_activation_checkpointing_gives_the_same_gradients(layers):
    model = tiny_model(layers=layers)
    tokens = torch.randint(0, 11, (2, 13))

    def gradients():
        loss = torch.nn.functional.cross_entropy(model(tokens)[0].flatten(0, 1), tokens.flatten())
        return loss, torch.autograd.grad(loss, list(model.parameters()))

    loss, plain = gradients()
    names = [name for name, _ in model.named_parameters()]
    calls = []
    for block in model.blocks:
        block.mixer.register_forward_hook(lambda *_: calls.append(1))
    checkpoint_activations(model)
    checkpoint_activations(model)  # a second time changes nothing
    again, checked = gradients()
    assert len(calls) == 2 * len(model.blocks)  # the backward ran every block's forward again
    assert [name for name, _ in model.named_parameters()] == names
    assert torch.equal(loss, again)
    for a, b in zip(plain, checked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    calls.clear()
    with torch.no_grad():
        assert torch.equal(model(tokens)[0], model(tokens)[0])
    assert len(calls) == 2 * len(model.blocks)


def test_one_process_fsdp_with_activation_checkpointing_trains_as_plain(tmp_path):
    config = fsdp_config(tmp_path, steps=3, grad_accum=1, eval_every=3)
    checked = train(from_dict(ExperimentConfig, config), tmp_path / "checked", progress=False)
    plain = dict(config, train={**config["train"], "strategy": "ddp"})
    plain["train"]["activation_checkpointing"] = False
    reference = train(from_dict(ExperimentConfig, plain), tmp_path / "plain", progress=False)
    assert checked["final_loss"] == pytest.approx(reference["final_loss"], abs=1e-6)
    assert "format" not in verify_checkpoint(tmp_path / "checked" / "checkpoints" / "step-00000003")


def test_strategy_and_deq_errors():
    with pytest.raises(ConfigError, match="train.strategy must be one of"):
        TrainConfig(strategy="zero")
    deq = tiny_model(deq={"max_iter": 2})
    with pytest.raises(ConfigError, match="activation_checkpointing .* deep equilibrium"):
        checkpoint_activations(deq)
    info = DistInfo(0, 2, torch.device("cpu"))
    assert isinstance(build_strategy(TrainConfig(strategy="fsdp"), info), Sharded)
    with pytest.raises(ConfigError, match="fsdp does not support a deep equilibrium"):
        Sharded(info).wrap(deq)


def test_sharded_checkpoint_refuses_non_finite_weights(tmp_path):
    """In one process with a 1-rank group: nothing is written for a NaN in a shard."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        strategy = Sharded(DistInfo(0, 1, torch.device("cpu")))
        model = strategy.wrap(tiny_model().float())
        optimizer = torch.optim.AdamW(model.parameters())
        strategy.save(tmp_path, 1, model, optimizer, {}, keep=2)
        assert verify_checkpoint(tmp_path / "checkpoints" / "step-00000001")["step"] == 1
        with torch.no_grad():
            model.blocks[1].mlp_norm.weight.to_local()[3] = float("nan")
        assert strategy.non_finite(model) == "blocks.1.mlp_norm.weight"
        with pytest.raises(CheckpointError, match="step 2 not written: blocks.1.mlp_norm"):
            strategy.save(tmp_path, 2, model, optimizer, {}, keep=2)
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
            "latest",
            "step-00000001",
        ]
        dist.barrier()  # no rank tears down while another still exchanges
    finally:
        dist.destroy_process_group()


def test_fsdp_refuses_fp16_whose_scaler_would_decide_overflow_per_rank():
    """torch.amp.GradScaler judges overflow on each rank's own gradient shard, so under fsdp
    ranks could disagree about skipping a step: refused before anything runs."""
    with pytest.raises(ConfigError, match="fp16-mixed is not supported with train.strategy fsdp"):
        from_dict(TrainConfig, {"strategy": "fsdp", "precision": "fp16-mixed"})
    assert from_dict(TrainConfig, {"strategy": "fsdp", "precision": "bf16-mixed"}).strategy
