"""Bounded KV cache policies (`seqlab.ops.kv_cache`): exact at an unlimited budget, budgets
kept, deterministic, and each policy's own behaviour on hand-made caches."""

from __future__ import annotations

import math

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.ops.kv_cache import (
    POLICIES,
    build_policy,
    cache_numbers,
    init_bounded_state,
    memory_numbers,
)
from seqlab.ops.kv_cache.base import KVPolicy

T = 23
UNLIMITED = {
    "window": {"budget": T},
    "sink": {"budget": T, "sinks": 3},
    "h2o": {"budget": T, "recent": 5},
    "cluster": {"budget": T},
    "infllm": {"budget": T + 12, "sinks": 1, "block_size": 2, "top_k": 4, "representatives": 1},
    # every block retrieved: blocks form, and the answer is still exact
    "infllm_all": {
        "policy": "infllm",
        "budget": 2 * T + 8,
        "sinks": 2,
        "block_size": 2,
        "top_k": T,
        "representatives": 2,
    },
}
SMALL = {
    "window": {"budget": 5},
    "sink": {"budget": 6, "sinks": 2},
    "h2o": {"budget": 6, "recent": 2},
    "cluster": {"budget": 6, "recent": 2, "slack": 2},
    "infllm": {"budget": 12, "sinks": 1, "block_size": 2, "top_k": 2, "representatives": 1},
}


def model64(window: int | None = None, seed: int = 0) -> seqlab.model.Model:
    torch.manual_seed(seed)
    config = ModelConfig(
        d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=13, init_std=0.3, window=window
    )
    return seqlab.build_model(config).double().eval()


def spec(name: str, options: dict) -> dict:
    return {"policy": name, **options} if "policy" not in options else dict(options)


def decode_logits(model, tokens: torch.Tensor, kv_cache: dict | None, prompt: int = 4):
    """Logits of a prompt prefilled in one call, then of every later token decoded one by
    one through the state."""
    state = init_bounded_state(model, tokens.shape[0], kv_cache)
    out, state = model(tokens[:, :prompt], state)
    logits = [out]
    for t in range(prompt, tokens.shape[1]):
        out, state = model(tokens[:, t : t + 1], state)
        logits.append(out)
    return torch.cat(logits, dim=1), state


@pytest.mark.parametrize("name", sorted(UNLIMITED))
def test_an_unlimited_budget_equals_the_exact_cache(name):
    model = model64()
    tokens = torch.randint(0, 13, (2, T), generator=torch.Generator().manual_seed(1))
    exact, _ = model(tokens)
    bounded, state = decode_logits(model, tokens, spec(name, UNLIMITED[name]))
    torch.testing.assert_close(bounded, exact, rtol=0, atol=1e-10)
    if name == "infllm_all":
        assert int((state[0].memory.positions >= 0).sum()) > 0  # blocks were formed


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_a_chunked_prefill_of_an_unlimited_cache_is_exact(chunk):
    model = model64()
    tokens = torch.randint(0, 13, (2, T), generator=torch.Generator().manual_seed(2))
    for name, options in UNLIMITED.items():
        state = init_bounded_state(model, 2, {**spec(name, options), "chunk": chunk})
        out, _ = model(tokens, state)
        torch.testing.assert_close(out, model(tokens)[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_budgets_are_kept_at_every_step_and_decoding_is_deterministic(name):
    model = model64()
    tokens = torch.randint(0, 13, (3, 30), generator=torch.Generator().manual_seed(3))
    kv_cache = spec(name, SMALL[name])
    policy = build_policy(kv_cache)
    state = init_bounded_state(model, 3, kv_cache)
    out, state = model(tokens[:, :9], state)
    for t in range(9, 30):
        out, state = model(tokens[:, t : t + 1], state)
        for layer in state:
            held = layer.held()
            assert int(held.max()) <= policy.slots <= policy.budget
            assert layer.k.shape[1] == policy.slots
            if name == "infllm":  # read per step: the local entries and top_k blocks
                assert policy.slots + policy.top_k * policy.block_size <= policy.budget
                assert int((layer.memory.positions >= 0).sum()) > 0
            else:  # full: the budget is used (cluster frees slack - 1 slots per merge round)
                assert int(held.min()) >= policy.budget - getattr(policy, "slack", 1) + 1
    again, _ = decode_logits(model, tokens, kv_cache, prompt=9)
    first, _ = decode_logits(model, tokens, kv_cache, prompt=9)
    assert torch.equal(first, again)
    assert not torch.allclose(first, model(tokens)[0], atol=1e-6)  # it did compress
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8], [3, 4]]
    runs = [
        seqlab.generate(
            model, prompts, max_new_tokens=12, sampler="sample", seed=[5, 6], kv_cache=kv_cache
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)


def test_window_decoding_equals_sliding_window_attention():
    """A step reads the budget's entries and its own token: window budget W equals
    attention with `model.window` W + 1, prefilled token by token (chunk 1) or decoded."""
    budget = 5
    free, windowed = model64(), model64(window=budget + 1)
    windowed.load_state_dict(free.state_dict())
    tokens = torch.randint(0, 13, (2, T), generator=torch.Generator().manual_seed(4))
    bounded, _ = decode_logits(free, tokens, {"policy": "window", "budget": budget}, prompt=3)
    torch.testing.assert_close(bounded, windowed(tokens)[0], rtol=0, atol=1e-10)
    state = init_bounded_state(free, 2, {"policy": "window", "budget": budget})
    torch.testing.assert_close(free(tokens, state)[0], windowed(tokens)[0], rtol=0, atol=1e-10)


def exact_attention(q, k, v):
    """Causal softmax attention, one head: q, k, v `[T, D]`."""
    scores = q @ k.T / math.sqrt(q.shape[-1])
    mask = torch.ones(len(q), len(k), dtype=torch.bool).tril()
    return scores.masked_fill(~mask, -math.inf).softmax(-1) @ v


def run(policy: KVPolicy, q, k, v):
    """Feed hand-made q, k, v `[T, D]` (one row, one head) through the policy one token at a
    time; returns the outputs `[T, D]` and the final cache."""
    cache = policy.init_state(
        k.new_zeros(1, 0, 1, k.shape[1]),
        v.new_zeros(1, 0, 1, v.shape[1]),
        torch.zeros(1, dtype=torch.long),
    )
    outputs = []
    for t in range(len(q)):
        o, cache = policy.step(
            q[None, t : t + 1, None],
            k[None, t : t + 1, None],
            v[None, t : t + 1, None],
            torch.tensor([[t]]),
            cache,
        )
        outputs.append(o[0, 0, 0])
    return torch.stack(outputs), cache


def test_cluster_of_identical_keys_equals_exact_attention():
    g = torch.Generator().manual_seed(5)
    distinct = torch.randn(3, 8, generator=g, dtype=torch.float64)
    which = torch.randint(0, 3, (40,), generator=g)
    k = distinct[which]
    q = torch.randn(40, 8, generator=g, dtype=torch.float64)
    v = torch.randn(40, 8, generator=g, dtype=torch.float64)
    policy = build_policy({"policy": "cluster", "budget": 6, "recent": 2, "slack": 1})
    out, cache = run(policy, q, k, v)
    torch.testing.assert_close(out, exact_attention(q, k, v), rtol=0, atol=1e-12)
    assert int(cache.held().max()) <= 6 and float(cache.count.sum()) == 40
    # keys that differ get merged too: then it only approximates
    noisy = k + 0.3 * torch.randn(40, 8, generator=g, dtype=torch.float64)
    approx, _ = run(policy, q, noisy, v)
    assert not torch.allclose(approx, exact_attention(q, noisy, v), atol=1e-6)


def test_h2o_keeps_the_heaviest_entry():
    g = torch.Generator().manual_seed(6)
    d = 8
    q = torch.randn(30, d, generator=g, dtype=torch.float64).abs() * 0.1
    k = torch.randn(30, d, generator=g, dtype=torch.float64) * 0.1
    k[3] = 5.0  # every later query puts most of its mass on position 3
    v = torch.randn(30, d, generator=g, dtype=torch.float64)
    _, cache = run(build_policy({"policy": "h2o", "budget": 4, "recent": 2}), q, k, v)
    kept = cache.positions[0, :, 0].tolist()
    assert 3 in kept and {28, 29} <= set(kept)
    _, window = run(build_policy({"policy": "window", "budget": 4}), q, k, v)
    assert 3 not in window.positions[0, :, 0].tolist()


def test_infllm_retrieves_the_block_holding_a_planted_key():
    g = torch.Generator().manual_seed(7)
    d, n = 8, 60
    u = torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    q = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.1
    k = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.1
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    planted = 21
    k[planted] = 6.0 * u
    v[planted] = 10.0
    policy = build_policy(
        {
            "policy": "infllm",
            "budget": 20,
            "sinks": 2,
            "block_size": 4,
            "top_k": 1,
            "representatives": 4,
        }
    )
    q_last = 6.0 * u
    _, cache = run(policy, q[:-1], k[:-1], v[:-1])
    assert planted not in cache.positions[0, :, 0].tolist()  # it left the local window
    chosen = policy.retrieve(cache.memory, q_last[None, None, None])
    block = cache.memory.positions[0, int(chosen[0, 0, 0]), 0].tolist()
    assert planted in block
    o, _ = policy.step(
        q_last[None, None, None],
        k[None, -1:, None],
        v[None, -1:, None],
        torch.tensor([[n - 1]]),
        cache,
    )
    assert float(o.mean()) > 5.0  # the planted value dominates the read


@pytest.mark.parametrize(
    ("kv_cache", "message"),
    [
        ({"policy": "window", "budget": 0}, "budget must be an integer >= 1"),
        ({"policy": "sink", "budget": 4, "sinks": 4}, r"sinks must be an integer in \[0, budget\)"),
        ({"policy": "lru", "budget": 4}, "kv_cache policy must be one of exact"),
        ({"policy": "h2o"}, "needs a budget"),
        ({"policy": "h2o", "budget": 4, "sinks": 1}, "kv_cache h2o takes options"),
        ({"policy": "cluster", "budget": 2, "recent": 1}, "recent \\+ slack < budget"),
        ({"policy": "infllm", "budget": 10}, "budget must exceed"),
    ],
)
def test_bad_options_are_one_line_config_errors(kv_cache, message):
    model = model64()
    with pytest.raises(ConfigError, match=message) as error:
        seqlab.generate(model, [[1, 2]], max_new_tokens=2, kv_cache=kv_cache)
    assert "\n" not in str(error.value)


def test_generate_with_ragged_prompts_and_an_unlimited_budget_is_greedy_decoding():
    model = model64()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [3, 4, 5], [1] * 12]
    exact = seqlab.generate(model, prompts, max_new_tokens=10).tokens
    for name, options in UNLIMITED.items():
        out = seqlab.generate(model, prompts, max_new_tokens=10, kv_cache=spec(name, options))
        assert torch.equal(out.tokens, exact), name


def test_policies_are_registered_and_the_memory_is_counted():
    assert set(POLICIES) == {"window", "sink", "h2o", "cluster", "infllm"}
    model = model64()
    # 2 layers x 2 kv heads x (key 4 + value 4 + position, count, score) numbers per entry
    assert cache_numbers(model, {"policy": "window", "budget": 8}, 100) == 2 * 2 * 11 * 8
    assert cache_numbers(model, None, 100) == model.state_size(100)
    with pytest.raises(ConfigError, match="not a window or sparsity"):
        init_bounded_state(model64(window=4), 1, {"policy": "window", "budget": 8})


@pytest.mark.parametrize("name", list(SMALL))
def test_cache_numbers_count_every_number_the_state_keeps(name):
    """Every tensor of every bounded layer's state after T tokens (InfLLM's block memory
    apart), per row, is what `cache_numbers` and `memory_numbers` report."""
    model, kv_cache = model64(), spec(name, SMALL[name])
    tokens = torch.randint(0, 13, (3, T), generator=torch.Generator().manual_seed(0))
    _, state = model(tokens, init_bounded_state(model, 3, kv_cache))
    fields = ("k", "v", "positions", "count", "score")
    kept = sum(getattr(cache, f).numel() for cache in state for f in fields) // 3
    memory = [cache.memory for cache in state if cache.memory is not None]
    stored = sum(t.numel() for m in memory for t in vars(m).values()) // 3
    assert stored == memory_numbers(model, kv_cache, T)
    assert kept + stored == cache_numbers(model, kv_cache, T)
    assert (stored > 0) == (name == "infllm")
