import dataclasses
import math

import pytest
import torch

from seqlab.config import ExperimentConfig, TrainConfig, from_dict
from seqlab.errors import ConfigError, SeqlabError
from seqlab.io import load
from seqlab.train import train
from seqlab.train.logging import read_metrics
from seqlab.train.loop import lr_at
from tests.helpers import tiny_config, write_corpus


def config_for(tmp_path, **train_options):
    corpus = write_corpus(tmp_path / "corpus")
    return from_dict(ExperimentConfig, tiny_config(corpus, tmp_path / "cache", train=train_options))


def test_lr_warmup_then_cosine_to_floor():
    config = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(10, config) == pytest.approx(1.0)
    assert lr_at(55, config) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(100, config) == pytest.approx(0.1)
    assert all(lr_at(s, config) >= lr_at(s + 1, config) for s in range(10, 100))


@pytest.mark.statistical
def test_training_lowers_loss_and_logs_every_step(tmp_path):
    config = config_for(tmp_path, steps=40, lr=1e-2, eval_every=20)
    summary = train(config, tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 41))
    assert all("loss" in r and math.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < 0.7 * records[0]["loss"]
    assert {"val_nll", "val_bits_per_byte"} <= set(records[19]) and "val_nll" not in records[18]
    assert summary["validation"]["nll"] == records[-1]["val_nll"]
    assert summary["train_tokens"] == 40 * 4 * 33
    assert summary["train_flops"] == pytest.approx(3 * summary["flops_per_token"] * 40 * 4 * 33)


def test_gradient_accumulation_matches_full_batch(tmp_path):
    full = train(config_for(tmp_path, steps=3, grad_accum=1), tmp_path / "a", progress=False)
    accum = train(config_for(tmp_path, steps=3, grad_accum=2), tmp_path / "b", progress=False)
    assert accum["final_loss"] == pytest.approx(full["final_loss"], rel=1e-5)


def test_batch_must_divide_into_micro_batches(tmp_path):
    with pytest.raises(ConfigError, match="multiple"):
        train(config_for(tmp_path, batch_size=5, grad_accum=2), tmp_path / "r", progress=False)


def test_existing_run_is_never_overwritten(tmp_path):
    config = config_for(tmp_path, steps=5)
    train(config, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(SeqlabError, match="--resume"):
        train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_resume_without_checkpoint_is_explained(tmp_path):
    with pytest.raises(SeqlabError, match="no checkpoint"):
        train(config_for(tmp_path), tmp_path / "empty", resume=True, progress=False)


def test_divergence_is_reported(tmp_path):
    config = config_for(tmp_path, steps=30, lr=1e6, warmup=0, grad_clip=0.0)
    with pytest.raises(SeqlabError, match="diverged"):
        train(config, tmp_path / "run", progress=False)


def test_tensorboard_events_written(tmp_path):
    train(config_for(tmp_path, steps=3), tmp_path / "run", progress=False)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_same_seed_same_result(tmp_path):
    a = train(config_for(tmp_path, steps=4), tmp_path / "a", progress=False)
    b = train(config_for(tmp_path, steps=4), tmp_path / "b", progress=False)
    assert a["param_fingerprints"] == b["param_fingerprints"]
    torch.testing.assert_close(a["final_loss"], b["final_loss"])


def test_budget_counts_the_tokens_actually_trained(tmp_path):
    from seqlab.data.tasks import build_task

    config = from_dict(
        ExperimentConfig,
        {
            "model": {"mixer": "attention", "d_model": 16, "n_layers": 1, "n_heads": 2},
            "task": {
                "name": "state_tracking",
                "kind": "parity",
                "max_len": 12,
                "test_max_len": 60,
                "eval_examples": 16,
            },
            "train": {"steps": 3, "batch_size": 4, "warmup": 1, "threads": 1},
        },
    )
    summary = train(config, tmp_path / "run", progress=False)
    task = build_task(config)
    widths = [task.batch("train", step, 4, seed=0).tokens.shape[1] for step in range(3)]
    assert max(widths) < task.seq_len, "training rows are shorter than the padded test length"
    assert summary["train_tokens"] == 4 * sum(widths)


def test_block_diffusion_starts_from_an_ar_run(tmp_path):
    """`train.init_from` + `shift`: the converted model starts near the AR model's loss, far
    below a fresh start; a missing source is a clear error."""
    corpus = write_corpus(tmp_path / "corpus")

    def run(name, objective, **train_options):
        options = {"steps": 40, "lr": 1e-2, "eval_every": 40, **train_options}
        config = tiny_config(corpus, tmp_path / "cache", objective=objective, train=options)
        train(from_dict(ExperimentConfig, config), tmp_path / name, progress=False)
        return read_metrics(tmp_path / name / "metrics.jsonl")

    ar = run("ar", {"name": "ar"})
    block = {"name": "block_diffusion", "block_size": 4, "shift": True}
    fresh = run("fresh", block, steps=1)
    converted = run("converted", block, steps=1, init_from=str(tmp_path / "ar"))
    assert converted[0]["loss"] < fresh[0]["loss"] - 1.0, (ar[-1], fresh[0], converted[0])
    with pytest.raises(SeqlabError, match="no model.safetensors"):
        run("lost", block, steps=1, init_from=str(tmp_path / "nowhere"))


def test_a_mixture_of_experts_run_logs_its_balance_loss_and_counts_active_flops(tmp_path):
    config = config_for(tmp_path, steps=2, eval_every=2, checkpoint_every=2)
    config.model = dataclasses.replace(config.model, mlp={"kind": "moe", "experts": 4})
    summary = train(config, tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(r["aux_balance"] > 0 for r in records if "loss" in r)
    model = load(tmp_path / "run")
    assert summary["active_params"] == model.num_active_params() < summary["params"]
    seq_len = summary["train_tokens"] // (2 * 4)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    skipped = summary["params"] - summary["active_params"]  # the experts a token is not sent to
    mixing = sum(b.mixer.mixing_flops(seq_len) for b in model.blocks)
    assert summary["flops_per_token"] == pytest.approx(2 * (linear - skipped) + mixing)
