"""`train.compile`: the forward under torch.compile trains the same function; a compilation
failure is one user-visible line. Inductor's C++ build takes a minute per model on this CPU,
so these tests compile with the `eager` backend (Dynamo's tracing and graph capture, without
code generation); `benchmarks/compile_speed.py` runs inductor itself."""

import math

import pytest
import torch

from seqlab.config import ExperimentConfig, from_dict
from seqlab.errors import SeqlabError
from seqlab.train import precision, train
from seqlab.train.logging import read_metrics
from tests.helpers import tiny_config, write_corpus


@pytest.fixture(autouse=True)
def _eager_backend(monkeypatch):
    monkeypatch.setattr(precision, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def config_for(tmp_path, **train_options):
    corpus = write_corpus(tmp_path / "corpus", files=4, lines=20)
    options = {"steps": 2, "checkpoint_every": 2, "eval_every": 2, **train_options}
    return from_dict(ExperimentConfig, tiny_config(corpus, tmp_path / "cache", train=options))


def test_compiled_attention_trains_like_eager(tmp_path):
    eager = train(config_for(tmp_path), tmp_path / "eager", progress=False)
    compiled = train(config_for(tmp_path, compile=True), tmp_path / "compiled", progress=False)
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-4)
    assert compiled["validation"]["nll"] == pytest.approx(eager["validation"]["nll"], rel=1e-4)
    records = read_metrics(tmp_path / "compiled" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]


def test_compile_with_bf16_mixed(tmp_path):
    config = config_for(tmp_path, compile=True, precision="bf16-mixed")
    summary = train(config, tmp_path / "run", progress=False)
    assert math.isfinite(summary["final_loss"])


def test_a_compile_failure_is_one_line_not_a_silent_fallback(tmp_path, monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no code generator here\nsecond line of a long trace")

    monkeypatch.setattr(precision, "COMPILE_BACKEND", broken_backend)
    with pytest.raises(SeqlabError) as failure:
        train(config_for(tmp_path, compile=True), tmp_path / "run", progress=False)
    message = str(failure.value)
    assert message.startswith("train.compile: torch.compile failed (")
    assert "(RuntimeError: no code generator here)" in message and "\n" not in message
    assert "train.compile: false" in message
