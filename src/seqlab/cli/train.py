"""`seqlab train` and `seqlab eval`: train a run (torchrun-aware) and score a trained one."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from seqlab.cli.args import add_device_option, device_option, int_at_least, run_config
from seqlab.config import config_keys, load_config, to_dict
from seqlab.data.tasks import SPLITS, build_task
from seqlab.errors import ConfigError, SeqlabError
from seqlab.io import load
from seqlab.objectives import build_objective
from seqlab.train import train
from seqlab.train.dynamic_eval import dynamic_eval_run, parse_dynamic_options


def cmd_train(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    source = args.config
    if args.resume and source is None and args.out and (Path(args.out) / "config.yaml").is_file():
        source = Path(args.out) / "config.yaml"
    config = load_config(source if source is not None else "default", overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    if args.out is None:
        raise ConfigError("seqlab train needs --out DIR (the run directory)")
    summary = train(config, args.out, resume=args.resume, overwrite=args.overwrite)
    if summary.get("world_size", 1) == 1 or _is_rank_zero():
        print(json.dumps({k: v for k, v in summary.items() if k != "param_fingerprints"}))
    return 0


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_eval(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    if args.split not in SPLITS:
        raise SeqlabError(f"unknown split {args.split!r}; valid splits: {', '.join(SPLITS)}")
    outside_task = sorted(key for key in overrides if not key.startswith("task."))
    if outside_task:
        raise ConfigError(
            "seqlab eval takes only --task.* overrides (the trained model is fixed), got "
            + ", ".join(f"--{key}" for key in outside_task)
        )
    run_dir = Path(args.run)
    config = run_config(run_dir, overrides)
    device = device_option(args.device)
    if args.dynamic is not None:
        options = parse_dynamic_options(args.dynamic)
        metrics = dynamic_eval_run(
            run_dir,
            options,
            split=args.split,
            max_tokens=args.max_tokens,
            overrides=overrides,
            device=device,
        )
        print(json.dumps({"objective": config.objective.name, **metrics}))
        return 0
    model = load(run_dir, device)
    task = build_task(config)
    objective = build_objective(config.objective.name, task.vocab_size, **config.objective.options)
    if objective.model_vocab_size(task.vocab_size) != model.config.vocab_size:
        raise ConfigError(
            f"the task as overridden has vocab_size {task.vocab_size}, the model of {run_dir} "
            f"was trained on {model.config.vocab_size - objective.extra_tokens}; only overrides "
            "that keep the vocabulary can be scored"
        )
    torch.manual_seed(args.seed)
    metrics = task.evaluate(model, objective, split=args.split, max_tokens=args.max_tokens)
    print(json.dumps({"split": args.split, "objective": objective.name, **metrics}))
    return 0


def train_epilog() -> str:
    """Every config key with its default and doc, for `seqlab train --help`."""
    keys = config_keys()
    width = max(len(k.key) for k in keys) + 2
    lines = [
        "config keys (set any with --KEY VALUE, e.g. --model.d_model 256; a section's "
        "component options with --objective.KEY / --task.KEY / --model.mixer_options.NAME.KEY):"
    ]
    for key in keys:
        lines.append(f"  --{key.key:<{width}} {key.default!r:<12} {key.doc}")
    return "\n".join(lines)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The `train` and `eval` sub-commands."""
    p = sub.add_parser(
        "train",
        help="train a model (torchrun-aware)",
        epilog=train_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file or preset name (default: the 'default' preset)")
    p.add_argument("--out", help="run directory (required unless --print-config)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint (a finished run is kept)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run or saved model that --out holds (otherwise it is refused)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (preset or file plus overrides) as YAML and exit",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="NLL / bits per byte of a trained run on a split",
        description="Score a trained run on a split of its task. --task.KEY VALUE overrides "
        "score it on another setting of the task, e.g. --task.test_seq_len 1024 (length "
        "extrapolation); the vocabulary must stay the same.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="test")
    p.add_argument("--max-tokens", type=int_at_least(1), default=None)
    p.add_argument("--seed", type=int, default=0, help="seed for stochastic objectives")
    add_device_option(p, "auto", "where the model is scored (auto: a GPU when there is one)")
    p.add_argument(
        "--dynamic",
        metavar="KEY=VALUE,...",
        help="dynamic evaluation (Krause et al., 2018) of a text run: score the split as one "
        "sequence in segments, adapting the weights on each after scoring it, beside the "
        "static score of the same segments; keys lr (required), decay, segment (32), "
        "ms_batches (10), eps (2e-5), context (training seq_len - segment), e.g. "
        "--dynamic lr=1e-4,decay=0.01",
    )
    p.set_defaults(func=cmd_eval)
