"""`seqlab scale` end to end on a tiny ladder: outputs, resumability, isoflop steps, bad
configs."""

from __future__ import annotations

import json

import pytest
import yaml

from seqlab.cli import main
from seqlab.harness.ladder import expand_ladder, load_scale_config
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
    # 4 runs per backbone cannot support every fit: each skipped one says why, nothing crashed
    fits = task["report"]["backbones"] if task["report"] else {}
    assert task["skipped"] or all(
        b["compute_law"] or any(n.startswith("L(C)") for n in b["notes"]) for b in fits.values()
    )
    assert all(b["chinchilla"] is None and b["notes"] for b in fits.values())
    markdown = (out / "scaling.md").read_text()
    assert "## text" in markdown and "skipped" in markdown
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
