"""The model: embed -> [Block(mixer, mlp)] x N -> norm -> head, with state threading.

Each Block is pre-norm: x + mixer(norm(x)), then x + mlp(norm(x)) with mlp a dense SwiGLU or
a mixture of SwiGLU experts (`ModelConfig.mlp`, `seqlab.feedforward`). A per-layer mixer
pattern (`ModelConfig.layers`) builds hybrids. The decode state is a tuple with one entry
per layer, each whatever that layer's mixer returns.

With `ModelConfig.deq` set, the blocks form one weight-tied layer and the hidden state is its
equilibrium (`seqlab.implicit.deq`): embed -> z* = f(z*, x) -> norm -> head, the state still
one entry per block.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError, ShapeError
from seqlab.feedforward.moe import MoE
from seqlab.feedforward.swiglu import SwiGLU
from seqlab.heads.base import build_value_head, check_values
from seqlab.implicit.deq import DEQ
from seqlab.layout import Layout
from seqlab.mixers.base import Mixer
from seqlab.registry import MIXERS
from seqlab.state import tensor_leaves

ModelState = tuple
# Activation floats kept per token and layer, in units of d_model, by a training forward (a
# forward without autograd keeps a few per token in all): a
# deliberately low count (the residual stream, norms, the MLP's hidden and the mixer's
# projections), so that a refused batch is one that surely cannot fit.
ACTIVATIONS_PER_LAYER = 8


def build_mixer(name: str, config: ModelConfig, layer: int) -> Mixer:
    """Mixer `name` (registered, or an import path `package.module:Name`) for `layer`, with
    `config.mixer_options[name]` as its options."""
    mixer_class = MIXERS.get(name).target
    return mixer_class.from_config(config, layer, **config.mixer_options.get(name, {}))


def build_feedforward(config: ModelConfig) -> SwiGLU | MoE | None:
    """The feed-forward `config.mlp` names (None when its hidden width is 0)."""
    hidden = config.mlp_hidden()
    moe = config.moe()
    if moe is None:
        return SwiGLU(config.d_model, hidden) if hidden else None
    return MoE(
        config.d_model,
        hidden,
        experts=moe.experts,
        top_k=moe.top_k,
        shared=moe.shared,
        balance_weight=moe.balance_weight,
    )


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, mixer_name: str) -> None:
        super().__init__()
        self.mixer_name = mixer_name
        self.mixer_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = build_mixer(mixer_name, config, layer)
        self.mlp = build_feedforward(config)
        has_mlp = self.mlp is not None
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps) if has_mlp else None

    def forward(
        self, x: Tensor, state: object, layout: Layout, positions: Tensor | None
    ) -> tuple[Tensor, object]:
        mixed, state = self.mixer(self.mixer_norm(x), state, layout=layout, positions=positions)
        x = x + mixed
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, state


class Model(nn.Module):
    """Token ids `[B, T]` -> logits `[B, T, vocab]`, threading each layer's state."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        parameters = count_parameters(config)
        if parameters is not None:
            check_fits("the model's parameters", 4 * parameters, machine_memory(), "float32")
        self.config = config
        names = config.layer_names()
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i, n) for i, n in enumerate(names))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.value_head = build_value_head(config)
        self.tied = config.tie_embeddings
        if self.tied:
            self.head.weight = self.embed.weight
        deq = config.deq_config()
        self.deq = None if deq is None else DEQ(deq, config.d_model, eps=config.norm_eps)
        self.layouts = frozenset.intersection(*(block.mixer.layouts for block in self.blocks))
        self.init_weights()

    def unused_parameters(self, layout: Layout) -> list[str]:
        """The names of the parameters a forward under `layout` never reads, as the mixers
        declare them (`Mixer.unused_in_causal`)."""
        if not layout.is_causal:
            return []
        return [
            f"blocks.{i}.mixer.{part}.{name}"
            for i, block in enumerate(self.blocks)
            for part in block.mixer.unused_in_causal
            for name, _ in getattr(block.mixer, part).named_parameters()
        ]

    def init_weights(self) -> None:
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        nn.init.normal_(self.embed.weight, std=std)
        if not self.tied:
            nn.init.normal_(self.head.weight, std=std)
        if self.value_head is not None:
            self.value_head.init_weights(std)
        for block in self.blocks:
            block.mixer.init_weights(std, out_std)
            if block.mlp is not None:
                block.mlp.init_weights(std, out_std)

    def forward(
        self,
        tokens: Tensor,
        state: ModelState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
        positions: Tensor | None = None,
        input_embeddings: Tensor | None = None,
        values: Tensor | None = None,
    ) -> tuple[Tensor, ModelState | None] | tuple[Tensor, ModelState | None, Tensor]:
        """Logits `[B, T, vocab]` and the new state (None when `state` is None).

        `positions` `[T]` or `[B, T]` overrides the token positions that position-aware mixers
        (rotary attention) use; `input_embeddings` `[B, T, d_model]` is added to the token
        embeddings (e.g. the target-position encoding of any-order AR).

        `values` `[B, T]` (a model with a value head): the continuous value beside each
        token, read through `ValueHead.encode`; the output then has a third entry, the value
        head's parameters `[B, T, P]` of the next value's distribution
        (`ValueHead.from_parameters`; `marked` returns the distribution itself). Tensors
        only, so wrappers (DDP, torch.compile, autocast) pass it through.
        """
        hidden, new_states = self._hidden(
            tokens, state, layout, positions, input_embeddings, values
        )
        if values is None:
            return self.head(hidden), new_states
        return self.head(hidden), new_states, self.value_head.projection(hidden)

    def marked(
        self,
        tokens: Tensor,
        values: Tensor,
        state: ModelState | None = None,
        *,
        layout: Layout = Layout.CAUSAL,
    ) -> tuple[Tensor, Distribution, ModelState | None]:
        """Tokens `[B, T]` with a value `[B, T]` beside each: the next token's logits
        `[B, T, vocab]`, the next value's distribution (batch shape `[B, T]`) and the new
        state (None when `state` is None)."""
        logits, new_states, parameters = self(tokens, state, layout=layout, values=values)
        return logits, self.value_head.from_parameters(parameters), new_states

    def _hidden(
        self,
        tokens: Tensor,
        state: ModelState | None,
        layout: Layout,
        positions: Tensor | None,
        input_embeddings: Tensor | None,
        values: Tensor | None,
    ) -> tuple[Tensor, ModelState | None]:
        """The final normalised hidden states `[B, T, d_model]` and the new state."""
        self._check(tokens, state, layout)
        x = self.embed(tokens)
        if input_embeddings is not None:
            if input_embeddings.shape != x.shape:
                raise ShapeError(
                    f"input_embeddings must have shape {list(x.shape)}, got "
                    f"{list(input_embeddings.shape)}"
                )
            x = x + input_embeddings
        if values is not None:
            if self.value_head is None:
                raise SeqlabError(
                    "values were given but this model has no value head (model.value_head)"
                )
            check_values(values, tokens, self.value_head.support)
            x = x + self.value_head.encode(values.to(x.dtype))

        def stack(h: Tensor) -> tuple[Tensor, tuple]:
            return self._stack(h, state, layout, positions)

        x, new_states = stack(x) if self.deq is None else self.deq(stack, x)
        return self.norm(x), (None if state is None else new_states)

    def _stack(
        self, x: Tensor, state: ModelState | None, layout: Layout, positions: Tensor | None
    ) -> tuple[Tensor, tuple]:
        """The blocks in turn, each from its own entry of `state` (never mutated)."""
        new_states = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, None if state is None else state[i], layout, positions)
            new_states.append(layer_state)
        return x, tuple(new_states)

    def _check(self, tokens: Tensor, state: ModelState | None, layout: Layout) -> None:
        if not isinstance(tokens, Tensor):
            raise ShapeError(
                f"tokens must be a torch.Tensor of integer ids [B, T], got {type(tokens).__name__}"
            )
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ShapeError(
                f"tokens must be an integer tensor of shape [B, T], got {tuple(tokens.shape)} "
                f"{tokens.dtype}"
            )
        if tokens.shape[1] == 0:
            raise ShapeError(f"tokens must have T >= 1 positions, got shape {list(tokens.shape)}")
        memory = (
            torch.cuda.get_device_properties(tokens.device).total_memory
            if tokens.is_cuda
            else machine_memory()
        )
        kept = ACTIVATIONS_PER_LAYER * len(self.blocks) if torch.is_grad_enabled() else 4
        per_token = self.config.vocab_size + kept * self.config.d_model
        element = self.embed.weight.element_size()
        check_fits(
            f"a batch of {tokens.shape[0]} x {tokens.shape[1]} tokens",
            tokens.numel() * per_token * element,
            memory,
            "activations",
        )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ShapeError(
                f"token ids must lie in [0, {self.config.vocab_size}), got range "
                f"[{int(tokens.min())}, {int(tokens.max())}]"
            )
        if layout.kind not in self.layouts:
            raise SeqlabError(
                f"layout {layout.kind.value!r} is not supported by mixers "
                f"{self.config.layer_names()}; supported: {sorted(str(k) for k in self.layouts)}"
            )
        if state is not None:
            if not isinstance(state, tuple | list) or len(state) != len(self.blocks):
                raise ShapeError(
                    f"state must be a tuple of {len(self.blocks)} layer states (model.init_state"
                    f"), got {type(state).__name__}"
                    + (f" of {len(state)}" if isinstance(state, tuple | list) else "")
                )
            batches = state_batch_sizes(state)
            if batches - {tokens.shape[0]}:
                raise ShapeError(
                    f"state is for batch size {sorted(batches)}, tokens have batch size "
                    f"{tokens.shape[0]}; expected a state from model.init_state({tokens.shape[0]})"
                )

    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> ModelState:
        device = device or self.embed.weight.device
        dtype = dtype or self.embed.weight.dtype
        return tuple(
            b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks
        )

    def state_size(self, seq_len: int) -> int:
        """Numbers kept per sequence to decode after `seq_len` tokens, all layers."""
        return sum(b.mixer.state_size(seq_len) for b in self.blocks)

    def num_params(self, *, embeddings: bool = True) -> int:
        """All parameters (experts a token is not routed to included)."""
        total = sum(p.numel() for p in self.parameters())
        return total if embeddings else total - self.embed.weight.numel()

    def num_active_params(self, *, embeddings: bool = True) -> int:
        """The parameters each token uses: `num_params` less the experts it is not routed to."""
        return self.num_params(embeddings=embeddings) - self._inactive_params()

    def _inactive_params(self) -> int:
        return sum(b.mlp.inactive_params() for b in self.blocks if b.mlp is not None)

    def flops_per_token(self, seq_len: int) -> float:
        """Analytic forward FLOPs per token: 2 per active matmul weight (the routed experts a
        token skips do not count) plus the mixers' own work. A DEQ counts its blocks once per
        evaluation of f actually used (`DEQ.iterations_used`: the mean over its training
        forwards so far, max_iter + 1 before any) and the head once."""
        matmul = sum(m.weight.numel() for m in self.blocks.modules() if isinstance(m, nn.Linear))
        blocks = 2.0 * (matmul - self._inactive_params())
        blocks += sum(b.mixer.mixing_flops(seq_len) for b in self.blocks)
        repeats = 1.0 if self.deq is None else self.deq.iterations_used()
        values = 0.0 if self.value_head is None else self.value_head.flops_per_token()
        return 2.0 * self.head.weight.numel() + values + repeats * blocks

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside its training wrappers (autocast, DDP/FSDP, torch.compile)."""
    for attribute in ("net", "module", "_orig_mod"):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module):
            return unwrap(inner)
    return model


def state_batch_sizes(state: ModelState) -> set[int]:
    """The batch size of each layer's state, read from its first batched tensor (a cheap check
    on every decode step; scalars carry none)."""
    sizes: set[int] = set()
    for layer_state in state:
        first = next((t for t in tensor_leaves(layer_state) if t.dim()), None)
        if first is not None:
            sizes.add(first.shape[0])
    return sizes


def machine_memory() -> int | None:
    """Physical memory of this machine in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_fits(what: str, needed: int, memory: int | None, detail: str) -> None:
    """Refuse, before allocating, what needs more bytes than the machine's memory holds."""
    if memory is not None and needed > memory:
        raise SeqlabError(
            f"{what} would need at least {needed / 2**30:,.1f} GiB ({detail}), more than this "
            f"machine's {memory / 2**30:,.1f} GiB of memory; choose a smaller size"
        )


def count_parameters(config: ModelConfig) -> int | None:
    """The number of parameters a model of `config` has, counted without allocating them (each
    distinct block built once on the meta device); None for a mixer that cannot be built
    there (one that reads a tensor's value while it is constructed)."""
    names = config.layer_names()
    try:
        with torch.device("meta"):
            blocks = {
                name: sum(p.numel() for p in Block(config, 0, name).parameters())
                for name in set(names)
            }
    except (RuntimeError, NotImplementedError):
        return None
    head = 0 if config.tie_embeddings else config.vocab_size * config.d_model
    with torch.device("meta"):
        value_head = build_value_head(config)
    head += 0 if value_head is None else sum(p.numel() for p in value_head.parameters())
    norms = config.d_model * (1 if config.deq is None else 2)  # a DEQ's injection norm
    embed_and_norm = config.vocab_size * config.d_model + norms
    return embed_and_norm + head + sum(blocks[n] for n in names)


def build_model(config: ModelConfig) -> Model:
    """The public constructor: `build_model(ModelConfig(mixer="attention", d_model=128, ...))`.

    With `config.baseline` set, the classical baseline it names (`seqlab.baselines`), which
    has the interface of a Model that tasks, objectives and samplers use."""
    if not isinstance(config, ModelConfig):
        raise ConfigError(f"build_model takes a ModelConfig, got {type(config).__name__}")
    if config.baseline is not None:
        from seqlab.baselines.base import build_baseline  # the baselines import this module

        return build_baseline(config)
    return Model(config)
