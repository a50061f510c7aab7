"""Mixed precision (`train.precision`), the float32 guard of the kernels, throughput and MFU."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from seqlab.config import ExperimentConfig, ModelConfig, TrainConfig, from_dict
from seqlab.errors import ConfigError
from seqlab.layout import LayoutKind
from seqlab.model import build_model
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.ops.delta_rule import delta_rule
from seqlab.ops.fftconv import fft_conv
from seqlab.ops.linear_attention import gated_linear_attention
from seqlab.ops.scan import diagonal_scan, log_space_scan
from seqlab.ops.selective_scan import selective_scan
from seqlab.registry import MIXERS
from seqlab.train import train
from seqlab.train.checkpoint import latest_checkpoint
from seqlab.train.logging import progress_line, read_metrics
from seqlab.train.precision import MixedPrecision, Throughput, peak_flops
from tests.helpers import tiny_config, write_corpus

CPU = torch.device("cpu")
CAUSAL_MIXERS = [
    n for n in MIXERS.names() if LayoutKind.CAUSAL in MIXERS.get(n).declared("layouts")
]


def inputs(*shapes: tuple[int, ...], positive: tuple[int, ...] = ()) -> list[torch.Tensor]:
    """bfloat16 tensors (those at `positive` in (0, 1), the others normal)."""
    return [
        (torch.rand(*shape) if i in positive else torch.randn(*shape)).to(torch.bfloat16)
        for i, shape in enumerate(shapes)
    ]


BTHK = (2, 13, 2, 4)
KERNELS = {
    "diagonal_scan": (diagonal_scan, inputs((2, 13, 3), (2, 13, 3), positive=(0,))),
    "log_space_scan": (log_space_scan, inputs((2, 13, 3), (2, 13, 3))),
    "gated_linear_attention": (gated_linear_attention, inputs(BTHK, BTHK, BTHK)),
    "delta_rule": (delta_rule, inputs(BTHK, BTHK, BTHK, (2, 13, 2), positive=(1, 3))),
    "selective_scan": (
        selective_scan,
        inputs((2, 13, 3), (2, 13, 3), (3, 4), (2, 13, 4), (2, 13, 4), positive=(1,)),
    ),
    "fft_conv": (fft_conv, inputs((2, 13, 3), (13, 3))),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernels_compute_float32_under_autocast(name):
    kernel, args = KERNELS[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernel(*args)[0]
    assert out.dtype == torch.float32
    reference = kernel(*[x.float() for x in args])[0]  # the float32 kernel on the same values
    assert torch.allclose(out, reference, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out).all()


def test_guard_leaves_float64_and_calls_without_autocast_alone():
    a, b = torch.rand(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, _ = diagonal_scan(a, b)
    assert h.dtype == torch.float64
    assert diagonal_scan(a.to(torch.bfloat16), b.to(torch.bfloat16))[0].dtype == torch.bfloat16


def first_losses(name: str, precision: str, steps: int = 3) -> list[float]:
    torch.manual_seed(0)
    config = ModelConfig(mixer=name, d_model=32, n_layers=2, n_heads=2, vocab_size=40)
    model = build_model(config)
    batch = Batch(tokens=torch.randint(0, 40, (2, 25)))
    mixed = MixedPrecision(precision, CPU)
    forward = mixed.wrap(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss, _ = Autoregressive().training_loss(forward, batch)
        assert loss.dtype == torch.float32
        mixed.backward(loss)
        mixed.step(optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return losses


@pytest.mark.parametrize("name", CAUSAL_MIXERS)
def test_every_mixer_trains_in_bf16_mixed(name):
    reference = first_losses(name, "fp32", steps=1)[0]
    losses = first_losses(name, "bf16-mixed")
    assert all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(reference, rel=0.05)
    assert losses[-1] < losses[0]


def test_fp16_mixed_on_cpu_uses_a_grad_scaler():
    mixed = MixedPrecision("fp16-mixed", CPU)
    assert mixed.scaler is not None and mixed.scaler.is_enabled()
    losses = first_losses("gla", "fp16-mixed")
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert mixed.judged_norm(math.inf) == 0.0  # an overflow is skipped by the scaler
    assert MixedPrecision("bf16-mixed", CPU).judged_norm(math.inf) == math.inf


def test_precision_is_validated():
    with pytest.raises(ConfigError, match="train.precision must be one of fp32, bf16-mixed"):
        TrainConfig(precision="bf16")
    with pytest.raises(ConfigError, match="train.peak_flops must be positive"):
        TrainConfig(peak_flops=-1.0)


def run_config(tmp_path, **train_options):
    corpus = write_corpus(tmp_path / "corpus", files=4, lines=20)
    options = {"steps": 4, "checkpoint_every": 2, "eval_every": 4, **train_options}
    return from_dict(ExperimentConfig, tiny_config(corpus, tmp_path / "cache", train=options))


def test_bf16_run_saves_float32_weights_and_logs_throughput(tmp_path):
    eager = train(run_config(tmp_path), tmp_path / "fp32", progress=False)
    mixed = train(run_config(tmp_path, precision="bf16-mixed"), tmp_path / "bf16", progress=False)
    assert math.isfinite(mixed["final_loss"])
    assert mixed["final_loss"] == pytest.approx(eager["final_loss"], rel=0.1)
    weights = load_file(latest_checkpoint(tmp_path / "bf16") / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    records = read_metrics(tmp_path / "bf16" / "metrics.jsonl")
    assert all(r["tokens_per_s"] > 0 and "mfu" not in r for r in records)
    assert "tokens_per_s" in progress_line(records[0], 4)


def test_fp16_run_keeps_its_loss_scale_in_the_checkpoint(tmp_path):
    summary = train(run_config(tmp_path, precision="fp16-mixed"), tmp_path / "run", progress=False)
    assert math.isfinite(summary["final_loss"])
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["extra"]["grad_scaler"]["scale"] > 0


def test_mfu_is_reported_with_a_peak(tmp_path):
    summary = train(run_config(tmp_path, peak_flops=1e12), tmp_path / "run", progress=False)
    for record in read_metrics(tmp_path / "run" / "metrics.jsonl"):
        expected = 3 * summary["flops_per_token"] * record["tokens_per_s"] / 1e12
        assert record["mfu"] == pytest.approx(expected, rel=0.01)


def test_throughput_and_peak():
    meter = Throughput(flops_per_token=100.0, peak=1e6, tokens=0)
    report = meter.report(1000)
    assert report["mfu"] == pytest.approx(3 * 100 * report["tokens_per_s"] / 1e6, rel=1e-3)
    assert Throughput(100.0, None, 0).report(10).keys() == {"tokens_per_s"}
    assert peak_flops(CPU, "fp32", None) is None
    assert peak_flops(CPU, "bf16-mixed", 5e12) == 5e12
