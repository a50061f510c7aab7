"""The plugin in examples/plugin (a mixer in its own package) trains, evaluates, samples and
compares through the CLI by its import path, with no registration and no edit to seqlab."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT, tiny_config, write_config, write_corpus

PLUGIN = "seqlab_toy.ema:EMA"


def seqlab(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "examples" / "plugin")]),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "seqlab", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin")
    corpus = write_corpus(tmp / "corpus")
    config = tiny_config(corpus, tmp / "cache", train={"steps": 6, "checkpoint_every": 3})
    config["model"].update(mixer=PLUGIN, mixer_options={PLUGIN: {"expand": 2}})
    path = write_config(tmp / "plugin.yaml", config)
    result = seqlab("train", "--config", str(path), "--out", str(tmp / "run"), cwd=tmp)
    assert result.returncode == 0, result.stderr
    return tmp, path, json.loads(result.stdout.strip().splitlines()[-1])


def test_plugin_mixer_trains_by_import_path(trained):
    tmp, _, summary = trained
    assert summary["steps"] == 6 and summary["final_loss"] > 0
    saved = yaml.safe_load((tmp / "run" / "config.yaml").read_text())
    assert saved["model"]["mixer"] == PLUGIN


def test_plugin_run_evaluates_and_samples(trained):
    tmp = trained[0]
    scored = seqlab("eval", str(tmp / "run"), "--split", "test", cwd=tmp)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["nll"] > 0
    sampled = seqlab("sample", str(tmp / "run"), "--prompt", "de", "--max-new-tokens", "5", cwd=tmp)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("de")


def test_plugin_mixer_compares_beside_a_registered_one(trained):
    tmp, path, _ = trained
    base = yaml.safe_load(path.read_text())
    base["train"].update(steps=4, checkpoint_every=4, eval_every=4)
    base["model"].pop("mixer_options")  # options for the plugin would be refused for gla
    comparison = {
        "name": "plugin",
        "base": base,
        "grid": {"model.mixer": [PLUGIN, "gla"]},
        "lrs": [3e-3],
    }
    spec = write_config(tmp / "compare.yaml", comparison)
    result = seqlab("compare", str(spec), "--out", str(tmp / "compare"), cwd=tmp)
    assert result.returncode == 0, result.stderr
    table = (tmp / "compare" / "results.md").read_text()
    assert PLUGIN in table and "gla" in table


def test_plugin_config_without_the_package_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "seqlab", "train", "--print-config", "--model.mixer", PLUGIN],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        cwd=tmp_path,
    )
    assert result.returncode == 0  # printing the config resolves no component
    missing = subprocess.run(
        [sys.executable, "-m", "seqlab", "train", "--out", "r", "--model.mixer", PLUGIN],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        cwd=tmp_path,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "seqlab: error: mixer 'seqlab_toy.ema:EMA': module 'seqlab_toy.ema' does not import "
        "(ModuleNotFoundError: No module named 'seqlab_toy')"
    ]


def test_plugin_mixer_passes_seqlab_check(tmp_path):
    result = seqlab("check", PLUGIN, "--option", "expand=2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 0 failed," in result.stdout.splitlines()[0]
    for invariant in ("split_decode", "causality", "state_size", "save_load", "learns"):
        assert re.search(rf"PASS\s+{invariant}\b", result.stdout), result.stdout
