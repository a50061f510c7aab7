import math

import numpy
import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.objectives import Batch, build_objective
from seqlab.objectives.diffusion import EpsilonHybrid, GammaHybrid
from seqlab.objectives.noise import build_schedule
from seqlab.sampling import generate

VOCAB = 5


def tiny(vocab=VOCAB + 1):
    config = ModelConfig(mixer="attention", d_model=32, n_layers=1, n_heads=4, vocab_size=vocab)
    return seqlab.build_model(config).double()


@pytest.mark.parametrize(
    ("name", "options", "reference"),
    [
        ("epsilon_hybrid_diffusion", {"epsilon": 0.0}, "masked_diffusion"),
        ("gamma_hybrid_diffusion", {"gamma": 0.0}, "masked_diffusion"),
        ("gamma_hybrid_diffusion", {"gamma": 1.0}, "uniform_diffusion"),
    ],
)
def test_pure_ends_are_absorbing_and_uniform_under_the_same_seed(name, options, reference):
    """The same draws corrupt the same tokens; the terms agree to float rounding (the
    hybrid forms a, u, and the weights through log α)."""
    hybrid, plain = build_objective(name, VOCAB, **options), build_objective(reference, VOCAB)
    model = tiny()  # one extra logit: the mask's, dropped by every process
    batch = Batch(torch.randint(0, VOCAB, (6, 8)))
    for method in ("nll", "loss"):
        a, b = [], []
        for objective, out in ((hybrid, a), (plain, b)):
            torch.manual_seed(11)
            out.append(getattr(objective, method)(model, batch))
        if method == "nll":
            assert a[0].tokens == b[0].tokens and a[0].bound
            assert math.isclose(a[0].nats, b[0].nats, rel_tol=1e-10), (a[0].nats, b[0].nats)
        else:
            torch.testing.assert_close(a[0][0].double(), b[0][0].double(), rtol=1e-6, atol=0)


def one_token_elbo_and_nll(process, x0_table, nodes=200, steps=3000):
    """For a single token (L = 1) with x̂_0 a fixed table per state z `[N + 1, N]`:
    the ELBO by quadrature over t of Σ_z q_t(z | x_0) f(z, t), all x_0 at once, and the exact
    −log p_θ(x_0) of the reverse CTMC whose rates the ELBO's model uses (R̂(z → y) =
    Q_t(y → z) m̂_y / m̂_z, m̂ = Σ_x x̂_0(x | z) q_t(· | x)), integrated from t = 1 to 0."""
    n = process.vocab_size
    states = torch.arange(n + 1)
    logits = x0_table.log()[:, None, :]  # [N + 1 states, 1, N]

    def marginals(t):  # q_t(· | x) for every x: [N, N + 1]
        a, u = 1 - process.mask_rate(t), process.keep(t)
        data = a * (u * torch.eye(n, dtype=torch.float64) + (1 - u) / n)
        return torch.cat([data, (1 - a).expand(n, 1)], dim=1)

    # the ELBO
    t_nodes, w_nodes = (torch.from_numpy(x) for x in numpy.polynomial.legendre.leggauss(nodes))
    t_nodes, w_nodes = (t_nodes + 1) / 2, w_nodes / 2
    elbo = torch.zeros(n, dtype=torch.float64)
    for t, w in zip(t_nodes, w_nodes, strict=True):
        q = marginals(t)
        for x0 in range(n):
            tt = torch.full((n + 1, 1), float(t), dtype=torch.float64)
            f = process.terms(logits, states[:, None], torch.full((n + 1, 1), x0), tt)[:, 0]
            elbo[x0] += w * (q[x0] * f).sum()

    # the reverse process, stepped with the generator at each step's midpoint (logit grid)
    grid = torch.sigmoid(torch.linspace(14, -14, steps + 1, dtype=torch.float64))
    p = marginals(grid[0])[0].clone()  # q_1 does not depend on x_0 (up to 1e-6 here)
    rates = process.mask_weight, process.uniform_rate
    for hi, lo in zip(grid[:-1], grid[1:], strict=True):
        t = (hi + lo) / 2
        m_hat = x0_table @ marginals(t)  # [z, y]: m̂_y given the state z
        forward = torch.zeros(n + 1, n + 1, dtype=torch.float64)  # Q_t(y → z)
        a = 1 - process.mask_rate(t)
        forward[:n, n] = rates[0](t) * (1 - a) / a if a < 1 else 0.0
        forward[:n, :n] = rates[1](t) / n
        reverse = forward.T * m_hat / m_hat.diagonal()[:, None]  # [z, y]
        reverse = reverse.nan_to_num(0.0, 0.0, 0.0)  # states never reached (γ = 1: the mask)
        reverse.fill_diagonal_(0)
        reverse -= torch.diag(reverse.sum(1))
        p = p @ torch.linalg.matrix_exp(reverse * (hi - lo))
    return elbo, -p[:n].log(), float(p[:n].sum())


@pytest.mark.parametrize(
    "process",
    [
        GammaHybrid(3, build_schedule("loglinear"), 0.0),
        GammaHybrid(3, build_schedule("loglinear"), 0.4),
        GammaHybrid(3, build_schedule("cosine"), 1.0),
        EpsilonHybrid(3, build_schedule("loglinear"), 0.3),
    ],
    ids=["gamma0", "gamma0.4", "gamma1-cosine", "epsilon0.3"],
)
def test_elbo_bounds_the_exact_nll_of_one_token(process):
    """The bound holds against the model it scores; a single absorbing token is tight."""
    generator = torch.Generator().manual_seed(0)
    table = torch.rand(4, 3, dtype=torch.float64, generator=generator) + 0.2
    table = table / table.sum(-1, keepdim=True)
    elbo, nll, total = one_token_elbo_and_nll(process, table)
    assert abs(total - 1) < 1e-4, total  # the reverse process ends on data tokens
    assert (elbo >= nll - 1e-4).all(), (elbo, nll)
    if process.gamma == 0 if isinstance(process, GammaHybrid) else False:
        torch.testing.assert_close(elbo, nll, rtol=0, atol=1e-4)
    else:
        assert (elbo - nll).max() > 1e-3  # a real gap: the check can fail


def test_hybrid_integrand_vanishes_for_a_perfect_denoiser():
    for objective in (
        build_objective("gamma_hybrid_diffusion", VOCAB, gamma=0.3),
        build_objective("epsilon_hybrid_diffusion", VOCAB, epsilon=0.2),
    ):
        process = objective.process
        tokens = torch.randint(0, VOCAB, (4, 7))
        t = torch.rand(4, 7, dtype=torch.float64) * 0.98 + 0.01
        x_t = process.corrupt(tokens, t, torch.ones_like(tokens, dtype=torch.bool))
        assert (x_t == VOCAB).any() and ((x_t != VOCAB) & (x_t != tokens)).any()
        perfect = torch.nn.functional.one_hot(tokens, VOCAB).double() * 60.0
        assert process.terms(perfect, x_t, tokens, t).abs().max() < 1e-9
        assert (process.terms(torch.randn(4, 7, VOCAB), x_t, tokens, t) > 0).all()


@pytest.mark.parametrize(
    ("name", "options"),
    [("gamma_hybrid_diffusion", {"gamma": 0.5}), ("epsilon_hybrid_diffusion", {"epsilon": 0.2})],
)
def test_ancestral_sampling_with_hybrid_noise(name, options):
    objective = build_objective(name, VOCAB, **options)
    model = tiny()
    prompt = torch.randint(0, VOCAB, (2, 3))
    out = generate(
        model, prompt, max_new_tokens=6, sampler="ancestral", objective=objective, seed=0
    )
    assert torch.equal(out.tokens[:, :3], prompt)
    assert out.tokens.min() >= 0 and out.tokens.max() < VOCAB  # no mask left
    again = generate(
        model, prompt, max_new_tokens=6, sampler="ancestral", objective=objective, seed=0
    )
    assert torch.equal(out.tokens, again.tokens)
    for sampler in ("confidence", "topk_confidence", "remask"):
        with pytest.raises(ConfigError, match="absorbing"):
            generate(model, prompt, max_new_tokens=6, sampler=sampler, objective=objective)


def test_hybrid_posterior_is_the_true_one_for_a_one_hot_x0():
    """q(x_s | x_t, x_0) · q(x_t | x_0) = q(x_s | x_0) · q(x_t | x_s), summed over x_t: the
    posterior averaged over q_t(x_t | x_0) is q_s(x_s | x_0)."""
    process = GammaHybrid(4, build_schedule("loglinear"), 0.5)
    t, s = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    x0 = torch.nn.functional.one_hot(torch.tensor(2), 4).double()

    def marginal(time):
        a, u = 1 - process.mask_rate(time), process.keep(time)
        return torch.cat([a * (u * x0 + (1 - u) / 4), (1 - a)[None]])

    states = torch.arange(5)
    posterior = process.posterior(states, x0.expand(5, -1), t, s)  # [x_t, x_s]
    torch.testing.assert_close(marginal(t) @ posterior, marginal(s), rtol=1e-12, atol=1e-12)


def test_a_flat_time_sampler_refuses_a_hyperschedule():
    objective = build_objective("masked_diffusion", VOCAB, hyperschedule={"kind": "staircase"})
    with pytest.raises(ConfigError, match="hyperschedule"):
        generate(tiny(), [[1]], max_new_tokens=3, sampler="remask", objective=objective)


def test_hybrid_user_errors():
    with pytest.raises(ConfigError, match="gamma"):
        build_objective("gamma_hybrid_diffusion", VOCAB, gamma=1.5)
    with pytest.raises(ConfigError, match="epsilon"):
        build_objective("epsilon_hybrid_diffusion", VOCAB, epsilon=1.0)
