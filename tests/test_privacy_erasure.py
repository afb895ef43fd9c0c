"""Erasure the auditor can rely on: `forget --replay` recorded before it erases, deleted rows
gone from the bytes of every file that held them, and the forget list stated in the report."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np

from edge.db import connect
from edge.errors import AuditError
from edge.gallery.crypto import init_key, load_key
from edge.gallery.store import Gallery
from edge.gate.audit import AuditLog, AuditRecord

from .gallery_helpers import CONSENT, cli, config, file_bytes, unit


def restored_gallery(tmp_path: Path, names: str, forget: int) -> tuple[list[str], list[str]]:
    """A gallery of `names`, a backup of it, the first `forget` people forgotten, then the
    backup restored over it: (ids, the `--config --db --key-file` arguments)."""
    rng = np.random.default_rng(61)
    db, key = tmp_path / "g.db", tmp_path / "k.key"
    with Gallery(db, init_key(key)) as g:
        ids = [g.add_person(n, CONSENT, list(unit(rng, 2)), "m", "v") for n in names]
    shutil.copy2(db, tmp_path / "backup.db")
    with Gallery(db, load_key(key), create=False) as g:
        for pid in ids[:forget]:
            assert g.forget(pid)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy2(tmp_path / "backup.db", db)
    return ids, ["--config", str(config(tmp_path)), "--db", str(db), "--key-file", str(key)]


def held(tmp_path: Path) -> list[str]:
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g:
        return sorted(p.id for p in g.people())


def deletions(tmp_path: Path) -> list[str]:
    """The details of the audit log's deletion records, oldest first."""
    path = tmp_path / "audit.db"
    if not path.exists():
        return []
    with AuditLog(path) as log:
        return [r.detail for r in log.records("deletion")]


def test_a_replay_whose_audit_record_is_refused_erases_nothing(tmp_path, capsys, monkeypatch):
    """`forget --replay` on a restored gallery with an audit log that refuses the record (a full
    disk): the people were erased first and the record then failed, so the erasure was on no
    record. As `forget`, the deletion is now recorded first: refused, nothing is erased, the
    error says so and what to fix, and the same command once the log takes records works."""
    ids, args = restored_gallery(tmp_path, "ABC", forget=2)
    forget_list = (tmp_path / "g.db.forgotten").read_bytes()
    real = AuditLog.append

    def full(self, r):
        raise AuditError(f"audit log {self.path} is full", "free disk space")

    monkeypatch.setattr(AuditLog, "append", full)
    rc, _, err = cli(capsys, "forget", "--replay", *args)
    assert rc == 2
    assert "nothing was erased" in err and "free disk space" in err
    assert "forget --replay again" in err
    assert held(tmp_path) == sorted(ids)  # unchanged: nobody erased without the record
    assert (tmp_path / "g.db.forgotten").read_bytes() == forget_list
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g:
        assert g.needs_forget_replay()  # faces stay refused until the replay is done
    monkeypatch.setattr(AuditLog, "append", real)
    rc, out, _ = cli(capsys, "forget", "--replay", *args)
    assert rc == 0 and "2 people erased again" in out
    assert held(tmp_path) == [ids[2]]
    assert [d.split(";")[0] for d in deletions(tmp_path)] == ["2 erased again"]
    assert not any(pid in d for d in deletions(tmp_path) for pid in ids)


def test_a_replay_after_a_partial_one_records_only_those_still_held(tmp_path, capsys):
    """A restored gallery replayed with the lane's own list (one person), then with the office's
    list (that person and one more), then again: each replay records and reports only the
    people the gallery still held; one that finds nobody erases and records nothing (before,
    it added a deletion record of 0 people)."""
    ids, args = restored_gallery(tmp_path, "ABC", forget=1)
    rc, out, _ = cli(capsys, "forget", "--replay", *args)
    assert rc == 0 and "1 people erased again" in out
    assert held(tmp_path) == sorted(ids[1:])
    office = tmp_path / "office.txt"
    office.write_text(f"{ids[0]}\n{ids[1]}\n")
    rc, out, _ = cli(capsys, "forget", "--replay", str(office), *args)
    assert rc == 0 and "1 people erased again" in out
    assert held(tmp_path) == [ids[2]]
    rc, out, _ = cli(capsys, "forget", "--replay", str(office), *args)
    assert rc == 0 and "0 people erased again" in out
    assert held(tmp_path) == [ids[2]]
    assert [d.split(";")[0] for d in deletions(tmp_path)] == ["1 erased again"] * 2


def test_audit_records_purged_past_retention_leave_no_bytes_on_disk(
    tmp_path, capsys, sqlite_default_build
):
    """`edge-gate purge` removed the audit records past retention, but the log was opened
    without secure_delete and its write-ahead log was left as it was (the running gate keeps
    the file open, so nothing empties it): the removed records (ticket ids, pseudonymous ids)
    stayed readable on disk. The log now overwrites what it deletes and the purge empties its
    write-ahead log."""
    import time

    db, key, audit = tmp_path / "g.db", tmp_path / "k.key", tmp_path / "audit.db"
    with Gallery(db, init_key(key)):
        pass
    gate = connect(audit)  # the running gate's connection, idle between decisions
    try:
        old = "T-EXPIRED-QUARTERMAIN-7731"
        with AuditLog(audit, retention_days=7) as log:
            log.record(AuditRecord(time.time() - 30 * 86400, "lane-1", "decision",
                                   decision="grant", via="ticket", subject=old))  # fmt: skip
            log.record(AuditRecord(time.time(), "lane-1", "system", detail="kept"))
        assert old.encode() in file_bytes(audit)  # the test's premise: it was on disk
        cfg = config(tmp_path, "retention_days = 7\n")
        args = ["--config", str(cfg), "--db", str(db), "--key-file", str(key)]
        rc, out, _ = cli(capsys, "purge", *args)
        assert rc == 0 and "1 old audit records" in out
        assert old.encode() not in file_bytes(audit)
    finally:
        gate.close()
    with AuditLog(audit, retention_days=7) as log:
        assert [r.subject for r in log.records("decision")] == []
        assert [r.detail for r in log.records("system")] == ["kept"]


def test_what_the_lane_takes_out_of_fleet_db_leaves_no_bytes_on_disk(
    tmp_path, sqlite_default_build
):
    """A lane's fleet.db (sync and the gate) was opened without secure_delete: an override the
    gate spent (the supervisor's name and reason) and a message kept for a later roster, once
    taken out, stayed readable in freed pages. Every fleet.db connection now overwrites what it
    deletes."""
    from edge.fleet.state import FleetState

    db = tmp_path / "fleet.db"
    staff = b"Supervisor Philippa Quartermain-4417"
    kept = b"KEPT-REDEMPTION-ZX-90331"
    state = FleetState(db)
    try:
        state.add_override(b'{"by": "' + staff + b'", "reason": "wheelchair gate"}', 1.0)
        assert state.add_pending("edge-gate/park/redemptions/lane-9", kept * 8, 1.0)
        assert state.checkpoint()
        assert staff in file_bytes(db) and kept in file_bytes(db)  # the test's premise
        with state.transaction():  # as the gate spends an override
            assert len(state.take_overrides()) == 1
        assert [t for t, _ in state.take_pending()] == ["edge-gate/park/redemptions/lane-9"]
        assert state.checkpoint()
        assert staff not in file_bytes(db)
        assert kept not in file_bytes(db)
    finally:
        state.close()


def test_an_override_the_gate_spends_leaves_no_copy_in_the_write_ahead_log(
    lane_inbox, sqlite_default_build
):
    """The gate takes an override out of fleet.db under secure_delete, but the page that held it
    stayed in fleet.db's write-ahead log (the supervisor's name and reason) until SQLite's next
    checkpoint, which the gate, holding the file open, did not run. Spending one now empties
    the log."""
    from edge.fleet.override import override_body

    from .test_fleet_override import _signed

    key, st, inbox = lane_inbox
    now = time.time()
    staff = "Supervisor Ottoline Fairweather-3390"
    st.add_override(_signed(key, override_body("lane1", "pram", staff, now), now), now)
    assert staff.encode() in file_bytes(st.path)  # the test's premise
    assert [v.ok for v in inbox.take(now + 1)] == [True]
    assert staff.encode() not in file_bytes(st.path)


def test_the_privacy_report_states_what_the_forget_list_holds_and_why(tmp_path, capsys):
    """The forget list beside the gallery keeps the pseudonymous ids of everyone erased (to
    replay the erasures on a restored backup), but the privacy report, the auditor's account of
    what is stored, named neither the file nor what it holds. It now states its path, how many
    ids it holds and why, in the text and in --json."""
    import json

    rng = np.random.default_rng(62)
    db, key = tmp_path / "g.db", tmp_path / "k.key"
    with Gallery(db, init_key(key)) as g:
        ids = [g.add_person(n, CONSENT, list(unit(rng, 2)), "m", "v") for n in "ABC"]
        assert g.forget(ids[0]) and g.forget(ids[1])
    args = ["--config", str(config(tmp_path)), "--db", str(db), "--key-file", str(key)]
    rc, out, _ = cli(capsys, "privacy-report", "--json", *args)
    assert rc == 0
    report = json.loads(out)
    listed = report["stored"]["forget_list"]
    assert listed["path"] == str(tmp_path / "g.db.forgotten")
    assert listed["ids"] == 2
    assert "pseudonymous ids" in listed["purpose"] and "restored" in listed["purpose"]
    assert report["stored"]["people"] == 1  # the keys around it unchanged
    rc, out, _ = cli(capsys, "privacy-report", *args)
    assert rc == 0
    assert f"Forget list `{tmp_path / 'g.db.forgotten'}`: 2 pseudonymous ids" in out
    assert not any(pid in out for pid in ids)  # counted, never listed


def test_on_a_fleet_lane_the_report_counts_the_office_s_forget_list_too(tmp_path, capsys):
    """A fleet lane keeps the office's forget list in its fleet state; the report named the
    file but not how many ids it holds. It now counts them (never lists them), and says when
    the fleet state cannot be read."""
    import json

    from edge.fleet.state import FleetState

    rng = np.random.default_rng(63)
    db, key = tmp_path / "g.db", tmp_path / "k.key"
    with Gallery(db, init_key(key)) as g:
        g.add_person("A", CONSENT, list(unit(rng, 2)), "m", "v")
    fleet = tmp_path / "fleet.db"
    gone = ["P-0001", "P-0002", "P-0003"]
    st = FleetState(fleet)
    st.put(forgotten=gone)
    st.close()
    lane = f'[fleet]\nbroker = "mqtt://127.0.0.1:1"\nsite = "s"\nlane = "l"\nstate_db = "{fleet}"\n'
    args = ["--config", str(config(tmp_path, lane)), "--db", str(db), "--key-file", str(key)]
    rc, out, _ = cli(capsys, "privacy-report", "--json", *args)
    assert rc == 0
    listed = json.loads(out)["stored"]["forget_list"]
    assert (listed["fleet_path"], listed["fleet_ids"], listed["ids"]) == (str(fleet), 3, 0)
    rc, out, _ = cli(capsys, "privacy-report", *args)
    assert rc == 0
    assert f"the fleet state {fleet} also keeps the office's forget list (3 pseudonymous" in out
    assert not any(pid in out for pid in gone)
    fleet.write_bytes(b"not a database at all" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{fleet}{suffix}").unlink(missing_ok=True)
    rc, out, _ = cli(capsys, "privacy-report", "--json", *args)
    assert rc == 0
    listed = json.loads(out)["stored"]["forget_list"]
    assert listed["fleet_ids"] is None and "(unreadable)" in listed["purpose"]


def test_a_checkpoint_behind_a_reader_gives_up_and_keeps_the_busy_timeout(tmp_path):
    """The purge's checkpoint holds the write lock while it waits for readers: with the store's
    own busy timeout (5 s for the audit log) a backup reading the log stalled the gate's next
    decision record as long. It now gives up at once-ish (the next checkpoint does it) and the
    connection keeps its busy timeout for the writes that follow."""
    from edge.db import CHECKPOINT_WAIT_MS, checkpoint

    path = tmp_path / "x.db"
    conn = connect(path, timeout_s=5.0)
    conn.execute("CREATE TABLE t (v TEXT)")
    conn.execute("INSERT INTO t VALUES ('a')")
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)  # a snapshot held
    conn.execute("INSERT INTO t VALUES ('b')")  # a frame the reader's snapshot predates
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    assert checkpoint(conn, "test log") is False
    conn.set_trace_callback(None)
    assert f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}" in seen
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)
    reader.rollback()
    assert checkpoint(conn, "test log") is True  # the reader gone: the log is emptied
    reader.close()
    conn.close()
