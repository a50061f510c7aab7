"""Bounded KV caches for attention decoding (`kv_cache: {policy, budget, ...}` in `generate`):
one policy interface (`base.KVPolicy`) and one module per family of policies, registered by
name in `base.POLICIES`: exact (the growing cache), window and sink (`window.py`), h2o
(`h2o.py`), cluster (`cluster.py`) and infllm (`infllm.py`)."""

from __future__ import annotations

from seqlab.ops.kv_cache import cluster, h2o, infllm, window
from seqlab.ops.kv_cache.base import (
    POLICIES,
    BlockMemory,
    BoundedKVCache,
    Entries,
    KVPolicy,
    attend,
    build_policy,
    cache_numbers,
    init_bounded_state,
    memory_numbers,
)

__all__ = [
    "POLICIES",
    "BlockMemory",
    "BoundedKVCache",
    "Entries",
    "KVPolicy",
    "attend",
    "build_policy",
    "cache_numbers",
    "cluster",
    "h2o",
    "infllm",
    "init_bounded_state",
    "memory_numbers",
    "window",
]
