"""scaling.md, the report `seqlab scale` writes: per task a table of each backbone's fits

    backbone | runs | E | A | α (each with its 95% CI) | refits ok | L(C) held-out error |
    verdict | L(N, D) held-out error | a | b

the notes of the fits the data could not support, the crossovers of L(C), and in isoflop
mode the IsoFLOP minima. "refits ok" is the bootstrap refits of L(C) that reached an optimum
out of those run (n_ok/n_boot); a and b are the exponents of N* ∝ C^a, D* ∝ C^b from the
L(N, D) fit ("—" where it has none: the reason is in the notes).
"""

from __future__ import annotations

from typing import Any

from seqlab.harness.ladder import ScaleConfig
from seqlab.harness.report import human

MISSING = "—"


def _ci(estimate: Any, spec: str = ".3g") -> str:
    if estimate is None:
        return MISSING
    text = f"{estimate.value:{spec}}"
    if estimate.ci is not None:
        text += f" [{estimate.ci.low:{spec}}, {estimate.ci.high:{spec}}]"
    return text


def _held_out(check: Any) -> tuple[str, str]:
    if check is None:
        return MISSING, MISSING
    verdict = "predicts" if check.predicts else "does not predict"
    return f"{100 * check.mean_relative_error:.2f}%", verdict


def _refits(fit: Any) -> str:
    boot = None if fit is None else fit.bootstrap
    return MISSING if boot is None else f"{boot.n_ok}/{boot.n_boot}"


def scaling_markdown(config: ScaleConfig, tasks: list[Any]) -> str:
    """The report of `tasks` (`seqlab.harness.scale.TaskScaling`), see the module docstring."""
    scale = config.scale
    unit = "training tokens" if scale.mode == "grid" else "training FLOPs"
    lines = [
        f"# {config.name}: scaling",
        "",
        f"{len(scale.sizes)} sizes × {len(scale.budgets)} budgets ({unit}) per backbone, "
        f"mode {scale.mode}, compute C counted as {scale.flops}. L(C) = E + A·C^(−α) is fitted "
        "through the compute-efficient frontier of every run's validation curve (seeds "
        "averaged); intervals are 95% bootstrap intervals over runs (refits ok: those that "
        f"reached an optimum, of {scale.n_boot}). A held-out error is the mean relative error "
        "of predicting the largest-compute runs from a refit without them: for L(C) the "
        "frontier corners they reach, for L(N, D) their final losses. a and b are the "
        "compute-optimal exponents N* ∝ C^a, D* ∝ C^b of the L(N, D) fit, with C = 6·N·D.",
    ]
    for task in tasks:
        lines += ["", f"## {task.task} ({task.metric})", ""]
        if task.report is None:
            lines.append(f"No fit: {task.skipped}.")
            continue
        header = [
            "backbone",
            "runs",
            "E",
            "A",
            "α",
            "refits ok",
            "L(C) held-out error",
            "verdict",
            "L(N, D) held-out error",
            "a",
            "b",
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        notes = []
        for name, fit in task.report.backbones.items():
            law = fit.compute_law
            error, verdict = _held_out(fit.compute_held_out)
            chin_error, chin_verdict = _held_out(fit.chinchilla_held_out)
            allocation = None if fit.chinchilla is None else fit.chinchilla.allocation
            cells = [
                name,
                str(fit.runs),
                _ci(law and law.E),
                _ci(law and law.A),
                _ci(law and law.alpha),
                _refits(law),
                error,
                verdict if law else "skipped",
                chin_error if fit.chinchilla_held_out is None else f"{chin_error} ({chin_verdict})",
                _ci(allocation and allocation.a, ".2f"),
                _ci(allocation and allocation.b, ".2f"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
            notes += [f"- {name}: skipped {note}" for note in fit.notes]
        if notes:
            lines += ["", "Fits the data could not support:", "", *notes]
        if task.report.crossovers or task.report.notes:
            lines += ["", "Crossovers of L(C):", ""]
            lines += [
                f"- {c.names[0]} vs {c.names[1]}: {c.summary()}" for c in task.report.crossovers
            ]
            lines += [f"- {note}" for note in task.report.notes]
        if task.isoflop:
            lines += ["", f"IsoFLOP minima (parabola in ln N per budget C, {scale.flops}):", ""]
            lines += ["| backbone | C | N* | D* | L* | note |", "|---|---|---|---|---|---|"]
            for c in task.isoflop:
                n_opt, d_opt, l_opt = (
                    MISSING if v is None else f(v)
                    for v, f in (
                        (c.params_opt, human),
                        (c.tokens_opt, human),
                        (c.loss_opt, lambda x: f"{x:.4f}"),
                    )
                )
                lines.append(
                    f"| {c.backbone} | {human(c.budget)} | {n_opt} | {d_opt} | {l_opt} "
                    f"| {c.skipped or ''} |"
                )
    return "\n".join(lines) + "\n"
