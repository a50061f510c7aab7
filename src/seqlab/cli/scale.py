"""`seqlab scale`: train a scaling ladder and fit, check and plot each backbone's curve."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from seqlab.cli.args import int_at_least
from seqlab.cli.compare import add_sweep_arguments, shard_done, submit_array, sweep_mode
from seqlab.harness.compare import plan_table
from seqlab.harness.ladder import expand_ladder, load_scale_config, out_dir
from seqlab.harness.report import PLOTS_NEED, plots_available
from seqlab.harness.scale import ladder_plan, scale, scale_shard


def cmd_scale(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    config = load_scale_config(args.experiment)
    out = out_dir(config, args.out)
    shard = sweep_mode(args)
    if args.dry_run:
        print(plan_table(ladder_plan(config, shard)))
        return 0
    if args.slurm is not None:
        runs = len(expand_ladder(config))
        return submit_array("scale", args, config.compare.slurm, out, runs, config.name)
    if shard:
        rows = scale_shard(config, out, shard, workers=args.workers, retry_failed=args.retry_failed)
        return shard_done(args, shard, rows, out)
    plots = plots_available()
    tasks = scale(
        config,
        out,
        workers=args.workers,
        plots=plots,
        retry_failed=args.retry_failed,
        collect=args.collect,
        partial=args.partial,
    )
    print((out / "scaling.md").read_text())
    skipped = [t.task for t in tasks if t.report is None]
    if skipped:
        print(f"no fit for {', '.join(skipped)} (reasons in scaling.md)", file=sys.stderr)
    where = f"plots: {out / 'plots'}" if plots else f"no plots: {PLOTS_NEED}"
    print(f"fits: {out / 'scaling.json'}, {where}", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The `scale` sub-command."""
    p = sub.add_parser("scale", help="train a ladder of sizes x budgets, fit scaling laws")
    p.add_argument(
        "experiment",
        nargs="?",
        default="scaling-quickstart",
        help="ladder YAML or built-in ladder (default: scaling-quickstart)",
    )
    p.add_argument("--out", help="output directory (default: runs/<name>)")
    p.add_argument("--workers", type=int_at_least(1), default=None, help="parallel trainings")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="train again the runs that failed before (by default a rerun keeps them failed)",
    )
    add_sweep_arguments(p)
    p.set_defaults(func=cmd_scale)
