"""Dynamic evaluation (Krause et al., 2018) against static evaluation, per backbone.

For each run directory given (without any, three runs it trains here on the built-in corpus:
attention, mamba2 and gated_deltanet, the `default` preset for --steps steps, into --out), it
reads a split of the run's text as one sequence and scores it in segments twice with the same
segmentation and carried state: statically, and adapting the weights on each segment after
scoring it (`seqlab.train.dynamic_eval`, the RMS update with decay to the trained weights). It
prints static and dynamic bits per byte and the gain, one row per run and --dynamic setting
(the `seqlab eval RUN --dynamic` syntax; repeat it for a grid). Pick lr and decay on the
validation split, then report the test split with them:

    PYTHONPATH=src python benchmarks/dynamic_eval.py RUN_A RUN_B RUN_C --split validation \\
        --dynamic lr=1e-5,decay=0.01 --dynamic lr=3e-5,decay=0.01 --dynamic lr=1e-4,decay=0.01
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from seqlab.config import load_config
from seqlab.train import train
from seqlab.train.dynamic_eval import dynamic_eval_run, parse_dynamic_options

MIXERS = ("attention", "mamba2", "gated_deltanet")
DEFAULT_GRID = ("lr=1e-5,decay=0.01", "lr=3e-5,decay=0.01", "lr=1e-4,decay=0.01")
QUICK = {
    "model.d_model": 32,
    "model.n_layers": 2,
    "model.n_heads": 2,
    "data.seq_len": 32,
    "train.batch_size": 4,
    "train.eval_tokens": 256,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="trained text run directories")
    p.add_argument(
        "--dynamic",
        action="append",
        help=f"KEY=VALUE,... as for seqlab eval --dynamic (repeatable; default {DEFAULT_GRID})",
    )
    p.add_argument("--split", default="test")
    p.add_argument("--max-tokens", type=int, default=None, help="targets scored (default all)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, default=Path("runs/bench_dynamic_eval"))
    p.add_argument("--steps", type=int, default=1000, help="training steps of the runs made here")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny runs and budget (smoke test)")
    return p.parse_args(argv)


def train_runs(args: argparse.Namespace) -> list[Path]:
    """The three backbones on the built-in corpus (reused when already trained)."""
    runs = []
    steps = 3 if args.quick else args.steps
    for mixer in MIXERS:
        out = args.out / mixer
        if not (out / "summary.json").is_file():
            overrides = {"model.mixer": mixer, "train.steps": steps, "train.eval_every": steps}
            overrides |= {"train.device": args.device} | (QUICK if args.quick else {})
            train(load_config("default", overrides), out, progress=False)
        runs.append(out)
    return runs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = args.dynamic or (["lr=1e-4,segment=16,ms_batches=1"] if args.quick else DEFAULT_GRID)
    settings = [parse_dynamic_options(text) for text in grid]
    max_tokens = 256 if args.quick and args.max_tokens is None else args.max_tokens
    runs = args.runs or train_runs(args)
    print(f"split {args.split}, {max_tokens or 'all'} tokens, device {args.device}\n")
    print("| run | mixer | lr | decay | segment | static bpb | dynamic bpb | gain | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        model = load_config(run / "config.yaml").model
        mixer = "+".join(model.layers) if model.layers else model.mixer
        for options in settings:
            start = time.perf_counter()
            m = dynamic_eval_run(
                run, options, split=args.split, max_tokens=max_tokens, device=args.device
            )
            seconds = time.perf_counter() - start
            print(
                f"| {run.name} | {mixer} | {m['lr']:g} | {m['decay']:g} | {m['segment']} | "
                f"{m['static_bits_per_byte']:.4f} | {m['dynamic_bits_per_byte']:.4f} | "
                f"{m['gain_bits_per_byte']:+.4f} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
