"""`seqlab train | eval | sample | compare | bench | check | list`: plain functions behind argparse.

User errors (unknown names, bad configs, missing or corrupt checkpoints) print one line
`seqlab: error: ...` and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml

from seqlab import __version__
from seqlab.config import (
    ExperimentConfig,
    ModelConfig,
    config_keys,
    list_presets,
    load_config,
    parse_value,
    to_dict,
)
from seqlab.data.tasks import SPLITS, build_task
from seqlab.data.tokenizers import load_tokenizer
from seqlab.errors import CheckpointError, ConfigError, SeqlabError
from seqlab.harness.bench import BenchCell, bench_table, growth_summary, plot_bench, run_bench
from seqlab.harness.compare import compare, write_csv
from seqlab.harness.grid import list_experiments, load_compare_config
from seqlab.harness.report import PLOTS_NEED, plots_available
from seqlab.io import load
from seqlab.layout import LayoutKind
from seqlab.model import Model
from seqlab.objectives import build_objective
from seqlab.registry import MIXERS, OBJECTIVES, SAMPLERS, TASKS
from seqlab.sampling import check_paradigm, generate
from seqlab.testing import check_mixer, check_objective, check_sampler
from seqlab.train import train


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


def _run_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir}: not a run or model directory (no config.yaml)")
    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as err:
        raise CheckpointError(f"{run_dir / 'config.yaml'}: {err}") from None
    return load_config(run_dir / "config.yaml", overrides) if overrides else config


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
    config = _run_config(run_dir, overrides)
    model = load(run_dir)
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


# `seqlab sample` flags are shorthands for sampler options: flag dest -> option. A flag is
# passed only when given and only to a sampler that takes its option (`--stop` also passes
# the tokenizer's decode as `decode_fn`; `--stream` a printer as `stream`). Any option, also
# one without a flag, is reachable as `--sampler.KEY VALUE`.
SAMPLE_FLAGS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
    "stop": "stop_strings",
    "num_beams": "num_beams",
    "num_groups": "num_groups",
    "diversity_penalty": "diversity_penalty",
    "length_penalty": "length_penalty",
    "draft": "draft_model",
    "num_draft_tokens": "num_draft_tokens",
    "steps": "steps",
    "block_size": "block_size",
    "threshold": "threshold",
    "guidance": "guidance",
    "condition": "condition",
}
# Options that name a decoding method: given to a sampler without them, they choose the
# sampler that has them (first match wins: --draft before --num-groups before --num-beams).
SAMPLE_SELECTING = {"draft_model": "speculative", "num_groups": "diverse_beam", "num_beams": "beam"}
# --temperature 0 decodes greedily: AR samplers get no sampling filters and do_sample=False;
# an AR sampler that always samples (it takes temperature but has no do_sample) becomes this.
SAMPLE_GREEDY = "greedy"
SAMPLE_FILTERS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "seed")


class SampleParser(ArgumentParser):
    """The `seqlab sample` parser: takes `--sampler.KEY VALUE` (sampler options) out of the
    arguments before parsing the flags, and lists every sampler's options in its help."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        tokens = list(sys.argv[1:] if args is None else args)
        rest, options, i = [], [], 0
        while i < len(tokens):
            token = tokens[i]
            if token.startswith("--sampler."):
                width = 1 if "=" in token or i + 1 == len(tokens) else 2
                options.extend(tokens[i : i + width])
                i += width
            else:
                rest.append(token)
                i += 1
        namespace, extras = super().parse_known_args(rest, namespace)
        namespace.sampler_options = options
        return namespace, extras

    def format_help(self) -> str:
        self.epilog = sampler_help()
        return super().format_help()


def sampler_help() -> str:
    """The epilog of `seqlab sample --help`: the flag rules and every sampler's options with
    their defaults, read from the registry."""
    lines = [
        "Flags are shorthands for sampler options, passed only to a sampler that takes the "
        "option (--top-k -> top_k, --stop -> stop_strings, --draft -> draft_model, ...). Any "
        "option is set with --sampler.KEY VALUE (YAML values); an option that takes a model "
        "takes a run directory. --draft, --num-groups and --num-beams choose "
        + ", ".join(SAMPLE_SELECTING.values())
        + " when the sampler lacks them; --temperature 0 decodes greedily (do_sample=False, "
        f"no sampling filters; an autoregressive sampler that always samples becomes "
        f"{SAMPLE_GREEDY}).",
        "",
        "samplers and their options (defaults):",
    ]
    lines = textwrap.wrap(lines[0], 96) + lines[1:]
    for entry in SAMPLERS.entries():
        title = f"{entry.name} ({entry.declared('paradigm')}): {entry.description}"
        lines.extend(textwrap.wrap(title, 96, initial_indent="  ", subsequent_indent="    "))
        lines.extend(" " * 6 + line for line in entry.option_lines() or ["no options"])
    return "\n".join(lines)


def diffusion_options(entry: Any, config: ExperimentConfig, vocab_size: int) -> dict[str, Any]:
    """What the run itself supplies to a sampler that takes it: its own objective and the
    block size it was trained with (diffusion samplers)."""
    accepted = entry.parameters()
    supplied: dict[str, Any] = {}
    if "objective" in accepted:
        options = config.objective.options
        supplied["objective"] = build_objective(config.objective.name, vocab_size, **options)
    block_size = config.objective.options.get("block_size")
    if "block_size" in accepted and block_size is not None:
        supplied["block_size"] = block_size
    return supplied


def _takes_model(param: Any) -> bool:
    """Whether a sampler option's annotation is a model (its value on the command line is a
    run directory to load)."""
    annotation = param.annotation
    if isinstance(annotation, str):
        return annotation.split("|")[0].strip() == "Model"
    return isinstance(annotation, type) and issubclass(annotation, Model)


def cmd_sample(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    run_dir = Path(args.run)
    explicit = {
        key.split(".", 1)[1]: value
        for key, value in parse_overrides(getattr(args, "sampler_options", [])).items()
    }
    flags = {
        option: getattr(args, dest)
        for dest, option in SAMPLE_FLAGS.items()
        if getattr(args, dest) is not None
    }
    entry = SAMPLERS.get(args.sampler)
    for option, sampler in SAMPLE_SELECTING.items():
        if option in flags and option not in entry.parameters():
            entry = SAMPLERS.get(sampler)
            break
    autoregressive = entry.declared("paradigm") == "ar"
    greedy = autoregressive and flags.get("temperature") == 0
    if greedy:
        flags = {k: v for k, v in flags.items() if k not in SAMPLE_FILTERS}
        if "temperature" in entry.parameters() and "do_sample" not in entry.parameters():
            entry = SAMPLERS.get(SAMPLE_GREEDY)
    entry.check_options(explicit)
    accepted = entry.parameters()

    config = _run_config(run_dir)
    check_paradigm(entry, config.objective.name)
    model = load(run_dir)
    tokenizer = load_tokenizer(config.data.tokenizer, run_dir)
    prompts = [tokenizer.encode(text) for text in args.prompt]
    if not all(prompts):
        raise SeqlabError("--prompt must not be empty")
    options = diffusion_options(entry, config, tokenizer.vocab_size)
    options.update({k: v for k, v in flags.items() if k in accepted})
    if "stop_strings" in options and "decode_fn" in accepted:
        options["decode_fn"] = tokenizer.decode
    if autoregressive and "do_sample" in accepted:
        options["do_sample"] = not greedy
    options.update(explicit)
    for name, value in options.items():
        if isinstance(value, str | Path) and _takes_model(accepted[name]):
            options[name] = load(Path(value))
    missing = [name for name, p in accepted.items() if p.default is p.empty and name not in options]
    if missing:
        shorthands = {option: dest for dest, option in SAMPLE_FLAGS.items()}
        needs = ", ".join(
            f"--sampler.{name} VALUE"
            + (f" (or --{shorthands[name].replace('_', '-')})" if name in shorthands else "")
            for name in missing
        )
        raise SeqlabError(f"sampler {entry.name!r} needs {needs}")
    printed = [""]  # the text streamed so far (one prompt only)
    if args.stream and len(prompts) == 1 and "stream" in accepted:
        generated: list[int] = []

        def stream(new: list[list[int]]) -> None:
            generated.extend(new[0])
            text = tokenizer.decode(prompts[0] + generated)
            print(text[len(printed[0]) :], end="", flush=True)
            printed[0] = text

        options["stream"] = stream
    out = generate(
        model, prompts, max_new_tokens=args.max_new_tokens, sampler=entry.name, **options
    )
    texts = [out.tokens[i, : int(out.lengths[i])].tolist() for i in range(len(prompts))]
    print("\n\n".join(tokenizer.decode(text) for text in texts)[len(printed[0]) :])
    new_tokens = sum(len(text) - len(ids) for text, ids in zip(texts, prompts, strict=True))
    rate = new_tokens / max(out.seconds, 1e-9)
    extra = "" if out.acceptance is None else f", acceptance {out.acceptance:.2f}"
    print(
        f"[{new_tokens} tokens, {out.nfe} forward passes, {rate:.1f} tokens/s{extra}]",
        file=sys.stderr,
    )
    return 0


def cmd_compare(args: argparse.Namespace, overrides: dict[str, Any]) -> int:

    config = load_compare_config(args.experiment)
    out = Path(args.out or Path("runs") / config.name)
    plots = plots_available()
    results = compare(
        config, out, workers=args.workers, plots=plots, retry_failed=args.retry_failed
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


def cmd_list(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    if args.what in ("presets", "experiments"):
        for name in list_presets() if args.what == "presets" else list_experiments():
            print(name)
        return 0
    registry = {"mixers": MIXERS, "objectives": OBJECTIVES, "tasks": TASKS, "samplers": SAMPLERS}[
        args.what
    ]
    width = max((len(n) for n in registry.names()), default=0)
    for entry in registry.entries():
        print(f"{entry.name:<{width}}  {entry.description}")
        if args.verbose:
            for line in entry.option_lines():
                print(f"{'':<{width}}    {line}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="seqlab",
        description="Train, evaluate, sample and compare sequence models.",
        epilog="Config overrides: --section.key VALUE, e.g. --model.d_model 256.",
    )
    parser.add_argument("--version", action="version", version=f"seqlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "sample",
        help="continue a text prompt with a trained run",
        description="Continue text prompts with a trained run. Sampler options: --sampler.KEY "
        "VALUE, or the flags below, which are passed to a sampler that takes the option.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.__class__ = SampleParser  # takes --sampler.KEY VALUE; its help lists sampler options
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--prompt",
        required=True,
        action="append",
        help="text to continue; repeat for a batch of prompts of any lengths",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int_at_least(0),
        default=100,
        help="tokens to generate per prompt (default 100, at most 1000000)",
    )
    p.add_argument(
        "--sampler",
        default="sample",
        help="a sampler listed below or an import path package.module:function (default: sample)",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="default 1.0; 0 decodes greedily")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--typical-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop once the continuation contains TEXT (repeatable)",
    )
    p.add_argument("--num-beams", type=int, default=None, help="beam search with N beams")
    p.add_argument("--num-groups", type=int, default=None, help="diverse beam search groups")
    p.add_argument("--diversity-penalty", type=float, default=None)
    p.add_argument("--length-penalty", type=float, default=None)
    p.add_argument("--draft", metavar="DIR", help="speculative decoding with this draft run")
    p.add_argument("--num-draft-tokens", type=int, default=None)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--steps", type=int, default=None, help="diffusion: denoising steps")
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="diffusion: semi-autoregressive block size (default: the run's)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="confidence sampler: unmask every position above this probability",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="diffusion: classifier-free guidance scale (needs --condition)",
    )
    p.add_argument("--condition", type=int, default=None, help="diffusion: class label")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("compare", help="train a grid of runs at equal budget, rank them")
    p.add_argument(
        "experiment",
        nargs="?",
        default="quickstart",
        help="comparison YAML or built-in experiment (default: quickstart)",
    )
    p.add_argument("--out", help="output directory (default: runs/<name>)")
    p.add_argument("--workers", type=int, default=None, help="parallel training processes")
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

    p = sub.add_parser("list", help="list registered components")
    p.add_argument(
        "what", choices=["mixers", "objectives", "tasks", "samplers", "presets", "experiments"]
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
