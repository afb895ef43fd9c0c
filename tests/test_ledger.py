"""Redemption ledger: counts, season limits, anti-passback, concurrency, and kill -9 safety."""

from __future__ import annotations

import sqlite3
import textwrap
import threading
import time

import pytest

from edge.errors import LedgerError
from edge.tickets import ALREADY_USED, ANTI_PASSBACK, Kind, Ticket
from edge.tickets.ledger import Ledger, init_ledger

from .helpers import kill_at_random

DAY = 86400
T0 = 1_800_000_000


def new_ledger(path, **kw) -> Ledger:
    """A freshly initialised ledger (ledgers are never created implicitly)."""
    init_ledger(path)
    return Ledger(path, **kw)


def test_one_time_and_n_entries(tmp_path):
    led = new_ledger(tmp_path / "l.db", antipassback_s=0)
    one = Ticket("A", kind=Kind.ONE_TIME)
    assert led.redeem(one, T0).ok
    r = led.redeem(one, T0 + 1000)
    assert not r.ok and r.reason == ALREADY_USED and r.detail == "no entries left"
    three = Ticket("B", kind=Kind.ENTRIES, count=3)
    assert [led.redeem(three, T0 + 2000 + i * 100).ok for i in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert led.used("B") == 3


def test_season_pass_per_day_limit(tmp_path):
    led = new_ledger(tmp_path / "l.db", antipassback_s=0)
    s = Ticket("S", kind=Kind.SEASON, count=2)
    day1 = [led.redeem(s, T0 + i).ok for i in range(3)]
    day2 = [led.redeem(s, T0 + DAY + i).ok for i in range(3)]
    assert day1 == [True, True, False] and day2 == [True, True, False]


def test_anti_passback_window(tmp_path):
    led = new_ledger(tmp_path / "l.db", antipassback_s=60)
    s = Ticket("S", kind=Kind.SEASON, count=10)
    assert led.redeem(s, T0).ok
    r = led.redeem(s, T0 + 30)
    assert not r.ok
    assert r.reason == ANTI_PASSBACK
    assert led.redeem(s, T0 + 61).ok


def test_survives_restart(tmp_path):
    new_ledger(tmp_path / "l.db").redeem(Ticket("A"), T0)
    assert not Ledger(tmp_path / "l.db").redeem(Ticket("A"), T0 + 500).ok


def test_shown_twice_within_a_second_from_two_threads(tmp_path):
    path = tmp_path / "l.db"
    init_ledger(path)
    results = []

    def scan():
        led = Ledger(path, antipassback_s=0)
        results.append(led.redeem(Ticket("A", kind=Kind.ENTRIES, count=2), time.time()).ok)

    threads = [threading.Thread(target=scan) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 2 and len(results) == 8


def test_corrupt_ledger_is_a_clear_error(tmp_path):
    p = tmp_path / "l.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="unreadable"):
        Ledger(p)


def test_kill_9_between_verify_and_record_never_over_redeems(tmp_path):
    """A redeeming process killed at random points: never more entries than allowed, nothing corrupt."""
    path = tmp_path / "l.db"
    init_ledger(path)
    script = textwrap.dedent(f"""
        import time
        from edge.tickets.ledger import Ledger
        from edge.tickets import Ticket, Kind
        led = Ledger({str(path)!r}, antipassback_s=0)
        t = Ticket("K", kind=Kind.ENTRIES, count=5)
        print("ready", flush=True)
        while True:
            led.redeem(t, time.time())
    """)
    kill_at_random(script, 25, 7, 0.02)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM redemptions WHERE ticket_id='K'").fetchone()[0] == 5
