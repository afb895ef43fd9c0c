"""A supervisor's override: the office signs "open lane N once", the lane's sync hands it to the
gate on disk, the gate opens once or refuses (expired, replayed, another lane's, forged) and
audits it. The rules alone, then two lanes and the office on a real Mosquitto with the real gate.

Every wait is bounded polling for a condition; no timing is asserted.
"""

from __future__ import annotations

import contextlib
import time

import pytest
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge import tickets as tk
from edge.errors import ConfigError, ReasonError
from edge.fleet import messages as msg
from edge.fleet.office import office_store, publish_override
from edge.fleet.override import (
    EXPIRED,
    INVALID,
    MAX_VALID_S,
    OTHER_LANE,
    REPLAYED,
    VIA,
    judge,
    override_body,
)
from edge.fleet.state import FleetState
from edge.gate.audit import AuditLog
from edge.gate.daemon import Gate
from edge.lab.broker import Mosquitto

from .console_harness import (
    USERS,
    NoFrames,
    Syncs,
    gate_running,
    make_park,
    need_mosquitto,
    wait_for,
)
from .helpers import FLEET_SITE

SITE = FLEET_SITE


def _signed(key, body: dict, t: float, type_: str = msg.OVERRIDE, site: str = SITE) -> bytes:
    m = msg.Message(type_, site, msg.OFFICE, 7, t, body)
    return msg.encode(msg.sign(m, key))


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    priv, pub = tk.keygen(tmp_path_factory.mktemp("issuer"))
    return tk.load_private(priv), tk.load_public(pub)


# --- the rules -----------------------------------------------------------------------------


def test_judge_accepts_a_fresh_override_for_this_lane_only(issuer):
    key, pub = issuer
    now = 1_800_000_000.0
    body = override_body("lane1", "  wheelchair\n user ", "sam", now, 30)
    assert body["reason"] == "wheelchair user" and len(body["nonce"]) == 32
    v = judge(_signed(key, body, now), SITE, "lane1", now + 5, [pub], 5.0)
    assert (v.ok, v.reason, v.detail) == (True, VIA, "by sam: wheelchair user")
    assert v.subject == "O-" + body["nonce"][:16]
    rec = v.record("lane1", now + 5)
    assert (rec.kind, rec.decision, rec.via, rec.reason) == ("decision", "grant", "override", VIA)
    assert v.notice("lane1", now).notice == "welcome"
    other = judge(_signed(key, body, now), SITE, "lane2", now + 5, [pub], 5.0)
    assert (other.ok, other.reason) == (False, OTHER_LANE)
    assert other.notice("lane2", now).notice == "see_staff"


def test_judge_refuses_expired_future_too_long_forged_and_other_types(issuer, tmp_path):
    key, pub = issuer
    now = 1_800_000_000.0
    body = override_body("lane1", "failed ticket checked by hand", "sam", now, 30)
    late = judge(_signed(key, body, now), SITE, "lane1", now + 31, [pub], 5.0)
    assert (late.ok, late.reason) == (False, EXPIRED)
    ahead = judge(_signed(key, body, now + 60), SITE, "lane1", now, [pub], 5.0)
    assert (ahead.ok, ahead.reason) == (False, INVALID)
    long = {**body, "until": now + MAX_VALID_S + 1}
    assert judge(_signed(key, long, now), SITE, "lane1", now + 1, [pub], 5.0).reason == INVALID
    other_key = tk.load_private(tk.keygen(tmp_path / "other")[0])
    forged = judge(_signed(other_key, body, now), SITE, "lane1", now + 1, [pub], 5.0)
    assert (forged.ok, forged.reason, forged.subject) == (False, INVALID, "")
    edited = _signed(key, body, now).replace(b"lane1", b"lane2")
    assert judge(edited, SITE, "lane2", now + 1, [pub], 5.0).reason == INVALID
    person = _signed(key, body, now, type_=msg.PERSON)
    assert judge(person, SITE, "lane1", now + 1, [pub], 5.0).reason == INVALID
    assert judge(b"junk", SITE, "lane1", now, [pub], 5.0).reason == INVALID
    assert judge(_signed(key, body, now, site="other"), SITE, "lane1", now, [pub], 5).reason == (
        INVALID
    )
    with pytest.raises(ReasonError, match="reason is empty"):
        override_body("lane1", "   ", "sam", now)
    assert override_body("lane1", "x" * 200, "sam", now)["reason"] == "x" * 200
    with pytest.raises(ReasonError, match="201 characters long, more than 200"):
        override_body("lane1", "x" * 201, "sam", now)  # was cut to 200 without a word
    with pytest.raises(ConfigError, match="validity"):
        override_body("lane1", "x", "sam", now, MAX_VALID_S + 1)


def test_inbox_spends_each_nonce_once(lane_inbox):
    key, st, inbox = lane_inbox
    now = time.time()
    payload = _signed(key, override_body("lane1", "wheelchair user", "sam", now), now)
    st.add_override(payload, now)
    st.add_override(payload, now)  # the same message delivered twice
    got = [v.reason for v in inbox.take(now + 1)]
    assert got == [VIA, REPLAYED]
    inbox._next = 0.0
    st.add_override(payload, now)  # and again later: still spent
    assert [v.reason for v in inbox.take(now + 2)] == [REPLAYED]
    inbox._next = 0.0
    assert inbox.take(now + 3) == []  # taken means gone


def test_a_malformed_override_is_refused_and_never_jams_the_inbox(lane_inbox):
    """A payload too deeply nested to decode, or a row stored as text, is refused (and so
    audited by the gate) and taken out; the genuine override behind it still opens once."""
    key, st, inbox = lane_inbox
    now = time.time()
    st.add_override(b"[" * 100_000 + b"]" * 100_000, now)
    st.conn.execute(
        "INSERT INTO overrides_in (payload, received) VALUES (?, ?)", ("not bytes", now)
    )
    st.conn.commit()
    st.add_override(_signed(key, override_body("lane1", "pram", "sam", now), now), now)
    assert [v.reason for v in inbox.take(now + 1)] == [INVALID, INVALID, VIA]
    inbox._next = 0.0
    assert inbox.take(now + 2) == []


# --- on a real broker, with the real gate ---------------------------------------------------


def _overrides(audit_db, subject: str | None = None) -> list:
    with AuditLog(audit_db) as a:
        return [
            r
            for r in a.records("decision")
            if r.via == VIA and (subject is None or r.subject == subject)
        ]


@pytest.fixture(scope="module")
def park(tmp_path_factory):
    need_mosquitto()
    root = tmp_path_factory.mktemp("override-park")
    with Mosquitto(root / "mosquitto", users=USERS) as broker:
        p = make_park(root, broker.url)
        syncs = Syncs(p).start()
        p.syncs = syncs  # type: ignore[attr-defined]
        try:
            yield p
        finally:
            syncs.stop()


def _lane(park, i: int) -> config_mod.Config:
    return config_mod.override(park.cfg(i), gate={"mode": "ticket-only"})


def test_override_opens_the_lane_once_and_both_audit_logs_keep_it(park):
    office = park.office_cfg
    lane1_audit = park.lanes[0].dir / "audit.db"
    with gate_running(_lane(park, 1)) as (gate, events):
        q, oid = publish_override(office, park.priv, "lane1", "wheelchair user", "sam")
        recs = wait_for(lambda: _overrides(lane1_audit, oid), 60, "lane1 applies the override")
        wait_for(lambda: events, 10, "the decision event")
        assert gate.relay.pulses == 1
    (r,) = recs
    assert (r.decision, r.via, r.reason) == ("grant", "override", "override")
    assert r.detail == "by sam: wheelchair user"
    assert events[0]["via"] == "override" and events[0]["override"] == oid
    # the lane's record reaches the office (the console's decisions page reads it there)
    with office_store(office) as store:
        wait_for(
            lambda: [x for x in store.audit_rows() if x.get("subject") == oid],
            60,
            "the lane's override record at the office",
        )
    assert _overrides(park.lanes[1].dir / "audit.db", oid) == []  # lane2 never saw it


def test_replayed_expired_and_misaddressed_overrides_are_refused_and_audited(park):
    office = park.office_cfg
    lane1_audit = park.lanes[0].dir / "audit.db"
    key = tk.load_private(park.priv)
    now = time.time()
    with gate_running(_lane(park, 1)) as (gate, _):
        with office_store(office) as store:  # signed and queued as publish_override does
            body = override_body("lane1", "failed ticket, checked by hand", "sam", now, 60)
            topic = msg.override_topic(park.site, "lane1")
            _, m = store.queue(msg.OVERRIDE, park.site, body, key, topic, retain=False)
        oid = "O-" + body["nonce"][:16]
        wait_for(lambda: _overrides(lane1_audit, oid), 60, "the first delivery")
        with office_store(office) as store:  # the broker's operator sends the same bytes again
            store.conn.execute(
                "INSERT INTO office_out (topic, payload, retain, queued) VALUES (?, ?, 0, ?)",
                (topic, msg.encode(m), now),
            )
        twice = wait_for(
            lambda: len(recs := _overrides(lane1_audit, oid)) == 2 and recs, 60, "the replay"
        )
        assert [(x.decision, x.reason) for x in twice] == [("grant", VIA), ("deny", REPLAYED)]
        assert gate.relay.pulses == 1

        _, late = publish_override(
            office, park.priv, "lane1", "queued too long", "sam", 30, now - 100
        )
        with office_store(office) as store:  # signed for lane2, sent on lane1's topic
            body2 = override_body("lane2", "wrong lane", "sam", time.time())
            store.queue(msg.OVERRIDE, park.site, body2, key, topic, retain=False)
        other = "O-" + body2["nonce"][:16]
        refused = wait_for(
            lambda: (
                (a := _overrides(lane1_audit, late))
                and (b := _overrides(lane1_audit, other))
                and a + b
            ),
            60,
            "the expired and the misaddressed override",
        )
        assert [(x.decision, x.reason) for x in refused] == [
            ("deny", EXPIRED),
            ("deny", OTHER_LANE),
        ]
        assert "by sam" in refused[0].detail
        # a compromised sync writing an override the office never signed
        with contextlib.closing(FleetState(park.lanes[0].dir / "fleet.db")) as st:
            st.add_override(b'{"v": 2, "type": "x"}', now)
        bad = wait_for(
            lambda: [x for x in _overrides(lane1_audit) if x.reason == INVALID],
            30,
            "the unsigned override refused",
        )
        assert bad[0].decision == "deny"
        assert gate.relay.pulses == 1  # nothing but the first override opened the gate


def test_the_lanes_sync_refuses_an_override_not_signed_by_the_issuer(park, tmp_path):
    office = park.office_cfg
    other_priv, _ = tk.keygen(tmp_path / "not-the-issuer")
    publish_override(office, other_priv, "lane1", "forged", "mallory")
    lane1_audit = park.lanes[0].dir / "audit.db"

    def refused() -> bool:
        with AuditLog(lane1_audit) as a:
            return any(
                "override" in r.detail and "unknown key" in r.detail for r in a.records("fleet")
            )

    wait_for(refused, 60, "lane1's sync refuses the forged override")
    with contextlib.closing(FleetState(park.lanes[0].dir / "fleet.db")) as st:
        assert st.take_overrides() == []  # nothing was left for the gate


def test_override_of_a_lane_not_in_the_roster_is_refused_at_the_office(park):
    with pytest.raises(ConfigError, match="no lane 'lane9'"):
        publish_override(park.office_cfg, park.priv, "lane9", "x", "sam")


def test_an_override_the_office_cannot_record_is_never_sent(park):
    """The office's audit record is written first: when it fails, nothing is queued."""

    def queued() -> int:  # the office's persisted message counter
        with office_store(park.office_cfg) as store:
            return store.next_seq()

    seen: list[tuple[str, int]] = []

    def broken_log(record) -> None:
        seen.append((record.kind, queued()))
        assert record.via == VIA and record.detail.startswith("by sam: lane1: x")
        raise OSError("disk full")

    before = queued()
    with pytest.raises(OSError, match="disk full"):
        publish_override(park.office_cfg, park.priv, "lane1", "x", "sam", record=broken_log)
    assert seen == [("override", before)]  # asked to record before anything was queued
    assert queued() == before  # and nothing was


# --- what the Lanes page shows: models, config version, gone by the last will ---------------


def test_heartbeat_carries_models_and_config_version_then_gone_when_sync_stops(park):
    from edge.console.app import lane_row
    from edge.fleet.office import fleet_status
    from edge.gate.versions import config_version, model_versions

    office = park.office_cfg
    cfg = park.cfg(2)  # face-or-ticket: the face path's models are in use
    with Gate(cfg, source=NoFrames(), pin_factory=MockFactory()) as gate:
        gate.tick(14.5)  # the gate's once-a-second status, read by sync's heartbeat
    models = model_versions(cfg, True)
    assert set(models) == {cfg.vision.detector, cfg.vision.embedder, cfg.liveness.model}

    def heard() -> dict | None:
        v = fleet_status(office)["lanes"].get("lane2", {})
        return v if v.get("models") == models else None

    v = wait_for(heard, 60, "lane2's heartbeat with its models at the office")
    assert v["config_version"] == config_version(cfg) and v["state"] == "ok"
    row = lane_row("lane2", v, office.fleet.max_clock_offset_s)
    assert row["online"]
    for name, sha in models.items():
        assert f"{name} {sha}" in row["models"]
    # lanes configured alike show one config version; another setting shows another
    same = config_mod.override(park.cfg(1), screen={"socket": cfg.screen.socket})
    assert config_version(same) == config_version(cfg)  # only the names differ
    assert config_version(config_mod.override(cfg, relay={"pulse_s": 0.5})) != v["config_version"]
    sync, thread = park.syncs.running[2]  # lane2's sync stops: its "stopped" goodbye
    sync.stop_requested = True
    thread.join(15)
    gone = wait_for(
        lambda: (x := fleet_status(office)["lanes"]["lane2"])["state"] == "gone" and x,
        60,
        "lane2 gone at the office",
    )
    assert gone["gone"] == "stopped"
    row = lane_row("lane2", gone, office.fleet.max_clock_offset_s)
    assert (row["state"], row["gone"], row["online"]) == ("gone", "stopped", False)


def test_a_broken_override_inbox_never_stops_the_gate(park, caplog, monkeypatch):
    import sqlite3

    with Gate(_lane(park, 1), source=NoFrames(), pin_factory=MockFactory()) as gate:

        def locked(now):
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(gate.overrides, "take", locked)
        gate.take_overrides()  # logged, not raised: the loop goes on deciding
        assert gate.relay.pulses == 0
    assert "override inbox error=database is locked" in caplog.text


def test_an_override_the_lane_cannot_record_does_not_open(park, monkeypatch):
    """As a face grant: no record, no entry. Before, the relay opened first and a failed audit
    record (a locked or full disk) was only logged: the lane's log never showed the entry."""
    from edge.errors import AuditError
    from edge.fleet.override import Verdict

    got: list[dict] = []
    with Gate(_lane(park, 1), got.append, source=NoFrames(), pin_factory=MockFactory()) as gate:
        monkeypatch.setattr(gate.overrides, "take", lambda now: [Verdict(True, VIA, "by sam: x")])

        def full(record):
            raise AuditError("audit log: database or disk is full")

        monkeypatch.setattr(gate.audit, "record", full)
        gate.take_overrides()
        assert gate.relay.pulses == 0
    assert [(e["decision"], e["reason"]) for e in got] == [("deny", "audit_error")]


@pytest.mark.parametrize("until", ["nan", "inf", "-inf", "NaN"])
def test_judge_refuses_an_override_whose_validity_is_not_a_time(issuer, until):
    """An `until` of NaN compared false with every bound (too long, expired), so a signed body
    carrying it opened the lane at any time; infinity was refused only as too long."""
    key, pub = issuer
    now = 1_800_000_000.0
    body = {**override_body("lane1", "by hand", "sam", now, 30), "until": until}
    payload = _signed(key, body, now)
    for later in (now + 1, now + 10 * MAX_VALID_S):
        v = judge(payload, SITE, "lane1", later, [pub], 5.0)
        assert (v.ok, v.reason) == (False, INVALID), v
