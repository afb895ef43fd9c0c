"""pretix secrets at the gate: QR at the camera or the scanner, one ledger, one audit, the fleet."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge import tickets as tk
from edge.errors import ConfigError
from edge.gate.audit import AuditLog
from edge.gate.daemon import Gate
from edge.lab.broker import Mosquitto
from edge.tickets.qr import render_ticket

from .helpers import FramesUntilScanned, ListSource, ScannerLines, make_config
from .pretix_helpers import Shop
from .test_fleet import USERS, Park, _need_mosquitto, cli, wait_for

BLANK = np.full((480, 640, 3), 200, np.uint8)


def qr_frame(text: str) -> np.ndarray:
    """A camera frame with the code held up in the middle."""
    code = render_ticket(text, [], module_px=3)
    frame = BLANK.copy()
    h, w = code.shape[:2]
    y, x = (480 - h) // 2, (640 - w) // 2
    frame[y : y + h, x : x + w] = code
    return frame


def pretix_lane(tmp_path: Path, shop: Shop, extra: str = "") -> config_mod.Config:
    shop.write()
    return make_config(
        tmp_path, f'[vision]\nface_enabled = false\n[pretix]\ndir = "{shop.root}"\n' + extra
    )


def upload_rows(cfg: config_mod.Config) -> list[tuple[str, dict]]:
    db = sqlite3.connect(cfg.resolve(cfg.tickets.ledger))
    rows = db.execute("SELECT kind, body FROM upload_outbox ORDER BY id").fetchall()
    return [(k, json.loads(b)["body"]) for k, b in rows]


def test_pretix_qr_at_the_camera_then_the_scanner(tmp_path):
    shop = Shop(tmp_path / "px")
    secret, revoked = shop.secret("Camera001"), shop.secret("Revoked01")
    shop.revoked = [revoked]
    cfg = pretix_lane(tmp_path, shop)
    frames = [BLANK] * 3 + [qr_frame(secret)] * 5 + [BLANK] * 3
    got: list[dict] = []
    with Gate(cfg, got.append, source=ListSource(frames), pin_factory=MockFactory()) as gate:
        gate.run()
    assert [(e["decision"], e["reason"], e.get("pretix_reason")) for e in got] == [
        ("grant", "ok", "valid")
    ]
    assert got[0]["ticket"] == "pretix-7-Camera001"  # the seed, never the secret
    got2: list[dict] = []
    lines = ScannerLines([secret + "\r\n", revoked + "\n", "not-a-ticket\n"])
    gate = Gate(
        cfg,
        got2.append,
        source=FramesUntilScanned(BLANK, lines.done),
        pin_factory=MockFactory(),
        scanner=lines,
    )
    gate.run()
    assert [(e["decision"], e["reason"], e.get("pretix_reason")) for e in got2] == [
        ("deny", "already_used", "already_redeemed"),
        ("deny", "revoked", "revoked"),
        ("deny", "malformed", "invalid"),
    ]
    rows = upload_rows(cfg)
    assert [(k, b.get("error_reason")) for k, b in rows] == [
        ("pretix.redeem", None),
        ("pretix.failed", "already_redeemed"),
        ("pretix.failed", "revoked"),
        ("pretix.failed", "invalid"),
    ]
    assert rows[0][1]["secret"] == secret and rows[0][1]["force"] is True
    with AuditLog(cfg.resolve(cfg.audit.path)) as audit:
        decisions = [(r.decision, r.reason) for r in audit.records() if r.kind == "decision"]
        text = json.dumps([r.__dict__ for r in audit.records()], default=str)
    # the junk code's record may be folded with others of its kind: the tickets' are exact
    assert decisions[:3] == [("grant", "ok"), ("deny", "already_used"), ("deny", "revoked")]
    assert len(decisions) == 4
    assert secret not in text  # the audit log holds the ticket id, not the secret


def test_pretix_only_lane_starts_without_issuer_keys_and_reloads_the_folder(tmp_path):
    shop = Shop(tmp_path / "px")
    secret = shop.secret("Reload001")
    cfg = pretix_lane(tmp_path, shop)
    cfg = config_mod.override(cfg, tickets={"pubkeys": ()}, gate={"mode": "ticket-only"})
    gate = Gate(cfg, source=ListSource([BLANK]), pin_factory=MockFactory())
    try:
        assert gate.verifier.verify(secret, time.time()).valid
        shop.blocked = [secret]
        shop.write()
        gate.tick(0.0)  # once a second: the folder changed, so it is read again
        assert gate.verifier.verify(secret, time.time()).reason == "blocked"
        (shop.root / "event.json").write_text("{broken")
        gate.tick(0.0)  # a damaged folder: the previous data stays in force
        assert gate.verifier.verify(secret, time.time()).reason == "blocked"
    finally:
        gate.close()


def test_gate_without_pretix_data_refuses_to_start(tmp_path):
    shop = Shop(tmp_path / "px")
    cfg = pretix_lane(tmp_path, shop)
    (shop.root / "checkinlist.json").unlink()
    with pytest.raises(ConfigError, match="pretix sync"):
        Gate(cfg, source=ListSource([BLANK]), pin_factory=MockFactory())


def test_pretix_ticket_used_at_lane_1_is_already_used_at_lane_2(tmp_path):
    _need_mosquitto()
    shop = Shop(tmp_path / "px")
    shop.write()
    secret = shop.secret("FleetA001")
    with Mosquitto(tmp_path / "mosquitto", users=USERS) as broker:
        park = Park(tmp_path, broker.url, tk.keygen(tmp_path / "office-keys"), lanes=2)
        _two_lanes(park, shop, secret)


def _two_lanes(park: Park, shop: Shop, secret: str) -> None:
    for m in park.lanes:
        with m.config.open("a") as f:
            f.write(f'[pretix]\ndir = "{shop.root}"\n')
    try:
        park.start(1)
        park.start(2)
        got: list[dict] = []
        frames = [BLANK] * 2 + [qr_frame(secret)] * 4 + [BLANK] * 2
        with Gate(
            park.cfg(1), got.append, source=ListSource(frames), pin_factory=MockFactory()
        ) as gate:
            gate.run()
        assert [(e["decision"], e.get("pretix_reason")) for e in got] == [("grant", "valid")]
        wait_for(lambda: park.remote(2, "pretix-7-FleetA001") == 1, what="lane2 hears lane1")
        got2: list[dict] = []
        lines = ScannerLines([secret + "\n"])
        gate2 = Gate(
            park.cfg(2),
            got2.append,
            source=FramesUntilScanned(BLANK, lines.done),
            pin_factory=MockFactory(),
            scanner=lines,
        )
        gate2.run()
        assert [(e["decision"], e["reason"], e.get("pretix_reason")) for e in got2] == [
            ("deny", "already_used", "already_redeemed")
        ]
        r = cli("ticket", "verify", "--config", str(park.lanes[1].config), "--json", secret)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert (out["reason"], out["pretix_reason"]) == ("already_used", "already_redeemed")
        r = cli("fleet", "status", "--json", "--config", str(park.lanes[1].config))
        px = json.loads(r.stdout)["this_lane"]["pretix"]
        assert px["age_s"] is not None and px["upload_pending"] == 1  # lane 2's refused scan

        def office_view() -> dict:  # each lane's pretix data as its heartbeat says
            r = cli("fleet", "status", "--json", "--config", str(park.office.config))
            return json.loads(r.stdout)["lanes"]

        wait_for(
            lambda: (office_view()["lane2"].get("pretix") or {}).get("upload_pending") == 1,
            what="lane2's heartbeat with its pretix data",
        )
        px2 = office_view()["lane2"]["pretix"]
        assert px2["age_s"] is not None and px2["stale"] is False
        assert px2["stale_after_s"] == park.cfg(2).pretix.stale_after_s
        assert "dir" not in px2  # no path of the lane's leaves it
        r = cli("fleet", "status", "--config", str(park.office.config))
        assert "pretix " in r.stdout and "1 to upload" in r.stdout, r.stdout
    finally:
        park.stop_all()


def test_doctor_says_how_old_the_pretix_data_is(tmp_path):
    from edge.gate.doctor import doctor_checks

    shop = Shop(tmp_path / "px")
    cfg = pretix_lane(tmp_path, shop)
    now = time.time()
    (shop.root / "sync-state.json").write_text(json.dumps({"pulled_at": now - 120}))
    (c,) = [c for c in doctor_checks(cfg) if c.check == "pretix"]
    assert c.status == "ok" and "2 min old" in c.detail and "event gatenight" in c.detail
    (shop.root / "sync-state.json").write_text(
        json.dumps({"pulled_at": now - 7200, "last_error": "pretix at x unreachable: refused"})
    )
    (c,) = [c for c in doctor_checks(cfg) if c.check == "pretix"]
    assert c.status == "warn" and "120 min old" in c.detail and "unreachable" in c.detail
    # pulled "in the future": this lane's clock was set back (no real-time clock, a bad NTP
    # answer) and every ticket is judged on a wrong time; before, "-60 min old" passed as ok
    (shop.root / "sync-state.json").write_text(json.dumps({"pulled_at": now + 3600}))
    (c,) = [c for c in doctor_checks(cfg) if c.check == "pretix"]
    assert c.status == "warn" and "60 min ahead of this clock" in c.detail, c
    assert "set the time" in c.fix
    (shop.root / "sync-state.json").write_text(json.dumps({"pulled_at": now + 60}))
    (c,) = [c for c in doctor_checks(cfg) if c.check == "pretix"]  # within the slack: ok
    assert c.status == "ok" and "data 0 min old" in c.detail, c
    (shop.root / "event.json").unlink()
    (c,) = [c for c in doctor_checks(cfg) if c.check == "pretix"]
    assert c.status == "fail" and "pretix sync" in c.fix


def test_pretix_sync_unit_reaches_the_shop_only_and_the_gate_unit_nothing():
    root = Path(__file__).resolve().parent.parent / "systemd"
    unit = (root / "edge-gate-pretix-sync.service").read_text()
    for directive in (
        "ExecStart=/opt/edge-gate/venv/bin/edge-gate pretix sync --config",
        "IPAddressDeny=any",
        "LoadCredential=pretix.token:",
        "ProtectSystem=strict",
        "User=edge-gate",
    ):
        assert directive in unit
    assert "PrivateNetwork=yes" in (root / "edge-gate.service").read_text()


def test_the_gate_process_never_loads_the_shop_client():
    """The gate decides from the folder; only `pretix sync` talks to the shop."""
    import subprocess
    import sys

    script = (
        "import sys, edge.gate.daemon, edge.gate.desk, edge.tickets.pretix_desk;"
        "print(sorted(m for m in sys.modules if m.startswith('edge.pretix')))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_office_status_flags_a_lane_whose_pretix_data_is_old_or_missing():
    from edge.fleet.office import status_problems
    from edge.tickets.pretix_desk import pretix_view

    now = 1_000_000.0
    hb = {"data_time": now - 100, "stale_after_s": 600.0, "upload_pending": 0}
    assert pretix_view(hb, now)["stale"] is False
    assert pretix_view({**hb, "data_time": now - 601}, now)["stale"] is True
    assert pretix_view({**hb, "data_time": None}, now) | {"age_s": None} == {
        **hb,
        "data_time": None,
        "age_s": None,
        "stale": True,
    }
    assert pretix_view("junk", now) is None  # a heartbeat field of the wrong shape
    for odd_time in (float("nan"), float("inf"), now + 86_400):  # not a time, or far ahead
        assert pretix_view({**hb, "data_time": odd_time}, now)["stale"] is True
    odd = pretix_view({"data_time": "yesterday", "stale_after_s": None}, now)
    assert odd is not None and odd["age_s"] is None and odd["stale"] is True

    def rep(px, state="ok"):
        lane = {"rostered": True, "state": state, "last_seen": "1 s ago", "pretix": px}
        return {
            "lanes": {"lane1": lane},
            "clock": {"off": []},
            "sync": {"running": True, "last_seen": "1 s ago"},
            "member": "office",
        }

    assert status_problems(rep(pretix_view(hb, now))) == []
    old = pretix_view({**hb, "data_time": now - 7200}, now)
    assert status_problems(rep(old)) == ["lane1: pretix data last good 2.0 h ago (limit 600 s)"]
    assert status_problems(rep(None)) == []  # a lane that takes no pretix tickets
    odd_limit = pretix_view({"data_time": now - 7200, "stale_after_s": "1h"}, now)
    assert status_problems(rep(odd_limit)) == []  # no limit it can read: not judged stale
    assert status_problems(rep(odd)) == ["lane1: pretix data missing"]
    # a stale lane is reported once, as stale, not again for its pretix data
    assert status_problems(rep(old, "stale")) == ["lane1: stale (last heartbeat 1 s ago)"]
