"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

import json
import signal
import subprocess
import sys
import time

from tests.helpers import ROOT, run_cli, tiny_config, write_config, write_corpus

STEPS = 120


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config = write_config(
        tmp_path / "c.yaml",
        tiny_config(
            corpus,
            tmp_path / "cache",
            train={"steps": STEPS, "checkpoint_every": 10, "eval_every": 60, "log_every": 1},
        ),
    )
    reference = tmp_path / "reference"
    run_cli("train", "--config", str(config), "--out", str(reference), check=True)

    killed = tmp_path / "killed"
    env = {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [sys.executable, "-m", "seqlab", "train", "--config", str(config), "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not latest.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    resumed_from = int(latest.read_text().split("-")[1])
    assert resumed_from < STEPS

    result = run_cli("train", "--out", str(killed), "--resume", check=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["final_loss"] == expected["final_loss"]
    assert summary["validation"] == expected["validation"]
    saved = json.loads((killed / "summary.json").read_text())
    assert saved["param_fingerprints"] == expected["param_fingerprints"]

    got, want = read_metrics(killed), read_metrics(reference)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config = write_config(
        tmp_path / "c.yaml", tiny_config(corpus, tmp_path / "cache", train={"steps": 6})
    )
    run = tmp_path / "run"
    run_cli("train", "--config", str(config), "--out", str(run), check=True)
    before = (run / "model.safetensors").read_bytes()
    run_cli("train", "--out", str(run), "--resume", check=True)
    assert (run / "model.safetensors").read_bytes() == before
