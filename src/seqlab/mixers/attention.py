"""Multi-head softmax attention with grouped-query heads, rotary positions and a KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError, SeqlabError, ShapeError
from seqlab.layout import ALL_LAYOUTS, Layout, LayoutKind
from seqlab.mixers.base import Mixer, ValueMap, check_input
from seqlab.ops.attention import (
    apply_rotary,
    arange_rotary_angles,
    attention_reference,
    block_causal_mask,
    block_diffusion_mask,
    rotary_angles,
    scaled_dot_product_attention,
)
from seqlab.registry import MIXERS


@dataclass
class KVCache:
    """Decode state: keys `[B, T_cache, H_kv, D]` and values `[B, T_cache, H_kv, D_v]`
    (D_v may differ from D, as in Mega), their positions `[B, T_cache]`
    (−1 marks padding no query may read), and the next position of each row `[B]`.

    Rows may hold different numbers of entries (ragged prefills, per-row speculative
    acceptance): they are left-padded at position −1, which attention never reads; rotary
    angles come from each row's own positions and offset, so padding changes no output. The
    cache pads, concatenates and truncates itself (`seqlab.state.GrowingState`).
    """

    k: Tensor
    v: Tensor
    positions: Tensor
    offset: Tensor

    @classmethod
    def concat(cls, caches: Sequence[KVCache]) -> KVCache:
        """The rows of `caches` in order, each left-padded to the longest."""
        length = max(c.k.shape[1] for c in caches)
        padded = [c.pad_to(length) for c in caches]
        return cls(
            *(torch.cat([getattr(c, f) for c in padded]) for f in ("k", "v", "positions", "offset"))
        )

    def pad_to(self, length: int) -> KVCache:
        """Left-pad to `length` entries with zeros at position −1."""
        missing = length - self.k.shape[1]
        if missing <= 0:
            return self
        b = self.k.shape[0]
        return KVCache(
            torch.cat([self.k.new_zeros(b, missing, *self.k.shape[2:]), self.k], dim=1),
            torch.cat([self.v.new_zeros(b, missing, *self.v.shape[2:]), self.v], dim=1),
            torch.cat([self.positions.new_full((b, missing), -1), self.positions], dim=1),
            self.offset,
        )

    def drop_last(self, drop: Tensor | int) -> KVCache:
        """Forget the last `drop[i]` entries of row i (all rows wrote the same last columns).
        An int forgets as many in every row: rows are left-padded, so those are the last
        columns, sliced off without compacting."""
        if isinstance(drop, int):
            if drop == 0:
                return self
            k, v, positions = (s[:, :-drop] for s in (self.k, self.v, self.positions))
            return KVCache(k, v, positions, self.offset - drop)
        drop = drop.to(self.offset.device)
        t = self.k.shape[1]
        column = torch.arange(t, device=drop.device)
        forget = column[None] >= (t - drop)[:, None]
        positions = self.positions.masked_fill(forget, -1)
        return KVCache(self.k, self.v, positions, self.offset - drop).compact()

    def compact(self) -> KVCache:
        """Move each row's padding to the left (keeping the order of its entries) and drop
        the columns that are padding in every row."""
        valid = self.positions >= 0
        order = valid.to(torch.int8).argsort(dim=1, stable=True)
        keep = int(valid.sum(dim=1).max())
        order = order[:, order.shape[1] - keep :]
        rows = order[:, :, None, None]
        return KVCache(
            self.k.gather(1, rows.expand(-1, -1, *self.k.shape[2:])),
            self.v.gather(1, rows.expand(-1, -1, *self.v.shape[2:])),
            self.positions.gather(1, order),
            self.offset,
        )


@MIXERS.register("attention")
class Attention(Mixer):
    """Softmax attention (Vaswani et al., 2017) with grouped-query heads, rotary positions,
    an optional sliding window and a KV cache.

    o = softmax(q kᵀ / √D + mask) v with rotary positions on q and k.

    `n_kv_heads < n_heads` shares each key/value head across a group of query heads.
    `window` limits causal reads to the last `window` positions (the cache is trimmed to it).
    """

    layouts = ALL_LAYOUTS
    state_kind = "kv_cache"
    linear_in_values = True

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        rope_theta: float = 10000.0,
        window: int | None = None,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.d_model, self.n_heads = d_model, n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = d_model // n_heads
        if self.head_dim % 2:
            raise ConfigError(f"attention head_dim must be even for rotary, got {self.head_dim}")
        self.rope_theta, self.window = rope_theta, window
        kv_dim = self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(d_model, d_model + 2 * kv_dim, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(
        self,
        x: Tensor,
        state: KVCache | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, KVCache | None]:
        check_input(x, self.d_model)
        b, t, _ = x.shape
        q, k, v, positions = self._heads(x, state, positions)
        if state is None:
            return self.out(self._attend(q, k, v, positions, layout).reshape(b, t, -1)), None

        k_all = torch.cat([state.k, k], dim=1)
        v_all = torch.cat([state.v, v], dim=1)
        k_pos = torch.cat([state.positions, positions], dim=1)
        mask = self._mask(positions, k_pos, layout, n_cached=state.k.shape[1])
        o = scaled_dot_product_attention(q, k_all, v_all, mask=mask)
        if self.window is not None and k_all.shape[1] > self.window:
            k_all, v_all, k_pos = (s[:, -self.window :] for s in (k_all, v_all, k_pos))
        new_state = KVCache(k_all, v_all, k_pos, positions[:, -1] + 1)
        return self.out(o.reshape(b, t, self.d_model)), new_state

    def _heads(
        self, x: Tensor, state: KVCache | None, positions: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q `[B, T, H, D]`, k and v `[B, T, H_kv, D]` (q and k rotated) and the positions."""
        b, t, _ = x.shape
        h, h_kv, d = self.n_heads, self.n_kv_heads, self.head_dim
        qk, v = self.qkv(x).split([self.d_model + h_kv * d, h_kv * d], dim=-1)
        v = v.view(b, t, h_kv, d)
        if positions is None and state is None:  # positions 0..t-1 of every row
            positions = torch.arange(t, device=x.device)[None]
            cos, sin = arange_rotary_angles(t, d, self.rope_theta, qk.dtype, x.device)
        else:
            positions = self._positions(positions, state, b, t, x.device)
            cos, sin = rotary_angles(positions, d, self.rope_theta, dtype=qk.dtype)
        if isinstance(self.q_norm, nn.Identity):
            # q and k heads side by side: one rotary pass over both, then views into it
            qk = apply_rotary(qk.view(b, t, h + h_kv, d), cos, sin)
            q, k = qk.split([h, h_kv], dim=2)
        else:
            q, k = qk.split([self.d_model, h_kv * d], dim=-1)
            q = apply_rotary(self.q_norm(q.view(b, t, h, d)), cos, sin)
            k = apply_rotary(self.k_norm(k.view(b, t, h_kv, d)), cos, sin)
        return q, k, v, positions

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, layout: Layout) -> Tensor:
        """softmax(q kᵀ / √D + mask) v `[B, T, H, D]` over the new tokens alone."""
        if layout.is_causal and self.window is None:
            return scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = self._mask(positions, positions, layout, n_cached=0)
        return scaled_dot_product_attention(q, k, v, mask=mask)

    def _value_map(self, x: Tensor) -> tuple[Tensor, Tensor, ValueMap]:
        """The values v repeated to every query head of their group `[B, T, H, D]`; the
        matrix is each query head's softmax probabilities (window included)."""
        q, k, v, positions = self._heads(x, None, None)
        output = self._attend(q, k, v, positions, Layout.CAUSAL)
        mask = self._mask(positions, positions, Layout.CAUSAL, n_cached=0)
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=2)

        def value_map(values: Tensor) -> Tensor:
            return attention_reference(q, k, values, mask=mask)

        return v.repeat_interleave(group, dim=2), output, value_map

    def _positions(
        self, positions: Tensor | None, state: KVCache | None, b: int, t: int, device: torch.device
    ) -> Tensor:
        """Positions `[B, T]`; `[1, T]` when every row shares them and no cache is kept, so
        rotary angles and masks are formed once and broadcast over the batch."""
        if positions is None:
            if state is None:
                return torch.arange(t, device=device)[None]
            return state.offset[:, None] + torch.arange(t, device=device)
        if positions.dim() == 1 and positions.shape[0] == t:
            positions = positions[None] if state is None else positions[None].expand(b, -1)
            return positions.to(device)
        if positions.shape != (b, t):
            raise ShapeError(
                f"positions must have shape [{t}] or [{b}, {t}], got {list(positions.shape)}"
            )
        return positions.to(device)

    def _mask(self, q_pos: Tensor, k_pos: Tensor, layout: Layout, n_cached: int) -> Tensor:
        """Boolean `[B, 1, T_q, T_k]`: cached keys are readable (unless padding or outside the
        window); among the new tokens the layout decides."""
        t = q_pos.shape[1]
        valid = (k_pos >= 0)[:, None, :]
        if layout.kind is LayoutKind.CAUSAL:
            new = torch.ones(t, t, dtype=torch.bool, device=q_pos.device).tril()
        elif layout.kind is LayoutKind.BIDIRECTIONAL:
            new = torch.ones(t, t, dtype=torch.bool, device=q_pos.device)
        elif layout.kind is LayoutKind.BLOCK_CAUSAL:
            new = block_causal_mask(t, layout.block_size, device=q_pos.device)
        else:
            if n_cached or t % 2:
                raise SeqlabError(
                    "the block_diffusion layout takes the whole [x_t ; x_0] "
                    "sequence (even length) and no state"
                )
            new = block_diffusion_mask(t // 2, layout.block_size, device=q_pos.device)
        cached = torch.ones(t, n_cached, dtype=torch.bool, device=q_pos.device)
        mask = torch.cat([cached, new], dim=1)[None] & valid
        if self.window is not None and layout.is_causal:
            mask &= (q_pos[:, :, None] - k_pos[:, None, :]) < self.window
        return mask[:, None]

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        shape = (batch_size, 0, self.n_kv_heads, self.head_dim)
        empty = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        return KVCache(
            empty,
            empty.clone(),
            torch.zeros(batch_size, 0, dtype=torch.long, device=device),
            torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def state_size(self, seq_len: int) -> int:
        kept = seq_len if self.window is None else min(seq_len, self.window)
        return 2 * self.n_kv_heads * self.head_dim * kept

    def mixing_flops(self, seq_len: int) -> float:
        """Forward FLOPs per token of q·kᵀ and p·v, averaged over a causal sequence."""
        context = (seq_len + 1) / 2 if self.window is None else min(self.window, (seq_len + 1) / 2)
        return 4.0 * self.d_model * context
