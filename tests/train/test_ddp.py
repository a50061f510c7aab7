"""torchrun with 2 CPU processes (gloo): ranks end with identical parameters."""

import json
import os
import subprocess
import sys

from tests.helpers import ROOT, run_cli, tiny_config, write_config, write_corpus


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
