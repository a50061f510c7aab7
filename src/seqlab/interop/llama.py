"""The Llama family: seqlab attention models <-> `LlamaForCausalLM`, `MistralForCausalLM`
and `Qwen2ForCausalLM`, with the same logits.

A seqlab model is a Llama when every layer is the `attention` mixer and the blocks are the
default ones: pre-norm RMSNorm (weight · x / rms(x), eps `norm_eps`), SwiGLU
W_down(silu(W_gate x) ⊙ W_up x) of width `mlp_ratio · d_model`, rotary positions on the two
halves of each head (HF's `rotate_half`, base `rope_theta`), softmax scale 1/√head_dim,
grouped-query heads (`n_kv_heads`), no embedding scale, tied or untied head. The two
implementations then compute the same function, and the weights map one to one; seqlab's
fused `qkv` rows are [q; k; v] and its `gate_up` rows [gate; up].

Which Hugging Face class an exported model becomes:
    plain attention                         -> LlamaForCausalLM
    qkv_bias and out_bias                   -> LlamaForCausalLM, attention_bias
    qkv_bias alone (any window)             -> Qwen2ForCausalLM (every layer sliding if window)
    window (sliding window, no biases)      -> MistralForCausalLM, sliding_window = window
Both sliding windows read the last `window` positions, the query's own included (key s is
read by query t when t − window < s ≤ t), and both keep that many keys when decoding.
Not exported: qk_norm, sparsity, MoE, DEQ, models without an MLP, other mixers.
Not imported: rope scaling (rope_type other than default), mlp_bias, activations other
than silu, Qwen2 models with full and sliding layers mixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.interop.families import Family, register_family

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel

    from seqlab.model import Model

MODEL_TYPES = ("llama", "mistral", "qwen2")
# seqlab's rotary has no length limit; what exported configs declare.
MAX_POSITIONS = 1 << 17


@dataclass(frozen=True)
class _Shape:
    """What the weight correspondence of one Llama-like model depends on."""

    n_layers: int
    q_dim: int
    kv_dim: int
    hidden: int
    qkv_bias: bool
    out_bias: bool
    tied: bool


def _attention_options(config: ModelConfig) -> dict[str, Any]:
    return dict(config.mixer_options.get("attention", {}))


def export_reason(config: ModelConfig) -> str | None:
    """None when `config` is a Llama/Mistral/Qwen2 model exactly, else what differs."""
    others = sorted(set(config.layer_names()) - {"attention"})
    if others:
        return f"layers use mixer(s) {', '.join(others)}; the llama family has attention only"
    if config.deq is not None:
        return "a deep equilibrium model (model.deq) has no llama counterpart"
    if config.value_head is not None:
        return "a value head (model.value_head) has no llama counterpart"
    if config.mlp["kind"] != "swiglu":
        return f"model.mlp kind {config.mlp['kind']} (llama blocks have one dense SwiGLU)"
    if config.mlp_hidden() == 0:
        return "model.mlp_ratio 0 (no MLP); llama blocks always have one"
    options = _attention_options(config)
    if options.get("qk_norm"):
        return "attention qk_norm (RMSNorm of q and k) has no llama/mistral/qwen2 counterpart"
    if options.get("sparsity") is not None:
        return "attention sparsity has no llama/mistral/qwen2 counterpart"
    qkv_bias, out_bias = options.get("qkv_bias", False), options.get("out_bias", False)
    if out_bias and not qkv_bias:
        return "attention out_bias without qkv_bias (llama's attention_bias sets both)"
    if out_bias and config.window is not None:
        return "a sliding window with out_bias (mistral and qwen2 have no o_proj bias)"
    return None


def _shape(config: ModelConfig) -> _Shape:
    options = _attention_options(config)
    head_dim = options.get("head_dim") or config.head_dim
    return _Shape(
        n_layers=config.n_layers,
        q_dim=config.n_heads * head_dim,
        kv_dim=(config.n_kv_heads or config.n_heads) * head_dim,
        hidden=config.mlp_hidden(),
        qkv_bias=bool(options.get("qkv_bias", False)),
        out_bias=bool(options.get("out_bias", False)),
        tied=config.tie_embeddings,
    )


def _correspondence(shape: _Shape) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """(seqlab key, the Hugging Face keys it holds, their sizes along dim 0) for every
    weight: a fused seqlab weight is its Hugging Face parts stacked in order."""
    q, kv = shape.q_dim, shape.kv_dim
    pairs: list[tuple[str, tuple[str, ...], tuple[int, ...]]] = [
        ("embed.weight", ("model.embed_tokens.weight",), ()),
        ("norm.weight", ("model.norm.weight",), ()),
        ("head.weight", ("model.embed_tokens.weight" if shape.tied else "lm_head.weight",), ()),
    ]
    for i in range(shape.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        attn = theirs + "self_attn."
        projections = tuple(f"{attn}{p}_proj" for p in "qkv")
        pairs += [
            (ours + "mixer_norm.weight", (theirs + "input_layernorm.weight",), ()),
            (ours + "mixer.qkv.weight", tuple(p + ".weight" for p in projections), (q, kv, kv)),
            (ours + "mixer.out.weight", (attn + "o_proj.weight",), ()),
            (ours + "mlp_norm.weight", (theirs + "post_attention_layernorm.weight",), ()),
            (
                ours + "mlp.gate_up.weight",
                (theirs + "mlp.gate_proj.weight", theirs + "mlp.up_proj.weight"),
                (shape.hidden, shape.hidden),
            ),
            (ours + "mlp.down.weight", (theirs + "mlp.down_proj.weight",), ()),
        ]
        if shape.qkv_bias:
            pairs.append(
                (ours + "mixer.qkv.bias", tuple(p + ".bias" for p in projections), (q, kv, kv))
            )
        if shape.out_bias:
            pairs.append((ours + "mixer.out.bias", (attn + "o_proj.bias",), ()))
    return pairs


def _hf_config(config: ModelConfig) -> PreTrainedConfig:
    """The LlamaConfig, MistralConfig or Qwen2Config of an exportable seqlab config."""
    import transformers

    options = _attention_options(config)
    qkv_bias, out_bias = options.get("qkv_bias", False), options.get("out_bias", False)
    common = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.mlp_hidden(),
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads or config.n_heads,
        "head_dim": options.get("head_dim") or config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "initializer_range": config.init_std,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if qkv_bias and not out_bias:
        sliding = config.window is not None
        return transformers.Qwen2Config(
            **common,
            use_sliding_window=sliding,
            sliding_window=config.window,
            max_window_layers=0,
            layer_types=["sliding_attention" if sliding else "full_attention"] * config.n_layers,
        )
    if config.window is not None:
        return transformers.MistralConfig(**common, sliding_window=config.window)
    return transformers.LlamaConfig(**common, attention_bias=qkv_bias, mlp_bias=False)


def to_hf(model: Model) -> PreTrainedModel:
    """The Hugging Face model (Llama, Mistral or Qwen2; see the module docstring) computing
    the same logits as `model`, on its device and in its dtype, in eval mode."""
    import transformers

    config = model.config
    reason = export_reason(config)
    if reason is not None:
        raise ConfigError(f"cannot export to the llama family exactly: {reason}")
    ours = model.state_dict()
    theirs: dict[str, Tensor] = {}
    for key, hf_keys, sizes in _correspondence(_shape(config)):
        parts = ours[key].split(list(sizes)) if sizes else (ours[key],)
        theirs.update(zip(hf_keys, (p.detach() for p in parts), strict=True))
    hf_model = transformers.AutoModelForCausalLM.from_config(_hf_config(config))
    if config.tie_embeddings:
        theirs["lm_head.weight"] = theirs["model.embed_tokens.weight"]
    hf_model.load_state_dict(theirs, strict=True)
    weight = model.embed.weight
    return hf_model.to(device=weight.device, dtype=weight.dtype).eval()


def _import_reason(hf_config: PreTrainedConfig) -> str | None:
    """None when the checkpoint maps onto a seqlab attention model exactly, else why not."""
    if hf_config.model_type not in MODEL_TYPES:
        return f"model_type {hf_config.model_type!r} is not one of {', '.join(MODEL_TYPES)}"
    if hf_config.hidden_act != "silu":
        return f"hidden_act {hf_config.hidden_act!r} (seqlab's SwiGLU uses silu)"
    if getattr(hf_config, "mlp_bias", False):
        return "mlp_bias (seqlab's SwiGLU has no biases)"
    rope = hf_config.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope_type {rope['rope_type']!r} (seqlab's rotary is the default rope only)"
    types = set(getattr(hf_config, "layer_types", None) or ())
    if types - {"full_attention", "sliding_attention"} or len(types) > 1:
        return f"layer_types {sorted(types)} (seqlab's window applies to every layer)"
    return None


def _window(hf_config: PreTrainedConfig) -> int | None:
    """The sliding window every layer applies (None: full causal attention)."""
    if hf_config.model_type == "llama":
        return None
    types = getattr(hf_config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return hf_config.sliding_window


def from_hf(hf_model: PreTrainedModel) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The seqlab `ModelConfig` and `Model.state_dict()` of a Llama, Mistral or Qwen2 causal
    LM (tensors as the Hugging Face model holds them; loading copies them)."""
    hf_config = hf_model.config
    reason = _import_reason(hf_config)
    if reason is not None:
        raise ConfigError(f"cannot import this checkpoint into seqlab exactly: {reason}")
    d_model, n_heads = hf_config.hidden_size, hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or d_model // n_heads
    qkv_bias = hf_config.model_type == "qwen2" or bool(getattr(hf_config, "attention_bias", False))
    out_bias = hf_config.model_type == "llama" and bool(hf_config.attention_bias)
    options: dict[str, Any] = {}
    if head_dim != d_model // n_heads:
        options["head_dim"] = head_dim
    if qkv_bias:
        options["qkv_bias"] = True
    if out_bias:
        options["out_bias"] = True
    kv_heads = hf_config.num_key_value_heads or n_heads
    config = ModelConfig(
        mixer="attention",
        d_model=d_model,
        n_layers=hf_config.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=None if kv_heads == n_heads else kv_heads,
        vocab_size=hf_config.vocab_size,
        mlp_ratio=hf_config.intermediate_size / d_model,
        tie_embeddings=bool(hf_config.tie_word_embeddings),
        norm_eps=hf_config.rms_norm_eps,
        rope_theta=float((hf_config.rope_parameters or {}).get("rope_theta", 10000.0)),
        window=_window(hf_config),
        init_std=hf_config.initializer_range,
        mixer_options={"attention": options} if options else {},
    )
    if config.mlp_hidden() != hf_config.intermediate_size:
        raise ConfigError(
            f"intermediate_size {hf_config.intermediate_size} is not a whole mlp_ratio of "
            f"hidden_size {d_model} in float arithmetic; cannot import it exactly"
        )
    theirs = hf_model.state_dict()
    ours = {
        key: theirs[hf_keys[0]] if len(hf_keys) == 1 else torch.cat([theirs[k] for k in hf_keys])
        for key, hf_keys, _ in _correspondence(_shape(config))
    }
    return config, ours


FAMILY = register_family(
    Family(
        name="llama",
        model_types=MODEL_TYPES,
        export_reason=export_reason,
        to_hf=to_hf,
        from_hf=from_hf,
    )
)
