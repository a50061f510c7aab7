import pytest
import yaml

from seqlab.config import (
    ExperimentConfig,
    apply_overrides,
    from_dict,
    load_config,
    parse_value,
    save_config,
    to_dict,
)
from seqlab.errors import ConfigError


def test_yaml_round_trip_preserves_everything(tmp_path):
    config = load_config(
        None,
        {
            "model.layers": ["attention", "attention"],
            "objective.block_size": 4,
            "task.num_kv_pairs": 8,
            "model.mixer_options": {"attention": {"qk_norm": True}},
            "model.mlp.kind": "moe",
            "model.mlp.shared": parse_value("1"),
        },
    )
    save_config(config, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == config
    assert again.objective.options == {"block_size": 4}
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["objective"]["block_size"] == 4
    assert again.model.mlp["shared"] == 1 and again.model.moe().experts == 8


def test_an_moe_key_without_kind_moe_says_so():
    with pytest.raises(ConfigError, match="kind swiglu takes no other key.*did you mean kind: moe"):
        load_config(None, {"model.mlp.experts": 4})


def test_dotted_overrides_set_nested_keys_and_types():
    config = load_config("default", {"model.d_model": 256, "train.lr": parse_value("1e-3")})
    assert config.model.d_model == 256 and config.train.lr == pytest.approx(1e-3)
    assert isinstance(config.train.lr, float)


@pytest.mark.parametrize(
    "text,value",
    [
        ("256", 256),
        ("1e-3", 1e-3),
        ("true", True),
        ("[gla, attention]", ["gla", "attention"]),
        ("abc", "abc"),
        ("null", None),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.dmodel'.*model.d_model"):
        load_config(None, {"model.dmodel": 3})
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*train"):
        from_dict(ExperimentConfig, {"trian": {}})


def test_wrong_type_is_explained():
    with pytest.raises(ConfigError, match="train.steps must be int"):
        load_config(None, {"train.steps": "many"})
    with pytest.raises(ConfigError, match="model.layers must be a list"):
        load_config(None, {"model.layers": 3})


def test_invalid_values_are_explained():
    with pytest.raises(ConfigError, match="train.lr must be positive"):
        load_config(None, {"train.lr": 0})


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*default"):
        load_config("no-such-config")


def test_bad_yaml_is_explained(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_override_into_scalar_is_rejected():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"model": 3}, {"model.d_model": 4})


def test_to_dict_is_plain_data():
    data = to_dict(ExperimentConfig())
    assert yaml.safe_load(yaml.safe_dump(data)) == data
