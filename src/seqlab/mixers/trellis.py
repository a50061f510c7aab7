"""TrellisNet (Bai, Kolter & Koltun, ICLR 2019): a causal temporal convolution whose weights
are tied across depth, with the input injected at every level and LSTM-style gates.

With kernel size k, level ℓ + 1 at time t reads the k-token windows of the input and of
level ℓ's hidden state (level 0 is zeros):

    ẑ_t^{(ℓ+1)} = W_x [x_{t−k+1}; …; x_t] + b + W_h [h_{t−k+1}^{(ℓ)}; …; h_t^{(ℓ)}]
    i, f, o, g = split_4(ẑ_t^{(ℓ+1)})
    c_t^{(ℓ+1)} = σ(f) ⊙ c_{t−1}^{(ℓ)} + σ(i) ⊙ tanh(g)
    h_t^{(ℓ+1)} = σ(o) ⊙ tanh(c_t^{(ℓ+1)})

for ℓ = 0 … depth − 1, and y_t = W_out h_t^{(depth)}. The injected term W_x[…] + b is the
same at every level and is computed once. With k = 2 this is the paper's
ẑ^{(ℓ+1)}_t = W_1 [x_{t−1}; h_{t−1}^{(ℓ)}] + W_2 [x_t; h_t^{(ℓ)}].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layout import ALL_LAYOUTS, Layout
from seqlab.mixers.base import Mixer, check_input, check_scan_layout, scan_in_layout, state_dtype
from seqlab.mixers.common import check_positive
from seqlab.registry import MIXERS


@dataclass
class TrellisState:
    """What the next position reads from the past, for depth L, kernel k, hidden width H:
    the last k − 1 inputs `x [B, k−1, d_model]`, and for levels 1 … L − 1 (level 0 is zeros;
    level L feeds no level) their last k − 1 hidden states `h [B, L−1, k−1, H]` and their
    last cell `c [B, L−1, H]`."""

    x: Tensor
    h: Tensor
    c: Tensor


def windows(u: Tensor, history: Tensor) -> Tensor:
    """`u [B, T, C]` after its k − 1 earlier entries `history [B, k−1, C]` -> the causal
    windows `[B, T, k·C]`: row t is [u_{t−k+1}; …; u_t], oldest first."""
    full = torch.cat([history, u], dim=1)
    steps, k = u.shape[1], history.shape[1] + 1
    return torch.cat([full[:, j : j + steps] for j in range(k)], dim=-1)


def lstm_gates(z: Tensor, c_before: Tensor | None) -> tuple[Tensor, Tensor]:
    """`z [..., 4H]` (i, f, o, g) and c_{t−1} of the level below (None: zeros) -> (h, c)."""
    i, f, o, g = z.chunk(4, dim=-1)
    c = torch.sigmoid(i) * torch.tanh(g)
    if c_before is not None:
        c = c + torch.sigmoid(f) * c_before
    return torch.sigmoid(o) * torch.tanh(c), c


def trellis_levels(
    x: Tensor,
    inject_weight: Tensor,
    inject_bias: Tensor,
    recur_weight: Tensor | None,
    depth: int,
    state: TrellisState,
) -> tuple[Tensor, TrellisState]:
    """The parallel form: every level is one causal conv over all T positions, levels in
    sequence.

    x `[B, T, D]`; inject_weight `[4H, k·D]` (taps oldest first), inject_bias `[4H]`,
    recur_weight `[4H, k·H]` (None when depth = 1: level 1 reads only zeros); `state` the
    entries before x (see `TrellisState`). Returns h^{(depth)} `[B, T, H]` and the state
    after x, in `state_dtype(x.dtype)`.
    """
    dtype = x.dtype
    keep = state.x.shape[1]  # k − 1
    x_before = state.x.to(dtype)
    injected = F.linear(windows(x, x_before), inject_weight, inject_bias)
    h, c = lstm_gates(injected, None)
    hs, cs = [], []
    for level in range(1, depth):
        h_history, c_last = state.h[:, level - 1].to(dtype), state.c[:, level - 1].to(dtype)
        hs.append(torch.cat([h_history, h], dim=1)[:, -keep:])
        cs.append(c[:, -1])
        z = injected + F.linear(windows(h, h_history), recur_weight)
        h, c = lstm_gates(z, torch.cat([c_last[:, None], c[:, :-1]], dim=1))
    return h, _new_state(torch.cat([x_before, x], dim=1)[:, -keep:], hs, cs, state)


def _new_state(x: Tensor, hs: list[Tensor], cs: list[Tensor], like: TrellisState) -> TrellisState:
    """The state from the last inputs `x [B, k−1, D]` (a slice: copied, so that it keeps no
    view of the sequence alive) and each level's last hidden states and cell."""
    dtype = state_dtype(x.dtype)
    x = x.to(dtype).clone()
    if not hs:
        return TrellisState(x, like.h.to(dtype), like.c.to(dtype))
    return TrellisState(x, torch.stack(hs, 1).to(dtype), torch.stack(cs, 1).to(dtype))


def trellis_reference(
    x: Tensor,
    inject_weight: Tensor,
    inject_bias: Tensor,
    recur_weight: Tensor | None,
    depth: int,
    state: TrellisState,
) -> tuple[Tensor, TrellisState]:
    """`trellis_levels` step by step: time-major, each position running every level, each
    tap of the kernels applied as its own matmul."""
    dtype = x.dtype
    keep = state.x.shape[1]
    k, hidden = keep + 1, inject_weight.shape[0] // 4
    w_x = inject_weight.unflatten(1, (k, -1))  # [4H, k, D]
    w_h = None if recur_weight is None else recur_weight.unflatten(1, (k, hidden))
    xs = list(state.x.to(dtype).unbind(1))
    hs = [list(state.h[:, i].to(dtype).unbind(1)) for i in range(depth - 1)]
    cs = list(state.c.to(dtype).unbind(1))
    outputs = []
    for t in range(x.shape[1]):
        xs.append(x[:, t])
        injected = inject_bias + sum(xs[j - k] @ w_x[:, j].T for j in range(k))
        h, c = lstm_gates(injected, None)
        for level in range(1, depth):
            window = [*hs[level - 1][-keep:], h]
            z = injected + sum(window[j] @ w_h[:, j].T for j in range(k))
            c_before = cs[level - 1]
            hs[level - 1].append(h)
            cs[level - 1] = c
            h, c = lstm_gates(z, c_before)
        outputs.append(h)
    last = [torch.stack(h_level[-keep:], 1) for h_level in hs]
    return torch.stack(outputs, 1), _new_state(torch.stack(xs[-keep:], 1), last, cs, state)


@MIXERS.register("trellis")
class Trellis(Mixer):
    """TrellisNet (Bai et al., 2019): a weight-tied causal conv over [x; h] applied `depth`
    times, the input injected at every level, with LSTM gates; the last level's h projected
    back to d_model.

    Level ℓ + 1 at time t (level 0 is zeros, kernel k = `kernel_size`, taps oldest first):
    ẑ = W_x [x_{t−k+1}; …; x_t] + b + W_h [h_{t−k+1}^{(ℓ)}; …; h_t^{(ℓ)}],
    c_t^{(ℓ+1)} = σ(f) ⊙ c_{t−1}^{(ℓ)} + σ(i) ⊙ tanh(g), h_t^{(ℓ+1)} = σ(o) ⊙ tanh(c_t^{(ℓ+1)}),
    y_t = W_out h_t^{(depth)}. The injected part W_x[…] + b is computed once for all levels.
    Shapes: x `[B, T, d_model]`, h and c `[B, T, H]` with H = expand · d_model, ẑ `[B, T, 4H]`.
    A level is one causal conv over all positions, so training is parallel over time and
    sequential over depth; one decode step runs every level on the new position, reading
    each level's last k − 1 hidden states and last cell from the state (`TrellisState`),
    whose size does not grow with the context.

    Output: the last level's h, as in the paper's language models (their output channels are
    the last level's; the auxiliary losses on intermediate levels are left out). Not
    included: weight normalisation, dilation, dropout and history repackaging (the paper's
    training devices); the weights take the model-wide init.
    Other layouts (`scan_in_layout`): the same trellis also runs over the reversed sequence
    (or each block of it); the two last-level h's are summed before the output projection.
    """

    layouts = ALL_LAYOUTS

    def __init__(
        self, d_model: int, *, depth: int = 8, expand: int = 1, kernel_size: int = 2
    ) -> None:
        super().__init__()
        check_positive("trellis", depth=depth, expand=expand, kernel_size=kernel_size)
        if kernel_size < 2:
            raise ConfigError(f"trellis kernel_size must be >= 2, got {kernel_size}")
        self.d_model, self.hidden = d_model, expand * d_model
        self.depth, self.kernel_size = depth, kernel_size
        self.inject = nn.Linear(kernel_size * d_model, 4 * self.hidden)
        self.recur = (
            nn.Linear(kernel_size * self.hidden, 4 * self.hidden, bias=False) if depth > 1 else None
        )
        self.out = nn.Linear(self.hidden, d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        state: TrellisState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, TrellisState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, "trellis")
        h, new_state = scan_in_layout(
            lambda inputs, s: self._recur(*inputs, s), (x,), state, layout, self.init_state
        )
        return self.out(h), new_state

    def _recur(self, x: Tensor, state: TrellisState | None) -> tuple[Tensor, TrellisState | None]:
        """h^{(depth)} `[B, T, H]` from `state` (zeros when None) and the new state."""
        start = state if state is not None else self.init_state(x.shape[0], dtype=x.dtype)
        recur = None if self.recur is None else self.recur.weight
        h, new_state = trellis_levels(
            x, self.inject.weight, self.inject.bias, recur, self.depth, start
        )
        return h, None if state is None else new_state

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> TrellisState:
        weight = self.out.weight
        device, dtype = device or weight.device, state_dtype(dtype or weight.dtype)
        keep, levels = self.kernel_size - 1, self.depth - 1
        return TrellisState(
            torch.zeros(batch_size, keep, self.d_model, device=device, dtype=dtype),
            torch.zeros(batch_size, levels, keep, self.hidden, device=device, dtype=dtype),
            torch.zeros(batch_size, levels, self.hidden, device=device, dtype=dtype),
        )

    def state_size(self, seq_len: int) -> int:
        keep = self.kernel_size - 1
        return keep * self.d_model + (self.depth - 1) * (keep + 1) * self.hidden

    def mixing_flops(self, seq_len: int) -> float:
        """The tied hidden conv W_h is one `nn.Linear`, which `Model.flops_per_token` counts
        once (2 · 4H · kH), but levels 2 … depth each apply it (level 1 reads zeros and skips
        it): depth − 2 more applications are counted here. Plus ~6 per gate unit and level
        (adding the injected part, the activations, the cell and output products). W_x
        runs once per token, as counted."""
        hidden, k = self.hidden, self.kernel_size
        tied = 0.0 if self.recur is None else 2.0 * (self.depth - 2) * 4 * hidden * k * hidden
        return tied + 6.0 * 4 * hidden * self.depth
