"""Online clustering of keys (after Chelsea, "Efficient Long-Context LLM Inference via KV
Cache Clustering", Hu et al., 2025): similar keys share a centroid, their values averaged."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.ops.kv_cache.base import BlockMemory, Entries, KVPolicy, keep_top, register


def merge_closest(e: Entries, mergeable: Tensor, merges: Tensor) -> Entries:
    """Greedy agglomerative merging: `merges [B, H]` times per row and head, the two closest
    mergeable entries (squared L2 distance of their keys, `mergeable [B, N, H]`) become one
    with c = c_a + c_b, k = (c_a k_a + c_b k_b) / c, v likewise, the later position and the
    summed score; the merged-away slot is emptied. A pair of identical keys is at distance 0,
    so it merges first and the attention `Σ c_n e^{q·k_n} v_n` is unchanged."""
    b, n, h, d = e.k.shape
    flat = [s.transpose(1, 2).reshape(b * h, n, *s.shape[3:]).clone() for s in e]
    k, v, pos, count, score = flat
    able = mergeable.transpose(1, 2).reshape(b * h, n)
    todo = merges.reshape(b * h)
    dist = torch.cdist(k, k, compute_mode="donot_use_mm_for_euclid_dist")
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    pairable = able[:, :, None] & able[:, None, :] & ~eye
    dist = dist.masked_fill(~pairable, math.inf)
    rows = torch.arange(b * h, device=k.device)
    for step in range(int(todo.max()) if todo.numel() else 0):
        best = dist.view(b * h, -1).argmin(dim=1)
        first, second = best // n, best % n
        keep, gone = torch.minimum(first, second), torch.maximum(first, second)
        act = (todo > step) & torch.isfinite(dist[rows, first, second])
        ca, cb = count[rows, keep], count[rows, gone]
        total = ca + cb
        k_new = (ca[:, None] * k[rows, keep] + cb[:, None] * k[rows, gone]) / total[:, None]
        v_new = (ca[:, None] * v[rows, keep] + cb[:, None] * v[rows, gone]) / total[:, None]
        a = act[:, None]
        k[rows, keep] = torch.where(a, k_new, k[rows, keep])
        v[rows, keep] = torch.where(a, v_new, v[rows, keep])
        count[rows, keep] = torch.where(act, total, ca)
        score[rows, keep] = torch.where(
            act, score[rows, keep] + score[rows, gone], score[rows, keep]
        )
        pos[rows, keep] = torch.where(
            act, torch.maximum(pos[rows, keep], pos[rows, gone]), pos[rows, keep]
        )
        count[rows, gone] = torch.where(act, 0.0, cb)
        pos[rows, gone] = torch.where(act, -1, pos[rows, gone])
        fresh = torch.cdist(k[rows, keep][:, None], k, compute_mode="donot_use_mm_for_euclid_dist")[
            :, 0
        ]
        fresh = fresh.masked_fill(~pairable[rows, keep] | (count <= 0), math.inf)
        fresh[rows, keep] = math.inf
        update = act[:, None]
        dist[rows, keep] = torch.where(update, fresh, dist[rows, keep])
        dist[rows, :, keep] = torch.where(update, fresh, dist[rows, :, keep])
        dist[rows, gone] = torch.where(update, math.inf, dist[rows, gone])
        dist[rows, :, gone] = torch.where(update, math.inf, dist[rows, :, gone])
    return Entries(*(s.reshape(b, h, n, *s.shape[2:]).transpose(1, 2) for s in flat))


@register("cluster")
class Cluster(KVPolicy):
    """Keys clustered online within `budget` entries: the `recent` newest tokens stay exact;
    when the cache overflows, the closest pairs of older entries (centroids or tokens) merge
    (`merge_closest`) until slack − 1 slots are free, so merging runs once every `slack`
    decode steps. Attention weighs a centroid by its size (`log c` added to its logit). Defaults:
    recent = budget // 4, slack = max(1, budget // 8), within recent + slack < budget.

    Chelsea merges within chunks by bipartite soft matching of an alternating partition;
    this is the greedy online form of the same idea: the most similar keys share a centroid.
    """

    def __init__(
        self,
        budget: int,
        *,
        recent: int | None = None,
        slack: int | None = None,
        chunk: int = 1,
    ) -> None:
        super().__init__(budget, chunk=chunk)
        slack = max(1, budget // 8) if slack is None else slack
        recent = max(0, min(budget // 4, budget - slack - 1)) if recent is None else recent
        for option, value in (("recent", recent), ("slack", slack)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"kv_cache cluster: {option} must be an integer >= 0, got {value!r}"
                )
        if slack < 1 or recent + slack >= budget:
            raise ConfigError(
                f"kv_cache cluster needs slack >= 1 and recent + slack < budget, got recent "
                f"{recent}, slack {slack}, budget {budget}"
            )
        self.recent, self.slack = recent, slack

    def compress(
        self, e: Entries, newest: Tensor, memory: BlockMemory | None
    ) -> tuple[Entries, BlockMemory | None]:
        held = (e.count > 0).sum(dim=1)
        merges = torch.where(held > self.slots, held - self.slots + self.slack - 1, 0)
        if bool((merges > 0).any()):
            old = e.positions <= (newest[:, None, None] - self.recent)
            e = merge_closest(e, (e.count > 0) & old, merges)
        return keep_top(e, e.positions.double(), self.slots), memory
