"""Faults of the park office: its own store (locked, full, damaged, deleted underneath) and junk
a lane's login can send it. The office keeps running, stores nothing it cannot vouch for, never
acknowledges what it did not store, and its commands give a verdict or one line with the fix
(exit 2), never a traceback."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import edge.db as db_mod
from edge import config as config_mod
from edge.errors import FleetStateError
from edge.fleet import messages as msg
from edge.fleet.identity import load_lane_key
from edge.fleet.office import _member_view, publish_person, publish_revocations, status_problems
from edge.fleet.officestore import OfficeStore
from edge.fleet.state import FleetState
from tests.test_fleet import OneShot, Park, cli, wait_for

NO_BROKER = "mqtt://127.0.0.1:9"  # commands never connect; only sync would


def office_only(tmp_path: Path, keys) -> Park:
    """An office with two rostered lanes and no sync running: its commands and its store."""
    return Park(tmp_path, NO_BROKER, keys, lanes=2, office=False)


def office_db(park: Park) -> Path:
    return park.office.dir / "fleet.db"


@contextlib.contextmanager
def store_of(park: Park) -> Iterator[OfficeStore]:
    st = FleetState(office_db(park))
    try:
        yield OfficeStore(st)
    finally:
        st.close()


def record(rid: int, t: float | None = None, **extra) -> dict:
    r = {"id": rid, "prev": "0" * 64 if rid == 1 else f"h{rid - 1}", "hash": f"h{rid}"}
    r.update(t=time.time() if t is None else t, gate="lane1", kind="decision", decision="deny")
    r.update(extra)
    return r


def run(park: Park, *args: str):
    return cli(*args, "--config", str(park.office.config))


def one_line_error(r) -> str:
    """The command failed as the operator's mistake or environment (2), said in one line with
    the fix, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "(fix: " in err, err
    return err


# --- junk a rostered lane signs: refused, never stored, never a store failure -----------------

JUNK_RECORDS = {
    "time nan as text": record(1, t="nan"),  # type: ignore[arg-type]
    "time as text": record(1, t="1700000000"),  # type: ignore[arg-type]
    "time past float": record(1, t=10**400),
    "time true": record(1, t=True),  # type: ignore[arg-type]
    "id as text": {**record(1), "id": "1"},
    "id true": {**record(1), "id": True},
    "id zero": record(0),
    "id past SQLite": record(2**70),
    "hash a list": {**record(1), "hash": ["h1"]},
    "prev missing": {k: v for k, v in record(1).items() if k != "prev"},
    "not an object": ["id", 1],
}


@pytest.mark.parametrize("name", JUNK_RECORDS)
def test_an_audit_record_of_the_wrong_shape_is_refused_and_nothing_is_stored(
    tmp_path, office_keys, name
):
    """Each is refused as junk before anything is written. Before, an id given as text, true
    or 0, a time given as text or true, a hash that is a list were stored as they came (and
    shown by `fleet audit`); a time "nan" was dropped silently by INSERT OR IGNORE's NOT NULL
    and refused only by the TypeError that followed."""
    park = office_only(tmp_path, office_keys)
    with store_of(park) as store:
        with pytest.raises(msg.MessageError):
            store.store_audit("lane1", "e1", [record(1), JUNK_RECORDS[name]], time.time())
        assert store.audit_rows() == []  # not even the good record beside it


def test_a_record_naming_another_lane_is_shown_as_its_signers(tmp_path, office_keys):
    """`fleet audit` names the lane whose key signed the records; before, a field "lane" (or
    "seq", "epoch") inside a record replaced it: lane1 could write lines shown as lane2's."""
    park = office_only(tmp_path, office_keys)
    with store_of(park) as store:
        store.store_audit(
            "lane1", "e1", [record(1, lane="lane2", seq=99, epoch="forged")], time.time()
        )
    r = run(park, "fleet", "audit", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (row["lane"], row["seq"], row["epoch"]) == ("lane1", 1, "e1")


@pytest.mark.parametrize("t", [1e300, -1e300, 253402300800.0])  # past the year 9999
def test_fleet_audit_prints_a_record_whose_time_no_calendar_holds(tmp_path, office_keys, t):
    """A lane whose clock is years off (or that lies) signs records with such times: they are
    kept as sent (the lane's hash covers them) and printed as the number. Before, the text
    listing stopped at that line with an internal error."""
    park = office_only(tmp_path, office_keys)
    with store_of(park) as store:
        store.store_audit("lane1", "e1", [record(1, t=t), record(2)], time.time())
    r = run(park, "fleet", "audit")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2 and "lane1" in r.stdout
    r = run(park, "fleet", "audit", "verify", "--json")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    assert {json.loads(line)["lane"] for line in r.stdout.splitlines()} >= {"lane1"}


def test_fleet_audit_verify_gives_a_verdict_on_records_stored_before_they_were_checked(
    tmp_path, office_keys
):
    """A store from before records were checked on arrival may hold one whose time is text:
    verify calls it broken (its content cannot be hashed) instead of stopping."""
    park = office_only(tmp_path, office_keys)
    with store_of(park) as store:
        store.store_audit("lane1", "e1", [record(1), record(2)], time.time())
        with store.state.transaction() as c:
            c.execute(
                "UPDATE audit_records SET record = ? WHERE id = 2",
                (json.dumps({"t": "soon", "kind": "decision"}),),
            )
    r = run(park, "fleet", "audit", "verify", "--json")
    assert r.returncode == 1, (r.stdout, r.stderr)
    lane1 = next(json.loads(x) for x in r.stdout.splitlines() if '"lane1"' in x)
    assert any("record 2" in b for b in lane1["broken"]), lane1


def test_fleet_status_shows_a_lane_whose_heartbeat_carries_junk(tmp_path, office_keys):
    """A rostered lane's signed heartbeat with a clock offset that is text: status prints "?"
    for it. Before, the text view stopped with an internal error at that lane."""
    park = office_only(tmp_path, office_keys)
    st = FleetState(office_db(park))
    try:
        seen = {"epoch": "e1", "time": time.time(), "received": time.time(), "gone": ""}
        body = {"clock_offset": "soon", "fps": [1], "outbox": {"n": 1}, "period": "x"}
        st.put(peers={"lane1": {**seen, "body": body}}, sync_seen=time.time())
    finally:
        st.close()
    r = run(park, "fleet", "status")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.strip().startswith("lane1"))
    assert "clock ?" in line


@pytest.mark.parametrize("ahead_s", [60.0, 3e9])
def test_a_heartbeat_dated_far_ahead_keeps_no_dead_lane_alive(ahead_s):
    """A retained heartbeat counts from its own time. Before, one a lane signed with its clock
    ahead (a minute, or a century) made the lane "ok" until that time came, however long ago
    it died: `fleet status --check` passed. Now it is stale with its clock off."""
    now = 1_000_000.0
    v = _member_view({"received": now + ahead_s, "body": {}}, now, 5.0, True, 5.0)
    assert v["state"] == "stale" and v["clock_off"] is True
    rep = {"lanes": {"lane1": v}, "clock": {"off": []}, "sync": {"running": True}}
    assert any("lane1: stale" in p for p in status_problems(rep | {"member": "office"}))
    v = _member_view({"received": now + 1.0, "body": {}}, now, 5.0, True, 5.0)
    assert v["state"] == "ok"  # a second ahead: within what a clock may be off


def test_junk_records_from_a_lane_are_refused_not_retried_and_its_good_ones_kept(
    broker, office_keys, tmp_path
):
    """Through the broker: lane1's login publishes, signed with lane1's key, records whose
    time is "nan", then good ones. The office refuses the junk (acknowledged, audited as
    refused) and keeps the good ones; it never takes the junk for its own store failing."""
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    try:
        cfg = park.cfg(1)
        key = load_lane_key(cfg)
        topic = msg.topic(park.site, "audit", "lane1")

        def signed(seq: int, records: list[dict]) -> bytes:
            body = {"records": records}
            m = msg.Message(msg.AUDIT, park.site, "lane1", seq, time.time(), body, epoch="e1")
            return msg.encode(msg.sign(m, key))

        wait_for(lambda: park.state(0, "connected"), what="office connected")
        with OneShot(cfg, "attacker") as c:
            c.publish(topic, signed(1, [record(1, t="nan")]))  # type: ignore[arg-type]
            c.publish(topic, signed(2, [record(1), record(2)]))

        def kept() -> list[int]:
            with store_of(park) as store:
                return [r["seq"] for r in store.audit_rows()]

        wait_for(lambda: kept() == [1, 2], what="the good records stored")
        wait_for(lambda: park.audit(0, "refused"), what="the junk refused")
        assert park.audit(0, "apply_failed") == []
        assert park.syncs[0][1].is_alive()
    finally:
        park.stop_all()


# --- the office's own store --------------------------------------------------------------------


def test_records_that_arrive_while_the_store_is_deleted_come_again_after_a_restore(
    broker, office_keys, tmp_path
):
    """The office's fleet.db deleted while its sync runs (a backup of it taken just before),
    lane1 sends records, the backup is put back and sync restarted. Before, the running sync
    stored them in the deleted file and acknowledged them: gone with it. Now it refuses to
    store (apply_failed, not acknowledged) and the broker delivers them again after the
    restart."""
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    try:
        cfg = park.cfg(1)
        key = load_lane_key(cfg)
        db = office_db(park)
        wait_for(lambda: park.state(0, "connected"), what="office connected")
        backup = tmp_path / "backup.db"
        with (
            contextlib.closing(sqlite3.connect(db)) as src,
            contextlib.closing(sqlite3.connect(backup)) as dst,
        ):
            src.backup(dst)
        for f in db.parent.glob("fleet.db*"):
            f.unlink()
        body = {"records": [record(1), record(2)]}
        m = msg.Message(msg.AUDIT, park.site, "lane1", 2, time.time(), body, epoch="e1")
        with OneShot(cfg, "attacker") as c:
            c.collect([msg.audit_ack_topic(park.site, "lane1")], quiet_s=0.0)
            c.publish(msg.topic(park.site, "audit", "lane1"), msg.encode(msg.sign(m, key)))
            wait_for(
                lambda: park.audit(0, "apply_failed") or c.messages,
                what="the office refused to store, or acknowledged",
            )
        park.stop(0)
        for f in db.parent.glob("fleet.db*"):
            f.unlink()
        backup.rename(db)
        park.start(0)

        def kept() -> list[int]:
            with store_of(park) as store:
                return [r["seq"] for r in store.audit_rows() if r["epoch"] == "e1"]

        wait_for(lambda: kept() == [1, 2], what="the records delivered again and stored")
    finally:
        park.stop_all()


def test_a_forget_the_store_cannot_list_is_not_queued_either(tmp_path, office_keys):
    """The forget message and the forget list are one transaction. Before, the message was
    committed to the queue first: a store failing just then (here an injected SQLite error)
    sent the deletion to the lanes, but the forget list replayed to every new or restored lane
    lacked the person, so a lane restored later would grant them by face."""
    park = office_only(tmp_path, office_keys)
    cfg = config_mod.load(park.office.config)
    with store_of(park) as store:
        before = store.outgoing(0, 10_000)
        with store.state.transaction() as c:
            c.execute(
                "CREATE TRIGGER full BEFORE INSERT ON forgotten "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
    with pytest.raises(FleetStateError, match="full"):
        publish_person(cfg, park.priv, "p-123", "forget")
    with store_of(park) as store:
        assert store.outgoing(0, 10_000) == before
        assert store.people() == {}
        with store.state.transaction() as c:
            c.execute("DROP TRIGGER full")
    publish_person(cfg, park.priv, "p-123", "forget")  # room again: queued and listed
    with store_of(park) as store:
        assert store.forgotten() == ["p-123"]
        assert store.people()["p-123"][0] == "forget"


def test_a_queue_the_store_cannot_clear_is_cleared_later_not_fatal(tmp_path, office_keys, caplog):
    """The broker acknowledged an office message, and the store cannot drop it from the queue
    just now (full, locked): before, a raw sqlite3 error ended the office's sync; now it is
    logged, the row stays queued, and it is dropped with the next acknowledgement."""
    park = office_only(tmp_path, office_keys)
    with store_of(park) as store:
        ids = [r[0] for r in store.outgoing(0, 10)]
        assert ids
        with store.state.transaction() as c:
            c.execute(
                "CREATE TRIGGER full BEFORE DELETE ON office_out "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        store.sent(ids)
        assert [r[0] for r in store.outgoing(0, 10)] == ids
        assert "office queue_not_cleared" in caplog.text
        with store.state.transaction() as c:
            c.execute("DROP TRIGGER full")
        store.sent([])
        assert store.outgoing(0, 10) == []


def test_an_audit_message_on_a_full_store_is_not_acknowledged(tmp_path, office_keys):
    """SQLite's page limit on the office's connection stands in for a full disk: storing
    fails as the store's typed error with the fix (so sync does not acknowledge it and the
    broker delivers it again), and once there is room the same records are stored."""
    park = office_only(tmp_path, office_keys)
    with store_of(park) as store:
        big = [record(i, detail="x" * 2000) for i in range(1, 200)]
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count={pages}")
        with pytest.raises(FleetStateError, match="full") as e:
            store.store_audit("lane1", "e1", big, time.time())
        assert "free disk space" in str(e.value)
        assert store.audit_rows() == []
        store.conn.execute("PRAGMA max_page_count=1073741823")
        assert store.store_audit("lane1", "e1", big, time.time()) == (1, 199, "h199")


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_deleted_or_replaced_underneath_stores_and_acknowledges_nothing(
    tmp_path, office_keys, how
):
    """Before, the running office kept writing into the file it held open: records stored in
    a deleted fleet.db (and acknowledged to the lanes, which then forget them) were gone at the
    next restart. Now nothing is stored until sync runs on the file at the path; the error
    says to put it back and restart."""
    park = office_only(tmp_path, office_keys)
    db = office_db(park)
    st = FleetState(db)
    try:
        store = OfficeStore(st)
        assert store.store_audit("lane1", "e1", [record(1)], time.time()) == (1, 1, "h1")
        for f in db.parent.glob("fleet.db*"):
            f.rename(f.with_name("aside-" + f.name))
        if how == "replaced":
            FleetState(db).close()
        with pytest.raises(FleetStateError, match=how) as e:
            store.store_audit("lane1", "e1", [record(2)], time.time())
        assert "restart edge-gate sync" in str(e.value)
        with pytest.raises(FleetStateError, match=how):
            store.store_head("lane1", "e1", 2, "h2", time.time())
    finally:
        st.close()


# --- the office's commands on a damaged, foreign or missing store ------------------------------


def damage(db: Path) -> None:
    """Overwrite the file's pages after the first (the header and schema stay readable)."""
    with db.open("r+b") as f:
        size = f.seek(0, 2)
        page = 4096
        for off in range(2 * page, size, page):
            f.seek(off)
            f.write(b"\xa5" * page)


def fill(park: Park) -> None:
    with store_of(park) as store:
        store.store_audit("lane1", "e1", [record(i, detail="y" * 500) for i in range(1, 400)], 1.0)
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.parametrize(
    "cmd",
    [("fleet", "audit"), ("fleet", "audit", "verify"), ("fleet", "status")],
    ids=["audit", "verify", "status"],
)
def test_office_commands_on_a_damaged_store_say_so_in_one_line(tmp_path, office_keys, cmd):
    """Pages of the office's fleet.db damaged: before, `fleet audit` and `fleet audit verify`
    ended with an internal error (exit 70, a raw sqlite3 error); now exit 2 with the fix."""
    park = office_only(tmp_path, office_keys)
    fill(park)
    damage(office_db(park))
    err = one_line_error(run(park, *cmd))
    assert "malformed" in err or "not a database" in err or "damaged" in err


def test_an_office_store_that_is_no_database_is_not_to_be_moved_aside(tmp_path, office_keys):
    """The office's fleet.db holds what only the office has (the lanes' audit records, the
    forget list): its commands say restore it from backup, never move it aside."""
    park = office_only(tmp_path, office_keys)
    db = office_db(park)
    for f in db.parent.glob("fleet.db-*"):
        f.unlink()
    db.write_bytes(b"this is no database " * 500)
    for cmd in (("fleet", "audit"), ("fleet", "status")):
        err = one_line_error(run(park, *cmd))
        assert "restore it from backup" in err and "sync rebuilds" not in err, err


def test_an_office_command_on_a_store_held_by_another_process_says_so(
    tmp_path, office_keys, monkeypatch
):
    """A revocation to publish while another process holds the store's write lock past the
    busy timeout: the error says another process holds it, nothing is half queued. Before, it
    added the lane's fix, "move it aside; sync rebuilds it": at the office that throws away
    the lanes' audit records and the forget list."""
    park = office_only(tmp_path, office_keys)
    cfg = config_mod.load(park.office.config)
    with store_of(park) as store:
        before = store.outgoing(0, 10_000)
    holder = sqlite3.connect(office_db(park), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        monkeypatch.setitem(db_mod.connect.__kwdefaults__, "timeout_s", 0.2)  # not 10 s
        with pytest.raises(FleetStateError, match="another process holds") as e:
            publish_revocations(cfg, park.priv, frozenset({"T-1"}))
        assert "move it aside" not in str(e.value).replace("never move it aside", "")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with store_of(park) as store:
        assert store.outgoing(0, 10_000) == before
        assert store.revocation_lists() == ({}, {})


def test_an_office_store_from_a_newer_edge_gate_is_refused_unchanged(tmp_path, office_keys):
    """The office tables carry their version: a file a newer edge-gate wrote is refused by the
    commands and by the office's sync at start, with the fix, and left as it was. Before, this
    one wrote its rows into tables it did not know the shape of."""
    park = office_only(tmp_path, office_keys)
    st = FleetState(office_db(park))
    try:
        st.put(office_schema=2)
    finally:
        st.close()
    for cmd in (("fleet", "audit"), ("fleet", "audit", "verify"), ("fleet", "status")):
        err = one_line_error(run(park, *cmd))
        assert "newer edge-gate" in err and "upgrade edge-gate at the office" in err, err
    err = one_line_error(cli("sync", "--config", str(park.office.config)))
    assert "newer edge-gate" in err
    st = FleetState(office_db(park))
    try:
        assert st.get("office_schema") == 2
    finally:
        st.close()


def test_office_audit_commands_on_a_missing_store_say_so_and_make_none(tmp_path, office_keys):
    """`fleet audit verify` on an office whose fleet.db is gone: before, it made an empty one
    and reported nothing wrong (exit 0); now one line with the fix, exit 2, no file made."""
    park = office_only(tmp_path, office_keys)
    for f in park.office.dir.glob("fleet.db*"):
        f.unlink()
    for cmd in (("fleet", "audit", "verify"), ("fleet", "audit")):
        err = one_line_error(run(park, *cmd))
        assert "no office store" in err and "restore it from backup" in err
    assert not office_db(park).exists()


def test_a_conflicting_record_replayed_is_one_finding(tmp_path, office_keys):
    """Record 1 arrives again with another hash, then that message is replayed (or delivered
    again) many times: verify names the rewrite once. Before, each replay added a conflict row
    and a line, so a lane could flood the office's store and verify's report."""
    park = office_only(tmp_path, office_keys)
    with store_of(park) as store:
        store.store_audit("lane1", "e1", [record(1)], time.time())
        for _ in range(5):
            store.store_audit("lane1", "e1", [{**record(1), "hash": "other"}], time.time())
        store.store_audit("lane1", "e1", [{**record(1), "hash": "third"}], time.time())
    r = run(park, "fleet", "audit", "verify", "--json")
    lane1 = next(json.loads(x) for x in r.stdout.splitlines() if '"lane1"' in x)
    rewrites = [b for b in lane1["broken"] if "arrived again with another hash" in b]
    assert len(rewrites) == 2, lane1  # "other" once, "third" once


def test_a_store_unreadable_after_queueing_is_no_failure_of_what_was_queued(
    tmp_path, office_keys, capsys
):
    """A revocation (or an override) was queued and committed; reading whether sync has sent
    it then finds no store (deleted underneath). Before, the command ended with an error
    (exit 2) though it was queued, and running it again queued it twice (an override: the lane
    opened twice); and a store missing was made anew, empty, and the message called published.
    Now it says it is queued and not to queue it again. (A store locked by a writer is read:
    test_read_only_office_commands_answer_while_a_write_is_held.)"""
    from edge.cli.fleet import report_sent

    park = office_only(tmp_path, office_keys)
    cfg = config_mod.load(park.office.config)
    publish_revocations(cfg, park.priv, frozenset({"T-1"}))
    for f in park.office.dir.glob("fleet.db*"):
        f.unlink()
    report_sent(cfg, "1 revocation(s)", 0.5)
    out = capsys.readouterr().out
    assert "queued 1 revocation(s), signed" in out and "do not queue it again" in out
    assert not office_db(park).exists()


def test_a_signed_head_the_store_refused_is_stored_when_its_heartbeat_comes_again():
    """Before: the peer's sequence moved on before its head was stored, so a head the store
    refused (the heartbeat left unacknowledged) was taken for a replay when the broker delivered
    it again, and never stored: `fleet audit verify` lacked the head that vouches for records."""
    from types import SimpleNamespace

    from edge.fleet import messages as msg
    from edge.fleet.sync import Sync

    class Store:
        def __init__(self) -> None:
            self.heads: list[tuple] = []
            self.fail = 1

        def store_head(self, *head) -> None:
            if self.fail:
                self.fail -= 1
                raise FleetStateError("office store locked", "wait")
            self.heads.append(head)

    store = Store()
    member = SimpleNamespace(peers={}, store=store)
    body = {"evidence": {"audit": {"count": 5, "head": "h5"}}}
    m = msg.Message("heartbeat", "site", "lane1", 7, 100.0, body, epoch="e1")
    with pytest.raises(FleetStateError):
        Sync._heartbeat_in(member, m, False, 101.0)  # type: ignore[arg-type]
    Sync._heartbeat_in(member, m, False, 102.0)  # type: ignore[arg-type]  # delivered again
    assert store.heads == [("lane1", "e1", 5, "h5", 100.0)]
    Sync._heartbeat_in(member, m, False, 103.0)  # type: ignore[arg-type]  # a true replay now
    assert len(store.heads) == 1


def test_a_fleet_state_locked_at_open_is_said_locked_not_unreadable(tmp_path, monkeypatch):
    """A lane's fleet.db held by another process when sync or the gate opens it: the fix says
    another process holds it. Before: "move it aside; sync rebuilds it" for a file that was
    only busy (moving it would cost the lane its roster, epoch and forget list). A file that
    has every table opens without the write lock; one made by an older edge-gate (a table
    missing) takes it to add the table."""
    db = tmp_path / "fleet.db"
    older = sqlite3.connect(db)
    older.execute("PRAGMA journal_mode=WAL")
    older.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)")
    older.close()
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        monkeypatch.setitem(db_mod.connect.__kwdefaults__, "timeout_s", 0.2)
        with pytest.raises(FleetStateError) as e:
            FleetState(db)
        assert "another process holds" in e.value.hint and "move it aside" not in e.value.hint
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_queue_row_not_cleared_at_its_acknowledgement_is_cleared_without_another(
    broker, office_keys, tmp_path, caplog
):
    """The office's sync has the broker's acknowledgement for a queued forget while the store
    refuses the DELETE (full). Before, the row stayed queued until some later office message
    was acknowledged: `wait_sent` said not sent (an operator told so queues it again) and a
    restart sent it again. Now the office's sync drops it itself once the store takes writes."""
    caplog.set_level(logging.INFO)
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    try:
        wait_for(lambda: park.syncs[0][0].connected, what="the office's sync connected")
        c = sqlite3.connect(office_db(park), isolation_level=None)
        c.execute(
            "CREATE TRIGGER full BEFORE DELETE ON office_out "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
        publish_person(park.cfg(0), park.priv, "p-9", "forget")
        wait_for(lambda: "office queue_not_cleared" in caplog.text, what="the DELETE refused")
        c.execute("DROP TRIGGER full")
        c.close()

        def queue() -> list:
            with store_of(park) as store:
                return store.outgoing(0, 10)

        wait_for(lambda: not queue(), timeout=30, what="the row dropped")
        assert park.syncs[0][1].is_alive()
    finally:
        park.stop_all()


# --- reading while a write is held ------------------------------------------------------------


def chain(n: int, lane: str = "lane1") -> list[dict]:
    """Records 1..n as a lane's sync sends them: each hash the plain chain hash of its fields."""
    from edge.gate.audit import AuditRecord, record_hash

    out, prev = [], "0" * 64
    for rid in range(1, n + 1):
        r = AuditRecord(1_700_000_000.0 + rid, lane, "decision", "deny", "face", "", None, "", "")
        h = record_hash(prev, rid, r)
        out.append(
            {
                "id": rid,
                "prev": prev,
                "hash": h,
                "t": r.t,
                "gate": lane,
                "kind": "decision",
                "decision": "deny",
                "via": "face",
            }
        )
        prev = h
    return out


def test_read_only_office_commands_answer_while_a_write_is_held(tmp_path, office_keys, capsys):
    """`fleet status`, `fleet audit`, `fleet audit verify` and the check whether a queued
    message was sent only read the office's store. Before, each opened it as a writer (schema
    in a write transaction): while the office's sync, or a shell, held a write they waited the
    whole busy timeout and failed "another process holds the file". Now they read the last
    committed state at once (WAL lets readers through)."""
    from edge.cli.fleet import report_sent
    from tests.helpers import hold_write_lock

    park = office_only(tmp_path, office_keys)
    cfg = config_mod.load(park.office.config)
    publish_person(cfg, park.priv, "p-1", "forget")
    recs = chain(3)
    with store_of(park) as store:
        store.store_audit("lane1", "e1", recs, time.time())
        store.store_head("lane1", "e1", 3, recs[-1]["hash"], recs[-1]["t"] + 1)
        store.store_ack("lane1", "p-1", "forget", 10**6, time.time())
        store.state.put(peers={"lane1": {"epoch": "e1", "received": time.time(), "body": {}}})
    holder = hold_write_lock(office_db(park))
    try:
        r = run(park, "fleet", "status", "--json")
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["lanes"]["lane1"]["state"] == "ok"
        assert rep["people"]["p-1"]["lanes_done"] == ["lane1"]
        r = run(park, "fleet", "audit", "--json")
        assert r.returncode == 0, r.stderr
        assert [json.loads(x)["seq"] for x in r.stdout.splitlines()] == [1, 2, 3]
        r = run(park, "fleet", "audit", "verify", "--json")
        assert r.returncode == 0, r.stderr
        lane1 = next(json.loads(x) for x in r.stdout.splitlines() if '"lane1"' in x)
        assert lane1["ok"] and lane1["broken"] == []
        capsys.readouterr()
        report_sent(cfg, "the deletion", 0.2)  # queued, sync not running: not sent
        out = capsys.readouterr().out
        assert "queued the deletion, signed: the office's `edge-gate sync` sends it" in out, out
    finally:
        holder.communicate("")
    assert "holds the file" not in r.stderr


def test_doctor_reads_the_lanes_fleet_state_while_a_write_is_held(tmp_path, office_keys):
    """`edge-gate doctor`'s fleet check only reads the lane's fleet.db. Before, it opened it as
    a writer (schema in a write transaction): while sync held a write it waited the busy
    timeout and failed "another process holds the file". Now it reads the last committed link
    state at once, and makes no file where there is none."""
    from edge.gate.doctor import CHECKS, Site
    from edge.lab.workspace import write_member
    from tests.helpers import hold_write_lock

    m = write_member(tmp_path, "lane1", NO_BROKER, "park", office_keys[1])
    cfg = config_mod.load(m.config)
    db = cfg.resolve(cfg.fleet.state_db)
    fleet_check = dict(CHECKS)["fleet"]
    site = Site(cfg, tmp_path / "g.db", tmp_path / "g.key")
    assert not db.exists()
    res = fleet_check(site)
    assert res.status == "warn" and res.detail.endswith("sync not connected"), res
    assert not db.exists()  # read only: nothing made
    st = FleetState(db)
    st.put(connected=True, last_contact=time.time(), clock_offset=0.4)
    st.close()
    holder = hold_write_lock(db)
    try:
        res = fleet_check(site)
    finally:
        holder.communicate("")
    detail = getattr(res, "detail", res)
    assert "holds the file" not in detail, res
    assert detail.endswith("connected, clock vs fleet +0.4 s"), res


def test_doctors_ledger_check_answers_while_sync_holds_a_write_on_fleet_db(tmp_path, office_keys):
    """The ledger of a fleet lane opens with the lane's fleet link (LaneGuard), which opened
    fleet.db with its schema in a write transaction every time: doctor's "ticket ledger"
    check (and `ticket verify`, the gate's start) waited the busy timeout while sync held a
    write, then failed. A file whose tables are all there is opened without the write lock."""
    from edge.gate.doctor import CHECKS, Site
    from edge.lab.workspace import write_member
    from tests.helpers import hold_write_lock

    m = write_member(tmp_path, "lane1", NO_BROKER, "park", office_keys[1])
    cfg = config_mod.load(m.config)
    ledger_check = dict(CHECKS)["ticket ledger"]
    site = Site(cfg, tmp_path / "g.db", tmp_path / "g.key")
    first = ledger_check(site)  # makes the ledger and fleet.db, as the gate's first run does
    assert "0 redemptions" in getattr(first, "detail", first), first
    holder = hold_write_lock(cfg.resolve(cfg.fleet.state_db))
    try:
        res = ledger_check(site)
    finally:
        holder.communicate("")
    assert getattr(res, "detail", res) == getattr(first, "detail", first), res


# --- what a rostered lane can make the office keep ---------------------------------------------


def kept_rows(park: Park) -> dict[str, int]:
    with store_of(park) as store:
        q = store.conn.execute
        return {
            t: q(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 (table names above)
            for t in ("audit_heads", "acks", "audit_conflicts", "audit_records")
        }


def test_a_rostered_lane_cannot_grow_the_office_store_without_bound(broker, office_keys, tmp_path):
    """Through the broker, with lane1's and lane2's own keys: lane1 sends its log in audit
    messages and a heartbeat after each record (each with a new signed head), and
    acknowledgements for people the office never sent; lane2 sends record 1 again and again,
    each time with another hash. Before, every head, every such acknowledgement and every
    other hash was a row of its own for good. Now a second round of as many messages adds only
    the new records: heads the records vouch for are dropped, acknowledgements of nothing the
    office sent are refused, conflicts stop at the limit (counted); lane1's log still
    verifies, lane2's is BROKEN."""
    from edge.fleet.officestore import CONFLICTS_PER_LANE

    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    n = 120
    recs = chain(2 * n)
    try:
        publish_person(park.cfg(0), park.priv, "p-1", "forget")
        with store_of(park) as store:
            sent_seq = store.people()["p-1"][1]
        wait_for(lambda: park.state(0, "connected"), what="office connected")

        def signed(lane: int, type_: str, seq: int, body: dict, t: float) -> bytes:
            key = load_lane_key(park.cfg(lane))
            m = msg.Message(type_, park.site, f"lane{lane}", seq, t, body, epoch="e1")
            return msg.encode(msg.sign(m, key))

        def round_(first: int) -> None:
            t0 = 1_700_000_000.0
            with OneShot(park.cfg(1), "lane1-test") as c1, OneShot(park.cfg(2), "lane2-test") as c2:
                for i in range(first, first + n):
                    r = recs[i - 1]
                    c1.publish(
                        msg.topic(park.site, "audit", "lane1"),
                        signed(1, msg.AUDIT, i, {"records": [r]}, t0 + i),
                    )
                    audit = {"count": i, "head": r["hash"]}
                    c1.publish(
                        msg.topic(park.site, "heartbeat", "lane1"),
                        signed(1, msg.HEARTBEAT, i, {"evidence": {"audit": audit}}, t0 + i + 0.5),
                    )
                    pid = f"p-junk-{i}"
                    ack = {"person_id": pid, "op": "forget", "office_seq": 1}
                    c1.publish(
                        msg.topic(park.site, "acks", "lane1", pid),
                        signed(1, msg.ACK, i, ack, t0 + i),
                    )
                    other = {**recs[0], "hash": f"other-{i}"} if i > 1 else recs[0]
                    c2.publish(
                        msg.topic(park.site, "audit", "lane2"),
                        signed(2, msg.AUDIT, i, {"records": [other]}, t0 + i),
                    )
                # the last of each lane's messages: taken, so every one before it was
                last = {**chain(first + n, "lane2")[-1], "hash": "last"}
                c2.publish(
                    msg.topic(park.site, "audit", "lane2"),
                    signed(2, msg.AUDIT, first + n, {"records": [last]}, t0),
                )
                ack = {"person_id": "p-1", "op": "forget", "office_seq": sent_seq}
                c1.publish(
                    msg.topic(park.site, "acks", "lane1", "p-1"),
                    signed(1, msg.ACK, first + n, ack, t0),
                )

            def done() -> bool:
                with store_of(park) as store:
                    got = {(r["lane"], r["seq"]) for r in store.audit_rows()}
                    return (
                        {("lane1", i) for i in range(1, first + n)} <= got
                        and ("lane2", first + n) in got
                        and "lane1" in store.acks("p-1")
                    )

            wait_for(done, timeout=120, what="every message of the round taken")

        round_(1)
        wait_for(lambda: park.state(0, "peers").get("lane1", {}).get("body"), what="heartbeats")
        first = kept_rows(park)
        assert first["audit_heads"] <= 2 and first["acks"] == 1, first
        assert first["audit_conflicts"] == CONFLICTS_PER_LANE, first
        round_(n + 1)
        second = kept_rows(park)
        # lane1's new records and lane2's last one
        assert second["audit_records"] == first["audit_records"] + n + 1
        assert {k: v for k, v in second.items() if k != "audit_records"} == {
            k: v for k, v in first.items() if k != "audit_records"
        }
        r = run(park, "fleet", "audit", "verify", "--json")
        found = {json.loads(x)["lane"]: json.loads(x) for x in r.stdout.splitlines()}
        assert found["lane1"]["ok"] and not found["lane1"]["notes"], found["lane1"]
        assert not found["lane2"]["ok"]
        assert any("more conflicts not kept" in x for x in found["lane2"]["notes"]), found["lane2"]
    finally:
        park.stop_all()


def test_the_heads_dropped_change_no_finding_of_verify():
    """`redundant_heads` drops only heads verify learns nothing from: over many lanes' worth of
    heads (counts going on, going back, some not matching the record, some ahead of the
    records), verify's findings are the same with them as without them."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from edge.fleet.officestore import LaneEvidence, redundant_heads, verify_lane
    from tests.helpers import fuzz

    recs = chain(12)
    rows = [("e1", r["id"], r["prev"], r["hash"], 0.0) for r in recs]
    hashes = {r["id"]: r["hash"] for r in recs}

    @settings(max_examples=fuzz(300), deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 15), st.booleans()), min_size=1, max_size=30))
    def check(seq):
        heads = [
            ("e1", n, hashes.get(n, "x") if good else "bad", float(t))
            for t, (n, good) in enumerate(seq)
        ]
        marked = [(i, n, hashes.get(n) == h) for i, (_, n, h, _) in enumerate(heads)]
        drop = set(redundant_heads(marked))
        kept = [h for i, h in enumerate(heads) if i not in drop]
        before = sorted(f.text for f in verify_lane(LaneEvidence("lane1", rows, heads, [])))
        after = sorted(f.text for f in verify_lane(LaneEvidence("lane1", rows, kept, [])))
        assert before == after

    check()


def test_a_lane_gets_no_epoch_past_the_limit_and_no_ack_of_nothing_sent(
    tmp_path, office_keys, monkeypatch
):
    """A lane that sends each message under a new epoch, or acknowledges people the office
    never sent: refused as junk, never stored; its epochs within the limit go on."""
    import edge.fleet.officestore as officestore

    monkeypatch.setattr(officestore, "EPOCHS_PER_LANE", 3)
    park = office_only(tmp_path, office_keys)
    with store_of(park) as store:
        store.store_audit("lane1", "e1", [record(1)], time.time())
        store.store_head("lane1", "e2", 0, "", time.time())
        store.store_audit("lane1", "e3", [record(1)], time.time())
        with pytest.raises(msg.MessageError, match="new epoch"):
            store.store_head("lane1", "e4", 1, "h1", time.time())
        with pytest.raises(msg.MessageError, match="new epoch"):
            store.store_audit("lane1", "e4", [record(1)], time.time())
        with pytest.raises(msg.MessageError, match="epoch of"):
            store.store_audit("lane2", "e" * 65, [record(1)], time.time())
        assert store.store_audit("lane1", "e1", [record(2)], time.time()) == (1, 2, "h2")
        store.store_head("lane2", "e4", 1, "h1", time.time())  # another lane's own count
        with pytest.raises(msg.MessageError, match="sent no such"):
            store.store_ack("lane1", "p-never", "forget", 1, time.time())
        assert store.conn.execute("SELECT count(*) FROM acks").fetchone()[0] == 0
        epochs = store.conn.execute("SELECT DISTINCT epoch FROM audit_heads WHERE lane = 'lane1'")
        assert [e for (e,) in epochs] == ["e2"]


# --- the office's own commands on junk arguments ------------------------------------------------


ROSTER_JUNK = {
    "topic level": ("add", "lane/9"),
    "wildcard": ("add", "#"),
    "space": ("add", "bad lane"),
    "newline": ("add", "lane\n9"),
    "empty": ("add", ""),
    "too long": ("add", "x" * 65),
    "the office": ("add", "office"),
}
ROSTER_USAGE = {  # the command line's own refusals: one line, exit 2, and where the usage is
    "remove nothing": ("remove",),
    "show extra": ("show", "lane1"),
    "publish extra": ("publish", "lane1"),
}


@pytest.mark.parametrize("name", [*ROSTER_JUNK, *ROSTER_USAGE])
def test_the_roster_takes_no_lane_name_a_topic_cannot_carry(tmp_path, office_keys, name):
    """`fleet roster add` with a name MQTT topics and the broker's ACL cannot carry (a level
    separator, a wildcard, a newline that would add a line to the ACL), or "office" (which
    put a lane's key in the office's place in the roster published), and roster actions
    given lanes they do not take: one line with the fix, nothing written or queued. Before,
    each was written to the roster and published signed."""
    park = office_only(tmp_path, office_keys)
    action, *items = {**ROSTER_JUNK, **ROSTER_USAGE}[name]
    roster = park.office.dir / "var" / "fleet-roster.json"
    before = roster.read_bytes()
    with store_of(park) as store:
        queued = store.outgoing(0, 10_000)
    pub = load_lane_key(park.cfg(1)).public_key()
    from edge.fleet.identity import public_text

    args = [*items, public_text(pub)] if action == "add" else items
    r = run(park, "fleet", "roster", action, *args, "--key", str(park.priv))
    if name in ROSTER_USAGE:
        err = r.stderr.strip()
        assert r.returncode == 2 and len(err.splitlines()) == 1, (r.returncode, err)
        assert "error:" in err and "--help)" in err, err
    else:
        one_line_error(r)
    assert roster.read_bytes() == before
    with store_of(park) as store:
        assert store.outgoing(0, 10_000) == queued


def test_roster_add_reads_the_lane_and_key_after_the_flags(tmp_path, office_keys):
    """`fleet roster add --config C --key K LANE KEY`, as `fleet join` prints it and FLEET.md
    shows it, was refused: "unrecognized arguments: LANE KEY" (the list of lanes was read,
    empty, before the flags)."""
    from edge.fleet.identity import public_text

    park = office_only(tmp_path, office_keys)
    pub = public_text(load_lane_key(park.cfg(1)).public_key())
    r = run(park, "fleet", "roster", "add", "--key", str(park.priv), "lane9", pub)
    assert r.returncode == 0, r.stderr
    assert "lane9" in run(park, "fleet", "roster", "show").stdout


@pytest.mark.parametrize(
    "args",
    [
        ("--port", "99999"),
        ("--port", "0"),
        ("--bind", "0.0.0.0\nlistener 1884"),
        ("--bind", "a b"),
        ("--persistence-dir", "/var/lib/m\npersistence false"),
    ],
    ids=["port high", "port zero", "bind newline", "bind space", "persistence newline"],
)
def test_broker_config_refuses_what_mosquitto_conf_cannot_hold(tmp_path, office_keys, args):
    """A port outside 1-65535, or an address or folder with a space or a newline (which would
    add its own line to mosquitto.conf): refused in one line, nothing written. Before, each
    was written into mosquitto.conf as given."""
    park = office_only(tmp_path, office_keys)
    out = tmp_path / "broker"
    r = run(park, "fleet", "broker-config", "--out", str(out), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert not (out / "mosquitto.conf").exists()


def test_the_consoles_feed_reads_the_office_store_while_a_write_is_held(tmp_path, office_keys):
    """The office console's feed opens the office's store on its first poll: before, as a
    writer (schema in a write transaction), so a write held elsewhere kept the decisions page
    empty for the busy timeout and then failed; now it reads at once."""
    from edge.console.feed import FleetFeed
    from tests.helpers import hold_write_lock

    park = office_only(tmp_path, office_keys)
    with store_of(park) as store:
        store.store_audit("lane1", "e1", chain(2), time.time())
    holder = hold_write_lock(office_db(park))
    feed = FleetFeed(config_mod.load(park.office.config))
    try:
        feed.poll()
        assert [r["seq"] for r in feed._decisions] == [1, 2]
    finally:
        feed.close()
        holder.communicate("")


def test_heads_no_record_vouches_for_stop_at_the_limit_and_verify_says_so(
    tmp_path, office_keys, monkeypatch
):
    """A lane that signs head after head for records it never sends: the first ones and the
    newest are kept, the rest counted, and `fleet audit verify` notes how many were not kept."""
    import edge.fleet.officestore as officestore

    monkeypatch.setattr(officestore, "HEADS_PER_EPOCH", 3)
    park = office_only(tmp_path, office_keys)
    with store_of(park) as store:
        for n in range(1, 11):
            store.store_head("lane1", "e1", n, f"h{n}", 100.0 + n)
        heads = store.conn.execute("SELECT count FROM audit_heads ORDER BY t").fetchall()
        assert [n for (n,) in heads] == [1, 2, 10]
        notes = [f.text for f in officestore.verify_lane(store.audit_evidence("lane1"))]
        assert "7 more heads not kept (the office's limit)" in notes, notes
