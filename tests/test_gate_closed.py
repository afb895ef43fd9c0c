"""The gate stays closed when two things fail at once: a fleet lane whose ledger and fleet.db
both refuse to open, a ledger lost while the audit log will not take its record, and a
revocation list changed without a new modification time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge import tickets as tk
from edge.fleet.state import FleetState
from edge.gate.daemon import Gate
from edge.gate.policy import GRANT, Decision, Via
from edge.lab.workspace import write_member

from .console_harness import NoFrames
from .helpers import ListSource, make_config

PERSON = "P-0123456789abcdef"


def _face(gate: Gate, events: list[dict], n: int) -> tuple[str, str]:
    gate.act(Decision(time.monotonic(), n, GRANT, Via.FACE, PERSON, 0.7, "ok"))
    return events[-1]["decision"], events[-1]["reason"]


def _retry_at_once(ledger: object) -> None:
    """A lane ledger's view of fleet.db tries a file that did not open again at each ask."""
    from edge.fleet.lane import LaneLedger

    assert isinstance(ledger, LaneLedger) and ledger.guard.view is not None
    ledger.guard.view.retry_s = 0.0


def _lane(office_keys, tmp_path):
    m = write_member(tmp_path, "lane1", "mqtt://127.0.0.1:1", "park", office_keys[1])
    return m, config_mod.load(m.config)


def test_a_lane_ledger_opened_while_fleet_state_fails_refuses_faces_until_it_opens(
    office_keys, tmp_path
):
    """Ledger missing and fleet.db unreadable: the stand-in ledger went without the fleet's
    face check, so a lane that could not read whether the office's forget list is applied
    granted faces. Now it refuses them until fleet.db opens, then asks it as always."""
    from edge.errors import EdgeGateError
    from edge.fleet import lane
    from edge.gate.audit import open_audit
    from edge.gate.desk import open_gate_ledger

    m, cfg = _lane(office_keys, tmp_path)
    cfg.resolve(cfg.tickets.ledger).unlink()
    db = cfg.resolve(cfg.fleet.state_db)
    db.unlink(missing_ok=True)
    db.write_bytes(b"not a fleet state, a file copied over it " * 100)
    audit = open_audit(cfg, "create")
    led = open_gate_ledger(cfg, audit, time.time())
    try:
        assert led.problem  # tickets refused: the ledger is not there
        with pytest.raises(EdgeGateError, match="fleet state"):
            lane.face_refusal(led)  # the daemon denies it (ledger_error)
        # the operator moves the damaged file aside; sync makes a new one, its list to replay
        db.unlink()
        st = FleetState(db)
        st.put(forget_replay="new epoch 1a2b3c4d: fleet.db made anew")
        _retry_at_once(led)
        assert lane.face_refusal(led).reason == "forget_replay"
        st.put(forget_replay=None)
        assert lane.face_refusal(led) is None
        st.close()
    finally:
        led.close()
        audit.close()


@pytest.mark.parametrize("fault", ["ledger_record", "audit_reopen"])
def test_a_ledger_lost_while_the_audit_log_fails_keeps_the_fleet_face_check(
    office_keys, tmp_path, monkeypatch, fault
):
    """The ledger deleted underneath a running lane while the audit log refuses the record of
    the loss (or will not open again): the stand-in put in its place had no fleet guard, so
    faces were granted with the office's forget list still to replay."""
    import edge.gate.daemon as daemon_mod

    m, cfg = _lane(office_keys, tmp_path)
    st = FleetState(cfg.resolve(cfg.fleet.state_db))
    events: list[dict] = []
    gate = Gate(cfg, on_decision=events.append, source=NoFrames())
    try:
        assert _face(gate, events, 1)[0] == "grant"
        st.put(forget_replay="new epoch 1a2b3c4d: restored")

        def refuse(*a, **k):
            raise OSError("No space left on device")

        if fault == "ledger_record":
            monkeypatch.setattr(daemon_mod, "open_gate_ledger", refuse)
            cfg.resolve(cfg.tickets.ledger).unlink()
        else:
            monkeypatch.setattr(daemon_mod, "open_audit", refuse)
            cfg.resolve(cfg.tickets.ledger).unlink()
            cfg.resolve(cfg.audit.path).unlink()
        gate.tick(0.0)
        assert gate.ledger.problem  # tickets refused
        assert _face(gate, events, 2) == ("deny", "forget_replay")
        st.put(forget_replay=None)
        decision, reason = _face(gate, events, 3)
        # with the audit log gone a face grant has no record: denied audit_error
        assert (decision, reason) == (
            ("grant", "ok") if fault == "ledger_record" else ("deny", "audit_error")
        ), events[-1]
    finally:
        gate.close()
        st.close()


def test_a_revocation_list_changed_within_one_clock_tick_is_read_again(tmp_path):
    """The gate re-read the revocation list when its modification time changed; two writes
    within the file system's clock tick (or a copy that keeps the old time) left a newly
    revoked ticket valid. Same size, same time, same file: the content still counts."""
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    revoked = cfg.resolve(cfg.tickets.revocation_list)
    tk.revoke(revoked, ["R-1"])
    gate = Gate(cfg, source=ListSource([]), pin_factory=MockFactory())
    try:
        key = tk.load_private(tmp_path / "office" / "issuer.key")
        two = tk.sign(tk.Ticket("R-2", valid_until=int(time.time()) + 999), key)
        assert gate.verifier.verify(two, time.time()).valid
        before = os.stat(revoked)
        with open(revoked, "r+b") as f:  # R-1 becomes R-2 in place: same inode, same size
            data = f.read()
            f.seek(0)
            f.write(data.replace(b"R-1", b"R-2"))
        os.utime(revoked, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(revoked).st_mtime_ns == before.st_mtime_ns
        gate.tick(0.0)
        assert gate.verifier.verify(two, time.time()).reason == tk.Reason.REVOKED
    finally:
        gate.close()


def test_a_lane_starts_with_an_unreadable_fleet_state_and_refuses_until_it_opens(
    office_keys, tmp_path
):
    """fleet.db damaged when the gate starts: the gate did not start at all (the override
    inbox raised), so tickets waited for the file as well as faces, and a fixed file needed a
    restart. Now it starts, refuses faces and tickets (`ledger_error`) while no fleet state is
    open, and reads the file sync makes again at its path."""
    m, cfg = _lane(office_keys, tmp_path)
    db = cfg.resolve(cfg.fleet.state_db)
    db.unlink(missing_ok=True)
    db.write_bytes(b"not a fleet state, a file copied over it " * 100)
    events: list[dict] = []
    gate = Gate(cfg, on_decision=events.append, source=NoFrames())
    try:
        assert _face(gate, events, 1) == ("deny", "ledger_error")
        gate.take_overrides()  # nothing to take, nothing raised
        db.unlink()  # moved aside; sync makes it again, its epoch and list applied
        st = FleetState(db)
        st.put(epoch="0123abcd", forget_replay=None)
        _retry_at_once(gate.ledger)
        assert _face(gate, events, 2)[0] == "grant"
        st.close()
    finally:
        gate.close()


def test_the_override_inbox_reads_a_fleet_state_made_again_at_its_path(tmp_path):
    """The inbox kept its connection to the file it opened at start: after fleet.db was moved
    aside and made again by sync, overrides sync left in the new file were never taken (the
    lane's supervisor could not open it) until a restart. Now the inbox follows the file."""
    from edge.fleet import messages as msg
    from edge.fleet.override import VIA, OverrideInbox, override_body

    site = "park-x"
    priv, pub = tk.keygen(tmp_path / "k")
    (tmp_path / "lane.toml").write_text(
        f'[fleet]\nbroker = "mqtt://127.0.0.1:1"\nsite = "{site}"\nlane = "lane1"\n'
        f'state_db = "fleet.db"\n[tickets]\npubkeys = ["{pub}"]\n'
    )
    cfg = config_mod.load(tmp_path / "lane.toml")
    FleetState(tmp_path / "fleet.db").close()
    box = OverrideInbox(cfg)
    try:
        now = time.time()
        assert box.take(now) == []
        for x in ("", "-wal", "-shm"):  # moved aside with its log
            Path(f"{tmp_path / 'fleet.db'}{x}").unlink(missing_ok=True)
        st = FleetState(tmp_path / "fleet.db")
        body = override_body("lane1", "wheelchair user", "sam", now, 30.0)
        m = msg.Message(msg.OVERRIDE, site, msg.OFFICE, 7, now, body)
        st.add_override(msg.encode(msg.sign(m, tk.load_private(priv))), now)
        box._next = 0.0
        assert [(v.ok, v.reason) for v in box.take(now + 1)] == [(True, VIA)]
        st.close()
    finally:
        box.close()


def test_an_unforeseen_error_is_said_once_a_minute_with_the_count_since():
    """A loop's step failing the same way each second (sync, pretix sync) wrote a line each
    second; now the first line (with its traceback), then at most one a minute with how many
    times it came unsaid, and another error at once."""
    from edge.errors import Unforeseen

    u = Unforeseen()
    boom = RuntimeError("boom")
    assert u.seen(boom, 0.0) == ("RuntimeError: boom", True, 0)
    assert [u.seen(boom, t)[2] for t in (1.0, 2.0, 30.0)] == [None, None, None]
    assert u.seen(KeyError("x"), 31.0) == ("KeyError: 'x'", True, 0)
    assert u.seen(boom, 61.0) == ("RuntimeError: boom", False, 3)
    assert u.seen(boom, 62.0)[2] is None
