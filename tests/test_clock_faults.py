"""Time: a wall clock set back or stepped, and what the gate decides while it is wrong."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from gpiozero.pins.mock import MockFactory

from edge.gate.daemon import Gate
from edge.gate.policy import FaceSeen
from edge.gate.sources import Frame

from .helpers import ListSource, make_config

DAY = 86400.0


class PassHolder:
    """The face path's output: one visitor at the gate whose pass ends at `valid_until`."""

    def __init__(self, valid_until: int | None):
        self.valid_until = valid_until

    def observe(self, image, t=0.0):
        return (FaceSeen("p-1", 0.9, 0.3, (0.5, 0.5), True, self.valid_until),)

    def gallery_moved(self):
        return ""

    def close(self):
        pass


def pass_gate(cfg, valid_until, clock) -> tuple[Gate, list[dict]]:
    """A gate whose face path sees the pass holder in 5 frames (liveness off: not under test)."""
    got: list[dict] = []
    frames = [np.zeros((120, 160, 3), np.uint8)] * 5
    gate = Gate(cfg, got.append, source=ListSource(frames), pin_factory=MockFactory(), clock=clock)
    gate.face = PassHolder(valid_until)  # type: ignore[assignment]
    gate.policy.params = dataclasses.replace(gate.policy.params, face_enabled=True, liveness=False)
    return gate, got


def test_an_expired_pass_is_not_granted_by_a_clock_behind_the_gates_records(tmp_path):
    """Before, a pass was judged by the wall clock alone: a Pi that booted without a real-time
    clock (1970, or its last saved time) or a clock set back let in a pass that had ended by
    the real date, while every ticket was refused `clock_behind`. Now a face whose pass has an
    end is refused `clock_behind` while the clock is behind the newest time the gate recorded;
    a pass without an end is still let in, and once the clock is right the expired pass is
    refused `pass_expired`."""
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    real = time.time()
    gate, got = pass_gate(cfg, None, lambda: real)  # the gate ran at the real date
    gate.run()
    gate.close()
    assert [(e["decision"], e["reason"]) for e in got] == [("grant", "ok")]

    ended = int(real - DAY)
    for wrong in (86400.0 * 3, real - 30 * DAY):  # no RTC: 1970; a saved time a month old
        gate, got = pass_gate(cfg, ended, lambda w=wrong: w)
        gate.run()
        gate.close()
        assert [(e["decision"], e["reason"]) for e in got] == [("deny", "clock_behind")]
        assert not any(s.state for s in gate.relay.pin.states)

    gate, got = pass_gate(cfg, None, lambda: real - 30 * DAY)  # no end: the clock cannot matter
    gate.run()
    gate.close()
    assert [(e["decision"], e["reason"]) for e in got] == [("grant", "ok")]

    gate, got = pass_gate(cfg, ended, lambda: real + 60)  # the clock set right
    gate.run()
    gate.close()
    assert [(e["decision"], e["reason"]) for e in got] == [("deny", "pass_expired")]


def test_a_clock_set_back_right_after_a_grant_is_behind_the_grant_at_once(tmp_path):
    """The gate reads the audit log's newest time at most once a second; its own records raise
    the floor as they are written. A clock stepped forward, a face grant recorded, the clock
    set back by less than it stepped: the next pass with an end is refused `clock_behind` with
    no new read of the log (the log as last read is older than the wrong clock)."""
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    real = time.time()
    wall = [real]
    gate, got = pass_gate(cfg, int(real + DAY), lambda: wall[0])
    gate.floor_read_s = float("inf")  # read once, at the first face; never again
    image = np.zeros((120, 160, 3), np.uint8)

    def in_view(t0: float, then: float) -> list[tuple[str, str]]:
        """The pass holder in 5 frames from monotonic t0, the wall clock `then` after the
        first; the decisions made."""
        del got[:]
        for i in range(5):
            for d in gate.process(Frame(image, t0 + i * 0.1, i)):
                gate.act(d)
            wall[0] = then
        return [(e["decision"], e["reason"]) for e in got]

    try:
        assert in_view(0.0, real + 3600) == [("grant", "ok")]  # stepped an hour ahead
        assert gate.audit is not None and gate.audit.newest_time("decision") == real + 3600
        wall[0] = real + 1800  # set back half an hour: after the log as read, before the grant
        assert in_view(DAY, real + 1800) == [("deny", "clock_behind")]  # long after: no cooldown
    finally:
        gate.close()


def test_a_clock_set_back_while_the_gate_runs_is_behind_what_it_recorded_since(tmp_path):
    """Before, the ledger took the audit log's newest time once, when it opened: a gate that
    had recorded face grants and refusals for hours and then had its clock set back (`date -s`,
    a wrong NTP step) redeemed tickets by the wrong clock (one expired by the real date passes
    the verifier's check) until its next restart, which refused them. Now every redemption
    compares the clock with the audit log's newest record as it is then."""
    from edge.gate.audit import AuditLog, AuditRecord
    from edge.tickets import Reason, Ticket
    from edge.tickets.ledger import Ledger, init_ledger

    t0 = 1_800_000_000
    init_ledger(tmp_path / "l.db")
    with AuditLog(tmp_path / "a.db") as log:
        log.record(AuditRecord(t0, "g", "system", reason="start"))
        with Ledger(tmp_path / "l.db", marks=log) as led:
            log.record(AuditRecord(t0 + 7200, "g", "decision", decision="grant", via="face"))
            r = led.redeem(Ticket("A"), t0 + 3600)  # the clock set back an hour
            assert (r.ok, r.reason) == (False, Reason.CLOCK_BEHIND)
            assert led.check(Ticket("A"), t0 + 3600).reason == Reason.CLOCK_BEHIND
            assert led.redeem(Ticket("A"), t0 + 7201).ok
        with Ledger(tmp_path / "l.db", marks=log) as led:  # as after a restart
            assert led.redeem(Ticket("B"), t0 + 3600).reason == Reason.CLOCK_BEHIND


def test_an_offline_deny_lane_whose_clock_was_set_back_is_not_in_contact(tmp_path):
    """Before, `fleet.offline = "deny"` judged the broker contact by `now - last_contact`: with
    sync stopped or hung (its last `connected` still on file) and the clock set back, the last
    contact lay in the future, its age was negative, and the lane redeemed tickets as if in
    contact for as long as the clock had gone back. Now a last contact dated after the clock is
    no contact (`fleet_offline`) until sync writes it again by the clock as it is."""
    from edge.config import FleetConfig
    from edge.fleet.state import check_link

    fl = FleetConfig(broker="127.0.0.1", site="park", lane="lane1", offline="deny")
    now = 1_800_000_000.0
    state = {"connected": True, "last_contact": now + 3600}  # the clock set back an hour since
    link = check_link(fl, state, now)  # type: ignore[arg-type]
    assert (link.ok, link.reason) == (False, "fleet_offline")
    assert "after this lane's clock" in link.detail
    assert check_link(fl, {"connected": True, "last_contact": now - 1}, now).ok  # type: ignore[arg-type]
    assert check_link(fl, {"connected": True, "last_contact": now + 1}, now).ok  # type: ignore[arg-type]


def test_a_clock_that_ran_ahead_is_checked_and_tickets_are_judged_again(
    tmp_path, monkeypatch, capsys
):
    """Before, records dated by a clock that ran ahead (a wrong NTP server, a date typed by
    hand) refused every ticket, and every pass with an end, `clock_behind` until their date had
    come, months away, with nothing an operator could do. Now `ledger clock-checked` records in
    the audit log that the clock is right (refused while the kernel does not report it
    synchronised, unless `--set-by-hand`) and the gate judges by it again: the entries dated
    ahead stay counted, and anti-passback does not hold a ticket used then until their date."""
    from edge.cli import main
    from edge.gate.audit import CLOCK_CHECKED, AuditLog, AuditRecord, open_audit
    from edge.gate.desk import open_ledger
    from edge.tickets import Kind, Reason, Ticket
    from edge.tickets.ledger import Ledger

    cfg = make_config(tmp_path)
    real = time.time()
    ahead = real + 200 * DAY
    gate, got = pass_gate(cfg, int(real + 300 * DAY), lambda: ahead)  # the gate ran ahead
    gate.run()
    gate.close()
    assert [e["decision"] for e in got] == ["grant"]
    once, many = Ticket("ONE-1"), Ticket("TEN-1", kind=Kind.ENTRIES, count=10)
    with open_audit(cfg, "use") as audit, open_ledger(cfg, audit, "use") as led:
        assert led.redeem(once, ahead).ok and led.redeem(many, ahead).ok

    def judged() -> list[str]:
        now = time.time()
        with open_audit(cfg, "use") as audit, open_ledger(cfg, audit, "use") as led:
            return [led.check(t, now).reason for t in (once, many, Ticket("NEW-1"))]

    assert judged() == [Reason.CLOCK_BEHIND] * 3
    argv = ["ledger", "clock-checked", "--config", str(cfg.source_file),
            "--reason", "NTP server   was 200 days ahead"]  # fmt: skip
    monkeypatch.setattr("edge.cli.ledger.kernel_clock_synced", lambda: False)
    capsys.readouterr()
    assert main(argv) == 2
    assert "--set-by-hand" in capsys.readouterr().err
    with AuditLog(cfg.resolve(cfg.audit.path)) as log:
        assert log.records(CLOCK_CHECKED) == []
        # a writer without the evidence key (sync, a shell on the data folder) does what the
        # command does: its record lowers no floor
        log.record(AuditRecord(time.time(), "g", CLOCK_CHECKED, subject="0" * 64))
    with Ledger(cfg.resolve(cfg.tickets.ledger)) as led:
        led.lower_clock_floor(time.time())
    assert judged() == [Reason.CLOCK_BEHIND] * 3

    monkeypatch.setattr("edge.cli.ledger.kernel_clock_synced", lambda: True)
    assert main(argv) == 0
    assert "clock checked" in capsys.readouterr().out
    assert judged() == [Reason.ALREADY_USED, Reason.OK, Reason.OK]
    with open_audit(cfg, "use") as log:
        (rec,) = [r for r in log.records(CLOCK_CHECKED) if r.reason]
        assert rec.reason == "NTP server was 200 days ahead" and "synchronised" in rec.detail
        assert abs(log.newest_time() - time.time()) < 60  # the log's floor is now, not ahead
    with AuditLog(cfg.resolve(cfg.audit.path)) as log:  # without the key, nothing is lowered
        assert log.newest_time() > real + 100 * DAY
    gate, got = pass_gate(cfg, int(real + 300 * DAY), time.time)  # as after the restart
    gate.run()
    gate.close()
    assert [(e["decision"], e["reason"]) for e in got] == [("grant", "ok")]
    assert main(argv) == 0
    assert "nothing to lower" in capsys.readouterr().out
    assert main(["ledger", "recover", "--config", str(cfg.source_file)]) == 0  # rebuilt on request
    assert judged() == [Reason.ALREADY_USED, Reason.OK, Reason.OK]  # the floor stays lowered


def test_the_retention_purge_keeps_the_clock_check_while_records_dated_ahead_remain(tmp_path):
    """Records dated ahead outlive their retention; the clock check, dated right, does not: a
    purge removed it and every ticket was refused `clock_behind` again at the next start. The
    newest clock check is kept; the records around it are purged as before."""
    from edge.evidence import load_or_create_key
    from edge.gate.audit import AuditLog, AuditRecord
    from edge.tickets.ledger import LedgerMark

    real = time.time()
    key = load_or_create_key(tmp_path / "evidence.key")
    with AuditLog(tmp_path / "audit.db", 90, key) as log:
        log.record(AuditRecord(real - 120 * DAY, "g", "system", reason="start"))
        log.record(AuditRecord(real + 200 * DAY, "g", "decision", decision="grant", via="face"))
        log.record_clock_checked(
            LedgerMark("l", 0, 0.0), AuditRecord(real - 100 * DAY, "g", "", reason="NTP")
        )
        log.record(AuditRecord(real - 95 * DAY, "g", "decision", decision="deny", via="face"))
        log.record(AuditRecord(real - DAY, "g", "decision", decision="deny", via="face"))
        assert log.newest_time() == real - DAY
        assert log.purge() == 2  # the start and the deny of 95 days ago
        assert log.verify().ok
        assert [r.kind for r in log.records()] == ["decision", "clock_checked", "decision"]
        assert log.newest_time() == real - DAY
    with AuditLog(tmp_path / "audit.db", 90, key) as log:  # as at the next start
        assert log.newest_time() == real - DAY


def test_a_rule_reads_entries_dated_ahead_as_of_the_clock_check(tmp_path):
    """pretix's rules read a ticket's entry times (entries today, minutes since the last): an
    entry dated ahead, still there after `ledger clock-checked`, counted as today and as minutes
    in the future, so the rule refused until its date. It reads as of the check: still counted."""
    from edge.evidence import load_or_create_key
    from edge.gate.audit import AuditLog, AuditRecord
    from edge.tickets import Ticket
    from edge.tickets.ledger import Ledger, LedgerMark, init_ledger

    real = time.time()
    key = load_or_create_key(tmp_path / "evidence.key")
    init_ledger(tmp_path / "l.db")
    seen: list[list[float]] = []

    def rule(times: list[float]):
        seen.append(times)
        return None

    with (
        AuditLog(tmp_path / "a.db", 90, key) as log,
        Ledger(tmp_path / "l.db", marks=log, key=key) as led,
    ):
        assert led.redeem(Ticket("P-1"), real + 100 * DAY).ok  # the clock ran ahead
        assert led.check(Ticket("P-1"), real, rule).reason == "clock_behind"
        m = led.mark()
        log.record_clock_checked(
            LedgerMark(m.ledger_id, m.seq, real), AuditRecord(real, "g-1", "", reason="x")
        )
        led.lower_clock_floor(real)
        assert led.check(Ticket("P-1"), real + 60, rule).ok
    assert seen == [[real]]  # one entry, as of the check; the refusal above read none
