"""Ticket defects: an operator's date the ticket format cannot carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import tickets as tk
from edge.cli import main


@pytest.fixture()
def office(tmp_path) -> Path:
    tk.keygen(tmp_path / "office")
    return tmp_path / "office"


@pytest.mark.parametrize(
    "dates",
    [
        ("--valid-until", "9999-12-31"),  # a common "forever": past the format's 2106
        ("--valid-until", "2200-01-01"),
        ("--valid-from", "1960-01-01", "--valid-until", "2099-01-01"),  # before 1970
    ],
)
def test_issue_refuses_a_date_the_ticket_cannot_carry_with_the_fix(office, capsys, dates):
    """Times are 32-bit Unix seconds in the signed payload; before, a date outside that range
    ended `ticket issue` with an internal error (struct.error) instead of saying what to do."""
    out = office.parent / "out"
    rc = main(["ticket", "issue", "--key", str(office / "issuer.key"), "--out", str(out),
               "--id", "T-1", *dates])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "internal error" not in err
    assert "2106" in err and "--no-expiry" in err
    assert not (out / "T-1.png").exists()


def _redeem(cfg_path: Path, text: str, capsys) -> dict:
    import json

    main(["ticket", "verify", "--config", str(cfg_path), "--redeem", "--json", text])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _spent_and_fresh(tmp_path: Path, capsys) -> tuple[Path, Path, str, str]:
    """A gate with one ticket redeemed: its config file, its ledger, that spent ticket and a
    fresh one of the same issuer."""
    import time

    from .helpers import make_config

    cfg = make_config(tmp_path)
    cfg_path = tmp_path / "gate.toml"
    key = tk.load_private(tmp_path / "office" / "issuer.key")
    spent = tk.sign(tk.Ticket("T-SPENT", "day", 0, int(time.time()) + 3600), key)
    fresh = tk.sign(tk.Ticket("T-FRESH", "day", 0, int(time.time()) + 3600), key)
    assert _redeem(cfg_path, spent, capsys)["reason"] == "ok"
    return cfg_path, cfg.resolve(cfg.tickets.ledger), spent, fresh


def _ledger_files(ledger: Path) -> tuple[Path, Path, Path]:
    """The ledger's file and the write-ahead log and index beside it."""
    return ledger, Path(f"{ledger}-wal"), Path(f"{ledger}-shm")


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_ledger_recover_rebuilds_a_damaged_or_lost_ledger_from_the_audit_log(
    tmp_path, capsys, damage
):
    """The documented way out when no backup is newer is `ledger recover` (it rebuilds from the
    audit log, so spent tickets stay spent); before, it refused a ledger whose file was damaged
    (an SD card's bad sector) or gone, saying "restore it from backup", and `ledger init
    --after-loss` refused a damaged one too: without a backup no command gave the lane its
    tickets back. The damaged file is kept beside the new one as evidence."""
    cfg_path, ledger, spent, fresh = _spent_and_fresh(tmp_path, capsys)
    for side in _ledger_files(ledger)[1:]:
        side.unlink(missing_ok=True)
    if damage == "garbage":
        ledger.write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)
    else:
        ledger.unlink()
    assert main(["ledger", "recover", "--config", str(cfg_path)]) == 0, capsys.readouterr().err
    assert "1 ticket grants restored" in capsys.readouterr().out
    if damage == "garbage":
        assert len(list(tmp_path.glob("ledger.db.broken-*"))) == 1  # kept as evidence
    assert _redeem(cfg_path, spent, capsys)["reason"] == "already_used"  # stays spent
    assert _redeem(cfg_path, fresh, capsys)["reason"] == "ok"


def test_ledger_recover_leaves_another_database_at_the_ledger_path_alone(tmp_path, capsys):
    """Only a missing or damaged ledger is rebuilt from the audit log alone: a readable
    database that is no ledger (tickets.ledger pointed at the gallery by mistake) is refused
    and left where it is."""
    import sqlite3

    from .helpers import make_config

    cfg = make_config(tmp_path)
    ledger = cfg.resolve(cfg.tickets.ledger)
    for f in _ledger_files(ledger):
        f.unlink(missing_ok=True)
    db = sqlite3.connect(ledger)
    db.execute("CREATE TABLE people (id TEXT)")
    db.commit()
    db.close()
    assert main(["ledger", "recover", "--config", str(tmp_path / "gate.toml")]) == 2
    assert "do not replace it" in capsys.readouterr().err
    db = sqlite3.connect(ledger)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["people"]
    db.close()
    assert not list(tmp_path.glob("ledger.db.broken-*"))


def test_a_broken_ledger_chain_keeps_ticket_ids_out_of_the_log(tmp_path, capsys, caplog):
    """`run --quiet` keeps every person and ticket id out of the journal (decisions are logged
    without them); the ledger's chain-broken lines named the altered entry's ticket, at the
    break, at every start and in the gate's alarm once a minute. The entry's place and time
    say which it is; the audit log holds its ticket."""
    import logging
    import time

    from edge import config as config_mod
    from edge.gate.audit import open_audit
    from edge.gate.desk import open_gate_ledger

    from .test_evidence import lane, redeem, sql, ticket

    cfg_path = lane(tmp_path)
    ids = ["TKT-ALPHA-7", "TKT-BRAVO-8", "TKT-CHARLIE-9"]
    for tid in ids:
        assert redeem(capsys, cfg_path, ticket(tmp_path, tid))[1]["reason"] == "ok"
    cfg = config_mod.load(cfg_path)
    now = time.time()
    check = tk.Ticket(ids[0], valid_from=0, valid_until=int(now) + 60)
    with caplog.at_level(logging.INFO), open_audit(cfg) as audit:
        led = open_gate_ledger(cfg, audit, now)
        assert led.check(check, now).reason == "already_used"
        sql(tmp_path / "ledger.db", "DROP TRIGGER redemptions_no_update;"
            f"UPDATE redemptions SET t = t + 1 WHERE ticket_id = '{ids[1]}';")  # fmt: skip
        assert led.check(check, now).reason == "ledger_error"
        assert "entry 2" in led.problem
        led.close()
        led = open_gate_ledger(cfg, audit, now)  # the next start: a stand-in that refuses
        assert "entry 2" in led.problem
    said = [r.getMessage() for r in caplog.records]
    assert sum("entry 2" in line for line in said) == 2  # at the break, at the start
    assert not [line for line in said if any(tid in line for tid in ids)]


@pytest.mark.parametrize("old", ["intact", "damaged", "open elsewhere"])
@pytest.mark.parametrize("step", [1, 2, 3, 4, 5])
def test_ledger_recover_interrupted_at_any_file_step_leaves_a_ledger_at_its_path(
    tmp_path, capsys, monkeypatch, step, old
):
    """`ledger recover` moved the old file (and its -wal, -shm) away, then the new one in: cut
    between the steps (a power cut, a full disk), the path held no ledger at all, or the new
    file beside the old file's -wal. Each file step failing in turn (the nth rename, link or
    removal touching the ledger's names): the path still holds a ledger, and running the
    command again finishes the job with spent tickets still spent."""
    import os
    import sqlite3

    cfg_path, ledger, spent, fresh = _spent_and_fresh(tmp_path, capsys)
    _, wal, shm = _ledger_files(ledger)
    names = {str(f) for f in _ledger_files(ledger)}
    damaged, held = old == "damaged", None
    if old == "open elsewhere":  # its -wal and -shm stay at the path while another has it open
        held = sqlite3.connect(ledger)
        held.execute("SELECT count(*) FROM sqlite_master").fetchone()
        assert wal.exists()
    if damaged:  # a bad sector in the file, its -wal and -shm left by a gate that stopped
        with open(ledger, "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 4000)
        wal.write_bytes(b"\x37\x7f\x06\x82" + b"\x00" * 4000)
        shm.write_bytes(b"\x00" * 32768)
    calls = [0]

    def faulty(real):
        def call(*args, **kwargs):
            if names & {os.fspath(a) for a in args[:2] if isinstance(a, (str, os.PathLike))}:
                calls[0] += 1
                if calls[0] == step:
                    raise OSError(5, "Input/output error (simulated cut)")
            return real(*args, **kwargs)

        return call

    for name in ("replace", "rename", "link", "unlink"):
        monkeypatch.setattr(os, name, faulty(getattr(os, name)))
    rc = main(["ledger", "recover", "--config", str(cfg_path)])
    monkeypatch.undo()
    if held is not None:
        held.close()
    err = capsys.readouterr().err
    assert rc in (0, 2) and "internal error" not in err, err  # done, or refused with the fix
    if rc == 0 or not damaged:  # a ledger is at its path (else the damaged one, unchanged)
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        assert "redemptions" in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        db.close()
    if rc == 0:  # the new file never sits beside the old file's log
        assert not wal.exists() or wal.stat().st_size == 0
    assert main(["ledger", "recover", "--config", str(cfg_path)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert _redeem(cfg_path, spent, capsys)["reason"] == "already_used"
    assert _redeem(cfg_path, fresh, capsys)["reason"] == "ok"


def test_a_database_at_the_ledger_path_that_is_no_ledger_is_refused_unchanged(tmp_path):
    """The gallery (or any other SQLite file) named as tickets.ledger: refused, but opening it
    first switched it to WAL mode (bytes 18-19 of its header) and left a -wal beside it, so a
    file the gate refused had been changed. Its identity is now read without writing."""
    import hashlib
    import sqlite3

    from edge.errors import LedgerError
    from edge.tickets.ledger import Ledger

    other = tmp_path / "gallery.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE people (id TEXT)")
    db.commit()
    db.close()
    before = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(LedgerError, match="not an edge-gate ledger") as e:
        Ledger(other)
    assert "do not replace it" in str(e.value)
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before
    assert other.read_bytes()[18:20] == b"\x01\x01"  # still a rollback-journal file
    assert not Path(f"{other}-wal").exists() and not Path(f"{other}-shm").exists()
