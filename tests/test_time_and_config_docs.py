"""The clock tickets depend on: the unit waits for time sync (bounded), `doctor` checks sync and the
ledger; and every key of the shipped gate.toml is documented there."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import pytest

from edge import config as config_mod
from edge.gate import doctor
from edge.tickets.ledger import init_ledger

ROOT = config_mod.PROJECT_ROOT


def test_unit_waits_for_time_sync_and_the_wait_is_bounded():
    unit = (ROOT / "systemd" / "edge-gate.service").read_text()
    after = re.search(r"^After=(.*)$", unit, re.M).group(1).split()
    wants = re.search(r"^Wants=(.*)$", unit, re.M).group(1).split()
    assert "time-sync.target" in after
    assert "systemd-time-wait-sync.service" in wants
    dropin = ROOT / "systemd" / "systemd-time-wait-sync.service.d" / "edge-gate.conf"
    m = re.search(r"^TimeoutStartSec=(\d+)$", dropin.read_text(), re.M)
    assert m is not None
    assert 0 < int(m.group(1)) <= 300
    installer = (ROOT / "scripts" / "install-pi.sh").read_text()
    assert "systemd-time-wait-sync.service.d/edge-gate.conf" in installer
    assert "ledger init --config /etc/edge-gate/gate.toml" in installer


def test_dropin_passes_systemd_analyze(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing", pytrace=False)
    text = (ROOT / "systemd" / "systemd-time-wait-sync.service.d" / "edge-gate.conf").read_text()
    unit = tmp_path / "wait-sync-bounded.service"
    unit.write_text(
        "[Unit]\nDescription=x\n"
        + text.replace("[Service]", "[Service]\nType=oneshot\nExecStart=/bin/true")
    )
    p = subprocess.run(
        [exe, "verify", "--man=no", unit.name], cwd=tmp_path, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr


def _site(tmp_path, extra: str = "") -> doctor.Site:
    p = tmp_path / "gate.toml"
    p.write_text('[tickets]\nledger = "ledger.db"\n[audit]\npath = "audit.db"\n' + extra)
    return doctor.Site(config_mod.load(p), tmp_path / "g.db", tmp_path / "g.key")


def _one(site, name):
    return next(c for c in doctor.run_checks(site) if c.check == name)


def test_doctor_checks_time_sync(tmp_path, monkeypatch):
    site = _site(tmp_path)
    monkeypatch.setattr(doctor, "kernel_clock_synced", lambda: False)
    c = _one(site, "time sync")
    assert c.status == "warn"
    assert "not synchronised" in c.detail
    monkeypatch.setattr(doctor, "kernel_clock_synced", lambda: True)
    assert _one(site, "time sync").status == "ok"


def test_kernel_clock_state_is_read():
    assert doctor.kernel_clock_synced() in (True, False, None)


def test_doctor_checks_the_ledger(tmp_path):
    # the demo source creates its ledger when it runs: a warning, as run goes on
    assert _one(_site(tmp_path), "ticket ledger").status == "warn"
    site = _site(tmp_path, '[camera]\nsource = "/dev/video0"\n')
    c = _one(site, "ticket ledger")
    assert c.status == "fail"
    assert "ledger init" in c.fix
    init_ledger(tmp_path / "ledger.db")
    assert _one(site, "ticket ledger").status == "ok"


FLEET_LANE = '[fleet]\nbroker = "mqtt://127.0.0.1:1"\nsite = "s"\nlane = "l"\nstate_db = "f.db"\n'


@pytest.mark.parametrize("fleet", ["", FLEET_LANE], ids=["alone", "fleet-lane"])
def test_doctor_says_whether_setting_the_clock_would_help_a_ledger_ahead_of_it(
    tmp_path, monkeypatch, fleet
):
    """A redemption dated by a clock that ran ahead: with the clock unsynchronised the fix is
    to set it; with the kernel reporting it synchronised, setting it changes nothing, and doctor
    said "set the time" all the same. It now says what happened and until when tickets are
    refused. Within the ledger's own tolerance doctor passes, as the ledger does."""
    import time

    from edge.gate import doctor_site
    from edge.tickets import Ticket
    from edge.tickets.ledger import CLOCK_TOLERANCE_S, Ledger

    site = _site(tmp_path, '[camera]\nsource = "/dev/video0"\n' + fleet)
    init_ledger(tmp_path / "ledger.db")
    with Ledger(tmp_path / "ledger.db") as led:
        assert led.redeem(Ticket("T-1"), time.time() + CLOCK_TOLERANCE_S / 2).ok
    assert _one(site, "ticket ledger").status == "ok"  # within the tolerance: tickets work
    with Ledger(tmp_path / "ledger.db") as led:
        assert led.redeem(Ticket("T-2"), time.time() + 3 * 3600).ok
    monkeypatch.setattr(doctor_site, "kernel_clock_synced", lambda: False)
    c = _one(site, "ticket ledger")
    assert (c.status, c.fix) == ("fail", "set the time; tickets are refused until then")
    monkeypatch.setattr(doctor_site, "kernel_clock_synced", lambda: True)
    c = _one(site, "ticket ledger")
    assert c.status == "fail"
    assert "synchronised" in c.detail and "ran ahead" in c.detail and "by 3.0 h" in c.detail
    assert doctor_site._span(90) == "90 s" and doctor_site._span(300) == "5.0 min"
    assert doctor_site._span(3 * 86400) == "3.0 days"
    assert "set the time" not in c.fix and "refused until" in c.fix


def _keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or (
            isinstance(f.type, str) and f.type.endswith("Config")
        ):
            typ = {x.name: x.type for x in dataclasses.fields(config_mod.Config)}[f.name]
            sub = getattr(config_mod, typ) if isinstance(typ, str) else typ
            yield from _keys(sub, f"{f.name}.")
        elif f.name not in ("source_file", "overrides"):  # bookkeeping, not keys
            yield prefix + f.name


def test_every_key_of_the_shipped_config_is_there_and_documented():
    lines = (ROOT / "firmware_config" / "gate.toml").read_text().splitlines()
    section, seen, undocumented = "", set(), []
    for i, line in enumerate(lines):
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m.group(1)
        elif m := re.match(r"^(\w+) = ", line):
            seen.add(f"{section}.{m.group(1)}")
            j = i - 1  # a key is documented by the comment block right above it or its group
            while j >= 0 and re.match(r"^\w+ = ", lines[j]):
                j -= 1
            if j < 0 or not lines[j].startswith("#"):
                undocumented.append(f"{section}.{m.group(1)}")
    assert undocumented == []
    keys = set(_keys(config_mod.Config))
    assert {"gate.timezone", "audit.retention_days", "tickets.ledger"} <= keys
    assert keys - seen == set()
