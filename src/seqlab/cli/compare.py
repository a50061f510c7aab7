"""`seqlab compare` and `seqlab bench`: train a grid of runs at equal budget and rank them;
time backbones across sequence lengths."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seqlab.cli.args import add_device_option, device_option, int_at_least
from seqlab.config import ModelConfig
from seqlab.errors import SeqlabError
from seqlab.harness.bench import BenchCell, bench_table, growth_summary, plot_bench, run_bench
from seqlab.harness.compare import compare, write_csv
from seqlab.harness.grid import load_compare_config
from seqlab.harness.report import PLOTS_NEED, plots_available
from seqlab.layout import LayoutKind
from seqlab.registry import MIXERS


def cmd_compare(args: argparse.Namespace, overrides: dict[str, Any]) -> int:

    config = load_compare_config(args.experiment)
    if args.device is not None:
        device_option(args.device)
    out = Path(args.out or Path("runs") / config.name)
    plots = plots_available()
    results = compare(
        config,
        out,
        workers=args.workers,
        plots=plots,
        retry_failed=args.retry_failed,
        device=args.device,
    )
    print((out / "results.md").read_text())
    failed = sum(r["failed_runs"] for r in results)
    if failed:
        print(
            f"{failed} run(s) failed (reasons in results.md); rerun with --retry-failed to "
            "try them again",
            file=sys.stderr,
        )
    if plots:
        print(f"results: {out / 'results.csv'}, plots: {out / 'plots'}", file=sys.stderr)
    else:
        print(f"results: {out / 'results.csv'}; no plots: {PLOTS_NEED}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace, overrides: dict[str, Any]) -> int:

    mixers = (
        args.mixers.split(",")
        if args.mixers
        else [n for n in MIXERS.names() if LayoutKind.CAUSAL in MIXERS.get(n).target.layouts]
    )
    for name in mixers:
        MIXERS.get(name)
    try:
        lengths = [int(v) for v in args.lengths.split(",")]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise SeqlabError(
            f"--lengths must be integers >= 1 separated by commas, got {args.lengths!r}"
        )
    ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=1)
    cells = [
        BenchCell(
            m,
            t,
            d_model=args.d_model,
            n_layers=args.layers,
            batch_size=args.batch_size,
            device=args.device,
            threads=args.threads,
        )
        for m in mixers
        for t in lengths
    ]
    rows = run_bench(cells)
    out = Path(args.out)
    write_csv(out / "bench.csv", rows)
    plot_bench(rows, out / "bench.png")
    print(bench_table(rows))
    print(growth_summary(rows))
    print(f"table: {out / 'bench.csv'}, plot: {out / 'bench.png'}", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The `compare` and `bench` sub-commands."""
    p = sub.add_parser("compare", help="train a grid of runs at equal budget, rank them")
    p.add_argument(
        "experiment",
        nargs="?",
        default="quickstart",
        help="comparison YAML or built-in experiment (default: quickstart)",
    )
    p.add_argument("--out", help="output directory (default: runs/<name>)")
    p.add_argument("--workers", type=int, default=None, help="parallel training processes")
    add_device_option(
        p,
        None,
        "every run's train.device (default: the experiment's); with auto or cuda and several "
        "GPUs, parallel workers take one GPU each, round-robin",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="train again the runs that failed before (by default a rerun keeps them failed)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bench", help="speed and memory of backbones across sequence lengths")
    p.add_argument("--mixers", help="comma-separated mixers (default: every causal mixer)")
    p.add_argument("--lengths", default="256,1024,4096")
    p.add_argument("--d-model", type=int_at_least(1), default=128)
    p.add_argument("--layers", type=int_at_least(1), default=2)
    p.add_argument("--batch-size", type=int_at_least(1), default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int_at_least(1), default=None)
    p.add_argument("--out", default="runs/bench")
    p.set_defaults(func=cmd_bench)
