"""ARPC and ACS against ancestral and confidence sampling at equal NFE (issue 24).

Trains three models once on the built-in corpus (`stdlib`, byte tokens), same size, steps,
batch and learning rate, cached under `--runs` (default `runs/bench_correction/`, one folder
per model and setting, reused when its `summary.json` exists):

- `blockgen`: `block_diffusion` trained on the block sizes [1, `--block-size`] (BlockGen), as
  `arpc` needs (its AR prediction is the model at block size 1). `ancestral`,
  `topk_confidence` (LLaDA: the k most confident masks per step, k spread over the steps,
  candidates drawn at the temperature), `arpc` and the Fast-dLLM `confidence` threshold rule
  all sample it block by block (KV cache of finished blocks);
- `hybrid`: `epsilon_hybrid_diffusion` (full sequence, flat hyperschedule), as `acs` needs:
  its correction replaces decoded tokens where x̂_0 confidently disagrees, which only means
  something for a denoiser trained on corrupted clean tokens (hybrid noise); it is trained
  and sampled on a flat hyperschedule here. `block_diffusion` takes no
  hybrid noise, so this is a separate, full-sequence model: `ancestral` and `acs` sample the
  whole continuation at once (the whole canvas every step);
- `judge`: an `ar` model that scores every sample.

Each sampler continues the same `--samples` prompts: the first `--prompt-len` bytes of the
first test-split windows (a diffusion sampler needs at least one prompt token, and the byte
tokenizer has no BOS), `--seq-len` − `--prompt-len` new bytes each, one batch, seed
`--seed`, temperature `--temperature`. Budgets (`--budgets`) are model calls per block of
`--block-size` new tokens: `ancestral` and `topk_confidence` take that many steps; `arpc`
takes s predictor steps and c corrector rounds with s + c(1 + s) = budget (a round: one AR
pass, then re-decoding the `--remask` re-masked positions of every row with the predictor's
s steps, up to s passes: `arpc_split`), exact when budget + 1 is not prime;
the hybrid model's samplers take budget × blocks steps over the whole canvas. The printed
NFE is what the sampler counted, checked against the model calls counted by a forward hook.

Reported per row: NFE per block, the judge's NLL of the new bytes (nats per byte, mean ±
standard error over samples), the share of distinct byte 4-grams over all samples' new
bytes, and tokens/s (median of `--repeats` interleaved rounds); the judge's NLL of the
real test text after the same prompts; and each corrector's judged NLL minus that of its
model's `ancestral` at the same budget, paired per prompt (for `acs`: the same draws until
its first correction, and how many bytes it changed).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/correction_samplers.py
    PYTHONPATH=src python benchmarks/correction_samplers.py --quick   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

import seqlab
from seqlab.config import ExperimentConfig, from_dict
from seqlab.objectives.base import Objective
from seqlab.sampling.ar import Generation
from seqlab.train.loop import RunParts, build_run, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/bench_correction", help="trained models (reused)")
    p.add_argument("--steps", type=int, default=400, help="training steps per model")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--block-size", type=int, default=8, help="blockgen sampling block")
    p.add_argument("--epsilon", type=float, default=0.1, help="hybrid model's uniform share")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=None,
        help="model calls per block (default 3 5 8; --quick: 3 5)",
    )
    p.add_argument("--remask", type=int, default=1, help="arpc positions re-masked per round")
    p.add_argument("--acs-threshold", type=float, default=0.9)
    p.add_argument("--confidence-threshold", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="timed rounds (median)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny settings, a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.d_model, args.layers, args.seq_len, args.batch = 10, 32, 1, 32, 4
        args.samples, args.block_size, args.repeats = 4, 4, 1
    if args.budgets is None:
        args.budgets = [3, 5] if args.quick else [3, 5, 8]
    if not 1 <= args.prompt_len < args.seq_len:
        p.error(f"--prompt-len must lie in [1, --seq-len), got {args.prompt_len}")
    return args


def models(args: argparse.Namespace) -> dict[str, tuple[str, dict]]:
    """label -> (objective, options) of the three models."""
    return {
        "blockgen": (
            "block_diffusion",
            {"block_size": args.block_size, "block_sizes": sorted({1, args.block_size})},
        ),
        "hybrid": ("epsilon_hybrid_diffusion", {"epsilon": args.epsilon}),
        "judge": ("ar", {}),
    }


def experiment(args: argparse.Namespace, name: str, options: dict) -> ExperimentConfig:
    return from_dict(
        ExperimentConfig,
        {
            "model": {
                "mixer": "attention",
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
            },
        },
    )


def run_dir(args: argparse.Namespace, label: str) -> Path:
    """The cache folder of one model: its settings in its name, so changed settings retrain."""
    block = f"_b{args.block_size}" if label == "blockgen" else ""
    eps = f"_e{args.epsilon:g}" if label == "hybrid" else ""
    name = f"{label}{block}{eps}_d{args.d_model}_l{args.layers}_h{args.heads}_T{args.seq_len}"
    return Path(args.runs) / f"{name}_bs{args.batch}_lr{args.lr:g}_{args.steps}steps"


def trained(args: argparse.Namespace) -> dict[str, tuple[nn.Module, RunParts]]:
    """Each model trained (or read back from its cache folder) with its run parts."""
    out = {}
    for label, (name, options) in models(args).items():
        config = experiment(args, name, options)
        folder = run_dir(args, label)
        summary = folder / "summary.json"
        if not summary.exists():
            train(config, folder, progress=False)
        info = json.loads(summary.read_text())
        print(f"  {label}: {folder} ({info['seconds']:.0f} s to train)", flush=True)
        out[label] = (seqlab.load(folder).eval(), build_run(config))
    return out


class Row(NamedTuple):
    model: str  # which trained model samples
    sampler: str
    budget: int | None  # model calls per block asked for (None: adaptive)
    options: dict


def arpc_split(budget: int) -> tuple[int, int] | None:
    """(predictor steps s, corrector rounds c) of an `arpc` block costing at most `budget`
    model calls: s predictor passes, and per round one AR pass plus up to s re-decoding
    passes (the batch's re-masked positions unmask at different steps of the s), so
    s + c(1 + s) = (s + 1)(c + 1) − 1. The most calls within the budget, then c + 1 nearest
    √(budget + 1), then more predictor steps; None below 3 calls (s = c = 1)."""
    splits = [
        (s, c)
        for s in range(1, budget + 1)
        for c in range(1, budget + 1)
        if (s + 1) * (c + 1) - 1 <= budget
    ]
    if not splits:
        return None
    root = math.sqrt(budget + 1)
    return min(splits, key=lambda sc: (-(sc[0] + 1) * (sc[1] + 1), abs(sc[1] + 1 - root), -sc[0]))


def rows(args: argparse.Namespace, blocks: int) -> list[Row]:
    """The sampler settings compared: per budget, blockgen's ancestral, topk_confidence and
    arpc, the hybrid model's ancestral and acs (budget × `blocks` steps over the canvas); and
    blockgen's confidence threshold rule once (its NFE is its own)."""
    out = []
    for budget in args.budgets:
        out.append(Row("blockgen", "ancestral", budget, {"steps": budget}))
        out.append(Row("blockgen", "topk_confidence", budget, {"steps": budget}))
        split = arpc_split(budget)
        if split is not None:
            steps, rounds = split
            options = {"steps": steps, "corrector_steps": rounds, "remask": args.remask}
            out.append(Row("blockgen", "arpc", budget, options))
        whole = {"steps": budget * blocks}
        out.append(Row("hybrid", "ancestral", budget, whole))
        out.append(Row("hybrid", "acs", budget, {**whole, "threshold": args.acs_threshold}))
    out.append(Row("blockgen", "confidence", None, {"threshold": args.confidence_threshold}))
    return out


def label(row: Row) -> str:
    """The sampler and the options that are not the budget's steps."""
    options = row.options
    if row.sampler == "arpc":
        return (
            f"arpc ({options['steps']} steps + {options['corrector_steps']} rounds, "
            f"remask {options['remask']})"
        )
    if "threshold" in options:
        return f"{row.sampler} (threshold {options['threshold']:g})"
    return row.sampler


@contextlib.contextmanager
def counted_calls(model: nn.Module) -> Iterator[list[int]]:
    """Counts the calls of `model` (a forward hook) into the one-element list yielded."""
    calls = [0]

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        calls[0] += 1

    handle = model.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def sample(
    model: nn.Module,
    objective: Objective,
    prompt: Tensor,
    new_tokens: int,
    row: Row,
    args: argparse.Namespace,
) -> Generation:
    """One row's samples; raises if the sampler's NFE is not the number of model calls."""
    options = dict(row.options)
    if row.model == "blockgen":
        options["block_size"] = args.block_size
    with counted_calls(model) as calls:
        out = seqlab.generate(
            model,
            prompt,
            max_new_tokens=new_tokens,
            sampler=row.sampler,
            objective=objective,
            seed=args.seed,
            temperature=args.temperature,
            **options,
        )
    if out.nfe != calls[0]:
        raise AssertionError(f"{row.model} {label(row)}: NFE {out.nfe} but {calls[0]} model calls")
    return out


@torch.no_grad()
def judged_nll(judge: nn.Module, tokens: Tensor, prompt_len: int) -> Tensor:
    """The AR `judge`'s NLL of each row's bytes after the prompt, nats per byte `[B]`."""
    log_probs = judge(tokens)[0][:, prompt_len - 1 : -1].double().log_softmax(-1)
    target = tokens[:, prompt_len:]
    return -log_probs.gather(-1, target[..., None]).squeeze(-1).mean(1)


def distinct_ngrams(rows: Tensor, n: int = 4) -> float:
    """Distinct n-grams over all n-grams of all `rows` `[B, L]` (each row's own windows,
    pooled; 1: no n-gram repeats anywhere, low: repetitive samples)."""
    grams = [tuple(r[i : i + n]) for r in rows.tolist() for i in range(len(r) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def mean_stderr(values: Tensor) -> tuple[float, float]:
    values = values.tolist()
    spread = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, load average {os.getloadavg()}")
    print(
        f"models: attention d_model {args.d_model}, {args.layers} layers, {args.heads} heads, "
        f"seq_len {args.seq_len}, {args.steps} steps x {args.batch} rows, lr {args.lr:g}"
    )
    nets = trained(args)
    judge, judge_parts = nets["judge"]
    batch = next(iter(judge_parts.task.eval_batches("test", args.samples)))
    reference = batch.tokens[: args.samples, : args.seq_len]
    prompt = reference[:, : args.prompt_len]
    new = reference.shape[1] - args.prompt_len
    blocks = -(-new // args.block_size)
    table = rows(args, blocks)

    def run(row: Row) -> Generation:
        model, parts = nets[row.model]
        return sample(model, parts.objective, prompt, new, row, args)

    for row in {row.model: row for row in table}.values():  # warm-up, one block per model
        model, parts = nets[row.model]
        sample(model, parts.objective, prompt, args.block_size, row, args)
    outs: list[Generation] = []
    seconds: list[list[float]] = [[] for _ in table]
    for _ in range(args.repeats):  # interleaved, so that load on the machine hits all alike
        outs = [run(row) for row in table]  # seeded: every round draws the same samples
        for times, out in zip(seconds, outs, strict=True):
            times.append(out.seconds)
    print(
        f"\n{args.samples} samples x {new} new bytes after {args.prompt_len}-byte test "
        f"prompts ({blocks} blocks of {args.block_size}), temperature {args.temperature:g}, "
        f"seed {args.seed}; NFE = model calls (checked by a forward hook) per block of "
        f"{args.block_size} new bytes; judged NLL: the AR judge's nats per byte, mean ± "
        f"standard error over samples\n"
    )
    print("| model | sampler | budget | NFE/block | judged NLL | distinct 4-grams | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    nlls = [judged_nll(judge, out.tokens, args.prompt_len) for out in outs]
    for row, out, times, nll in zip(table, outs, seconds, nlls, strict=True):
        mean, err = mean_stderr(nll)
        speed = args.samples * new / statistics.median(times)
        budget = "adaptive" if row.budget is None else str(row.budget)
        print(
            f"| {row.model} | {label(row)} | {budget} | {out.nfe / blocks:.2f} | "
            f"{mean:.3f} ± {err:.3f} | {distinct_ngrams(out.tokens[:, args.prompt_len :]):.3f} "
            f"| {speed:.0f} |"
        )
    mean, err = mean_stderr(judged_nll(judge, reference, args.prompt_len))
    print(
        f"| test text (reference) | | | | {mean:.3f} ± {err:.3f} | "
        f"{distinct_ngrams(reference[:, args.prompt_len :]):.3f} | |"
    )
    print(
        "\nCorrector minus its model's ancestral sampler at the same budget, per prompt "
        "(paired): judged NLL difference, mean ± standard error"
    )
    plain = {
        (row.model, row.budget): (out.tokens, nll)
        for row, out, nll in zip(table, outs, nlls, strict=True)
        if row.sampler == "ancestral"
    }
    for row, out, nll in zip(table, outs, nlls, strict=True):
        if row.sampler not in ("arpc", "acs"):
            continue
        tokens, base = plain[row.model, row.budget]
        mean, err = mean_stderr(nll - base)
        line = f"  {row.model} {label(row)} at budget {row.budget}: {mean:+.3f} ± {err:.3f}"
        if row.sampler == "acs":  # the same draws as ancestral until a correction
            changed = int((out.tokens != tokens).sum())
            total = out.tokens[:, args.prompt_len :].numel()
            line += f"; {changed} of {total} new bytes differ from ancestral's"
        print(line)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
