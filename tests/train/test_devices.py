"""`--device` of eval, sample and compare; comparison workers spread over GPUs; a run tested
on the device it trained on."""

import json

import pytest
import torch

from seqlab.cli import main
from seqlab.config import ExperimentConfig, from_dict
from seqlab.harness.compare import on_device, worker_device
from seqlab.harness.grid import expand, load_compare_config
from seqlab.train import train
from tests.helpers import tiny_config, write_corpus


def test_workers_take_one_gpu_each_round_robin():
    assert [worker_device("auto", slot, 2) for slot in range(4)] == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
        "cuda:1",
    ]
    assert worker_device("cuda", 2, 3) == "cuda:2"
    assert worker_device("auto", 1, 1) == "auto"  # one GPU (or none): as configured
    assert worker_device("auto", 1, 0) == "auto"
    assert worker_device("cpu", 1, 4) == "cpu"
    assert worker_device("cuda:3", 0, 4) == "cuda:3"  # an explicit GPU is kept


def test_on_device_changes_only_the_device():
    run = expand(load_compare_config("quickstart"))[0]
    moved = on_device(run, "cuda:1")
    assert moved.config.train.device == "cuda:1"
    assert moved.run_id == run.run_id and moved.config.model == run.config.model
    assert on_device(run, run.config.train.device) is run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("devices")
    corpus = write_corpus(tmp / "corpus", files=4, lines=20)
    options = {"steps": 2, "checkpoint_every": 2, "eval_every": 2}
    config = from_dict(ExperimentConfig, tiny_config(corpus, tmp / "cache", train=options))
    train(config, tmp / "run", progress=False)
    return tmp / "run"


def test_eval_and_sample_on_a_named_device(trained, capsys):
    assert main(["eval", str(trained), "--device", "cpu", "--max-tokens", "64"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["nll"] > 0
    args = ["sample", str(trained), "--prompt", "def", "--max-new-tokens", "4", "--seed", "1"]
    assert main([*args, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("def")


@pytest.mark.parametrize("command", ["eval", "sample", "compare"])
def test_an_unusable_device_is_one_line(trained, capsys, command):
    target = "quickstart" if command == "compare" else str(trained)
    device = "tpu" if torch.cuda.is_available() else "cuda"
    extra = ["--prompt", "def"] if command == "sample" else []
    assert main([command, target, *extra, "--device", device]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"seqlab: error: --device {device!r}: expected auto, cpu, cuda")
    assert error.count("\n") == 1


@pytest.mark.gpu
def test_bf16_training_and_evaluation_on_the_gpu(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", files=4, lines=20)
    options = {"steps": 2, "checkpoint_every": 2, "eval_every": 2, "device": "cuda"}
    options["precision"] = "bf16-mixed"
    config = from_dict(ExperimentConfig, tiny_config(corpus, tmp_path / "cache", train=options))
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["validation"]["nll"] > 0
    assert main(["eval", str(tmp_path / "run"), "--device", "cuda", "--max-tokens", "64"]) == 0
    on_gpu = json.loads(capsys.readouterr().out)["nll"]
    assert main(["eval", str(tmp_path / "run"), "--device", "cpu", "--max-tokens", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] == pytest.approx(on_gpu, rel=1e-4)
