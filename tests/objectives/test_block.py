import math

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.layout import Layout
from seqlab.objectives import Batch, build_objective

VOCAB = 7
MASK = VOCAB


RECURRENT = ["gla", "mamba", "gated_deltanet", "lstm"]


def tiny(vocab=VOCAB + 1, n_layers=2, mixer="attention"):
    config = ModelConfig(mixer=mixer, d_model=32, n_layers=n_layers, n_heads=4, vocab_size=vocab)
    return seqlab.build_model(config).double()


def all_noised_terms(objective, model, tokens):
    """Per-position ELBO terms at t = 1 (everything masked, weight 1): −log x̂_0 at each token."""
    t = torch.ones(tokens.shape, dtype=torch.float64)
    with torch.no_grad():
        return objective.elbo_terms(model, Batch(tokens), t)[0]


@pytest.mark.parametrize("mixer", ["attention", *RECURRENT])
def test_block_size_one_is_the_chain_rule(mixer):
    """With every block one token, each masked token reads exactly its clean prefix. For
    attention that is the causal layout; a recurrent mixer's block_causal(1) layout also
    scans the one-token block in reverse (see `scan_in_layout`), an AR model of its own."""
    model = tiny(mixer=mixer)
    layout = Layout.CAUSAL if mixer == "attention" else Layout.block_causal(1)
    tokens = torch.randint(0, VOCAB, (3, 9))
    objective = build_objective("block_diffusion", VOCAB, block_size=1)
    terms = all_noised_terms(objective, model, tokens)
    # independent chain rule: p(x_i | x_<i) from a causal pass over [x_<i, MASK]
    expected = torch.empty_like(terms)
    with torch.no_grad():
        for i in range(tokens.shape[1]):
            x = torch.cat([tokens[:, :i], torch.full((3, 1), MASK)], dim=1)
            logp = model(x, layout=layout)[0][:, -1, :VOCAB].log_softmax(-1)
            expected[:, i] = -logp.gather(-1, tokens[:, i : i + 1]).squeeze(-1)
    torch.testing.assert_close(terms, expected, rtol=1e-12, atol=1e-12)


def test_block_size_one_with_the_count_estimator_is_exactly_the_chain_rule():
    model = tiny()
    tokens = torch.randint(0, VOCAB, (3, 9))
    objective = build_objective("block_diffusion", VOCAB, block_size=1, estimator="count")
    expected = all_noised_terms(objective, model, tokens).sum()
    result = objective.nll(model, Batch(tokens))
    assert math.isclose(result.nats, float(expected), rel_tol=1e-12), (result.nats, expected)
    assert result.tokens == 27 and result.bound


@pytest.mark.parametrize(
    ("noise", "estimator"), [("absorbing", "time"), ("uniform", "time"), ("absorbing", "count")]
)
def test_block_size_of_the_sequence_is_full_diffusion_with_the_same_draws(noise, estimator):
    name = "masked_diffusion" if noise == "absorbing" else "uniform_diffusion"
    options = {"estimator": estimator} if estimator == "count" else {}
    full = build_objective(name, VOCAB, **options)
    block = build_objective(
        "block_diffusion", VOCAB, block_size=10, noise=noise, clip=None, **options
    )
    model = tiny(vocab=full.model_vocab_size(VOCAB))
    batch = Batch(torch.randint(0, VOCAB, (4, 10)))
    for method in ("nll", "loss"):
        torch.manual_seed(5)
        a = getattr(full, method)(model, batch)
        torch.manual_seed(5)
        b = getattr(block, method)(model, batch)
        if method == "nll":
            assert a.tokens == b.tokens and a.bound and b.bound
            assert math.isclose(a.nats, b.nats, rel_tol=1e-10), (a.nats, b.nats)
        else:
            torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=0)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("mixer", ["attention", *RECURRENT])
def test_noised_block_reads_only_its_clean_prefix_and_itself(mixer, shift):
    """Each block's x̂_0 equals a plain block-causal pass over [x_0 of earlier blocks, x_t of
    the block]: the context the KV-cached (or state-cached) sampler gives it, at the same
    positions. Shifted, position i reads that pass's output at i − 1 (0 reads its own)."""
    model = tiny(mixer=mixer)
    b, length = 4, 10
    objective = build_objective("block_diffusion", VOCAB, block_size=b, shift=shift)
    tokens = torch.randint(0, VOCAB, (2, length))
    x_t = torch.where(torch.rand(2, length) < 0.5, MASK, tokens)
    with torch.no_grad():
        logits = objective.denoise(model, x_t, tokens)
        for start in range(0, length, b):
            end = min(start + b, length)
            x = torch.cat([tokens[:, :start], x_t[:, start:end]], dim=1)
            out = model(x, layout=Layout.block_causal(b))[0]
            if not shift:
                expected = out[:, start:end]
            elif start == 0:
                expected = torch.cat([out[:, :1], out[:, : end - 1]], dim=1)
            else:
                expected = out[:, start - 1 : end - 1]
            torch.testing.assert_close(logits[:, start:end], expected, rtol=1e-10, atol=1e-10)
        # later clean tokens change nothing before them
        changed = tokens.clone()
        changed[:, 8:] = (changed[:, 8:] + 1) % VOCAB
        torch.testing.assert_close(
            objective.denoise(model, x_t, changed)[:, :8], logits[:, :8], rtol=0, atol=0
        )


def test_shifted_block_size_one_from_ar_weights_is_the_ar_model(tmp_path):
    """Fast-dLLM v2 / SDAR start: AR weights under `shift` with blocks of one token score
    every position after the first with the AR model's own next-token distribution."""
    from seqlab.io import initialize_from

    ar = tiny(vocab=VOCAB)
    seqlab.save(ar, tmp_path / "ar")
    objective = build_objective("block_diffusion", VOCAB, block_size=1, shift=True)
    model = tiny()
    initialize_from(model, tmp_path / "ar")
    tokens = torch.randint(0, VOCAB, (3, 9))
    terms = all_noised_terms(objective, model, tokens)
    with torch.no_grad():
        logp = ar(tokens, layout=Layout.CAUSAL)[0][:, :-1].log_softmax(-1)
    expected = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(terms[:, 1:], expected, rtol=1e-12, atol=1e-12)


def test_mixture_of_block_sizes_and_clipped_times_train():
    objective = build_objective(
        "block_diffusion", VOCAB, block_size=4, block_sizes=[2, 4, 8], clip=[0.3, 0.8]
    )
    model = tiny().float()
    seen = set()
    for _ in range(6):
        loss, metrics = objective.loss(model, Batch(torch.randint(0, VOCAB, (2, 8))))
        loss.backward()
        seen.add(metrics["block_size"])
        assert torch.isfinite(loss)
    assert seen <= {2.0, 4.0, 8.0} and len(seen) > 1
    times = objective.train_times(100, torch.device("cpu"))
    assert times.min() >= 0.3 and times.max() <= 0.8
    with pytest.raises(ConfigError, match="clip"):
        build_objective("block_diffusion", VOCAB, clip=[0.8, 0.3])
    with pytest.raises(ConfigError, match="clip"):
        build_objective("block_diffusion", VOCAB, clip="paper")


def test_paper_clip_windows():
    from seqlab.objectives.block import paper_clip

    assert paper_clip(1) == (1.0, 1.0)
    assert paper_clip(4) == (0.45, 0.95) and paper_clip(16) == (0.3, 0.8)
    assert paper_clip(2) == (0.45, 0.95) and paper_clip(64) == (0.3, 0.8)
    low, high = paper_clip(8)
    assert math.isclose(low, 0.375) and math.isclose(high, 0.875)


def masked_fractions(objective, tokens, scored):
    """Per-block masked fractions of scored tokens of one training draw, and the times."""
    process = objective._bound()
    b, length = tokens.shape
    t = objective._times(
        objective.train_times(b * objective.n_groups(length), "cpu"), Batch(tokens)
    )
    x_t = objective.noised(process, tokens, t, scored)
    masked = ((x_t == process.mask_id) & scored).double().view(b, -1, objective.block_size)
    return masked.sum(-1) / scored.double().view(b, -1, objective.block_size).sum(-1), t


@pytest.mark.parametrize("block_size", [4, 8, 16])
def test_auto_clip_keeps_every_block_in_the_window(block_size):
    torch.manual_seed(0)
    objective = build_objective("block_diffusion", VOCAB, block_size=block_size)
    low, high = objective.window()
    tokens = torch.randint(0, VOCAB, (32, 32))
    fractions, t = masked_fractions(objective, tokens, torch.ones_like(tokens, dtype=torch.bool))
    assert t.min() >= low and t.max() <= high
    assert fractions.min() >= low - 1e-9 and fractions.max() <= high + 1e-9
    unclipped = build_objective("block_diffusion", VOCAB, block_size=block_size, clip=None)
    assert unclipped.window() is None
    fractions, t = masked_fractions(unclipped, tokens, torch.ones_like(tokens, dtype=torch.bool))
    assert t.min() < low and t.max() > high  # 1,024 draws cover [0, 1]
    assert fractions.min() < low and fractions.max() > high


def test_resampling_counts_scored_tokens_only_and_can_be_switched_off():
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (16, 16))
    scored = torch.ones_like(tokens, dtype=torch.bool)
    scored[:, :2] = False  # two clean context tokens in the first block of every row
    objective = build_objective("block_diffusion", VOCAB, block_size=4, clip=[0.5, 0.5 + 1e-6])
    fractions, _ = masked_fractions(objective, tokens, scored)
    assert torch.equal(fractions, torch.full_like(fractions, 0.5))  # 1 of 2, 2 of 4
    plain = build_objective("block_diffusion", VOCAB, block_size=4, clip=[0.5, 0.6], resample=False)
    fractions, _ = masked_fractions(plain, tokens, scored)
    assert (fractions != 0.5).any()


def test_auto_clip_at_block_size_one_trains_on_the_ar_loss():
    torch.manual_seed(0)
    objective = build_objective("block_diffusion", VOCAB, block_size=1)
    model = tiny()
    tokens = torch.randint(0, VOCAB, (3, 9))
    loss, _ = objective.loss(model, Batch(tokens))
    expected = all_noised_terms(objective, model, tokens).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)


def test_the_evaluation_bound_ignores_the_training_window():
    model = tiny()
    tokens = torch.randint(0, VOCAB, (2, 16))
    scores = []
    for clip in ("auto", None, [0.2, 0.3]):
        objective = build_objective("block_diffusion", VOCAB, block_size=4, clip=clip)
        torch.manual_seed(3)
        scores.append(objective.nll(model, Batch(tokens)).nats)
    assert scores[0] == scores[1] == scores[2]


@pytest.mark.statistical
@pytest.mark.parametrize("mixer", ["attention", "gla", "mamba"])
def test_block_diffusion_learns(mixer):
    torch.manual_seed(0)
    objective = build_objective("block_diffusion", VOCAB, block_size=4)
    model = tiny(n_layers=1, mixer=mixer).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    base = torch.arange(8) % VOCAB
    for _ in range(100):
        loss, _ = objective.loss(model, Batch((base + torch.randint(0, VOCAB, (16, 1))) % VOCAB))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    result = objective.nll(model, Batch((base + torch.randint(0, VOCAB, (64, 1))) % VOCAB))
    assert result.per_token < 0.6 * math.log(VOCAB), result.per_token


def test_clip_and_resample_options_are_checked():
    for clip in (0.5, [0.5], ["a", 0.9], "paper"):
        with pytest.raises(ConfigError, match="clip"):
            build_objective("block_diffusion", VOCAB, clip=clip)
    with pytest.raises(ConfigError, match="resample"):
        build_objective("block_diffusion", VOCAB, resample="false")


def test_auto_clips_absorbing_noise_only_and_uniform_block_one_trains_finitely():
    uniform = build_objective("block_diffusion", VOCAB, block_size=1, noise="uniform")
    assert uniform.window() is None
    model = tiny(vocab=uniform.model_vocab_size(VOCAB)).float()
    loss, metrics = uniform.loss(model, Batch(torch.randint(0, VOCAB, (2, 8))))
    assert torch.isfinite(loss) and "nll_bound" in metrics
    clipped = build_objective("block_diffusion", VOCAB, block_size=4)
    _, metrics = clipped.loss(tiny().float(), Batch(torch.randint(0, VOCAB, (2, 8))))
    assert "clipped_loss" in metrics and "nll_bound" not in metrics


def test_blocks_without_an_admissible_count_keep_their_first_draw():
    """One scored token per block of 4 against [0.45, 0.95]: no masked fraction fits, so
    resampling must not redraw (it would spend its rounds for nothing)."""
    tokens = torch.randint(0, VOCAB, (8, 16))
    scored = (torch.arange(16) % 4 == 3).expand(8, 16)
    objective = build_objective("block_diffusion", VOCAB, block_size=4)
    process = objective._bound()
    t = torch.full(tokens.shape, 0.5, dtype=torch.float64)
    torch.manual_seed(0)
    first = process.corrupt(tokens, t, scored)
    torch.manual_seed(0)
    assert torch.equal(objective.noised(process, tokens, t, scored), first)
