"""`output_chunk_states`: the states entering every chunk, from one kernel call.

Block diffusion on a recurrent backbone reads the state at every block boundary of the clean
half; the chunked kernels expose their inter-chunk states for that. Checked in float64
against the step-by-step reference (which collects the state every `chunk_size` tokens),
forward and backward, and against running the prefix alone.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqlab.ops.delta_rule import delta_rule, gated_delta_rule
from seqlab.ops.linear_attention import gated_linear_attention

B, H, K, V = 2, 2, 5, 3


def make_inputs(kind: str, T: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = {
        "q": randn(B, T, H, K),
        "k": F.normalize(randn(B, T, H, K), dim=-1),
        "v": randn(B, T, H, V),
        "initial_state": randn(B, H, K, V),
    }
    if kind in ("delta", "gated_delta"):
        x["beta"] = 2 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    if kind in ("gla_key", "gated_delta"):
        x["g"] = F.logsigmoid(randn(B, T, H, K) if kind == "gla_key" else randn(B, T, H))
    if kind == "gla_head":
        x["g"] = F.logsigmoid(randn(B, T, H))
    return x


def run(kind: str, x: dict[str, torch.Tensor], **kwargs) -> tuple[torch.Tensor, ...]:
    common = {"initial_state": x["initial_state"], "output_final_state": True}
    common.update(kwargs)
    if kind == "delta":
        return delta_rule(x["q"], x["k"], x["v"], x["beta"], **common)
    if kind == "gated_delta":
        return gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], **common)
    return gated_linear_attention(x["q"], x["k"], x["v"], x.get("g"), **common)


KINDS = ["gla_none", "gla_head", "gla_key", "delta", "gated_delta"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("T", "chunk"), [(16, 4), (37, 8), (3, 4), (1, 1)])
def test_chunk_states_match_the_reference_forward_and_backward(kind, T, chunk):
    x = make_inputs(kind, T, seed=T * 7 + chunk)
    leaves = [t.requires_grad_() for t in x.values()]
    n = -(-T // chunk)
    gen = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(*s, generator=gen, dtype=torch.float64)
        for s in ((B, T, H, V), (B, H, K, V), (B, n, H, K, V))
    ]
    results = {}
    for mode in ("recurrent", "chunk"):
        outputs = run(kind, x, mode=mode, chunk_size=chunk, output_chunk_states=True)
        assert len(outputs) == 3 and outputs[2].shape == (B, n, H, K, V)
        loss = sum((o * w).sum() for o, w in zip(outputs, weights, strict=True))
        results[mode] = (outputs, torch.autograd.grad(loss, leaves))
    (ref, ref_grads), (chunked, chunked_grads) = results["recurrent"], results["chunk"]
    for a, b in zip(chunked, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for name, a, b in zip(x, chunked_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_chunk_state_j_is_the_final_state_of_the_first_j_chunks(kind):
    T, chunk = 24, 8
    x = make_inputs(kind, T, seed=5)
    *_, starts = run(kind, x, chunk_size=chunk, output_chunk_states=True)
    torch.testing.assert_close(starts[:, 0], x["initial_state"])
    for j in (1, 2):
        prefix = {
            name: t if name == "initial_state" else t[:, : j * chunk] for name, t in x.items()
        }
        _, final = run(kind, prefix, chunk_size=chunk)
        torch.testing.assert_close(starts[:, j], final, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["gla_key", "delta"])
def test_without_the_flag_two_outputs_are_returned(kind):
    x = make_inputs(kind, 5, seed=1)
    assert len(run(kind, x, chunk_size=4)) == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("T", [1, 5, 8])
def test_one_chunk_without_state_outputs_matches_the_reference(kind, with_state, T):
    """One chunk whose states are not asked for skips the state update (and the read of a
    zero start state): the block layouts' many short scans. Forward and every gradient."""
    x = make_inputs(kind, T, seed=T + 3)
    if not with_state:
        x["initial_state"] = None
    leaves = [t.requires_grad_() for t in x.values() if t is not None]
    w = torch.randn(B, T, H, V, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for mode in ("recurrent", "chunk"):
        o, final = run(kind, x, mode=mode, chunk_size=8, output_final_state=False)
        assert final is None
        results.append((o, torch.autograd.grad((o * w).sum(), leaves)))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-9, atol=1e-10)
    for i, (a, b) in enumerate(zip(results[1][1], results[0][1], strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=f"gradient {i}")
