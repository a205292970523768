"""Config loading and validation."""

import pytest

from edgempi.config import Config, ConfigError, load_config, packaged


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: resnet34\nbatch_size: 4\n")
    config = load_config(path, batch_size=2, data=None)
    assert config.model == "resnet34" and config.batch_size == 2
    assert config.data == Config().data
    assert load_config(None) == Config()


@pytest.mark.parametrize(
    "text,message",
    [
        ("model: [unclosed", "not valid YAML at line 1"),
        ("- a\n- b\n", "mapping"),
        ("modle: vgg16\n", "unknown config setting 'modle'"),
        ("batch_size: two\n", "'batch_size' must be int"),
        ("batch_size: 0\n", "at least 1"),
        ("mean: true\n", "'mean' must be float"),
        ("std: 0\n", "'std' must be positive"),
    ],
)
def test_bad_configs_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as error:
        load_config(tmp_path / "none.yaml")
    assert "packaged: resnet34, resnet34_compact, vgg16, vgg16_bn, vgg16_compact" in str(error.value)
    with pytest.raises(ConfigError, match="'vgg99' does not exist and is no packaged config name"):
        load_config("vgg99")


def test_shipped_configs_load_by_name_and_path(tmp_path, monkeypatch):
    shipped = packaged("configs")
    assert set(shipped) == {"resnet34", "resnet34_compact", "vgg16", "vgg16_bn", "vgg16_compact"}
    for name, path in shipped.items():
        assert load_config(name).model == name and load_config(path) == load_config(name)
    monkeypatch.chdir(tmp_path)  # a file in the working directory comes before a packaged name
    (tmp_path / "vgg16").write_text("model: resnet18\n")
    assert load_config("vgg16").model == "resnet18"
