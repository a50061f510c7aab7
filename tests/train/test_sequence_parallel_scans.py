"""train.sequence_parallel for the diagonal and state-space scans (`shard_state_scan`): mamba,
longhorn, s4d, s4, gss, lru, mingru and s7 give the single-process outputs and gradients on 2 and
4 CPU processes (gloo), and a run under sequence parallelism resumes under it."""

from __future__ import annotations

import json
import shutil

import pytest

from seqlab.mixers.s4 import NPLRSSM
from seqlab.registry import MIXERS
from seqlab.sequence_parallel import check_supported
from tests.helpers import run_cli, tiny_config, write_config, write_corpus
from tests.train.sp_helpers import exactness, read_losses, spawn, torchrun

SCANS = ["mamba", "longhorn", "s4d", "s4", "gss", "lru", "mingru", "s7"]
OPTIONS = {
    "mamba": {"expand": 1, "d_state": 4},
    "longhorn": {"expand": 1, "d_state": 4},
    "s4d": {"expand": 1, "d_state": 4, "chunk_size": 4},
    "s4": {"expand": 1, "d_state": 4, "chunk_size": 4},
    "gss": {"d_state": 4, "chunk_size": 4},
    "lru": {"d_state": 8},
    "mingru": {},
    "s7": {"d_state": 8, "chunk_size": 4},
}


def _exactness(rank: int, size: int, variant: bool) -> None:
    """The shared check (`sp_helpers.exactness`: 18 positions, a mask, uneven shards) on a
    model of every scan. `variant`: Mamba's negative eigenvalues (T_r from the zero-input
    response instead of the closed form) and S4's chunked rather than step-by-step form."""
    options = dict(OPTIONS)
    if variant:
        options["mamba"] = {**OPTIONS["mamba"], "negative_eigenvalues": True}
        NPLRSSM.recurrent_steps = 0
    exactness(rank, size, SCANS, options)


@pytest.mark.parametrize(("size", "variant"), [(2, False), (4, True)])
def test_outputs_and_every_gradient_equal_one_process(size, variant):
    spawn(_exactness, size, variant)


def test_every_scan_declares_sequence_parallel():
    check_supported(SCANS)
    assert all(MIXERS.get(name).target.sequence_parallel for name in SCANS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 6-step run in one process and the same run with sequence_parallel 2 (torchrun)."""
    root = tmp_path_factory.mktemp("sp_scans")
    corpus = write_corpus(root / "corpus")
    model = {
        "layers": ["mamba", "mingru"],
        "d_model": 16,
        "mixer_options": {"mamba": OPTIONS["mamba"]},
    }
    train = {"steps": 6, "checkpoint_every": 3, "eval_every": 6, "log_every": 1}
    config = tiny_config(corpus, root / "cache", model=model, train=train)
    config["data"]["seq_len"] = 24
    run_cli(
        "train",
        "--config",
        str(write_config(root / "one.yaml", config)),
        "--out",
        str(root / "one"),
        check=True,
    )
    config["train"]["sequence_parallel"] = 2
    parallel = write_config(root / "sp.yaml", config)
    torchrun(2, "--config", str(parallel), "--out", str(root / "sp"))
    return root


def test_training_loss_curve_equals_one_process(runs):
    expected = read_losses(runs / "one")
    assert len(expected) == 6
    assert read_losses(runs / "sp") == pytest.approx(expected, rel=1e-4)


def test_resume_under_sequence_parallel_continues_the_same_curve(runs, tmp_path):
    run = tmp_path / "cut"
    shutil.copytree(runs / "sp", run)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    (run / "checkpoints" / "latest").write_text("step-00000003\n")
    (run / "summary.json").unlink()
    # Rows up to the checkpoint's step survive a resume (and only a resume): marked here.
    metrics = run / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    kept = [{**row, "kept": True} for row in rows if row["step"] <= 3]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in kept))
    assert "sequence_parallel: 2" in (run / "config.yaml").read_text()
    torchrun(2, "--out", str(run), "--resume")
    assert read_losses(run) == pytest.approx(read_losses(runs / "sp"), rel=1e-6)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row.get("kept", False) for row in rows] == [True] * len(kept) + [False] * 3
