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

ROOT = config_mod.PROJECT_ROOT
UNITS = ["edge-gate.service", "edge-gate-purge.service", "edge-gate-purge.timer"]


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
        )
        (tmp_path / u).write_text(text)
    p = subprocess.run(
        [exe, "verify", "--man=no", *UNITS], cwd=tmp_path, capture_output=True, text=True
    )
    assert p.returncode == 0 and p.stdout.strip() == "" and p.stderr.strip() == "", p.stderr


def test_service_hardening_contract():
    unit = (ROOT / "systemd" / "edge-gate.service").read_text()
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=edge-gate",
        "LoadCredential=gallery.key:",
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
    assert "OnCalendar=" in timer and "Persistent=true" in timer


def test_installer_writes_a_pi_config_that_loads(tmp_path):
    """Apply install-pi.sh's own sed expressions to the shipped gate.toml: every one must match."""
    script = (ROOT / "scripts" / "install-pi.sh").read_text()
    exprs = re.findall(r"-e '(s#[^']+)'", script)
    assert len(exprs) == 8
    args = [a for e in exprs for a in ("-e", e)]
    out = subprocess.run(
        ["sed", *args, str(ROOT / "firmware_config" / "gate.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    p = tmp_path / "gate.toml"
    p.write_text(out)
    cfg = config_mod.load(p)
    assert cfg.camera.source == "picamera2" and cfg.relay.pin_factory == "lgpio"
    assert (
        cfg.gallery.db == "/var/lib/edge-gate/gallery.db"
        and cfg.gallery.key_file == "/etc/edge-gate/gallery.key"
    )
    assert cfg.tickets.pubkeys == ("/etc/edge-gate/issuer.pub",) and cfg.audit.path.startswith(
        "/var/lib/edge-gate/"
    )
    assert cfg.tickets.ledger.startswith("/var/lib/edge-gate/")
    unit = (ROOT / "systemd" / "edge-gate.service").read_text()
    assert "/etc/edge-gate/gate.toml" in unit and "gallery.key:/etc/edge-gate/gallery.key" in unit


def test_firmware_holds_relay_low_from_boot():
    txt = (ROOT / "firmware_config" / "config.txt").read_text()
    cfg = config_mod.load()
    assert f"gpio={cfg.relay.pin}=op,dl" in txt
    assert "camera_auto_detect=1" in txt
    rules = (ROOT / "firmware_config" / "99-edge-gate.rules").read_text()
    assert 'SUBSYSTEM=="video4linux"' in rules and 'KERNEL=="gpiochip*"' in rules


def test_every_config_key_is_documented():
    text = (ROOT / "firmware_config" / "gate.toml").read_text()
    lines = text.splitlines()
    cfg = config_mod.load()
    import dataclasses

    for section in dataclasses.fields(cfg):
        if section.name == "source_file":
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
    assert by_name["gallery key file"].status == "fail"  # no key at tmp_path/k
    assert by_name["gallery key file"].fix  # carries what the operator must do
    assert by_name["config"].status == "ok"
