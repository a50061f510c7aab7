"""The dense SwiGLU feed-forward and its fused gated-SiLU autograd function."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SwiGLU(nn.Module):
    """y = W_down (silu(W_gate x) ⊙ W_up x): x [..., d_model] -> y [..., d_model], hidden width
    `hidden` (`model.mlp_ratio` · d_model for the dense feed-forward)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(_GatedSiLU.apply(self.gate_up(x)))

    def init_weights(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.gate_up.weight, std=std)
        nn.init.normal_(self.down.weight, std=out_std)

    def inactive_params(self) -> int:
        """Parameters a token does not use (none: every weight is active)."""
        return 0


class _GatedSiLU(torch.autograd.Function):
    """silu(gate) ⊙ up for h = [gate, up] (the two halves of the last dim).

    The backward runs the same kernels autograd would (silu_backward and two products) but
    writes both halves of the gradient straight into one tensor instead of concatenating the
    two half gradients afterwards, so results are bitwise equal with one full-size copy less.
    Under `create_graph=True` it takes the plain differentiable form (double backward works).
    """

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:  # type: ignore[override]
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        return act * up

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        h, act = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        if torch.is_grad_enabled():  # create_graph: autograd's own differentiable form
            (grad_h,) = torch.autograd.grad(F.silu(gate) * up, h, grad, create_graph=True)
            return grad_h
        hidden = gate.shape[-1]
        grad_h = grad.new_empty(*grad.shape[:-1], 2 * hidden)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_h[..., :hidden])
        torch.mul(grad, act, out=grad_h[..., hidden:])
        return grad_h
