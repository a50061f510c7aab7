"""Hydra: the chunked two-scan form against the materialised quasiseparable matrix (float64,
forward and backward), the matrix against its closed form entry by entry, untied directions,
the centred conv, the refusal of causal use, the kit, and learning under masked diffusion."""

from __future__ import annotations

import math

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.hydra import Hydra, quasiseparable_matrix
from seqlab.mixers.short_conv import ShortConv
from seqlab.model import build_model
from seqlab.objectives import Batch, build_objective
from seqlab.registry import MIXERS
from seqlab.testing import check_mixer
from seqlab.testing.mixers import periodic_batch

F64 = torch.float64


def make(chunk_size: int = 4, seed: int = 0) -> Hydra:
    torch.manual_seed(seed)
    mixer = Hydra(16, 4, d_state=8, chunk_size=chunk_size)
    mixer.init_weights(0.3, 0.3)
    return mixer.to(F64)


@pytest.mark.parametrize("steps", [1, 4, 9, 13])
def test_chunked_form_equals_the_materialised_matrix_forward_and_backward_float64(steps):
    """T = 13 and 9 cross chunk boundaries (chunk 4), 4 fills one chunk, 1 is one token."""
    mixer = make()
    x = torch.randn(2, steps, 16, dtype=F64, requires_grad=True)
    weights = torch.randn(2, steps, 16, dtype=F64)
    params = [x, *mixer.parameters()]
    fast, _ = mixer(x)
    reference = mixer.reference(x)
    torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-10)
    fast_grads = torch.autograd.grad((fast * weights).sum(), params)
    reference_grads = torch.autograd.grad((reference * weights).sum(), params)
    names = ["x", *(name for name, _ in mixer.named_parameters())]
    for name, a, b in zip(names, fast_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"gradient of {name}")
    if steps > 1:  # one token reads only itself, through D(x): the scans add nothing
        assert all(g.abs().max() > 0 for g in fast_grads), "every parameter is used"


def test_matrix_entries_follow_the_closed_form():
    """M_ts = C⃗_{t−1}·B⃗_s Δ⃗_s exp(Σ_{s<r≤t−1} g⃗_r) below the diagonal, D(x)_t on it, and
    C⃖_{t+1}·B⃖_s Δ⃖_s exp(Σ_{t+1≤r<s} g⃖_r) above it, by explicit loops."""
    mixer = make()
    steps = 6
    with torch.no_grad():
        _, (_, B, C, delta, g, d) = mixer._features(torch.randn(1, steps, 16, dtype=F64))
        matrix = quasiseparable_matrix(B, C, delta, g, d)[0]
    expected = torch.zeros_like(matrix)
    for h in range(4):
        for t in range(steps):
            for s in range(steps):
                if s < t:
                    decay = g[0, s + 1 : t, 0, h].sum()
                    product = C[0, t - 1, 0] @ B[0, s, 0] * delta[0, s, 0, h]
                elif s > t:
                    decay = g[0, t + 1 : s, 1, h].sum()
                    product = C[0, t + 1, 1] @ B[0, s, 1] * delta[0, s, 1, h]
                else:
                    expected[h, t, s] = d[0, t, h]
                    continue
                expected[h, t, s] = product * decay.exp()
    torch.testing.assert_close(matrix, expected, rtol=1e-12, atol=1e-14)


def test_mixing_is_the_full_quasiseparable_matrix():
    """`mixing` (by the step-by-step kernel on one-hot values) is the materialised matrix: both
    triangles filled, the diagonal D(x) alone, and matrix · values = the mixed output."""
    mixer = make()
    x = torch.randn(2, 9, 16, dtype=F64)
    with torch.no_grad():
        mixing = mixer.mixing(x)
        _, (values, B, C, delta, g, d) = mixer._features(x)
        matrix = quasiseparable_matrix(B, C, delta, g, d)
    torch.testing.assert_close(mixing.matrix, matrix, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mixing.values, values)
    applied = torch.einsum("bhts,bshv->bthv", mixing.matrix, mixing.values)
    torch.testing.assert_close(applied, mixing.output, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(mixing.matrix.diagonal(dim1=-2, dim2=-1), d.transpose(1, 2))
    assert mixing.matrix.tril(-1).abs().max() > 0
    assert mixing.matrix.triu(1).abs().max() > 0


def in_proj_rows(mixer: Hydra, which: str) -> slice:
    """Rows of W_in for B⃗/C⃗/δ⃗ ("forward") or B⃖/C⃖/δ⃖ ("backward")."""
    inner, n, h = mixer.d_inner, mixer.d_state, mixer.heads
    bc = 2 * inner + (0 if which == "forward" else 2 * n)
    dt = 2 * inner + 4 * n + (0 if which == "forward" else h)
    return [*range(bc, bc + 2 * n), *range(dt, dt + h)]


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_directions_are_untied(which):
    """Changing one direction's B, C and δ projections changes only its own triangle."""
    mixer = make()
    x = torch.randn(1, 7, 16, dtype=F64)
    with torch.no_grad():
        before = mixer.mixing(x).matrix
        rows = in_proj_rows(mixer, which)
        mixer.in_proj.weight[rows] += 0.5 * torch.randn(len(rows), 16, dtype=F64)
        after = mixer.mixing(x).matrix
    own, other = (before.tril(-1), after.tril(-1)), (before.triu(1), after.triu(1))
    if which == "backward":
        own, other = other, own
    assert torch.equal(*other) and torch.equal(
        before.diagonal(0, -2, -1), after.diagonal(0, -2, -1)
    )
    assert (own[0] - own[1]).abs().max() > 1e-3


@pytest.mark.parametrize("size", [7, 4])
def test_centred_conv_matches_a_plain_sum(size):
    conv = ShortConv(3, kernel_size=size, activation=None, causal=False).double()
    x = torch.randn(1, 6, 3, dtype=F64)
    y, state = conv(x)
    before = (size - 1) // 2
    padded = torch.nn.functional.pad(x, (0, 0, before, size - 1 - before))
    expected = torch.stack(
        [(padded[:, t : t + size] * conv.weight.T).sum(1) + conv.bias for t in range(6)], 1
    )
    torch.testing.assert_close(y, expected)
    assert state is None
    with pytest.raises(SeqlabError, match="no decode state"):
        conv(x, torch.zeros(1, size - 1, 3, dtype=F64))


def test_causal_use_and_decoding_are_refused():
    mixer = make()
    x = torch.randn(1, 5, 16, dtype=F64)
    assert MIXERS.get("hydra").declared("state_kind") == "none" and mixer.state_size(64) == 0
    for layout in (Layout.CAUSAL, Layout.block_causal(2), Layout.block_diffusion(2)):
        with pytest.raises(SeqlabError, match="only the bidirectional layout"):
            mixer(x, layout=layout)
    with pytest.raises(SeqlabError, match="without a state"):
        mixer(x, object(), layout=Layout.BIDIRECTIONAL)
    with pytest.raises(SeqlabError, match="no decode state"):
        mixer.init_state(1)
    model = build_model(ModelConfig(mixer="hydra", d_model=16, n_heads=4, vocab_size=11))
    assert model.state_size(100) == 0
    with pytest.raises(SeqlabError, match="supported: \\['bidirectional'\\]"):
        model(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(SeqlabError, match="no decode state"):
        model.init_state(1)
    assert model(torch.zeros(1, 4, dtype=torch.long), layout=Layout.BIDIRECTIONAL)[0].shape == (
        1,
        4,
        11,
    )


@pytest.mark.parametrize(
    "options", [{"conv_size": 4}, {"chunk_size": 6}, {"expand": 0}, {"A_min": 2.0}]
)
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError, match="hydra"):
        Hydra(16, 4, **options)


def test_passes_the_conformance_kit_for_its_one_layout():
    report = check_mixer("hydra", d_state=16)
    assert report.ok, str(report)
    assert report["bidirectional"].status == "pass" and report["save_load"].status == "pass"
    assert report["split_decode"].status == "skip"


def test_learns_a_periodic_task_under_masked_diffusion():
    """2 layers (d_model 32, d_state 16), 150 AdamW steps at lr 1e-2 on period-3 sequences of
    16 tokens (16 x 24): a masked token is any unmasked one 3k positions away, on either side.
    The bound starts near log 16 = 2.77 nats per token; measured over seeds 0 and 1 it ended
    at 0.52 and 0.63 (the motif alone costs 3 log 16 / 24 = 0.35). Bound here: 0.4 log 16."""
    torch.manual_seed(0)
    objective = build_objective("masked_diffusion", 16)
    config = ModelConfig(
        mixer="hydra",
        d_model=32,
        n_layers=2,
        n_heads=4,
        vocab_size=objective.model_vocab_size(16),
        mixer_options={"hydra": {"d_state": 16}},
    )
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        tokens, _ = periodic_batch(generator, 16, 24, 16, 3)
        loss, _ = objective.training_loss(model, Batch(tokens))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tokens, _ = periodic_batch(generator, 64, 24, 16, 3)
    bound = objective.nll(model, Batch(tokens)).per_token
    assert bound < 0.4 * math.log(16), bound
