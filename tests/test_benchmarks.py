"""Smoke tests of the benchmark scripts: they are not tests themselves, but an API change
must not leave them broken. Each runs in its tiny `--quick` setting."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paradigms_quick_prints_nll_table_and_sampling_rows(tmp_path, capsys):
    paradigms = load_script("paradigms")
    paradigms.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for label in ("ar", "block-4", "block-16", "masked"):
        assert f"| {label} | " in out
    assert "| ar sample | " in out and "| block-16 confidence 0.5, T=0 | " in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar", "block-16", "block-4", "masked"]

    # --cells: only the named paradigms; finished runs are reused, sampling needs block-16
    paradigms.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--cells", "ar"])
    out = capsys.readouterr().out
    assert "| ar | " in out and "| block-4 | " not in out
    assert "Sampling" not in out and "No sampling comparison" in out
