"""Training tokens/s of eager against `torch.compile` (inductor) for each mixer family, CPU.

For each mixer, two identical tiny models (same seed; default d_model 64, 2 layers, T 128,
batch 4, vocab 256, float32) train through seqlab's own path (`Objective.training_loss`,
`build_optimizer`, gradient clipping, AdamW step) on the same batch: one eager, one whose
forward is `torch.compile`d as `train.compile: true` does (`seqlab.train.precision`). The
first compiled step (tracing and the C++ build) is reported apart as the compile time; after
`--warmup` untimed steps each, the timed steps of the two alternate (eager, compiled, eager,
...) and the table reports median tokens/s and the ratio compiled/eager. The losses of both
after the last step are printed as a check that they trained the same function.

    PYTHONPATH=src python benchmarks/compile_speed.py                 # defaults below
    PYTHONPATH=src python benchmarks/compile_speed.py --mixers all    # every causal mixer
    PYTHONPATH=src python benchmarks/compile_speed.py --quick         # smoke test (aot_eager)

Compilation takes about a minute per model on one CPU thread, so the default is three
families (softmax attention, chunked gated linear attention, the selective scan).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch
from torch import nn

from seqlab.config import ModelConfig, TrainConfig
from seqlab.layout import LayoutKind
from seqlab.model import build_model
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.registry import MIXERS
from seqlab.train import precision
from seqlab.train.guard import gradient_norm
from seqlab.train.loop import build_optimizer

DEFAULT_MIXERS = "attention,gla,mamba"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixers", default=DEFAULT_MIXERS, help="comma-separated, or 'all'")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--steps", type=int, default=6, help="timed steps of each")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: attention only, backend aot_eager (no C++ build), 1 + 2 steps",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.mixers, args.warmup, args.steps = "attention", 1, 2
    if min(args.steps, args.batch, args.seq_len, args.threads) < 1 or args.warmup < 0:
        p.error("--steps, --batch, --seq-len and --threads must be positive, --warmup >= 0")
    return args


def causal_mixers(spec: str) -> list[str]:
    if spec != "all":
        return [name.strip() for name in spec.split(",") if name.strip()]
    return [n for n in MIXERS.names() if LayoutKind.CAUSAL in MIXERS.get(n).declared("layouts")]


class Trainer:
    """One model, its optimizer and the training step of `seqlab.train.loop`."""

    def __init__(self, args: argparse.Namespace, mixer: str, compiled: bool) -> None:
        torch.manual_seed(0)
        config = ModelConfig(
            mixer=mixer,
            d_model=args.d_model,
            n_layers=args.layers,
            n_heads=args.heads,
            vocab_size=args.vocab,
        )
        self.model = build_model(config)
        self.optimizer = build_optimizer(self.model, TrainConfig(lr=1e-3))
        self.forward: nn.Module = precision.compile_model(self.model) if compiled else self.model
        self.objective = Autoregressive()
        self.loss = float("nan")

    def step(self, batch: Batch) -> float:
        """Seconds of one optimizer step."""
        start = time.perf_counter()
        with precision.compile_failures(self.forward is not self.model):
            loss, _ = self.objective.training_loss(self.forward, batch)
            loss.backward()
        gradient_norm(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = loss.item()
        return time.perf_counter() - start


def measure(args: argparse.Namespace, mixer: str, batch: Batch) -> dict[str, float]:
    eager, compiled = Trainer(args, mixer, False), Trainer(args, mixer, True)
    compile_seconds = compiled.step(batch)
    eager.step(batch)
    for _ in range(args.warmup):
        eager.step(batch)
        compiled.step(batch)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.steps):
        times["eager"].append(eager.step(batch))
        times["compiled"].append(compiled.step(batch))
    tokens = batch.tokens[:, 1:].numel()
    eager_rate = tokens / statistics.median(times["eager"])
    compiled_rate = tokens / statistics.median(times["compiled"])
    return {
        "eager": eager_rate,
        "compiled": compiled_rate,
        "ratio": compiled_rate / eager_rate,
        "compile_s": compile_seconds,
        "loss_eager": eager.loss,
        "loss_compiled": compiled.loss,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._dynamo")
    torch.set_num_threads(args.threads)
    if args.quick:
        precision.COMPILE_BACKEND = "aot_eager"
    mixers = causal_mixers(args.mixers)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=generator)
    batch = Batch(tokens=tokens)
    print(
        f"torch {torch.__version__}, backend {precision.COMPILE_BACKEND}, {platform.processor()}, "
        f"threads {args.threads}, load {os.getloadavg()[0]:.2f}; d_model {args.d_model}, "
        f"{args.layers} layers, T {args.seq_len}, batch {args.batch}; median of {args.steps} "
        f"steps after {args.warmup} warm-up",
        flush=True,
    )
    print("| mixer | eager tok/s | compiled tok/s | compiled / eager | compile s | losses |")
    print("|---|---:|---:|---:|---:|---|")
    start = time.perf_counter()
    for mixer in mixers:
        try:
            r = measure(args, mixer, batch)
        except Exception as err:  # noqa: BLE001 - a mixer that does not compile is a result
            print(f"| {mixer} | failed: {type(err).__name__}: {str(err).splitlines()[0][:120]} |")
            continue
        print(
            f"| {mixer} | {r['eager']:,.0f} | {r['compiled']:,.0f} | {r['ratio']:.2f}x | "
            f"{r['compile_s']:.1f} | {r['loss_eager']:.4f} / {r['loss_compiled']:.4f} |",
            flush=True,
        )
    print(f"total {time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
