"""Faults of a lane's running sync on a real mosquitto: its own files full, locked, read-only,
deleted or replaced underneath. Each one is said once in the log with the fix, sync goes on,
nothing acknowledged is lost and nothing published twice is counted twice.

SQLite itself refuses the writes: `PRAGMA query_only` on sync's own connection (a card
remounted read-only), or another process holding the write lock past the busy timeout. Every
wait is bounded polling for a condition; no timing is asserted.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from edge import tickets as tk
from edge.fleet import messages as msg
from edge.fleet import sync as sync_mod
from edge.fleet.identity import load_lane_key
from edge.fleet.state import FleetState, LaneGuard
from edge.tickets.ledger import Ledger
from tests.helpers import copy_db, hold_write_lock
from tests.test_fleet import OneShot, Park, wait_for
from tests.test_fleet_delivery import _counted_twice, _kept, _queue_redemptions, _redemptions

LOG = "edge.fleet.sync"


def _lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _said_alive(caplog, text: str, thread) -> None:
    """Wait until sync said `text` (or its loop ended), then: its loop goes on."""
    wait_for(lambda: _lines(caplog, text) or not thread.is_alive(), what=f"{text!r} said")
    assert thread.is_alive(), "the fault ended sync's loop"


def _refuse_writes(store, on: bool = True) -> None:
    """sync's own connection to the file refuses every write (a read-only card)."""
    with store._lock:
        store.conn.execute(f"PRAGMA query_only={'ON' if on else 'OFF'}")


def _redeem(park: Park, i: int, tid: str) -> None:
    """A redemption at lane i, as its gate makes it (outbox row in the same transaction)."""
    led = Ledger(park.lanes[i - 1].dir / "ledger.db", gate=f"lane{i}", outbox=True)
    try:
        assert led.redeem(park.signed(tid), time.time()).ok
    finally:
        led.close()


def _outbox(park: Park, i: int) -> int:
    led = Ledger(park.lanes[i - 1].dir / "ledger.db")
    try:
        return led.outbox_size()
    finally:
        led.close()


def _two_lanes(park: Park):
    """lane1 and lane2 running and ready; lane1's sync and its thread."""
    s = park.start(1)
    park.start(2)
    park.wait_ready(1, 2)
    return s, park.syncs[1][1]


def _delete(db: Path) -> None:
    for x in ("", "-wal", "-shm"):
        Path(f"{db}{x}").unlink(missing_ok=True)


@pytest.mark.parametrize("fault", ["read_only", "locked"])
def test_a_state_file_that_cannot_be_written_does_not_end_sync(
    broker, office_keys, tmp_path, caplog, fault
):
    """Before, the first failed write of fleet.db (the link state each second, the heartbeat
    counter) ended sync's loop (systemd restarted it). Now it is said once, redemptions go both
    ways meanwhile, and the state is written again once the file takes writes."""
    caplog.set_level(logging.INFO, logger=LOG)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    holder = None
    try:
        s, thread = _two_lanes(park)
        if fault == "read_only":
            _refuse_writes(s.state)
        else:
            with s.state._lock:
                s.state.conn.execute("PRAGMA busy_timeout=100")
            holder = hold_write_lock(park.lanes[0].dir / "fleet.db")
        _said_alive(caplog, "sync write_failed what=state", thread)
        _redeem(park, 1, "T-OUT")
        _redeem(park, 2, "T-IN")
        wait_for(lambda: park.remote(2, "T-OUT") == 1, what="lane1's redemption reaches lane2")
        wait_for(lambda: park.remote(1, "T-IN") == 1, what="lane2's redemption stored at lane1")
        assert thread.is_alive()
        if holder is not None:
            holder.communicate("", timeout=60)
        else:
            _refuse_writes(s.state, on=False)
        back = time.time()
        wait_for(  # fleet.db is written before the recovery is said, in the same step
            lambda: (
                (park.state(1, "sync_seen") or 0) > back
                and _lines(caplog, "sync write_ok what=state")
            ),
            what="fleet.db written again and its recovery said",
        )
        said = _lines(caplog, "sync write_failed what=state")
        assert len(said) == 1, said
        assert "fix:" in said[0]
        assert _lines(caplog, "sync write_ok what=state")
        assert park.syncs[1][1] is thread and thread.is_alive()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        park.stop_all()


def test_an_outbox_clean_up_that_fails_loses_nothing_and_counts_once(
    broker, office_keys, tmp_path, caplog
):
    """The broker acknowledged lane1's redemptions but the ledger refuses the deletion of their
    outbox rows. Before, that ended sync's loop. Now the rows stay (nothing lost) and are
    deleted once the ledger takes writes, in the same run; rows still there when sync stops are
    sent again at its next start, and lane2 counts each once."""
    caplog.set_level(logging.INFO, logger=LOG)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s, thread = _two_lanes(park)
        _refuse_writes(s.ledger)
        for k in range(3):
            _redeem(park, 1, f"T-O{k}")
        wait_for(lambda: park.remote(2) == 3, what="lane1's redemptions reach lane2")
        _said_alive(caplog, "sync write_failed what=outbox", thread)
        assert _outbox(park, 1) == 3  # acknowledged by the broker, kept: not lost
        _refuse_writes(s.ledger, on=False)
        wait_for(lambda: _outbox(park, 1) == 0, what="the clean-up done in the same run")
        assert len(_lines(caplog, "sync write_failed what=outbox")) == 1
        assert thread.is_alive()
        # failing again when sync stops: the rows go again at the next start, counted once
        _refuse_writes(s.ledger)
        _redeem(park, 1, "T-AGAIN")
        wait_for(lambda: park.remote(2, "T-AGAIN") == 1, what="T-AGAIN reaches lane2")
        wait_for(lambda: len(s._done_unsaved) == 1, what="its clean-up failed")
        park.stop(1)
        lane2 = park.syncs[2][0]
        dups = lane2.stats["duplicates"]
        park.start(1)
        wait_for(lambda: _outbox(park, 1) == 0, what="sent again and cleaned up")
        wait_for(lambda: lane2.stats["duplicates"] > dups, what="lane2 received it twice")
        assert park.remote(2, "T-AGAIN") == 1
        assert _counted_twice(park, 2) == 0
    finally:
        park.stop_all()


def test_an_audit_log_that_cannot_be_written_does_not_end_sync(
    broker, office_keys, tmp_path, caplog
):
    """Junk on lane2's topic is refused and audited; with the audit log refusing writes, the
    audit write ended sync's loop. Now the refusal is logged, said once, and sync goes on."""
    caplog.set_level(logging.INFO, logger=LOG)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s = park.start(1)
        park.wait_ready(1)
        thread = park.syncs[1][1]
        _refuse_writes(s.audit)
        with OneShot(park.cfg(2), "junk") as c:
            c.publish(msg.topic(park.site, "redemptions", "lane2"), b"not a message")
        _said_alive(caplog, "sync write_failed what=audit", thread)
        _queue_redemptions(park, 2, 1, "T-J")
        wait_for(lambda: park.remote(1) == 1, what="lane2's redemption stored at lane1")
        assert thread.is_alive()
        assert len(_lines(caplog, "sync write_failed what=audit")) == 1
    finally:
        park.stop_all()


def test_a_message_to_keep_aside_that_fleet_db_cannot_take_comes_again(
    broker, office_keys, tmp_path, caplog, monkeypatch
):
    """A redemption whose ticket key has not reached lane1 yet is kept aside in fleet.db and
    acknowledged. Before, when fleet.db refused it, it was acknowledged anyway: lost. Now it is
    left unacknowledged and comes again from the broker's session once fleet.db takes it."""
    caplog.set_level(logging.INFO, logger=LOG)
    monkeypatch.setattr(sync_mod, "STORE_RETRY_FIRST_S", 0.5)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s = park.start(1)
        park.wait_ready(1)
        other = tk.keygen(tmp_path / "other-issuer")  # a key the office has not published yet
        now = time.time()
        t = tk.Ticket("T-NEWKEY", "day", int(now) - 60, int(now) + 86400, tk.Kind.ONE_TIME, 1)
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        body = {"ticket": tk.sign(t, tk.load_private(other[0])), "ticket_id": t.ticket_id}
        m = msg.Message(
            msg.REDEMPTION, park.site, "lane2", 1, now, {**body, "t": now, "day": day},
            epoch=uuid.uuid4().hex[:16],
        )  # fmt: skip
        _refuse_writes(s.state)
        with OneShot(park.cfg(2), "send") as c:
            c.publish(
                msg.topic(park.site, "redemptions", "lane2"),
                msg.encode(msg.sign(m, load_lane_key(park.cfg(2)))),
            )
        wait_for(lambda: _lines(caplog, "sync apply_failed"), what="lane1 fails to keep it")
        assert _kept(park, 1) == 0
        _refuse_writes(s.state, on=False)
        wait_for(lambda: _kept(park, 1) == 1, what="delivered again and kept")
        assert park.syncs[1][1].is_alive()
    finally:
        park.stop_all()


def test_a_ledger_replaced_underneath_is_followed(broker, office_keys, tmp_path, caplog):
    """The ledger restored from a copy (a new file at its path) while sync runs. Before, sync
    went on with the old file: the gate's new redemptions (in the new file) were never
    published, and other lanes' were written into a file no longer on disk."""
    caplog.set_level(logging.INFO, logger=LOG)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    db = park.lanes[0].dir / "ledger.db"
    try:
        _, thread = _two_lanes(park)
        _redeem(park, 1, "T-1")
        wait_for(lambda: park.remote(2, "T-1") == 1, what="T-1 reaches lane2")
        wait_for(lambda: park.state(1, "outbox") == 0, what="T-1 cleaned up")
        copy_db(db, tmp_path / "copy.db")
        _delete(db)
        os.replace(tmp_path / "copy.db", db)
        _redeem(park, 1, "T-2")  # into the file now at the path
        _redeem(park, 2, "T-3")
        wait_for(lambda: park.remote(2, "T-2") == 1, what="T-2 (new file) reaches lane2")
        wait_for(lambda: park.remote(1, "T-3") == 1, what="T-3 stored in the file at the path")
        said = _lines(caplog, "sync file_moved")
        assert len(said) == 1 and "files=ledger" in said[0], said
        assert thread.is_alive()
        assert _counted_twice(park, 1) == 0
    finally:
        park.stop_all()


def test_a_ledger_deleted_underneath_holds_what_arrives_until_it_is_back(
    broker, office_keys, tmp_path, caplog, monkeypatch
):
    """Before, other lanes' redemptions went on into the deleted file and were acknowledged:
    lost. Now they are not acknowledged while the ledger is gone (said once), and are stored
    once it is restored, in the same run."""
    caplog.set_level(logging.INFO, logger=LOG)
    monkeypatch.setattr(sync_mod, "STORE_RETRY_FIRST_S", 0.5)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    db = park.lanes[0].dir / "ledger.db"
    try:
        s, thread = _two_lanes(park)
        copy_db(db, tmp_path / "backup.db")
        applied = s.stats["applied"]
        _delete(db)
        _redeem(park, 2, "T-GONE")
        wait_for(  # lane1 received it while its ledger was gone
            lambda: s.stats["applied"] > applied or _lines(caplog, "ledger is not open"),
            what="T-GONE received at lane1",
        )
        os.replace(tmp_path / "backup.db", db)
        wait_for(lambda: park.remote(1, "T-GONE") == 1, what="stored once the ledger is back")
        assert _lines(caplog, "ledger is not open")  # held, unacknowledged, while it was gone
        assert len(_lines(caplog, "sync write_failed what=ledger")) == 1
        assert len(_lines(caplog, "sync file_moved")) == 1
        assert thread.is_alive()
    finally:
        park.stop_all()


def test_an_audit_log_deleted_underneath_is_made_again_at_its_path(
    broker, office_keys, tmp_path, caplog
):
    """Before, sync's audit records went on into the deleted file. Now the log is opened again
    at its path, sync's records land there, and the lane goes on under a new epoch (its log
    went back: the office does not take the new records for a rewritten log)."""
    caplog.set_level(logging.INFO, logger=LOG)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    db = park.lanes[0].dir / "audit.db"
    try:
        s = park.start(1)
        park.wait_ready(1)
        wait_for(lambda: s._last_marks is not None, what="lane1 announced its marks")
        _delete(db)
        with OneShot(park.cfg(2), "junk") as c:
            c.publish(msg.topic(park.site, "redemptions", "lane2"), b"not a message")
        wait_for(lambda: park.audit(1, "refused"), what="the refusal in the log at the path")
        assert _lines(caplog, "sync reopened audit")
        why = [r.detail for r in park.audit(1, "new_epoch")]
        assert any("audit log went back" in w for w in why), why
        assert park.syncs[1][1].is_alive()
    finally:
        park.stop_all()


def test_a_fleet_state_deleted_underneath_is_made_again_at_its_path(
    broker, office_keys, tmp_path, caplog
):
    """Before, sync wrote the link state and the roster into the deleted fleet.db: the file at
    the path (the gate's, status's) never heard of the roster or the link again. The office's
    revocations come into the new file too: without them the lane would hold none as new as
    the office's heartbeat names, and refuse every ticket (behind_office) until it
    reconnected."""
    from edge.fleet.office import publish_revocations
    from edge.fleet.state import BEHIND_OFFICE

    caplog.set_level(logging.INFO, logger=LOG)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    db = park.lanes[0].dir / "fleet.db"
    try:
        park.start(1)
        park.wait_ready(1)
        publish_revocations(park.cfg(0), park.priv, frozenset({"T-LOST"}))
        wait_for(lambda: "T-LOST" in tk.load_revocations(park.lanes[0].dir / "revoked.txt"),
                 what="the revocation at lane1")  # fmt: skip
        _delete(db)
        since = time.time()
        wait_for(lambda: park.state(1, "roster"), what="the roster in the file at the path")
        wait_for(lambda: (park.state(1, "sync_seen") or 0) > since, what="the link state")
        wait_for(lambda: not park.state(1, "forget_replay"), what="the forget list replayed")
        wait_for(lambda: (park.state(1, "office_newest") or {}).get("revocations"),
                 what="an office heartbeat naming its newest revocation")  # fmt: skip
        time.sleep(3 * park.cfg(1).fleet.heartbeat_s)
        assert not park.state(1, BEHIND_OFFICE)
        st = FleetState(db)
        try:
            assert st.newest_revocation() == park.state(0, "revoked_seq") > 0
        finally:
            st.close()
        assert park.syncs[1][1].is_alive()
    finally:
        park.stop_all()


def test_the_gate_reads_a_fleet_state_replaced_underneath(office_keys, tmp_path, caplog):
    """The gate's view of fleet.db (LaneGuard) follows the file at the path: a new fleet.db
    whose forget list is still to be replayed refuses faces. Before, the gate went on reading
    the deleted file, and granted. A fleet.db the gate made itself at start is no move."""
    park = Park(tmp_path, "mqtt://127.0.0.1:1", office_keys, lanes=1, office=False)
    cfg = park.cfg(1)
    _delete(cfg.resolve(cfg.fleet.state_db))
    guard = LaneGuard(cfg)
    try:
        assert guard.check_faces().ok
        assert not _lines(caplog, "fleet_state_moved")
        new = tmp_path / "fleet-new.db"
        st = FleetState(new)
        st.put(forget_replay="new epoch 0123abcd: restored")
        st.close()
        db = cfg.resolve(cfg.fleet.state_db)
        _delete(db)
        os.replace(new, db)
        refused = guard.check_faces()
        assert not refused.ok and refused.reason == "forget_replay"
    finally:
        guard.close()


def test_a_double_use_the_audit_log_could_not_record_is_recorded_once_it_can(
    broker, office_keys, tmp_path, caplog, monkeypatch
):
    """lane2's redemption of a ticket lane1 let in already arrives while lane1's audit log
    refuses writes: the double_use record fails, so the message is not acknowledged. Before,
    the redemption itself was committed anyway, and when the message came again it was a
    duplicate: the double use was never recorded. Now it is, once the log takes writes."""
    caplog.set_level(logging.INFO, logger=LOG)
    monkeypatch.setattr(sync_mod, "STORE_RETRY_FIRST_S", 0.5)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s = park.start(1)
        park.wait_ready(1)
        _redeem(park, 1, "T-D1")
        _refuse_writes(s.audit)
        _queue_redemptions(park, 2, 1, "T-D")  # lane2 let T-D1 in too (cut off meanwhile)
        wait_for(lambda: _lines(caplog, "sync apply_failed"), what="the record fails")
        _refuse_writes(s.audit, on=False)
        wait_for(lambda: park.audit(1, "double_use"), what="the double use recorded")
        # the record is written before the redemption's ledger commit: wait for that too
        wait_for(lambda: park.remote(1, "T-D1") == 1, what="lane2's redemption stored")
        assert len(park.audit(1, "double_use")) == 1
    finally:
        park.stop_all()


def test_sync_stopped_while_its_state_file_refuses_writes_closes_its_files(
    broker, office_keys, tmp_path, caplog
):
    """SIGTERM's path (the loop ends, `close()` runs) while fleet.db refuses writes. Before,
    close's last state write raised: the ledger and audit log were left open and sync ended
    with a traceback. Now the write's failure is said and every file is closed."""
    caplog.set_level(logging.INFO, logger=LOG)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s = park.start(1)
        park.wait_ready(1)
        thread = park.syncs[1][1]
        _refuse_writes(s.state)
        park.stop(1)
        assert not thread.is_alive()
        for store in (s.ledger, s.audit, s.state):
            with pytest.raises(sqlite3.ProgrammingError, match="closed"):
                store.conn.execute("SELECT 1")
        assert _lines(caplog, "sync write_failed what=state")
    finally:
        park.stop_all()


def test_a_double_use_while_the_audit_log_is_gone_is_recorded_once_it_is_back(
    broker, office_keys, tmp_path, caplog, monkeypatch
):
    """The audit log deleted (space freed on a full disk) and not made again (still full):
    sync's records must not go into the deleted file. Before, the double_use record went
    there and was lost. Now the redemption's store fails (the broker holds it) until the log
    opens again at its path, and the record lands there."""
    from edge.errors import AuditError

    caplog.set_level(logging.INFO, logger=LOG)
    monkeypatch.setattr(sync_mod, "STORE_RETRY_FIRST_S", 0.5)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    db = park.lanes[0].dir / "audit.db"
    real = sync_mod.AuditLog

    def still_full(path, *a, **kw):
        raise AuditError(f"audit log {path}: database or disk is full", "free disk space")

    try:
        s = park.start(1)
        park.wait_ready(1)
        _redeem(park, 1, "T-D1")
        monkeypatch.setattr(sync_mod, "AuditLog", still_full)
        _delete(db)
        _queue_redemptions(park, 2, 1, "T-D")  # lane2 let T-D1 in too
        wait_for(  # lane1 received it while its audit log was gone (another message applied
            # meanwhile is no sign of it: only the refused record is)
            lambda: _lines(caplog, "is not open"),
            what="T-D1 from lane2 received at lane1",
        )
        monkeypatch.setattr(sync_mod, "AuditLog", real)
        wait_for(lambda: park.audit(1, "double_use"), what="recorded in the log at the path")
        wait_for(lambda: park.remote(1, "T-D1") == 1, what="lane2's redemption stored")
        assert _lines(caplog, "is not open")
        assert park.syncs[1][1].is_alive()
        assert s._audit_gone == ""
    finally:
        park.stop_all()


@pytest.mark.traceback_expected
def test_a_step_that_raises_what_no_step_foresaw_is_said_and_sync_goes_on(
    broker, office_keys, tmp_path, caplog
):
    """Before, any exception a step did not expect ended sync's loop (systemd restarted it).
    Now it is logged with its traceback once, and the next step runs; the same error coming
    back each second is said again at most once a minute (before: a line a second)."""
    caplog.set_level(logging.INFO, logger=LOG)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s = park.start(1)
        park.wait_ready(1)
        thread = park.syncs[1][1]
        real, raised = s._check_readback, []

        def unforeseen():
            if len(raised) < 3:
                raised.append(1)
                raise RuntimeError("nobody foresaw this")
            return real()

        s._check_readback = unforeseen
        _said_alive(caplog, "sync step_failed", thread)
        _queue_redemptions(park, 2, 1, "T-U")
        # the redemption is applied early in a step, the failing check comes last: it may be
        # stored while the check still fails, so both are waited for
        wait_for(
            lambda: park.remote(1) == 1 and len(raised) == 3,
            what="lane2's redemption stored at lane1 and the check failed three times",
        )
        said = [r for r in caplog.records if "sync step_failed" in r.getMessage()]
        # once with its traceback; the same error within the minute is counted, not said
        assert [bool(r.exc_info) for r in said] == [True]
        assert thread.is_alive()
    finally:
        park.stop_all()


def test_a_file_deleted_underneath_is_opened_again_once(broker, office_keys, tmp_path, caplog):
    """The audit log deleted: sync makes it again at its path. Before, the file sync had just
    made was taken for a second move a second later: opened once more and said again as
    deleted or replaced while sync ran (nobody had touched it)."""
    caplog.set_level(logging.INFO, logger=LOG)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    db = park.lanes[0].dir / "audit.db"
    try:
        s = park.start(1)
        park.wait_ready(1)
        _delete(db)
        wait_for(lambda: _lines(caplog, "sync reopened audit"), what="the audit log made again")
        since = time.time()
        wait_for(  # several of sync's one-second looks at its files since
            lambda: (park.state(1, "sync_seen") or 0) > since + 3, what="three seconds of sync"
        )
        assert len(_lines(caplog, "sync file_moved")) == 1, _lines(caplog, "sync file_moved")
        assert len(_lines(caplog, "sync reopened audit")) == 1
        assert s.audit.path == db and db.exists()
        assert park.syncs[1][1].is_alive()
    finally:
        park.stop_all()


def test_the_gate_takes_a_fleet_state_it_made_after_a_deletion_for_no_second_move(
    office_keys, tmp_path, caplog
):
    """fleet.db deleted under the gate: the gate opens (and so makes) it again at its path.
    Before, that file was taken for another replacement at the next check: opened again and
    said moved a second time."""
    park = Park(tmp_path, "mqtt://127.0.0.1:1", office_keys, lanes=1, office=False)
    cfg = park.cfg(1)
    db = cfg.resolve(cfg.fleet.state_db)
    guard = LaneGuard(cfg)
    try:
        _delete(db)
        guard.check_faces()
        assert db.exists()
        guard.check_faces()
        guard.check(time.time())
        said = _lines(caplog, "fleet_state_moved")
        assert len(said) == 1, said
    finally:
        guard.close()


def test_kept_messages_fleet_db_cannot_keep_again_are_not_lost(
    broker, office_keys, tmp_path, caplog, monkeypatch
):
    """A redemption kept aside in fleet.db (acknowledged when kept) is taken out to be tried,
    fails to store, and fleet.db then refuses to keep it again (full). Before, it was dropped
    with a log line: acknowledged and never stored. Now sync holds it and the next try
    stores it."""
    from edge.errors import LedgerError

    caplog.set_level(logging.INFO, logger=LOG)
    monkeypatch.setattr(sync_mod, "STORE_RETRY_FIRST_S", 0.5)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    db = park.lanes[0].dir / "fleet.db"
    try:
        s = park.start(1)
        park.wait_ready(1)
        st = FleetState(db)
        try:
            for topic, payload in _redemptions(park, 2, 1, "T-K"):
                st.add_pending(topic, payload, time.time())
        finally:
            st.close()
        c = sqlite3.connect(db, isolation_level=None)
        c.execute(
            "CREATE TRIGGER full BEFORE INSERT ON pending "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
        real = s._apply_redemption

        def disk_error_once(*args, **kwargs):
            s._apply_redemption = real
            raise LedgerError("disk I/O error", "free space and check the disk")

        s._apply_redemption = disk_error_once
        s._retry_pending = True  # as when the office's keys arrive
        wait_for(lambda: _lines(caplog, "could not be kept again"), what="not kept again")
        assert _kept(park, 1) == 0
        c.execute("DROP TRIGGER full")
        c.close()
        wait_for(lambda: park.remote(1) == 1, timeout=30, what="the redemption stored")
        assert _counted_twice(park, 1) == 0
        assert park.syncs[1][1].is_alive()
    finally:
        park.stop_all()


def test_the_gate_grants_no_face_from_a_fleet_state_it_made_anew(office_keys, tmp_path):
    """fleet.db deleted while the gate runs: the gate's next look makes it anew at its path,
    before sync has written the epoch and asked for the forget list again into it. Before,
    the gate granted faces from that empty file; now it waits for sync's epoch and then for
    the forget list, like a fleet.db sync made anew."""
    park = Park(tmp_path, "mqtt://127.0.0.1:1", office_keys, lanes=1, office=False)
    cfg = park.cfg(1)
    db = cfg.resolve(cfg.fleet.state_db)
    guard = LaneGuard(cfg)
    try:
        _delete(db)
        refused = guard.check_faces()
        assert db.exists()
        assert not refused.ok and refused.reason == "forget_replay", refused
        st = FleetState(db)  # sync takes the new file up: its epoch, the replay asked for
        try:
            st.put(epoch="0123abcd", forget_replay="new epoch 0123abcd: fleet.db replaced")
            assert guard.check_faces().reason == "forget_replay"
            st.put(forget_replay="")  # the office's forget list applied
        finally:
            st.close()
        assert guard.check_faces().ok
    finally:
        guard.close()


def test_a_double_use_is_recorded_once_while_fleet_db_refuses_writes(
    broker, office_keys, tmp_path, caplog, monkeypatch
):
    """lane2's redemption of a ticket lane1 let in already arrives while lane1's fleet.db
    refuses writes: the double use is recorded in the audit log, and fleet.db cannot note it
    as reported. Before, that failed the message's store (its redemption committed all the
    same), the message came again as a duplicate, and the double use was recorded again. Now
    the report is noted in memory too: the message is stored, the double use recorded once."""
    caplog.set_level(logging.INFO, logger=LOG)
    monkeypatch.setattr(sync_mod, "STORE_RETRY_FIRST_S", 0.5)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s = park.start(1)
        park.wait_ready(1)
        _redeem(park, 1, "T-E1")
        _refuse_writes(s.state)
        _queue_redemptions(park, 2, 1, "T-E")  # lane2 let T-E1 in too (cut off meanwhile)
        wait_for(lambda: park.audit(1, "double_use"), what="the double use recorded")
        _queue_redemptions(park, 2, 1, "T-F")  # a later message: the one before was handled
        wait_for(lambda: park.remote(1, "T-F1") == 1, what="the later redemption stored")
        assert not _lines(caplog, "apply_failed topic=" + msg.topic(park.site, "redemptions"))
        _refuse_writes(s.state, on=False)
        _queue_redemptions(park, 2, 1, "T-G")
        wait_for(lambda: park.remote(1, "T-G1") == 1, what="stored with fleet.db writable")
        assert len(park.audit(1, "double_use")) == 1
        assert park.remote(1, "T-E1") == 1 and _counted_twice(park, 1) == 0
    finally:
        park.stop_all()


def test_a_reused_number_the_audit_log_could_not_record_is_recorded_once_it_can(
    broker, office_keys, tmp_path, caplog, monkeypatch
):
    """lane2 numbers a second ticket with the seq of its first (its numbering went back
    without a new epoch) while lane1's audit log refuses writes: the seq_reused record fails,
    so the message is not acknowledged. Before, its redemption was committed all the same
    (the batch's transaction went on), the message came again as a duplicate, and the reused
    number was never recorded. Now a message that failed leaves nothing in the ledger: it
    comes again and is stored and recorded together."""
    caplog.set_level(logging.INFO, logger=LOG)
    monkeypatch.setattr(sync_mod, "STORE_RETRY_FIRST_S", 0.5)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    cfg2 = park.cfg(2)
    key, issuer = load_lane_key(cfg2), tk.load_private(park.priv)
    now, epoch = time.time(), uuid.uuid4().hex[:16]
    day = time.strftime("%Y-%m-%d", time.gmtime(now))

    def signed(tid: str) -> bytes:
        t = tk.Ticket(tid, "day", int(now) - 60, int(now) + 86400, tk.Kind.ONE_TIME, 1)
        body = {"ticket": tk.sign(t, issuer), "ticket_id": tid, "t": now, "day": day}
        m = msg.Message(msg.REDEMPTION, park.site, "lane2", 1, now, body, epoch=epoch)
        return msg.encode(msg.sign(m, key))

    topic = msg.topic(park.site, "redemptions", "lane2")
    try:
        s = park.start(1)
        park.wait_ready(1)
        with OneShot(cfg2, "send") as c:
            c.publish(topic, signed("T-RA"))
        wait_for(lambda: park.remote(1, "T-RA") == 1, what="the first stored")
        _refuse_writes(s.audit)
        with OneShot(cfg2, "send") as c:
            c.publish(topic, signed("T-RB"))
        wait_for(lambda: _lines(caplog, "sync apply_failed topic=" + topic), what="it fails")
        _refuse_writes(s.audit, on=False)
        wait_for(lambda: park.audit(1, "seq_reused"), timeout=30, what="the reuse recorded")
        wait_for(lambda: park.remote(1, "T-RB") == 1, what="the reused number's redemption stored")
        assert len(park.audit(1, "seq_reused")) == 1
    finally:
        park.stop_all()


def test_the_gate_says_once_that_a_damaged_fleet_state_does_not_open(office_keys, tmp_path, caplog):
    """fleet.db replaced by a file that is no database: the gate keeps the file it has and
    says so. Before, it said so (and tried to open the file again) at every check, each
    redemption and face decision: a line per decision in the journal."""
    park = Park(tmp_path, "mqtt://127.0.0.1:1", office_keys, lanes=1, office=False)
    cfg = park.cfg(1)
    db = cfg.resolve(cfg.fleet.state_db)
    guard = LaneGuard(cfg)
    try:
        junk = tmp_path / "junk.db"
        junk.write_bytes(b"not a database at all " * 100)
        _delete(db)
        os.replace(junk, db)
        for _ in range(5):
            guard.check_faces()
            guard.check(time.time())
        said = _lines(caplog, "not reopened")
        assert len(said) == 1, said
        assert "fix" in said[0] or "restore" in said[0] or "move" in said[0]
    finally:
        guard.close()


def test_heartbeats_counted_while_fleet_db_refused_them_go_on_after_a_restart(
    broker, office_keys, tmp_path
):
    """fleet.db refuses writes (a read-only card) while lane1 heartbeats: the counter goes on
    in memory, the office takes counts the file never held. Sync restarted, the file holds the
    older count: before, the restarted lane's heartbeats carried counts the office had seen,
    were taken for replays, and the lane looked stale there until the count passed the one
    seen. Now the count goes on past the lane's own heartbeat (or will, or marks) read back
    from the broker at the connection, whichever step takes it, so the first is taken."""
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    office = park.syncs[0][0]
    judged: list[tuple[float, int, bool]] = []  # lane1's heartbeats at the office: taken?
    real = office._heartbeat_in

    def watch(m: msg.Message, retained: bool, now: float) -> None:
        real(m, retained, now)
        if m.lane == "lane1":
            p = office.peers["lane1"]
            judged.append((m.time, m.seq, p.seq == m.seq and p.time == m.time))

    office._heartbeat_in = watch
    try:
        s = park.start(1)
        park.wait_ready(1)
        _refuse_writes(s.state)
        stored = park.state(1, "hb_seq") or 0
        wait_for(
            lambda: office.peers.get("lane1", sync_mod._Peer()).seq > stored + 10,
            what="ten heartbeats the office took and fleet.db did not",
        )
        park.stop(1)
        restarted = time.time()
        park.start(1)
        after = wait_for(
            lambda: [j for j in list(judged) if j[0] > restarted],
            timeout=120,
            what="the restarted lane's first heartbeat at the office",
        )
        assert after[0][2], f"taken for a replay: seq {after[0][1]}, fleet.db had {stored}"
        assert park.state(1, "hb_seq") >= after[0][1]  # the count on disk again
    finally:
        park.stop_all()


def test_a_fleet_db_locked_for_long_holds_neither_heartbeats_nor_receiving(
    broker, office_keys, tmp_path, caplog
):
    """Another process (an operator's sqlite3 shell) holds fleet.db's write lock for longer
    than sync's busy timeout (here: an hour). Before, each state write waited out the busy
    timeout (10 s by default, up to three a round: the heartbeat counter, the marks' count,
    the link state), so the lane's heartbeats came too seldom for the office and what arrived
    waited as long; here none went out while the lock was held. Now sync's writes wait for the
    lock at most a moment, then not at all until one goes through: heartbeats and receiving go
    on, the state write is tried again each second and lands once the lock is let go."""
    caplog.set_level(logging.INFO, logger=LOG)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    office = park.syncs[0][0]
    holder = None
    try:
        s, thread = _two_lanes(park)
        with s.state._lock:
            s.state.conn.execute("PRAGMA busy_timeout=3600000")
        holder = hold_write_lock(park.lanes[0].dir / "fleet.db")
        _said_alive(caplog, "sync write_failed what=state", thread)
        seq = office.peers["lane1"].seq
        wait_for(
            lambda: office.peers["lane1"].seq > seq + 5,
            timeout=120,
            what="lane1's heartbeats taken at the office while fleet.db is locked",
        )
        _redeem(park, 2, "T-IN")
        wait_for(
            lambda: park.remote(1, "T-IN") == 1,
            timeout=120,
            what="lane2's redemption stored at lane1 while fleet.db is locked",
        )
        assert holder.poll() is None  # still held
        holder.communicate("", timeout=60)
        back = time.time()
        wait_for(  # fleet.db is written before the recovery is said, in the same step
            lambda: (
                (park.state(1, "sync_seen") or 0) > back
                and _lines(caplog, "sync write_ok what=state")
            ),
            what="fleet.db written again and its recovery said",
        )
        assert len(_lines(caplog, "sync write_failed what=state")) == 1
        assert _lines(caplog, "sync write_ok what=state")
        assert thread.is_alive()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        park.stop_all()


def test_a_write_failing_and_working_in_turn_is_said_once_and_a_new_error_at_once(
    broker, office_keys, tmp_path, caplog, monkeypatch
):
    """fleet.db refusing and taking writes in turn (a card flapping between read-only and
    writable). Before, each turn logged two lines, `write_failed` and `write_ok`: two a second
    for as long as it lasted. Now the failure and the recovery are said once, the turns after
    them counted for a summary (`sync write_flapping`, at most one a window); another error
    (here the file locked) is said at once all the same."""
    caplog.set_level(logging.INFO, logger=LOG)
    monkeypatch.setattr(sync_mod, "FLAP_WINDOW_S", 3600.0, raising=False)  # one window
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    holder = None
    try:
        s = park.start(1)
        park.wait_ready(1)
        thread = park.syncs[1][1]
        for _ in range(4):
            _refuse_writes(s.state)
            wait_for(lambda: "state" in s._faults, what="the state write failed")
            _refuse_writes(s.state, on=False)
            wait_for(lambda: "state" not in s._faults, what="the state written again")
        failed = _lines(caplog, "sync write_failed what=state")
        assert len(failed) == 1 and "readonly" in failed[0], failed
        assert len(_lines(caplog, "sync write_ok what=state")) == 1
        with s.state._lock:
            s.state.conn.execute("PRAGMA busy_timeout=100")
        holder = hold_write_lock(park.lanes[0].dir / "fleet.db")
        wait_for(
            lambda: len(_lines(caplog, "sync write_failed what=state")) == 2,
            what="the new error said",
        )
        assert "locked" in _lines(caplog, "sync write_failed what=state")[1]
        assert thread.is_alive()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        park.stop_all()


def test_the_turns_of_a_flapping_write_are_summed_up_once_a_window():
    """FaultLines (pure, times given): the first failure and its end are said; the turns
    after them within the window are counted and summed up in one line when it is over; an
    error not said within the window is said at once, even while the write is failing; each
    write keeps its own count."""
    f = sync_mod.FaultLines(window_s=60.0)
    assert f.failed("state", "readonly", 0.0) and f.recovered("state")
    for t in range(2, 40, 2):
        assert not f.failed("state", "readonly", float(t))
        assert not f.recovered("state")
    assert not f.failed("state", "readonly", 40.0)
    assert not f.failed("state", "readonly", 40.5)  # the same spell: not counted again
    assert f.failed("state", "locked", 41.0)  # another error, while failing: said
    assert f.failed("outbox", "readonly", 42.0)  # another write: its own first line
    assert f.due(59.0) == []
    assert f.due(60.0) == [("state", 20, "readonly", True)]
    assert f.due(61.0) == []  # summed up: nothing more until more turns
    assert f.recovered("state")  # the locked spell was said: its end too
    assert not f.failed("state", "readonly", 63.0)  # summed up at 60 s: quiet for a window
    assert not f.recovered("state")
    assert f.due(119.0) == [] and f.due(120.0) == [("state", 1, "readonly", False)]
    assert f.failed("state", "readonly", 181.0)  # a window without a turn: said again
