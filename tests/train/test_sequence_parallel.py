"""train.sequence_parallel: each sequence split across 2 or 4 CPU processes (gloo) gives the
single-process outputs, gradients, evaluation NLL, loss curve and checkpoints; what it does
not support is refused before step 1."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from seqlab.errors import ConfigError
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.sequence_parallel import SequenceShard, check_model, check_supported
from seqlab.train.loop import check_sequence_parallel_run
from tests.helpers import run_cli, tiny_config, write_config, write_corpus
from tests.train.sp_helpers import exactness, read_losses, spawn, tiny_model, torchrun

LAYERS = {
    "linear": ["linear_attention", "gla", "gateloop"],
    "delta": ["gated_deltanet", "deltanet", "rwkv7"],
    "scan": ["mamba2", "retnet"],
}
OPTIONS = {
    "gla": {"chunk_size": 4},
    "linear_attention": {"chunk_size": 4},
    "retnet": {"chunk_size": 4, "rotary": True},
    "mamba2": {"chunk_size": 4},
    "deltanet": {"chunk_size": 4},
    "gated_deltanet": {"chunk_size": 4},
    "rwkv7": {"chunk_size": 4, "decay_rank": 4, "iclr_rank": 4, "gate_rank": 4},
    "gateloop": {"chunk_size": 4},
}


@pytest.mark.parametrize(("family", "size"), [("linear", 2), ("delta", 4), ("scan", 2)])
def test_outputs_and_every_gradient_equal_one_process(family, size):
    spawn(exactness, size, LAYERS[family], OPTIONS)


def test_four_ranks_linear_and_scan():
    spawn(exactness, 4, ["gla", "mamba2", "retnet", "gateloop"], OPTIONS)


def test_unsupported_mixers_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="not a linear recurrence nor softmax attention"):
        check_supported(["gla", "lstm"])
    reasons = {
        "lightnet": "log-sum-exp key normaliser",
        "mega": "has no sharded kernel",
        "hydra": "bidirectional only",
    }
    for name, reason in reasons.items():
        with pytest.raises(ConfigError, match=reason) as refusal:
            check_supported(["gla", name])
        assert "\n" not in str(refusal.value)
    check_supported(["rwkv7", "gateloop"])
    with pytest.raises(ConfigError, match="mixer 'mom' .its memories run over each") as error:
        check_supported(["mom"])
    assert "\n" not in str(error.value)


def test_a_memory_cache_wrapper_and_auxiliary_losses_are_refused_before_step_1():
    shard = SequenceShard(None, 0, 2)
    cached = tiny_model(["gla"], {"gla": {"memory_cache": {"segment": 4}}})
    check_supported(["gla"])  # the layer's registered class supports it; the wrapper does not
    with pytest.raises(ConfigError, match="support gla.memory_cache .its cached segment"):
        check_model(cached, shard)
    moe = tiny_model(["gla"], mlp={"kind": "moe", "experts": 2, "top_k": 1})
    task = SimpleNamespace(value_head=None, name="text", seq_len=18)
    with pytest.raises(ConfigError, match="MoE's auxiliary loss .a statistic of the whole"):
        check_sequence_parallel_run(moe, task, Autoregressive(), shard)
    valued = SimpleNamespace(value_head="gaussian", name="events", seq_len=18)
    with pytest.raises(ConfigError, match="task 'events': it has a value beside every token"):
        check_sequence_parallel_run(tiny_model(["gla"]), valued, Autoregressive(), shard)


class Columns(nn.Module):
    """A stand-in model recording the input positions it is given."""

    def forward(self, tokens, layout, positions):
        self.positions = positions
        return torch.zeros(*tokens.shape, 11, dtype=torch.float64), None


def test_token_split_balances_the_scored_targets():
    """Input column c is scored by its target c + 1 (mask[:, 1:]): 3 scored targets, in
    columns 3, 4, 5, put rank 0's end after column 3 (mask[:, :6] would put it after 4)."""
    mask = torch.tensor([[False] * 4 + [True] * 3])
    model = Columns()
    batch = Batch(tokens=torch.zeros(1, 7, dtype=torch.long), mask=mask)
    Autoregressive().shard_nll(model, batch, SequenceShard(None, 0, 2, split="tokens"))
    assert model.positions.tolist() == [0, 1, 2, 3]


def test_value_batches_are_refused():
    batch = Batch(tokens=torch.zeros(1, 5, dtype=torch.long), values=torch.zeros(1, 5))
    with pytest.raises(ConfigError, match="does not support batches with values"):
        Autoregressive().shard_nll(Columns(), batch, SequenceShard(None, 0, 2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 6-step run in one process, the same run with sequence_parallel 2 (torchrun) and with
    2 data-parallel replicas x sequence_parallel 2 (4 processes), one global batch."""
    root = tmp_path_factory.mktemp("sp")
    corpus = write_corpus(root / "corpus")
    train = {"steps": 6, "checkpoint_every": 3, "eval_every": 3, "log_every": 1}
    model = {
        "layers": ["gla", "gated_deltanet"],
        "mixer_options": {"gla": {"chunk_size": 8}, "gated_deltanet": {"chunk_size": 8}},
    }
    single = write_config(
        root / "single.yaml", tiny_config(corpus, root / "cache", model=model, train=train)
    )
    run_cli("train", "--config", str(single), "--out", str(root / "single"), check=True)
    parallel = tiny_config(
        corpus, root / "cache", model=model, train={**train, "sequence_parallel": 2}
    )
    config = write_config(root / "sp.yaml", parallel)
    torchrun(2, "--config", str(config), "--out", str(root / "sp"))
    torchrun(4, "--config", str(config), "--out", str(root / "replicas"))
    return root


def validation(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["val_nll"] for row in rows if "val_nll" in row]


@pytest.mark.parametrize("run", ["sp", "replicas"])
def test_training_loss_curve_and_validation_equal_one_process(runs, run):
    summary = json.loads((runs / run / "summary.json").read_text())
    assert summary["world_size"] == {"sp": 2, "replicas": 4}[run]
    assert len(set(summary["param_fingerprints"])) == 1
    expected = read_losses(runs / "single")
    assert len(expected) == 6
    assert read_losses(runs / run) == pytest.approx(expected, rel=1e-4)
    assert len(validation(runs / "single")) == 2
    assert validation(runs / run) == pytest.approx(validation(runs / "single"), rel=1e-4)


def test_checkpoint_written_under_sequence_parallel_resumes(runs, tmp_path):
    run = tmp_path / "cut"
    shutil.copytree(runs / "sp", run)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    (run / "checkpoints" / "latest").write_text("step-00000003\n")
    (run / "summary.json").unlink()
    config = (run / "config.yaml").read_text()
    # The checkpoint is the ordinary replicated one: here it resumes in one process.
    (run / "config.yaml").write_text(config.replace("sequence_parallel: 2", "sequence_parallel: 1"))
    run_cli("train", "--out", str(run), "--resume", check=True)
    assert read_losses(run) == pytest.approx(read_losses(runs / "single"), rel=1e-4)


def test_unsupported_configurations_are_refused(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config = write_config(
        tmp_path / "c.yaml",
        tiny_config(
            corpus, tmp_path / "cache", model={"mixer": "lstm"}, train={"sequence_parallel": 2}
        ),
    )
    result = run_cli("train", "--config", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode != 0
    assert "does not support mixer 'lstm' (its state is not a linear" in result.stderr
