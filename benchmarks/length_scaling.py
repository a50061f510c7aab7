"""Training time against sequence length at equal tokens per step: s4, hyena and Mega-chunk
against attention (issue 23).

Every mixer trains the same model around it (d_model, layers, SwiGLU MLP, tied embeddings,
float32) through seqlab's own path: the autoregressive loss, backward and an AdamW step from
`build_optimizer`. At each sequence length T the batch is tokens / T, so every step trains the
same number of positions: a mixer whose cost per sequence grows like T^p takes a step time
growing like T^(p−1). The table reports ms per step, its ratio to the smallest T's (1 =
linear), and per mixer the growth exponent p of the time per sequence (ms/step / batch),
fitted as the slope of log time vs log T over all lengths and between the two longest: about
1 for the convolutional and recurrent mixers (quasi-linear), approaching 2 for attention as
its T² mixing outgrows the linear projections and MLP.

All (mixer, T) cells are timed in interleaved rounds (the order reversed every other round)
after a warm-up, and the table shows medians over the rounds.

    PYTHONPATH=src python benchmarks/length_scaling.py            # defaults below
    PYTHONPATH=src python benchmarks/length_scaling.py --quick    # smoke test, seconds
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from seqlab.config import ModelConfig, TrainConfig
from seqlab.model import build_model
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.registry import MIXERS
from seqlab.train.loop import build_optimizer

DEFAULT_MIXERS = "s4,hyena,mega-chunk,attention"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="256,512,1024,2048,4096", help="sequence lengths T")
    p.add_argument(
        "--tokens", type=int, default=8192, help="positions per step (batch = tokens / T)"
    )
    p.add_argument(
        "--mixers",
        default=DEFAULT_MIXERS,
        help="registered mixer names, and mega-chunk (mega with --mega-chunk)",
    )
    p.add_argument("--extra", default="", help="more mixers to add to --mixers, e.g. mamba2,gla")
    p.add_argument("--mega-chunk", type=int, default=128, help="mega-chunk's `chunk` option")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per timed window")
    p.add_argument("--repeats", type=int, default=5, help="timed windows per cell (rounds)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per cell first")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch.get_num_threads(), all available cores)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: T 16, 32, 64, 128 tokens, d_model 32, 1 layer, 2 rounds of 1 step",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.tokens, args.mega_chunk = "16,32,64", 128, 16
        args.d_model, args.layers, args.heads = 32, 1, 2
        args.steps, args.repeats, args.warmup = 1, 2, 1
    try:
        args.lengths = sorted({int(t) for t in args.lengths.split(",")})
    except ValueError:
        p.error(f"--lengths must be comma-separated integers, got {args.lengths!r}")
    args.mixers = [m for m in f"{args.mixers},{args.extra}".split(",") if m]
    unknown = [m for m in args.mixers if m != "mega-chunk" and m not in MIXERS.names()]
    if unknown:
        p.error(f"unknown mixers {unknown}; registered: {', '.join(MIXERS.names())}")
    if len(args.lengths) < 2 or args.lengths[0] < 1:
        p.error("--lengths needs at least two positive lengths")
    if any(args.tokens % t for t in args.lengths):
        p.error(f"--tokens ({args.tokens}) must be a multiple of every length {args.lengths}")
    if min(args.steps, args.repeats, args.mega_chunk) < 1 or args.warmup < 0:
        p.error("--steps, --repeats and --mega-chunk must be positive, --warmup >= 0")
    return args


def model_config(name: str, args: argparse.Namespace) -> ModelConfig:
    mixer, options = name, {}
    if name == "mega-chunk":
        mixer, options = "mega", {"chunk": args.mega_chunk}
    elif name == "hyena":
        options = {"max_len": args.lengths[-1]}  # the filter's positional range spans all T
    return ModelConfig(
        mixer=mixer,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        vocab_size=256,
        mixer_options={mixer: options} if options else {},
    )


def train_step(name: str, args: argparse.Namespace) -> Callable[[int], Callable[[], None]]:
    """For one mixer: T -> a closure running one training step on tokens / T sequences of T."""
    torch.manual_seed(0)
    model = build_model(model_config(name, args)).train()
    optimizer = build_optimizer(model, TrainConfig())
    objective = Autoregressive()

    def at(length: int) -> Callable[[], None]:
        batch = Batch(torch.randint(0, 256, (args.tokens // length, length + 1)))

        def step() -> None:
            loss, _ = objective.loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    return at


def seconds_per_step(fn: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def growth_exponent(lengths: list[int], ms_per_sequence: list[float]) -> float:
    """p in time ∝ T^p: the least-squares slope of log time against log T."""
    return float(np.polyfit(np.log(lengths), np.log(ms_per_sequence), 1)[0])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cells: dict[tuple[str, int], Callable[[], None]] = {}
    for name in args.mixers:
        at = train_step(name, args)
        cells.update({(name, length): at(length) for length in args.lengths})
    load_before = load_average()
    for step in cells.values():
        for _ in range(args.warmup):
            step()
    times: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    order = list(cells)
    for r in range(args.repeats):
        for cell in order if r % 2 == 0 else order[::-1]:
            times[cell].append(seconds_per_step(cells[cell], args.steps))
    load_after = load_average()

    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()} "
        f"{os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"
    )
    print(
        f"d_model {args.d_model}, {args.layers} layers, {args.heads} heads, SwiGLU MLP, vocab "
        f"256, float32; {args.tokens} tokens per step (batch = {args.tokens} / T); forward + "
        f"backward + AdamW; {args.warmup} warm-up step(s), {args.repeats} interleaved rounds "
        f"x {args.steps} step(s), medians; mega-chunk = mega with chunk {args.mega_chunk}"
    )
    print(f"load average (1/5/15 min): before {load_before}, after {load_after}\n")
    smallest = args.lengths[0]
    print(f"| mixer | T | batch | ms/step | min | max | step / step @T={smallest} |")
    print("|---|---|---|---|---|---|---|")
    per_sequence: dict[str, list[float]] = {}
    for name in args.mixers:
        base = statistics.median(times[name, smallest])
        for length in args.lengths:
            window = times[name, length]
            ms = 1e3 * statistics.median(window)
            per_sequence.setdefault(name, []).append(ms * length / args.tokens)
            print(
                f"| {name} | {length} | {args.tokens // length} | {ms:.1f} | "
                f"{1e3 * min(window):.1f} | {1e3 * max(window):.1f} | "
                f"{ms / 1e3 / base:.2f} |"
            )
    longest = args.lengths[-2:]
    print(
        "\nGrowth exponent p of the time per sequence (∝ T^p; 1 linear, 2 quadratic), fitted "
        f"over all T and between T={longest[0]} and T={longest[1]}:\n"
    )
    print(f"| mixer | p (all T) | p ({longest[0]}→{longest[1]}) |")
    print("|---|---|---|")
    for name, ms in per_sequence.items():
        local = math.log(ms[-1] / ms[-2]) / math.log(longest[1] / longest[0])
        print(f"| {name} | {growth_exponent(args.lengths, ms):.2f} | {local:.2f} |")


if __name__ == "__main__":
    main()
