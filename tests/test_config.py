import json

import pytest

from msunet.config import ConfigError, ModelConfig, parse_value


def test_defaults_match_the_classic_unet():
    cfg = ModelConfig()
    assert cfg.level_filters == (32, 64, 128, 256, 512)
    assert cfg.head_names == ("mask", "mask_s2", "mask_s4", "mask_s8")


def test_json_round_trip(tmp_path):
    cfg = ModelConfig(depth=3, filters_per_level=(8, 16, 32, 64), fused_head=True, input_size=(64, 96))
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    back = ModelConfig.from_json(path)
    assert back == cfg
    assert isinstance(back.filters_per_level, tuple) and isinstance(back.input_size, tuple)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(path.read_text())["filters_per_level"] == [8, 16, 32, 64]


def test_frozen():
    with pytest.raises(Exception):
        ModelConfig().depth = 3  # type: ignore[misc]


def test_overrides_parse_values_by_type():
    cfg = ModelConfig().override(
        ["depth=3", "dropout=0.1", "deep_supervision=false", "upsample=bilinear", "filters_per_level=[4,8,16,32]"]
    )
    assert (cfg.depth, cfg.dropout, cfg.deep_supervision, cfg.upsample) == (3, 0.1, False, "bilinear")
    assert cfg.filters_per_level == (4, 8, 16, 32)
    assert ModelConfig().override(["ds_heads=none"]).ds_heads is None
    # "none" is a word of some string fields' own vocabulary, not null
    cfg = ModelConfig().override(["encoder=resnet50v2", "encoder_weights=none", "norm=none"])
    assert (cfg.encoder_weights, cfg.norm) == ("none", "none")
    assert ModelConfig().override(["input_size=64,80"]).input_size == (64, 80)
    assert ModelConfig().override(["filter_growth=2"]).filter_growth == 2.0


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        ({"depth": 0}, "depth", "1..7"),
        ({"depth": 8}, "depth", "1..7"),
        ({"filters": -4}, "filters", ">= 1"),
        ({"num_classes": 0}, "num_classes", ">= 1"),
        ({"upsample": "bilinar"}, "upsample", "Did you mean 'bilinear'?"),
        ({"norm": "batchnorm"}, "norm", "Did you mean 'batch'?"),
        ({"kernel_size": 4}, "kernel_size", "odd"),
        ({"dropout": 1.0}, "dropout", "0.0..1.0"),
        ({"filters_per_level": (8, 16)}, "filters_per_level", "5 positive integers"),
        ({"ds_heads": 4}, "ds_heads", "0..3"),
        ({"depth": "3"}, "depth", "integer"),
        ({"num_classes": 1, "output_activation": "softmax"}, "output_activation", "sigmoid"),
    ],
)
def test_bad_values_name_field_value_and_valid_range(overrides, field, fragment):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**overrides)
    message = str(info.value)
    assert f"ModelConfig.{field}" in message
    assert fragment in message
    assert isinstance(info.value, ValueError)


def test_unknown_fields_suggest_close_match():
    with pytest.raises(ConfigError, match="Did you mean 'filters'"):
        ModelConfig().override(["filtrs=8"])
    with pytest.raises(ConfigError, match="Did you mean 'depth'"):
        ModelConfig.from_dict({"dept": 3})
    with pytest.raises(ConfigError, match="key=value"):
        ModelConfig().override(["depth"])


def test_bad_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{depth: 3}")
    with pytest.raises(ConfigError, match="broken.json.*not valid JSON"):
        ModelConfig.from_json(path)
    with pytest.raises(ConfigError, match="Cannot read config file"):
        ModelConfig.from_json(tmp_path / "missing.json")


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("True") is True
    assert parse_value("relu") == "relu" and parse_value("[1, 2]") == [1, 2] and parse_value("null") is None


def test_configs_load_and_validate_without_importing_keras():
    """Configs are read by tools that must not pay for a backend import (the CLI, the planner): reading
    a run's config with its parts' options imports no keras (the static rule is import-linter's)."""
    import subprocess
    import sys

    code = ("import sys; from msunet.config import RunConfig; import msunet._backend\n"
            "run = RunConfig().override(['model.encoder=resconv', 'model.res_blocks=2', 'model.attention=true'])\n"
            "assert RunConfig.from_json(run.to_json()) == run\n"
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_flip_takes_a_direction():
    from msunet.config import RunConfig

    assert RunConfig().override(["data.flip=horizontal"]).data.flip == "horizontal"
    assert RunConfig().override(["data.flip=false"]).data.flip is False
    with pytest.raises(ConfigError, match="horizontal"):
        RunConfig().override(["data.flip=sideways"])
