"""MoM: the exact reduction (one chunked gated delta rule over every memory) against the
per-token routed reference and against fla's compact-sequence form; routing, the balance
loss, the mixing matrix, options."""

from __future__ import annotations

import pytest
import torch

from seqlab.auxiliary import auxiliary_losses, clear_auxiliary_losses
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.mixers.mom import MoM
from seqlab.model import build_mixer, build_model
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.ops.delta_rule import gated_delta_rule

F64 = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-11}


def make(seed: int = 0, **options) -> MoM:
    torch.manual_seed(seed)
    options = {"memories": 3, "top_k": 2, "chunk_size": 4, **options}
    config = ModelConfig(mixer="mom", d_model=12, n_heads=2, mixer_options={"mom": options})
    mixer = build_mixer("mom", config, 0)
    mixer.init_weights(0.3, 0.3)
    with torch.no_grad():  # large steps: decays far from 1
        mixer.dt_bias.uniform_(-1.0, 2.0)
    return mixer.to(F64)


def random_state(mixer: MoM, batch: int) -> object:
    state = mixer.init_state(batch)
    state.recurrent.normal_()
    state.conv.normal_()
    return state


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("steps", [1, 13])
def test_reduction_matches_the_routed_reference_forward_and_backward_float64(
    steps, carried, shared
):
    """T = 13 with chunk 4 (the last chunk partial) or one token; output, final state and the
    gradient of x, of every parameter and of the carried state."""
    mixer = make(shared_memory=shared)
    gen = torch.Generator().manual_seed(steps)
    x = torch.randn(2, steps, 12, generator=gen, dtype=F64)
    weight = torch.randn(2, steps, 12, generator=gen, dtype=F64)
    start = random_state(mixer, 2) if carried else None
    results = []
    for reference in (False, True):
        leaves = [x.clone().requires_grad_(), *mixer.parameters()]
        state = None
        if carried:
            state = type(start)(start.recurrent.clone().requires_grad_(), start.conv.clone())
            state.conv.requires_grad_()
            leaves += [state.recurrent, state.conv]
        if reference:
            inputs, gate = mixer._project(leaves[0])
            o, new_state, _ = mixer.reference(leaves[0], state)
            y = mixer._output(o, gate)
        else:
            y, new_state = mixer(leaves[0], state)
        loss = (y * weight).sum()
        if carried:
            loss = loss + new_state.recurrent.sin().sum() + new_state.conv.cos().sum()
        results.append((y, new_state, torch.autograd.grad(loss, leaves)))
    (y, state, grads), (y_ref, state_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref, **TOL)
    if carried:
        torch.testing.assert_close(state.recurrent, state_ref.recurrent, **TOL)
        torch.testing.assert_close(state.conv, state_ref.conv, **TOL)
    names = ["x", *(n for n, _ in mixer.named_parameters()), "S", "conv"]
    for name, grad, grad_ref in zip(names, grads, grads_ref, strict=False):
        torch.testing.assert_close(grad, grad_ref, **TOL, msg=name)
    assert grads[names.index("router.weight")].abs().sum() > 0


def test_reduction_matches_flas_compact_sequences_float64():
    """fla's form: gather each memory's routed tokens into a sequence of their own, run a
    plain Gated DeltaNet memory (conv and recurrence) over it from zero, scatter its reads
    back weighted. The reduction computes the same outputs at every token."""
    mixer = make(memories=4, top_k=2)
    x = torch.randn(2, 11, 12, dtype=F64)
    inputs, _ = mixer._project(x)
    weights, routed = inputs[3:]
    u, beta_logits, decay_logits = mixer._slot_inputs(inputs)
    beta, g = mixer.write_strength(beta_logits), mixer.log_decay(decay_logits)
    expected = torch.zeros(2, 11, mixer.heads, mixer.state_v, dtype=F64)
    for b in range(2):
        for slot in range(mixer.slots):
            tokens = torch.nonzero(routed[b, :, slot]).flatten()
            if len(tokens) == 0:
                continue
            conv, _ = mixer.conv(u[b, tokens, slot][None])
            q, k, v = mixer._split_heads(conv)
            o, _ = gated_delta_rule(q, k, v, g[b, tokens, slot][None], beta[b, tokens, slot][None])
            expected[b, tokens] += weights[b, tokens, slot, None, None] * o[0]
    torch.testing.assert_close(mixer._recur(inputs, None)[0], expected, **TOL)
    assert not torch.equal(routed[..., :4], torch.ones_like(routed[..., :4]))


def test_every_memory_is_read_when_top_k_is_all_of_them():
    """top_k = memories: every memory updates at every token (a plain dense conv over the whole
    sequence) and the weights are the router's softmax itself."""
    mixer = make(memories=3, top_k=3, shared_memory=False)
    x = torch.randn(2, 9, 12, dtype=F64)
    inputs, _ = mixer._project(x)
    weights, routed = inputs[3:]
    assert torch.equal(routed, torch.ones_like(routed))
    torch.testing.assert_close(weights, torch.softmax(mixer.router(x), -1), **TOL)
    u, beta_logits, decay_logits = mixer._slot_inputs(inputs)
    conv, _ = mixer.conv(u.transpose(1, 2).flatten(0, 1))  # every memory's whole sequence
    q, k, v = (
        p.unflatten(0, (2, 3)).transpose(1, 2).flatten(2, 3) for p in mixer._split_heads(conv)
    )
    g = mixer.log_decay(decay_logits).flatten(2)
    o, _ = gated_delta_rule(q, k, v, g, mixer.write_strength(beta_logits).flatten(2))
    expected = (o.unflatten(2, (3, mixer.heads)) * weights[..., None, None]).sum(2)
    torch.testing.assert_close(mixer._recur(inputs, None)[0], expected, **TOL)


def test_token_by_token_decode_equals_the_parallel_form():
    mixer = make()
    x = torch.randn(2, 10, 12, dtype=F64)
    start = random_state(mixer, 2)
    y, final = mixer(x, start)
    state, steps = start, []
    for t in range(10):
        y_t, state = mixer(x[:, t : t + 1], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, 1), y, **TOL)
    torch.testing.assert_close(state.recurrent, final.recurrent, **TOL)
    torch.testing.assert_close(state.conv, final.conv, **TOL)


def test_mixing_matrix_applied_to_the_values_is_the_kernel_output_float64():
    mixer = make(memories=4, top_k=2)
    x = torch.randn(2, 9, 12, dtype=F64)
    mixing = mixer.mixing(x)
    slots, heads = mixer.slots, mixer.heads
    assert mixing.matrix.shape == (2, slots * heads, 9, 9)
    applied = torch.einsum("bhts,bshv->bthv", mixing.matrix, mixing.values)
    torch.testing.assert_close(applied, mixing.output, **TOL)
    inputs, _ = mixer._project(x)
    kernel = mixer._recur(inputs, None)[0]
    torch.testing.assert_close(applied.unflatten(2, (slots, heads)).sum(2), kernel, **TOL)
    assert torch.equal(mixing.matrix.triu(1), torch.zeros_like(mixing.matrix))  # causal
    # A memory not sent token t neither reads (its row is zero) nor stores it (its column).
    unread = inputs[4].transpose(1, 2).repeat_interleave(heads, 1) == 0  # [B, S·H, T]
    assert unread.any()
    assert mixing.matrix.masked_select(unread.unsqueeze(-1)).abs().max() == 0
    assert mixing.matrix.masked_select(unread.unsqueeze(-2)).abs().max() == 0


def test_balance_loss_reaches_the_training_loss_and_the_router():
    torch.manual_seed(0)
    config = ModelConfig(
        mixer="mom",
        d_model=16,
        n_heads=2,
        n_layers=2,
        vocab_size=11,
        mixer_options={"mom": {"memories": 4, "top_k": 2, "balance_weight": 0.5}},
    )
    model = build_model(config)
    objective = Autoregressive().bind(11)
    batch = Batch(torch.randint(0, 11, (2, 9)))
    plain, _ = objective.loss(model, batch)
    total, metrics = objective.training_loss(model, batch)
    # two layers, each 0.5 · M Σ f P >= 0.5 (equality when balanced)
    assert metrics["aux_balance"] >= 1.0 - 1e-6
    torch.testing.assert_close(total, plain + metrics["aux_balance"], rtol=1e-6, atol=1e-6)
    routers = [block.mixer.router.weight for block in model.blocks]
    grads = torch.autograd.grad(auxiliary_losses(model)["balance"], routers)
    assert all(grad.abs().sum() > 0 for grad in grads)
    clear_auxiliary_losses(model)
    with torch.no_grad():  # recorded only while autograd is on
        objective.loss(model, batch)
    assert auxiliary_losses(model) == {}


def test_balance_is_m_times_the_sum_of_fractions_times_mean_probabilities():
    mixer = make(memories=4, top_k=2)
    probs = torch.tensor([[0.7, 0.2, 0.05, 0.05], [0.6, 0.3, 0.05, 0.05]], dtype=F64)
    routed = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0]], dtype=F64)
    # f = (1/2, 1/2, 0, 0), P = (0.65, 0.25, 0.05, 0.05): 4 · (0.325 + 0.125) = 1.8
    torch.testing.assert_close(mixer.balance(probs, routed), torch.tensor(1.8, dtype=F64))
    uniform = torch.full((2, 4), 0.25, dtype=F64)
    torch.testing.assert_close(mixer.balance(uniform, routed), torch.tensor(1.0, dtype=F64))


def test_state_size_counts_every_memory_and_its_conv_window():
    mixer = make(memories=3, shared_memory=True)
    state = mixer.init_state(2)
    assert state.recurrent.shape == (2, 4 * 2, 6, 6) and state.conv.shape == (2, 4, 3, 36)
    assert mixer.state_size(5) == state.recurrent[0].numel() + state.conv[0].numel()
    assert mixer.state_size(5) == 4 * (2 * 6 * 6 + 3 * 36)
    dense = make(memories=1, top_k=1, shared_memory=False)
    assert mixer.mixing_flops(64) > 3.5 * dense.mixing_flops(64)


@pytest.mark.parametrize(
    "options",
    [
        {"memories": 2, "top_k": 3},
        {"memories": 0},
        {"top_k": 0},
        {"balance_weight": -0.1},
        {"shared_memory": "yes"},
    ],
)
def test_bad_options_raise_config_errors(options):
    config = ModelConfig(mixer="mom", d_model=12, n_heads=2, mixer_options={"mom": options})
    with pytest.raises(ConfigError):
        build_mixer("mom", config, 0)
