"""The Mamba and Mamba2 families: seqlab's `mamba` and `mamba2` models without an MLP are
Hugging Face's `MambaForCausalLM` and `Mamba2ForCausalLM`.

Both sides compute embed -> [x + mixer(RMSNorm(x))] x N -> RMSNorm -> head (tied to the
embedding, or not), with the same mixers term by term:
- Mamba: u, z = W_in x; u = SiLU(conv(u) + b); (δ, B, C) = W_x u; Δ = softplus(W_Δ δ + b_Δ);
  y = W_out((S6(u; Δ, −exp(A_log), B, C) + D u) ⊙ SiLU(z)). Only the parameter names and
  the conv weight's shape (`[C, 1, k]` there, `[C, k]` here) differ.
- Mamba2: z, xBC, δ = W_in x (this order); x, B, C = SiLU(conv(xBC) + b) with B and C
  `[G · d_state]` (G = n_groups, head h reading group h // (H / G)); Δ = softplus(δ + b_Δ);
  SSD with decay exp(−Δ exp(A_log)) per head, + D x; out = W_out(RMSNorm_G(y ⊙ SiLU(z))), the
  norm over each group's d_inner / G channels with epsilon `layer_norm_epsilon` (seqlab's
  `groups` and `gate_norm_eps` options). Hugging Face's `chunk_size` is a blocking of the same
  sum (seqlab's must be a power of two: the largest one not above it is taken).
Refused, as seqlab has no counterpart: biases on the in/out projections (`use_bias`), a conv
without bias (`use_conv_bias: false`), an activation other than SiLU, and for Mamba2 a
`time_step_limit` other than (0, inf) (Hugging Face clamps Δ to it in its chunked form only,
not in its one-token decode step, so no single seqlab model equals both).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.interop.families import Family, register_family
from seqlab.model import Model
from seqlab.registry import MIXERS

# (seqlab name, Hugging Face name) of each mixer parameter; the conv weight is reshaped.
MIXER_NAMES = {
    "mamba": (
        ("in_proj.weight", "in_proj.weight"),
        ("conv.weight", "conv1d.weight"),
        ("conv.bias", "conv1d.bias"),
        ("x_proj.weight", "x_proj.weight"),
        ("dt_proj.weight", "dt_proj.weight"),
        ("dt_proj.bias", "dt_proj.bias"),
        ("A_log", "A_log"),
        ("D", "D"),
        ("out.weight", "out_proj.weight"),
    ),
    "mamba2": (
        ("in_proj.weight", "in_proj.weight"),
        ("conv.weight", "conv1d.weight"),
        ("conv.bias", "conv1d.bias"),
        ("dt_bias", "dt_bias"),
        ("A_log", "A_log"),
        ("D", "D"),
        ("norm.weight", "norm.weight"),
        ("out.weight", "out_proj.weight"),
    ),
}
# Options that only set the initialisation: any value exports.
INIT_ONLY = {"dt_min", "dt_max", "mimetic", "A_min", "A_max"}


def _options(config: ModelConfig, name: str) -> dict[str, Any]:
    """The mixer's options with their defaults filled in (`heads` resolved)."""
    options = MIXERS.get(name).target.option_defaults()
    options.update(config.mixer_options.get(name, {}))
    if name == "mamba2" and not isinstance(options["heads"], int):
        options["heads"] = config.n_heads
    return options


def _export_reason(config: ModelConfig, name: str) -> str | None:
    names = sorted(set(config.layer_names()))
    if names != [name]:
        return f"the {name} family needs every layer to be {name}, got mixer(s) {names}"
    if config.mlp["kind"] != "swiglu" or config.mlp_hidden():
        return (
            f"the model has an MLP (model.mlp_ratio {config.mlp_ratio:g}); Hugging Face's "
            f"{name} blocks have none (model.mlp_ratio: 0)"
        )
    if config.deq is not None:
        return "a deep equilibrium model (model.deq) has no Hugging Face counterpart"
    if config.value_head is not None:
        return f"a value head (model.value_head) has no {name} counterpart"
    options = _options(config, name)
    if options["negative_eigenvalues"]:
        return f"{name} with negative_eigenvalues has no Hugging Face counterpart"
    if name == "mamba2" and options.get("gate_norm_eps", 1e-5) != config.norm_eps:
        return (
            f"mamba2's gate_norm_eps ({options.get('gate_norm_eps', 1e-5)}) differs from "
            f"model.norm_eps ({config.norm_eps}); Hugging Face uses one epsilon for both"
        )
    return None


def _hf_config(model: Model, name: str) -> Any:
    """The `MambaConfig` / `Mamba2Config` of a seqlab model that `export_reason` accepts."""
    import transformers

    config, mixer = model.config, model.blocks[0].mixer
    common = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "state_size": mixer.d_state,
        "num_hidden_layers": config.n_layers,
        "layer_norm_epsilon": config.norm_eps,
        "expand": mixer.d_inner // config.d_model,
        "conv_kernel": mixer.conv.kernel_size,
        "use_bias": False,
        "use_conv_bias": True,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
    }
    if name == "mamba":
        return transformers.MambaConfig(**common, time_step_rank=mixer.dt_rank)
    return transformers.Mamba2Config(
        **common,
        num_heads=mixer.heads,
        head_dim=mixer.state_v,
        n_groups=mixer.groups,
        chunk_size=mixer.chunk_size,
    )


def _check_hf(hf_config: Any, name: str) -> None:
    """Refuse the Hugging Face options that seqlab's mixer cannot reproduce exactly."""
    refusals = [
        (getattr(hf_config, "use_bias", False), "use_bias: true (biases on in_proj/out_proj)"),
        (not getattr(hf_config, "use_conv_bias", True), "use_conv_bias: false"),
        (getattr(hf_config, "hidden_act", "silu") != "silu", f"hidden_act {hf_config.hidden_act}"),
    ]
    if name == "mamba2":
        limit = tuple(float(v) for v in getattr(hf_config, "time_step_limit", (0.0, math.inf)))
        refusals.append((limit != (0.0, math.inf), f"time_step_limit {list(limit)}"))
    for refused, option in refusals:
        if refused:
            raise ConfigError(
                f"a {name} checkpoint with {option} has no exact seqlab counterpart; seqlab "
                f"imports {name} with the defaults of this option"
            )


def _largest_power_of_two(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def _seqlab_config(hf_config: Any, name: str) -> ModelConfig:
    mixer_options: dict[str, Any] = {
        "expand": int(hf_config.expand),
        "d_state": int(hf_config.state_size),
        "conv_size": int(hf_config.conv_kernel),
    }
    n_heads = 1
    if name == "mamba":
        mixer_options["dt_rank"] = int(hf_config.time_step_rank)
    else:
        heads = int(hf_config.num_heads)
        if heads * int(hf_config.head_dim) != int(hf_config.expand) * int(hf_config.hidden_size):
            raise ConfigError(
                f"mamba2: num_heads · head_dim ({heads} · {hf_config.head_dim}) must equal "
                f"expand · hidden_size ({hf_config.expand} · {hf_config.hidden_size})"
            )
        mixer_options.update(
            heads=heads,
            groups=int(hf_config.n_groups),
            chunk_size=_largest_power_of_two(hf_config.chunk_size),
            gate_norm_eps=float(hf_config.layer_norm_epsilon),
        )
        n_heads = heads if hf_config.hidden_size % heads == 0 else 1
    return ModelConfig(
        mixer=name,
        d_model=int(hf_config.hidden_size),
        n_layers=int(hf_config.num_hidden_layers),
        n_heads=n_heads,
        vocab_size=int(hf_config.vocab_size),
        mlp_ratio=0.0,
        tie_embeddings=bool(hf_config.tie_word_embeddings),
        norm_eps=float(hf_config.layer_norm_epsilon),
        mixer_options={name: mixer_options},
    )


def _name_pairs(config: ModelConfig, name: str) -> list[tuple[str, str]]:
    """(seqlab key, Hugging Face key) of every parameter, the head included."""
    pairs = [
        ("embed.weight", "backbone.embeddings.weight"),
        ("norm.weight", "backbone.norm_f.weight"),
        ("head.weight", "lm_head.weight"),
    ]
    for i in range(config.n_layers):
        pairs.append((f"blocks.{i}.mixer_norm.weight", f"backbone.layers.{i}.norm.weight"))
        pairs.extend(
            (f"blocks.{i}.mixer.{ours}", f"backbone.layers.{i}.mixer.{theirs}")
            for ours, theirs in MIXER_NAMES[name]
        )
    return pairs


def _convert(
    source: dict[str, Tensor], pairs: list[tuple[str, str]], conv: Callable[[Tensor], Tensor]
) -> dict[str, Tensor]:
    """`source` renamed by `pairs` (from the first name to the second), copied, the conv
    weights reshaped by `conv`."""
    converted = {}
    for old, new in pairs:
        weight = source[old].detach()
        is_conv = old.endswith(("conv.weight", "conv1d.weight"))
        converted[new] = conv(weight) if is_conv else weight.clone()
    return converted


def _to_hf(model: Model, name: str) -> Any:
    import transformers

    reason = _export_reason(model.config, name)
    if reason is not None:
        raise ConfigError(f"cannot export to {name}: {reason}")
    hf_class = transformers.MambaForCausalLM if name == "mamba" else transformers.Mamba2ForCausalLM
    hf_model = hf_class(_hf_config(model, name)).to(model.embed.weight.dtype)
    weights = _convert(
        model.state_dict(), _name_pairs(model.config, name), lambda w: w[:, None].clone()
    )
    hf_model.load_state_dict(weights, strict=True)
    if model.config.tie_embeddings:
        hf_model.tie_weights()
    return hf_model.eval()


def _from_hf(hf_model: Any, name: str) -> tuple[ModelConfig, dict[str, Tensor]]:
    hf_config = hf_model.config
    if hf_config.model_type != name:
        raise ConfigError(
            f"the {name} family imports model_type {name!r}, got {hf_config.model_type!r}"
        )
    _check_hf(hf_config, name)
    config = _seqlab_config(hf_config, name)
    source = dict(hf_model.state_dict())
    source["lm_head.weight"] = hf_model.get_output_embeddings().weight
    pairs = [(theirs, ours) for ours, theirs in _name_pairs(config, name)]
    return config, _convert(source, pairs, lambda w: w[:, 0].clone())


def _family(name: str) -> Family:
    def export_reason(config: ModelConfig) -> str | None:
        return _export_reason(config, name)

    def to_hf(model: Model) -> Any:
        return _to_hf(model, name)

    def from_hf(hf_model: Any) -> tuple[ModelConfig, dict[str, Tensor]]:
        return _from_hf(hf_model, name)

    return Family(name, (name,), export_reason, to_hf, from_hf)


MAMBA = register_family(_family("mamba"))
MAMBA2 = register_family(_family("mamba2"))
