"""Baselines in the harness: save/load round trips, normalisation, `seqlab compare` beside a
neural backbone, and the AR-only rule."""

import csv

import pytest
import torch

from seqlab.config import ExperimentConfig, ModelConfig, from_dict, read_config_mapping
from seqlab.errors import ConfigError
from seqlab.files import read_json
from seqlab.harness.compare import compare, plan
from seqlab.harness.grid import CompareConfig
from seqlab.io import load, save
from seqlab.model import build_model
from seqlab.objectives.base import Batch
from seqlab.registry import BASELINES
from seqlab.train.logging import read_metrics
from seqlab.train.loop import build_run

OPTIONS = {"ngram": {"order": 3}, "hmm": {"states": 3, "iterations": 3}}
EVENT_LOG = {
    "name": "event_log",
    "num_activities": 6,
    "max_depth": 2,
    "num_traces": 60,
    "eval_traces": 20,
    "max_len": 16,
}


def fitted(name, vocab=7):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=vocab, baseline=name, baseline_options=OPTIONS.get(name, {}))
    model = build_model(config)
    model.fit([Batch(torch.randint(0, vocab - 1, (12, 10)))])  # token vocab - 1 never seen
    return model


@pytest.mark.parametrize("name", BASELINES.names())
def test_log_probabilities_sum_to_one_at_every_position(name):
    log_probs, _ = fitted(name)(torch.randint(0, 7, (3, 11)))
    assert log_probs.shape == (3, 11, 7) and bool(torch.isfinite(log_probs).all())
    assert torch.allclose(log_probs.double().exp().sum(-1), torch.ones(3, 11, dtype=torch.float64))


@pytest.mark.parametrize("name", BASELINES.names())
def test_save_load_round_trip_gives_equal_logits(name, tmp_path):
    model = fitted(name)
    save(model, tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.num_params() == model.num_params()
    tokens = torch.randint(0, 7, (2, 9))
    assert torch.equal(loaded(tokens)[0], model(tokens)[0])


def test_a_baseline_with_another_objective_is_a_one_line_config_error():
    config = from_dict(
        ExperimentConfig,
        {
            "model": {"baseline": "ngram"},
            "objective": {"name": "masked_diffusion"},
            "task": EVENT_LOG,
        },
    )
    with pytest.raises(ConfigError, match="objective must be ar, got 'masked_diffusion'") as err:
        build_run(config)
    assert "\n" not in str(err.value)


def test_compare_ranks_baselines_beside_a_neural_backbone(tmp_path):
    grid = CompareConfig(
        name="baselines",
        base={
            "objective": {"name": "ar"},
            "task": EVENT_LOG,
            "train": {
                "steps": 3,
                "batch_size": 8,
                "eval_every": 3,
                "checkpoint_every": 3,
                "log_every": 3,
                "threads": 1,
                "eval_tokens": 2048,
                "warmup": 1,
            },
        },
        grid={
            "model": [
                {"mixer": "attention", "d_model": 16, "n_layers": 1, "n_heads": 2},
                {"baseline": "ngram", "baseline_options": {"order": 2}},
                {"baseline": "hmm", "baseline_options": {"states": 4, "iterations": 5}},
            ]
        },
        seeds=[0],
        metric={"event_log": "accuracy"},
        workers=1,
    )
    results = compare(grid, tmp_path / "out", progress=False, plots=False)
    assert len(results) == 3
    with open(tmp_path / "out" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["backbone"] for row in rows} == {"attention", "ngram", "hmm"}
    assert all(row["status"] == "ok" for row in rows), rows
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| ngram |" in markdown and "| hmm |" in markdown


def test_a_finished_baseline_run_resumes_to_its_summary(tmp_path):
    from seqlab.train.loop import train

    config = from_dict(
        ExperimentConfig,
        {
            "model": {"baseline": "ngram"},
            "task": EVENT_LOG,
            "train": {"steps": 2, "batch_size": 4, "threads": 1},
        },
    )
    summary = train(config, tmp_path / "run", progress=False)
    assert train(config, tmp_path / "run", resume=True, progress=False) == summary
    assert load(tmp_path / "run").num_params() == summary["params"]


def baseline_grid(*models):
    return CompareConfig(
        name="baselines",
        base={
            "objective": {"name": "ar"},
            "task": EVENT_LOG,
            "train": {"steps": 2, "batch_size": 4, "threads": 1, "eval_tokens": 1024},
        },
        grid={"model": list(models)},
        seeds=[0],
        metric={"event_log": "accuracy"},
        workers=1,
    )


NUMBERS = ("final_loss", "val_accuracy", "test_accuracy", "train_flops", "params")


def test_an_interrupted_baseline_run_fits_again_under_compare_and_resume(tmp_path):
    from seqlab.train.loop import train

    grid = baseline_grid({"baseline": "hmm", "baseline_options": {"states": 2, "iterations": 3}})
    compare(grid, tmp_path / "out", progress=False, plots=False)
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    first = read_json(run_dir / "result.json")
    assert first["status"] == "ok" and first["d_model"] is None and first["n_layers"] is None
    (run_dir / "summary.json").unlink()  # stopped after saving its model, before its summary
    (run_dir / "result.json").unlink()
    compare(grid, tmp_path / "out", progress=False, plots=False)
    again = read_json(run_dir / "result.json")
    assert again["status"] == "ok", again
    assert {k: again[k] for k in NUMBERS} == {k: first[k] for k in NUMBERS}
    summary = read_json(run_dir / "summary.json")
    (run_dir / "summary.json").unlink()
    config = from_dict(ExperimentConfig, read_config_mapping(run_dir / "config.yaml"))
    resumed = train(config, run_dir, resume=True, progress=False)
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {
        k: v for k, v in summary.items() if k != "seconds"
    }
    records = read_metrics(run_dir / "metrics.jsonl")  # replaced, not appended to
    assert [r["iteration"] for r in records[:-1]] == [1, 2, 3]
    assert [r["loss"] for r in records[:-1]] == summary["fit_curve"]


def test_the_dry_run_plans_a_baseline_with_its_fit_flops(tmp_path):
    grid = baseline_grid({"baseline": "ngram", "baseline_options": {"order": 2}})
    (row,) = plan(grid)
    compare(grid, tmp_path / "out", progress=False, plots=False)
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    result = read_json(run_dir / "result.json")
    # every token counted as scored: the same formula, never below the fit's own count
    assert result["train_flops"] <= row["train_flops"] <= 2 * result["train_flops"]
    assert row["train_flops"] == 2 * row["tokens"]  # order x tokens, not 3 x flops_per_token


def test_a_baseline_run_keeps_its_tokenizer_and_refuses_training_only_settings(tmp_path):
    """A baseline on text with an `hf:` tokenizer saves the tokenizer beside its config (so
    `seqlab sample` reads the run's text as it was fitted); precision, compile and strategy
    do not apply to a fitted model and are refused rather than ignored."""
    from seqlab.train.loop import train
    from tests.data.test_hf_tokenizer import TEXTS, make_tokenizer

    tokenizer = make_tokenizer(tmp_path / "tok") / "tokenizer.json"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"f{i}.txt").write_text(" ".join(TEXTS * 8) + "\n")
    base = {
        "model": {"baseline": "ngram"},
        "data": {"corpus": "path", "path": str(corpus), "seq_len": 8,
                 "tokenizer": f"hf:{tokenizer}", "cache_dir": str(tmp_path / "cache")},
        "train": {"steps": 2, "batch_size": 4, "threads": 1, "eval_tokens": 64},
    }  # fmt: skip
    train(from_dict(ExperimentConfig, base), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == tokenizer.read_bytes()
    for key, value in (("precision", "bf16-mixed"), ("compile", True), ("strategy", "fsdp")):
        config = from_dict(ExperimentConfig, {**base, "train": {**base["train"], key: value}})
        with pytest.raises(ConfigError, match=f"train.{key} does not apply to a baseline"):
            train(config, tmp_path / f"refused-{key}", progress=False)
