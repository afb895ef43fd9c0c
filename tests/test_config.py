from dataclasses import fields

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


def test_an_unknown_section_lists_only_the_sections_a_file_may_have(tmp_path):
    """The list of known keys named the config's bookkeeping fields (`source_file`,
    `overrides`), which were then refused as unknown when written."""
    p = write(tmp_path, "[gaet]\nid = 'x'\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert "'gaet'" in str(e.value) and "gate" in e.value.hint
    assert "source_file" not in e.value.hint and "overrides" not in e.value.hint
    for key in ("source_file = 'x'\n", "overrides = 1\n"):
        with pytest.raises(ConfigError, match="unknown key"):
            config.load(write(tmp_path, key))


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


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path):
    """A Windows editor's UTF-8 byte-order mark was "not valid TOML: Invalid statement (at line
    1, column 1)", which names nothing an operator can see."""
    p = tmp_path / "gate.toml"
    p.write_bytes(b"\xef\xbb\xbf[relay]\npulse_s = 2.0\n")
    assert config.load(p).relay.pulse_s == 2.0


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


# --- each key's rule on its field ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, says",
    [
        # silently clamped to 1 by the daemon before: refused now, with the range
        ("[tickets]\nscan_every = 0\n", "key 'tickets.scan_every' = 0 must be >= 1"),
        # a negative threshold was ignored (the model's own was used): refused now
        (
            "[liveness]\nthreshold = -0.5\n",
            "key 'liveness.threshold' = -0.5 must be 0.0 (the model's measured threshold from "
            "models.json) or in (0, 1]",
        ),
        ("[camera]\nfps = 0.0\n", "key 'camera.fps' = 0.0 must be > 0 frames/s"),
        ("[relay]\ndoor_pin = -2\n", "key 'relay.door_pin' = -2 must be -1 (none) or >= 0"),
        ("[relay]\npulse_s = 31.0\n", "key 'relay.pulse_s' = 31.0 must be in (0, 30] seconds"),
        ('[relay]\npin_factory = "gpio"\n', "one of mock, lgpio, rpigpio, native"),
        ("[audit]\nretention_days = 3\n", "key 'audit.retention_days' = 3 must be >= 7 days"),
        ("[vision]\nmin_brightness = 200.0\nmax_brightness = 100.0\n", "need min <= max"),
        ('[gate]\ntimezone = "Mars/Olympus"\n', "is not a known time zone"),
        # the interpreter made them all: every face command crashed or hung, with no message
        ("[vision]\nthreads = 32768\n", "key 'vision.threads' = 32768 must be in [0, 64]"),
    ],
)
def test_out_of_range_values_are_refused_with_the_key_and_the_allowed_range(tmp_path, text, says):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert str(p) in str(e.value)
    assert says in str(e.value)


def test_a_value_at_the_edge_of_its_range_loads(tmp_path):
    cfg = config.load(
        write(
            tmp_path,
            "[relay]\npulse_s = 30.0\ndoor_pin = -1\n[audit]\nretention_days = 7\n"
            "[vision]\nthreads = 64\n",
        )
    )
    assert (cfg.relay.pulse_s, cfg.relay.door_pin, cfg.audit.retention_days) == (30.0, -1, 7)
    assert cfg.vision.threads == 64


def test_flags_given_as_overrides_meet_the_same_rules():
    with pytest.raises(ConfigError, match=r"tickets.clock_skew_s' = 7200.0 must be in \[0, 3600\]"):
        config.override(config.load(), tickets={"clock_skew_s": 7200.0})


@pytest.mark.parametrize(
    "old, new, line",
    [
        ("tickets.antipassback_s", "tickets.anti_passback_s", "antipassback_s = 30.0"),
        ("fleet.clock_skew_s", "fleet.max_clock_offset_s", "clock_skew_s = 5.0"),
    ],
)
def test_a_renamed_key_is_refused_with_its_new_name(tmp_path, old, new, line):
    section = old.split(".")[0]
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, f"[{section}]\n{line}\n"))
    assert f"key '{old}' was removed" in str(e.value)
    assert f"write {new} = {line.split(' = ')[1]}" in str(e.value)
    assert new.split(".")[1] in {f.name for f in fields(getattr(config.Config(), section))}


def test_a_section_declared_without_rules_is_still_type_checked(tmp_path):
    """A key declared as a plain field (no `setting`) gets the type check and nothing else."""
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Shop:
        url: str = ""
        every_s: float = 60.0

    @dataclass(frozen=True)
    class WithShop(config.Config):
        shop: Shop = field(default_factory=Shop)

    built = config._build(WithShop, {"shop": {"every_s": -1}}, "x.toml", "")
    assert config.validate(built).shop.every_s == -1.0
    with pytest.raises(ConfigError, match=r"x.toml: key 'shop.every_s' = 'often' must be a number"):
        config._build(WithShop, {"shop": {"every_s": "often"}}, "x.toml", "")


def test_times_typed_without_an_offset_are_in_the_site_zone_not_the_machine_zone(
    tmp_path, monkeypatch
):
    import time
    from zoneinfo import ZoneInfo

    from edge.timeutil import parse_time

    la = ZoneInfo("America/Los_Angeles")
    end = 1798790399  # 2026-12-31T23:59:59-08:00
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert parse_time("2026-12-31", la, end_of_day=True) == end
        assert parse_time("2026-12-31T23:59:59", la) == end
        assert parse_time("2026-12-31T23:59:59+09:00", la) == end - 17 * 3600  # offset wins
        cfg = config.load(write(tmp_path, '[gate]\ntimezone = "America/Los_Angeles"\n'))
        assert cfg.gate.zone == la
        # "" is the zone the machine is set to, named once (timeutil.system_zone)
        machine = config.load(write(tmp_path, "")).gate.zone
        assert parse_time("2026-12-31", machine, end_of_day=True) == end - 17 * 3600
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_ticket_issue_reads_dates_in_the_site_zone(tmp_path, capsys):
    from edge import tickets as tk
    from edge.cli import main

    tk.keygen(tmp_path / "office")
    p = write(tmp_path, '[gate]\ntimezone = "America/Los_Angeles"\n')
    args = ["ticket", "issue", "--key", str(tmp_path / "office" / "issuer.key"), "--id", "T-1"]
    args += ["--valid-until", "2026-12-31", "--out", str(tmp_path / "out"), "--config", str(p)]
    assert main(args) == 0
    assert "2027-01-01T07:59:59+00:00 (UTC)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, says",
    [
        (
            '[screen]\nlanguages = ["fr"]\n',
            "key 'screen.languages' = ('fr',) must be one of zh-CN, en",
        ),
        ("[screen]\nlanguages = []\n", "must name at least one of zh-CN, en"),
        ("[signal]\nbuzzer_pin = -5\n", "key 'signal.buzzer_pin' = -5 must be -1 (none) or >= 0"),
        ("[console]\nlogin_attempts = 0\n", "key 'console.login_attempts' = 0 must be >= 1"),
    ],
)
def test_the_lane_screen_and_console_keys_have_their_rules(tmp_path, text, says):
    # an unknown language was dropped in silence by the screen, an empty list became English
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text))
    assert says in str(e.value)
