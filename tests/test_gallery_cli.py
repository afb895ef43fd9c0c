"""The gallery CLI contract scripts use: enroll, people, forget, purge, privacy-report, keys."""

from __future__ import annotations

import json
import subprocess
import sys


def run(tmp_path, *args):
    cfg = tmp_path / "gate.toml"
    if not cfg.exists():
        cfg.write_text(f'[audit]\npath = "{tmp_path / "audit.db"}"\n')
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args[:1], *args[1:2], "--config", str(cfg), *args[2:]]
        if args[0] == "keys"
        else [sys.executable, "-m", "edge.cli", args[0], "--config", str(cfg), *args[1:]],
        capture_output=True,
        text=True,
    )


def test_gallery_cli_lifecycle(tmp_path, fixtures):
    db, key = str(tmp_path / "g.db"), str(tmp_path / "g.key")
    assert run(tmp_path, "keys", "init", "--key-file", key).returncode == 0
    assert run(tmp_path, "keys", "init", "--key-file", key).returncode != 0  # refuses to overwrite
    g = ["--db", db, "--key-file", key]
    p = run(
        tmp_path,
        "enroll",
        *g,
        "--name",
        "Lin-Manuel Miranda",
        "--consent-version",
        "v1",
        "--pass-id",
        "AP-1",
        "--valid-until",
        "2030-01-01",
        "--min-templates",
        "1",
        str(fixtures / "faces" / "lin_manuel_miranda" / "lin-manuel-miranda.png"),
    )
    assert p.returncode == 0, p.stderr
    pid = p.stdout.strip().splitlines()[-1]
    assert pid.startswith("P-")
    p = run(tmp_path, "enroll", *g, "--name", "X", str(fixtures / "faces" / "obama" / "obama.jpg"))
    assert p.returncode != 0  # --consent-version is required
    p = run(
        tmp_path,
        "enroll",
        *g,
        "--name",
        "Kid",
        "--consent-version",
        "v1",
        "--minor",
        str(fixtures / "faces" / "obama" / "obama.jpg"),
    )
    assert p.returncode == 2
    assert "guardian" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1

    people = json.loads(run(tmp_path, "people", *g, "--json").stdout)
    assert len(people) == 1
    row = people[0]
    assert row["id"] == pid
    assert row["name"] == "Lin-Manuel Miranda"
    assert row["pass"] == "AP-1"
    assert row["template_count"] == 1
    assert row["consent_time"]
    assert row["valid_until"].startswith("2030-01-01")
    assert "embedding" not in json.dumps(row)

    rep = json.loads(run(tmp_path, "privacy-report", *g, "--json").stdout)
    assert rep["stored"]["people"] == 1
    assert rep["encryption"]["key_file_ok"]
    assert rep["filing_threshold"]["threshold"] == 100_000
    md = run(tmp_path, "privacy-report", *g).stdout
    assert md.startswith("# Privacy report")
    assert "Lin-Manuel" not in md

    assert run(tmp_path, "keys", "rotate", *g).returncode == 0
    assert run(tmp_path, "forget", *g, pid).returncode == 0
    again = run(tmp_path, "forget", *g, pid)
    assert again.returncode == 1
    assert f"no person {pid}" in again.stderr
    assert again.stdout == ""
    assert json.loads(run(tmp_path, "people", *g, "--json").stdout) == []
    assert run(tmp_path, "purge", *g).returncode == 0

    from edge.gate.audit import AuditLog

    kinds = [r.kind for r in AuditLog(tmp_path / "audit.db").records()]
    assert kinds == ["enroll", "keys", "deletion", "purge"]  # the rotation is audited too
    deletion = AuditLog(tmp_path / "audit.db").records("deletion")[0]
    assert deletion.subject == ""
    assert deletion.reason == "consent_withdrawn"  # that it happened, not who


def test_wrong_key_is_one_clear_line(tmp_path):
    db = str(tmp_path / "g.db")
    run(tmp_path, "keys", "init", "--key-file", str(tmp_path / "a.key"))
    run(tmp_path, "keys", "init", "--key-file", str(tmp_path / "b.key"))
    from edge.gallery.crypto import load_key
    from edge.gallery.store import Gallery

    with Gallery(db, load_key(tmp_path / "a.key")):
        pass
    p = run(tmp_path, "people", "--db", db, "--key-file", str(tmp_path / "b.key"))
    assert p.returncode == 2
    assert "does not open gallery" in p.stderr


def test_audit_log_is_append_only(tmp_path):
    import sqlite3
    import time

    import pytest

    from edge.gate.audit import AuditLog, AuditRecord

    log = AuditLog(tmp_path / "a.db", retention_days=90)
    log.record(AuditRecord(time.time(), "g", "decision", "grant", "ticket", "T-1", None, "ok"))
    log.record(
        AuditRecord(time.time() - 200 * 86400, "g", "decision", "deny", "face", "", 0.5, "stranger")
    )
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        log.conn.execute("UPDATE events SET decision='grant'")
    with pytest.raises(sqlite3.DatabaseError, match="retention"):
        log.conn.execute("DELETE FROM events")
    assert log.purge() == 1
    assert [r.subject for r in log.records()] == ["T-1"]


def test_a_photo_whose_face_is_smaller_than_the_gate_looks_at_is_left_out(tmp_path, fixtures):
    """A photo of a face 41 px wide enrolled (--min-templates 1): a template of a face the gate
    never looks at (vision.min_face_px). It is left out, with its size, like a photo with no
    face."""
    import cv2

    photo = cv2.imread(str(fixtures / "faces" / "obama" / "obama.jpg"))
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.resize(photo, None, fx=0.15, fy=0.15, interpolation=cv2.INTER_AREA))
    db, key = str(tmp_path / "g.db"), str(tmp_path / "g.key")
    assert run(tmp_path, "keys", "init", "--key-file", key).returncode == 0
    p = run(tmp_path, "enroll", "--db", db, "--key-file", key, "--name", "O", "--consent-version",
            "v1", "--min-templates", "1", str(small))  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert "px, under 48 px" in p.stderr
    assert json.loads(run(tmp_path, "people", "--db", db, "--key-file", key, "--json").stdout) == []
