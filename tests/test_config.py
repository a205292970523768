"""Config loading and validation."""

import pytest

from edgempi.config import Config, ConfigError, load_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: resnet34\nbatch_size: 4\n")
    config = load_config(path, batch_size=2, data=None)
    assert config.model == "resnet34" and config.batch_size == 2
    assert config.data == Config().data
    assert load_config(None) == Config()


@pytest.mark.parametrize("text,message", [
    ("model: [unclosed", "not valid YAML at line 1"),
    ("- a\n- b\n", "mapping"),
    ("modle: vgg16\n", "unknown config setting 'modle'"),
    ("batch_size: two\n", "'batch_size' must be int"),
    ("batch_size: 0\n", "at least 1"),
    ("mean: true\n", "'mean' must be float"),
    ("std: 0\n", "'std' must be positive"),
])
def test_bad_configs_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        assert load_config(path).model in path.stem
