import dataclasses

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError, SeqlabError, ShapeError, UnknownNameError
from seqlab.layout import Layout


def tiny(**kwargs):
    return seqlab.build_model(
        ModelConfig(**{"d_model": 32, "n_layers": 2, "n_heads": 4, "vocab_size": 50, **kwargs})
    )


def test_logits_shape_and_no_state_in_training_form():
    model = tiny()
    logits, state = model(torch.randint(0, 50, (3, 7)))
    assert logits.shape == (3, 7, 50) and state is None


def test_prefill_then_decode_equals_full_sequence_float64():
    model = tiny(n_kv_heads=2).double()
    tokens = torch.randint(0, 50, (2, 12))
    full, _ = model(tokens)
    logits, state = model(tokens[:, :5], model.init_state(2))
    steps = [logits]
    for t in range(5, 12):
        logits, state = model(tokens[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)


def test_tied_embeddings_share_one_tensor():
    model = tiny()
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()
    untied = tiny(tie_embeddings=False)
    assert untied.head.weight.data_ptr() != untied.embed.weight.data_ptr()
    assert untied.num_params() == model.num_params() + 50 * 32


def test_hybrid_layer_pattern_builds_named_mixers():
    model = tiny(layers=["attention", "attention", "attention"])
    assert model.config.n_layers == 3 and len(model.blocks) == 3


def test_attention_state_size_formula():
    model = tiny()
    assert model.state_size(100) == 2 * 2 * 32 * 100
    assert tiny(n_kv_heads=1).state_size(100) == 2 * 2 * 8 * 100


def test_flops_per_token_counts_matmuls_and_attention():
    model = tiny(tie_embeddings=False)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 2 * 4 * 32 * (64 + 1) / 2
    assert model.flops_per_token(64) == pytest.approx(2 * linear + attention)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = tiny(layers=["attention", "attention"], n_kv_heads=2, window=8)
    seqlab.save(model, tmp_path / "m")
    again = seqlab.load(tmp_path / "m")
    tokens = torch.randint(0, 50, (2, 9))
    assert torch.equal(model(tokens)[0], again(tokens)[0])
    assert again.config == model.config


def test_bad_tokens_name_the_expected_shape_and_range():
    model = tiny()
    with pytest.raises(ShapeError, match=r"\[B, T\]"):
        model(torch.randint(0, 50, (7,)))
    with pytest.raises(ShapeError, match=r"\[0, 50\)"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ShapeError, match="integer"):
        model(torch.zeros(1, 3))


def test_unknown_mixer_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid mixers: .*attention"):
        tiny(mixer="transformerz")


def test_unknown_mixer_option_lists_valid_options():
    with pytest.raises(ConfigError, match="valid options: .*qk_norm"):
        tiny(mixer_options={"attention": {"qknorm": True}})


def test_invalid_model_config_is_explained():
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="multiple of model.n_kv_heads"):
        ModelConfig(d_model=32, n_heads=4, n_kv_heads=3)


def test_layout_support_is_checked():
    model = tiny()
    model(torch.randint(0, 50, (1, 4)), layout=Layout.BIDIRECTIONAL)
    model.layouts = {"causal"}
    with pytest.raises(SeqlabError, match="not supported"):
        model(torch.randint(0, 50, (1, 4)), layout=Layout.BIDIRECTIONAL)


def test_public_listings():
    assert "attention" in seqlab.list_mixers()
    assert "ar" in seqlab.list_objectives()
    assert {"greedy", "sample"} <= set(seqlab.list_samplers())
    assert "default" in seqlab.list_presets()


def test_initialize_from_copies_weights_and_the_shared_vocabulary_rows(tmp_path):
    from seqlab.errors import CheckpointError
    from seqlab.io import initialize_from

    source = seqlab.build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=7))
    seqlab.save(source, tmp_path / "ar")
    config = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=8, tie_embeddings=False)
    source_untied = seqlab.build_model(dataclasses.replace(config, vocab_size=7))
    seqlab.save(source_untied, tmp_path / "ar-untied")
    target = seqlab.build_model(config)
    fresh_mask_row = target.embed.weight[7].clone()
    initialize_from(target, tmp_path / "ar-untied")
    for name, tensor in source_untied.state_dict().items():
        if name in ("embed.weight", "head.weight"):
            torch.testing.assert_close(target.state_dict()[name][:7], tensor, rtol=0, atol=0)
        else:
            torch.testing.assert_close(target.state_dict()[name], tensor, rtol=0, atol=0)
    torch.testing.assert_close(target.embed.weight[7], fresh_mask_row, rtol=0, atol=0)

    with pytest.raises(CheckpointError, match="another architecture"):
        initialize_from(seqlab.build_model(config), tmp_path / "ar")  # tied: no head.weight
    wider = seqlab.build_model(dataclasses.replace(config, d_model=64))
    with pytest.raises(CheckpointError, match="has shape"):
        initialize_from(wider, tmp_path / "ar-untied")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        initialize_from(target, tmp_path / "nowhere")
