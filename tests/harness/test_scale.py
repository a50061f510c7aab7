"""`seqlab scale` end to end on a tiny ladder: outputs, resumability, isoflop steps, bad
configs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import yaml

from seqlab.cli import main
from seqlab.harness.ladder import _Probe, expand_ladder, load_scale_config
from seqlab.harness.scale import _ladder_row, _record
from seqlab.model import build_model
from seqlab.scaling.isoflop import fit_isoflop
from tests.helpers import tiny_config, write_corpus


def _ladder(tmp_path, **scale):
    corpus = write_corpus(tmp_path / "corpus", files=4, lines=30)
    base = tiny_config(
        corpus,
        tmp_path / "cache",
        model={"d_model": 8, "n_layers": 1, "n_heads": 1},
        data={"seq_len": 16},
        train={"batch_size": 2, "eval_tokens": 64, "checkpoint_every": 100, "warmup": 1},
    )
    section = {
        "sizes": [{"d_model": 8, "n_layers": 1}, {"d_model": 16, "n_layers": 1}],
        "budgets": [68, 136],  # 2 and 4 steps of 2 x 17 tokens
        "evals": 2,
        "n_boot": 4,
    } | scale
    config = {
        "name": "tiny-ladder",
        "base": base,
        "grid": {"model.mixer": ["attention", "gated_deltanet"]},
        "seeds": [0],
        "scale": section,
    }
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_scale_writes_fits_report_and_plots_and_resumes(tmp_path, capsys):
    path = _ladder(tmp_path)
    out = tmp_path / "out"
    assert main(["scale", str(path), "--out", str(out)]) == 0
    report = json.loads((out / "scaling.json").read_text())
    task = report["tasks"]["text"]
    assert len(task["records"]) == 8
    assert {r["backbone"] for r in task["records"]} == {"attention", "gated_deltanet"}
    assert all(len(r["curve"]) >= 2 for r in task["records"])
    # 4 runs per backbone, 2 points each: L(C) and its held-out check (one run held out) are
    # fitted, L(N, D) (6 runs or more) is skipped and says why
    fits = task["report"]["backbones"]
    for fit in fits.values():
        assert fit["compute_law"] is not None and fit["compute_held_out"]["n_fit"] == 3
        assert fit["chinchilla"] is None and fit["notes"][0].startswith("L(N, D)")
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["compute"]) == float(r["train_flops"]) for r in rows)
    by_flops = {float(r["train_flops"]) for r in rows}
    assert {r["compute"] for r in task["records"]} <= by_flops
    markdown = (out / "scaling.md").read_text()
    assert "## text" in markdown and "skipped" in markdown
    assert "refits ok" in markdown and "L(N, D) held-out error" in markdown
    assert "| attention | 4 |" in markdown and "/4 |" in markdown
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert "loss_vs_compute_text.png" in plots and "optimal_params_text.png" in plots

    results = sorted(out.glob("runs/*/result.json"))
    assert len(results) == 8
    stamps = {p: p.stat().st_mtime_ns for p in results}
    assert main(["scale", str(path), "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
    assert (
        json.loads((out / "scaling.json").read_text())["tasks"]["text"]["records"]
        == (task["records"])
    )


def test_isoflop_steps_meet_each_budget_within_one_step(tmp_path):
    path = _ladder(tmp_path, mode="isoflop", flops="6nd", budgets=[3e6, 1e7])
    rungs = expand_ladder(load_scale_config(path))
    assert len(rungs) == 2 * 2 * 2 and len({r.run.run_id for r in rungs}) == 8
    for rung in rungs:
        per_step = 6 * rung.params * rung.tokens_per_step
        assert rung.tokens_per_step == 2 * 17
        assert rung.flops_per_step == pytest.approx(per_step)
        assert abs(per_step * rung.steps - rung.budget) <= per_step / 2
        assert rung.run.config.model.d_model == rung.size["d_model"]
    by_budget = {}
    for rung in rungs:
        by_budget.setdefault((rung.backbone, rung.budget), set()).add(rung.steps)
    assert all(len(steps) == 2 for steps in by_budget.values())  # smaller models train longer


def test_isoflop_steps_in_analytic_flops_meet_each_budget(tmp_path):
    path = _ladder(tmp_path, mode="isoflop", budgets=[3e7, 1e8])
    config = load_scale_config(path)
    assert config.scale.flops == "analytic"
    rungs = expand_ladder(config)
    assert len(rungs) == 8
    probe = _Probe(rungs[0].run.config)
    for rung in rungs:
        model_config = dataclasses.replace(rung.run.config.model, vocab_size=probe.vocab_size)
        per_token = build_model(model_config).flops_per_token(probe.seq_len)
        assert rung.flops_per_step == pytest.approx(3 * per_token * rung.tokens_per_step)
        assert abs(rung.flops_per_step * rung.steps - rung.budget) <= rung.flops_per_step / 2


def test_recorded_compute_is_the_runs_train_flops_and_curves_scale_with_it(tmp_path):
    path = _ladder(tmp_path)
    config = load_scale_config(path)
    rung = expand_ladder(config)[0]
    # a run whose FLOPs differ from the probe's count (e.g. a DEQ's mean solver iterations)
    flops = 2.5 * rung.flops_per_step * rung.steps
    row = {"steps": rung.steps, "seed": 0, "train_tokens": 68, "train_flops": flops}
    row["val_bits_per_byte"] = 3.0
    metrics = rung.run.directory(tmp_path) / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"step": 1, "val_bits_per_byte": 4.0}) + "\n")
    assert _ladder_row(rung, row, config)["compute"] == flops
    record = _record(rung, row, "bits_per_byte", "analytic", tmp_path)
    assert record.compute == flops and record.curve == ((flops / rung.steps, 4.0),)
    sixnd = _record(rung, row, "bits_per_byte", "6nd", tmp_path)
    assert sixnd.compute == pytest.approx(6 * rung.params * 68)


def test_ladder_of_a_backbone_counted_off_the_meta_device_builds(tmp_path):
    path = _ladder(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["grid"] = {"model.mixer": ["s4"]}
    path.write_text(yaml.safe_dump(config))
    rungs = expand_ladder(load_scale_config(path))
    assert len(rungs) == 4 and all(r.params > 0 and r.flops_per_step > 0 for r in rungs)
    assert rungs[0].params < rungs[2].params


def test_isoflop_parabola_minimum():
    n = [1e2, 1e3, 1e4, 1e5]
    loss = [2.0 + 0.1 * (v - 3.0 * 2.302585092994046) ** 2 for v in map(math.log, n)]
    curve = fit_isoflop("a", 6e9, n, loss, [6e9 / (6 * v) for v in n])
    assert curve.params_opt == pytest.approx(1e3, rel=1e-6)
    assert curve.loss_opt == pytest.approx(2.0, abs=1e-9) and curve.skipped is None
    assert curve.compute_6nd_opt == pytest.approx(6e9, rel=1e-6)
    assert fit_isoflop("a", 1.0, n[:2], loss[:2], [1.0, 1.0]).skipped.startswith("a parabola")


def test_a_target_parameter_count_resolves_to_the_nearest_width(tmp_path):
    path = _ladder(tmp_path, sizes=[{"params": 3000, "n_layers": 1}], d_multiple=4)
    rungs = expand_ladder(load_scale_config(path))
    attention = [r for r in rungs if r.backbone == "attention"]
    d = attention[0].size["d_model"]
    assert d % 4 == 0 and 0.5 < attention[0].params / 3000 < 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scale": None}, "no scale section"),
        ({"sizes": []}, "scale.sizes must be a non-empty list"),
        ({"mode": "chinchilla"}, "scale.mode must be one of grid, isoflop"),
        ({"budgets": ["lots"]}, "scale.budgets must be a non-empty list of positive"),
        ({"holdout": 1.5}, "scale.holdout: expected a holdout fraction in (0, 1)"),
        ({"holdout": 0}, "scale.holdout: expected a holdout fraction in (0, 1)"),
        ({"holdout": 4}, "scale.holdout: a count must leave runs to fit"),
    ],
)
def test_bad_ladders_exit_2_with_one_line(tmp_path, capsys, change, message):
    path = _ladder(tmp_path)
    config = yaml.safe_load(path.read_text())
    if change.get("scale", 1) is None:
        del config["scale"]
    else:
        config["scale"].update(change)
    path.write_text(yaml.safe_dump(config))
    assert main(["scale", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_compare_refuses_a_ladder(tmp_path, capsys):
    assert main(["compare", str(_ladder(tmp_path)), "--out", str(tmp_path / "o")]) == 2
    assert "seqlab scale" in capsys.readouterr().err


def test_a_target_parameter_count_counts_the_tasks_value_head():
    """The events task's value head (about 30·d parameters, most of a d = 8 model without an
    MLP) is part of the count that a `params` size resolves against, as it is of the model."""
    from seqlab.config import ExperimentConfig, from_dict

    experiment = from_dict(
        ExperimentConfig,
        {
            "task": {
                "name": "events",
                "options": {"max_events": 8, "train_sequences": 8, "eval_sequences": 4},
            },
            "model": {"n_layers": 1, "n_heads": 1, "mlp_ratio": 0},
            "objective": {"name": "ar"},
        },
    )
    probe = _Probe(experiment)
    target = probe.measure({"d_model": 8, "n_layers": 1}, "6nd").params
    assert probe.resolve({"params": target, "n_layers": 1}, 4) == {"n_layers": 1, "d_model": 8}
