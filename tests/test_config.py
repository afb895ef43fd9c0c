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
    assert str(p) in str(e.value)
    assert "relay.pni" in str(e.value)


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
    assert cfg.camera.source == "x.mp4"
    assert cfg.camera.width == 640


def test_one_path_rule_every_file_of_a_command_lands_in_the_working_directory(
    tmp_path, monkeypatch, capsys
):
    """Without --config, the gallery, its key and the audit log all live under ./var/."""
    from edge.cli import main
    from edge.gallery.crypto import load_key
    from edge.gallery.store import Gallery

    monkeypatch.chdir(tmp_path)
    checkout_var = config.PROJECT_ROOT / "var"
    before = sorted(checkout_var.rglob("*")) if checkout_var.exists() else []
    assert main(["keys", "init"]) == 0
    assert (tmp_path / "var" / "gallery.key").is_file()
    cfg = config.load()
    assert cfg.resolve(cfg.gallery.db) == tmp_path / "var" / "gallery.db"
    Gallery(tmp_path / "var" / "gallery.db", load_key(tmp_path / "var" / "gallery.key")).close()
    assert main(["purge"]) == 0
    assert (tmp_path / "var" / "audit.db").is_file()
    after = sorted(checkout_var.rglob("*")) if checkout_var.exists() else []
    assert after == before  # nothing written into the checkout


def test_config_file_paths_resolve_against_its_folder(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    p = write(site, '[gallery]\ndb = "data/g.db"\n')
    monkeypatch.chdir(tmp_path)
    cfg = config.load(p)
    assert cfg.resolve(cfg.gallery.db) == site / "data" / "g.db"
