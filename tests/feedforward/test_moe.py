"""The mixture-of-experts feed-forward: dispatch against its dense reference, the balance loss,
parameter and FLOPs accounting, and the model around it (training loss, save/load, decode)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.feedforward.moe import MoE, balance_loss, moe_reference, route
from seqlab.model import build_model, count_parameters
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch

MOE = {"kind": "moe", "experts": 4, "top_k": 2, "shared": 1}


def moe_layer(experts: int = 5, top_k: int = 2, shared: int = 1, d: int = 6) -> MoE:
    torch.manual_seed(0)
    layer = MoE(d, 7, experts=experts, top_k=top_k, shared=shared, balance_weight=0.01)
    layer.init_weights(0.5, 0.5)  # a wide router spreads the tokens over the experts
    return layer.double()


def tiny(mixer: str = "attention", **mlp) -> seqlab.Model:
    torch.manual_seed(0)
    config = ModelConfig(
        mixer=mixer, d_model=16, n_layers=2, n_heads=2, vocab_size=11, mlp={**MOE, **mlp}
    )
    return build_model(config)


@pytest.mark.parametrize(("experts", "top_k", "shared"), [(5, 2, 1), (4, 1, 0), (3, 3, 2)])
@pytest.mark.parametrize("shape", [(2, 13), (1, 1)])
def test_dispatch_matches_the_dense_reference_float64(experts, top_k, shared, shape):
    layer = moe_layer(experts, top_k, shared)
    x = torch.randn(*shape, 6, dtype=torch.float64, requires_grad=True)
    y, want = layer(x), moe_reference(layer, x)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(y)
    inputs = [x, *layer.parameters()]
    got, expected = (
        torch.autograd.grad(out, inputs, grad, allow_unused=True, materialize_grads=True)
        for out in (y, want)
    )
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)
    assert got[1].abs().sum() > 0  # the router learns from the output through the gates


def test_dispatch_runs_each_expert_only_on_its_tokens():
    layer = moe_layer(experts=6, top_k=2, shared=0)
    seen = [0] * 6
    for e, expert in enumerate(layer.experts):
        expert.register_forward_hook(lambda m, i, o, e=e: seen.__setitem__(e, i[0].shape[0]))
    x = torch.randn(3, 10, 6, dtype=torch.float64)
    layer(x)
    _, experts, _ = route(layer.router(x), 2)
    assert seen == torch.bincount(experts.reshape(-1), minlength=6).tolist()
    assert sum(seen) == 2 * 30


def test_all_experts_chosen_is_the_softmax_mixture():
    layer = moe_layer(experts=4, top_k=4, shared=0)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    probs = torch.softmax(layer.router(x), -1)
    mixture = sum(probs[..., e, None] * expert(x) for e, expert in enumerate(layer.experts))
    torch.testing.assert_close(layer(x), mixture, rtol=1e-10, atol=1e-10)


def test_gates_are_renormalised_over_the_top_k_and_raw_for_top_1():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]], dtype=torch.float64)
    probs, experts, gates = route(logits, 2)
    assert experts.tolist() == [[2, 1]]
    torch.testing.assert_close(gates, probs[:, [2, 1]] / probs[:, [2, 1]].sum())
    _, _, single = route(logits, 1)
    torch.testing.assert_close(single, probs[:, [2]])


def test_balance_loss_is_one_at_perfect_balance_and_larger_when_collapsed():
    uniform = torch.full((4, 4), 0.25, dtype=torch.float64)
    spread = torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2]])
    assert balance_loss(uniform, spread).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[0.7, 0.3, 0.0, 0.0]] * 4, dtype=torch.float64)
    assert balance_loss(collapsed, torch.tensor([[0, 1]] * 4)).item() == pytest.approx(
        4 * (0.5 * 0.7 + 0.5 * 0.3)
    )


def test_balance_loss_is_recorded_weighted_only_with_autograd():
    layer = moe_layer(experts=4, top_k=2, shared=0)
    layer.router.weight.data.zero_()  # uniform router: P_e = 1/4 whichever experts ties pick
    x = torch.randn(8, 6, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
    assert not getattr(layer, "_auxiliary_losses", {})
    layer(x)
    recorded = layer._auxiliary_losses["balance"]
    # E · Σ_e f_e / 4 = 1 with Σ_e f_e = 1
    assert recorded.item() == pytest.approx(0.01 * 1.0)


@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_training_loss_reports_balance_and_reaches_the_router(mixer):
    model = tiny(mixer, balance_weight=0.5)
    objective = Autoregressive().bind(11)
    loss, metrics = objective.training_loss(model, Batch(torch.randint(0, 11, (2, 9))))
    assert 0.5 * 0.9 < metrics["aux_balance"] / 2 < 0.5 * 4  # two layers, each ~ weight · [1, E]
    loss.backward()
    router = model.blocks[0].mlp.router.weight
    assert router.grad is not None and router.grad.abs().sum() > 0


def test_active_params_and_flops_count_only_the_routed_experts():
    model = tiny()
    config = model.config
    hidden = config.mlp_hidden()
    assert hidden == round(4.0 / (2 + 1) * 16)  # DeepSeekMoE width: mlp_ratio / (top_k + shared)
    expert = 3 * 16 * hidden
    assert model.num_params() == count_parameters(config)
    assert model.num_params() - model.num_active_params() == 2 * (4 - 2) * expert
    dense = build_model(dataclasses.replace(config, mlp={"kind": "moe", "experts": 2}))
    assert dense.num_active_params() == dense.num_params()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    mixing = sum(b.mixer.mixing_flops(8) for b in model.blocks)
    assert model.flops_per_token(8) == pytest.approx(2 * (linear - 2 * 2 * expert) + mixing)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = tiny("gla", expert_ratio=1.5)
    seqlab.save(model, tmp_path / "m")
    again = seqlab.load(tmp_path / "m")
    assert again.config == model.config and again.config.mlp["expert_ratio"] == 1.5
    tokens = torch.randint(0, 11, (2, 9))
    assert torch.equal(model(tokens)[0], again(tokens)[0])


@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_token_by_token_decode_equals_the_full_sequence_float64(mixer):
    model = tiny(mixer).double()
    tokens = torch.randint(0, 11, (2, 10))
    full, _ = model(tokens)
    state = model.init_state(2)
    steps = []
    for t in range(10):
        logits, state = model(tokens[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("mlp", "message"),
    [
        ({"kind": "dense"}, "model.mlp.kind must be one of swiglu, moe"),
        ({"kind": "swiglu", "experts": 4}, "kind swiglu takes no other key"),
        ({"kind": "moe", "expert": 4}, "unknown config key 'model.mlp.expert'"),
        ({"kind": "moe", "experts": 0}, "model.mlp.experts must be >= 1"),
        ({"kind": "moe", "experts": 2, "top_k": 3}, r"model.mlp.top_k must lie in \[1, experts"),
        ({"kind": "moe", "top_k": 0}, "model.mlp.top_k must lie"),
        ({"kind": "moe", "shared": -1}, "model.mlp.shared must be >= 0"),
        ({"kind": "moe", "experts": 2.5}, "model.mlp.experts must be int"),
        ({"kind": "moe", "balance_weight": float("nan")}, "model.mlp.balance_weight must be"),
        ({"kind": "moe", "expert_ratio": 0}, "model.mlp.expert_ratio must be finite and > 0"),
        ({"kind": "moe", "expert_ratio": 0.01}, "each expert's hidden width rounds to 0"),
        ([1], "model.mlp must be a mapping"),
    ],
)
def test_bad_mlp_configs_name_what_was_expected(mlp, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(d_model=16, mlp=mlp)


def test_mlp_defaults_fill_in_and_mlp_ratio_zero_still_drops_the_feed_forward():
    assert ModelConfig().mlp == {"kind": "swiglu"}
    filled = ModelConfig(mlp={"kind": "moe"}).mlp
    assert filled == {
        "kind": "moe",
        "experts": 8,
        "top_k": 2,
        "shared": 0,
        "expert_ratio": None,
        "balance_weight": 0.01,
    }
    model = build_model(ModelConfig(d_model=16, n_heads=2, vocab_size=11, mlp_ratio=0))
    assert all(b.mlp is None and b.mlp_norm is None for b in model.blocks)
