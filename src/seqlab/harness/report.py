"""Leaderboards (Markdown) and comparison plots (matplotlib PNGs, when it is installed)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from seqlab.errors import SeqlabError
from seqlab.harness.grid import HIGHER_IS_BETTER, CompareConfig, is_failed, seed_values
from seqlab.harness.state_laws import (
    StateLaw,
    applies,
    backbone_label,
    state_law_markdown,
    state_size_laws,
)
from seqlab.harness.stats import separation_lines
from seqlab.train.logging import read_metrics

MODEL_AXES = ("model.mixer", "model.layers")
PLOTS_NEED = "plots need matplotlib: pip install 'seqlab[plots]'"
MISSING = "—"


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend; SeqlabError when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SeqlabError(PLOTS_NEED) from None
    return plt


def plots_available() -> bool:
    try:
        pyplot()
    except SeqlabError:
        return False
    return True


def task_label(row: dict[str, Any]) -> str:
    return str(row.get("grid:task", row["task"]))


def group_by_task(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in results:
        groups[task_label(row)].append(row)
    return dict(groups)


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    metric = rows[0]["metric"]
    higher = HIGHER_IS_BETTER.get(metric, False)

    def key(row: dict[str, Any]) -> tuple[bool, float]:
        score = row["score"]
        if not math.isfinite(score):
            return is_failed(row), math.inf
        return False, -score if higher else score

    return sorted(rows, key=key)


def human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _extra_axes(rows: list[dict[str, Any]]) -> list[str]:
    axes = [
        k for k in rows[0] if k.startswith("grid:") and k != "grid:task" and k[5:] not in MODEL_AXES
    ]
    return [a for a in axes if len({r[a] for r in rows}) > 1]


def _has_sparse(rows: list[dict[str, Any]]) -> bool:
    """Whether some row's model uses fewer parameters per token than it has (experts), so the
    table needs an active-parameter column beside the total."""
    return any(
        not _missing(row.get("active_params")) and row["active_params"] != row.get("params")
        for row in rows
    )


def _missing(value: Any) -> bool:
    """Whether a value is one that a failed grid point does not have (shown as a dash)."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def state_laws_by_task(results: list[dict[str, Any]]) -> dict[str, list[StateLaw]]:
    """Error-against-state-size laws (`seqlab.harness.state_laws`) of every task that calls
    for them, by task label."""
    return {
        label: state_size_laws(rows)
        for label, rows in group_by_task(results).items()
        if applies(rows)
    }


def leaderboard_markdown(
    config: CompareConfig,
    results: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    laws: dict[str, list[StateLaw]] | None = None,
) -> str:
    """The ranked leaderboard, one table per task; failed grid points rank last, and each
    table is followed by the runs that failed and why, and, for an accuracy-type metric
    measured at several state sizes, the error-against-state-size laws (`laws`, computed
    when not given)."""
    if laws is None:
        laws = state_laws_by_task(results)
    lines = [f"# {config.name}: leaderboard", ""]
    lines.append(
        "Every run has the same budget (steps x batch x sequence length); each row uses the "
        "learning rate that was best on validation, and shows test metrics as mean ± std over "
        f"{max(r['seeds'] for r in results)} seed(s). NLL is in nats per scored token "
        "(≤ marks a bound)."
    )
    if any(r["seeds"] > 1 for r in results):
        lines[-1] += (
            " The 95% CI is the Student-t interval of the ranked metric's mean over seeds; under "
            "each table, each row is tested against the next (Welch's t-test, seeds unpaired)."
        )
    if config.init_from is not None:
        lines[-1] += (
            f" Every run continues the run of the same id in `{config.init_from}` (an earlier "
            "stage); train FLOPs and time count this stage only."
        )
    for label, rows in group_by_task(results).items():
        rows = ranked(rows)
        metric = rows[0]["metric"]
        arrow = "↑" if HIGHER_IS_BETTER.get(metric, False) else "↓"
        extras = _extra_axes(rows)
        sparse = _has_sparse(rows)
        interval = any(r["seeds"] > 1 for r in rows)
        others = [m for m in HIGHER_IS_BETTER if m != metric and f"test_{m}" in rows[0]]
        header = (
            ["rank", "backbone", "paradigm"]
            + [a[5:] for a in extras]
            + [f"{metric} {arrow}"]
            + (["95% CI"] if interval else [])
            + others
            + ["params"]
            + (["active params"] if sparse else [])
            + ["state size", "train FLOPs", "time (s)", "lr"]
        )
        lines += [
            "",
            f"## {label}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for i, row in enumerate(rows, 1):
            bound = "≤ " if row.get("test_bound") else ""

            def fmt(m: str, row: dict[str, Any] = row, bound: str = bound) -> str:
                value, std = row.get(f"test_{m}", math.nan), row.get(f"test_{m}_std", 0.0)
                prefix = bound if m in ("nll", "bits_per_byte", "infill_nll") else ""
                if _missing(value):
                    return MISSING
                return f"{prefix}{value:.4f}" + (f" ± {std:.4f}" if row["seeds"] > 1 else "")

            def number(key: str, spec: str, row: dict[str, Any] = row) -> str:
                value = row.get(key)
                if _missing(value):
                    return MISSING
                return human(value) if spec == "human" else f"{value:{spec}}"

            failed = is_failed(row)
            cells = (
                [str(i), row["backbone"], row["paradigm"]]
                + [str(row[a]) for a in extras]
                + [f"failed: {_cell(row['error'])}" if failed else fmt(metric)]
                + ([_interval_cell(row, metric)] if interval else [])
                + [fmt(m) for m in others]
                + [number("params", "human")]
                + ([number("active_params", "human")] if sparse else [])
                + [
                    number("state_size", "human"),
                    number("train_flops", "human"),
                    number("seconds", ".1f"),
                    number("lr", "g"),
                ]
            )
            lines.append("| " + " | ".join(cells) + " |")
        tested = [(None, *seed_values(r, metric)) for r in rows if not is_failed(r)]
        if len(tested) > 1:
            separation = separation_lines(tested, HIGHER_IS_BETTER.get(metric, False))
            lines += ["", f"Is each row ahead of the next ({metric})?", ""]
            lines += [f"- {line}" for line in separation]
        if label in laws:
            lines += state_law_markdown(laws[label], metric)
        lines += _failed_runs(runs, {r["point_id"] for r in rows})
    return "\n".join(lines) + "\n"


def _interval_cell(row: dict[str, Any], metric: str) -> str:
    low, high = row.get(f"test_{metric}_ci95_low"), row.get(f"test_{metric}_ci95_high")
    if _missing(low) or _missing(high):
        return MISSING
    return f"[{low:.4f}, {high:.4f}]"


def _failed_runs(runs: list[dict[str, Any]], points: set[str]) -> list[str]:
    """A list of the failed runs of these grid points with their reasons (none: nothing)."""
    failed = [r for r in runs if is_failed(r) and r["point_id"] in points]
    if not failed:
        return []
    lines = ["", f"Failed runs ({len(failed)}, not ranked; `--retry-failed` runs them again):", ""]
    return lines + [f"- `{r['run_id']}`: {r.get('error', 'unknown error')}" for r in failed]


def _cell(text: str) -> str:
    """Text that keeps a Markdown table cell whole."""
    return text.replace("|", "\\|")


def write_plots(
    out: Path,
    results: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    laws: dict[str, list[StateLaw]] | None = None,
) -> list[Path]:
    """PNG plots per task: metric vs d_model, vs state size (with each fitted error law of
    `laws` as a dashed curve), vs training FLOPs; loss curves. Failed grid points and runs
    are left out."""
    if laws is None:
        laws = state_laws_by_task(results)
    plt = pyplot()
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    results = [r for r in results if not is_failed(r)]
    runs = [r for r in runs if not is_failed(r)]
    for label, rows in group_by_task(results).items():
        metric = rows[0]["metric"]
        short = rows[0]["task"] if len(label) > 40 else label
        slug = "".join(c if c.isalnum() else "-" for c in label)[:60]
        by_backbone: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_backbone[backbone_label(row)].append(row)
        for x_key, x_label, log in (
            ("d_model", "d_model", False),
            ("state_size", "state size (numbers per sequence)", True),
            ("train_flops", "training FLOPs", True),
        ):
            fig, ax = plt.subplots(figsize=(6, 4))
            colors = {}
            for name, points in sorted(by_backbone.items()):
                points = sorted((p for p in points if p[x_key] is not None), key=lambda r: r[x_key])
                if not points:  # a baseline has no d_model
                    continue
                xs = [p[x_key] for p in points]
                ys = [p["score"] for p in points]
                errs = [p.get(f"test_{metric}_std", 0.0) for p in points]
                drawn = ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=name)
                colors[name] = drawn[0].get_color()
            if x_key == "state_size":
                _draw_state_laws(ax, laws.get(label, []), colors)
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel(f"test {metric}")
            ax.set_title(f"{short}: {metric} vs {x_label.split(' (')[0]}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = plot_dir / f"{slug}_{metric}_vs_{x_key}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        fig, ax = plt.subplots(figsize=(6, 4))
        for row in rows:
            chosen = sorted(
                (r for r in runs if r["point_id"] == row["point_id"] and r["lr"] == row["lr"]),
                key=lambda r: r["seed"],
            )
            if not chosen:
                continue
            records = read_metrics(out / "runs" / chosen[0]["run_id"] / "metrics.jsonl")
            ax.plot(
                [r["step"] for r in records],
                [r["loss"] for r in records],
                label=f"{row['backbone']}/{row['paradigm']} d={row['d_model']}",
            )
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.set_title(f"{short}: training loss (best lr, first seed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = plot_dir / f"{slug}_loss_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _draw_state_laws(ax: Any, laws: list[StateLaw], colors: dict[str, str]) -> None:
    """Each fitted law as the metric it implies, 1 − (E + A·S^(−α)), dashed, over its range."""
    import numpy as np

    for law in laws:
        if law.fit is None:
            continue
        sizes = np.geomspace(law.fit.x.min(), law.fit.x.max(), 100)
        ax.plot(
            sizes,
            1.0 - law.fit.predict(sizes),
            linestyle="--",
            color=colors.get(law.backbone),
            label=f"{law.backbone}: α = {law.fit.alpha.value:.2f}",
        )
