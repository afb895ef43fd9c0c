"""Delivery to a lane on a real mosquitto: nothing received is lost when sync stops mid-way, a
session's backlog hides no restore, and queued heartbeats are no clock readings.

Every wait is bounded polling for a condition; no timing is asserted.
"""

from __future__ import annotations

import shutil
import time
import uuid

import pytest

from edge import tickets as tk
from edge.fleet import messages as msg
from edge.fleet.identity import load_lane_key
from edge.lab.broker import Mosquitto
from tests.test_fleet import USERS, OneShot, Park, _need_mosquitto, verify, wait_for


@pytest.fixture
def broker(tmp_path_factory):
    _need_mosquitto()
    with Mosquitto(tmp_path_factory.mktemp("mosquitto"), users=USERS) as b:
        yield b


@pytest.fixture(scope="module")
def office_keys(tmp_path_factory):
    return tk.keygen(tmp_path_factory.mktemp("office-keys"))


def _queue_redemptions(park: Park, i: int, n: int, prefix: str) -> None:
    """n redemptions of n one-time tickets, signed with lane i's key and published with its
    login (its sync not running), each acknowledged by the broker: a stopped lane's session
    holds them."""
    cfg = park.cfg(i)
    key, issuer = load_lane_key(cfg), tk.load_private(park.priv)
    now, epoch = time.time(), uuid.uuid4().hex[:16]
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    with OneShot(cfg, "queue", timeout_s=60) as c:
        infos = []
        for seq in range(1, n + 1):
            tid = f"{prefix}{seq}"
            t = tk.Ticket(tid, "day", int(now) - 60, int(now) + 86400, tk.Kind.ONE_TIME, 1)
            body = {"ticket": tk.sign(t, issuer), "ticket_id": tid, "t": now, "day": day}
            m = msg.Message(msg.REDEMPTION, park.site, f"lane{i}", seq, now, body, epoch=epoch)
            topic = msg.topic(park.site, "redemptions", f"lane{i}")
            infos.append(c.client.publish(topic, msg.encode(msg.sign(m, key)), qos=1))
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()


def _counted_twice(park: Park, i: int) -> int:
    from edge.tickets.ledger import Ledger

    led = Ledger(park.lanes[i - 1].dir / "ledger.db")
    try:
        q = "SELECT count(*) FROM (SELECT 1 FROM remote_redemptions GROUP BY ticket_id HAVING count(*) > 1)"
        return led.conn.execute(q).fetchone()[0]
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
