"""A SQLite file deleted or replaced under a long-running follower (the gate's gallery, sync's
ledger, the console's files), with real files in WAL mode.

The danger: the old file and the file now at its path share the names of the write-ahead log
and its index, and SQLite does not empty the log of a moved file when its connection closes.
Whoever opens the path next takes the old file's pages for the new file's: a restore silently
undone. And a follower that empties the log into the old file after another one has already
written to the new file takes those new commits away with it."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.db import connect, let_go
from tests.helpers import copy_db

CHANGES = ["replaced", "deleted_recreated"]


def _restore(backup: Path, db: Path, change: str) -> None:
    """An operator's restore: a copy renamed onto the path, or the file deleted (its log and
    index left, as after `rm`) and the copy put in its place."""
    if change == "replaced":
        os.replace(backup, db)
    else:
        db.unlink()
        shutil.copyfile(backup, db)
        backup.unlink()


def _read(db: Path, sql: str) -> tuple[str, list]:
    """integrity_check and the rows of `sql`, as a fresh process would read the file."""
    c = sqlite3.connect(db)
    try:
        return c.execute("PRAGMA integrity_check").fetchone()[0], [r[0] for r in c.execute(sql)]
    finally:
        c.close()


def _kv(path: Path) -> sqlite3.Connection:
    c = connect(path)
    c.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
    c.execute("PRAGMA wal_autocheckpoint=0")  # the log holds what follows until let go
    return c


def _backed_up(tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    """x.db held open by a follower with one row ('old'), copied to backup.db."""
    db = tmp_path / "x.db"
    held = _kv(db)
    held.execute("INSERT INTO t VALUES ('old')")
    copy_db(db, tmp_path / "backup.db")
    return db, held


class _Other:
    """Another process at a step of its script: it says a line after each step and waits
    for a line before the next."""

    def __init__(self, proc: subprocess.Popen):
        assert proc.stdout is not None and proc.stdin is not None
        self.stdout, self.stdin = proc.stdout, proc.stdin

    def said(self) -> str:
        return self.stdout.readline().strip()

    def go(self) -> str:
        """Its next step; what it says when done."""
        self.stdin.write("go\n")
        self.stdin.flush()
        return self.said()


@contextlib.contextmanager
def _other_process(script: str, db: Path) -> Iterator[_Other]:
    """`script` run by another Python on `db`; killed at the end."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield _Other(proc)
    finally:
        proc.kill()
        proc.wait()


# --- the mechanism -------------------------------------------------------------------------


@pytest.mark.parametrize("close", [True, False], ids=["closed", "kept_until_the_new_opens"])
@pytest.mark.parametrize("change", CHANGES)
def test_the_file_at_the_path_is_exactly_the_restored_one(tmp_path, change, close):
    """Before (the gate's and sync's plain close), the follower's log stayed at the path and
    the restored file opened as the old one: every row of the restore gone, integrity ok.
    A follower that keeps reading the old file until the new one opens (close=False) still
    reads it whole meanwhile."""
    db, held = _backed_up(tmp_path)
    for i in range(50):
        held.execute("INSERT INTO t VALUES (?)", (f"after-backup-{i}" + "x" * 300,))
    assert os.path.getsize(f"{db}-wal") > 0
    _restore(tmp_path / "backup.db", db, change)
    let_go(held, close=close)
    new = _kv(db)
    assert [r[0] for r in new.execute("SELECT v FROM t")] == ["old"]
    if not close:
        assert held.execute("SELECT count(*) FROM t").fetchone()[0] == 51
        held.close()
    new.execute("INSERT INTO t VALUES ('new')")
    new.close()
    assert _read(db, "SELECT v FROM t") == ("ok", ["old", "new"])


@pytest.mark.parametrize("change", CHANGES)
def test_a_service_stopped_while_holding_a_moved_file_leaves_the_restore_alone(tmp_path, change):
    """The operator restores a file and restarts the service (`systemctl restart`) instead of
    letting it follow: the service closes its connections as it stops. Before, that close
    left the old file's log at the path and the restarted service read the restore undone."""
    from edge.tickets.ledger import Ledger, init_ledger

    db = tmp_path / "ledger.db"
    init_ledger(db)
    held = Ledger(db, gate="lane1")
    held.conn.execute("PRAGMA wal_autocheckpoint=0")
    held.conn.execute("CREATE TABLE marks (v TEXT)")
    copy_db(db, tmp_path / "backup.db")
    held.conn.execute("INSERT INTO marks VALUES ('undone-by-restore')")
    raw = connect(db)  # a plain connection too (the console's staff accounts)
    raw.execute("INSERT INTO marks VALUES ('undone-too')")
    _restore(tmp_path / "backup.db", db, change)
    raw.close()
    held.close()  # as the service stops
    assert _read(db, "SELECT v FROM marks") == ("ok", [])


def test_a_file_renamed_away_keeps_the_follower_s_last_commits(tmp_path):
    """Before (plain close), the commits still in the log were lost to the file renamed away
    and taken by the file put at the path instead."""
    db = tmp_path / "x.db"
    held = _kv(db)
    held.execute("INSERT INTO t VALUES ('kept')")
    os.replace(db, tmp_path / "aside.db")
    fresh = _kv(tmp_path / "fresh.db")
    fresh.close()
    os.replace(tmp_path / "fresh.db", db)
    let_go(held)
    assert _read(tmp_path / "aside.db", "SELECT v FROM t") == ("ok", ["kept"])
    assert _read(db, "SELECT v FROM t") == ("ok", [])


def test_a_file_not_moved_keeps_its_log(tmp_path):
    """let_go on a file still at its path leaves its log to SQLite (another process's)."""
    db = tmp_path / "x.db"
    other = _kv(db)
    held = _kv(db)
    other.execute("INSERT INTO t VALUES ('a')")
    let_go(held)
    other.execute("INSERT INTO t VALUES ('b')")
    assert Path(f"{db}-wal").exists()
    other.close()
    assert _read(db, "SELECT v FROM t") == ("ok", ["a", "b"])


_FOLLOWER = """
import sys
from edge.console.follow import let_go
from edge.db import connect
held = connect(sys.argv[1])
print("open", flush=True)
sys.stdin.readline()  # the file is replaced, and another follower has moved on
let_go(held)
print("let go", flush=True)
"""


def test_a_late_follower_in_another_process_leaves_the_new_file_s_commits(tmp_path):
    """Two processes follow one file (the gate and the console follow the audit log; the
    gate and sync, the ledger). The first lets go and writes to the restored file; the other
    lets go a moment later. Before (the console's let_go), the late one emptied the shared log
    into the old file, and the first one's commits vanished from the file at the path."""
    db, first = _backed_up(tmp_path)
    with _other_process(_FOLLOWER, db) as late:
        assert late.said() == "open"
        first.execute("INSERT INTO t VALUES ('old-unsaved')")
        os.replace(tmp_path / "backup.db", db)
        let_go(first)
        new = _kv(db)
        assert [r[0] for r in new.execute("SELECT v FROM t")] == ["old"]
        new.execute("INSERT INTO t VALUES ('redeemed-after-restore')")
        assert late.go() == "let go"
        assert [r[0] for r in new.execute("SELECT v FROM t")] == ["old", "redeemed-after-restore"]
        new.close()
    assert _read(db, "SELECT v FROM t") == ("ok", ["old", "redeemed-after-restore"])


_OPENER = """
import sys
from edge.db import connect
new = connect(sys.argv[1])
new.execute("INSERT INTO t VALUES ('written-by-the-new-process')")
print("written", flush=True)
sys.stdin.readline()  # the follower lets go meanwhile
new.execute("INSERT INTO t VALUES ('written-after')")
print("written", flush=True)
sys.stdin.readline()
"""


def test_a_file_opened_by_another_process_before_the_follower_lets_go_keeps_its_log(
    tmp_path, caplog
):
    """A service started right after the restore (the gate restarted while sync still holds
    the old file) opens the file at the path before the follower lets go: SQLite has already
    given it the old file's log. Letting go must then neither empty that log into the old
    file (the new process's commits would vanish) nor take its names off the path (the new
    process and the next opener would write two logs of one file): it closes as SQLite
    does, and says so."""
    db, held = _backed_up(tmp_path)
    os.replace(tmp_path / "backup.db", db)
    with _other_process(_OPENER, db) as opener:
        assert opener.said() == "written"
        let_go(held)
        assert "restore the file again" in caplog.text
        new = _kv(db)  # the follower opens the file at the path
        assert opener.go() == "written"
        seen = [r[0] for r in new.execute("SELECT v FROM t")]
        assert seen == ["old", "written-by-the-new-process", "written-after"]
        new.close()
    got = _read(db, "SELECT v FROM t")
    assert got == ("ok", ["old", "written-by-the-new-process", "written-after"])


# --- the followers ---------------------------------------------------------------------------


def _unit(seed: int) -> list[np.ndarray]:
    v = np.random.default_rng(seed).standard_normal((1, 128)).astype(np.float32)
    return list(v / np.linalg.norm(v))


@pytest.mark.parametrize("change", CHANGES)
def test_the_gate_reads_a_restored_gallery_as_restored(tmp_path, change):
    """The gate holds the gallery open while the enrolment desk writes to it (its pages in the
    log, not yet in the file); the gallery is then restored from a backup. Before, the gate's
    reopen closed plainly and opened the path: the restore was undone, the person it removed
    still in the gallery (and matched at the gate)."""
    from edge.gallery.crypto import init_key
    from edge.gallery.store import Consent, Gallery
    from edge.gate.faces import FaceStack
    from tests.helpers import make_config

    cfg = make_config(tmp_path)
    db = cfg.resolve(cfg.gallery.db)
    key = init_key(cfg.resolve(cfg.gallery.key_file))
    with Gallery(db, key) as g:
        g.add_person("Kept Person", Consent("v1"), _unit(1), "test_model", "1")
    stack = FaceStack(cfg)
    try:
        copy_db(db, tmp_path / "backup.db")
        desk = Gallery(db, key)  # another process's write: its commit stays in the log
        desk.conn.execute("PRAGMA wal_autocheckpoint=0")
        desk.add_person("Removed By Restore", Consent("v1"), _unit(2), "test_model", "1")
        desk.close()
        assert os.path.getsize(f"{db}-wal") > 0
        _restore(tmp_path / "backup.db", db, change)
        assert stack.gallery_moved()
        stack.reopen_gallery()
        assert [p.name for p in stack.gallery.people()] == ["Kept Person"]
    finally:
        stack.close()
    assert _read(db, "PRAGMA quick_check")[0] == "ok"
    with Gallery(db, key) as g:
        assert [p.name for p in g.people()] == ["Kept Person"]


@pytest.mark.parametrize("change", CHANGES)
def test_sync_reads_a_restored_ledger_as_restored(tmp_path, office_keys, change):
    """The gate redeems into the ledger sync holds open (its pages in the log); the ledger is
    then restored from a backup. Before, sync opened the file at the path before closing the
    old one: it read the old file's pages as the restored ledger's, and the redemption the
    restore removed was back in the file (T-2 below)."""
    from edge.fleet.sync import Sync
    from edge.tickets.ledger import Ledger
    from tests.test_fleet import Park

    park = Park(tmp_path, "mqtt://127.0.0.1:9", office_keys, lanes=1, office=False)
    db = park.lanes[0].dir / "ledger.db"
    s = Sync(park.cfg(1))
    try:

        def redeem(tid: str) -> None:
            led = Ledger(db, gate="lane1", outbox=True)  # the gate's process
            led.conn.execute("PRAGMA wal_autocheckpoint=0")
            try:
                assert led.redeem(park.signed(tid), 1_700_000_000.0).ok
            finally:
                led.close()

        redeem("T-1")
        copy_db(db, tmp_path / "backup.db")
        redeem("T-2")
        assert os.path.getsize(f"{db}-wal") > 0
        _restore(tmp_path / "backup.db", db, change)
        s._follow_files(now_too=True)
        assert s.ledger is not None
        held = [r[0] for r in s.ledger.conn.execute("SELECT ticket_id FROM redemptions")]
        assert held == ["T-1"]
    finally:
        s.close()
    assert _read(db, "SELECT ticket_id FROM redemptions") == ("ok", ["T-1"])


@pytest.mark.parametrize("store", ["audit", "ledger"])
def test_the_gate_reads_a_restored_audit_log_or_ledger_as_restored(tmp_path, store):
    """The gate holds its audit log and ledger open while another process writes to them (in
    the log); one is then restored from a backup. Before, the gate opened the file at the
    path before closing the old one: the restore was undone (the record or redemption it
    removed back in the file)."""
    from gpiozero.pins.mock import MockFactory

    from edge import tickets as tk
    from edge.fleet.proof import verify_proof
    from edge.gate.audit import AuditLog, AuditRecord
    from edge.gate.daemon import Gate
    from edge.tickets.ledger import Ledger
    from tests.helpers import ListSource, make_config

    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    db = cfg.resolve(cfg.audit.path if store == "audit" else cfg.tickets.ledger)
    gate = Gate(cfg, lambda e: None, source=ListSource([]), pin_factory=MockFactory())
    try:
        copy_db(db, tmp_path / "backup.db")
        if store == "audit":  # sync's process records what it did
            with AuditLog(db) as a:
                a.conn.execute("PRAGMA wal_autocheckpoint=0")
                a.record(AuditRecord(1.0, "lane", "fleet", detail="undone-by-restore"))
            sql = "SELECT count(*) FROM events WHERE detail = 'undone-by-restore'"
        else:  # a redemption written by another process (the desk's `ledger redeem`)
            t = tk.Ticket("T-UNDONE", "day", 1_699_999_000, 1_700_100_000, tk.Kind.ONE_TIME, 1)
            text = tk.sign(t, tk.load_private(tmp_path / "office" / "issuer.key"))
            with Ledger(db, gate="desk") as led:
                led.conn.execute("PRAGMA wal_autocheckpoint=0")
                got = led.redeem(
                    verify_proof(text, [tk.load_public(tmp_path / "office" / "issuer.pub")]),
                    1_700_000_000.0,
                )
                assert got.ok
            sql = "SELECT count(*) FROM redemptions WHERE ticket_id = 'T-UNDONE'"
        assert os.path.getsize(f"{db}-wal") > 0
        _restore(tmp_path / "backup.db", db, "replaced")
        gate.tick(0.0)  # once a second in the loop
    finally:
        gate.close()
    assert _read(db, sql) == ("ok", [0])


@pytest.mark.parametrize("change", CHANGES)
def test_the_gate_reads_a_restored_fleet_state_as_restored(tmp_path, office_keys, change):
    """The gate holds fleet.db open (its link check) while sync writes to it (in the log);
    fleet.db is then restored from a backup. Before, the gate opened the file at the path
    before closing the old one and read the old file's values as the restored file's."""
    from edge.fleet.state import FleetState, LaneGuard
    from tests.test_fleet import Park

    park = Park(tmp_path, "mqtt://127.0.0.1:9", office_keys, lanes=1, office=False)
    cfg = park.cfg(1)
    path = cfg.resolve(cfg.fleet.state_db)
    FleetState(path).close()
    guard = LaneGuard(cfg)
    try:
        copy_db(path, tmp_path / "backup.db")
        sync = FleetState(path)  # sync's process
        sync.conn.execute("PRAGMA wal_autocheckpoint=0")
        sync.put(undone_by_restore=1)
        sync.close()
        assert os.path.getsize(f"{path}-wal") > 0
        _restore(tmp_path / "backup.db", path, change)
        guard.check()  # before each redemption
        assert guard.state is not None and guard.state.get("undone_by_restore") is None
    finally:
        guard.close()
    assert _read(path, "PRAGMA quick_check")[0] == "ok"
    back = FleetState(path)
    try:
        assert back.get("undone_by_restore") is None
    finally:
        back.close()
