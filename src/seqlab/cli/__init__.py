"""`seqlab train | eval | sample | compare | bench | scale | check | list | plot-mixing |
export | import-hf`: plain functions behind argparse, one module per command group (`train`,
`sample`, `compare`, `scale`, `components`, `analysis`, `interop`), assembled here.

User errors (unknown names, bad configs, missing or corrupt checkpoints, bad arguments) print
one line `seqlab: error: ...` and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from seqlab import __version__
from seqlab.cli import analysis, compare, components, interop, sample, scale, train
from seqlab.cli.args import ArgumentParser, parse_overrides
from seqlab.errors import ConfigError, SeqlabError

__all__ = ["build_parser", "main", "parse_overrides"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="seqlab",
        description="Train, evaluate, sample and compare sequence models.",
        epilog="Config overrides: --section.key VALUE, e.g. --model.d_model 256.",
    )
    parser.add_argument("--version", action="version", version=f"seqlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (train, sample, compare, scale, components, analysis, interop):
        commands.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        overrides = parse_overrides(rest)
        if overrides and args.command not in ("train", "eval"):
            raise ConfigError(f"seqlab {args.command} takes no config overrides")
        return args.func(args, overrides)
    except SeqlabError as err:
        print(f"seqlab: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`seqlab list mixers | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
