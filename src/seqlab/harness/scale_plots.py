"""The plots of `seqlab scale` (matplotlib, Agg backend), one set per task:

loss_vs_compute_<task>.png   every run's validation curve (thin), each backbone's
                             compute-efficient frontier (markers), the fitted L(C) with its
                             95% band (pointwise percentiles of the bootstrap refits) over
                             the runs' compute, dashed on to 10× the largest compute
isoflop_<task>.png           (isoflop mode) loss against N per budget with the parabola in
                             ln N and its minimum marked, one panel per backbone
optimal_params_<task>.png    compute-optimal N*(C) of each L(N, D) fit with its band, and
                             the IsoFLOP minima placed at 6·N*·D*: both against C = 6·N·D
                             (the other plots count C as `scale.flops` says)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from seqlab.harness.report import pyplot
from seqlab.scaling.chinchilla import FLOPS_PER_PARAM_TOKEN, compute_optimal
from seqlab.scaling.estimate import LEVEL

EXTRAPOLATE = 10.0


def write_scale_plots(
    directory: Path, mode: str, tasks: list[Any], flops: str = "analytic"
) -> list[Path]:
    """Every plot of every task (`seqlab.harness.scale.TaskScaling`), compute counted as
    `flops` (analytic or 6nd); returns the files."""
    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for task in tasks:
        if not task.records:
            continue
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task.task)
        path = directory / f"loss_vs_compute_{slug}.png"
        written.append(_loss_vs_compute(plt, task, path, _compute_label(flops)))
        if mode == "isoflop" and task.isoflop:
            path = directory / f"isoflop_{slug}.png"
            written.append(_isoflop(plt, task, path, _compute_label(flops)))
        if task.report is not None:
            written.append(_optimal_params(plt, task, directory / f"optimal_params_{slug}.png"))
    return written


def _compute_label(flops: str) -> str:
    return "training FLOPs C (analytic)" if flops == "analytic" else "training FLOPs C = 6·N·D"


def _colors(plt: Any, names: list[str]) -> dict[str, Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _band(predict: Any, samples: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of `predict(x, params)` over bootstrap `samples` rows."""
    curves = np.array([predict(x, row) for row in samples])
    q = (1 - LEVEL) / 2
    return np.nanquantile(curves, q, axis=0), np.nanquantile(curves, 1 - q, axis=0)


def _loss_vs_compute(plt: Any, task: Any, path: Path, xlabel: str) -> Path:
    backbones = list(dict.fromkeys(r.backbone for r in task.records))
    color = _colors(plt, backbones)
    fig, ax = plt.subplots(figsize=(7, 5))
    for record in task.records:
        points = np.array(record.points())
        ax.plot(points[:, 0], points[:, 1], color=color[record.backbone], alpha=0.3, lw=0.8)
    fits = {} if task.report is None else task.report.backbones
    for name in backbones:
        law = getattr(fits.get(name), "compute_law", None)
        if law is None:
            continue
        frontier = law.frontier
        if frontier is not None:
            ax.plot(frontier.compute, frontier.loss, "o", color=color[name], ms=3)
        computes = [r.total_compute for r in task.records if r.backbone == name]
        low, high = min(p[0] for r in task.records for p in r.points()), max(computes)
        seen = np.geomspace(low, high, 100)
        ahead = np.geomspace(high, EXTRAPOLATE * high, 50)
        ax.plot(
            seen,
            law.predict(seen),
            color=color[name],
            lw=2,
            label=f"{name}: α={law.alpha.value:.3g}",
        )
        ax.plot(ahead, law.predict(ahead), color=color[name], lw=2, ls="--")
        if law.bootstrap is not None and law.bootstrap.n_ok > 1:
            both = np.concatenate([seen, ahead])
            lower, upper = _band(law.predict, law.bootstrap.samples, both)
            ax.fill_between(both, lower, upper, color=color[name], alpha=0.15, lw=0)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=f"validation {task.metric}")
    ax.set_title(f"{task.task}: loss against compute")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _isoflop(plt: Any, task: Any, path: Path, budget_label: str) -> Path:
    backbones = list(dict.fromkeys(c.backbone for c in task.isoflop))
    budgets = sorted({c.budget for c in task.isoflop})
    color = _colors(plt, [str(b) for b in budgets])
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones), 4), squeeze=False)
    for ax, name in zip(axes[0], backbones, strict=True):
        for curve in (c for c in task.isoflop if c.backbone == name):
            c = color[str(curve.budget)]
            ax.plot(curve.params, curve.loss, "o", color=c, label=f"C={curve.budget:.3g}")
            if curve.coefficients is not None:
                u = np.linspace(np.log(min(curve.params)), np.log(max(curve.params)), 100)
                ax.plot(np.exp(u), np.polyval(curve.coefficients, u), color=c, lw=1)
            if curve.params_opt is not None and curve.skipped is None:
                ax.plot([curve.params_opt], [curve.loss_opt], "*", color=c, ms=12, mec="black")
        ax.set(xscale="log", xlabel="parameters N (non-embedding)", ylabel=task.metric, title=name)
        ax.legend(fontsize=7)
    fig.suptitle(f"{task.task}: IsoFLOP curves (budgets C: {budget_label})")
    return _save(plt, fig, path)


def _optimal_params(plt: Any, task: Any, path: Path) -> Path:
    backbones = list(task.report.backbones)
    color = _colors(plt, backbones)
    fig, ax = plt.subplots(figsize=(7, 5))
    computes = [FLOPS_PER_PARAM_TOKEN * r.params * r.tokens for r in task.records]
    c = np.geomspace(min(computes), EXTRAPOLATE * max(computes), 100)
    drawn = False
    for name, fit in task.report.backbones.items():
        chin = fit.chinchilla
        if chin is not None and chin.allocation is not None:
            allocation = chin.allocation
            ax.plot(
                c,
                allocation.params(c),
                color=color[name],
                lw=2,
                label=f"{name}: a={allocation.a.value:.2f}",
            )
            boot = chin.bootstrap
            if boot is not None and boot.n_ok > 1:
                lower, upper = _band(_optimal_n, boot.samples, c)
                ax.fill_between(c, lower, upper, color=color[name], alpha=0.15, lw=0)
            drawn = True
        minima = [m for m in task.isoflop if m.backbone == name and m.skipped is None]
        if minima:
            ax.plot(
                [m.compute_6nd_opt for m in minima],
                [m.params_opt for m in minima],
                "*",
                ms=10,
                color=color[name],
                mec="black",
            )
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no L(N, D) fit or IsoFLOP minimum", ha="center", transform=ax.transAxes)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="training FLOPs C = 6·N·D",
        ylabel="compute-optimal N* (non-embedding)",
    )
    ax.set_title(f"{task.task}: compute-optimal parameters")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _optimal_n(c: np.ndarray, params: np.ndarray) -> np.ndarray:
    return compute_optimal(c, params)[0]


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
