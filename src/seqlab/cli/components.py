"""`seqlab list` and `seqlab check`: the registered components with their options, and the
conformance kit on one of them."""

from __future__ import annotations

import argparse
from typing import Any

from seqlab.config import list_presets, parse_value
from seqlab.errors import ConfigError
from seqlab.harness.grid import list_experiments
from seqlab.registry import BASELINES, MIXERS, OBJECTIVES, SAMPLERS, TASKS, VALUE_HEADS
from seqlab.testing import check_mixer, check_objective, check_sampler


def cmd_list(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    if args.what in ("presets", "experiments"):
        for name in list_presets() if args.what == "presets" else list_experiments():
            print(name)
        return 0
    registry = {
        "mixers": MIXERS,
        "objectives": OBJECTIVES,
        "tasks": TASKS,
        "samplers": SAMPLERS,
        "baselines": BASELINES,
        "value_heads": VALUE_HEADS,
    }[args.what]
    width = max((len(n) for n in registry.names()), default=0)
    for entry in registry.entries():
        print(f"{entry.name:<{width}}  {entry.description}")
        if args.verbose:
            for line in entry.option_lines():
                print(f"{'':<{width}}    {line}")
    return 0


def cmd_check(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Run the conformance kit on one component; exit 0 when every invariant holds, 1 when
    one fails (the report names it), 2 on a user error (unknown name, bad path or option)."""
    options: dict[str, Any] = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes KEY=VALUE, got {item!r}")
        if key.strip() in ("only", "raise_on_failure"):
            raise ConfigError(f"--option {key.strip()} is not an option of the {args.kind}")
        options[key.strip()] = parse_value(value)
    check = {"mixer": check_mixer, "objective": check_objective, "sampler": check_sampler}[
        args.kind
    ]
    report = check(args.name, raise_on_failure=False, **options)
    print(report)
    return 0 if report.ok else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The `list` and `check` sub-commands."""
    p = sub.add_parser("list", help="list registered components")
    p.add_argument(
        "what",
        choices=[
            "mixers",
            "objectives",
            "tasks",
            "samplers",
            "baselines",
            "value_heads",
            "presets",
            "experiments",
        ],
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also list each component's options"
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "check",
        help="run the conformance kit on a mixer, objective or sampler",
        description="Check that a component keeps the invariants of its interface "
        "(seqlab.testing): exit 0 when all hold, 1 when one fails, 2 on a user error.",
    )
    p.add_argument("name", help="registered name or import path package.module:Name")
    p.add_argument("--kind", choices=["mixer", "objective", "sampler"], default="mixer")
    p.add_argument(
        "--option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="an option of the component (YAML value), repeatable",
    )
    p.set_defaults(func=cmd_check)
