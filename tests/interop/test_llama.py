"""The llama family: Llama, Mistral and Qwen2 models in and out of seqlab, logits equal."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from torch import nn

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.interop.families import families
from seqlab.model import Model, build_model

ATOL = 1e-5
VOCAB = 97
FAMILY = families()["llama"]

HF_CASES = {
    "llama": (transformers.LlamaConfig, {}),
    "llama-head-dim-bias": (transformers.LlamaConfig, {"head_dim": 16, "attention_bias": True}),
    "mistral": (transformers.MistralConfig, {"sliding_window": 5}),
    "mistral-head-dim": (transformers.MistralConfig, {"sliding_window": None, "head_dim": 12}),
    "qwen2": (transformers.Qwen2Config, {}),
    "qwen2-sliding": (
        transformers.Qwen2Config,
        {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0},
    ),
}


def perturb(module: nn.Module) -> nn.Module:
    """Every parameter moved off its initial value (norm weights off 1, biases off 0), so
    that a weight mapped to the wrong place changes the logits."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module.eval()


def hf_model(case: str, tied: bool) -> transformers.PreTrainedModel:
    config_class, options = HF_CASES[case]
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        rms_norm_eps=1e-5,
        **options,
    )
    return perturb(transformers.AutoModelForCausalLM.from_config(config))


def imported(hf: transformers.PreTrainedModel) -> Model:
    config, state = FAMILY.from_hf(hf)
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def tokens(t: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, t))


def hf_logits(hf: transformers.PreTrainedModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(x).logits


def seqlab_logits(model: Model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[0]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("case", list(HF_CASES))
def test_import_equals_hf(case: str, tied: bool) -> None:
    hf = hf_model(case, tied)
    model = imported(hf)
    assert model.tied == tied
    for t in (1, 13):
        x = tokens(t)
        torch.testing.assert_close(seqlab_logits(model, x), hf_logits(hf, x), atol=ATOL, rtol=0)


def test_import_reads_the_options() -> None:
    llama, _ = FAMILY.from_hf(hf_model("llama-head-dim-bias", tied=False))
    assert llama.mixer_options == {
        "attention": {"head_dim": 16, "qkv_bias": True, "out_bias": True}
    }
    assert llama.n_kv_heads == 2 and llama.mlp_hidden() == 80 and llama.rope_theta == 500.0
    mistral, _ = FAMILY.from_hf(hf_model("mistral", tied=True))
    assert mistral.window == 5 and mistral.mixer_options == {}
    qwen, _ = FAMILY.from_hf(hf_model("qwen2", tied=True))
    assert qwen.window is None and qwen.mixer_options == {"attention": {"qkv_bias": True}}
    assert FAMILY.from_hf(hf_model("qwen2-sliding", tied=True))[0].window == 4


def test_the_window_and_biases_matter() -> None:
    """The equality above is not vacuous: without the window or the biases logits differ."""
    hf = hf_model("mistral", tied=True)
    config, state = FAMILY.from_hf(hf)
    x = tokens(13)
    full = build_model(dataclasses.replace(config, window=None))
    full.load_state_dict(state)
    assert (seqlab_logits(full.eval(), x) - hf_logits(hf, x)).abs().max() > 1e-3
    hf = hf_model("qwen2", tied=False)
    config, state = FAMILY.from_hf(hf)
    state = {k: v for k, v in state.items() if not k.endswith("qkv.bias")}
    unbiased = build_model(dataclasses.replace(config, mixer_options={}))
    unbiased.load_state_dict(state)
    assert (seqlab_logits(unbiased.eval(), x) - hf_logits(hf, x)).abs().max() > 1e-3


@pytest.mark.parametrize("case", ["llama-head-dim-bias", "mistral", "qwen2-sliding"])
def test_token_by_token_decode_equals_hf(case: str) -> None:
    hf = hf_model(case, tied=False)
    model = imported(hf)
    x = tokens(11)
    state = model.init_state(2)
    steps = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            logits, state = model(x[:, t : t + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), hf_logits(hf, x), atol=ATOL, rtol=0)


SEQLAB_CASES = {
    "plain": ({}, {}, "LlamaForCausalLM"),
    "biases-head-dim": (
        {},
        {"qkv_bias": True, "out_bias": True, "head_dim": 6},
        "LlamaForCausalLM",
    ),
    "window": ({"window": 4}, {}, "MistralForCausalLM"),
    "qkv-bias": ({}, {"qkv_bias": True}, "Qwen2ForCausalLM"),
    "qkv-bias-window": ({"window": 3}, {"qkv_bias": True}, "Qwen2ForCausalLM"),
}


def seqlab_model(case: str, tied: bool) -> Model:
    fields, options, _ = SEQLAB_CASES[case]
    config = ModelConfig(
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=VOCAB,
        mlp_ratio=2.5,
        tie_embeddings=tied,
        rope_theta=300.0,
        mixer_options={"attention": options} if options else {},
        **fields,
    )
    return perturb(build_model(config))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("case", list(SEQLAB_CASES))
def test_export_equals_seqlab_and_round_trips(case: str, tied: bool) -> None:
    model = seqlab_model(case, tied)
    assert FAMILY.export_reason(model.config) is None
    hf = FAMILY.to_hf(model)
    assert type(hf).__name__ == SEQLAB_CASES[case][2]
    assert hf.config.tie_word_embeddings == tied
    x = tokens(13)
    torch.testing.assert_close(hf_logits(hf, x), seqlab_logits(model, x), atol=ATOL, rtol=0)

    config, state = FAMILY.from_hf(hf)
    assert config == model.config
    ours = model.state_dict()
    assert state.keys() == ours.keys()
    assert all(torch.equal(state[k], ours[k]) for k in ours)


def test_exported_model_saves_and_reloads(tmp_path) -> None:
    model = seqlab_model("qkv-bias-window", tied=True)
    FAMILY.to_hf(model).save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = tokens(9)
    torch.testing.assert_close(hf_logits(hf, x), seqlab_logits(model, x), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (ModelConfig(mixer="gla"), "gla"),
        (ModelConfig(layers=["attention", "mamba2"]), "mamba2"),
        (ModelConfig(mixer_options={"attention": {"qk_norm": True}}), "qk_norm"),
        (
            ModelConfig(mixer_options={"attention": {"sparsity": {"pattern": "block_topk"}}}),
            "sparsity",
        ),
        (ModelConfig(mlp={"kind": "moe"}), "moe"),
        (ModelConfig(mlp_ratio=0), "no MLP"),
        (ModelConfig(deq={"max_iter": 3}), "deq"),
        (ModelConfig(value_head="gaussian"), "value_head"),
        (ModelConfig(mixer_options={"attention": {"out_bias": True}}), "out_bias"),
        (
            ModelConfig(
                window=8, mixer_options={"attention": {"qkv_bias": True, "out_bias": True}}
            ),
            "window",
        ),
    ],
)
def test_export_reason_refuses(config: ModelConfig, reason: str) -> None:
    said = FAMILY.export_reason(config)
    assert said is not None and reason in said and "\n" not in said
    with pytest.raises(ConfigError, match=reason):
        FAMILY.to_hf(build_model(config))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, "rope"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_import_refuses_what_differs(change: dict, reason: str) -> None:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, **change,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=reason):
        FAMILY.from_hf(transformers.LlamaForCausalLM(config))


def test_import_refuses_mixed_qwen2_layers() -> None:
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, use_sliding_window=True, sliding_window=4, max_window_layers=1,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="layer_types"):
        FAMILY.from_hf(transformers.Qwen2ForCausalLM(config))


def test_family_is_registered() -> None:
    assert FAMILY.model_types == ("llama", "mistral", "qwen2")


def test_attention_with_the_imported_options_conforms() -> None:
    """head_dim, qkv_bias and out_bias keep every mixer invariant (decode, causality, ...)."""
    from seqlab.testing import check_mixer

    check_mixer("attention", head_dim=6, qkv_bias=True, out_bias=True)
