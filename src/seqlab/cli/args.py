"""Command-line plumbing shared by the commands: an argparse whose usage errors are one-line
seqlab errors, typed argument checks, `--section.key VALUE` overrides, and a run's config."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from seqlab.config import ExperimentConfig, load_config, parse_value
from seqlab.errors import CheckpointError, ConfigError, SeqlabError
from seqlab.train.dist import resolve_device


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are seqlab errors: one line, exit code 2 (through `main`),
    instead of argparse's usage text followed by the message."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise SeqlabError(f"{message} (see {self.prog} --help)")


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `low`, the range named in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def device_option(name: str) -> torch.device:
    """The device of `--device` (eval, sample, compare): auto, cpu, cuda or cuda:N."""
    try:
        return resolve_device(name)
    except ConfigError:
        raise ConfigError(
            f"--device {name!r}: expected auto, cpu, cuda or cuda:N naming an available device"
        ) from None


def add_device_option(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    parser.add_argument("--device", default=default, help=f"auto, cpu, cuda or cuda:N; {what}")


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """`--model.d_model 256 --train.lr=1e-3` -> {"model.d_model": 256, "train.lr": 0.001}."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            raise ConfigError(
                f"unrecognised argument {token!r}; overrides look like --section.key VALUE"
            )
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ConfigError(f"override {token} needs a value")
            key, value = token[2:], tokens[i + 1]
            i += 2
        overrides[key] = parse_value(value)
    return overrides


def run_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir}: not a run or model directory (no config.yaml)")
    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as err:
        raise CheckpointError(f"{run_dir / 'config.yaml'}: {err}") from None
    return load_config(run_dir / "config.yaml", overrides) if overrides else config
