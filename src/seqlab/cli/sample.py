"""`seqlab sample`: continue text prompts with a trained run, through any sampler."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqlab.cli.args import (
    ArgumentParser,
    add_device_option,
    device_option,
    int_at_least,
    parse_overrides,
    run_config,
)
from seqlab.config import ExperimentConfig, parse_value
from seqlab.data.tokenizers import load_tokenizer
from seqlab.errors import SeqlabError
from seqlab.io import load
from seqlab.model import Model
from seqlab.objectives import build_objective
from seqlab.registry import SAMPLERS
from seqlab.sampling import check_paradigm, generate

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
    "kv_cache": "kv_cache",
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

    config = run_config(run_dir)
    check_paradigm(entry, config.objective.name)
    device = device_option(args.device)
    model = load(run_dir, device)
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
            options[name] = load(Path(value), device)
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The `sample` sub-command."""
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
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="default: the sampler's own (1.0 for AR sampling); 0 decodes greedily",
    )
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
    add_device_option(p, "auto", "where the model (and a draft) runs (auto: a GPU if any)")
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
    p.add_argument(
        "--kv-cache",
        type=parse_value,
        default=None,
        metavar="YAML",
        help="bounded KV cache of attention, e.g. '{policy: sink, budget: 256, sinks: 4}' "
        "(policies: exact, window, sink, h2o, cluster, infllm)",
    )
    p.set_defaults(func=cmd_sample)
