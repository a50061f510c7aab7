"""Generation paradigms side by side: NLL at equal training budget, and sampling speed.

Trains `ar`, `block_diffusion` with blocks 4 and 16, and `masked_diffusion` on the built-in
corpus (`stdlib`, byte tokens) with the same model, steps, batch and learning rate, then
prints the test NLL of each in nats per token and bits per byte (an ELBO bound, "≤", for
the diffusion paradigms, the mean of `--eval-repeats` Monte Carlo estimates ± its standard
error; every paradigm scores all L tokens except `ar`, which takes the first as given).
BD3-LM (LM1B) reports AR 22.9 < block-4 28.2 < masked 31.8 perplexity. Block diffusion
trains with BD3-LM's clipped schedules (`clip: auto`); `--no-clip` trains the block cells on
the unclipped ELBO instead.

One seed orders nothing: `--seeds N` trains every cell at seeds 0..N-1 and prints each NLL as
mean ± std over seeds with the 95% Student-t interval of the mean, then tests each paradigm
against the next-ranked one (Welch's t-test, `seqlab.harness.stats`). Read the ordering with
its intervals: two paradigms whose difference is "not separated at 95%" are not ordered by
this run. Measured with five seeds (docs/results.md, "The paradigm ordering across seeds":
attention d_model 128, 600 steps, sequence 128, stdlib corpus; nats per token, 95% CI):
AR 1.500 [1.486, 1.514] < block-4 ≤ 2.153 [2.124, 2.183] < block-16 ≤ 2.268 [2.212, 2.324]
< masked ≤ 2.459 [2.373, 2.544], each adjacent pair separated (Welch p ≤ 0.002); unclipped,
block-16 (≤ 2.397) and masked are not (p = 0.12).

Then it samples continuations of test prompts: AR ancestral sampling (KV cache) against
block-diffusion sampling of the `--sample-cells` models (default block-16): `ancestral`,
and `confidence` (Fast-dLLM threshold, KV cache of finished blocks; argmax candidates at
T=0, drawn ones at each other `--temperatures` value). It reports tokens/s, NFE, and sample
quality as the AR model's NLL of the continuations (lower is better; the AR model judging
its own samples favours AR) beside the share of distinct 4-grams (greedy decoders reach a
low NLL by repeating themselves). Each row is compared with AR at its own temperature.

    PYTHONPATH=src python benchmarks/paradigms.py             # defaults below
    PYTHONPATH=src python benchmarks/paradigms.py --quick     # smoke test
    PYTHONPATH=src python benchmarks/paradigms.py --mixer gla # a recurrent backbone
    PYTHONPATH=src python benchmarks/paradigms.py --seeds 5   # the ordering with intervals
    PYTHONPATH=src python benchmarks/paradigms.py --seeds 5 --no-clip

`--cells ar block-16-from-ar` adds AR-to-block-diffusion conversion (Fast-dLLM v2, SDAR):
a shifted block-diffusion model started from the AR cell's weights.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

import seqlab
from seqlab.config import ExperimentConfig, from_dict
from seqlab.harness.stats import mean_interval, separation_lines, standard_error
from seqlab.objectives import Batch, build_objective
from seqlab.sampling.ar import Generation
from seqlab.train.loop import RunParts, build_run, train

CELLS = [
    ("ar", "ar", {}),
    ("block-4", "block_diffusion", {"block_size": 4}),
    ("block-16", "block_diffusion", {"block_size": 16}),
    ("masked", "masked_diffusion", {}),
]
# AR-to-block-diffusion conversion (Fast-dLLM v2, SDAR): shifted x̂_0, started from the `ar`
# cell's weights and trained `--steps` more at `--convert-lr`. Not in the default cells.
CONVERTED = [
    ("block-4-from-ar", "block_diffusion", {"block_size": 4, "shift": True}),
    ("block-8-from-ar", "block_diffusion", {"block_size": 8, "shift": True}),
    ("block-16-from-ar", "block_diffusion", {"block_size": 16, "shift": True}),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--mixer",
        default="attention",
        help="backbone of every paradigm (recurrent ones cache their state in block sampling)",
    )
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--convert-lr",
        type=float,
        default=1e-3,
        help="learning rate of the *-from-ar cells (block diffusion started from the AR cell)",
    )
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--eval-samples", type=int, default=8, help="t draws per diffusion ELBO")
    p.add_argument(
        "--eval-repeats",
        type=int,
        default=3,
        help="independent ELBO estimates per diffusion cell (their standard error is printed)",
    )
    p.add_argument("--prompts", type=int, default=16, help="sampled continuations")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument(
        "--sample-batch",
        type=int,
        default=None,
        help="prompts per sampling call (default: all at once; 1 measures single-prompt "
        "latency, where each prompt's parallelism is its own)",
    )
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[0.9, 0.7, 0.5],
        help="confidence sampler thresholds to compare",
    )
    p.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[0.0, 1.0],
        help="confidence sampler temperatures (0: argmax candidates); each row is compared "
        "with AR at its own temperature (AR greedy at 0)",
    )
    p.add_argument(
        "--cells",
        nargs="+",
        choices=[label for label, _, _ in CELLS + CONVERTED],
        default=[label for label, _, _ in CELLS],
        help="paradigms to train and evaluate (sampling needs ar and a block cell)",
    )
    p.add_argument(
        "--sample-cells",
        nargs="+",
        choices=[label for label, name, _ in CELLS + CONVERTED if name == "block_diffusion"],
        default=["block-16"],
        help="block-diffusion cells whose samplers are compared with AR sampling",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train every cell at seeds 0..N-1: NLL mean ± std, 95%% t interval, and whether "
        "each paradigm is separated from the next (Welch's t-test)",
    )
    p.add_argument(
        "--no-clip",
        action="store_true",
        help="block diffusion on the unclipped ELBO (clip: null) instead of BD3-LM's clipped "
        "schedules (clip: auto)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--out",
        type=str,
        default=None,
        help="run folder (default: a temp dir); finished runs in it are reused",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings, a smoke test")
    args = p.parse_args(argv)
    if args.eval_repeats < 1:
        p.error(f"--eval-repeats must be at least 1, got {args.eval_repeats}")
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.quick:
        args.steps, args.d_model, args.layers, args.seq_len = 20, 32, 1, 32
        args.eval_tokens, args.prompts, args.prompt_len, args.new_tokens = 1024, 2, 8, 16
    return args


def experiment(
    args: argparse.Namespace, name: str, options: dict, seed: int = 0
) -> ExperimentConfig:
    if name == "block_diffusion" and args.no_clip:
        options = {**options, "clip": None}
    return from_dict(
        ExperimentConfig,
        {
            "model": {
                "mixer": args.mixer,
                "d_model": args.d_model,
                "n_layers": args.layers,
                "n_heads": args.heads,
            },
            "objective": {"name": name, **options},
            "task": {"name": "text"},
            "data": {"corpus": "stdlib", "seq_len": args.seq_len},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch,
                "lr": args.lr,
                "eval_every": args.steps,
                "eval_tokens": 1024,
                "checkpoint_every": args.steps,
                "log_every": max(args.steps // 10, 1),
                "threads": args.threads,
                "device": "cpu",
                "seed": seed,
            },
        },
    )


def evaluate(
    parts: RunParts, model: seqlab.model.Model, args: argparse.Namespace
) -> dict[str, float]:
    """Test metrics; a bound (diffusion ELBO) is the mean of `--eval-repeats` estimates under
    seeds 0, 1, ..., with its standard error as `nll_stderr` (the first alone for one repeat)."""
    repeats = args.eval_repeats if parts.objective.bound else 1
    estimates = []
    for seed in range(repeats):
        torch.manual_seed(seed)
        estimates.append(
            parts.task.evaluate(model, parts.objective, split="test", max_tokens=args.eval_tokens)
        )
    metrics = dict(estimates[0])
    if repeats > 1:
        for key in ("nll", "bits_per_byte"):
            metrics[key] = statistics.fmean(e[key] for e in estimates)
        metrics["nll_stderr"] = standard_error([e["nll"] for e in estimates])
    return metrics


class Sampled(NamedTuple):
    tokens: torch.Tensor
    nfe: float  # mean model calls per batch
    seconds: float


def in_batches(
    run: Callable[[torch.Tensor, int], Generation], prompts: torch.Tensor, size: int
) -> Sampled:
    """`run(prompts, seed)` over the prompts `size` at a time, batch k with seed k: every
    continuation, the mean NFE per batch and the summed wall time."""
    starts = range(0, prompts.shape[0], size)
    outs = [run(prompts[i : i + size], k) for k, i in enumerate(starts)]
    return Sampled(
        torch.cat([o.tokens for o in outs]),
        statistics.fmean(o.nfe for o in outs),
        sum(o.seconds for o in outs),
    )


def judged_nll(judge: seqlab.model.Model, tokens: torch.Tensor, prompt_len: int) -> float:
    """The AR judge's NLL per token of the continuation after the prompt."""
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, prompt_len:] = True
    return build_objective("ar").nll(judge, Batch(tokens, mask)).per_token


def distinct(tokens: torch.Tensor, n: int = 4) -> float:
    """Distinct n-grams / all n-grams of the continuations (low: repetitive text)."""
    grams = [tuple(row[i : i + n]) for row in tokens.tolist() for i in range(len(row) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


@torch.no_grad()
def confident_share(
    judge: seqlab.model.Model, tokens: torch.Tensor, thresholds: list[float]
) -> dict[float, float]:
    """Share of next-token predictions of the AR `judge` on `tokens [B, L]` whose largest
    probability exceeds each threshold: with the whole left context known, how often a
    confidence rule could commit a position at all."""
    top = judge(tokens)[0][:, :-1].float().softmax(-1).amax(-1)
    return {h: float((top > h).float().mean()) for h in thresholds}


def run_dir(root: Path, label: str, seed: int, args: argparse.Namespace) -> Path:
    """A cell's run folder at one seed: `LABEL` at seed 0 (as before seeds), `LABEL-seedK`
    otherwise; unclipped block cells (and those converted from them) get `-noclip`."""
    clip = "-noclip" if args.no_clip and label.startswith("block") else ""
    return root / (label + clip + (f"-seed{seed}" if seed else ""))


class Cell(NamedTuple):
    label: str
    metrics: list[dict[str, float]]  # test metrics at each seed
    seconds: list[float]  # training time at each seed

    def nlls(self) -> list[float]:
        return [m["nll"] for m in self.metrics]


def print_nll_table(cells: list[Cell], args: argparse.Namespace) -> None:
    """One seed: each cell's NLL (± the ELBO estimator's standard error); several: mean ± std
    over seeds and the 95% t interval. Then each paradigm against the next-ranked one."""
    clip = ", block diffusion unclipped" if args.no_clip else ""
    print(
        f"\nNLL on the stdlib test split ({args.steps} steps x {args.batch} x {args.seq_len} "
        f"tokens, d_model {args.d_model}, {args.layers} layers, {args.seeds} seed(s){clip})\n"
    )
    if args.seeds == 1:
        print("| paradigm | NLL (nats/token) | bits/byte | perplexity | train s |")
        print("|---|---|---|---|---|")
    else:
        print("| paradigm | NLL (nats/token) | 95% CI | bits/byte | perplexity | train s |")
        print("|---|---|---|---|---|---|")
    for cell in cells:
        sign = "≤ " if cell.metrics[0]["bound"] else ""
        nll = statistics.fmean(cell.nlls())
        bits = statistics.fmean(m["bits_per_byte"] for m in cell.metrics)
        seconds = statistics.fmean(cell.seconds)
        if args.seeds == 1:
            m = cell.metrics[0]
            spread = f" ± {m['nll_stderr']:.4f}" if "nll_stderr" in m else ""
            interval = ""
        else:
            spread = f" ± {statistics.stdev(cell.nlls()):.4f}"
            low, high = mean_interval(cell.nlls()) or (math.nan, math.nan)
            interval = f" [{low:.4f}, {high:.4f}] |"
        print(
            f"| {cell.label} | {sign}{nll:.4f}{spread} |{interval} {sign}{bits:.4f} | "
            f"{sign}{math.exp(nll):.2f} | {seconds:.0f} |"
        )
    if args.seeds > 1:
        print(f"\n(± is the standard deviation over {args.seeds} training seeds)")
    elif any("nll_stderr" in m for c in cells for m in c.metrics):
        print(
            f"\n(± is the standard error of the mean of {args.eval_repeats} independent ELBO "
            f"estimates, each with {args.eval_samples} t draws per sequence)"
        )
    ranked = sorted(cells, key=lambda c: statistics.fmean(c.nlls()))
    print("\nIs each paradigm ahead of the next (NLL)?\n")
    seeds = list(range(args.seeds))
    for line in separation_lines([(c.label, c.nlls(), seeds) for c in ranked], False):
        print(f"- {line}")


def ar_label(temperature: float) -> str:
    """The AR row a sampler at `temperature` is compared with."""
    return "ar greedy" if temperature == 0 else f"ar sample, T={temperature:g}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.out or tempfile.mkdtemp(prefix="paradigms-"))
    cells, trained = [], {}  # trained: label -> (model, parts) at seed 0, for sampling
    for label, name, options in (cell for cell in CELLS + CONVERTED if cell[0] in args.cells):
        cell = Cell(label, [], [])
        for seed in range(args.seeds):
            config = experiment(args, name, options, seed)
            directory = run_dir(root, label, seed, args)
            if (label, name, options) in CONVERTED:
                ar = run_dir(root, "ar", seed, args)
                if not (ar / "summary.json").exists():
                    raise SystemExit(f"{label} starts from the ar cell: list ar first in --cells")
                config.train.init_from, config.train.lr = str(ar), args.convert_lr
            if name != "ar":
                config.objective.options["eval_samples"] = args.eval_samples
            summary = directory / "summary.json"
            if not summary.exists():
                train(config, directory, progress=False)
            seconds = json.loads(summary.read_text())["seconds"]
            parts = build_run(config)
            model = seqlab.load(directory)
            metrics = evaluate(parts, model, args)
            cell.metrics.append(metrics)
            cell.seconds.append(seconds)
            if seed == 0:
                trained[label] = (model, parts)
            print(
                f"trained {label}, seed {seed}: {metrics['nll']:.4f} nats/token in {seconds:.0f} s",
                flush=True,
            )
        cells.append(cell)
    print_nll_table(cells, args)

    samplers = [label for label in args.sample_cells if label in trained]
    if "ar" not in trained or not samplers:
        print("No sampling comparison: it needs the ar cell and a --sample-cells cell (--cells).")
        return
    judge, ar_parts = trained["ar"]
    batch = next(iter(ar_parts.task.eval_batches("test", args.prompts)))
    prompt = batch.tokens[: args.prompts, : args.prompt_len]
    reference = batch.tokens[: args.prompts, : args.prompt_len + args.new_tokens]
    new = args.new_tokens
    runs: dict[str, Callable[[torch.Tensor, int], Generation]] = {
        "ar greedy": lambda x, _: seqlab.generate(judge, x, max_new_tokens=new, sampler="greedy"),
    }
    for temperature in sorted({1.0, *args.temperatures} - {0.0}, reverse=True):
        runs[ar_label(temperature)] = lambda x, seed, t=temperature: seqlab.generate(
            judge, x, max_new_tokens=new, sampler="sample", temperature=t, seed=seed
        )
    baselines = {}  # row -> the AR row it is compared with
    for label in samplers:
        model, parts = trained[label]
        diffusion = {"max_new_tokens": new, "objective": parts.objective}
        runs[f"{label} ancestral, {parts.objective.block_size} steps/block"] = (
            lambda x, seed, model=model, diffusion=diffusion: seqlab.generate(
                model, x, sampler="ancestral", seed=seed, **diffusion
            )
        )
        for temperature in args.temperatures:
            for threshold in args.thresholds:
                row = f"{label} confidence {threshold}, T={temperature:g}"
                baselines[row] = ar_label(temperature)
                runs[row] = (
                    lambda x, seed, model=model, diffusion=diffusion, h=threshold, t=temperature: (
                        seqlab.generate(
                            model,
                            x,
                            sampler="confidence",
                            threshold=h,
                            temperature=t,
                            seed=seed,
                            **diffusion,
                        )
                    )
                )
    rows = next(iter(ar_parts.task.eval_batches("test", 64))).tokens
    shares = confident_share(judge, rows, args.thresholds)
    print(
        "\nAR model's next-token confidence on test text (share of positions whose top "
        "probability exceeds the threshold): "
        + ", ".join(f"> {h:g}: {share:.3f}" for h, share in shares.items())
    )
    size = args.sample_batch or args.prompts
    print(
        f"\nSampling {args.prompts} x {args.new_tokens} tokens after {args.prompt_len}-token "
        f"prompts in batches of {size} (median of 3 interleaved rounds; NFE: model calls "
        f"per batch)\n"
    )
    print(
        "(vs AR: tokens/s and judged NLL against AR sampling at the row's temperature, "
        "AR greedy at T=0; AR rows against AR sampling at T=1)\n"
    )
    print("| sampler | tokens/s | NFE | AR-judged NLL | vs AR | distinct 4-grams |")
    print("|---|---|---|---|---|---|")
    for run in runs.values():
        run(prompt[:size], 0)  # warm-up
    # three rounds over every row, so that load on the machine hits all rows alike
    rounds = [
        {label: in_batches(run, prompt, size) for label, run in runs.items()} for _ in range(3)
    ]
    results = {}
    for label in runs:
        outs = [done[label] for done in rounds]
        seconds = sorted(o.seconds for o in outs)[1]
        nll = judged_nll(judge, outs[0].tokens, args.prompt_len)
        results[label] = (args.prompts * args.new_tokens / seconds, outs[0], nll)
    for label, (speed, out, nll) in results.items():
        base_speed, _, base_nll = results[baselines.get(label, ar_label(1.0))]
        print(
            f"| {label} | {speed:.0f} | {out.nfe:.4g} | {nll:.4f} | "
            f"{speed / base_speed:.2f}x speed, {nll / base_nll - 1:+.1%} NLL | "
            f"{distinct(out.tokens[:, args.prompt_len :]):.2f} |"
        )
    print(
        f"| test text (reference) | | | {judged_nll(judge, reference, args.prompt_len):.4f} | | "
        f"{distinct(reference[:, args.prompt_len :]):.2f} |"
    )


if __name__ == "__main__":
    main()
