"""`purge` erases by the wall clock, and an erasure cannot be undone: a clock set forward must not
erase pass holders whose passes are still valid, or audit records still within retention."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import numpy as np
import pytest

from edge.cli import gallery as gallery_cli
from edge.config import PROJECT_ROOT
from edge.fleet.state import CLOCK_SKEW, FleetState
from edge.gallery.crypto import init_key, load_key
from edge.gallery.store import Gallery
from edge.gate.audit import AuditLog, AuditRecord
from edge.gate.purgeclock import BOOT_ID, CLOCK_JUMP, FLEET_STATE, BootClock, boot_clock

from .gallery_helpers import CONSENT, cli, config, unit

DAY = 86400.0
FLEET = '[fleet]\nbroker = "mqtt://127.0.0.1:1"\nsite = "park-x"\nlane = "lane1"\n'


def _deps(unit_text: str) -> tuple[set[str], set[str]]:
    after = {u for line in re.findall(r"^After=(.*)$", unit_text, re.M) for u in line.split()}
    wants = {u for line in re.findall(r"^Wants=(.*)$", unit_text, re.M) for u in line.split()}
    return after, wants


def test_the_purge_unit_waits_for_the_clock_as_the_gate_unit_does():
    """Before: edge-gate-purge.service was ordered after local-fs.target only, so the timer's
    catch-up run at boot (Persistent=true) judged retention by a clock not yet synced (a Pi
    without a real-time clock). Now it waits for time sync as edge-gate.service does."""
    gate = _deps((PROJECT_ROOT / "systemd" / "edge-gate.service").read_text())
    purge = _deps((PROJECT_ROOT / "systemd" / "edge-gate-purge.service").read_text())
    time_units = {"time-sync.target", "systemd-time-wait-sync.service"}
    assert time_units <= gate[0] and time_units <= gate[1]  # what the purge copies
    assert time_units <= purge[0], purge
    assert time_units <= purge[1], purge


class Lane:
    """A lane's gallery (one pass expired 100 days ago, one valid 60 more days) and audit log
    (one record past its 90 days' retention), purged by `edge-gate purge` in-process."""

    def __init__(self, tmp_path, extra: str = ""):
        self.tmp = tmp_path
        self.db, self.key, self.audit = tmp_path / "g.db", tmp_path / "k.key", tmp_path / "audit.db"
        now = time.time()
        rng = np.random.default_rng(3)
        with Gallery(self.db, init_key(self.key)) as g:
            self.expired = g.add_person("Expired", CONSENT, list(unit(rng, 1)), "m", "v",
                                        valid_until=int(now - 100 * DAY))  # fmt: skip
            self.valid = g.add_person("Valid", CONSENT, list(unit(rng, 1)), "m", "v",
                                      valid_until=int(now + 60 * DAY))  # fmt: skip
        with AuditLog(self.audit) as log:
            log.record(AuditRecord(now - 200 * DAY, "lane1", "decision", "grant", "ticket",
                                   subject="T-OLD-1"))  # fmt: skip
        files = f'[gallery]\ndb = "{self.db}"\nkey_file = "{self.key}"\n'
        self.cfg = config(tmp_path, files + extra)

    def purge(self, capsys, *more: str) -> tuple[int, str, str]:
        return cli(capsys, "purge", "--config", str(self.cfg), *more)

    def people(self) -> set[str]:
        with Gallery(self.db, load_key(self.key), create=False) as g:
            return {p.id for p in g.people()}

    def subjects(self) -> list[str]:
        with AuditLog(self.audit) as log:
            return [r.subject for r in log.records("decision")]

    def purges(self) -> list[AuditRecord]:
        with AuditLog(self.audit) as log:
            return log.records("purge")


def fleet_lane(tmp_path, offset: float | None) -> Lane:
    lane = Lane(tmp_path, FLEET + f'state_db = "{tmp_path / "fleet.db"}"\n')
    st = FleetState(tmp_path / "fleet.db")
    st.put(connected=True, last_contact=time.time(), clock_offset=offset)
    st.close()
    return lane


def test_a_fleet_lane_whose_clock_is_off_from_the_fleets_erases_nothing(tmp_path, capsys):
    """Before: `purge` judged retention by the lane's clock alone: with that clock a year ahead
    of the fleet's (sync had measured it; tickets were refused `clock_skew`) it erased a pass
    still valid and audit records still within retention. Now it refuses, erases nothing,
    records why and says the fix."""
    lane = fleet_lane(tmp_path, 400 * DAY)  # a year ahead: the valid pass looks long expired
    rc, out, err = lane.purge(capsys)
    assert rc == 2, (out, err)
    assert "purge refused, nothing erased" in err
    assert "clock is off by" in err and "fix: set the time" in err
    assert "purged" not in out
    assert lane.people() == {lane.expired, lane.valid}
    assert lane.subjects() == ["T-OLD-1"]
    (rec,) = lane.purges()
    assert rec.reason == CLOCK_SKEW and rec.detail.startswith("refused, nothing erased")


def test_a_fleet_lane_whose_clock_is_within_the_limit_purges_as_before(tmp_path, capsys):
    lane = fleet_lane(tmp_path, 0.4)
    rc, out, err = lane.purge(capsys)
    assert rc == 0, err
    assert "purged 1 people" in out and "1 old audit records" in out
    assert lane.people() == {lane.valid}
    assert lane.subjects() == []
    assert [r.reason for r in lane.purges()] == ["retention"]


def test_the_office_purges_by_the_same_clock_check(tmp_path, capsys):
    """The office runs `purge` on its own gallery and audit log, and its sync measures its
    clock against the lanes' as a lane's does: the same refusal."""
    lane = Lane(tmp_path, FLEET.replace('"lane1"', '"office"') + 'state_db = "fleet.db"\n')
    st = FleetState(tmp_path / "fleet.db", office=True)
    st.put(clock_offset=-30.0)
    st.close()
    rc, _, err = lane.purge(capsys)
    assert rc == 2 and "this lane's (office) clock is off by -30.0 s" in err
    assert lane.people() == {lane.expired, lane.valid}


def test_a_fleet_state_that_does_not_read_erases_nothing(tmp_path, capsys):
    """The gate refuses tickets and faces on a fleet.db it cannot open; the purge, which
    cannot tell whether the clock is the fleet's, refuses too."""
    lane = fleet_lane(tmp_path, 0.4)
    (tmp_path / "fleet.db").write_bytes(b"not a database" * 100)
    for side in ("-wal", "-shm"):
        (tmp_path / f"fleet.db{side}").unlink(missing_ok=True)
    rc, _, err = lane.purge(capsys)
    assert rc == 2 and "purge refused, nothing erased" in err
    assert "edge-gate-sync" in err
    assert lane.people() == {lane.expired, lane.valid}
    assert lane.subjects() == ["T-OLD-1"]
    assert [r.reason for r in lane.purges()] == [FLEET_STATE]


def test_a_clock_offset_that_is_no_number_erases_nothing(tmp_path, capsys):
    lane = fleet_lane(tmp_path, 0.4)
    st = FleetState(tmp_path / "fleet.db")
    st.put(clock_offset="far")
    st.close()
    rc, _, err = lane.purge(capsys)
    assert rc == 2 and "cannot be read" in err
    assert lane.people() == {lane.expired, lane.valid}


def test_a_refusal_the_audit_log_does_not_take_still_refuses(tmp_path, capsys):
    lane = fleet_lane(tmp_path, 400 * DAY)
    held = tmp_path / "held"
    lane.audit.rename(held)
    lane.audit.mkdir()  # no audit log opens there: the refusal cannot be recorded
    rc, out, err = lane.purge(capsys)
    assert rc == 2, (out, err)
    assert "purge refused, nothing erased" in err
    assert "did not take the record of this refusal" in err
    assert lane.people() == {lane.expired, lane.valid}
    lane.audit.rmdir()
    held.rename(lane.audit)
    assert lane.subjects() == ["T-OLD-1"]
    assert lane.purges() == []


class Clocks:
    """The wall clock and the boot clock `purge` reads, set by the test."""

    def __init__(self, monkeypatch):
        self.wall = time.time()
        self.boot = BootClock("0a826891-f41c-4849-bd48-e7ba3ccda9c7", 5000.0)
        monkeypatch.setattr(gallery_cli, "boot_clock", lambda: self.boot)
        monkeypatch.setattr(gallery_cli, "time", SimpleNamespace(time=lambda: self.wall))

    def elapse(self, days: float, wall_ahead_days: float = 0.0) -> None:
        self.wall += (days + wall_ahead_days) * DAY
        self.boot = BootClock(self.boot.boot_id, self.boot.since_boot_s + days * DAY)

    def reboot(self, boot_id: str) -> None:
        self.boot = BootClock(boot_id, 30.0)


def test_a_clock_set_forward_on_a_running_lane_erases_no_valid_pass(tmp_path, capsys, monkeypatch):
    """Before: a lane alone, its clock set a year forward (a bad NTP answer, a typo), purged
    every pass holder whose pass was still valid, for good. Now each purge records the boot it
    ran in and the time since it; the next purge of the same boot refuses when the wall clock
    moved more than gallery.purge_max_clock_jump_days further than that time."""
    clocks = Clocks(monkeypatch)
    lane = Lane(tmp_path)
    rc, out, err = lane.purge(capsys)  # the first purge on a new install: nothing to compare
    assert rc == 0 and "purged 1 people" in out, err
    clocks.elapse(1)  # the next day's purge
    assert lane.purge(capsys)[0] == 0
    clocks.elapse(1, wall_ahead_days=365)  # a day later by the boot clock, a year by the wall
    rc, out, err = lane.purge(capsys)
    assert rc == 2, (out, err)
    assert "366.0 days" not in err and "365.0 days further" in err
    assert "--clock-checked" in err and "fix: set the time" in err
    assert lane.valid in lane.people()
    assert [r.reason for r in lane.purges()] == ["retention", "retention", CLOCK_JUMP]
    clocks.elapse(1)  # the clock left wrong: still refused the next day
    assert lane.purge(capsys)[0] == 2
    assert lane.valid in lane.people()


def test_small_steps_forward_day_after_day_add_up_to_a_refusal(tmp_path, capsys, monkeypatch):
    """Before: each purge was judged against the last one, which then became the reference, so
    a clock pushed 29 days forward each day (under the 30 allowed) erased the pass still valid
    for 60 days on the fourth day. Measured from the boot's first purge, the steps add up."""
    clocks = Clocks(monkeypatch)
    lane = Lane(tmp_path)
    assert lane.purge(capsys)[0] == 0
    codes = []
    for _ in range(3):
        clocks.elapse(1, wall_ahead_days=29)
        codes.append(lane.purge(capsys)[0])
    assert codes == [0, 2, 2]
    assert lane.valid in lane.people()


def test_a_jump_larger_than_the_purges_own_days_is_refused(tmp_path, capsys, monkeypatch):
    """`purge --days 5` with the clock 20 days ahead (within the 30 the setting allows) would
    erase passes valid for 15 more days: the allowance is the smaller of the two."""
    clocks = Clocks(monkeypatch)
    lane = Lane(tmp_path)
    assert lane.purge(capsys, "--days", "5")[0] == 0
    clocks.elapse(1, wall_ahead_days=20)
    rc, _, err = lane.purge(capsys, "--days", "5")
    assert rc == 2 and "the purge's 5 days" in err, err
    clocks.elapse(1)
    assert lane.purge(capsys, "--days", "5", "--clock-checked")[0] == 0
    clocks.elapse(1, wall_ahead_days=0.01)  # a quarter of an hour of NTP correction: noise
    assert lane.purge(capsys, "--days", "0")[0] == 0


def test_a_refusal_is_not_dated_by_the_clock_it_refuses(tmp_path, capsys, monkeypatch):
    """Before: the refusal was recorded at the wrong time it refused, a year ahead; the gate's
    floor (the newest time recorded) then refused every ticket and every pass with an end as
    `clock_behind` for a year once the time was set right. It is now dated no later than the
    time the boot clock vouches for."""
    clocks = Clocks(monkeypatch)
    lane = Lane(tmp_path)
    assert lane.purge(capsys)[0] == 0
    first = lane.purges()[-1].t
    clocks.elapse(1, wall_ahead_days=365)
    assert lane.purge(capsys)[0] == 2
    refusal = lane.purges()[-1]
    assert refusal.reason == CLOCK_JUMP
    assert refusal.t <= first + DAY + 1  # the boot clock's day, not the wall's year
    with AuditLog(lane.audit) as log:
        assert log.newest_time() <= first + DAY + 1


def test_a_purge_after_a_season_off_and_a_checked_clock_still_run(tmp_path, capsys, monkeypatch):
    clocks = Clocks(monkeypatch)
    lane = Lane(tmp_path)
    assert lane.purge(capsys)[0] == 0
    clocks.reboot("7f3c1b5e-0000-4000-8000-000000000001")  # powered off for a season
    clocks.wall += 120 * DAY
    rc, out, err = lane.purge(capsys)
    assert rc == 0 and "purged 1 people" in out, err  # the valid pass expired meanwhile
    assert lane.people() == set()


def test_an_operator_who_checked_the_clock_can_purge_after_a_refusal(tmp_path, capsys, monkeypatch):
    """A purge that ran while the clock was behind (before NTP reached the lane) makes the
    correction look like a jump: `--clock-checked` purges, and its record is the next one's
    reference."""
    clocks = Clocks(monkeypatch)
    lane = Lane(tmp_path)
    assert lane.purge(capsys)[0] == 0
    clocks.elapse(1, wall_ahead_days=100)
    assert lane.purge(capsys)[0] == 2
    rc, out, err = lane.purge(capsys, "--clock-checked")
    assert rc == 0 and "purged 1 people" in out, err
    assert lane.purges()[-1].detail.endswith("; clock checked")
    clocks.elapse(1)
    assert lane.purge(capsys)[0] == 0


def test_the_jump_check_can_be_turned_off(tmp_path, capsys, monkeypatch):
    clocks = Clocks(monkeypatch)
    lane = Lane(tmp_path, "purge_max_clock_jump_days = 0\n")
    assert lane.purge(capsys)[0] == 0
    clocks.elapse(1, wall_ahead_days=365)
    assert lane.purge(capsys)[0] == 0
    assert lane.people() == set()


@pytest.mark.parametrize("days", [-1, 1.5, "30"])
def test_a_bad_max_clock_jump_is_a_config_error(tmp_path, capsys, days):
    lane = Lane(tmp_path, f"purge_max_clock_jump_days = {days!r}\n".replace("'", '"'))
    rc, _, err = lane.purge(capsys)
    assert rc == 2 and "purge_max_clock_jump_days" in err


def test_the_boot_clock_is_this_boots_and_nothing_else_is_taken_for_one(tmp_path):
    here = boot_clock()
    assert here is not None  # Linux: the check is on
    assert here.boot_id == BOOT_ID.read_text().strip()
    junk = tmp_path / "boot_id"
    junk.write_text("not an id\n")
    assert boot_clock(junk) is None
    assert boot_clock(tmp_path / "missing") is None
