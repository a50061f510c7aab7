"""Deep equilibrium models: the implicit gradient, decoding, reports, memory and training."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from seqlab.auxiliary import auxiliary_losses, clear_auxiliary_losses, recorded_metrics
from seqlab.config import ModelConfig, from_dict, load_config
from seqlab.errors import ConfigError
from seqlab.io import load, save
from seqlab.layout import Layout
from seqlab.model import build_model, count_parameters
from seqlab.train import train
from seqlab.train.logging import read_metrics
from tests.helpers import tiny_config, write_config, write_corpus

VOCAB = 13
STD = 0.15  # the largest init std of the tests: f is contractive, far from trivially


def deq_model(layers=("attention",), dtype=torch.float64, init_std=0.02, seed=0, **deq):
    torch.manual_seed(seed)
    options = {"layers": list(layers), "tol": 1e-10, "max_iter": 200}
    options.update({"backward_tol": 1e-10, "backward_max_iter": 200, **deq})
    config = ModelConfig(d_model=16, n_heads=2, vocab_size=VOCAB, init_std=init_std, deq=options)
    return build_model(config).to(dtype)


def gradients(model, tokens, probe, extra):
    """d(Σ logits · probe)/d(every parameter, the input embeddings)."""
    model.zero_grad()
    extra = extra.clone().requires_grad_()
    logits, _ = model(tokens, input_embeddings=extra)
    (logits * probe).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    grads["input_embeddings"] = extra.grad
    return grads


def relative_error(a, b):
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)).item() for k in b)


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_implicit_gradient_equals_the_unrolled_solve_run_to_convergence(mixer, solver):
    # a large init (f still contractive) makes the adjoint matter: see the one-step check
    implicit = deq_model([mixer], init_std=STD, solver=solver, backward="implicit")
    unrolled = deq_model([mixer], init_std=STD, solver="fixed_point", backward="unrolled")
    one_step = deq_model(
        [mixer], init_std=STD, backward="phantom", phantom_steps=1, phantom_damping=1.0
    )
    unrolled.load_state_dict(implicit.state_dict())
    one_step.load_state_dict(implicit.state_dict())
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, 7), generator=g)
    probe = torch.randn(2, 7, VOCAB, generator=g, dtype=torch.float64)
    extra = 0.3 * torch.randn(2, 7, 16, generator=g, dtype=torch.float64)
    reference = gradients(unrolled, tokens, probe, extra)
    assert recorded_metrics(unrolled)["deq_unconverged"] == 0
    ours = gradients(implicit, tokens, probe, extra)
    metrics = recorded_metrics(implicit)
    assert metrics["deq_unconverged"] == 0 and metrics["deq_backward_unconverged"] == 0
    assert metrics["deq_backward_iterations"] > 3  # the adjoint solve did real work
    assert relative_error(ours, reference) < 1e-7
    # the test can fail: dropping the adjoint (one step, Jacobian-free) is far off
    assert relative_error(gradients(one_step, tokens, probe, extra), reference) > 0.05


def test_forward_residual_is_below_tol_for_every_solver():
    tokens = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(2))
    for solver in ("anderson", "broyden", "fixed_point"):
        model = deq_model(init_std=0.1, solver=solver, tol=1e-6, max_iter=100).float()
        with torch.no_grad():
            model(tokens)
        metrics = recorded_metrics(model)
        assert metrics["deq_residual"] <= 1e-6 and metrics["deq_unconverged"] == 0, solver
        assert 1 <= metrics["deq_iterations"] <= 100


@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_decoding_token_by_token_and_prefill_equal_the_full_forward(mixer):
    model = deq_model([mixer], init_std=0.1).eval()
    tokens = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(tokens)
        state = model.init_state(2)
        steps = []
        for t in range(tokens.shape[1]):
            logits, state = model(tokens[:, t : t + 1], state)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-9, rtol=0)
        prefix, state = model(tokens[:, :5], model.init_state(2))
        rest, _ = model(tokens[:, 5:], state)
        torch.testing.assert_close(torch.cat([prefix, rest], 1), full, atol=1e-9, rtol=0)


def test_a_noncausal_layout_reaches_its_own_equilibrium():
    model = deq_model(init_std=0.1)
    tokens = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(4))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    with torch.no_grad():
        causal, _ = model(tokens)
        causal_changed, _ = model(changed)
        both, _ = model(tokens, layout=Layout.BIDIRECTIONAL)
        assert recorded_metrics(model)["deq_unconverged"] == 0
        both_changed, _ = model(changed, layout=Layout.BIDIRECTIONAL)
    torch.testing.assert_close(causal[:, 0], causal_changed[:, 0], atol=1e-9, rtol=0)
    assert (both[:, 0] - both_changed[:, 0]).abs().max() > 1e-6  # the first reads the last


def test_phantom_gradient_points_the_same_way_as_the_implicit_one():
    implicit = deq_model(init_std=STD)
    phantom = deq_model(init_std=STD, backward="phantom", phantom_steps=8, phantom_damping=0.8)
    phantom.load_state_dict(implicit.state_dict())
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, VOCAB, (2, 7), generator=g)
    probe = torch.randn(2, 7, VOCAB, generator=g, dtype=torch.float64)
    extra = torch.zeros(2, 7, 16, dtype=torch.float64)
    a = gradients(implicit, tokens, probe, extra)
    b = gradients(phantom, tokens, probe, extra)
    flat_a = torch.cat([v.flatten() for v in a.values()])
    flat_b = torch.cat([v.flatten() for v in b.values()])
    assert torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0) > 0.8
    assert "deq_backward_iterations" not in recorded_metrics(phantom)


def test_an_unconverged_solve_is_counted_reported_and_warned_once(caplog):
    model = deq_model(init_std=0.25, max_iter=2, tol=0.0, backward_max_iter=2, backward_tol=0.0)
    tokens = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    with caplog.at_level(logging.WARNING, logger="seqlab.implicit.deq"):
        for _ in range(2):
            logits, _ = model(tokens)
            logits.sum().backward()
    metrics = recorded_metrics(model)
    assert metrics["deq_unconverged"] == 1 and metrics["deq_backward_unconverged"] == 1
    assert metrics["deq_iterations"] == 2 and metrics["deq_residual"] > 0
    assert int(model.deq.unconverged) == 2 and int(model.deq.backward_unconverged) == 2
    warnings = [r for r in caplog.records if "did not converge" in r.getMessage()]
    assert len(warnings) == 1


def saved_bytes(model, tokens):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, _ = model(tokens)
    return total, logits


@pytest.mark.parametrize("backward", ["implicit", "phantom"])
def test_backward_memory_does_not_grow_with_solver_iterations(backward):
    tokens = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(7))
    sizes = {}
    for iterations in (10, 40):
        model = deq_model(max_iter=iterations, tol=0.0, backward=backward).float()
        sizes[iterations], logits = saved_bytes(model, tokens)
        assert recorded_metrics(model)["deq_iterations"] == iterations
    assert sizes[10] == sizes[40] > 0
    unrolled = {}
    for iterations in (10, 40):
        model = deq_model(max_iter=iterations, tol=0.0, backward="unrolled").float()
        unrolled[iterations], _ = saved_bytes(model, tokens)
    assert unrolled[40] > 3 * unrolled[10] > 3 * sizes[10]


def test_flops_count_the_iterations_used_and_parameters_are_counted_once():
    model = deq_model(max_iter=20, tol=1e-4).float()
    plain = build_model(ModelConfig(d_model=16, n_heads=2, vocab_size=VOCAB, n_layers=1))
    head = 2.0 * VOCAB * 16
    block = plain.flops_per_token(8) - head
    assert model.flops_per_token(8) == pytest.approx(head + 21 * block)  # before any solve
    model(torch.randint(0, VOCAB, (2, 8)))
    used = recorded_metrics(model)["deq_iterations"]
    assert used < 20
    assert model.flops_per_token(8) == pytest.approx(head + (used + 1) * block)
    phantom = deq_model(max_iter=20, backward="phantom", phantom_steps=3, jacobian_penalty=1.0)
    assert phantom.flops_per_token(8) == pytest.approx(head + (20 + 3 + 2) * block)
    assert model.num_params() == plain.num_params() + 16  # the injection norm only
    assert model.num_params() == count_parameters(model.config)
    assert model.config.n_layers == 1 and model.config.layer_names() == ["attention"]


@pytest.mark.parametrize(
    ("deq", "message"),
    [
        ({"solver": "newton"}, "anderson, broyden, fixed_point"),
        ({"backward": "exact"}, "implicit, phantom, unrolled"),
        ({"max_iter": 0}, "max_iter must be >= 1"),
        ({"tol": -1.0}, "tol must be finite and >= 0"),
        ({"phantom_damping": 0.0}, "phantom_damping must lie in (0, 1]"),
        ({"jacobian_penalty": -0.1}, "jacobian_penalty must be finite and >= 0"),
        ({"memory": 0}, "memory must be >= 1"),
        ({"layers": []}, "must name at least one mixer"),
        ({"solvr": "anderson"}, "unknown config key 'model.deq.solvr'"),
        ({"max_iter": "many"}, "model.deq.max_iter must be int"),
    ],
)
def test_bad_deq_options_are_config_errors(deq, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        ModelConfig(deq=deq)


def test_the_blocks_are_named_in_one_place():
    with pytest.raises(ConfigError, match="set one of them"):
        ModelConfig(layers=["gla"], deq={"layers": ["attention"]})
    config = ModelConfig(mixer="gla", n_layers=2, deq={})
    assert config.layer_names() == ["gla", "gla"] and config.deq_config().solver == "anderson"
    assert ModelConfig().deq is None and ModelConfig().deq_config() is None


def test_a_tiny_deq_trains_through_the_trainer_and_logs_its_solver(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", files=3, lines=20)
    raw = tiny_config(
        corpus,
        tmp_path / "cache",
        model={"d_model": 16, "n_heads": 2, "deq": {"layers": ["attention"], "max_iter": 8}},
        data={"seq_len": 16},
        train={
            "steps": 3,
            "batch_size": 2,
            "eval_every": 3,
            "eval_tokens": 64,
            "checkpoint_every": 3,
        },
    )
    config = load_config(write_config(tmp_path / "deq.yaml", raw))
    assert config.model.deq_config().max_iter == 8
    train(config, tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(records) == 3
    for record in records:
        assert 1 <= record["deq_iterations"] <= 8 and record["deq_residual"] >= 0
        assert record["deq_backward_iterations"] >= 1 and "deq_unconverged" in record
    assert from_dict(type(config), raw).model.deq == config.model.deq


def test_a_saved_deq_loads_with_its_iteration_count(tmp_path):
    model = deq_model(init_std=0.1, tol=1e-6).float()
    tokens = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(8))
    model(tokens)
    model.eval()
    save(model, tmp_path / "deq")
    loaded = load(tmp_path / "deq")
    assert loaded.config.deq == model.config.deq
    assert loaded.flops_per_token(8) == model.flops_per_token(8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens)[0], model(tokens)[0])


def test_the_jacobian_penalty_estimates_the_squared_jacobian_norm():
    """The recorded aux "jacobian" is γ ‖J_f(z*) ε‖² / n for the step's probe ε: equal to the
    exact Jacobian-vector product (math attention, float64) to the difference's accuracy,
    and its mean over probes is γ ‖J_f‖_F² / n."""
    tokens = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(3))
    model = deq_model(jacobian_penalty=0.5, init_std=0.15).train()
    captured = {}
    original = model.deq.forward

    def capture(stack, x):
        captured["stack"], captured["x"] = stack, x
        return original(stack, x)

    model.deq.forward = capture
    clear_auxiliary_losses(model)
    torch.manual_seed(11)
    model(tokens)
    (penalty,) = auxiliary_losses(model).values()
    assert list(auxiliary_losses(model)) == ["jacobian"] and penalty.requires_grad
    x_hat = model.deq.injection(captured["x"]).detach()

    def f(z):
        return x_hat + captured["stack"](z)[0] - z

    with torch.no_grad():
        z = x_hat.clone()
        for _ in range(300):
            z = f(z)
    torch.manual_seed(11)
    probe = torch.randn_like(z)
    with sdpa_kernel(SDPBackend.MATH):
        exact = torch.autograd.functional.jvp(f, z, probe)[1]
        jacobian = torch.autograd.functional.jacobian(f, z).reshape(z.numel(), z.numel())
    n = z.numel()
    torch.testing.assert_close(penalty.detach(), 0.5 * exact.pow(2).sum() / n, rtol=2e-3, atol=0)
    frobenius = 0.5 * jacobian.pow(2).sum() / n
    estimates = []
    for seed in range(200):
        clear_auxiliary_losses(model)
        torch.manual_seed(seed)
        model(tokens)
        estimates.append(auxiliary_losses(model)["jacobian"].item())
    mean = torch.tensor(estimates, dtype=torch.float64).mean()
    assert abs(mean - frobenius) < 0.25 * frobenius, (mean, frobenius)


def test_the_jacobian_penalty_trains_the_parameters():
    tokens = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    model = deq_model(jacobian_penalty=0.5, init_std=0.3).train()
    clear_auxiliary_losses(model)
    model(tokens)
    penalty = auxiliary_losses(model)["jacobian"]
    grads = torch.autograd.grad(penalty, [p for p in model.parameters()], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_no_jacobian_penalty_in_evaluation():
    tokens = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    model = deq_model(jacobian_penalty=0.5).eval()
    clear_auxiliary_losses(model)
    model(tokens)
    assert auxiliary_losses(model) == {}
