"""The run directory contract: nothing already there is overwritten without --overwrite, one
training at a time (a lock naming its holder), resuming is exact and a finished run is kept."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import seqlab
from seqlab.cli import main
from seqlab.config import ExperimentConfig, from_dict
from seqlab.errors import ConfigError, SeqlabError
from seqlab.train import train
from seqlab.train.rundir import LOCK_FILE
from tests.helpers import ROOT, tiny_config, write_config, write_corpus


def config_dict(tmp_path, **train_options):
    corpus = write_corpus(tmp_path / "corpus", files=4, lines=20)
    options = {"steps": 6, "checkpoint_every": 3, "eval_every": 100, **train_options}
    return tiny_config(corpus, tmp_path / "cache", train=options)


def config_for(tmp_path, **train_options):
    return from_dict(ExperimentConfig, config_dict(tmp_path, **train_options))


def cli_error(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("seqlab: error:"), err
    return err[0]


def test_a_saved_model_is_refused_and_overwrite_replaces_only_the_run(tmp_path):
    out = tmp_path / "out"
    seqlab.save(seqlab.build_model(config_for(tmp_path).model), out)
    (out / "notes.txt").write_text("mine")
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(SeqlabError, match="saved model .*--overwrite"):
        train(config_for(tmp_path), out, progress=False)
    assert (out / "model.safetensors").read_bytes() == before

    train(config_for(tmp_path), out, overwrite=True, progress=False)  # checkpoints 3 and 6
    with pytest.raises(SeqlabError, match="holds a training run .*checkpoints"):
        train(config_for(tmp_path), out, progress=False)
    summary = train(
        config_for(tmp_path, steps=4, checkpoint_every=4), out, overwrite=True, progress=False
    )
    assert summary["steps"] == 4
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000004"]
    assert (out / "notes.txt").read_text() == "mine"
    assert seqlab.load(out).num_params() == summary["params"]


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(ConfigError, match="give one"):
        train(config_for(tmp_path), tmp_path / "r", resume=True, overwrite=True)


def test_bad_out_directories_are_one_line_errors(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", config_dict(tmp_path))
    assert "empty" in cli_error(capsys, "train", "--config", config, "--out", "")
    with pytest.raises(ConfigError, match="empty"):
        train(config_for(tmp_path), "  ", progress=False)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in cli_error(capsys, "train", "--config", config, "--out", a_file)
    assert "cannot create" in cli_error(capsys, "train", "--config", config, "--out", a_file / "r")
    assert a_file.read_text() == "x"


HOLD_LOCK = """
import sys, time
from seqlab.train.rundir import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_held_lock_names_its_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SeqlabError) as caught:
            train(config_for(tmp_path), out, progress=False)
        message = str(caught.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert not (out / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_FILE).is_file()  # left behind by the killed holder
    summary = train(config_for(tmp_path), out, progress=False)
    assert summary["steps"] == 6 and not (out / LOCK_FILE).exists()


def test_resume_of_a_finished_run_keeps_its_summary(tmp_path):
    out = tmp_path / "run"
    train(config_for(tmp_path), out, progress=False)
    before = (out / "summary.json").read_bytes()
    again = train(config_for(tmp_path), out, resume=True, progress=False)
    assert (out / "summary.json").read_bytes() == before
    assert again == json.loads(before)


@pytest.mark.parametrize("lost", [["summary.json"], ["summary.json", "model.safetensors"]])
def test_a_kill_after_the_last_checkpoint_resumes_to_the_same_summary(tmp_path, lost):
    out = tmp_path / "run"
    expected = train(config_for(tmp_path), out, progress=False)
    for name in lost:  # what a kill before the summary was written leaves
        (out / name).unlink()
    (out / "checkpoints" / "step-00000009.tmp").mkdir()
    (out / ".summary.json.x1y2.tmp").write_text("{")
    (out / ".my-notes.tmp").write_text("mine")  # a user's own dotfile is not a leftover
    (out / "checkpoints" / ".latest.z3.tmp").write_text("")
    summary = train(config_for(tmp_path), out, resume=True, progress=False)
    assert {k: v for k, v in summary.items() if k != "seconds"} == {
        k: v for k, v in expected.items() if k != "seconds"
    }
    assert json.loads((out / "summary.json").read_text()) == summary
    assert seqlab.load(out).num_params() == expected["params"]
    leftovers = [p.name for p in out.rglob("*.tmp")]
    assert leftovers == [".my-notes.tmp"]


def test_resuming_with_another_architecture_names_the_keys(tmp_path):
    out = tmp_path / "run"
    train(config_for(tmp_path, steps=3), out, progress=False)
    (out / "summary.json").unlink()
    config = config_dict(tmp_path, steps=3)
    config["model"].update(d_model=48, n_heads=4)
    with pytest.raises(ConfigError) as caught:
        train(from_dict(ExperimentConfig, config), out, resume=True, progress=False)
    message = str(caught.value)
    assert "model.d_model (32 in the run, 48 now)" in message
    assert "model.n_heads (2 in the run, 4 now)" in message
    assert "n_layers" not in message


def test_plain_progress_lines_when_stdout_is_not_a_terminal(tmp_path, capsys):
    train(config_for(tmp_path, steps=4, log_every=2), tmp_path / "run")
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split()[:2] for line in lines] == [["step", "2/4"], ["step", "4/4"]]
    assert all("loss" in line and "grad_norm" in line for line in lines)
    assert "\r" not in captured.out + captured.err and "it/s" not in captured.err
