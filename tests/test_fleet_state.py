"""The lane's fleet state (edge/fleet/state.py) failing under the gate: a busy or unreadable
fleet.db is a typed error, the gate keeps running, and a face grant it cannot check is a deny."""

from __future__ import annotations

import sqlite3
import time

import pytest

from edge import config as config_mod
from edge.db import connect
from edge.errors import FleetStateError
from edge.fleet.state import FleetState
from edge.gate.daemon import Gate
from edge.gate.policy import GRANT, Decision, Via
from edge.lab.workspace import write_member

from .helpers import ListSource


def _held(path) -> sqlite3.Connection:
    """Another process's write lock on the file (sync in the middle of a long transaction)."""
    other = connect(path)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_busy_fleet_state_is_a_fleet_state_error_and_nothing_half_written(tmp_path):
    st = FleetState(tmp_path / "fleet.db")
    st.put(connected=True)
    st.conn.execute("PRAGMA busy_timeout=50")
    other = _held(tmp_path / "fleet.db")
    try:
        for write in (
            lambda: st.put(connected=False),
            lambda: st.set_cursor("audit", 7),
            lambda: st.add_pending("t", b"p", 1.0),
            lambda: st.merge_revocations({"T-1": 3}, {"T-1": 2}),
            lambda: st.use_nonce("n", 10.0, 1.0),
        ):
            with pytest.raises(FleetStateError, match="locked"):
                write()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert st.get("connected") is True  # the refused write left the old value
    assert st.cursor("audit") == 0
    assert st.take_pending() == []
    st.close()


def test_gate_keeps_ticking_and_denies_a_face_it_cannot_check(office_keys, tmp_path):
    m = write_member(tmp_path, "lane1", "mqtt://127.0.0.1:1", "park", office_keys[1])
    events: list[dict] = []
    gate = Gate(config_mod.load(m.config), on_decision=events.append, source=ListSource([]))
    state = gate.ledger.guard.state
    state.conn.execute("PRAGMA busy_timeout=50")
    other = _held(m.dir / "fleet.db")
    try:
        gate.tick(0.0)  # its status cannot be written now: logged, not raised
    finally:
        other.execute("ROLLBACK")
        other.close()
    gate.tick(0.0)
    assert state.get("gate_status")["fps"] == 0.0  # written once the lock is gone
    grant = Decision(time.monotonic(), 1, GRANT, Via.FACE, "P-0123456789abcdef", 0.7, "ok")
    gate.act(grant)
    assert events[-1]["decision"] == "grant"
    state.conn.close()  # whether the forget list was applied can no longer be read
    gate.act(grant)
    assert events[-1]["decision"] == "deny"
    assert events[-1]["reason"] == "ledger_error"
    gate.close()


def test_a_record_newer_than_the_last_signed_head_is_not_called_removed():
    """The office received record 3 before the heartbeat whose head covers it: in flight, not
    cut. Record 3 written long before a head that lacks it was removed from the lane's log."""
    import json

    from edge.fleet.officestore import HEAD_LAG_S, LaneEvidence, _content_hash, verify_lane

    chain, prev = [], "0" * 64
    for rid, t in ((1, 100.0), (2, 101.0), (3, 105.0)):
        fields = json.dumps({"t": t, "gate": "lane1", "kind": "decision", "decision": "deny"})
        h = _content_hash(prev, rid, fields)
        chain.append(("e1", rid, prev, h, 0.0, fields))
        prev = h
    two = chain[1][3]
    head2 = ("e1", 2, two, 104.0)  # signed at 104 s with two records; record 3 written at 105 s
    found = verify_lane(LaneEvidence("lane1", chain, [head2], []))
    assert [(f.broken, f.text) for f in found] == [(False, "records 3..3 not in a signed head yet")]
    late = ("e1", 2, two, 105.0 + HEAD_LAG_S + 1)  # a head signed well after record 3: cut
    found = verify_lane(LaneEvidence("lane1", chain, [head2, late], []))
    assert found[0].broken and "removed from the end" in found[0].text


def test_a_flood_on_one_topic_pushes_out_only_its_own_pending_messages(tmp_path):
    """Redemptions signed with a ticket key not here yet wait in `pending`; a lane that floods
    its own topic cannot push out another lane's waiting redemptions, nor park huge messages."""
    from edge.fleet.state import PENDING_BYTES_MAX, PENDING_PER_TOPIC

    st = FleetState(tmp_path / "fleet.db")
    st.add_pending("s/p/redemptions/lane2", b"real", 1.0)
    for k in range(PENDING_PER_TOPIC + 50):
        st.add_pending("s/p/redemptions/lane3", b"junk-%d" % k, 2.0)
    assert not st.add_pending("s/p/redemptions/lane3", b"x" * (PENDING_BYTES_MAX + 1), 3.0)
    kept = st.take_pending()
    assert ("s/p/redemptions/lane2", b"real") in kept
    flood = [p for t, p in kept if t.endswith("lane3")]
    assert len(flood) == PENDING_PER_TOPIC
    assert flood[-1] == b"junk-%d" % (PENDING_PER_TOPIC + 49)  # the newest kept
    st.close()


def _lane_applier(tmp_path, audit=lambda *a, **k: None, extra: str = ""):
    """A lane's OfficeApplier on its own fleet.db, and the office's issuer key to sign with."""
    from edge import tickets as tk
    from edge.fleet.apply import OfficeApplier

    tk.keygen(tmp_path / "office")
    (tmp_path / "gate.toml").write_text(
        '[gate]\nid = "g-1"\n[tickets]\npubkeys = ["office/issuer.pub"]\nledger = "ledger.db"\n'
        f'{extra}[audit]\npath = "audit.db"\n[fleet]\nbroker = "mqtt://127.0.0.1:1"\n'
        'site = "park"\nlane = "lane1"\nstate_db = "fleet.db"\n'
    )
    st = FleetState(tmp_path / "fleet.db")
    app = OfficeApplier(config_mod.load(tmp_path / "gate.toml"), st, audit)
    return st, app, tk.load_private(tmp_path / "office" / "issuer.key")


def test_an_office_lift_leaves_a_lanes_own_revocation_in_place(tmp_path):
    """Before, a lift took every lifted ticket off the lane's revocation list: a ticket the
    office revoked and lifted, then revoked at this lane (`ticket revoke`), was taken off
    again when sync applied the office's retained message at its next start, and opened the
    gate. Now a lift takes off only what the fleet itself put on the list."""
    from edge import tickets as tk
    from edge.fleet import messages as msg

    (tmp_path / "revoked.txt").touch()
    st, app, key = _lane_applier(tmp_path, extra='revocation_list = "revoked.txt"\n')

    def office(type_: str, seq: int, body: dict) -> None:
        signed = msg.sign(msg.Message(type_, "park", "office", seq, time.time(), body), key)
        app.handle(msg.verify_signed(signed, app.trusted), time.time())

    def listed() -> set[str]:
        return set(tk.load_revocations(tmp_path / "revoked.txt"))

    tk.revoke(tmp_path / "revoked.txt", ["T-9"])  # this lane's own, before the office's
    office(msg.REVOCATIONS, 5, {"revoked": {"T-7": 5, "T-9": 5}})
    assert listed() == {"T-7", "T-9"}
    office(msg.UNREVOCATIONS, 6, {"lifted": {"T-7": 5, "T-9": 5}})
    assert listed() == {"T-9"}  # the fleet's taken off, the lane's own kept
    tk.revoke(tmp_path / "revoked.txt", ["T-7"])  # revoked here afterwards
    office(msg.REVOCATIONS, 5, {"revoked": {"T-7": 5, "T-9": 5}})  # the retained message again
    office(msg.UNREVOCATIONS, 6, {"lifted": {"T-7": 5, "T-9": 5}})
    assert listed() == {"T-7", "T-9"}
    office(msg.REVOCATIONS, 7, {"revoked": {"T-8": 7}})
    office(msg.UNREVOCATIONS, 8, {"lifted": {"T-8": 7}})
    assert listed() == {"T-7", "T-9"}  # the fleet's own revoke and lift still apply
    office(msg.REVOCATIONS, 9, {"revoked": {"T-6": 9}})
    from edge.cli import main  # revoked here too, after the office: the lane's own from now on

    assert main(["ticket", "revoke", "--config", str(tmp_path / "gate.toml"),
                 "--list", str(tmp_path / "revoked.txt"), "T-6"]) == 0  # fmt: skip
    office(msg.UNREVOCATIONS, 10, {"lifted": {"T-6": 9}})
    assert listed() == {"T-6", "T-7", "T-9"}
    st.close()


def test_a_restarted_sync_writes_no_clock_measure_until_it_has_heard_enough():
    """After each start of its sync, a lane whose clock was 300 s off wrote "no measure"
    (None), then 0.0 (itself and the one member heard: the median of two is the one nearer
    zero, its own), and its tickets were let in for seconds until the others were heard. The
    measure is written once two of the others (every other one, in a fleet of three) were
    heard, or one for three heartbeat periods; until then the one last written stands."""
    from types import SimpleNamespace

    from edge.fleet.clock import fleet_clock
    from edge.fleet.identity import Roster
    from edge.fleet.sync import Sync

    assert fleet_clock({"lane1": -300.0}, "lane2", 5.0).offset == 0.0  # why one is not enough
    lanes = {"office": "k", "lane1": "k", "lane2": "k"}
    heard: dict[str, float] = {}
    sync = SimpleNamespace(
        roster=Roster(3, lanes),
        me="lane2",
        _readings=lambda: heard,
        fleet=SimpleNamespace(heartbeat_s=5.0),
        _started=time.monotonic(),  # just started
    )
    assert not Sync._measured(sync)
    heard["lane1"] = -300.0
    assert not Sync._measured(sync)  # one member heard, just after the start
    heard["office"] = -300.0
    assert Sync._measured(sync)
    assert fleet_clock(heard, "lane2", 5.0).offset == 300.0
    heard.pop("office")
    sync._started -= 15.0  # three heartbeat periods on: the one member heard is the measure
    assert Sync._measured(sync)
    sync.roster = Roster(1, {"office": "k", "lane2": "k"})  # a fleet of two: the other one
    sync._started = time.monotonic()
    assert Sync._measured(sync)
    sync.roster = Roster(-1, {})  # no roster yet: nothing to judge by
    assert not Sync._measured(sync)


def test_a_forget_replay_ends_only_with_the_offices_newest_list(tmp_path):
    """A new or restored lane replays the office's forget list before any face grant. A list
    put back on the broker from before a deletion ended the replay; now the office's fresh
    heartbeat names its newest list (its seq), and only a list that new, taken since the
    replay began, ends it, in either order. A lane whose newest list is older than the
    office's replays again. An office that names none (an earlier version): any list taken."""
    from edge.fleet import messages as msg
    from edge.fleet.apply import LIST_SINCE, OFFICE_LIST

    audited: list[tuple[str, str]] = []
    st, app, key = _lane_applier(
        tmp_path, lambda now, kind, detail, **k: audited.append((kind, detail))
    )

    def forget_list(seq: int, people: list[str]) -> None:
        signed = msg.sign(
            msg.Message(msg.FORGOTTEN, "park", "office", seq, time.time(), {"people": people}), key
        )
        app.handle(msg.verify_signed(signed, app.trusted), time.time())

    def replay(why: str) -> None:  # as sync's _save_epoch begins one
        st.put(forget_replay=why, **{OFFICE_LIST: None, LIST_SINCE: None})

    replay("new epoch 0123abcd: fleet.db made anew")
    app.office_floor(9, time.time())  # the office's newest is #9
    assert st.get("forget_replay") and audited == []  # waiting for a list: no attack seen
    forget_list(3, ["P-1"])  # an older list
    assert [k for k, _ in audited] == ["fleet_forget_list_old"]
    assert "#3, older than the office's newest #9" in audited[0][1]
    forget_list(4, ["P-1", "P-3"])  # another older one
    assert st.get("forget_replay")  # two names, as many as #9's: the seq is what counts
    forget_list(9, ["P-1", "P-2"])
    assert not st.get("forget_replay") and st.get("forgotten") == ["P-1", "P-2", "P-3"]
    replay("new epoch 4567cdef: restored")  # the list held from before does not end it
    app.office_floor(9, time.time())
    assert st.get("forget_replay")
    forget_list(9, ["P-1", "P-2"])  # the retained list, asked for again
    assert not st.get("forget_replay")
    app.office_floor(12, time.time())  # one more forgotten since: faces wait for the list
    assert "#12, the newest applied here #9" in st.get("forget_replay")
    forget_list(12, ["P-1", "P-2", "P-4"])
    assert not st.get("forget_replay")
    replay("new epoch 0000ffff: restored")
    app.office_floor(0, time.time())  # an office that names none: any list taken since
    assert st.get("forget_replay")
    forget_list(12, ["P-1", "P-2", "P-4"])
    assert not st.get("forget_replay")
    st.close()


def test_only_a_fresh_readable_office_heartbeat_names_the_list_to_replay():
    """An office heartbeat kept from long ago (a broker operator's) names an older list: it is
    not taken; nor a value that is no seq. One from an office of before (no field): 0."""
    from types import SimpleNamespace

    from edge.fleet import messages as msg
    from edge.fleet.sync import Sync

    heard: list[int] = []
    revoked: list[int] = []
    now = 1_000_000.0
    me = SimpleNamespace(
        fleet=SimpleNamespace(heartbeat_s=5.0, max_clock_offset_s=5.0),
        clock=lambda: now,
        _floor_said="",
        applier=SimpleNamespace(
            office_floor=lambda seq, t: heard.append(seq),
            office_newest=lambda newest, t: revoked.append(newest),
        ),
    )

    def beat(t: float, **body) -> None:
        Sync._office_floor(me, msg.Message(msg.HEARTBEAT, "park", "office", 1, t, body))

    beat(now - 3, period=5.0, forget_list_seq=7, revoked_seq=11, roster_seq=4)  # fresh
    beat(now - 600, period=5.0, forget_list_seq=3, revoked_seq=2)  # ten minutes old: not taken
    beat(now + 600, period=5.0, forget_list_seq=3)  # dated ahead: not taken
    beat(now - 600, period=float("nan"), forget_list_seq=3)  # a period that is no number
    for junk in ("9", None, True, 2.5):
        beat(now, period=5.0, forget_list_seq=junk)
        beat(now, period=5.0, forget_list_seq=8, revoked_seq=junk)
    beat(now - 1, period=5.0)  # an office of before
    beat(now - 1, period=5.0, forget_list_seq=-4, revoked_seq=-1)
    assert heard == [7, 0, 0]
    assert revoked == [{"revocations": 11, "roster": 4}, {}, {"revocations": 0}]
    assert me._floor_said == ""  # the last one was taken


def test_the_office_names_a_list_in_its_heartbeat_only_once_it_was_handed_to_the_broker():
    """The heartbeat named the newest revocation, roster and forget list as soon as they were
    queued: one queued behind others (an import's enrollments) was named before it was sent,
    and every lane refused tickets (and faces) until it came. What is named is read again only
    once nothing queued waits."""
    from types import SimpleNamespace

    from edge.fleet.identity import Roster
    from edge.fleet.sync import Sync

    now = {"forget_list_seq": 4, "revoked_seq": 7, "roster": 2}
    queued: list = []
    me = SimpleNamespace(
        _named=None,
        sent_office=10,
        state=SimpleNamespace(get=now.get, roster=lambda: Roster(now["roster"], {})),
        office_store=SimpleNamespace(outgoing=lambda after, n: queued[:n]),
    )
    first = {"forget_list_seq": 4, "revoked_seq": 7, "roster_seq": 2}
    assert Sync._newest_named(me) == first
    now.update(revoked_seq=9, roster=11)  # a revocation and a roster queued, not yet sent
    queued[:] = [(11, "t", b"", True), (12, "t", b"", True)]
    assert Sync._newest_named(me) == first
    queued.clear()  # handed to the broker
    assert Sync._newest_named(me) == {"forget_list_seq": 4, "revoked_seq": 9, "roster_seq": 11}
    queued[:] = [(13, "t", b"", True)]
    me._named = None  # a sync just started with messages queued: what the store says
    assert Sync._newest_named(me)["revoked_seq"] == 9


def test_a_lane_redeems_no_ticket_while_it_lacks_the_offices_newest_revocation_or_roster(
    tmp_path,
):
    """A lane given an older revocation list or roster (kept and put back on the broker) took
    it as found: it redeemed the tickets revoked since, and took a removed lane's word. The
    office's fresh heartbeat names its newest revocation and roster: until the lane holds both,
    the link check refuses tickets (behind_office), said at once and audited once a later
    heartbeat finds it still so; the office's own clear it, and a lift or an older list does
    not."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.fleet import messages as msg
    from edge.fleet.identity import public_text
    from edge.fleet.state import BEHIND_OFFICE, check_link

    (tmp_path / "revoked.txt").touch()
    audited: list[tuple[str, str]] = []
    st, app, key = _lane_applier(
        tmp_path,
        lambda t, kind, detail: audited.append((kind, detail)),
        extra='revocation_list = "revoked.txt"\n',
    )
    fl = app.cfg.fleet
    lane_pub = public_text(Ed25519PrivateKey.generate().public_key())

    def office(type_: str, seq: int, body: dict) -> None:
        signed = msg.sign(msg.Message(type_, "park", "office", seq, time.time(), body), key)
        app.handle(msg.verify_signed(signed, app.trusted), time.time())

    def reason() -> str:
        return check_link(fl, st, time.time()).reason

    app.office_newest({}, time.time())  # an office of before: nothing to compare
    app.office_newest({"revocations": 0, "roster": 0}, time.time())  # an office with neither
    assert check_link(fl, st, time.time()).ok
    office(msg.REVOCATIONS, 5, {"revoked": {"T-1": 5}})  # the older list, put back
    office(msg.ROSTER, 6, {"lanes": {"lane1": lane_pub}})
    for _ in range(3):  # heartbeats every few seconds: said once, audited at the second
        app.office_newest({"revocations": 9, "roster": 6}, time.time())
    link = check_link(fl, st, time.time())
    assert (link.ok, link.reason) == (False, BEHIND_OFFICE)
    assert "revocation is #9" in link.detail and "#5" in link.detail
    assert "roster" not in link.detail
    assert [k for k, _ in audited] == ["fleet_behind_office"]
    office(msg.UNREVOCATIONS, 7, {"lifted": {"T-1": 5}})  # a lift holds no newer revocation
    office(msg.REVOCATIONS, 3, {"revoked": {"T-0": 3}})  # nor an even older list
    assert reason() == BEHIND_OFFICE
    office(msg.REVOCATIONS, 9, {"revoked": {"T-1": 5, "T-2": 9}})  # the office's list
    assert check_link(fl, st, time.time()).ok
    assert not st.get(BEHIND_OFFICE)
    assert "T-2" in (tmp_path / "revoked.txt").read_text()
    app.office_newest({"revocations": 9, "roster": 6}, time.time())  # again: nothing to say
    assert len(audited) == 1
    app.office_newest({"revocations": 9, "roster": 10}, time.time())  # a lane removed since
    assert "roster is #10, the newest applied here #6" in check_link(fl, st, time.time()).detail
    assert len(audited) == 1  # not yet: the roster may be on its way
    app.office_newest({"revocations": 9, "roster": 10}, time.time())  # still so: audited
    office(msg.ROSTER, 8, {"lanes": {"lane1": lane_pub, "lane9": lane_pub}})  # older, put back
    assert reason() == BEHIND_OFFICE
    app.office_newest({"revocations": 9, "roster": 10}, time.time())
    assert "applied here #8" in audited[-1][1]  # what it holds now
    office(msg.ROSTER, 10, {"lanes": {"lane1": lane_pub}})  # the office's
    assert check_link(fl, st, time.time()).ok
    assert len(audited) == 3
    st.close()


def test_a_lane_that_takes_no_revocation_list_is_told_what_to_set(tmp_path):
    """A lane set up by hand without tickets.revocation_list takes no office revocation: once
    the office has revoked one it is behind for good, and the reason says what to set."""
    from edge.fleet.state import check_link

    st, app, _ = _lane_applier(tmp_path)
    app.office_newest({"revocations": 3, "roster": 0}, time.time())
    link = check_link(app.cfg.fleet, st, time.time())
    assert not link.ok and "set tickets.revocation_list" in link.detail
    st.close()


def test_a_clean_stop_is_not_logged_as_an_outage(caplog):
    """Every stop of sync logged "disconnected from broker ...; retrying" as a warning and
    counted a disconnect: an operator reading the journal saw an outage at each restart."""
    import logging
    import threading
    from types import SimpleNamespace

    from edge.fleet.sync import Sync

    def member(closing: bool) -> SimpleNamespace:
        return SimpleNamespace(
            _conn=0, _goodbye=False, _closing=closing, connected=True, _outage_logged=False,
            _resume_until=0.0, stats={}, wake=threading.Event(),
        )  # fmt: skip

    stopping, dropped = member(True), member(False)
    with caplog.at_level(logging.INFO, logger="edge.fleet.sync"):
        Sync._on_disconnect(stopping, None, None, None, "Normal disconnection", None)
        said_at_stop = [(r.levelname, r.getMessage()) for r in caplog.records]
        Sync._on_disconnect(dropped, None, None, None, "Unspecified error", None)
    assert said_at_stop == [("INFO", "sync disconnected from broker: stopped")]
    assert not stopping.connected and stopping.stats == {}
    assert dropped.stats == {"disconnects": 1}  # a real drop is still one
    assert "retrying" in caplog.records[-1].getMessage()
