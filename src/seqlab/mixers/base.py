"""The Mixer interface and context layouts (helpers for state values: `seqlab.state`).

A mixer maps `x [B, T, d_model]` to `y [B, T, d_model]`. `state=None` runs the parallel
(training) form; a given state continues from it (`T == 1` is one decode step, `T > 1` a
prefill) and the new state is returned. State is a value, never stored on the module, so
beams, speculative drafts and diffusion blocks can copy and branch it.
"""

from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from seqlab.config import ModelConfig, check_option_types
from seqlab.errors import ConfigError, SeqlabError, ShapeError
from seqlab.layout import CAUSAL_ONLY, Layout, LayoutKind
from seqlab.registry import MIXERS
from seqlab.state import State, interleave_states


@dataclass
class Mixing:
    """What a mixer whose output is linear in its values (given its gates) applies, head by
    head: `output[b, t, h] = Σ_s matrix[b, h, t, s] · values[b, s, h]`.

    `matrix` `[B, H, T, T]` (the implicit attention map; lower triangular for a causal mixer,
    full for a bidirectional-only one),
    `values` `[B, T, H, V]` and `output` `[B, T, H, V]`: the values the kernel mixes and its
    output before the mixer's output norm, gate and projection.
    `slots` > 1 (MoM's memories): the H rows are `slots` slot-major groups of the mixer's
    heads, each slot with values of its own; a head's kernel output is the sum of its slots'
    outputs (`head_output`) and its implicit attention map the sum of their maps
    (`head_matrix`).
    """

    matrix: Tensor
    values: Tensor
    output: Tensor
    slots: int = 1

    def head_matrix(self) -> Tensor:
        """`[B, H / slots, T, T]`: how much each token reads each other, summed over slots."""
        return self.matrix.unflatten(1, (self.slots, -1)).sum(1)

    def head_output(self) -> Tensor:
        """`[B, T, H / slots, V]`: the kernel output of each of the mixer's heads."""
        return self.output.unflatten(2, (self.slots, -1)).sum(2)


# The values `[B, T, H, V']` (any V') -> the kernel output `[B, T, H, V']`, the gates fixed.
ValueMap = Callable[[Tensor], Tensor]


def mixing_by_basis(values: Tensor, output: Tensor, value_map: ValueMap) -> Mixing:
    """The implicit attention matrix of a map linear in the values (Zimerman et al., 2024), by
    the identity-value trick: with V' = T and value v_s = e_s (the s-th basis vector over
    time, in every head), output row t is Σ_s M[t, s] e_s, row t of the matrix itself.

    values, output `[B, T, H, V]` (kept as given) -> `Mixing` with matrix `[B, H, T, T]`.
    """
    batch, steps, heads, _ = values.shape
    basis = torch.eye(steps, dtype=values.dtype, device=values.device)
    rows = value_map(basis[None, :, None, :].repeat(batch, 1, heads, 1))  # [B, T, H, T]
    return Mixing(rows.transpose(1, 2), values, output)


class Mixer(nn.Module, ABC):
    """A token mixer.

    A subclass declares, as class attributes, the layouts it supports (`layouts`, causal only
    by default) and whether its decode state is of fixed size or grows with the context
    (`state_kind`: "fixed" or "kv_cache"; "none" for a mixer without the causal layout, which
    cannot decode: its `init_state` raises and its `state_size` is 0). A mixer whose causal
    layout reads a prefix non-causally (JRT-RNN) sets `noncausal_prefix` on the instance: the
    conformance kit then checks causality and decoding past it. Its constructor takes
    by keyword whichever `ModelConfig` fields it needs (`d_model`, `n_heads`, `rope_theta`,
    ...), optionally `layer` (its index in the stack), and its own options; `from_config`
    fills the first two from the model config, so the options a user may set are read from
    the signature.
    """

    name: ClassVar[str]  # the name it is registered or found by (set by the registry)
    layouts: ClassVar[frozenset[LayoutKind]] = CAUSAL_ONLY
    state_kind: ClassVar[str] = "fixed"
    # The output is linear in the values given the gates: `mixing` returns the matrix.
    linear_in_values: ClassVar[bool] = False
    # Runs its shard of a sequence split across ranks (`seqlab.sequence_parallel`).
    sequence_parallel: ClassVar[bool] = False
    # Why not, where the generic reason (not a linear recurrence nor attention) is wrong.
    sequence_parallel_refusal: ClassVar[str] = ""
    # Submodules (attribute names) whose parameters the causal layout never reads, e.g. the
    # anti-causal half of a bidirectional kernel: DDP must then look for unused parameters.
    unused_in_causal: ClassVar[tuple[str, ...]] = ()
    # Under the causal layout, positions below this read each other (the whole prefix)
    # non-causally, and a decode starts at or after it (JRT-RNN's prefix; set per instance).
    noncausal_prefix: int = 0

    @classmethod
    def from_config(cls, config: ModelConfig, layer: int = 0, **options: Any) -> Mixer:
        """The mixer for `layer` of a model with `config`.

        Constructor parameters named like a `ModelConfig` field (`d_model`, `n_heads`,
        `rope_theta`, ...) take that field; `layer` takes the layer index; every other keyword
        parameter is an option (`option_defaults`), and an unknown one is a ConfigError
        naming the valid ones, as is a value that does not match the option's annotation (a
        string for a bool, 2.5 for an int). `heads` is an option whose default is
        `model.n_heads`.
        """
        valid = cls.option_defaults()
        unknown = sorted(set(options) - set(valid))
        if "memory_cache" in unknown:
            takers = [n for n in MIXERS.names() if "memory_cache" in MIXERS.get(n).options()]
            raise ConfigError(
                f"mixer {getattr(cls, 'name', cls.__name__)} does not take memory_cache; the "
                f"mixers that read a matrix state as q̃ᵀS take it: {', '.join(takers)}"
            )
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for mixer {cls.__name__}; valid options: "
                + (", ".join(sorted(valid)) or "none")
            )
        params = constructor_parameters(cls)
        options = check_option_types(
            params,
            options,
            cls.__init__.__globals__,
            f"model.mixer_options.{getattr(cls, 'name', cls.__name__)}.",
        )
        kwargs = {name: getattr(config, name) for name in params if name in CONFIG_FIELDS}
        for name, field in CONFIG_DEFAULTS.items():
            if name in params:
                kwargs[name] = getattr(config, field)
        if "layer" in params:
            kwargs["layer"] = layer
        kwargs.update(options)
        missing = [n for n, p in params.items() if n not in kwargs and p.default is p.empty]
        if missing:
            raise ConfigError(
                f"mixer {cls.__name__} needs {missing}, which are neither ModelConfig fields "
                "nor given as options"
            )
        return cls(**kwargs)

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The options a user may set, with their defaults (`model.FIELD` where the model
        config supplies it; `inspect.Parameter.empty` where the option is required)."""
        return {
            name: ConfigDefault(CONFIG_DEFAULTS[name]) if name in CONFIG_DEFAULTS else p.default
            for name, p in constructor_parameters(cls).items()
            if name not in CONFIG_FIELDS and name != "layer"
        }

    @abstractmethod
    def forward(
        self,
        x: Tensor,
        state: State | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        """`x [B, T, d_model]` -> (`y [B, T, d_model]`, new state or None)."""

    @abstractmethod
    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """The state before any token."""

    @abstractmethod
    def state_size(self, seq_len: int) -> int:
        """Numbers carried per sequence to decode after `seq_len` tokens."""

    def mixing_flops(self, seq_len: int) -> float:
        """Forward FLOPs per token beyond the mixer's linear layers (0 when it has none)."""
        return 0.0

    def mixing(self, x: Tensor) -> Mixing:
        """The T×T matrix each head applies to its values for input `x [B, T, d_model]`
        (causal; the full matrix of the bidirectional layout for a mixer without the causal
        one), computed exactly (by the step-by-step reference), with those values and the
        kernel's output. Only for mixers whose output is linear in the values given the gates,
        which declare it with `linear_in_values = True` and give `_value_map`; the default
        forms the matrix from it by `mixing_by_basis`. A SeqlabError for the others."""
        if not self.linear_in_values:
            raise SeqlabError(
                f"mixer {getattr(self, 'name', type(self).__name__)!r} has no mixing matrix: "
                "its output is not linear in its values"
            )
        check_input(x, getattr(self, "d_model", x.shape[-1]))
        return mixing_by_basis(*self._value_map(x))

    def _value_map(self, x: Tensor) -> tuple[Tensor, Tensor, ValueMap]:
        """For `x [B, T, d_model]` and the causal layout: (the values `[B, T, H, V]`, the
        kernel output that the forward computes from them `[B, T, H, V]`, the kernel's
        step-by-step reference as a function of the values alone, the gates held fixed)."""
        raise NotImplementedError(f"{type(self).__name__} declares no value map")

    def init_weights(self, std: float, out_std: float) -> None:
        """Normal(0, std) for linear weights, `out_std` for the output projection `out`, zero
        linear biases; a parameter marked by `keep_init` keeps the initialisation its module
        gave it (decays, SSM spectra, fan-in gates)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if not keeps_init(module.weight):
                    nn.init.normal_(module.weight, std=out_std if name == "out" else std)
                if module.bias is not None and not keeps_init(module.bias):
                    nn.init.zeros_(module.bias)


def no_weight_decay(*params: nn.Parameter) -> None:
    """Mark structured parameters (SSM spectra, time steps) that the trainer must not decay:
    decay pulls log|A| towards 0 and erases an initialised spectrum. The trainer already
    leaves every parameter with fewer than two dims undecayed."""
    for param in params:
        param._no_weight_decay = True  # type: ignore[attr-defined]


CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))
# Options whose default is a model config field.
CONFIG_DEFAULTS = {"heads": "n_heads"}


@dataclass(frozen=True)
class ConfigDefault:
    """The default of an option that a model config field supplies."""

    field: str

    def __repr__(self) -> str:
        return f"model.{self.field}"


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The parameters of `cls`'s constructor that can be passed by keyword."""
    params = inspect.signature(cls).parameters.values()
    return {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def keep_init(*params: nn.Parameter) -> None:
    """Mark structured parameters whose own initialisation the model-wide init must keep."""
    for param in params:
        param._keep_init = True  # type: ignore[attr-defined]


def keeps_init(param: nn.Parameter) -> bool:
    return getattr(param, "_keep_init", False)


def check_input(x: Tensor, d_model: int, name: str = "x") -> None:
    """A mixer's input is `[B, T, d_model]` with T >= 1: an empty sequence is a ShapeError
    for every mixer (there is nothing to mix, and no state to continue)."""
    if x.dim() != 3 or x.shape[-1] != d_model or x.shape[1] == 0:
        raise ShapeError(
            f"{name} must have shape [B, T, {d_model}] with T >= 1, got {list(x.shape)}"
        )


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Recurrent states are kept in float32, or float64 when the module runs in float64."""
    return torch.promote_types(dtype, torch.float32)


# One direction of a recurrent mixer: time-indexed inputs (each `[B, T, ...]`) and a state
# (None: the parallel form from a zero state) -> (output `[B, T, ...]`, new state or None).
Recur = Callable[[tuple[Tensor, ...], State | None], tuple[Tensor, State | None]]
# (noised inputs, clean inputs, block size b) -> F's outputs on the noised blocks (each from
# its start state S_j) and on the clean half, or None where the mixer cannot: a mixer's own
# way to the block-diffusion scans (see scan_in_layout).
BlockForward = Callable[[tuple[Tensor, ...], tuple[Tensor, ...], int], tuple[Tensor, Tensor] | None]


def check_scan_layout(layout: Layout, state: State | None, name: str) -> None:
    """A scan supports every layout (see `scan_in_layout`); only the
    vectorised block-diffusion sequence cannot continue from a carried state."""
    if state is not None and layout.kind is LayoutKind.BLOCK_DIFFUSION:
        raise SeqlabError(
            f"{name}: the block_diffusion layout reads a whole [x_t ; x_0] sequence and cannot "
            "continue from a state; decode block by block with block_causal and bidirectional"
        )


def scan_in_layout(
    recur: Recur,
    inputs: tuple[Tensor, ...],
    state: State | None,
    layout: Layout,
    init_state: Callable[[int], State],
    block_forward: BlockForward | None = None,
) -> tuple[Tensor, State | None]:
    """Run a one-directional recurrence `F` in any layout, by forward and reversed scans.

    With R(x) = flip(F(flip(x); 0)) (the same recurrence over the reversed tokens, from a zero
    state), the outputs are, before the mixer's output norm and gate:

    * causal: F(x; s).
    * bidirectional: F(x; s) + R(x), the two scans of Hydra's view.
    * block_causal(b): F(x; s) + R applied to each block of b tokens separately, so a token
      reads every earlier token (through the state) and its whole block. Blocks count from
      the first token given: a chunk continued from a state must start at a block boundary
      (the state holds no position).
    * block_diffusion(b): x = [x_t ; x_0] of length 2L. The clean half is block_causal. The
      noised block j reads F(x_t^j; S_j) + R(x_t^j), where S_j is F's state after the clean
      blocks before j: the recurrent state carries the clean prefix, and the block is read
      both ways on top of it. This is exactly what block-wise sampling computes with a state
      cache (prefill x_0^{<j} block-causally, then read x_t^j bidirectionally from the
      state), and, as with attention's block-diffusion mask, block j's output depends only
      on x_0^{<j} and x_t^j. The forward scans come from `block_forward(x_t, x_0, b)` when
      the mixer has it and it does not return None (the matrix-state mixers take every S_j
      from one chunked-kernel call with chunk = b: they are its inter-chunk states); else
      the clean half is scanned one block at a time to collect the S_j, and the noised
      blocks run as one batch of L/b sequences from them.

    With b = 1 a token reads its prefix and itself, but the reversed scan of the one token
    adds a term that the causal layout does not have: the block_causal(1) model is an exact
    autoregressive model, not the same function as the causal layout with the same weights.

    Returns (summed output, F's new state when `state` is given, else None).
    """
    if layout.kind is not LayoutKind.BLOCK_DIFFUSION:
        output, new_state = recur(inputs, state)
        if layout.is_causal:
            return output, new_state
        block_causal = layout.kind is LayoutKind.BLOCK_CAUSAL
        size = layout.block_size if block_causal else inputs[0].shape[1]
        return output + reverse_in_blocks(recur, inputs, size), new_state
    length, odd = divmod(inputs[0].shape[1], 2)
    if odd:
        raise ShapeError(
            f"the block_diffusion layout needs an even length [x_t ; x_0], got {2 * length + 1}"
        )
    size = layout.block_size
    batch = inputs[0].shape[0]
    noised = tuple(u[:, :length] for u in inputs)
    clean = tuple(u[:, length:] for u in inputs)
    forward = None
    if block_forward is not None and length % size == 0:
        forward = block_forward(noised, clean, size)
    if forward is not None:
        noised_output, clean_output = forward
    else:
        starts, clean_outputs = [], []
        carried = init_state(batch)
        for start in range(0, length, size):
            starts.append(carried)
            output, carried = recur(tuple(u[:, start : start + size] for u in clean), carried)
            clean_outputs.append(output)
        noised_output = forward_blocks_from(recur, noised, size, starts)
        clean_output = torch.cat(clean_outputs, dim=1)
    both = tuple(torch.cat([a, b]) for a, b in zip(noised, clean, strict=True))
    reverse = reverse_in_blocks(recur, both, size)
    noised_output = noised_output + reverse[:batch]
    clean_output = clean_output + reverse[batch:]
    return torch.cat([noised_output, clean_output], dim=1), None


def fold_blocks(u: Tensor, size: int) -> Tensor:
    """`[B, n · size, ...]` -> `[B · n, size, ...]` (row b · n + j is block j of row b)."""
    return u.reshape(u.shape[0] * (u.shape[1] // size), size, *u.shape[2:])


def unfold_blocks(u: Tensor, batch: int) -> Tensor:
    """The inverse of `fold_blocks`."""
    return u.reshape(batch, -1, *u.shape[2:])


def reverse_in_blocks(recur: Recur, inputs: tuple[Tensor, ...], size: int) -> Tensor:
    """R(x) restarted at every block of `size` tokens (the last block may be shorter)."""
    batch, steps = inputs[0].shape[:2]
    full = steps - steps % size
    parts = []
    if full:
        blocks = tuple(fold_blocks(u[:, :full], size).flip(1) for u in inputs)
        parts.append(unfold_blocks(recur(blocks, None)[0].flip(1), batch))
    if full < steps:
        parts.append(recur(tuple(u[:, full:].flip(1) for u in inputs), None)[0].flip(1))
    return torch.cat(parts, dim=1)


def forward_blocks_from(
    recur: Recur, inputs: tuple[Tensor, ...], size: int, starts: list[State]
) -> Tensor:
    """F over each block j of `size` tokens from its own state `starts[j]`, blocks batched."""
    batch, steps = inputs[0].shape[:2]
    full = steps // size
    parts = []
    if full:
        blocks = tuple(fold_blocks(u[:, : full * size], size) for u in inputs)
        output, _ = recur(blocks, interleave_states(starts[:full]))
        parts.append(unfold_blocks(output, batch))
    if full * size < steps:
        parts.append(recur(tuple(u[:, full * size :] for u in inputs), starts[full])[0])
    return torch.cat(parts, dim=1)
