"""Eviction by position: the sliding `window` and StreamingLLM's attention `sink`."""

from __future__ import annotations

from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.ops.kv_cache.base import BlockMemory, Entries, KVPolicy, keep_top, register


@register("window")
class Window(KVPolicy):
    """Keep the newest `budget` entries. A step reads them and its own tokens, so decoding
    equals sliding-window attention over budget + 1 positions (`model.window` = budget + 1)."""

    def priority(self, e: Entries, newest: Tensor) -> Tensor:
        return e.positions.double()

    def compress(
        self, e: Entries, newest: Tensor, memory: BlockMemory | None
    ) -> tuple[Entries, BlockMemory | None]:
        return keep_top(e, self.priority(e, newest), self.slots), memory


@register("sink")
class Sink(Window):
    """StreamingLLM (Xiao et al., 2024): the first `sinks` positions (attention sinks) and the
    newest budget − sinks entries."""

    def __init__(self, budget: int, *, sinks: int = 4, chunk: int = 1) -> None:
        super().__init__(budget, chunk=chunk)
        if not isinstance(sinks, int) or isinstance(sinks, bool) or not 0 <= sinks < budget:
            raise ConfigError(
                f"kv_cache sink: sinks must be an integer in [0, budget), got {sinks!r} with "
                f"budget {budget}"
            )
        self.sinks = sinks

    def priority(self, e: Entries, newest: Tensor) -> Tensor:
        position = e.positions.double()
        return position + (e.positions < self.sinks).double() * 2.0**40
