"""Smoke tests of the benchmark scripts: they are not tests themselves, but an API change
must not leave them broken. Each runs in its tiny `--quick` setting."""

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# Modules that the `bench` extra imports without being installed here: `transformers` imports
# `kernels` (Hugging Face's kernel hub) when it is importable.
BENCH_EXTRA_IMPORTS = {"transformers", "kernels", "tokenizers", "safetensors", "huggingface_hub"}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paradigms_quick_prints_nll_table_and_sampling_rows(tmp_path, capsys):
    paradigms = load_script("paradigms")
    paradigms.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
    for label in ("block-4", "block-16", "masked"):  # ELBO bounds: mean ± standard error
        assert re.match(rf"\| {label} \| ≤ \d+\.\d{{4}} ± \d+\.\d{{4}} \| ", rows[label])
    assert re.match(r"\| ar \| \d+\.\d{4} \| ", rows["ar"])  # exact: one evaluation
    assert "| ar sample, T=1 | " in out and "| block-16 confidence 0.5, T=0 | " in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar", "block-16", "block-4", "masked"]
    confident = re.search(r"> 0\.9: (\S+), > 0\.7: (\S+), > 0\.5: (\S+)\n", out)
    shares = [float(share) for share in confident.groups()]
    assert 0 <= shares[0] <= shares[1] <= shares[2] <= 1  # a lower bar admits more positions

    # --cells: only the named paradigms; finished runs are reused, sampling needs block-16
    paradigms.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--cells", "ar"])
    out = capsys.readouterr().out
    assert "| ar | " in out and "| block-4 | " not in out
    assert "Sampling" not in out and "No sampling comparison" in out

    # conversion: block diffusion started from the ar cell's weights, sampled beside AR
    argv = ["--quick", "--threads", "1", "--out", str(tmp_path), "--thresholds", "0.5"]
    argv += ["--cells", "ar", "block-4-from-ar", "--sample-cells", "block-4-from-ar"]
    argv += ["--sample-batch", "1", "--temperatures", "0.7"]
    paradigms.main(argv)
    out = capsys.readouterr().out
    assert re.search(r"\| block-4-from-ar \| ≤ \d+\.\d{4} ± ", out)
    assert "T=1 | " not in out.replace("| ar sample, T=1 | ", "")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in out.splitlines()}
    ar_nll = float(rows["ar sample, T=0.7"][3])
    row = rows["block-4-from-ar confidence 0.5, T=0.7"]
    percent = float(re.search(r"([-+]\d+\.\d)% NLL", row[4]).group(1))
    assert percent == pytest.approx(100 * (float(row[3]) / ar_nll - 1), abs=0.051)
    assert "2 x 16 tokens after 8-token prompts in batches of 1" in out
    config = (tmp_path / "block-4-from-ar" / "config.yaml").read_text()
    assert "init_from" in config and "shift: true" in config


def test_paradigms_over_seeds_prints_intervals_and_separation(tmp_path, capsys):
    """`--seeds 2`: every cell at seeds 0 and 1, mean ± std, a 95% interval and one
    separation line per adjacent pair; `--no-clip`: block cells on the unclipped ELBO."""
    paradigms = load_script("paradigms")
    argv = ["--quick", "--threads", "1", "--out", str(tmp_path), "--seeds", "2", "--no-clip"]
    paradigms.main([*argv, "--cells", "ar", "block-4"])
    out = capsys.readouterr().out
    assert "| paradigm | NLL (nats/token) | 95% CI |" in out
    number = r"\d+\.\d{4}"
    assert re.search(rf"\| block-4 \| ≤ {number} ± {number} \| \[{number}, {number}\] \|", out)
    (line,) = [line for line in out.splitlines() if line.startswith("- rank 1 (")]
    assert re.search(r"vs 2 \((ar|block-4)\): Δ = .*Welch 95% CI .*: (not )?separated", line)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ar", "ar-seed1", "block-4-noclip", "block-4-noclip-seed1"]
    config = (tmp_path / "block-4-noclip-seed1" / "config.yaml").read_text()
    assert "clip: null" in config and "seed: 1" in config


def test_paradigms_rejects_fewer_than_one_elbo_estimate(capsys):
    paradigms = load_script("paradigms")
    with pytest.raises(SystemExit):
        paradigms.parse_args(["--eval-repeats", "0"])
    assert "--eval-repeats must be at least 1, got 0" in capsys.readouterr().err


def test_no_benchmark_script_shadows_a_module_it_may_import():
    """`python benchmarks/x.py` puts benchmarks/ first on sys.path, so a script named like a
    module (as `kernels.py` once was) is imported in its place by whatever asks for it."""
    taken = set(sys.stdlib_module_names) | set(importlib.metadata.packages_distributions())
    taken |= BENCH_EXTRA_IMPORTS
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")}
    assert "kernel_speed" in scripts
    assert not scripts & taken, sorted(scripts & taken)


def test_kernel_speed_runs_as_a_script():
    """Its tiniest setting, run the way the README says (the script's folder first on the
    path), prints one timing row per kernel."""
    argv = ["--only", "kernels", "--lengths", "64", "--max-loop-len", "64", "--repeats", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "kernel_speed.py"), *argv, "--threads", "1"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if re.match(r"\| \S.* \| 64 \| ", line)]
    assert any(row.startswith("| delta_rule | 64 |") for row in rows), done.stdout
    assert any(row.startswith("| diagonal_scan | 64 |") for row in rows), done.stdout
    for kernel in ("s4 kernel (", "hyena long conv (", "mega EMA (N=16, chunked)", "jrt prefix"):
        assert any(row.startswith(f"| {kernel}") for row in rows), (kernel, done.stdout)


def test_length_scaling_quick_prints_times_and_exponents_per_mixer():
    """Its `--quick` setting, run as a script: one row per (mixer, T) with the batch at equal
    tokens, the ratio to the smallest T (1 there), and one exponent row per mixer."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "length_scaling.py"), "--quick", "--threads", "1"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "| mixer | T | batch | ms/step | min | max | step / step @T=16 |" in lines
    assert "| mixer | p (all T) | p (32→64) |" in lines
    assert re.search(r"load average \(1/5/15 min\): before .+, after ", done.stdout)
    mixers = ("s4", "hyena", "mega-chunk", "attention")
    for name in mixers:
        for length, batch in ((16, 8), (32, 4), (64, 2)):
            row = next(line for line in lines if line.startswith(f"| {name} | {length} | "))
            cells = row.strip("| ").split(" | ")
            assert int(cells[2]) == batch and float(cells[3]) > 0, row
            if length == 16:
                assert cells[6] == "1.00", row
    exponents = [
        line for line in lines if re.match(r"\| \S+ \| -?\d+\.\d\d \| -?\d+\.\d\d \|$", line)
    ]
    assert [row.split(" | ")[0][2:] for row in exponents] == list(mixers), done.stdout


def test_length_scaling_rejects_tokens_not_a_multiple_of_every_length(capsys):
    length_scaling = load_script("length_scaling")
    with pytest.raises(SystemExit):
        length_scaling.parse_args(["--lengths", "256,384", "--tokens", "1024"])
    assert (
        "--tokens (1024) must be a multiple of every length [256, 384]" in capsys.readouterr().err
    )


def test_dynamic_eval_quick_prints_static_and_dynamic_rows(tmp_path, capsys):
    dynamic_eval = load_script("dynamic_eval")
    dynamic_eval.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ")][1:]
    assert [row[1] for row in rows] == ["attention", "mamba2", "gated_deltanet"]
    for row in rows:
        static, dynamic, gain = (float(x) for x in row[5:8])
        assert gain == pytest.approx(static - dynamic, abs=2e-4)
    # run directories given: scored as they are, one row per --dynamic setting
    argv = [str(tmp_path / "mamba2"), "--quick", "--dynamic", "lr=0,segment=8"]
    dynamic_eval.main([*argv, "--dynamic", "lr=1e-4,segment=8,ms_batches=1"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()][4:]
    assert len(rows) == 2 and float(rows[0][7]) == 0.0 and rows[0][5] == rows[1][5]


def test_gradient_variance_measures_each_window_on_one_model(tmp_path, capsys):
    import torch

    from seqlab.config import load_config
    from seqlab.train import train

    gradient_variance = load_script("gradient_variance")
    rows = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # mean (2, 1), ‖ḡ‖² = 5
    # tr Σ̂ = ((1 + 1) + (1 + 1) + (0 + 4)) / (R − 1) = 4; ‖E g‖² ≈ 5 − 4 / 3 = 11 / 3
    assert gradient_variance.relative_variance(rows) == pytest.approx(12 / 11)
    assert gradient_variance.relative_variance(torch.tensor([[1.0], [-1.0]])) == float("inf")
    overrides = {
        "objective.name": "block_diffusion",
        "objective.block_size": 4,
        "model.d_model": 16,
        "model.n_layers": 1,
        "model.n_heads": 2,
        "data.seq_len": 16,
        "train.batch_size": 4,
        "train.steps": 2,
        "train.eval_every": 2,
        "train.eval_tokens": 64,
    }
    train(load_config("default", overrides), tmp_path / "run", progress=False)
    gradient_variance.main([str(tmp_path / "run"), "--draws", "3", "--threads", "1"])
    out = capsys.readouterr().out
    table = [line.split(" | ") for line in out.splitlines()[2:]]
    assert [row[2] for row in table] == ["auto", "none"]
    for row in table:
        assert float(row[3]) > 0 and float(row[4]) > 0


def test_hf_equality_imports_and_exports_every_family_within_1e_5():
    """Every Hugging Face family in and out through the saved-directory path, as the docs'
    table was made; each printed difference is under the tests' tolerance."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "hf_equality.py"), "--seq-len", "9"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines() if re.match(r"\| \w", line)]
    rows = [row for row in rows if not row[0].startswith("| model")]
    names = [row[0][2:] for row in rows]
    assert len(rows) == 11 and "mamba2, 2 groups" in names, done.stdout
    assert any(name.startswith("attention -> Llama (llama)") for name in names)
    for row in rows:
        differences = [float(cell) for cell in row[1:-1]]
        assert all(d < 1e-5 for d in differences), row


def test_compile_speed_quick_trains_compiled_and_eager_to_the_same_loss():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "compile_speed.py"), "--quick"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| attention |"))
    eager, compiled = (float(x) for x in row.rstrip(" |").split(" | ")[-1].split(" / "))
    assert abs(eager - compiled) < 1e-3, row


def test_kv_cache_memory_never_overwrites_its_output(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    out.write_text("kept\n")
    with pytest.raises(SystemExit) as exit_:
        load_script("kv_cache_memory").main(["--quick", "--out", str(out)])
    assert exit_.value.code == 2 and "exists" in capsys.readouterr().err
    assert out.read_text() == "kept\n"


def test_kv_cache_memory_quick_scores_every_policy_at_bounded_memory():
    rows = load_script("kv_cache_memory").main(["--quick", "--threads", "1"])
    attention = [r for r in rows if r["run"] == "attention"]
    policies = {r["cache"].split()[0] for r in attention} - {"exact"}
    assert policies == {"window", "sink", "h2o", "cluster", "infllm"}
    assert {r["multiplier"] for r in rows} == {1, 4}
    # 2 layers x 2 kv heads x budget 8 x (key 8 + value 8 + position, count, score)
    windows = [r for r in attention if r["cache"] == "window 8"]
    assert [r["numbers"] for r in windows] == [2 * 2 * 8 * 19] * 2
    infllm = [r for r in attention if r["cache"].startswith("infllm")]
    assert 0 < infllm[0]["memory"] < infllm[1]["memory"] < infllm[1]["numbers"]  # grows O(T)
    assert all(r["memory"] == 0 for r in attention if not r["cache"].startswith("infllm"))
    longest = [r for r in attention if r["multiplier"] == 4]
    exact = next(r for r in longest if r["cache"] == "exact")
    assert all(r["ceiling"] == exact["accuracy"] for r in longest)
    # InfLLM keeps every token (in blocks, with positions and representatives): no saving
    bounded = [r for r in longest if r["cache"] != "exact" and r not in infllm]
    assert all(r["numbers"] < exact["numbers"] for r in bounded)
    assert infllm[1]["numbers"] > exact["numbers"]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert any(r["run"] == "gla" and r["cache"] == "state" for r in rows)
