"""ParaGRU and ParaLSTM (Danieli et al., 2025): nonlinear RNNs with diagonal recurrent weights,
trained in parallel over time by Newton's method, sharing `ParaRNN`."""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
from torch import Tensor, nn

from seqlab.auxiliary import record_metric
from seqlab.errors import ConfigError
from seqlab.layout import ALL_LAYOUTS, Layout
from seqlab.mixers.base import (
    Mixer,
    check_input,
    check_scan_layout,
    no_weight_decay,
    scan_in_layout,
    state_dtype,
)
from seqlab.mixers.common import check_positive
from seqlab.mixers.fused_rnn import RNNState
from seqlab.ops.newton_recurrence import (
    NewtonInfo,
    Structure,
    newton_recurrence,
    sequential_recurrence,
)
from seqlab.registry import MIXERS

MODES = ("newton", "sequential")


class ParaRNN(Mixer):
    """A GRU or LSTM cell whose recurrent weights are diagonal, so that the Jacobian
    ∂state_t/∂state_{t−1} is diagonal (GRU) or 2×2 per channel (LSTM's (c, h)), and the
    whole sequence is solved at once by Newton's method (`seqlab.ops.newton_recurrence`):
    each iteration is one parallel scan, the backward one more scan backward in time.

    The cells (σ the sigmoid, a_⋆ per-channel recurrent weights, starting U(−0.5, 0.5) and
    kept out of weight decay; u_⋆ = W_⋆ x_t + b_⋆ for all t by one projection) are the
    subclasses' `_cell`. Then y_t = W_out h_t.
    Shapes: x `[B, T, d_model]`, h `[B, T, hidden]`, hidden = expand · d_model.

    Each Newton iterate is clamped to the range the cell's state cannot leave (`_project`).
    mode "newton" runs at most `max_iter` iterations and stops once the residual
    max |f(h_{t−1}, x_t) − h_t| <= tol (None: 1e-12 in float64, 1e-5 otherwise); the last
    solve's `NewtonInfo` (iterations, residual, converged) is kept in `newton_info`, and a
    solve that does not converge warns (RuntimeWarning) and is counted in the training metric
    `newton_unconverged` (the number of layers whose last solve missed tol).
    mode "sequential" runs the same cell step by step (the reference, and the benchmark's
    baseline). Decoding (T = 1) is the cell step; a prefill (T > 1) from a carried state
    solves with h_{−1} = that state.
    Other layouts (`scan_in_layout`): the same cell also runs over the reversed sequence (or
    each block of it); the directions are summed before the output projection.
    """

    layouts = ALL_LAYOUTS
    mixer_name: ClassVar[str]
    gates: ClassVar[int]
    structure: ClassVar[Structure]

    def __init__(
        self, d_model: int, *, expand: int, max_iter: int, tol: float | None, mode: str
    ) -> None:
        super().__init__()
        name = self.mixer_name
        check_positive(name, expand=expand, max_iter=max_iter)
        if mode not in MODES:
            raise ConfigError(f"{name} mode must be one of {', '.join(MODES)}, got {mode!r}")
        if tol is not None and not tol > 0:
            raise ConfigError(f"{name} tol must be a positive number or None, got {tol!r}")
        self.d_model, self.hidden = d_model, expand * d_model
        self.max_iter, self.tol, self.mode = max_iter, tol, mode
        self.proj = nn.Linear(d_model, self.gates * self.hidden, bias=False)
        self.bias = nn.Parameter(torch.zeros(self.gates, self.hidden))
        self.recurrent = nn.Parameter(torch.empty(self.gates, self.hidden).uniform_(-0.5, 0.5))
        self.out = nn.Linear(self.hidden, d_model, bias=False)
        no_weight_decay(self.recurrent)
        self.newton_info: NewtonInfo | None = None

    def forward(
        self,
        x: Tensor,
        state: RNNState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, RNNState | None]:
        check_input(x, self.d_model)
        check_scan_layout(layout, state, self.mixer_name)
        h, new_state = scan_in_layout(
            lambda inputs, s: self._recur(*inputs, s), (x,), state, layout, self.init_state
        )
        return self.out(h.to(x.dtype)), new_state

    def _recur(self, x: Tensor, state: RNNState | None) -> tuple[Tensor, RNNState | None]:
        """h `[B, T, hidden]` (in the state dtype) from `state` (zeros when None) and the new
        state."""
        dtype = state_dtype(x.dtype)
        u = self.proj(x).to(dtype).unflatten(-1, (self.gates, self.hidden)) + self.bias.to(dtype)
        s0 = self._pack(state if state is not None else self.init_state(x.shape[0], dtype=dtype))
        s0 = s0.to(dtype)
        if self.mode == "sequential" or x.shape[1] == 1:
            s = sequential_recurrence(self._cell, (u,), s0)
        else:
            s, info = newton_recurrence(
                self._cell,
                (u,),
                s0,
                structure=self.structure,
                max_iter=self.max_iter,
                tol=self.tol,
                project=lambda s: self._project(s, s0),
            )
            self.newton_info = info
            record_metric(self, "newton_unconverged", float(not info.converged))
            if not info.converged:
                warnings.warn(
                    f"{self.mixer_name}: Newton did not converge in {info.iterations} iterations "
                    f"(residual {info.residual:.2e} > tol {info.tol:.1e}); raise max_iter",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self._readout(s), None if state is None else self._unpack(s[:, -1].clone())

    def _cell(
        self, s_prev: Tensor, inputs: tuple[Tensor, ...], jacobian: bool
    ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _project(self, s: Tensor, s0: Tensor) -> Tensor:
        """Clamp a Newton iterate `[B, T, *S]` to a box that holds the solution from `s0`."""
        raise NotImplementedError

    def _pack(self, state: RNNState) -> Tensor:
        """The state as the recurrence's tensor `[B, *S]`."""
        return state.h

    def _unpack(self, s: Tensor) -> RNNState:
        return RNNState(s)

    def _readout(self, s: Tensor) -> Tensor:
        """h `[B, T, hidden]` from the states `[B, T, *S]`."""
        return s

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> RNNState:
        cell = self.structure == "block2"
        return RNNState.zeros(
            batch_size, self.hidden, cell=cell, like=self.out.weight, device=device, dtype=dtype
        )

    def state_size(self, seq_len: int) -> int:
        return (2 if self.structure == "block2" else 1) * self.hidden

    def mixing_flops(self, seq_len: int) -> float:
        """Per hidden unit and Newton iteration: the cell with its Jacobian (~15 ops per gate)
        and the scan (2 ops per Jacobian entry); `max_iter` iterations at most."""
        entries = 4 if self.structure == "block2" else 1
        return self.max_iter * self.hidden * (15.0 * self.gates + 2.0 * entries)


@MIXERS.register("pararnn_gru")
class ParaGRU(ParaRNN):
    """ParaGRU (Danieli et al., 2025): a GRU with diagonal recurrent weights, trained by
    Newton's method over the whole sequence (diagonal Jacobian).

    z_t = σ(u_z + a_z ⊙ h_{t−1}), r_t = σ(u_r + a_r ⊙ h_{t−1}),
    c_t = tanh(u_c + a_c ⊙ r_t ⊙ h_{t−1}), h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ c_t.
    expand defaults to 2, the state size of `pararnn_lstm` at expand 1 ((c, h) per channel):
    a diagonal channel holds one number, and at expand 1 the kit's period-3 copy stalled at
    0.3 of its starting loss in the sequential and the Newton mode alike. See `ParaRNN`.
    """

    mixer_name = "pararnn_gru"
    gates = 3
    structure = "diagonal"

    def __init__(
        self,
        d_model: int,
        *,
        expand: int = 2,
        max_iter: int = 10,
        tol: float | None = None,
        mode: str = "newton",
    ) -> None:
        super().__init__(d_model, expand=expand, max_iter=max_iter, tol=tol, mode=mode)

    def _cell(
        self, s_prev: Tensor, inputs: tuple[Tensor, ...], jacobian: bool
    ) -> tuple[Tensor, Tensor | None]:
        """h `[B, T, hidden]` from h_prev `[B, T, hidden]` and u `[B, T, 3, hidden]`, and
        J = ∂h_t/∂h_{t−1} `[B, T, hidden]`:
        J = 1 − z + (c − h_{t−1}) z(1 − z) a_z + z (1 − c²) a_c (r + h_{t−1} r(1 − r) a_r)."""
        (u,) = inputs
        a_z, a_r, a_c = self.recurrent.to(s_prev.dtype)
        z = torch.sigmoid(u[..., 0, :] + a_z * s_prev)
        r = torch.sigmoid(u[..., 1, :] + a_r * s_prev)
        c = torch.tanh(u[..., 2, :] + a_c * r * s_prev)
        h = s_prev + z * (c - s_prev)
        if not jacobian:
            return h, None
        dc = (1 - c * c) * a_c * (r + s_prev * r * (1 - r) * a_r)
        return h, 1 - z + (c - s_prev) * z * (1 - z) * a_z + z * dc

    def _project(self, s: Tensor, s0: Tensor) -> Tensor:
        """h_t mixes h_{t−1} and tanh(·), so |h_t| <= max(1, |h_{−1}|) per channel."""
        bound = s0.abs().clamp(min=1.0).unsqueeze(1)
        return torch.clamp(s, -bound, bound)


@MIXERS.register("pararnn_lstm")
class ParaLSTM(ParaRNN):
    """ParaLSTM (Danieli et al., 2025): an LSTM with diagonal recurrent weights, trained by
    Newton's method over the whole sequence (a 2×2 Jacobian block per channel).

    With the state s = (c, h) per channel and ⋆ ∈ {f, i, o}:
    ⋆_t = σ(u_⋆ + a_⋆ ⊙ h_{t−1}), g_t = tanh(u_g + a_g ⊙ h_{t−1}),
    c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t, h_t = o_t ⊙ tanh(c_t).
    c_t reads h_{t−1} through the gates and h_t reads c_{t−1} through c_t, so each channel's
    Jacobian is a full 2×2 block. The paper's cell also has diagonal peepholes (p_⋆ ⊙ c in
    the gates); they are left out: c is unbounded, and with |p| ~ 1 Newton from zero diverged
    on random weights where the cell without them converges in 4-5 iterations.
    The forget-gate bias starts at 1, as the fused `lstm`'s. See `ParaRNN`.
    """

    mixer_name = "pararnn_lstm"
    gates = 4
    structure = "block2"

    def __init__(
        self,
        d_model: int,
        *,
        expand: int = 1,
        max_iter: int = 10,
        tol: float | None = None,
        mode: str = "newton",
    ) -> None:
        super().__init__(d_model, expand=expand, max_iter=max_iter, tol=tol, mode=mode)
        with torch.no_grad():
            self.bias[0] = 1.0

    def _cell(
        self, s_prev: Tensor, inputs: tuple[Tensor, ...], jacobian: bool
    ) -> tuple[Tensor, Tensor | None]:
        """s `[B, T, hidden, 2]` = (c, h) from s_prev and u `[B, T, 4, hidden]` (f, i, o, g),
        and J `[B, T, hidden, 2, 2]`, J[i, j] = ∂s_t[i]/∂s_{t−1}[j]:
        ∂c_t/∂c_{t−1} = f, ∂c_t/∂h_{t−1} = c_{t−1} f(1 − f) a_f + g i(1 − i) a_i + i (1 − g²) a_g,
        ∂h_t/∂· = o (1 − tanh²(c_t)) ∂c_t/∂· (+ tanh(c_t) o(1 − o) a_o for h_{t−1})."""
        (u,) = inputs
        a_f, a_i, a_o, a_g = self.recurrent.to(s_prev.dtype)
        c_prev, h_prev = s_prev.unbind(-1)
        f = torch.sigmoid(u[..., 0, :] + a_f * h_prev)
        i = torch.sigmoid(u[..., 1, :] + a_i * h_prev)
        o = torch.sigmoid(u[..., 2, :] + a_o * h_prev)
        g = torch.tanh(u[..., 3, :] + a_g * h_prev)
        c = f * c_prev + i * g
        tc = torch.tanh(c)
        s = torch.stack((c, o * tc), dim=-1)
        if not jacobian:
            return s, None
        dc_dh = c_prev * f * (1 - f) * a_f + g * i * (1 - i) * a_i + i * (1 - g * g) * a_g
        dtc = o * (1 - tc * tc)
        dh_dh = o * (1 - o) * a_o * tc + dtc * dc_dh
        jac = torch.stack((f, dc_dh, dtc * f, dh_dh), dim=-1).unflatten(-1, (2, 2))
        return s, jac

    def _project(self, s: Tensor, s0: Tensor) -> Tensor:
        """|h_t| = |o_t tanh(c_t)| < 1; c is left free (it may grow by one per step)."""
        return torch.stack((s[..., 0], s[..., 1].clamp(-1.0, 1.0)), dim=-1)

    def _pack(self, state: RNNState) -> Tensor:
        return torch.stack((state.c, state.h), dim=-1)

    def _unpack(self, s: Tensor) -> RNNState:
        return RNNState(s[..., 1].clone(), s[..., 0].clone())

    def _readout(self, s: Tensor) -> Tensor:
        return s[..., 1]
