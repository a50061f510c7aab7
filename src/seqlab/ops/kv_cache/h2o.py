"""Heavy-hitter eviction: H2O (Zhang et al., 2023)."""

from __future__ import annotations

from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.ops.kv_cache.base import Entries, register
from seqlab.ops.kv_cache.window import Window


@register("h2o")
class HeavyHitters(Window):
    """H2O: the `recent` newest entries, and of the older ones the budget − recent with the
    largest attention mass accumulated so far (summed over every query that read them and
    the query heads of their group; each key/value head chooses its own). `recent` defaults
    to budget // 2."""

    def __init__(self, budget: int, *, recent: int | None = None, chunk: int = 1) -> None:
        super().__init__(budget, chunk=chunk)
        recent = budget // 2 if recent is None else recent
        if not isinstance(recent, int) or isinstance(recent, bool) or not 0 <= recent <= budget:
            raise ConfigError(
                f"kv_cache h2o: recent must be an integer in [0, budget], got {recent!r} "
                f"with budget {budget}"
            )
        self.recent = recent

    def priority(self, e: Entries, newest: Tensor) -> Tensor:
        recent = e.positions > (newest[:, None, None] - self.recent)
        return e.score.double() + recent.double() * (2.0**40 + e.positions.double())
