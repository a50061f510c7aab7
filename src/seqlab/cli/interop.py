"""`seqlab export` and `seqlab import-hf`: seqlab models out to, and in from, Hugging Face
model directories (`seqlab.interop`; they need the optional `transformers` package)."""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import Any

from seqlab.errors import SeqlabError


def _interop(module: str) -> ModuleType:
    """`seqlab.interop.<module>`, imported when a command runs: it imports `transformers`,
    an optional dependency that the rest of the CLI does without."""
    try:
        return importlib.import_module(f"seqlab.interop.{module}")
    except ModuleNotFoundError as err:
        if err.name not in ("transformers", "tokenizers", "huggingface_hub"):
            raise
        raise SeqlabError(
            f"seqlab {module.replace('_', '-')} needs the {err.name!r} package: "
            "pip install 'seqlab[interop]'"
        ) from None


def cmd_export(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    written = _interop("export").export_hf(args.run, args.out, format=args.as_format)
    print(f"{args.out} ({written})")
    return 0


def cmd_import_hf(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    kind = _interop("import_hf").import_hf(args.dir, args.out)
    print(f"{args.out} (from {kind})")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The `export` and `import-hf` sub-commands."""
    p = sub.add_parser(
        "export",
        help="write a run's model as a Hugging Face model directory",
        description="Write a run's (or saved model's) model, config and tokenizer as a new "
        "Hugging Face directory OUT (config.json, model.safetensors, tokenizer.json) that "
        "AutoModelForCausalLM.from_pretrained reads. OUT must not exist.",
    )
    p.add_argument("run", help="run or saved-model directory")
    p.add_argument("out", help="the new output directory")
    p.add_argument("--format", choices=("hf",), default="hf", help="output format (hf)")
    p.add_argument(
        "--as",
        dest="as_format",
        default="auto",
        metavar="KIND",
        help="auto (default: the first Hugging Face family that computes the same logits, "
        "else seqlab), seqlab (SeqlabForCausalLM, any model) or a family name (llama, "
        "mamba, mamba2)",
    )
    p.set_defaults(func=cmd_export)
    p = sub.add_parser(
        "import-hf",
        help="read a local Hugging Face model directory as a seqlab model",
        description="Read a local Hugging Face model directory (config.json, safetensors, "
        "tokenizer files) into a new seqlab model directory (--out) that every seqlab "
        "command and decoder runs on. Its config.json's model_type picks the converter.",
    )
    p.add_argument("dir", help="the Hugging Face model directory")
    p.add_argument("--out", required=True, help="the new seqlab model directory")
    p.set_defaults(func=cmd_import_hf)


__all__ = ["add_parsers", "cmd_export", "cmd_import_hf"]
