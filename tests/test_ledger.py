"""Redemption ledger: counts, season limits, anti-passback, concurrency, and kill -9 safety."""

from __future__ import annotations

import sqlite3
import textwrap
import threading
import time

import pytest

from edge.errors import LedgerError
from edge.tickets import Kind, Reason, Ticket
from edge.tickets.ledger import Ledger, init_ledger

from .helpers import kill_at_random

DAY = 86400
T0 = 1_800_000_000


def new_ledger(path, **kw) -> Ledger:
    """A freshly initialised ledger (ledgers are never created implicitly)."""
    init_ledger(path)
    return Ledger(path, **kw)


def test_one_time_and_n_entries(tmp_path):
    led = new_ledger(tmp_path / "l.db", anti_passback_s=0)
    one = Ticket("A", kind=Kind.ONE_TIME)
    assert led.redeem(one, T0).ok
    r = led.redeem(one, T0 + 1000)
    assert not r.ok
    assert r.reason == Reason.ALREADY_USED
    assert r.detail == "no entries left"
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
    led = new_ledger(tmp_path / "l.db", anti_passback_s=0)
    s = Ticket("S", kind=Kind.SEASON, count=2)
    day1 = [led.redeem(s, T0 + i).ok for i in range(3)]
    day2 = [led.redeem(s, T0 + DAY + i).ok for i in range(3)]
    assert day1 == [True, True, False]
    assert day2 == [True, True, False]


def test_anti_passback_window(tmp_path):
    led = new_ledger(tmp_path / "l.db", anti_passback_s=60)
    s = Ticket("S", kind=Kind.SEASON, count=10)
    assert led.redeem(s, T0).ok
    r = led.redeem(s, T0 + 30)
    assert not r.ok
    assert r.reason == Reason.ANTI_PASSBACK
    assert led.redeem(s, T0 + 61).ok


def test_survives_restart(tmp_path):
    new_ledger(tmp_path / "l.db").redeem(Ticket("A"), T0)
    assert not Ledger(tmp_path / "l.db").redeem(Ticket("A"), T0 + 500).ok


def test_shown_twice_within_a_second_from_two_threads(tmp_path):
    path = tmp_path / "l.db"
    init_ledger(path)
    results = []

    def scan():
        led = Ledger(path, anti_passback_s=0)
        results.append(led.redeem(Ticket("A", kind=Kind.ENTRIES, count=2), time.time()).ok)

    threads = [threading.Thread(target=scan) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 2
    assert len(results) == 8


def test_corrupt_ledger_is_a_clear_error(tmp_path):
    p = tmp_path / "l.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="unreadable"):
        Ledger(p)


def test_kill_9_between_verify_and_record_never_over_redeems(tmp_path):
    """A redeemer killed at random points: never more entries than allowed, nothing corrupt."""
    path = tmp_path / "l.db"
    init_ledger(path)
    script = textwrap.dedent(f"""
        import time
        from edge.tickets.ledger import Ledger
        from edge.tickets import Ticket, Kind
        led = Ledger({str(path)!r}, anti_passback_s=0)
        t = Ticket("K", kind=Kind.ENTRIES, count=5)
        print("ready", flush=True)
        while True:
            led.redeem(t, time.time())
    """)
    kill_at_random(script, 25, 7, 0.02)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM redemptions WHERE ticket_id='K'").fetchone()[0] == 5


# --- the ledger cannot go back in time, and its days are the site's --------------------------


def test_missing_or_empty_ledger_is_never_created(tmp_path):
    with pytest.raises(LedgerError, match="ledger init"):
        Ledger(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(LedgerError, match="empty"):
        Ledger(tmp_path / "empty.db")
    with pytest.raises(LedgerError, match="empty"):
        init_ledger(tmp_path / "empty.db")


def test_season_days_are_counted_in_the_site_time_zone(tmp_path):
    """A Los Angeles visitor at 09:00 and 17:00 local time: one local day, two UTC days."""
    from zoneinfo import ZoneInfo

    la = ZoneInfo("America/Los_Angeles")
    import datetime as dt

    morning = dt.datetime(2026, 7, 1, 9, 0, tzinfo=la).timestamp()
    evening = dt.datetime(2026, 7, 1, 17, 0, tzinfo=la).timestamp()
    next_day = dt.datetime(2026, 7, 2, 9, 0, tzinfo=la).timestamp()
    s = Ticket("S", kind=Kind.SEASON, count=1)
    led = new_ledger(tmp_path / "l.db", anti_passback_s=0, tz=la)
    assert led.redeem(s, morning).ok
    r = led.redeem(s, evening)
    assert (r.ok, r.reason, r.detail) == (False, Reason.ALREADY_USED, "daily limit")
    assert led.redeem(s, next_day).ok


def test_site_time_zone_comes_from_config(tmp_path):
    from edge import config as config_mod
    from edge.errors import ConfigError
    from edge.gate.desk import open_ledger

    p = tmp_path / "gate.toml"
    p.write_text('[gate]\ntimezone = "America/Los_Angeles"\n[tickets]\nledger = "l.db"\n')
    cfg = config_mod.load(p)
    init_ledger(tmp_path / "l.db")
    with open_ledger(cfg) as led:
        assert str(led.tz) == "America/Los_Angeles"
    p.write_text('[gate]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match="gate.timezone"):
        config_mod.load(p)


def test_clock_behind_the_newest_entry_refuses_tickets(tmp_path):
    """A clock stepped back must neither skip anti-passback nor accept tickets expired meanwhile."""
    led = new_ledger(tmp_path / "l.db", anti_passback_s=60)
    s = Ticket("S", kind=Kind.SEASON, count=10)
    assert led.redeem(s, T0).ok
    r = led.redeem(s, T0 - 3600)
    assert (r.ok, r.reason) == (False, Reason.CLOCK_BEHIND)
    assert led.redeem(Ticket("other"), T0 - 3600).reason == Reason.CLOCK_BEHIND
    assert led.check(Ticket("other"), T0 - 3600).reason == Reason.CLOCK_BEHIND
    assert led.redeem(Ticket("other"), T0 + 1).ok


def test_clock_behind_the_newest_audit_record_refuses_tickets(tmp_path):
    from edge.gate.audit import AuditLog, AuditRecord

    init_ledger(tmp_path / "l.db")
    with AuditLog(tmp_path / "a.db") as log:
        log.record(AuditRecord(T0, "g", "system", reason="start"))
        with Ledger(tmp_path / "l.db", marks=log) as led:
            assert led.redeem(Ticket("A"), T0 - 86400).reason == Reason.CLOCK_BEHIND
            assert led.redeem(Ticket("A"), T0 + 5).ok
        assert log.ledger_mark().seq == 1


def test_schema_1_ledger_is_upgraded_with_its_count(tmp_path):
    p = tmp_path / "old.db"
    c = sqlite3.connect(p)
    c.execute(
        "CREATE TABLE redemptions"
        " (id INTEGER PRIMARY KEY, ticket_id TEXT, t REAL, day TEXT, gate TEXT)"
    )
    c.execute(
        "INSERT INTO redemptions (ticket_id, t, day, gate) VALUES ('A', ?, '2027-01-15', 'g')",
        (T0,),
    )
    c.execute("PRAGMA user_version=1")
    c.commit()
    c.close()
    with Ledger(p) as led:
        assert led.mark().seq == 1
        assert led.mark().t == T0
        assert not led.redeem(Ticket("A"), T0 + 100).ok
