"""GSS: the gated state space layer of Mehta, Gupta, Cutkosky, Neyshabur, "Long Range Language
Modeling via Gated State Spaces" (ICLR 2023): a diagonal SSM on a reduced width inside a
multiplicative gate, one layer in place of attention and the feed-forward.

The SSM, its chunked causal form, its FFT bidirectional form and its state are `ConvSSM`'s
with S4D's `DiagonalSSM` kernel; this module adds only GSS's projections and gate.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.mixers.common import check_positive
from seqlab.mixers.conv_ssm import ConvSSM
from seqlab.mixers.s4d import S4D_INITS, DiagonalSSM
from seqlab.registry import MIXERS


@MIXERS.register("gss")
class GSS(ConvSSM):
    """Gated State Space (Mehta et al., 2023): a diagonal SSM on a reduced width, gated
    multiplicatively by a wide GELU branch; no separate feed-forward.

    v = GELU(W_v x)                     `[B, T, F]`, F = expand · d_model (the wide branch)
    u = GELU(W_u x)                     `[B, T, H]`, H = d_model / ssm_reduction
    y = SSM(u) + D ⊙ u                  `[B, T, H]` (DSS/S4D diagonal SSM per channel)
    o = W_o((W_c y) ⊙ v)                `[B, T, d_model]`, W_c: H -> F, no activation
    SSM(u)_t = Σ_{s≤t} K_{t−s} ⊙ u_s with the Vandermonde kernel of `DiagonalSSM`
    (K_l = 2 Re Σ_n C_n B̄_n Ā_n^l, Ā = exp(ΔA), ZOH), d_state/2 complex modes per channel.
    The state is d_state real numbers per SSM channel: H · d_state per sequence.

    A faithful GSS stack has no MLP: GSS is the whole layer (the paper's stack is GSS layers
    with pre-norm and residual only), so set `model.mlp_ratio: 0` (seqlab's Block adds a
    SwiGLU otherwise; `mlp_ratio: 0` leaves the residual mixer alone).

    What the sources confirm. The paper's abstract (GSS: gated activation around DSS, faster
    than DSS, no attention) and lucidrains/gated-state-spaces-pytorch, which implements the
    paper's pseudocode: the two GELU branches, the SSM on the narrow one (default H = 256 for
    the paper's E = 1024, hence `ssm_reduction` 4), the linear W_c back to the wide width
    (expansion 4 there, hence `expand` 4), the product with the wide branch and the output
    projection, no biases on the branch projections. What could not be read from the paper
    itself: its DSS initialisation and state size (that code: random Λ, N = 512 modes, a
    LayerNorm on u before the SSM, which we leave to the Block's pre-norm) — here the SSM is
    `s4d`'s, with its S4D-Lin/Inv init and ZOH step, d_state 64 by default.
    Bidirectional layout: `ConvSSM`'s FFT form with a second SSM for the future.
    """

    def __init__(
        self,
        d_model: int,
        *,
        expand: int = 4,
        ssm_reduction: int = 4,
        d_state: int = 64,
        init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        chunk_size: int = 64,
    ) -> None:
        check_positive("gss", expand=expand, ssm_reduction=ssm_reduction)
        if d_model % ssm_reduction:
            raise ConfigError(
                f"gss ssm_reduction must divide d_model, got {ssm_reduction} for {d_model}"
            )
        if init not in S4D_INITS:
            raise ConfigError(f"gss init must be one of {S4D_INITS}, got {init!r}")
        dt_range = {"dt_min": dt_min, "dt_max": dt_max}
        channels = d_model // ssm_reduction
        super().__init__(
            d_model, channels=channels, d_state=d_state, chunk_size=chunk_size, **dt_range
        )
        self.d_wide = expand * d_model
        self.to_v = nn.Linear(d_model, self.d_wide, bias=False)
        self.to_u = nn.Linear(d_model, channels, bias=False)
        self.to_gate = nn.Linear(channels, self.d_wide, bias=False)
        self.out = nn.Linear(self.d_wide, d_model, bias=False)
        self.ssm = DiagonalSSM(channels, d_state, init=init, **dt_range)
        self.ssm_reverse = DiagonalSSM(channels, d_state, init=init, **dt_range)

    def _ssm_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.gelu(self.to_u(x)), F.gelu(self.to_v(x))

    def _output(self, y: Tensor, context: Tensor) -> Tensor:
        return self.out(self.to_gate(y) * context)

    def mixing_flops(self, seq_len: int) -> float:
        """Per token: per SSM channel the chunked convolution and chunk-boundary states as in
        s4d (2C + 8 · d_state) plus the skip and GELU (~10); per wide channel its GELU and the
        gate product (~10)."""
        ssm = 2.0 * min(self.chunk_size, seq_len) + 8.0 * self.d_state + 10.0
        return self.d_inner * ssm + 10.0 * self.d_wide
