"""The variance of the training gradient per paradigm and training window (BD3-LM, §4).

For each trained run directory, with its own model, task and objective, it measures the
gradient of the training loss two ways:

- noise only: one fixed batch, `--draws` independent draws of the objective's noise (t and
  the masks); the spread is the estimator's own;
- noise and data: `--draws` different batches, one draw each; the spread SGD sees.

Each is reported as the relative variance tr Σ / ‖E g‖² (Σ the covariance of one gradient
draw; both estimated without bias from the R draws: tr Σ̂ = Σ_r ‖g_r − ḡ‖² / (R − 1) and
‖E g‖² ≈ ‖ḡ‖² − tr Σ̂ / R), with the training loss's mean and standard deviation over the
draws. Dropout is off (eval mode), so the noise is the objective's own. For block diffusion the same
model is also measured under the other training window (`--windows auto none`: BD3-LM's
clipped window, and times from U[0, 1]), so the estimator's variance is compared on one set
of weights. AR has no noise: its noise-only variance is 0.

    PYTHONPATH=src python benchmarks/gradient_variance.py RUN [RUN ...] --draws 32
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from seqlab.config import load_config
from seqlab.data.tasks import build_task
from seqlab.io import load
from seqlab.objectives import build_objective
from seqlab.objectives.base import Objective


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="trained run directories")
    p.add_argument("--draws", type=int, default=32, help="gradients per estimate (>= 2)")
    p.add_argument(
        "--windows",
        nargs="+",
        default=["auto", "none"],
        help="block diffusion training windows to measure: auto, none, or LOW,HIGH",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def window_option(text: str) -> str | list[float] | None:
    if text == "auto":
        return "auto"
    if text == "none":
        return None
    low, high = (float(v) for v in text.split(","))
    return [low, high]


def relative_variance(gradients: torch.Tensor) -> float:
    """tr Σ / ‖E g‖² from the draws `gradients [R, P]` (see the module docstring); inf when
    the mean gradient is not resolved (‖ḡ‖² ≤ tr Σ̂ / R)."""
    draws = gradients.shape[0]
    mean = gradients.mean(0)
    spread = float((gradients - mean).pow(2).sum() / (draws - 1))
    signal = float(mean.pow(2).sum()) - spread / draws
    return spread / signal if signal > 0 else float("inf")


def gradient(model: torch.nn.Module, objective: Objective, batch) -> tuple[torch.Tensor, float]:
    model.zero_grad(set_to_none=True)
    loss, _ = objective.loss(model, batch)
    loss.backward()
    flat = [p.grad.flatten().double() for p in model.parameters() if p.grad is not None]
    return torch.cat(flat), float(loss.detach())


def measure(model, objective: Objective, task, draws: int, batch_size: int, seed: int):
    """(noise-only, noise-and-data) relative gradient variances and the loss's mean and std
    over each set of draws."""
    fixed = task.batch("train", 0, batch_size, seed=seed)
    rows = {}
    for kind in ("noise", "noise+data"):
        grads, losses = [], []
        for r in range(draws):
            torch.manual_seed(seed * 100_003 + r)
            batch = fixed if kind == "noise" else task.batch("train", r, batch_size, seed=seed)
            g, loss = gradient(model, objective, batch)
            grads.append(g)
            losses.append(loss)
        rows[kind] = (relative_variance(torch.stack(grads)), losses)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.draws < 2:
        raise SystemExit("--draws must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        "| run | objective | window | noise-only rel. var | noise+data rel. var "
        "| loss mean ± std (fixed batch) |"
    )
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        config = load_config(run / "config.yaml")
        task = build_task(config)
        model = load(run)
        model.eval()
        batch_size = args.batch_size or config.train.batch_size
        name, options = config.objective.name, dict(config.objective.options)
        windows = args.windows if name == "block_diffusion" else ["–"]
        for window in windows:
            if window != "–":
                options = {**options, "clip": window_option(window)}
            objective = build_objective(name, task.vocab_size, **options)
            rows = measure(model, objective, task, args.draws, batch_size, args.seed)
            noise, losses = rows["noise"]
            both, _ = rows["noise+data"]
            spread = statistics.stdev(losses)
            described = name + "".join(
                f" {k}={v}" for k, v in options.items() if k in ("block_size",)
            )
            print(
                f"| {run.name} | {described} | {window} | {noise:.3g} | {both:.3g} "
                f"| {statistics.fmean(losses):.3f} ± {spread:.3f} |"
            )


if __name__ == "__main__":
    main()
