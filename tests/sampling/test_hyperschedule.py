"""Diffusion samplers along a non-flat hyperschedule (Fathi et al., 2025): each position
steps between its own levels τ_i(t_k) → τ_i(t_{k+1}) on the global grid t_k = 1 − k/K."""

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.layout import Layout
from seqlab.objectives import build_objective
from seqlab.objectives.noise import Hyperschedule
from seqlab.sampling import generate
from seqlab.sampling.diffusion import ancestral_rule, denoise

VOCAB = 7
MASK = VOCAB
NOISES = [
    ("masked_diffusion", {}),
    ("uniform_diffusion", {}),
    ("gamma_hybrid_diffusion", {"gamma": 0.5}),
    ("epsilon_hybrid_diffusion", {"epsilon": 0.2}),
]


def tiny(objective, seed=0):
    torch.manual_seed(seed)
    vocab = objective.model_vocab_size(VOCAB)
    config = ModelConfig(d_model=32, n_layers=2, n_heads=4, vocab_size=vocab, init_std=0.3)
    return seqlab.build_model(config).double().eval()


def canvases(model):
    """The token canvases the model reads, one per call (a forward pre-hook)."""
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    return seen


def greedy_ar(model, prompt, n):
    """Greedy decoding of the model a width-1 staircase trains, position by position: argmax
    x̂_0 at the first mask of [prompt, decoded so far, MASK, …, MASK], read bidirectionally."""
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, n), MASK)], dim=1)
    with torch.no_grad():
        for i in range(p, p + n):
            x[:, i] = model(x, layout=Layout.BIDIRECTIONAL)[0][:, i, :VOCAB].argmax(-1)
    return x


def traced(objective, model, prompt, n, steps=None, seed=0):
    """Ancestral sampling through `denoise` with every step's tokens recorded:
    [(step, K, tokens before, tokens after)] over the generated positions."""
    generator = torch.Generator().manual_seed(seed)
    rule = ancestral_rule(objective, generator)
    trace = []

    def recording(tokens, probs, free, step, steps, levels=None):
        new = rule(tokens, probs, free, step, steps, levels=levels)
        trace.append((step, steps, tokens.clone(), new.clone()))
        return new

    out = denoise(
        model,
        prompt,
        n,
        recording,
        objective=objective,
        steps=steps,
        block_size=None,
        cache=False,
        temperature=1.0,
        stop_when_clean=objective.noise == "absorbing",
        generator=generator,
    )
    return out, trace


@pytest.mark.parametrize("prompt_length", [1, 3])
def test_staircase_of_width_one_is_greedy_ar_decoding(prompt_length):
    """K = L: step k commits exactly position k (prompt steps skipped, no model call), so
    greedy confidence decoding is greedy AR decoding and each model call reads a clean
    prefix followed by masks only."""
    objective = build_objective("masked_diffusion", VOCAB, hyperschedule={"kind": "staircase"})
    model = tiny(objective)
    prompt = torch.randint(0, VOCAB, (3, prompt_length))
    n = 6
    seen = canvases(model)
    out = generate(model, prompt, max_new_tokens=n, sampler="confidence", objective=objective)
    assert torch.equal(out.tokens, greedy_ar(model, prompt, n))
    # the hook saw the n denoising passes and then the n reference passes
    assert out.nfe == n and len(seen) == 2 * n
    for j, x in enumerate(seen[:n]):
        assert (x[:, : prompt_length + j] != MASK).all()
        assert (x[:, prompt_length + j :] == MASK).all()


def test_ancestral_staircase_of_width_one_commits_one_position_per_step():
    objective = build_objective("masked_diffusion", VOCAB, hyperschedule={"kind": "staircase"})
    model = tiny(objective)
    prompt = torch.randint(0, VOCAB, (4, 2))
    out, trace = traced(objective, model, prompt, 5)
    assert [step for step, *_ in trace] == [2, 3, 4, 5, 6]  # K = 7, steps 0 and 1: prompt
    for j, (_, steps, before, after) in enumerate(trace):
        assert steps == 7
        assert (before[:, :j] != MASK).all() and (before[:, j:] == MASK).all()
        assert (after[:, : j + 1] != MASK).all() and (after[:, j + 1 :] == MASK).all()
    assert out.nfe == 5


@pytest.mark.parametrize(("name", "options"), NOISES)
def test_a_staircase_wider_than_the_canvas_is_flat_sampling(name, options):
    """One block ramping with t: the per-position path reproduces the flat sampler draw for
    draw (same steps, same seed)."""
    flat = build_objective(name, VOCAB, **options)
    wide = build_objective(name, VOCAB, hyperschedule={"kind": "staircase", "width": 50}, **options)
    model = tiny(flat)
    prompt = torch.randint(0, VOCAB, (3, 2))
    runs = [
        generate(model, prompt, max_new_tokens=6, sampler="ancestral", objective=o, steps=6, seed=5)
        for o in (flat, wide)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert runs[0].nfe == runs[1].nfe


@pytest.mark.parametrize(("name", "options"), NOISES)
def test_a_flat_hyperschedule_changes_nothing(name, options):
    plain = build_objective(name, VOCAB, **options)
    flat = build_objective(name, VOCAB, hyperschedule={"kind": "flat"}, **options)
    model = tiny(plain)
    prompt = torch.randint(0, VOCAB, (2, 3))
    a, b = (
        generate(model, prompt, max_new_tokens=5, sampler="ancestral", objective=o, seed=3)
        for o in (plain, flat)
    )
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe


@pytest.mark.parametrize(("name", "options"), NOISES)
@pytest.mark.parametrize("width", [2, 3])
def test_sliding_commits_left_to_right_in_overlapping_windows(name, options, width):
    """K = L − 1 + w: position i moves during steps i … i + w − 1 only, is clean (not a mask)
    from then on and never changes again; absorbing noise never re-masks a decoded token."""
    objective = build_objective(
        name, VOCAB, hyperschedule={"kind": "sliding", "width": width}, **options
    )
    model = tiny(objective)
    p, n = 2, 7
    length = p + n
    prompt = torch.randint(0, VOCAB, (5, p))
    out, trace = traced(objective, model, prompt, n)
    assert all(steps == length - 1 + width for _, steps, *_ in trace)
    settled = {}
    for step, _, before, after in trace:
        changed = (before != after).any(0)
        for j in range(n):
            i = p + j
            if changed[j]:
                assert i <= step <= i + width - 1, (i, step)
                assert j not in settled
            if step >= i + width - 1:
                assert (after[:, j] != MASK).all()
                settled.setdefault(j, after[:, j].clone())
                assert torch.equal(after[:, j], settled[j])
            if objective.noise == "absorbing":
                assert ((before[:, j] == MASK) | (after[:, j] == before[:, j])).all()
            if step < i:
                assert torch.equal(after[:, j], before[:, j])
    assert sorted(settled) == list(range(n))
    assert torch.equal(out.tokens[:, :p], prompt)
    assert (out.tokens < VOCAB).all()


@pytest.mark.parametrize("sampler", ["ancestral", "acs", "confidence"])
@pytest.mark.parametrize(("kind", "width"), [("staircase", 2), ("sliding", 3)])
def test_nfe_counts_the_model_calls(sampler, kind, width):
    objective = build_objective(
        "masked_diffusion", VOCAB, hyperschedule={"kind": kind, "width": width}
    )
    model = tiny(objective)
    seen = canvases(model)
    out = generate(
        model, [[1, 2, 3]], max_new_tokens=7, sampler=sampler, objective=objective, seed=0
    )
    assert out.nfe == len(seen) >= 1
    assert (out.tokens < VOCAB).all()


def test_docstring_example_holds():
    """The example in the `ancestral` docstring."""
    objective = build_objective(
        "masked_diffusion", VOCAB, hyperschedule={"kind": "sliding", "width": 2}
    )
    model = tiny(objective)
    out, trace = traced(objective, model, torch.tensor([[1, 2]]), 6)
    assert trace[0][:2] == (2, 9)  # steps 0 and 1 move only the prompt: skipped
    out = generate(model, [[1, 2]], max_new_tokens=6, sampler="ancestral", objective=objective)
    assert out.nfe <= 7


def test_grid_levels_are_exact_and_steps_natural():
    for kind, width, length, steps in [
        ("staircase", 1, 7, 7),
        ("staircase", 3, 7, 9),
        ("staircase", 9, 7, 7),
        ("sliding", 3, 7, 9),
        ("sliding", 1, 7, 7),
        ("flat", 1, 7, 7),
    ]:
        hyper = Hyperschedule(kind, width)
        assert hyper.sampling_steps(length) == steps
        for k in range(steps + 1):
            grid = hyper.grid_levels(length, k, steps, torch.device("cpu"))
            t = torch.full((1, length), 1 - k / steps, dtype=torch.float64)
            torch.testing.assert_close(grid, hyper.levels(t)[0][0], rtol=0, atol=1e-12)
            assert grid.diff().ge(0).all()  # later positions are noisier
        assert (hyper.grid_levels(length, 0, steps, torch.device("cpu")) == 1).all()
        assert (hyper.grid_levels(length, steps, steps, torch.device("cpu")) == 0).all()
    # the staircase of width 3 ramps block b over steps 3b … 3b + 2, in thirds
    levels = Hyperschedule("staircase", 3).grid_levels(7, 4, 9, torch.device("cpu"))
    assert levels.tolist() == [0, 0, 0, 2 / 3, 2 / 3, 2 / 3, 1]


def test_unsupported_combinations_raise():
    objective = build_objective(
        "masked_diffusion", VOCAB, hyperschedule={"kind": "sliding", "width": 2}
    )
    model = tiny(objective)
    for sampler in ("remask", "topk_confidence", "lrd"):
        with pytest.raises(ConfigError, match="ancestral"):
            generate(model, [[1]], max_new_tokens=4, sampler=sampler, objective=objective)
    with pytest.raises(ConfigError, match="one block"):
        generate(
            model, [[1]], max_new_tokens=4, sampler="ancestral", objective=objective, block_size=2
        )


@pytest.mark.parametrize("seed", [0, 1])
def test_ancestral_at_temperature_zero_is_greedy(seed):
    """Greedy tokens whatever the seed: on a width-1 staircase, greedy AR decoding."""
    objective = build_objective("masked_diffusion", VOCAB, hyperschedule={"kind": "staircase"})
    model = tiny(objective)
    prompt = torch.randint(0, VOCAB, (3, 2))
    out = generate(
        model,
        prompt,
        max_new_tokens=6,
        sampler="ancestral",
        objective=objective,
        temperature=0.0,
        seed=seed,
    )
    assert torch.equal(out.tokens, greedy_ar(model, prompt, 6))
