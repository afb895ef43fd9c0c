"""A redeemed ticket stays redeemed: the ledger is never created implicitly, and a ledger that was
deleted, truncated, restored from an older copy or lost its -wal is refused, through the CLI."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge import config as config_mod
from edge import tickets as tk
from edge.cli import main
from edge.gate.audit import AuditLog
from edge.tickets.ledger import Ledger


def gate_dir(tmp: Path) -> Path:
    """A gate config with its office key, an empty revocation list, and no ledger yet."""
    tk.keygen(tmp / "office")
    (tmp / "revoked.txt").touch()
    (tmp / "gate.toml").write_text(
        '[gate]\nid = "g-1"\n[tickets]\npubkeys = ["office/issuer.pub"]\nledger = "ledger.db"\n'
        'revocation_list = "revoked.txt"\nanti_passback_s = 0.0\n[audit]\npath = "audit.db"\n'
    )
    return tmp / "gate.toml"


def ticket(tmp: Path, tid: str = "T-1", **kw) -> str:
    now = int(time.time())
    t = tk.Ticket(tid, valid_from=now - 60, valid_until=now + 3600, **kw)
    return tk.sign(t, tk.load_private(tmp / "office" / "issuer.key"))


def verify(capsys, cfg: Path, *args: str) -> tuple[int, list[dict], str]:
    rc = main(["ticket", "verify", "--config", str(cfg), *args])
    out = capsys.readouterr()
    return rc, [json.loads(x) for x in out.out.splitlines()], out.err


def test_ledger_init_creates_it_once_and_never_resets(tmp_path, capsys):
    cfg = gate_dir(tmp_path)
    assert main(["ledger", "init", "--config", str(cfg)]) == 0
    assert "created" in capsys.readouterr().out
    text = ticket(tmp_path)
    rc, lines, _ = verify(capsys, cfg, "--redeem", text)
    assert rc == 0
    assert lines[0]["valid"] is True
    assert main(["ledger", "init", "--config", str(cfg)]) == 0
    assert "already exists (1 redemptions)" in capsys.readouterr().out
    rc, lines, _ = verify(capsys, cfg, "--redeem", text)
    assert (rc, lines[0]["reason"]) == (1, "already_used")


def test_ledger_init_with_db_only(tmp_path, capsys):
    assert main(["ledger", "init", "--db", str(tmp_path / "x" / "l.db")]) == 0
    with Ledger(tmp_path / "x" / "l.db") as led:
        assert led.mark().seq == 0


def test_redeem_never_creates_a_missing_ledger(tmp_path, capsys):
    cfg = gate_dir(tmp_path)
    rc, lines, err = verify(capsys, cfg, "--redeem", ticket(tmp_path))
    assert rc == 2
    assert lines[0]["valid"] is False
    assert lines[0]["reason"] == "ledger_error"
    assert "ledger init" in err
    assert not (tmp_path / "ledger.db").exists()


def test_redeem_with_db_never_creates_it(tmp_path, capsys):
    gate_dir(tmp_path)
    pub = str(tmp_path / "office" / "issuer.pub")
    db = tmp_path / "nope.db"
    rc = main(["ticket", "verify", "--pubkey", pub, "--db", str(db), "--redeem", ticket(tmp_path)])
    assert rc == 2
    assert json.loads(capsys.readouterr().out)["reason"] == "ledger_error"
    assert not db.exists()


def _spend(tmp_path, capsys) -> tuple[Path, str]:
    cfg = gate_dir(tmp_path)
    main(["ledger", "init", "--config", str(cfg)])
    capsys.readouterr()
    text = ticket(tmp_path)
    rc, lines, _ = verify(capsys, cfg, "--redeem", text)
    assert (rc, lines[0]["valid"]) == (0, True)
    return cfg, text


@pytest.mark.parametrize("how", ["deleted", "truncated", "emptied"])
def test_deleted_or_truncated_ledger_refuses_the_spent_ticket(tmp_path, capsys, how):
    cfg, text = _spend(tmp_path, capsys)
    db = tmp_path / "ledger.db"
    if how == "deleted":
        for p in tmp_path.glob("ledger.db*"):
            p.unlink()
    elif how == "truncated":
        db.write_bytes(db.read_bytes()[:1000])
    else:
        db.write_bytes(b"")
    rc, lines, err = verify(capsys, cfg, "--redeem", text)
    assert rc == 2
    assert lines[0]["reason"] == "ledger_error"
    assert "move it aside" not in err


def test_ledger_recreated_after_deletion_is_refused_until_the_loss_is_recorded(tmp_path, capsys):
    cfg, text = _spend(tmp_path, capsys)
    for p in tmp_path.glob("ledger.db*"):
        p.unlink()
    assert main(["ledger", "init", "--config", str(cfg)]) == 2
    assert "redemptions are lost" in capsys.readouterr().err
    assert list(tmp_path.glob("ledger.db*")) == []  # the refusal made nothing (an empty ledger
    # left there turned the next try into "already exists")
    rc, lines, err = verify(capsys, cfg, "--redeem", text)
    assert (rc, lines[0]["reason"]) == (2, "ledger_error")
    assert "does not exist" in err and "every spent ticket in again" in err, err
    assert main(["ledger", "init", "--config", str(cfg), "--after-loss"]) == 0
    assert "created and adopted" in capsys.readouterr().out
    capsys.readouterr()
    with AuditLog(tmp_path / "audit.db") as log:
        assert [r.reason for r in log.records("ledger")] == ["ledger_replaced"]


def test_older_copy_restored_is_refused(tmp_path, capsys):
    cfg = gate_dir(tmp_path)
    main(["ledger", "init", "--config", str(cfg)])
    capsys.readouterr()
    backup = tmp_path / "backup.db"
    shutil.copy(tmp_path / "ledger.db", backup)
    text = ticket(tmp_path)
    assert verify(capsys, cfg, "--redeem", text)[0] == 0
    for p in tmp_path.glob("ledger.db*"):
        p.unlink()
    shutil.copy(backup, tmp_path / "ledger.db")
    rc, lines, err = verify(capsys, cfg, "--redeem", text)
    assert (rc, lines[0]["reason"]) == (2, "ledger_error")
    assert "went back in time" in err


def test_lost_wal_after_a_crash_is_refused(tmp_path, capsys):
    cfg = gate_dir(tmp_path)
    main(["ledger", "init", "--config", str(cfg)])
    capsys.readouterr()
    text = ticket(tmp_path)
    crash = (
        "import os, sys\n"
        "from edge.cli import main\n"
        "import edge.tickets.ledger as L\n"
        "L.Ledger.close = lambda self: None  # the process dies before closing\n"
        f"rc = main(['ticket', 'verify', '--config', {str(cfg)!r}, '--redeem', {text!r}])\n"
        "sys.stdout.flush()\n"
        "os._exit(rc)\n"
    )
    p = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    wal = tmp_path / "ledger.db-wal"
    assert wal.stat().st_size > 0
    wal.unlink()
    rc, lines, err = verify(capsys, cfg, "--redeem", text)
    assert (rc, lines[0]["reason"]) == (2, "ledger_error")
    assert "went back in time" in err


def test_spent_ticket_is_not_valid_without_redeem(tmp_path, capsys):
    cfg, text = _spend(tmp_path, capsys)
    rc, lines, _ = verify(capsys, cfg, text)
    assert rc == 1
    assert lines[0]["valid"] is False
    assert lines[0]["reason"] == "already_used"


def test_run_with_a_missing_ledger_refuses_tickets_loudly(tmp_path, caplog):
    from gpiozero.pins.mock import MockFactory

    from edge.gate.daemon import Gate
    from edge.lab.demo import ticket_scene

    cfg_path = gate_dir(tmp_path)
    scene = ticket_scene(tmp_path / "office", tmp_path / "t.mp4", time.time())
    cfg = config_mod.override(
        config_mod.load(cfg_path),
        vision={"face_enabled": False},
        camera={"source": str(scene.clip), "realtime": False},
    )
    decisions: list[dict] = []
    with (
        caplog.at_level(logging.ERROR),
        Gate(cfg, decisions.append, pin_factory=MockFactory()) as gate,
    ):
        assert "TICKETS REFUSED" in gate.status_text()
        gate.run()
    assert decisions
    assert {d["decision"] for d in decisions} == {"deny"}
    assert "ledger_error" in {d["reason"] for d in decisions}
    assert not (tmp_path / "ledger.db").exists()
    assert any("LEDGER_ERROR" in r.getMessage() for r in caplog.records)
    assert not any(s.state for s in gate.relay.pin.states)


def test_reload_reopens_the_ledger_once_it_is_back(tmp_path):
    from gpiozero.pins.mock import MockFactory

    from edge.gate.daemon import Gate
    from edge.lab.demo import ticket_scene

    cfg_path = gate_dir(tmp_path)
    clip = ticket_scene(tmp_path / "office", tmp_path / "t.mp4", time.time()).clip
    cfg = config_mod.override(
        config_mod.load(cfg_path), vision={"face_enabled": False}, camera={"source": str(clip)}
    )
    gate = Gate(cfg, pin_factory=MockFactory())
    try:
        assert gate.ledger.problem
        with AuditLog(tmp_path / "audit.db") as log:
            assert [r.reason for r in log.records("system")] == ["ledger_error"]
        assert main(["ledger", "init", "--config", str(cfg_path)]) == 0
        gate.reload()
        assert gate.ledger.problem == ""
        assert "TICKETS REFUSED" not in gate.status_text()
    finally:
        gate.close()


def test_gate_with_a_clock_set_back_refuses_tickets(tmp_path):
    """fake-hwclock restores an old time: a ticket valid then (expired since) is not let in."""
    from gpiozero.pins.mock import MockFactory

    from edge.gate.audit import AuditRecord
    from edge.gate.daemon import Gate
    from edge.lab.demo import ticket_scene

    cfg_path = gate_dir(tmp_path)
    assert main(["ledger", "init", "--config", str(cfg_path)]) == 0
    now = time.time()
    with AuditLog(tmp_path / "audit.db") as log:  # the gate ran until now
        log.record(AuditRecord(now, "g-1", "system", reason="stop"))
    past = now - 5 * 86400  # DAY-0001 was valid then; the clock says it still is
    scene = ticket_scene(tmp_path / "office", tmp_path / "t.mp4", past)
    cfg = config_mod.override(
        config_mod.load(cfg_path),
        vision={"face_enabled": False},
        camera={"source": str(scene.clip), "realtime": False},
    )
    decisions: list[dict] = []
    with Gate(cfg, decisions.append, pin_factory=MockFactory(), clock=lambda: past) as gate:
        gate.run()
    assert ("deny", "clock_behind") in {(d["decision"], d["reason"]) for d in decisions}
    assert "grant" not in {d["decision"] for d in decisions}
    assert not any(s.state for s in gate.relay.pin.states)


def test_doctor_fails_when_the_clock_is_behind_the_ledger(tmp_path):
    from edge.gate import doctor

    cfg_path = gate_dir(tmp_path)
    assert main(["ledger", "init", "--config", str(cfg_path)]) == 0
    with Ledger(tmp_path / "ledger.db") as led:
        assert led.redeem(tk.Ticket("T-1"), time.time() + 3 * 86400).ok  # written by a fast clock
    site = doctor.Site(config_mod.load(cfg_path), tmp_path / "g.db", tmp_path / "g.key")
    (c,) = [c for c in doctor.run_checks(site) if c.check == "ticket ledger"]
    assert c.status == "fail"
    assert "behind" in c.detail
