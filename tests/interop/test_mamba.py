"""The mamba and mamba2 families: Hugging Face's MambaForCausalLM / Mamba2ForCausalLM in and
out of seqlab with equal logits (float32), the parallel form and token-by-token decode."""

import pytest
import torch
import transformers

from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.interop.families import families
from seqlab.interop.mamba import MAMBA, MAMBA2
from seqlab.model import build_model
from seqlab.testing import check_mixer

VOCAB = 97
TOL = {"rtol": 1e-5, "atol": 1e-5}

HF_CASES = {
    "mamba-tied": (
        "mamba",
        {"hidden_size": 32, "state_size": 8, "conv_kernel": 4, "tie_word_embeddings": True},
    ),
    "mamba-untied-rank3": (
        "mamba",
        {"hidden_size": 48, "state_size": 4, "conv_kernel": 3, "time_step_rank": 3,
         "tie_word_embeddings": False, "layer_norm_epsilon": 1e-6},
    ),
    "mamba2-1group": (
        "mamba2",
        {"hidden_size": 32, "state_size": 8, "num_heads": 4, "head_dim": 16, "n_groups": 1,
         "chunk_size": 8, "tie_word_embeddings": True},
    ),
    "mamba2-2groups-untied": (
        "mamba2",
        {"hidden_size": 64, "state_size": 4, "num_heads": 8, "head_dim": 16, "n_groups": 2,
         "chunk_size": 12, "tie_word_embeddings": False, "layer_norm_epsilon": 1e-6},
    ),
}  # fmt: skip


def hf_model(name, **options):
    """A tiny randomly initialised Hugging Face model, its parameters moved off their init (A,
    D, Δ bias, norms) so that every term matters."""
    torch.manual_seed(0)
    config_class, model_class = {
        "mamba": (transformers.MambaConfig, transformers.MambaForCausalLM),
        "mamba2": (transformers.Mamba2Config, transformers.Mamba2ForCausalLM),
    }[name]
    config = config_class(vocab_size=VOCAB, num_hidden_layers=2, **options)
    model = model_class(config).eval()
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if key.endswith("A_log"):
                parameter.uniform_(-1.0, 1.0)
            else:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def imported(model):
    family = {"mamba": MAMBA, "mamba2": MAMBA2}[model.config.model_type]
    config, state = family.from_hf(model)
    ours = build_model(config).eval()
    ours.load_state_dict(state, strict=True)
    return family, ours


def tokens(steps):
    return torch.randint(0, VOCAB, (2, steps), generator=torch.Generator().manual_seed(1))


def test_families_lists_mamba_and_mamba2():
    found = families()
    assert found["mamba"].model_types == ("mamba",)
    assert found["mamba2"].model_types == ("mamba2",)


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_from_hf_logits_and_decode_equal_hugging_face(case):
    name, options = HF_CASES[case]
    model = hf_model(name, **options)
    family, ours = imported(model)
    assert family.export_reason(ours.config) is None
    x = tokens(13 if name == "mamba2" else 70)  # past mamba2's chunk and mamba's scan chunk
    with torch.no_grad():
        expected = model(x, use_cache=False).logits
        logits, _ = ours(x)
        torch.testing.assert_close(logits, expected, **TOL)
        state, steps = ours.init_state(2), []
        for t in range(x.shape[1]):
            step, state = ours(x[:, t : t + 1], state)
            steps.append(step)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, **TOL)
    tied = options["tie_word_embeddings"]
    assert ours.config.tie_embeddings is tied
    assert (ours.head.weight is ours.embed.weight) is tied


def test_mamba2_chunk_size_becomes_a_power_of_two_and_groups_carry_over():
    _, ours = imported(hf_model("mamba2", **HF_CASES["mamba2-2groups-untied"][1]))
    mixer = ours.blocks[0].mixer
    assert (mixer.chunk_size, mixer.groups, mixer.heads, mixer.state_v) == (8, 2, 8, 16)
    assert mixer.norm.eps == 1e-6


SEQLAB_CASES = {
    "mamba": ModelConfig(
        mixer="mamba", d_model=32, n_layers=2, vocab_size=VOCAB, mlp_ratio=0,
        mixer_options={"mamba": {"d_state": 8, "conv_size": 3, "dt_rank": 4}},
    ),
    "mamba-untied": ModelConfig(
        mixer="mamba", d_model=32, n_layers=2, vocab_size=VOCAB, mlp_ratio=0,
        tie_embeddings=False, norm_eps=1e-6,
    ),
    "mamba2-2groups": ModelConfig(
        mixer="mamba2", d_model=32, n_layers=2, n_heads=4, vocab_size=VOCAB, mlp_ratio=0,
        tie_embeddings=False,
        mixer_options={"mamba2": {"d_state": 8, "groups": 2, "chunk_size": 4}},
    ),
    "mamba2": ModelConfig(
        mixer="mamba2", d_model=32, n_layers=2, n_heads=2, vocab_size=VOCAB, mlp_ratio=0,
        mixer_options={"mamba2": {"d_state": 8}},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SEQLAB_CASES))
def test_to_hf_logits_equal_seqlab_and_survive_save_and_load(case, tmp_path):
    config = SEQLAB_CASES[case]
    torch.manual_seed(2)
    ours = build_model(config).eval()
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    family = {"mamba": MAMBA, "mamba2": MAMBA2}[config.mixer]
    assert family.export_reason(config) is None
    model = family.to_hf(ours)
    x = tokens(13)
    with torch.no_grad():
        expected, _ = ours(x)
        torch.testing.assert_close(model(x, use_cache=False).logits, expected, **TOL)
        model.save_pretrained(tmp_path)
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(reloaded(x, use_cache=False).logits, expected, **TOL)
    assert reloaded.config.tie_word_embeddings is config.tie_embeddings


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (ModelConfig(mixer="mamba", d_model=32, vocab_size=VOCAB), "MLP"),
        (ModelConfig(mixer="gla", d_model=32, vocab_size=VOCAB, mlp_ratio=0), "gla"),
        (
            ModelConfig(layers=["mamba", "attention"], d_model=32, vocab_size=VOCAB, mlp_ratio=0),
            "attention",
        ),
        (
            ModelConfig(
                mixer="mamba",
                d_model=32,
                vocab_size=VOCAB,
                mlp_ratio=0,
                mixer_options={"mamba": {"negative_eigenvalues": True}},
            ),
            "negative_eigenvalues",
        ),
        (
            ModelConfig(
                mixer="mamba", d_model=32, vocab_size=VOCAB, mlp_ratio=0, value_head="gaussian"
            ),
            "a value head (model.value_head) has no mamba counterpart",
        ),
    ],
)
def test_export_reason_refuses_what_hugging_face_mamba_cannot_compute(config, words):
    reason = MAMBA.export_reason(config)
    assert reason is not None and words in reason and "\n" not in reason
    with pytest.raises(ConfigError, match="cannot export"):
        MAMBA.to_hf(build_model(config))


def test_mamba2_export_reason_refuses_mlp_other_mixer_and_a_second_epsilon():
    base = {"mixer": "mamba2", "d_model": 32, "vocab_size": VOCAB, "mlp_ratio": 0}
    assert MAMBA2.export_reason(ModelConfig(**base)) is None
    assert "MLP" in MAMBA2.export_reason(ModelConfig(**{**base, "mlp_ratio": 2}))
    assert "mamba" in MAMBA2.export_reason(ModelConfig(**{**base, "mixer": "mamba"}))
    options = {"mamba2": {"gate_norm_eps": 1e-3}}
    reason = MAMBA2.export_reason(ModelConfig(**base, mixer_options=options))
    assert "gate_norm_eps" in reason


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [
        ("mamba", "use_bias", True),
        ("mamba", "use_conv_bias", False),
        ("mamba", "hidden_act", "gelu"),
        ("mamba2", "use_bias", True),
        ("mamba2", "use_conv_bias", False),
        ("mamba2", "time_step_limit", (0.0, 0.1)),
    ],
)
def test_from_hf_refuses_options_seqlab_cannot_reproduce(name, option, value):
    sizes = {"hidden_size": 32, "state_size": 4}
    if name == "mamba2":
        sizes.update(num_heads=4, head_dim=16, n_groups=1)
    model = hf_model(name, **sizes, **{option: value})
    family = {"mamba": MAMBA, "mamba2": MAMBA2}[name]
    with pytest.raises(ConfigError, match=option):
        family.from_hf(model)


def test_from_hf_refuses_the_other_family():
    model = hf_model("mamba", hidden_size=32, state_size=4)
    with pytest.raises(ConfigError, match="model_type"):
        MAMBA2.from_hf(model)


def test_grouped_mamba2_passes_the_conformance_kit():
    """Every invariant but `learns` (a 300-step training run; the option changes no init)."""
    only = [
        "split_decode",
        "chunk_split",
        "causality",
        "bidirectional",
        "block_diffusion_cached_prefix",
        "block_diffusion_reads",
        "block_causal_continuation",
        "state_size",
        "save_load",
    ]
    check_mixer("mamba2", only=only, groups=2, d_state=8, gate_norm_eps=1e-6)


def test_mamba2_groups_must_divide_heads():
    config = ModelConfig(
        mixer="mamba2", d_model=32, n_heads=4, mlp_ratio=0, mixer_options={"mamba2": {"groups": 3}}
    )
    with pytest.raises(ConfigError, match="groups"):
        build_model(config)


def test_mamba2_with_one_group_is_the_unchanged_mixer():
    """groups=1 keeps the parameter names and shapes of existing checkpoints."""
    config = ModelConfig(mixer="mamba2", d_model=32, n_heads=4, mlp_ratio=0)
    grouped = ModelConfig(
        mixer="mamba2", d_model=32, n_heads=4, mlp_ratio=0, mixer_options={"mamba2": {"groups": 2}}
    )
    shapes = {k: v.shape for k, v in build_model(config).state_dict().items()}
    grouped_shapes = {k: v.shape for k, v in build_model(grouped).state_dict().items()}
    assert shapes.keys() == grouped_shapes.keys()
    assert (
        shapes["blocks.0.mixer.in_proj.weight"][0] + 2 * 64
        == (grouped_shapes["blocks.0.mixer.in_proj.weight"][0])
    )
