"""Delivery to a lane on a real mosquitto: nothing received is lost when sync stops mid-way, a
session's backlog hides no restore, queued heartbeats are no clock readings, and what a lane
failed to store comes again while sync runs.

Every wait is bounded polling for a condition; no timing is asserted.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
import uuid

from edge import tickets as tk
from edge.fleet import messages as msg
from edge.fleet import sync as sync_mod
from edge.fleet.identity import load_lane_key
from edge.fleet.sync import StoreRetry
from tests.test_fleet import OneShot, Park, verify, wait_for


def _redemptions(park: Park, i: int, n: int, prefix: str) -> list[tuple[str, bytes]]:
    """(topic, payload) of n redemptions of n one-time tickets, signed with lane i's key."""
    cfg = park.cfg(i)
    key, issuer = load_lane_key(cfg), tk.load_private(park.priv)
    now, epoch = time.time(), uuid.uuid4().hex[:16]
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    out = []
    for seq in range(1, n + 1):
        tid = f"{prefix}{seq}"
        t = tk.Ticket(tid, "day", int(now) - 60, int(now) + 86400, tk.Kind.ONE_TIME, 1)
        body = {"ticket": tk.sign(t, issuer), "ticket_id": tid, "t": now, "day": day}
        m = msg.Message(msg.REDEMPTION, park.site, f"lane{i}", seq, now, body, epoch=epoch)
        out.append((msg.topic(park.site, "redemptions", f"lane{i}"), msg.encode(msg.sign(m, key))))
    return out


def _queue_redemptions(park: Park, i: int, n: int, prefix: str) -> None:
    """n redemptions of n one-time tickets, signed with lane i's key and published with its
    login (its sync not running), each acknowledged by the broker: a stopped lane's session
    holds them."""
    with OneShot(park.cfg(i), "queue", timeout_s=60) as c:
        infos = [c.client.publish(t, p, qos=1) for t, p in _redemptions(park, i, n, prefix)]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()


def _counted_twice(park: Park, i: int) -> int:
    from edge.tickets.ledger import Ledger

    led = Ledger(park.lanes[i - 1].dir / "ledger.db")
    try:
        q = "SELECT 1 FROM remote_redemptions GROUP BY ticket_id HAVING count(*) > 1"
        return len(led.conn.execute(q).fetchall())
    finally:
        led.close()


def test_sync_stopped_while_applying_a_backlog_loses_nothing(broker, office_keys, tmp_path):
    """The broker's session holds redemptions for a stopped lane; its sync starts, is stopped
    while it is still applying them (what it had received but not applied was acknowledged to
    the broker before), starts again: every redemption counted once."""
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    n = 3000
    try:
        park.start(1)  # lane1's persistent session exists from here on
        park.wait_ready(1)
        park.stop(1)
        _queue_redemptions(park, 2, n, "T-Q")
        park.start(1)
        wait_for(lambda: park.remote(1) > 0, what="lane1 applies some of the backlog")
        park.stop(1)  # SIGTERM's path: the loop ends after the batch in hand
        first = park.remote(1)
        assert first < n, "stopped only after everything was applied: nothing was tested"
        park.start(1)
        wait_for(lambda: park.remote(1) == n, timeout=90, what=f"all {n} at lane1 (had {first})")
        assert _counted_twice(park, 1) == 0
        assert park.audit(1, "double_use") == []
    finally:
        park.stop_all()


def _office_view(park: Park, lane: str) -> dict:
    return (park.state(0, "peers") or {}).get(lane) or {}


def test_a_restore_is_found_behind_a_backlog_of_the_session(broker, office_keys, tmp_path):
    """The session holds thousands of redemptions for the lane, sent before the SUBACK's retained
    messages: its own retained heartbeat and marks come after them, and still count."""
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    d, backup = park.lanes[0].dir, tmp_path / "backup"
    backup.mkdir()
    files = ("ledger.db", "audit.db", "fleet.db")
    try:
        park.start(1)
        park.wait_ready(1)
        park.stop(1)
        for f in files:
            shutil.copy(d / f, backup / f)
        park.start(1)
        for k in (1, 2):
            assert verify(park, 1, park.ticket(f"T-{k}"))[0] == 0
        wait_for(
            lambda: _office_view(park, "lane1").get("body", {}).get("out_seq") == 2,
            what="the fleet saw lane1's outbox reach 2",
        )
        park.stop(1)
        for f in files:
            for old in d.glob(f + "*"):
                old.unlink()
            shutil.copy(backup / f, d / f)
        _queue_redemptions(park, 2, 4000, "T-B")
        restored_epoch = park.state(1, "epoch")
        park.start(1)
        wait_for(
            lambda: park.state(1, "epoch") not in (None, restored_epoch),
            timeout=60,
            what="restore detected (a new epoch)",
        )
        why = "the ledger's outbox went back to 0 (the fleet saw 2): restored from an older copy"
        wait_for(
            lambda: why in [r.detail for r in park.audit(1, "new_epoch")],
            what="the restore audited with the marks' reason",
        )
        wait_for(lambda: park.remote(1) == 4000, timeout=90, what="the backlog applied")
    finally:
        park.stop_all()


def test_a_heartbeat_queued_while_the_lane_was_away_is_no_clock_reading(
    broker, office_keys, tmp_path
):
    """lane2's heartbeat, signed 30 s before lane1 comes back, waited in lane1's session: read
    then, it would say lane2's clock is 30 s behind. Only heartbeats arriving live count."""
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        park.start(1)
        park.wait_ready(1)
        park.stop(1)
        cfg2 = park.cfg(2)
        body = {"period": 0.3, "clock_offset": None, "clocks": {}}
        m = msg.Message(msg.HEARTBEAT, park.site, "lane2", 1, time.time() - 30, body, epoch="e2")
        with OneShot(cfg2, "queue") as c:
            c.publish(
                msg.topic(park.site, "heartbeat", "lane2"),
                msg.encode(msg.sign(m, load_lane_key(cfg2))),
                retain=True,
            )
        park.start(1)
        wait_for(
            lambda: (park.state(1, "peers") or {}).get("lane2", {}).get("epoch") == "e2",
            what="lane1 applied lane2's queued heartbeat",
        )
        # the office's live heartbeats are readings: lane1 publishes the clocks it reads
        clocks = wait_for(
            lambda: (c := park.state(1, "clocks")) and "office" in c and c,
            what="lane1 reads the office's clock",
        )
        assert "lane2" not in clocks, clocks
        # one member heard judges the clock once three heartbeat periods have passed
        offset = wait_for(
            lambda: (o := park.state(1, "clock_offset")) is not None and (o,),
            what="lane1 measures its clock",
        )[0]
        assert abs(offset) < 5
    finally:
        park.stop_all()


def test_a_redemption_this_lane_failed_to_store_comes_again(broker, office_keys, tmp_path):
    """Its ledger write failed (a locked or full disk): audited apply_failed and left
    unacknowledged, so the broker's session delivers it again when sync next connects."""
    from edge.errors import LedgerError

    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s = park.start(1)
        park.wait_ready(1)
        real = s._apply_redemption

        def disk_error_once(*args, **kwargs):
            s._apply_redemption = real  # the disk works again for what follows
            raise LedgerError("disk I/O error", "free space and check the disk")

        s._apply_redemption = disk_error_once
        _queue_redemptions(park, 2, 1, "T-F")
        wait_for(lambda: park.audit(1, "apply_failed"), what="lane1 fails to store it")
        assert park.remote(1) == 0
        park.stop(1)
        park.start(1)
        wait_for(lambda: park.remote(1) == 1, what="the redemption delivered again and stored")
        assert _counted_twice(park, 1) == 0
    finally:
        park.stop_all()


def test_store_retry_waits_longer_while_the_store_keeps_failing():
    r = StoreRetry(15.0, 300.0)
    assert not r.take(0.0)  # nothing failed: nothing to try
    waits, now = [], 0.0
    for _ in range(8):
        r.failed(now)
        r.failed(now + 1)  # more failures before the try: one try
        assert r.due is not None
        waits.append(r.due - now)
        assert not r.take(r.due - 0.1)
        now = r.due
        assert r.take(now)
        assert not r.take(now)  # one try per failure
    assert waits == [15, 30, 60, 120, 240, 300, 300, 300]
    assert r.tries == 8
    r.stored()
    assert (r.delay, r.tries) == (15, 0)
    r.failed(now)
    r.stored()  # a try is due: what failed has not come again yet, the wait stays
    assert r.due == now + 15


def _watch_offline(park: Park, lane: str) -> list[str]:
    """The reasons of every last will or goodbye of `lane` the office applies from now on."""
    office = park.syncs[0][0]
    seen: list[str] = []
    real = office._apply

    def watching(c, now):
        if c.m.type == msg.OFFLINE and c.m.lane == lane:
            seen.append(str(c.m.body.get("reason")))
        return real(c, now)

    office._apply = watching
    return seen


def _no_false_reports(park: Park, caplog, gone: list[str], epochs: int) -> None:
    """A session resumed on purpose is no outage, no restore and no ACL problem."""
    assert gone == [], f"the office saw lane1 go: {gone}"
    assert len(park.audit(1, "new_epoch")) == epochs
    assert park.state(1, "broker_acl") == "ok"
    assert park.state(1, "connected")
    lines = [r.getMessage() for r in caplog.records if r.name == "edge.fleet.sync"]
    assert not [x for x in lines if "disconnected from broker" in x or "unreachable" in x]
    assert not [x for x in lines if "new epoch" in x or "ACL outdated" in x]


def _lane1_watched(park: Park):
    """lane1 started and ready (its marks back: ACL ok); its sync, sync's thread, the count of
    its new_epoch records and the office's watch for its last will, to check nothing false is
    reported later (`_no_false_reports`)."""
    s = park.start(1)
    park.wait_ready(1)
    wait_for(lambda: park.state(1, "broker_acl") == "ok", what="lane1's marks came back")
    return s, park.syncs[1][1], len(park.audit(1, "new_epoch")), _watch_offline(park, "lane1")


def test_a_redemption_this_lane_failed_to_store_comes_again_while_sync_runs(
    broker, office_keys, tmp_path, monkeypatch, caplog
):
    """lane1's ledger is locked by another process longer than its busy timeout while lane2's
    redemption arrives: the store fails (apply_failed, not acknowledged). Once the lock is gone,
    sync resumes its broker session itself, the broker delivers the redemption again and it is
    stored: in the same run, without restarting sync."""
    caplog.set_level(logging.INFO, logger="edge.fleet.sync")
    monkeypatch.setattr(sync_mod, "STORE_RETRY_FIRST_S", 2.0)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s, thread, epochs, gone = _lane1_watched(park)
        lock = sqlite3.connect(park.lanes[0].dir / "ledger.db", isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")  # a backup or a repair holding the write lock
            _queue_redemptions(park, 2, 1, "T-L")
            wait_for(lambda: park.audit(1, "apply_failed"), what="lane1 fails to store it")
            assert park.remote(1) == 0
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_for(lambda: park.remote(1) == 1, what="the redemption delivered again and stored")
        assert park.syncs[1][1] is thread and thread.is_alive()
        assert s.stats.get("store_retries", 0) >= 1
        assert _counted_twice(park, 1) == 0
        assert "locked" in park.audit(1, "apply_failed")[0].detail
        _no_false_reports(park, caplog, gone, epochs)
    finally:
        park.stop_all()


def _most_tries(elapsed: float, first: float, most: float) -> int:
    """The most tries StoreRetry(first, most) can make in `elapsed` seconds: each waits at
    least its delay after a failure."""
    tries, t, d = 0, 0.0, first
    while t + d <= elapsed:
        tries, t, d = tries + 1, t + d, min(d * 2, most)
    return tries


def test_a_store_that_keeps_failing_is_tried_again_ever_more_slowly(
    broker, office_keys, tmp_path, monkeypatch, caplog
):
    """lane1's disk stays full: the redemption is tried again (one log line per try) with a
    growing wait, never in a loop; the lane keeps running (heartbeats, connected) meanwhile;
    once the disk works again, the next try stores it and the wait starts over."""
    from edge.errors import LedgerError

    caplog.set_level(logging.INFO, logger="edge.fleet.sync")
    first, most = 0.5, 2.0
    monkeypatch.setattr(sync_mod, "STORE_RETRY_FIRST_S", first)
    monkeypatch.setattr(sync_mod, "STORE_RETRY_MAX_S", most)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s, thread, epochs, gone = _lane1_watched(park)
        links: list[bool] = []  # the link as sync writes it for the gate (offline = deny)
        put = s.state.put

        def watching_put(**kv):
            if "connected" in kv:
                links.append(kv["connected"])
            return put(**kv)

        s.state.put = watching_put
        real = s._apply_redemption

        def disk_full(*args, **kwargs):
            raise LedgerError("database or disk is full", "free disk space and retry")

        s._apply_redemption = disk_full
        start = time.monotonic()
        _queue_redemptions(park, 2, 1, "T-K")
        seen_before = _office_view(park, "lane1").get("time", 0)
        wait_for(lambda: s.stats.get("store_retries", 0) >= 5, what="five tries")
        tries = s.stats["store_retries"]
        elapsed = time.monotonic() - start  # read after the tries: a bound they all fit in
        assert tries <= _most_tries(elapsed, first, most), (tries, elapsed)
        assert s.store_retry.delay == most  # the wait grew to its longest
        assert park.remote(1) == 0
        # the lane kept running meanwhile: heartbeats reach the office, the link is up
        wait_for(
            lambda: _office_view(park, "lane1").get("time", 0) > seen_before,
            what="lane1's heartbeats reach the office",
        )
        assert thread.is_alive()
        s._apply_redemption = real  # the disk works again
        wait_for(lambda: park.remote(1) == 1, what="the next try stores it")
        wait_for(lambda: s.store_retry.delay == first, what="the wait starts over")
        lines = [r.getMessage() for r in caplog.records if "sync store_retry" in r.getMessage()]
        assert len(lines) == s.stats["store_retries"], lines  # one line per try
        assert links and all(links), "the gate was told the link was down"
        assert _counted_twice(park, 1) == 0
        assert park.syncs[1][1] is thread and thread.is_alive()
        _no_false_reports(park, caplog, gone, epochs)
    finally:
        park.stop_all()


def test_a_kept_redemption_that_fails_to_store_is_kept_again_and_tried_again(
    broker, office_keys, tmp_path, monkeypatch
):
    """A redemption kept aside (acknowledged to the broker when kept, e.g. signed with a ticket
    key not here yet) fails to store when tried: it is kept again, not lost, and the next try
    stores it."""
    from edge.errors import LedgerError
    from edge.fleet.state import FleetState

    monkeypatch.setattr(sync_mod, "STORE_RETRY_FIRST_S", 0.5)
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        s = park.start(1)
        park.wait_ready(1)
        st = FleetState(park.lanes[0].dir / "fleet.db")
        try:
            for topic, payload in _redemptions(park, 2, 1, "T-P"):
                st.add_pending(topic, payload, time.time())
        finally:
            st.close()
        real, failures = s._apply_redemption, []

        def disk_error_once(*args, **kwargs):
            s._apply_redemption = real  # the disk works again for what follows
            failures.append(1)
            raise LedgerError("disk I/O error", "free space and check the disk")

        s._apply_redemption = disk_error_once
        s._retry_pending = True  # as when the office's keys arrive
        wait_for(lambda: park.remote(1) == 1, what="the kept redemption stored at the next try")
        assert failures == [1]
        assert park.audit(1, "apply_failed")
        wait_for(lambda: not _kept(park, 1), what="nothing kept any more")
    finally:
        park.stop_all()


def _kept(park: Park, i: int) -> int:
    from edge.fleet.state import FleetState

    st = FleetState(park.lanes[i - 1].dir / "fleet.db")
    try:
        return st.conn.execute("SELECT count(*) FROM pending").fetchone()[0]
    finally:
        st.close()
