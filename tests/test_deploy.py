"""Deployment files: systemd units verified by systemd itself, the Pi config the installer writes,
firmware settings, and `edge-gate doctor`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from edge import config as config_mod
from tests.helpers import installed_gate_toml, installer_sed_expressions

ROOT = config_mod.PROJECT_ROOT
UNITS = [
    "edge-gate.service",
    "edge-gate-purge.service",
    "edge-gate-purge.timer",
    "edge-gate-sync.service",
    "edge-gate-screen.service",
    "edge-gate-pretix-sync.service",
]


def test_units_pass_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail(
            "systemd-analyze is missing: scripts/setup.sh installs Debian's systemd", pytrace=False
        )
    stub = tmp_path / "bin" / "edge-gate"  # the install prefix is the only thing rewritten
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    for u in UNITS:
        text = (
            (ROOT / "systemd" / u)
            .read_text()
            .replace("/opt/edge-gate/venv/bin/edge-gate", str(stub))
            .replace("/opt/edge-gate/scripts/relay-off", str(ROOT / "scripts" / "relay-off"))
        )
        (tmp_path / u).write_text(text)
    p = subprocess.run(
        [exe, "verify", "--man=no", *UNITS], cwd=tmp_path, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "", p.stderr
    assert p.stderr.strip() == "", p.stderr


def test_service_hardening_contract():
    unit = (ROOT / "systemd" / "edge-gate.service").read_text()
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=edge-gate",
        "PrivateNetwork=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "DevicePolicy=closed",
        "DeviceAllow=char-video4linux",
        "DeviceAllow=char-gpiochip",
        "User=edge-gate",
        "ExecReload=/bin/kill -HUP",
    ):
        assert directive in unit, directive
    assert re.search(r"SupplementaryGroups=.*video.*gpio", unit)
    timer = (ROOT / "systemd" / "edge-gate-purge.timer").read_text()
    assert "OnCalendar=" in timer
    assert "Persistent=true" in timer


def test_sync_unit_has_the_network_and_the_gate_has_none():
    gate = (ROOT / "systemd" / "edge-gate.service").read_text()
    sync = (ROOT / "systemd" / "edge-gate-sync.service").read_text()
    assert "PrivateNetwork=yes" in gate
    assert "IPAddressDeny=any" in gate
    assert "PrivateNetwork=yes" not in sync
    assert "IPAddressDeny=any" in sync
    assert "IPAddressAllow=" in sync
    assert "edge-gate sync --config /etc/edge-gate/gate.toml" in sync
    assert "LoadCredential=mqtt.cred:" in sync
    assert "ProtectSystem=strict" in sync


def test_installer_writes_a_pi_config_that_loads(tmp_path):
    """Apply install-pi.sh's own sed expressions to the shipped gate.toml: every one must match."""
    assert len(installer_sed_expressions()) == 12
    p = tmp_path / "gate.toml"
    p.write_text(installed_gate_toml())
    cfg = config_mod.load(p)
    assert cfg.camera.source == "picamera2"
    assert cfg.relay.pin_factory == "lgpio"
    assert cfg.gallery.db == "/var/lib/edge-gate/gallery.db"
    assert cfg.gallery.key_file == "/etc/edge-gate/gallery.key"
    assert cfg.tickets.pubkeys == ("/etc/edge-gate/issuer.pub",)
    assert cfg.audit.path.startswith("/var/lib/edge-gate/")
    assert cfg.tickets.ledger.startswith("/var/lib/edge-gate/")
    assert cfg.vision.models_dir == "/opt/edge-gate/models"  # the package is not editable
    assert cfg.fleet.state_db.startswith("/var/lib/edge-gate/")
    assert cfg.fleet.lane_key_file == "/var/lib/edge-gate/lane.key"  # sync's state directory
    assert cfg.fleet.keys_dir.startswith("/var/lib/edge-gate/")
    unit = (ROOT / "systemd" / "edge-gate.service").read_text()
    assert "/etc/edge-gate/gate.toml" in unit
    assert cfg.gallery.key_file == "/etc/edge-gate/gallery.key"  # read at start and every reload
    assert "LoadCredential=gallery.key" not in unit  # a credential copy would outlive a rotation


def test_firmware_holds_relay_low_from_boot():
    txt = (ROOT / "firmware_config" / "config.txt").read_text()
    cfg = config_mod.load()
    assert f"gpio={cfg.relay.pin}=op,dl" in txt
    assert "camera_auto_detect=1" in txt
    rules = (ROOT / "firmware_config" / "99-edge-gate.rules").read_text()
    assert 'SUBSYSTEM=="video4linux"' in rules
    assert 'KERNEL=="gpiochip*"' in rules


def test_every_config_key_is_documented():
    text = (ROOT / "firmware_config" / "gate.toml").read_text()
    lines = text.splitlines()
    cfg = config_mod.load()
    import dataclasses

    for section in dataclasses.fields(cfg):
        if section.name in ("source_file", "overrides"):
            continue
        for f in dataclasses.fields(getattr(cfg, section.name)):
            start = lines.index(f"[{section.name}]")
            idx = next(
                (i for i, ln in enumerate(lines) if i > start and ln.startswith(f"{f.name} =")),
                None,
            )
            assert idx is not None, f"{section.name}.{f.name} missing from gate.toml"
            j = idx - 1
            while j > start and re.match(r"^\w+ =", lines[j]):  # a block of keys under one comment
                j -= 1
            assert lines[j].startswith("#"), f"{section.name}.{f.name} has no comment"


def test_doctor_reports_and_fails_on_corrupt_model(tmp_path):
    from edge import tickets as tk
    from edge.gallery.crypto import init_key
    from edge.tickets.ledger import init_ledger

    tk.keygen(tmp_path / "office")
    init_key(tmp_path / "g.key")
    init_ledger(tmp_path / "var" / "ledger.db")  # the config's default tickets.ledger
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    cfg = tmp_path / "gate.toml"
    cfg.write_text(
        f'[vision]\nmodels_dir = "{models}"\n[gallery]\ndb = "g.db"\nkey_file = "g.key"\n'
        '[tickets]\npubkeys = ["office/issuer.pub"]\n'
    )

    def doctor():
        p = subprocess.run(
            [sys.executable, "-m", "edge.cli", "doctor", "--config", str(cfg), "--json"],
            capture_output=True,
            text=True,
        )
        return p.returncode, {r["check"]: r for r in json.loads(p.stdout)}

    rc, res = doctor()
    assert rc == 0, res
    assert res["models (SHA-256)"]["status"] == "ok"
    assert res["ticket keys"]["status"] == "ok"
    assert res["GPIO"]["status"] == "warn"
    assert res["camera"]["status"] == "warn"
    (models / "blazeface_short.tflite").write_bytes(b"tampered")
    (tmp_path / "g.key").chmod(0o644)
    rc, res = doctor()
    assert rc == 1
    assert res["models (SHA-256)"]["status"] == "fail"
    assert "SHA-256" in res["models (SHA-256)"]["detail"]
    assert res["gallery key file"]["status"] == "fail"
    assert "chmod 600" in res["gallery key file"]["fix"]


def test_doctor_checks_are_records_and_a_broken_check_does_not_hide_others(tmp_path, monkeypatch):
    from edge import config as config_mod
    from edge.gate import doctor

    def boom(site):
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "CHECKS", [("broken", boom), *doctor.CHECKS])
    results = doctor.run_checks(
        doctor.Site(config_mod.load(None), tmp_path / "g.db", tmp_path / "k")
    )
    by_name = {c.check: c for c in results}
    assert by_name["broken"].status == "fail"
    assert "RuntimeError: boom" in by_name["broken"].detail
    # no key and no gallery yet: run goes ticket-only, so doctor warns (and says what to do)
    assert by_name["gallery key file"].status == "warn"
    assert by_name["gallery key file"].fix
    assert by_name["config"].status == "ok"


# --- the relay off the daemon: systemd drives it inactive before start and after any stop -----

RELAY_OFF = ROOT / "scripts" / "relay-off"
UNIT = ROOT / "systemd" / "edge-gate.service"


def test_unit_drives_relay_off_before_start_and_after_any_stop():
    lines = UNIT.read_text().splitlines()
    pre = [ln for ln in lines if ln.startswith("ExecStartPre=")]
    post = [ln for ln in lines if ln.startswith("ExecStopPost=")]
    want = "+/opt/edge-gate/scripts/relay-off --config /etc/edge-gate/gate.toml"
    assert pre == ["ExecStartPre=" + want]  # "+": outside the sandbox, it drives the pin itself
    assert post == ["ExecStopPost=" + want]  # runs after kill -9, watchdog abort, OOM kill
    assert "LimitCORE=0" in lines  # a core dump would hold the gallery key and templates
    start = next(ln for ln in lines if ln.startswith("ExecStart="))
    assert start.endswith("--quiet")  # no person or ticket id in the journal


def fake_tool(bindir, name, version=""):
    """A stand-in for pinctrl/gpioset that records its arguments."""
    bindir.mkdir(exist_ok=True)
    log = bindir / f"{name}.log"
    tool = bindir / name
    tool.write_text(
        f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{version}'; exit 0; fi\n"
        f'echo "$@" >> {log}\n'
    )
    tool.chmod(0o755)
    return log


def relay_off(cfg_text, tmp_path, bindir, *extra):
    cfg = tmp_path / "gate.toml"
    cfg.write_text(cfg_text)
    env = {"PATH": str(bindir)}
    return subprocess.run(
        [sys.executable, str(RELAY_OFF), "--config", str(cfg), *extra],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("active_high, drive, level", [("true", "dl", 0), ("false", "dh", 1)])
def test_relay_off_drives_the_inactive_level_from_gate_toml(tmp_path, active_high, drive, level):
    relay = f'[relay]\npin_factory = "lgpio"\npin = 5\nactive_high = {active_high}\n'
    bindir = tmp_path / "bin"
    log = fake_tool(bindir, "pinctrl")
    p = relay_off(relay, tmp_path, bindir)
    assert p.returncode == 0, p.stderr
    assert log.read_text().split() == ["set", "5", "op", drive]
    (bindir / "pinctrl").unlink()  # no pinctrl: libgpiod's gpioset, 1.x or 2.x syntax
    log = fake_tool(bindir, "gpioset", "gpioset (libgpiod) v1.6.3")
    assert relay_off(relay, tmp_path, bindir).returncode == 0
    assert log.read_text().split() == ["gpiochip0", f"5={level}"]
    log.unlink()
    fake_tool(bindir, "gpioset", "gpioset (libgpiod) v2.1")
    assert relay_off(relay, tmp_path, bindir).returncode == 0
    assert log.read_text().split() == ["-c", "gpiochip0", "-t", "0", f"5={level}"]


def test_relay_off_without_a_tool_fails_and_mock_needs_none(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = relay_off('[relay]\npin_factory = "lgpio"\n', tmp_path, empty)
    assert p.returncode == 1
    assert "gpiod" in p.stderr
    p = relay_off('[relay]\npin_factory = "mock"\n', tmp_path, empty)
    assert p.returncode == 0
    p = relay_off('[relay]\npin = "x"\n', tmp_path, empty)
    assert p.returncode == 2


def test_relay_off_reads_the_config_the_installer_writes(tmp_path):
    pi_cfg = installed_gate_toml()
    bindir = tmp_path / "bin"
    log = fake_tool(bindir, "pinctrl")
    assert relay_off(pi_cfg, tmp_path, bindir).returncode == 0
    assert log.read_text().split() == ["set", str(config_mod.load().relay.pin), "op", "dl"]


def test_installer_is_root_owned_non_editable_with_keys_made_in_place():
    script = (ROOT / "scripts" / "install-pi.sh").read_text()
    code = "\n".join(ln for ln in script.splitlines() if not ln.lstrip().startswith("#"))
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "install-pi.sh")]).returncode == 0
    assert not re.search(r"pip install[^\n]* -e ", code)  # not editable
    assert "cp -a" not in code  # cp -a keeps the cloning user as owner
    assert "chown -R root:root /opt/edge-gate" in code
    assert "/tmp" not in code  # no predictable temporary path for the gallery key
    assert "mktemp -d /etc/edge-gate/" in code
    # the pin tool the unit's ExecStopPost= needs is checked, and its absence stops the install
    assert re.search(r"command -v pinctrl.*command -v gpioset[^\n]*then\n[^\n]*\n\s*exit 1", code)
    assert "relay-off --config /etc/edge-gate/gate.toml --dry-run" in code


def test_installer_screen_flag_installs_the_screen_and_points_the_gate_at_its_socket(tmp_path):
    """--screen: the screen's own user and unit, and [screen] socket = the unit's runtime dir."""
    script = (ROOT / "scripts" / "install-pi.sh").read_text()
    # the flag is taken out of the arguments; the pairs after it are still read
    head = script.split('echo "== packages"', 1)[0].replace("set -euo pipefail", "set -uo pipefail")
    head = head.replace('[ "$(id -u)" = 0 ] || { echo "run as root (sudo)" >&2; exit 1; }', "")
    probe = tmp_path / "args.sh"
    probe.write_text(head + '\necho "$SCREEN|$BROKER_ADDR|$ISSUER_PUB"\n')
    for argv, want in (
        (["--broker", "192.0.2.10", "--screen", "--issuer-pub", "i.pub"], "1|192.0.2.10|i.pub"),
        (["--broker", "192.0.2.10"], "0|192.0.2.10|"),
        ([], "0||"),
    ):
        out = subprocess.run(["bash", str(probe), *argv], capture_output=True, text=True)
        assert out.stdout.strip() == want, (argv, out.stderr)
    block = script.split('if [ "$SCREEN" = 1 ]; then', 1)[1].split("\nfi\n", 1)[0]
    assert "useradd --system --gid edge-gate" in block and "edge-gate-screen" in block
    assert "install -m 0644 /opt/edge-gate/systemd/edge-gate-screen.service" in block
    assert "systemctl enable edge-gate-screen.service" in block
    unit = (ROOT / "systemd" / "edge-gate-screen.service").read_text()
    assert "User=edge-gate-screen" in unit and "Group=edge-gate" in unit
    runtime = re.search(r"^RuntimeDirectory=(\S+)$", unit, re.M).group(1)
    (expr,) = re.findall(r"-e '(/\^\\\[screen[^']+)'", block)
    pi = tmp_path / "gate.toml"
    pi.write_text((ROOT / "firmware_config" / "gate.toml").read_text())
    for _ in range(2):  # run twice (the installer is run again): the same result
        subprocess.run(["sed", "-i", "-e", expr, str(pi)], check=True)
        cfg = config_mod.load(pi)
        assert cfg.screen.socket == f"/run/{runtime}/notices.sock"
        shipped = (ROOT / "firmware_config" / "gate.toml").read_text().splitlines()
        changed = [a for a, b in zip(pi.read_text().splitlines(), shipped, strict=True) if a != b]
        assert changed == [f'socket = "/run/{runtime}/notices.sock"']  # and nothing else
    kept = tmp_path / "kept.toml"  # a socket the park chose is not replaced
    kept.write_text(pi.read_text().replace(f"/run/{runtime}/notices.sock", "/run/x/n.sock"))
    subprocess.run(["sed", "-i", "-e", expr, str(kept)], check=True)
    assert config_mod.load(kept).screen.socket == "/run/x/n.sock"
