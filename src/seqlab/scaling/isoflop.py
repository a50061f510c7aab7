"""IsoFLOP curves (Hoffmann et al. 2022, approach 2): at one compute budget C, the loss
against model size is fitted by a parabola in u = ln N,

    L(u) = p0·u² + p1·u + p2,

whose minimum, when it opens upward (p0 > 0), is the compute-optimal size at C:

    u* = −p1 / (2·p0),   N* = exp(u*),   L* = p2 − p1² / (4·p0).

The tokens D* at N* are interpolated linearly in (ln N, ln D) between the runs of the budget,
so that N* can be placed at C = 6·N*·D* beside the L(N, D) fit's N_opt(C) (which counts
compute as 6·N·D). A budget with fewer than 3 sizes, a parabola opening downward, or a
minimum outside the sizes trained (an extrapolation) is reported in `skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from seqlab.errors import ShapeError
from seqlab.scaling.chinchilla import FLOPS_PER_PARAM_TOKEN


@dataclass
class IsoFlopCurve:
    """The mean loss against N at one budget, its parabola in ln N (`coefficients`
    p0, p1, p2) and minimum (N*, D*, L*), or why there is none (`skipped`; an extrapolated
    minimum keeps its numbers)."""

    backbone: str
    budget: float
    params: list[float]
    loss: list[float]
    tokens: list[float]
    coefficients: list[float] | None = None
    params_opt: float | None = None
    tokens_opt: float | None = None
    loss_opt: float | None = None
    skipped: str | None = None

    @property
    def compute_6nd_opt(self) -> float | None:
        """6·N*·D*: the budget as the L(N, D) allocation counts compute."""
        if self.params_opt is None or self.tokens_opt is None:
            return None
        return FLOPS_PER_PARAM_TOKEN * self.params_opt * self.tokens_opt

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "compute_6nd_opt": self.compute_6nd_opt}


def fit_isoflop(
    backbone: str,
    budget: float,
    params: list[float],
    loss: list[float],
    tokens: list[float],
) -> IsoFlopCurve:
    """The parabola in ln N through one budget's (N, L) and its minimum (see the module
    docstring); `params` in increasing order, one loss and token count each."""
    if not len(params) == len(loss) == len(tokens):
        raise ShapeError(
            f"expected one loss and token count per size, got {len(params)} sizes, "
            f"{len(loss)} losses, {len(tokens)} token counts"
        )
    curve = IsoFlopCurve(backbone, budget, list(params), list(loss), list(tokens))
    if len(params) < 3:
        curve.skipped = f"a parabola needs 3 sizes or more, this budget has {len(params)}"
        return curve
    u = np.log(np.asarray(params, dtype=float))
    p = np.polyfit(u, np.asarray(loss, dtype=float), 2)
    curve.coefficients = [float(c) for c in p]
    if p[0] <= 0:
        curve.skipped = "the parabola opens downward: no minimum"
        return curve
    u_opt = -p[1] / (2 * p[0])
    curve.params_opt = float(np.exp(u_opt))
    curve.loss_opt = float(p[2] - p[1] ** 2 / (4 * p[0]))
    curve.tokens_opt = float(np.exp(np.interp(u_opt, u, np.log(tokens))))
    if not u.min() <= u_opt <= u.max():
        curve.skipped = "the minimum lies outside the sizes trained (extrapolated)"
    return curve
