"""The audit log you can trust: hash-chained, edits detected, purges checkpointed, a minimum
retention, the gallery purge and its record together, and `edge-gate audit verify | export`."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from edge import config as config_mod
from edge.cli import main
from edge.errors import ConfigError
from edge.gate.audit import MIN_RETENTION_DAYS, AuditLog, AuditRecord, purge_with_gallery

DAY = 86400


def gate_cfg(tmp: Path, retention: int = 30) -> Path:
    p = tmp / "gate.toml"
    p.write_text(f'[audit]\npath = "audit.db"\nretention_days = {retention}\n')
    return p


def fill(path: Path, n: int = 5, age_days: float = 0.0, retention: int = 30) -> None:
    with AuditLog(path, retention) as log:
        for i in range(n):
            t = time.time() - age_days * DAY + i
            log.record(AuditRecord(t, "g", "decision", "deny", "ticket", f"T-{i}", None, "expired"))


def tamper(path: Path, sql: str) -> None:
    c = sqlite3.connect(path)
    c.executescript("DROP TRIGGER events_no_update; DROP TRIGGER events_retention;" + sql)
    c.commit()
    c.close()


def audit_verify(capsys, cfg: Path) -> tuple[int, str]:
    rc = main(["audit", "verify", "--config", str(cfg)])
    return rc, capsys.readouterr().out


def test_intact_chain_verifies_and_prints_its_head(tmp_path, capsys):
    cfg = gate_cfg(tmp_path)
    fill(tmp_path / "audit.db")
    rc, out = audit_verify(capsys, cfg)
    assert rc == 0
    assert "intact: 5 records" in out
    with AuditLog(tmp_path / "audit.db", 30) as log:
        assert log.verify().head_hash in out


@pytest.mark.parametrize(
    "sql,problem",
    [
        ("UPDATE events SET decision = 'grant' WHERE id = 3;", "record 3 was altered"),
        ("DELETE FROM events WHERE id = 2;", "records 2..2 missing"),
        ("DELETE FROM events WHERE id = 5;", "records after 4 removed"),
        ("UPDATE events SET subject = 'X', hash = 'f' || substr(hash, 2) WHERE id = 4;", "record"),
    ],
)
def test_drop_trigger_then_edit_is_detected(tmp_path, capsys, sql, problem):
    cfg = gate_cfg(tmp_path)
    fill(tmp_path / "audit.db")
    tamper(tmp_path / "audit.db", sql)
    rc, out = audit_verify(capsys, cfg)
    assert rc == 1
    assert "BROKEN" in out
    assert problem in out


def test_purge_keeps_a_checkpoint_and_the_chain_still_verifies(tmp_path, capsys):
    cfg = gate_cfg(tmp_path)
    fill(tmp_path / "audit.db", n=3, age_days=40)
    fill(tmp_path / "audit.db", n=2)
    with AuditLog(tmp_path / "audit.db", 30) as log:
        assert log.purge() == 3
        assert [r.subject for r in log.records()] == ["T-0", "T-1"]
        rep = log.verify()
    assert rep.ok
    assert (rep.records, rep.removed) == (2, 3)
    assert audit_verify(capsys, cfg)[0] == 0
    c = sqlite3.connect(tmp_path / "audit.db")
    c.executescript(
        'DROP TRIGGER checkpoints_no_update; UPDATE checkpoints SET runs = \'[[1,1,"x","y"]]\';'
    )
    c.commit()
    c.close()
    rc, out = audit_verify(capsys, cfg)
    assert rc == 1
    assert "checkpoint 1 was altered" in out


def test_purge_of_records_out_of_time_order(tmp_path):
    with AuditLog(tmp_path / "a.db", 90) as log:
        log.record(AuditRecord(time.time(), "g", "decision", "grant", "ticket", "T-1"))
        log.record(AuditRecord(time.time() - 200 * DAY, "g", "decision", "deny", "face"))
        log.record(AuditRecord(time.time(), "g", "decision", "grant", "ticket", "T-3"))
        assert log.purge() == 1
        assert [r.subject for r in log.records()] == ["T-1", "T-3"]
        assert log.verify().ok
        log.record(AuditRecord(time.time(), "g", "decision", "grant", "ticket", "T-4"))
        assert log.verify().ok


@pytest.mark.parametrize("days", [0, -1, MIN_RETENTION_DAYS - 1])
def test_retention_below_the_minimum_is_refused(tmp_path, days):
    fill(tmp_path / "audit.db", n=2, age_days=3)
    with pytest.raises(ConfigError, match="minimum"):
        AuditLog(tmp_path / "audit.db", days)
    with pytest.raises(ConfigError, match="audit.retention_days"):
        config_mod.load(gate_cfg(tmp_path, days))
    with AuditLog(tmp_path / "audit.db", MIN_RETENTION_DAYS) as log:
        assert log.purge() == 0
        assert len(log.records()) == 2


def test_the_trigger_keeps_the_minimum_even_if_meta_is_edited(tmp_path):
    fill(tmp_path / "audit.db", n=2, age_days=3)
    c = sqlite3.connect(tmp_path / "audit.db")
    c.execute("UPDATE meta SET value = 0 WHERE key = 'retention_s'")
    c.commit()
    with pytest.raises(sqlite3.DatabaseError, match="retention"):
        c.execute("DELETE FROM events")
    c.close()


def test_a_record_at_the_retention_boundary_never_fails_purge(tmp_path):
    """A caller's clock a little ahead of SQLite's used to make the trigger abort the purge."""
    with AuditLog(tmp_path / "a.db", 30) as log:
        # two minutes inside retention by SQLite's clock, five minutes past it by the caller's
        log.record(AuditRecord(time.time() - 30 * DAY + 120.0, "g", "decision", "deny", "face"))
        assert log.purge(time.time() + 300.0) == 0
        assert len(log.records()) == 1


class FailingGallery:
    def purge_expired(self, now, after_days, scrub=True):
        raise sqlite3.OperationalError("database is locked")


class CountingGallery:
    def __init__(self):
        self.purged = []

    def purge_expired(self, now, after_days, scrub=True):
        self.purged = ["P-1", "P-2"]
        return self.purged


def test_gallery_purge_and_its_record_are_one_transaction(tmp_path):
    fill(tmp_path / "a.db", n=2, age_days=40)
    with AuditLog(tmp_path / "a.db", 30) as log:
        with pytest.raises(Exception, match="nothing removed"):
            purge_with_gallery(log, FailingGallery(), time.time(), 30, "g")
        assert len(log.records()) == 2  # the old records were not purged either
        assert log.records("purge") == []
        gone, aged = purge_with_gallery(log, CountingGallery(), time.time(), 30, "g")
        assert (gone, aged) == (["P-1", "P-2"], 2)
        (rec,) = log.records("purge")
        assert "2 people" in rec.detail
        assert log.verify().ok


def test_export_since_as_json(tmp_path, capsys):
    cfg = gate_cfg(tmp_path)
    fill(tmp_path / "audit.db", n=2, age_days=10)
    fill(tmp_path / "audit.db", n=3)
    since = time.strftime("%Y-%m-%d", time.localtime(time.time() - 2 * DAY))
    assert main(["audit", "export", "--config", str(cfg), "--since", since, "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [3, 4, 5]
    assert {"time", "kind", "decision", "subject", "reason", "hash"} <= set(rows[0])
    assert main(["audit", "export", "--config", str(cfg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert lines[0].split("\t")[3] == "decision"


def test_a_log_from_before_the_chain_is_upgraded(tmp_path):
    p = tmp_path / "old.db"
    c = sqlite3.connect(p)
    c.executescript(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, t REAL NOT NULL, gate TEXT,"
        " kind TEXT NOT NULL,"
        " decision TEXT, via TEXT, subject TEXT, score REAL, reason TEXT, detail TEXT);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value REAL);"
        "CREATE TRIGGER events_no_update BEFORE UPDATE ON events"
        " BEGIN SELECT RAISE(ABORT, 'x'); END;"
    )
    c.execute(
        "INSERT INTO events (id, t, gate, kind, subject, score)"
        " VALUES (7, ?, 'g', 'decision', 'T-1', 1)",
        (time.time(),),
    )
    c.commit()
    c.close()
    with AuditLog(p, 30) as log:
        assert [r.subject for r in log.records()] == ["T-1"]
        assert log.verify().ok
        log.record(AuditRecord(time.time(), "g", "system", reason="x"))
        assert log.verify().ok


def test_an_interrupted_upgrade_resumes(tmp_path):
    p = tmp_path / "old.db"
    c = sqlite3.connect(p)
    c.executescript(
        "CREATE TABLE events_v1 (id INTEGER PRIMARY KEY, t REAL NOT NULL, gate TEXT, kind TEXT,"
        " decision TEXT, via TEXT, subject TEXT, score REAL, reason TEXT, detail TEXT);"
    )
    c.execute(
        "INSERT INTO events_v1 (t, gate, kind, subject) VALUES (?, 'g', 'decision', 'T-1')",
        (time.time(),),
    )
    c.commit()
    c.close()
    with AuditLog(p, 30) as log:
        assert [r.subject for r in log.records()] == ["T-1"]
        assert log.verify().ok
    c = sqlite3.connect(p)
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
    c.close()
    assert "events_v1" not in tables
