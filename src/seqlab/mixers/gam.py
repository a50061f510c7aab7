"""Gated Associative Memory (Acharya, 2025): a causal conv and a learned slot memory, gated.

The token mixer of "Gated Associative Memory: A Parallel O(N) Architecture for Efficient
Sequence Modeling" (arXiv 2509.00605). Fully parallel and O(T): each output reads its own
token, the conv's window of the k − 1 tokens before it, and a fixed bank of learned memory
vectors (a parameter, the same for every sequence). Nothing else of the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import CAUSAL_ONLY, Layout, LayoutKind
from seqlab.mixers.base import Mixer, check_input
from seqlab.mixers.common import check_positive
from seqlab.mixers.short_conv import ShortConv
from seqlab.registry import MIXERS


@dataclass
class GAMState:
    """The causal conv's last conv_size − 1 inputs `[B, conv_size − 1, d_model]` (zeros
    before the first token). The slot memory is a parameter, not state."""

    conv: Tensor


@MIXERS.register("gam")
class GAM(Mixer):
    """Gated Associative Memory (Acharya, 2025): a causal depthwise conv for local context and
    a softmax read of a learned slot memory, fused by sigmoid gates; O(T), no recurrence.

    With x_t ∈ R^d (d = d_model), a memory bank M ∈ R^{S × d} (S = `memory_slots`, a learned
    parameter) and a depthwise causal conv of k = `conv_size` taps w ∈ R^{d × k}, b ∈ R^d:

        local_t  = b + Σ_{i=0}^{k−1} w_{:, i} ⊙ x_{t−k+1+i}       (x_s = 0 for s < 0)
        p_t      = softmax(M x_t) ∈ Δ^{S−1}                        (scores x_t · m_j, no scale)
        global_t = M^T p_t ∈ R^d
        [g^l_t ; g^g_t] = W_g x_t + b_g,  W_g ∈ R^{2d × d}
        y_t      = σ(g^l_t) ⊙ local_t + σ(g^g_t) ⊙ global_t

    Shapes: x, y `[B, T, d]`; scores and p `[B, T, S]`; local, global, gates `[B, T, d]`.
    The block around it (pre-norm, residual, MLP) is the model's, as in the paper's block.
    Decode state: the conv's last k − 1 inputs `[B, k − 1, d]` (fixed size, `GAMState`).

    A negative control for recall. The memory is a fixed set of vectors, read by each token
    from its own content alone; there is no token-to-token lookup. The only context an output
    sees is the conv window, so y_t has exactly zero gradient from x_s for s < t − (k − 1) in
    one layer (t − L(k − 1) through L layers): it cannot recall a token from earlier in the
    sequence. Its decode state is just the conv's window.

    Parameterisation as in the paper's code: M is xavier-uniform (its own init, kept by the
    model), the conv is depthwise with a bias, no activation, and k = 3 by default; the
    gate is one linear layer with bias and no output projection follows. Choices made here:
    the conv is `ShortConv` (weights U(±k^{-1/2}) as PyTorch's Conv1d default, bias zero
    where Conv1d draws it); the gate follows the model-wide init (N(0, std), zero bias, so
    both gates start at 1/2); conv_size must be at least 2 (with 1 the mixer would mix no
    tokens). Causal only: a bidirectional variant would need a non-causal conv.
    """

    layouts = CAUSAL_ONLY

    def __init__(self, d_model: int, *, memory_slots: int = 512, conv_size: int = 3) -> None:
        super().__init__()
        check_positive("gam", memory_slots=memory_slots, conv_size=conv_size)
        if conv_size < 2:
            raise ConfigError(f"gam conv_size must be at least 2, got {conv_size}")
        self.d_model, self.memory_slots = d_model, memory_slots
        self.conv = ShortConv(d_model, conv_size, activation=None)
        self.memory = nn.Parameter(torch.empty(memory_slots, d_model))
        nn.init.xavier_uniform_(self.memory)
        self.gate = nn.Linear(d_model, 2 * d_model)

    def forward(
        self,
        x: Tensor,
        state: GAMState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, GAMState | None]:
        check_input(x, self.d_model)
        if layout.kind is not LayoutKind.CAUSAL:
            raise SeqlabError(f"gam supports only the causal layout, got {layout.kind!r}")
        local, conv_state = self.conv(x, None if state is None else state.conv)
        memory = self.memory.to(x.dtype)
        weights = torch.softmax(x @ memory.T, dim=-1)  # (B, T, S)
        global_ = weights @ memory  # (B, T, d)
        gate_local, gate_global = self.gate(x).chunk(2, dim=-1)
        y = torch.sigmoid(gate_local) * local + torch.sigmoid(gate_global) * global_
        return y, None if conv_state is None else GAMState(conv_state)

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> GAMState:
        device = device or self.memory.device
        dtype = dtype or self.memory.dtype
        return GAMState(self.conv.init_state(batch_size, device=device, dtype=dtype))

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size()

    def mixing_flops(self, seq_len: int) -> float:
        """The memory read (not an `nn.Linear`): scores and readout 2·S·d each, softmax ~5·S;
        the conv 2·k per channel; two sigmoids (~4 each) and the fusion (3) per channel."""
        s, d = self.memory_slots, self.d_model
        return 4.0 * s * d + 5.0 * s + 2.0 * self.conv.kernel_size * d + 11.0 * d


def gam_reference(
    x: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor,
    memory: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    conv_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The GAM mixer token by token, straight from the equations (for tests).

    x `[B, T, d]`, conv_weight `[d, k]`, conv_bias `[d]`, memory `[S, d]`, gate_weight
    `[2d, d]`, gate_bias `[2d]`, conv_state the k − 1 inputs before x `[B, k − 1, d]` (zeros
    when None) -> (y `[B, T, d]`, the last k − 1 inputs `[B, k − 1, d]`).
    """
    batch, steps, d = x.shape
    k = conv_weight.shape[1]
    if conv_state is None:
        window = [x.new_zeros(batch, d) for _ in range(k - 1)]
    else:
        window = list(conv_state.unbind(1))
    outputs = []
    for t in range(steps):
        x_t = x[:, t]
        taps = [*window, x_t]  # x_{t−k+1}, ..., x_t
        local = conv_bias.clone()
        for i in range(k):
            local = local + conv_weight[:, i] * taps[i]
        p = torch.softmax(x_t @ memory.T, dim=-1)  # (B, S)
        global_ = p @ memory  # (B, d)
        gates = x_t @ gate_weight.T + gate_bias
        y_t = torch.sigmoid(gates[:, :d]) * local + torch.sigmoid(gates[:, d:]) * global_
        outputs.append(y_t)
        window = taps[1:]
    return torch.stack(outputs, 1), torch.stack(window, 1)
