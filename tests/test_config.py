import pytest

from edge import config
from edge.errors import ConfigError


def test_default_config_loads_and_runs_off_pi():
    cfg = config.load()
    assert cfg.relay.pin_factory == "mock"
    assert cfg.gate.mode == "face-or-ticket"
    assert config.models_path(cfg) == config.PROJECT_ROOT / "models"


def write(tmp_path, text):
    p = tmp_path / "gate.toml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "[relay]\npni = 4\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert str(p) in str(e.value) and "relay.pni" in str(e.value)


def test_wrong_type_names_key_and_value(tmp_path):
    p = write(tmp_path, '[relay]\npulse_s = "long"\n')
    with pytest.raises(ConfigError, match=r"relay.pulse_s.*'long'"):
        config.load(p)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[gate\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")


def test_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError, match="policy.k"):
        config.load(write(tmp_path, "[policy]\nk = 6\nn = 5\n"))
    with pytest.raises(ConfigError, match="gate.mode"):
        config.load(write(tmp_path, '[gate]\nmode = "face-only"\n'))


def test_relative_paths_resolve_against_config_folder(tmp_path):
    cfg = config.load(write(tmp_path, '[gallery]\ndb = "data/g.db"\n'))
    assert cfg.resolve(cfg.gallery.db) == tmp_path / "data" / "g.db"


def test_override_keeps_the_rest():
    cfg = config.override(config.load(), camera={"source": "x.mp4", "width": None})
    assert cfg.camera.source == "x.mp4" and cfg.camera.width == 640
