"""MoM (Du et al., 2025): a mixture of gated delta-rule memories, routed token by token, on
`ops.delta_rule` through the exact reduction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.auxiliary import record_auxiliary_loss
from seqlab.errors import ConfigError, SeqlabError
from seqlab.layout import Layout
from seqlab.mixers.base import Mixing, check_input, state_dtype
from seqlab.mixers.common import check_bool, check_positive, heads_view
from seqlab.mixers.gated_deltanet import GatedDeltaNet
from seqlab.mixers.linear_recurrence import LinearState
from seqlab.ops.delta_rule import gated_delta_rule
from seqlab.registry import MIXERS


@MIXERS.register("mom")
class MoM(GatedDeltaNet):
    """MoM (Du et al., 2025): M gated delta-rule memories with their own keys, values, write
    strengths and decays; a router sends each token to `top_k` of them (plus an optional
    shared memory that every token updates and reads), and the token reads the router-weighted
    sum of the memories it was sent to.

    From "MoM: Linear Sequence Modeling with Mixture-of-Memories", with Gated DeltaNet memories
    as in the authors' code and fla's `MomAttention`:

        p_t = softmax(W_r x_t) ∈ Δ^M,  E_t = top_k(p_t),  w_t^m = p_t^m / Σ_{n∈E_t} p_t^n (m ∈ E_t)
        memory m (routed tokens t_1 < t_2 < … of m only; the shared memory: every token):
            u_t^m = [W_q x_t, W_k^m x_t, W_v^m x_t],  [q, k, v]_t^m = SiLU(conv over u^m_{t_j})
            β_t^m = σ(W_β^m x_t),  g_t^m = −exp(A_log) · softplus(W_a^m x_t + b_Δ)
            S_t^m = exp(g_t^m) (I − β_t^m k_t^m k_t^mᵀ) S_{t−1}^m + β_t^m k_t^m v_t^mᵀ
        o_t = Σ_{m∈E_t} w_t^m S_t^mᵀ q_t^m / √K  (+ S_t^sᵀ q_t^s / √K, the shared memory)
        y = W_out(RMSNorm_head(o) ⊙ SiLU(W_g x))

    A memory that a token is not sent to keeps its state and is not read. The short conv runs
    over each memory's own routed subsequence (its last `conv_size` routed tokens), with one
    conv weight for all memories, as in the reference code; so q = W_q x is one projection but
    q_t^m differs between memories through the conv. A_log and b_Δ are per head, shared by the
    memories (as in the reference code); W_k, W_v, W_β, W_a are per memory.

    Exact reduction: with β = 0 and g = 0 (decay 1) at the tokens not sent to a memory, the
    gated delta rule over every token leaves that memory's state unchanged there, and a router
    weight of 0 drops its read; so one `gated_delta_rule` call over H·(M + shared) heads
    computes every memory at once (the conv is gathered per memory: routed inputs first, in
    order, then scattered back). `reference` is the step-by-step form that literally routes.
    Test-time regression view: memory m solves Gated DeltaNet's online regression (one
    gradient step on ½‖Sᵀk − v‖² with forgetting) on its own routed tokens only.

    Load balancing (Switch / GShard): with f_m the fraction of the routed (token, slot) pairs
    that go to m (Σ f = 1) and P_m the mean router probability, the layer records
    `balance_weight` · M · Σ_m f_m P_m (1 when balanced) as the auxiliary loss "balance".

    Shapes: x `[B, T, d_model]`; per memory q, k `[B, T, H, K]`, v `[B, T, H, V]`; router
    `[B, T, M]`. State: S `[B, (M + shared) · H, K, V]` (memory-major) and every memory's last
    conv_size − 1 routed inputs `[B, M + shared, conv_size − 1, 2 H K + H V]`.
    Defaults as fla's MoM config: 4 memories, top 2, a shared memory, V = d_model / heads,
    balance weight 0.01; init as Gated DeltaNet's.
    """

    plain_read = False  # routed reads of M memories: memory caching does not apply
    sequence_parallel = False
    sequence_parallel_refusal = (
        "its memories run over each memory's own routed tokens, with a routed conv history "
        "and a balance loss over the whole sequence, which the shard exchange does not carry"
    )

    @property
    def records_auxiliary_loss(self) -> bool:
        return self.balance_weight > 0

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        memories: int = 4,
        top_k: int = 2,
        shared_memory: bool = True,
        balance_weight: float = 0.01,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        conv_size: int = 4,
        negative_eigenvalues: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        A_min: float = 1.0,
        A_max: float = 16.0,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(
            d_model,
            heads,
            expand_k=expand_k,
            expand_v=expand_v,
            conv_size=conv_size,
            negative_eigenvalues=negative_eigenvalues,
            dt_min=dt_min,
            dt_max=dt_max,
            A_min=A_min,
            A_max=A_max,
            chunk_size=chunk_size,
        )
        check_positive(self.name, memories=memories, top_k=top_k)
        check_bool(self.name, shared_memory=shared_memory)
        if top_k > memories:
            raise ConfigError(f"{self.name} needs top_k <= memories, got {top_k} > {memories}")
        if not balance_weight >= 0:
            raise ConfigError(f"{self.name} balance_weight must be >= 0, got {balance_weight}")
        self.memories, self.top_k = memories, top_k
        self.shared_memory, self.balance_weight = shared_memory, float(balance_weight)
        self.slots = memories + int(shared_memory)  # memories that hold a state
        key_width, value_width = heads * self.state_k, heads * self.state_v
        self.router = nn.Linear(d_model, memories, bias=False)
        # [W_q ; W_k^1, W_v^1 ; … ; W_k^s, W_v^s]: one q, then every slot's k and v
        self.qkv = nn.Linear(
            d_model, key_width + self.slots * (key_width + value_width), bias=False
        )
        self.beta_proj = nn.Linear(d_model, self.slots * heads, bias=False)
        self.decay_proj = nn.Linear(d_model, self.slots * heads, bias=False)

    def _project(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        weights, routed = self.route(x)
        inputs = (self.qkv(x), self.beta_proj(x), self.decay_proj(x), weights, routed)
        return inputs, self.gate(x)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Router weights w and the routing mask (1 where a slot is sent the token), both
        `[B, T, M + shared]` (the shared slot last, weight 1). Records the balance loss while
        autograd is on."""
        logits = self.router(x)
        probs = torch.softmax(logits.to(state_dtype(logits.dtype)), dim=-1)
        top, chosen = probs.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, chosen, top / top.sum(-1, keepdim=True))
        routed = torch.zeros_like(probs).scatter(-1, chosen, 1.0)
        if torch.is_grad_enabled() and self.balance_weight > 0:
            record_auxiliary_loss(
                self, "balance", self.balance_weight * self.balance(probs, routed)
            )
        if self.shared_memory:
            ones = probs.new_ones(*probs.shape[:-1], 1)
            weights, routed = torch.cat([weights, ones], -1), torch.cat([routed, ones], -1)
        return weights.to(x.dtype), routed.to(x.dtype)

    def balance(self, probs: Tensor, routed: Tensor) -> Tensor:
        """M · Σ_m f_m P_m from the router probabilities and the routing mask `[B, T, M]`."""
        fraction = routed.flatten(0, -2).mean(0) / self.top_k
        return self.memories * (fraction * probs.flatten(0, -2).mean(0)).sum()

    def _slot_inputs(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
        """Every slot's conv input `[B, T, S, 2HK + HV]` (the shared q beside its k and v), β
        and decay logits `[B, T, S, H]`."""
        qkv_in, beta_logits, decay_logits = inputs[:3]
        key_width = self.heads * self.state_k
        q_in, kv_in = qkv_in.split([key_width, qkv_in.shape[-1] - key_width], dim=-1)
        kv_in = kv_in.unflatten(-1, (self.slots, -1))
        q_in = q_in.unsqueeze(2).expand(-1, -1, self.slots, -1)
        slot = (self.slots, self.heads)
        return (
            torch.cat([q_in, kv_in], -1),
            beta_logits.unflatten(-1, slot),
            decay_logits.unflatten(-1, slot),
        )

    def _split_heads(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Conv output `[..., 2HK + HV]` -> L2-normalised q, k `[..., H, K]` and v `[..., H, V]`."""
        key_width = self.heads * self.state_k
        q, k, v = (
            heads_view(part, self.heads)
            for part in u.split([key_width, key_width, self.heads * self.state_v], dim=-1)
        )
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v

    def _recur(
        self,
        inputs: tuple[Tensor, ...],
        state: LinearState | None,
        boundaries: int | None = None,
        need_final: bool = True,
    ) -> tuple[Tensor, LinearState | None]:
        reads, new_state = self._reads(inputs, state, boundaries, need_final)
        return reads.sum(2), new_state

    def _reads(
        self,
        inputs: tuple[Tensor, ...],
        state: LinearState | None,
        boundaries: int | None = None,
        need_final: bool = True,
    ) -> tuple[Tensor, LinearState | None]:
        """`_recur` before the sum over slots: every slot's weighted read `[B, T, S, H, V]`
        (zero where the slot is not read), by the exact reduction through one chunked call."""
        weights, routed = inputs[3:]
        u, beta_logits, decay_logits = self._slot_inputs(inputs)
        u, conv_states = self._routed_conv(u, routed, state, boundaries)
        q, k, v = (part.flatten(2, 3) for part in self._split_heads(u))  # heads: (slot, head)
        gate = routed.unsqueeze(-1)
        beta = (self.write_strength(beta_logits) * gate).flatten(2)
        g = (self.log_decay(decay_logits) * gate).flatten(2)
        kernel = self._kernel_options(u.shape[1], state, boundaries, need_final)
        o, final, *chunk_states = gated_delta_rule(q, k, v, g, beta, **kernel)
        reads = o.unflatten(2, (self.slots, self.heads)) * weights[..., None, None]
        if boundaries is not None:
            return reads, LinearState(chunk_states[0].flatten(0, 1), conv_states)
        return reads, self._new_state(final, conv_states)

    def _routed_conv(
        self, u: Tensor, routed: Tensor, state: LinearState | None, boundaries: int | None
    ) -> tuple[Tensor, Tensor | None]:
        """The short conv over each slot's routed subsequence: u `[B, T, S, C]` -> (conv output
        at every token `[B, T, S, C]`, read at the routed ones; the slots' conv states after
        the last token, or with `boundaries` = b entering every block of b tokens as rows
        r · n + j, `[rows, S, k − 1, C]`; None without a state)."""
        batch, steps, slots, channels = u.shape
        taps = self.conv.kernel_size - 1
        sent = routed > 0
        # Each slot's routed tokens first, in order (a stable sort), then the others.
        order = torch.argsort((~sent).to(torch.uint8), dim=1, stable=True)
        compact = u.gather(1, order.unsqueeze(-1).expand(-1, -1, -1, channels))
        compact = compact.transpose(1, 2).flatten(0, 1)  # [B·S, T, C]
        if state is None:
            start = compact.new_zeros(batch * slots, taps, channels)
        else:
            start = state.conv.flatten(0, 1).to(u.dtype)
        y, _ = self.conv(compact, start)
        counts = sent.cumsum(1)  # routed tokens up to and including t
        rank = (counts - 1).clamp(min=0)
        y = y.unflatten(0, (batch, slots)).transpose(1, 2)
        y = y.gather(1, rank.unsqueeze(-1).expand(-1, -1, -1, channels))
        if state is None:
            return y, None
        # A slot's conv state after its first c routed tokens is padded[c : c + k − 1]; c counts
        # the routed tokens up to the end, or before each block start.
        ends = counts[:, -1:] if boundaries is None else (counts - sent.long())[:, ::boundaries]
        padded = torch.cat([start, compact], dim=1)  # [B·S, k − 1 + T, C]
        index = ends.transpose(1, 2).flatten(0, 1).unsqueeze(-1) + torch.arange(
            taps, device=u.device
        )  # [B·S, n, k − 1]
        taken = padded.gather(1, index.flatten(1).unsqueeze(-1).expand(-1, -1, channels))
        taken = taken.view(batch, slots, -1, taps, channels).transpose(1, 2)  # [B, n, S, k−1, C]
        return y, (taken[:, 0] if boundaries is None else taken.flatten(0, 1))

    def reference(
        self, x: Tensor, state: LinearState | None = None, *, identity_values: bool = False
    ) -> tuple[Tensor, LinearState, Tensor]:
        """The step-by-step routed form: token by token, each batch row's token updates only
        the slots it is sent to (their conv window and state) and reads only them.

        Returns the kernel output o `[B, T, H, V]` (before the output norm and gate), the new
        state, and every slot's weighted read `[B, T, S·H, V]` (zero where not read). With
        `identity_values` the values are the one-hot e_t `[T]` instead (V = T): the reads are
        then the rows of each slot-head's T×T mixing matrix.
        """
        inputs, _ = self._project(x)
        weights, routed = inputs[3:]
        u, beta_logits, decay_logits = self._slot_inputs(inputs)
        beta, g = self.write_strength(beta_logits), self.log_decay(decay_logits)
        batch, steps, slots = routed.shape
        if state is None:
            state = self.init_state(batch, device=x.device, dtype=x.dtype)
        rows: list[list[Tensor]] = []
        conv_rows, state_rows = [], []
        for b in range(batch):
            conv = list(state.conv[b].to(x.dtype).unsqueeze(1).unbind(0))  # [1, k − 1, C]
            memory = list(state.recurrent[b].unflatten(0, (slots, self.heads)).unbind(0))
            if identity_values:
                memory = [s.new_zeros(self.heads, self.state_k, steps) for s in memory]
            reads = []
            for t in range(steps):
                read = x.new_zeros(slots, self.heads, steps if identity_values else self.state_v)
                for s in torch.nonzero(routed[b, t]).flatten().tolist():
                    window, conv[s] = self.conv(u[b, t, s][None, None], conv[s])
                    q, k, v = self._split_heads(window[0, 0])
                    if identity_values:
                        v = F.one_hot(torch.tensor(t), steps).to(q).expand(self.heads, -1)
                    o, memory[s] = gated_delta_rule(
                        q[None, None],
                        k[None, None],
                        v[None, None],
                        g[b, t, s][None, None],
                        beta[b, t, s][None, None],
                        initial_state=memory[s][None],
                        output_final_state=True,
                        mode="recurrent",
                    )
                    memory[s] = memory[s][0]
                    read = read.index_add(0, torch.tensor([s]), weights[b, t, s] * o[0])
                reads.append(read.flatten(0, 1))
            rows.append(reads)
            conv_rows.append(torch.cat(conv))
            state_rows.append(torch.cat(memory))
        reads = torch.stack([torch.stack(r) for r in rows])  # [B, T, S·H, V]
        o = reads.unflatten(2, (slots, self.heads)).sum(2)
        new_state = LinearState(torch.stack(state_rows), torch.stack(conv_rows))
        return o, new_state, reads

    def mixing(self, x: Tensor) -> Mixing:
        """The map of every (slot, head) pair, slot-major `[B, S·H, T, T]`, router weights
        included: the slots have their own values (W_v^m), so no one T×T map per head applies
        to one set of values. `values` `[B, T, S·H, V]` are each slot's values at every token
        and `output` `[B, T, S·H, V]` each slot's weighted read; the kernel output before the
        output norm is `output` summed over the slots, and the implicit attention map of head h
        (how much token t reads token s, through all memories) is `matrix` summed over them."""
        check_input(x, self.d_model)
        _, _, reads = self.reference(x, identity_values=True)
        inputs, _ = self._project(x)
        u, _, _ = self._slot_inputs(inputs)
        u, _ = self._routed_conv(u, inputs[4], None, None)
        values = self._split_heads(u)[2].flatten(2, 3)
        output = self._reads(inputs, None)[0].flatten(2, 3)
        matrix = reads.permute(0, 2, 1, 3)
        return Mixing(matrix, values, output, slots=self.slots)

    def forward(
        self,
        x: Tensor,
        state: LinearState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, LinearState | None]:
        if state is not None and state.recurrent.shape[1] != self.slots * self.heads:
            raise SeqlabError(
                f"{self.name} state must hold {self.slots} slots of {self.heads} heads, got "
                f"{state.recurrent.shape[1]} heads"
            )
        return super().forward(x, state, layout=layout, positions=positions)

    def state_heads(self) -> int:
        return self.slots * self.heads

    def _init_conv_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Every slot's conv window over its own routed inputs `[B, slots, k − 1, C]`."""
        conv = self.conv.init_state(batch_size * self.slots, device=device, dtype=dtype)
        return conv.unflatten(0, (batch_size, -1))

    def state_size(self, seq_len: int) -> int:
        """(M + shared) · (H · K · V + (conv taps − 1) · conv channels): every slot's state and
        conv window, whether or not it was read lately."""
        return self.slots * (self.heads * self.state_k * self.state_v + self.conv.state_size())

    def mixing_flops(self, seq_len: int) -> float:
        """What runs: the exact reduction computes all M (+ shared) slots at every token, so
        every slot's Gated DeltaNet kernel, conv and L2 norms count (the paper's "active"
        compute would count top_k + shared of them); plus one output norm and the router's
        weighted sum of the slots' reads."""
        norm = 6.0 * self.heads * self.state_v
        per_slot = super().mixing_flops(seq_len) - norm
        return self.slots * (per_slot + 2.0 * self.heads * self.state_v) + norm
