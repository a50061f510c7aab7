"""`seqlab plot-mixing`: heatmaps of the implicit attention maps of a trained run's layers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from seqlab.analysis import mixing_matrix, mixing_mixers
from seqlab.cli.args import run_config
from seqlab.data.tokenizers import load_tokenizer
from seqlab.errors import SeqlabError
from seqlab.files import atomic_replace
from seqlab.harness.report import pyplot
from seqlab.io import load

MAX_TOKENS = 256  # a T×T map per head: beyond this the cells are not readable
LABELLED_TOKENS = 32  # token labels on the axes up to this length
DEFAULT_HEADS = 8


def parse_layers(text: str, n_layers: int) -> list[int]:
    """`all` or a comma-separated list of layer indices."""
    if text == "all":
        return list(range(n_layers))
    return [_index(part, n_layers, "--layer", "layer") for part in text.split(",")]


def parse_heads(text: str | None, n_heads: int) -> list[int]:
    """`all`, a comma-separated list of head indices, or None: the first `DEFAULT_HEADS`."""
    if text is None:
        return list(range(min(n_heads, DEFAULT_HEADS)))
    if text == "all":
        return list(range(n_heads))
    return [_index(part, n_heads, "--heads", "head") for part in text.split(",")]


def _index(text: str, count: int, flag: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SeqlabError(
            f"{flag} takes 'all' or integers separated by commas, got {text!r}"
        ) from None
    if not 0 <= value < count:
        raise SeqlabError(f"{flag}: {what} {value} is outside 0 … {count - 1}")
    return value


def cmd_plot_mixing(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    run_dir, out = Path(args.run), Path(args.out)
    if out.exists() and not args.overwrite:
        raise SeqlabError(f"{out} exists; pass --overwrite to replace it")
    config = run_config(run_dir)
    model = load(run_dir)
    tokenizer = load_tokenizer(config.data.tokenizer, run_dir)
    ids = tokenizer.encode(args.text)
    if not 1 <= len(ids) <= MAX_TOKENS:
        raise SeqlabError(f"--text must encode to 1 … {MAX_TOKENS} tokens, got {len(ids)}")
    layers = parse_layers(args.layer, len(model.blocks))
    if args.layer == "all":
        names = {model.blocks[i].mixer_name for i in layers}
        layers = [i for i in layers if model.blocks[i].mixer.linear_in_values]
        if not layers:
            raise SeqlabError(
                f"no layer of this run has a mixing matrix (mixers {', '.join(sorted(names))}); "
                f"mixers with one: {', '.join(mixing_mixers())}"
            )
    maps = {layer: mixing_matrix(model, [ids], layer).head_matrix()[0] for layer in layers}
    heads = {layer: parse_heads(args.heads, matrix.shape[0]) for layer, matrix in maps.items()}
    labels = [tokenizer.decode([i]) for i in ids] if len(ids) <= LABELLED_TOKENS else None
    plot_mixing(out, maps, heads, labels, log=args.log)
    print(out)
    return 0


def plot_mixing(
    out: Path,
    maps: dict[int, torch.Tensor],
    heads: dict[int, list[int]],
    labels: list[str] | None,
    *,
    log: bool = False,
) -> None:
    """One row of heatmaps per layer (`maps[layer]` `[H, T, T]`), one column per head; a
    diverging colour scale centred on 0 where a map has negative entries; `log`: a
    logarithmic scale (symmetric about 0 for signed maps)."""
    plt = pyplot()
    from matplotlib import colors

    columns = max(len(h) for h in heads.values())
    side = 2.4 if labels is None else max(2.4, 0.16 * len(labels) + 1.0)
    fig, axes = plt.subplots(
        len(maps), columns, figsize=(side * columns, side * len(maps)), squeeze=False
    )
    for row, (layer, matrix) in enumerate(maps.items()):
        matrix = matrix.double().cpu()
        for column in range(columns):
            ax = axes[row, column]
            if column >= len(heads[layer]):
                ax.axis("off")
                continue
            head = heads[layer][column]
            cells = matrix[head].numpy()
            peak = float(abs(cells).max()) or 1.0
            signed = bool((cells < 0).any())
            if log:
                norm = colors.SymLogNorm(peak * 1e-3, vmin=-peak if signed else 0, vmax=peak)
            elif signed:
                norm = colors.Normalize(-peak, peak)
            else:
                norm = colors.Normalize(0, peak)
            image = ax.imshow(cells, cmap="RdBu_r" if signed else "viridis", norm=norm)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            if labels is None:
                ax.set_xlabel("source s", fontsize=7)
                ax.set_ylabel("target t", fontsize=7)
            else:
                ticks = range(len(labels))
                ax.set_xticks(ticks, [repr(t)[1:-1] for t in labels], rotation=90, fontsize=6)
                ax.set_yticks(ticks, [repr(t)[1:-1] for t in labels], fontsize=6)
    fig.tight_layout()
    try:
        atomic_replace(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The `plot-mixing` sub-command."""
    p = sub.add_parser(
        "plot-mixing",
        help="plot the implicit attention maps of a trained run's layers",
        description="Heatmaps of the T×T matrix (causal, or full for hydra) that each head of "
        "a layer applies to its values for one text (softmax attention's probabilities, the "
        "implicit attention of linear recurrences and SSMs). Mixers with a matrix: "
        + ", ".join(mixing_mixers()),
    )
    p.add_argument("run", help="run or saved-model directory")
    p.add_argument("--text", required=True, help=f"the input text (at most {MAX_TOKENS} tokens)")
    p.add_argument(
        "--layer",
        default="all",
        help="layer index, comma-separated indices, or 'all' (default: every layer that has "
        "a matrix)",
    )
    p.add_argument(
        "--heads",
        default=None,
        help=f"head indices (comma-separated) or 'all' (default: the first {DEFAULT_HEADS}; "
        "mamba-style mixers have one head per inner channel)",
    )
    p.add_argument("--out", default="mixing.png", help="PNG file to write (default mixing.png)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--log", action="store_true", help="logarithmic colour scale")
    p.set_defaults(func=cmd_plot_mixing)


__all__ = ["add_parsers", "cmd_plot_mixing", "plot_mixing"]
