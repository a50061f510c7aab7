"""`seqlab compare` and `seqlab bench`: train a grid of runs at equal budget and rank them;
time backbones across sequence lengths."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seqlab.cli.args import add_device_option, device_option, int_at_least
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.harness.bench import BenchCell, bench_table, growth_summary, plot_bench, run_bench
from seqlab.harness.compare import (
    collect,
    compare,
    compare_shard,
    has_result,
    parse_shard,
    plan,
    plan_table,
    write_csv,
)
from seqlab.harness.grid import Run, expand, is_failed, load_compare_config
from seqlab.harness.report import PLOTS_NEED, plots_available
from seqlab.harness.slurm import launch, slurm_config
from seqlab.layout import LayoutKind
from seqlab.registry import MIXERS


def cmd_compare(args: argparse.Namespace, overrides: dict[str, Any]) -> int:

    config = load_compare_config(args.experiment)
    if args.device is not None:
        device_option(args.device)
    out = Path(args.out or Path("runs") / config.name)
    shard = sweep_mode(args)
    if args.dry_run:
        print(plan_table(plan(config, shard)))
        return 0
    if args.slurm is not None:
        return submit_array("compare", args, config.slurm, out, len(expand(config)), config.name)
    if shard:
        rows = compare_shard(
            config, out, shard, workers=args.workers, retry_failed=args.retry_failed
        )
        return shard_done(args, shard, rows, out)
    plots = plots_available()
    if args.collect:
        results = collect(config, out, partial=args.partial, plots=plots)
        report_missing([r for r in expand(config) if not has_result(r, out)])
    else:
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


def sweep_mode(args: argparse.Namespace) -> tuple[int, int] | None:
    """The shard of `--shard I/N` (None without), after checking that the sweep options
    (`--shard`, `--collect`, `--partial`, `--dry-run`, `--slurm`, `--shards`) go together."""
    shard = parse_shard(args.shard) if args.shard is not None else None
    given = [
        name
        for name, on in (
            ("--collect", args.collect),
            ("--dry-run", args.dry_run),
            ("--slurm", args.slurm is not None),
        )
        if on
    ]
    if len(given) > 1 or (shard and {"--collect", "--slurm"} & set(given)):
        names = given + (["--shard"] if shard else [])
        raise ConfigError(f"{' and '.join(names)} cannot be combined")
    if args.partial and not args.collect:
        raise ConfigError("--partial only applies to --collect")
    if args.shards is not None and args.slurm is None:
        raise ConfigError("--shards only applies to --slurm (a shard is chosen with --shard I/N)")
    return shard


def shard_done(
    args: argparse.Namespace, shard: tuple[int, int], rows: list[dict[str, Any]], out: Path
) -> int:
    failed = sum(is_failed(r) for r in rows)
    print(
        f"shard {shard[0]}/{shard[1]}: {len(rows)} run(s) in {out / 'runs'} ({failed} failed); "
        f"once every shard has finished: seqlab {args.command} {args.experiment} --out {out} "
        "--collect",
        file=sys.stderr,
    )
    return 0


def report_missing(missing: list[Run]) -> None:
    """After `--collect --partial`: the runs left out of the report, on stderr."""
    if missing:
        ids = ", ".join(sorted(r.run_id for r in missing))
        print(f"report without {len(missing)} unfinished run(s): {ids}", file=sys.stderr)


def submit_array(
    command: str,
    args: argparse.Namespace,
    section: dict[str, Any] | None,
    out: Path,
    runs: int,
    name: str,
) -> int:
    """`--slurm`: submit the array job of shards and say how to collect it."""
    config = slurm_config(section, args.slurm or None, args.shards)
    jobs = launch(command, args.experiment, out, config, runs, name=f"seqlab-{name}")
    print(
        f"submitted array job {jobs[0].job_id.split('_')[0]} ({len(jobs)} task(s), logs in "
        f"{out / 'slurm'}); when it has finished: seqlab {command} {args.experiment} --out "
        f"{out} --collect",
        file=sys.stderr,
    )
    return 0


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The options that spread a sweep over machines (`compare` and `scale`)."""
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="train only shard I of N (I from 0): every N-th run by sorted run id",
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: report the runs in --out (exit 2 naming any missing run)",
    )
    p.add_argument(
        "--partial", action="store_true", help="with --collect: report without missing runs"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list every run with its tokens and training FLOPs; train and write nothing",
    )
    p.add_argument(
        "--slurm",
        nargs="?",
        const="",
        metavar="PARTITION",
        help="submit a Slurm array job of shards (settings: the config's slurm section)",
    )
    p.add_argument(
        "--shards", type=int_at_least(1), help="with --slurm: array tasks (default: one per run)"
    )


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
    add_sweep_arguments(p)
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
