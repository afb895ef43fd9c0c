"""Issue 20's attacks on the fleet, on a real mosquitto: each reproduced as an attacker would.

The attacker holds what the row says: a lane's broker login, and (for rows 3-5) that lane's
signing key too (a shell on one lane), or a copy of messages read from the broker. Each test
first did the attack against the previous protocol and failed there (the ticket was granted
again, the clock moved, the status lied); the assertions are what a site must see instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge import config as config_mod
from edge.config import PROJECT_ROOT
from edge.fleet import messages as msg
from edge.fleet.identity import load_lane_key, public_text
from edge.gate.audit import AuditLog
from edge.lab.broker import Mosquitto
from tests.helpers import copy_db
from tests.test_fleet import FAST, USERS, OneShot, Park, _need_mosquitto, cli, verify, wait_for


def _signed_as(park: Park, i: int, m: msg.Message) -> bytes:
    """A message signed with lane i's own key: what an attacker with a shell on lane i can do."""
    return msg.encode(msg.sign(m, load_lane_key(park.cfg(i))))


def _publish(park: Park, i: int, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish with member i's broker login (its sync must not be running: one login, one
    session)."""
    with OneShot(park.cfg(i), "attacker") as c:
        c.publish(topic, payload, retain=retain)


# --- row 1: a lane's Pi replaced, its sequence numbers restart ------------------------------


def test_row1_replaced_lane_is_a_new_epoch_not_a_replay(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        park.start(1)
        park.start(2)
        assert verify(park, 1, park.ticket("T-BEFORE"))[0] == 0
        wait_for(lambda: park.remote(2, "T-BEFORE") == 1, what="lane2 hears T-BEFORE")
        park.stop(1)
        d = park.lanes[0].dir  # a new SD card: ledger, audit log, fleet state and key all new
        for p in [
            *d.glob("ledger.db*"),
            *d.glob("audit.db*"),
            *d.glob("fleet.db*"),
            *d.glob("evidence.*"),
        ]:
            p.unlink()
        (d / "var" / "lane.key").unlink()
        r = cli("ledger", "init", "--config", str(park.lanes[0].config))
        assert r.returncode == 0, r.stderr
        assert "lane key" in r.stdout
        assert f"`edge-gate fleet join --config {park.lanes[0].config}`" in r.stdout, r.stdout
        r = cli("fleet", "join", "--json", "--config", str(park.lanes[0].config))
        pub = json.loads(r.stdout)["public_key"]
        r = cli(
            "fleet", "roster", "add", "lane1", pub, "--key", str(park.priv),
            "--config", str(park.office.config),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "published the roster" in r.stdout
        park.start(1)
        text = park.ticket("T-AFTER")
        assert verify(park, 1, text)[0] == 0  # lane1's outbox seq 1 again, in a new epoch
        wait_for(lambda: park.remote(2, "T-AFTER") == 1, what="lane2 hears T-AFTER")
        rc, out = verify(park, 2, text)
        assert rc != 0
        assert out["reason"] == "already_used"
    finally:
        park.stop_all()


def test_row1_restored_lane_starts_a_new_epoch_and_replays_the_forget_list(
    broker, office_keys, tmp_path
):
    """A whole-disk restore of lane1 (ledger, audit log, fleet state, gallery) from before
    later redemptions and before a deletion: its next redemptions count, the person is gone."""
    from tests.test_fleet import _lane_people, _office_person

    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    d = park.lanes[0].dir
    backup = tmp_path / "backup"
    backup.mkdir()
    try:
        park.start(1)
        park.start(2)
        park.wait_ready(1, 2)
        from edge.fleet.office import publish_enrollment, publish_person

        ocfg = park.cfg(0)
        pid = _office_person(park)
        od = park.office.dir
        publish_enrollment(ocfg, park.priv, od / "gallery.db", od / "gallery.key", pid)
        wait_for(lambda: _lane_people(park, 1), what="enrolled at lane1")
        assert verify(park, 1, park.ticket("T-1"))[0] == 0
        wait_for(lambda: park.remote(2, "T-1") == 1, what="lane2 hears T-1")
        park.stop(1)
        for f in ("ledger.db", "audit.db", "fleet.db", "gallery.db"):
            copy_db(d / f, backup / f)
        park.start(1)
        for k in (2, 3):
            assert verify(park, 1, park.ticket(f"T-{k}"))[0] == 0
        wait_for(lambda: park.remote(2, "T-3") == 1, what="lane2 hears T-3")
        publish_person(ocfg, park.priv, pid, "forget")
        wait_for(lambda: _lane_people(park, 1) == [], what="forgotten at lane1")
        park.stop(1)
        for f in ("ledger.db", "audit.db", "fleet.db", "gallery.db"):
            for old in d.glob(f + "*"):
                old.unlink()
            shutil.copy(backup / f, d / f)
        assert [p.id for p in _lane_people(park, 1)] == [pid]  # the backup brings them back
        restored_epoch = park.state(1, "epoch")
        park.start(1)
        # the office's forget list is retained: it can arrive within the same step that detects
        # the restore, so wait for the new epoch, then for the list to have been applied
        wait_for(
            lambda: park.state(1, "epoch") not in (None, restored_epoch),
            timeout=20,
            what="restore detected (a new epoch)",
        )
        wait_for(lambda: not park.state(1, "forget_replay"), what="forget list replayed")
        assert _lane_people(park, 1) == []
        text = park.ticket("T-4")
        # the lane's own evidence witness knows the ledger went back: tickets wait for recovery
        rc, out = verify(park, 1, text)
        assert (rc, out["reason"]) == (2, "ledger_error"), out
        park.stop(1)
        # the supervisor's two commands; the lane's entries since the backup are in neither file
        for step in (("audit", "adopt"), ("ledger", "recover", "--accept-loss")):
            r = cli(*step, "--config", str(park.lanes[0].config))
            assert r.returncode == 0, r.stdout + r.stderr
        park.start(1)
        assert verify(park, 1, text)[0] == 0  # outbox numbers again from the restored copy's
        wait_for(lambda: park.remote(2, "T-4") == 1, what="lane2 hears T-4")
        assert verify(park, 2, text)[1]["reason"] == "already_used"
        why = [r.detail for r in park.audit(1, "new_epoch")]
        assert any(d.startswith("the ledger's outbox went back") for d in why), why
    finally:
        park.stop_all()


def test_row1_a_lane_that_joins_later_is_not_given_an_older_forget_list(
    broker, office_keys, tmp_path
):
    """A broker's operator who kept the office's older signed messages puts them back for a
    lane that joins later: the forget list from before a deletion, and the person's enrollment.
    The new lane applied both and granted the forgotten person by face. The office's fresh
    heartbeat says how long its list is: the lane grants no face until it holds a list as long,
    and that list erases the person."""
    from edge.fleet.apply import OFFICE_LIST
    from edge.fleet.office import publish_enrollment, publish_person, wait_all_sent
    from edge.fleet.state import FleetState, check_faces
    from tests.test_fleet import _lane_people, _office_person

    park = Park(tmp_path, broker.url, office_keys, lanes=2)  # the office's sync started
    try:
        park.start(1)
        park.wait_ready(1)
        ocfg, od = park.cfg(0), park.office.dir
        pid = _office_person(park)
        publish_enrollment(ocfg, park.priv, od / "gallery.db", od / "gallery.key", pid)
        wait_for(lambda: _lane_people(park, 1), what="enrolled at lane1")
        site = ocfg.fleet.site
        kept = {
            t: _retained(park, t)
            for t in (
                msg.topic(site, "office", "forgotten"),
                msg.topic(site, "office", "people", pid),
            )
        }
        publish_person(ocfg, park.priv, pid, "forget")
        wait_for(lambda: _lane_people(park, 1) == [], what="forgotten at lane1")
        assert wait_all_sent(ocfg, "the forget")  # nothing left to send again at its restart
        park.stop(0)
        for t, payload in kept.items():  # the older messages put back on the broker
            _publish(park, 0, t, payload, retain=True)
        park.start(0)
        park.start(2)  # a new Pi joins
        wait_for(
            lambda: park.state(2, "roster") and park.state(2, "forgotten") is not None,
            what="lane2 took the roster and a forget list",
        )
        wait_for(lambda: _lane_people(park, 2), what="lane2 took the older enrollment")
        time.sleep(10 * FAST["heartbeat_s"])  # the office's heartbeats heard meanwhile
        assert park.state(2, "forget_replay")  # the list it took is older than the office's
        assert park.state(2, OFFICE_LIST) == park.state(0, "forget_list_seq") > 0
        assert park.audit(2, "fleet_forget_list_old")
        st = FleetState(park.cfg(2).resolve(park.cfg(2).fleet.state_db))
        try:
            assert check_faces(park.cfg(2).fleet, st).reason == "forget_replay"
        finally:
            st.close()
        publish_person(ocfg, park.priv, pid, "forget")  # the office sends its list again
        wait_for(lambda: not park.state(2, "forget_replay"), what="lane2 replayed the list")
        assert _lane_people(park, 2) == []
        assert pid in park.state(2, "forgotten")
    finally:
        park.stop_all()


def test_row1_a_lane_that_joins_later_redeems_no_ticket_revoked_since_its_list(
    broker, office_keys, tmp_path
):
    """A broker's operator who kept the office's older revocation list puts it back for a lane
    that joins later: the lane took it as found and redeemed a ticket the office had revoked
    since. The office's fresh heartbeat names its newest revocation: the lane redeems no ticket
    until it holds it, and then refuses that one as revoked."""
    from edge import tickets as tk
    from edge.fleet.apply import OFFICE_NEWEST
    from edge.fleet.office import publish_revocations, wait_all_sent
    from edge.fleet.state import BEHIND_OFFICE

    park = Park(tmp_path, broker.url, office_keys, lanes=2)  # the office's sync started
    try:
        park.start(1)
        park.wait_ready(1)
        ocfg = park.cfg(0)
        lane1_list = park.lanes[0].dir / "revoked.txt"
        publish_revocations(ocfg, park.priv, frozenset({"T-LOST"}))
        wait_for(lambda: "T-LOST" in tk.load_revocations(lane1_list), what="T-LOST at lane1")
        topic = msg.topic(ocfg.fleet.site, "office", "revocations")
        kept = _retained(park, topic)
        publish_revocations(ocfg, park.priv, frozenset({"T-STOLEN"}))
        wait_for(lambda: "T-STOLEN" in tk.load_revocations(lane1_list), what="T-STOLEN at lane1")
        assert wait_all_sent(ocfg, "the revocation")
        park.stop(0)
        _publish(park, 0, topic, kept, retain=True)  # the older list put back on the broker
        park.start(0)
        park.start(2)  # a new Pi joins
        lane2_list = park.lanes[1].dir / "revoked.txt"
        wait_for(lambda: lane2_list.exists() and "T-LOST" in tk.load_revocations(lane2_list),
                 what="lane2 took the older list")  # fmt: skip
        wait_for(lambda: park.state(2, BEHIND_OFFICE), what="lane2 heard the office's newest")
        assert "T-STOLEN" not in tk.load_revocations(lane2_list)
        newest = park.state(2, OFFICE_NEWEST)
        assert newest["revocations"] == park.state(0, "revoked_seq") > 0
        assert newest["roster"] == park.state(0, "roster")["seq"] > 0  # the roster it holds
        assert "revocation" in park.state(2, BEHIND_OFFICE)
        assert "roster" not in park.state(2, BEHIND_OFFICE)
        wait_for(lambda: park.audit(2, "fleet_behind_office"), what="audited at a later heartbeat")
        for tid in ("T-STOLEN", "T-FINE"):  # neither redeemed: which are revoked is not known
            rc, out = verify(park, 2, park.ticket(tid))
            assert (rc != 0, out["reason"]) == (True, BEHIND_OFFICE), out
        assert verify(park, 1, park.ticket("T-OTHER"))[0] == 0  # a lane that holds it redeems
        publish_revocations(ocfg, park.priv, frozenset({"T-STOLEN"}))  # sent again
        wait_for(lambda: not park.state(2, BEHIND_OFFICE), what="lane2 took the newest list")
        rc, out = verify(park, 2, park.ticket("T-STOLEN"))
        assert (rc != 0, out["reason"]) == (True, "revoked"), out
        assert verify(park, 2, park.ticket("T-FINE"))[0] == 0
    finally:
        park.stop_all()


def _office_view(park: Park, lane: str) -> dict:
    """What the office's sync last heard from a lane (its signed heartbeat, `gone` by its will)."""
    return (park.state(0, "peers") or {}).get(lane) or {}


def test_row1_copy_taken_after_connecting_then_a_crash_is_still_a_restore(
    broker, office_keys, tmp_path
):
    """The lane's last will carries the marks of its connection and, after a crash, is the
    newest message on its heartbeat topic. A copy of its files taken after that connection is
    detected all the same: its retained marks (a topic the will never writes) say more."""
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    d = park.lanes[0].dir
    backup = tmp_path / "backup"
    backup.mkdir()
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    cmd = [sys.executable, "-m", "edge.cli", "sync", "--config", str(park.lanes[0].config)]
    p = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        park.wait_ready(1)
        for k in (1, 2):
            assert verify(park, 1, park.ticket(f"T-{k}"))[0] == 0
            wait_for(
                lambda k=k: _office_view(park, "lane1").get("body", {}).get("out_seq") == k,
                what=f"the fleet saw lane1's outbox reach {k}",
            )
            if k == 1:  # the copy: after the connection (the will says 0), before T-2
                for f in ("ledger.db", "audit.db", "fleet.db"):
                    copy_db(d / f, backup / f)
        os.kill(p.pid, signal.SIGKILL)  # no goodbye: the broker publishes the will
        p.wait()
        wait_for(lambda: _office_view(park, "lane1").get("gone") == "lost", what="lane1's will")
        for f in ("ledger.db", "audit.db", "fleet.db"):
            for old in d.glob(f + "*"):
                old.unlink()
            shutil.copy(backup / f, d / f)
        restored_epoch = park.state(1, "epoch")
        park.start(1)
        wait_for(
            lambda: park.state(1, "epoch") not in (None, restored_epoch),
            what="restore detected (a new epoch)",
        )
        why = "the ledger's outbox went back to 1 (the fleet saw 2): restored from an older copy"
        wait_for(  # audited just after the new epoch is stored
            lambda: why in [r.detail for r in park.audit(1, "new_epoch")],
            what="the restore audited with the marks' reason",
        )
        wait_for(lambda: not park.state(1, "forget_replay"), what="forget list replayed")
    finally:
        if p.poll() is None:
            p.kill()
        park.stop_all()


# --- row 2: the office's clock set ahead once ------------------------------------------------


def _cli_clock_ahead(*args: str) -> subprocess.CompletedProcess:
    code = (
        "import sys, time; real = time.time; time.time = lambda: real() + 3e7; "
        "from edge.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_row2_office_clock_ahead_once_then_unrevoke_reaches_lanes(
    broker, office_keys, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="edge.fleet.apply")
    park = Park(tmp_path, broker.url, office_keys, lanes=1)

    def applied() -> int:
        return sum("sync applied revocations" in r.getMessage() for r in caplog.records)

    try:
        park.start(1)
        base = ["--publish", "--key", str(park.priv), "--config", str(park.office.config)]
        lst = str(park.office.dir / "revoked.txt")
        r = _cli_clock_ahead("ticket", "revoke", "--list", lst, *base, "T-AHEAD")
        assert r.returncode == 0, r.stderr
        rev = park.lanes[0].dir / "revoked.txt"
        wait_for(lambda: "T-AHEAD" in rev.read_text(), what="revocation at lane1")
        old_message = _retained(park, msg.topic(park.site, "office", "revocations"))
        r = cli("ticket", "revoke", "--list", lst, *base, "T-LATER")  # the clock corrected
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "T-LATER" in rev.read_text(), what="the later revocation at lane1")
        r = cli("ticket", "unrevoke", "--list", lst, *base, "T-AHEAD")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "T-AHEAD" not in rev.read_text(), what="the lift at lane1")
        assert verify(park, 1, park.ticket("T-AHEAD"))[0] == 0
        # The old list, replayed (office login, its sync stopped): the lift stands.
        park.stop(0)
        before = applied()
        _publish(park, 0, msg.topic(park.site, "office", "revocations"), old_message)
        wait_for(lambda: applied() > before, what="the old list taken in at lane1")
        assert "T-AHEAD" not in rev.read_text()
        assert "T-LATER" in rev.read_text()
    finally:
        park.stop_all()


def _retained(park: Park, topic: str) -> bytes:
    """The retained message on a topic, read with a lane login no sync of this park uses."""
    with OneShot(_reader(park), "reader") as c:
        got = c.collect([topic])
    assert got, f"nothing retained on {topic}"
    return got[-1].payload


def _reader(park: Park) -> config_mod.Config:
    """lane3's login (in the broker's password file; this park has one lane): lanes may read
    the office's topics."""
    return config_mod.override(
        park.cfg(1),
        fleet={"credentials_file": str(_cred(park, "lane3"))},
    )


def _cred(park: Park, user: str) -> Path:
    p = park.office.dir.parent / f"{user}.cred"
    p.write_text(f"{user}:{USERS[user]}\n")
    p.chmod(0o600)
    return p


# --- row 3: heartbeats under other lanes' names, clocks far ahead ---------------------------


def test_row3_no_single_lane_moves_the_fleet_clock(broker, office_keys, tmp_path):
    """lane3 is the attacker (its login and key): heartbeats under other names are refused,
    its own heartbeats an hour ahead are one outlier; lanes 1 and 2 keep granting."""
    park = Park(tmp_path, broker.url, office_keys, lanes=3)
    try:
        park.start(1)
        park.start(2)
        wait_for(lambda: park.state(1, "clock_offset") is not None, what="lane1 hears others")
        hb3 = msg.topic(park.site, "heartbeat", "lane3")
        with OneShot(park.cfg(3), "attacker") as c:
            for k in range(10):
                now = time.time() + 3600
                for fake in ("lane7", "lane8", "lane2", "lane3"):
                    m = msg.Message(msg.HEARTBEAT, park.site, fake, 10**9 + k, now, {}, epoch="x")
                    c.publish(hb3, _signed_as(park, 3, m))
                time.sleep(0.3)
        wait_for(lambda: "lane3" in (park.state(1, "peers") or {}), what="lane1 hears lane3")
        assert abs(park.state(1, "clock_offset")) < 5
        rc, out = verify(park, 1, park.ticket("T-CLOCK"))
        assert rc == 0, out
        refused = park.audit(1, "refused")
        assert any("signed as 'lane7' on lane 'lane3'" in r.detail for r in refused), refused
        r = cli("fleet", "status", "--json", "--config", str(park.office.config))
        rep = json.loads(r.stdout)
        assert rep["clock"]["off"] == ["lane3"], rep["clock"]
        assert "lane7" not in rep["lanes"]
        r = cli("fleet", "status", "--config", str(park.office.config))
        assert "clock off from the fleet's: lane3" in r.stdout
    finally:
        park.stop_all()


# --- row 4: a redemption copied, edited to name another ticket, re-sent ----------------------


class _Tap:
    """A client that records what it reads (with lane3's login: lanes read redemptions)."""

    def __init__(self, cfg: config_mod.Config, topic: str):
        self.got: list[bytes] = []
        self.ev = threading.Event()
        self.c = OneShot(cfg, "tap")
        self.c.__enter__()
        self.c.client.on_message = self._on
        self.subscribed = threading.Event()
        self.c.client.on_subscribe = lambda *a: self.subscribed.set()
        self.c.client.subscribe(topic, 1)
        # what is published before the broker's SUBACK may never reach the tap
        if not self.subscribed.wait(30):
            self.close()
            raise AssertionError("the tap's subscription was not acknowledged")

    def _on(self, client, userdata, message) -> None:
        self.got.append(message.payload)
        self.ev.set()

    def close(self) -> None:
        self.c.__exit__()


def test_row4_a_redemption_cannot_be_pointed_at_another_ticket(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=3)
    tap = None
    try:
        park.start(1)
        park.start(2)
        park.wait_ready(1, 2)
        tap = _Tap(park.cfg(3), msg.topic(park.site, "redemptions", "lane1"))
        assert verify(park, 1, park.ticket("T-A"))[0] == 0
        wait_for(lambda: tap.got, what="the copy of lane1's redemption")
        orig = msg.decode(tap.got[0], park.site)
        edited = msg.Message(
            orig.type,
            orig.site,
            orig.lane,
            orig.seq + 100,
            orig.time,
            {**orig.body, "ticket_id": "T-VICTIM"},
            orig.kid,
            orig.sig,
            orig.epoch,
        )
        tap.close()
        tap = None
        # (a) edited and re-sent as it was: the signature no longer fits (office login: the
        #     only one the broker lets write lane1's topic besides lane1's own).
        park.stop(0)
        _publish(park, 0, msg.topic(park.site, "redemptions", "lane1"), msg.encode(edited))
        # (b) lane3's own key re-signs the edited copy: the signed ticket is still T-A's.
        resigned = msg.Message(
            msg.REDEMPTION, park.site, "lane3", 1, edited.time, edited.body, epoch="e3"
        )
        topic3 = msg.topic(park.site, "redemptions", "lane3")
        _publish(park, 3, topic3, _signed_as(park, 3, resigned))
        for i in (1, 2):
            recs = wait_for(
                lambda i=i: [r for r in park.audit(i, "refused") if "redemptions" in r.detail],
                what=f"refusals at lane{i}",
            )
            assert any("bad signature" in r.detail for r in recs), recs
        recs = wait_for(
            lambda: [r for r in park.audit(2, "refused") if "proves 'T-A'" in r.detail],
            what="the re-signed copy refused",
        )
        assert "names 'T-VICTIM'" in recs[0].detail
        rc, out = verify(park, 2, park.ticket("T-VICTIM"))
        assert rc == 0, out
    finally:
        if tap is not None:
            tap.close()
        park.stop_all()


# --- row 5: status and audit take the lane from the signer, never the body -------------------


def test_row5_acks_and_audit_lines_count_for_their_signer_only(broker, office_keys, tmp_path):
    from edge.fleet.office import publish_person

    park = Park(tmp_path, broker.url, office_keys, lanes=3)
    pid = "P-0123456789abcdef"
    try:  # audit lines are not retained: the office must have subscribed before they go
        wait_for(lambda: park.state(0, "connected"), what="office connected")
        publish_person(park.cfg(0), park.priv, pid, "forget")  # lanes 1 and 2 are away
        ack = {"person_id": pid, "op": "forget", "office_seq": 10**6}
        for claimed in ("lane1", "lane2", "lane3"):
            m = msg.Message(msg.ACK, park.site, claimed, 10**6, time.time(), ack)
            _publish(
                park, 3, msg.topic(park.site, "acks", "lane3", pid), _signed_as(park, 3, m), True
            )
        record = {"id": 1, "prev": "0" * 64, "hash": "f" * 64, "t": time.time(),
                  "kind": "fleet", "reason": "double_use", "subject": "T-FAKE"}  # fmt: skip
        for claimed in ("lane1", "lane3"):
            m = msg.Message(msg.AUDIT, park.site, claimed, 1, time.time(), {"records": [record]})
            _publish(park, 3, msg.topic(park.site, "audit", "lane3"), _signed_as(park, 3, m))

        def done():
            r = cli("fleet", "status", "--json", "--config", str(park.office.config))
            p = json.loads(r.stdout)["people"].get(pid, {})
            return p if p.get("lanes_done") else None

        p = wait_for(done, what="lane3's own acknowledgement")
        assert p["lanes_done"] == ["lane3"]
        assert p["summary"] == "forgotten on 1 of 3 lanes"
        rows = wait_for(
            lambda: [json.loads(x) for x in cli(
                "fleet", "audit", "--json", "--config", str(park.office.config)
            ).stdout.splitlines()],
            what="lane3's audit line",
        )  # fmt: skip
        assert [(r["lane"], r["subject"]) for r in rows] == [("lane3", "T-FAKE")]
        refused = park.audit(0, "refused")
        assert any("signed as 'lane1'" in r.detail for r in refused), refused
    finally:
        park.stop_all()


# --- row 9, broker side: no retained audit, lanes cannot read it, the office keeps it --------


def test_row9_audit_goes_to_the_office_acknowledged_never_retained(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        _log_at_office(park)  # lane1's audit acknowledged by the office
        rows = [json.loads(x) for x in cli(
            "fleet", "audit", "--json", "--config", str(park.office.config)
        ).stdout.splitlines()]  # fmt: skip
        assert sum(1 for r in rows if r["lane"] == "lane1" and r.get("kind") == "decision") == 6
        with OneShot(park.cfg(2), "peek") as c:  # lane2's login: reads no audit topic
            got = c.collect([msg.topic(park.site, "audit", "#")])
        assert got == []
        park.stop(0)
        with OneShot(park.cfg(0), "peek") as c:  # the office's login: nothing retained there
            got = c.collect([msg.topic(park.site, "audit", "#")])
        assert [g for g in got if g.retain] == []
    finally:
        park.stop_all()


def FleetCursor(park: Park, i: int) -> int:  # noqa: N802
    from edge.fleet.state import FleetState

    st = FleetState(park.member(i).dir / "fleet.db")
    try:
        return st.cursor("audit")
    finally:
        st.close()


# --- the broker and the roster ---------------------------------------------------------------


def test_lane_without_roster_entry_is_refused_until_rostered(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=3)
    try:
        r = cli(
            "fleet", "roster", "remove", "lane3", "--key", str(park.priv),
            "--config", str(park.office.config),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        park.start(1)
        wait_for(lambda: "lane3" not in (park.state(1, "roster") or {"lanes": {"lane3": 1}})[
            "lanes"], what="lane1 has the roster without lane3")  # fmt: skip
        park.start(3)
        text = park.ticket("T-UNLISTED")
        assert verify(park, 3, text)[0] == 0
        recs = wait_for(lambda: park.audit(1, "not_rostered"), what="lane1 refuses lane3")
        assert "not in the roster" in recs[0].detail
        assert park.remote(1, "T-UNLISTED") == 0
        pub = public_text(load_lane_key(park.cfg(3)).public_key())
        r = cli(
            "fleet", "roster", "add", "lane3", pub, "--key", str(park.priv),
            "--config", str(park.office.config),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        wait_for(lambda: park.remote(1, "T-UNLISTED") == 1, what="kept, then counted")
    finally:
        park.stop_all()


def test_message_signed_by_lane1_on_lane2s_topic_is_refused(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=3)
    try:
        park.start(3)
        park.wait_ready(3)
        park.stop(0)  # the office's login writes every topic: the broker will not stop this
        body = {"ticket": park.ticket("T-CROSS"), "t": time.time(), "day": "2026-11-27"}
        m = msg.Message(msg.REDEMPTION, park.site, "lane1", 1, time.time(), body, epoch="e")
        _publish(park, 0, msg.topic(park.site, "redemptions", "lane2"), _signed_as(park, 1, m))
        m = msg.Message(msg.REDEMPTION, park.site, "lane2", 1, time.time(), body, epoch="e")
        _publish(park, 0, msg.topic(park.site, "redemptions", "lane2"), _signed_as(park, 1, m))
        s3 = park.syncs[3][0]
        wait_for(lambda: s3.stats["refused"] >= 2, what="both copies refused at lane3")
        recs = park.audit(3, "refused")  # one record a minute per sender and reason
        assert "signed as 'lane1' on lane 'lane2'" in recs[0].detail, recs
        time.sleep(0.5)
        assert park.remote(3, "T-CROSS") == 0
    finally:
        park.stop_all()


def test_client_id_is_the_login_so_another_login_cannot_take_a_session(
    broker, office_keys, tmp_path
):
    park = Park(tmp_path, broker.url, office_keys, lanes=3)
    try:
        s1 = park.start(1)
        wait_for(lambda: park.state(1, "connected"), what="lane1 connected")
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"edge-gate-{park.site}-lane1",  # lane1's client id, lane3's login
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        c.username_pw_set("lane3", USERS["lane3"])
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        time.sleep(2)
        c.disconnect()
        c.loop_stop()
        assert s1.stats.get("disconnects", 0) == 0
        assert park.state(1, "connected")
    finally:
        park.stop_all()


def test_last_will_shows_a_killed_lane_gone_within_seconds(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    cmd = [sys.executable, "-m", "edge.cli", "sync", "--config", str(park.lanes[0].config)]
    p = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:

        def state():
            r = cli("fleet", "status", "--json", "--config", str(park.office.config))
            return json.loads(r.stdout)["lanes"]["lane1"]["state"]

        wait_for(lambda: state() == "ok", what="lane1 heard by the office")
        r = cli("fleet", "status", "--check", "--config", str(park.office.config))
        assert r.returncode == 0, r.stdout + r.stderr
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        t0 = time.monotonic()
        wait_for(lambda: state() == "gone", timeout=15, what="lane1 gone")
        assert time.monotonic() - t0 < 15
        r = cli("fleet", "status", "--check", "--config", str(park.office.config))
        assert r.returncode == 1
        assert "lane1: gone" in r.stderr
        assert "GONE (lost)" in cli("fleet", "status", "--config", str(park.office.config)).stdout
    finally:
        if p.poll() is None:
            p.kill()
        park.stop_all()


def test_status_says_never_and_ago_and_check_fails_on_a_stale_lane(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        park.start(1)
        wait_for(
            lambda: (
                json.loads(
                    cli("fleet", "status", "--json", "--config", str(park.office.config)).stdout
                )["lanes"]["lane1"]["state"]
                == "ok"
            ),
            what="lane1 heard",
        )
        r = cli("fleet", "status", "--config", str(park.office.config))
        assert "heartbeat never" in r.stdout  # lane2 never ran
        assert " s ago" in r.stdout
        assert "None" not in r.stdout
        r = cli("fleet", "status", "--check", "--config", str(park.office.config))
        assert r.returncode == 1
        assert "lane2: never" in r.stderr
    finally:
        park.stop_all()


def _rechain(config: Path, path: Path, delete: int | None = None, edit: int | None = None) -> None:
    """What a shell on the lane can do to its audit log: drop the triggers, delete or edit a
    record, compute every hash again, and key the result with the lane's evidence key (root
    can read it), so the log verifies locally."""
    from edge.gate.audit import AuditRecord, open_audit, record_hash

    cols = "t, gate, kind, decision, via, subject, score, reason, detail"
    db = sqlite3.connect(path)
    db.executescript("DROP TRIGGER events_retention; DROP TRIGGER events_no_update;")
    rows = db.execute(f"SELECT id, {cols} FROM events ORDER BY id").fetchall()
    db.execute("DELETE FROM events")
    prev, new_id = "0" * 64, 0
    for rid, *fields in rows:
        if rid == delete:
            continue
        if rid == edit:
            fields[7] = "ok"  # a deny becomes a grant's reason
        new_id += 1
        h = record_hash(prev, new_id, AuditRecord(*fields))
        db.execute(
            f"INSERT INTO events (id, {cols}, prev, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (new_id, *fields, prev, h),
        )
        prev = h
    db.execute("UPDATE chain SET head_id = ?, head_hash = ?", (new_id, prev))
    # with the lane's evidence key (root reads it): drop the MACs and the witness, and let the
    # gate's own code key the rewritten records again from the start
    db.execute("UPDATE events SET mac = NULL")
    db.execute("UPDATE chain SET mac_id = 0, mac_head = NULL")
    db.commit()
    db.close()
    for w in path.parent.glob("evidence.witness*"):
        w.unlink()
    with open_audit(config_mod.load(config), key="use") as a:
        a.maintain()
    r = cli("audit", "verify", "--config", str(config))
    assert r.returncode == 0, r.stdout + r.stderr  # locally the rewritten chain verifies


@pytest.mark.parametrize("how", ["delete", "edit"])
def test_fleet_audit_verify_detects_a_lane_log_rewritten_after_sending(
    broker, office_keys, tmp_path, how
):
    """With a shell on lane1 its whole chain can be rewritten (even a keyed one: the key is
    there); the office still holds the records and heads lane1 signed, and they disagree."""
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    try:
        _log_at_office(park)
        r = cli("fleet", "audit", "verify", "--config", str(park.office.config))
        assert r.returncode == 0, r.stdout
        assert r.stdout.startswith("lane1: ok")
        park.stop(1)
        _rechain(park.lanes[0].config, park.lanes[0].dir / "audit.db", **{how: 3})
        park.start(1)
        assert "rewritten" in _audit_verify_fails(park)
    finally:
        park.stop_all()


def _log_at_office(park: Park) -> int:
    """lane1 started, six records of its log written and received by the office; their count."""
    park.start(1)
    for k in range(6):
        verify(park, 1, f"JUNK-{k}")
    a = AuditLog(park.lanes[0].dir / "audit.db")
    count, _ = a.head()
    a.close()
    wait_for(lambda: FleetCursor(park, 1) >= count, what="records at the office")
    return count


def _audit_verify_fails(park: Park) -> str:
    """`fleet audit verify` at the office, once it finds lane1's log broken: its output."""

    def verdict():
        r = cli("fleet", "audit", "verify", "--config", str(park.office.config))
        return r if r.returncode == 1 else None

    out = wait_for(verdict, what="fleet audit verify fails").stdout
    assert "lane1: BROKEN" in out, out
    return out


def test_fleet_audit_verify_detects_a_rewritten_log_sent_again_under_a_new_epoch(
    broker, office_keys, tmp_path
):
    """The same rewrite, then the ledger and fleet state re-initialised (a new epoch, the audit
    cursor back at 0), so the lane sends its whole rewritten log again from record 1: the office
    compared a new epoch with the one before only where the two met, and said "ok"."""
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    try:
        count = _log_at_office(park)
        park.stop(1)
        d = park.lanes[0].dir
        _rechain(park.lanes[0].config, d / "audit.db", edit=3)
        for p in [*d.glob("ledger.db*"), *d.glob("fleet.db*")]:
            p.unlink()
        r = cli("ledger", "init", "--config", str(park.lanes[0].config))
        assert r.returncode == 0, r.stderr
        park.start(1)
        wait_for(lambda: FleetCursor(park, 1) >= count, what="the log sent again")
        assert "went on from record 2" in _audit_verify_fails(park)
    finally:
        park.stop_all()


def test_site_broker_config_with_tls_admits_a_lane_over_mqtts(office_keys, tmp_path):
    """`fleet broker-config` output on a real mosquitto with TLS: a lane joins over mqtts."""
    _need_mosquitto()
    cert, key = _self_signed(tmp_path)
    from edge.lab.broker import free_port

    port = free_port()
    b = Mosquitto(tmp_path / "tls-broker", users=USERS, port=port, tls=(cert, key))
    text = b.conf.read_text()
    assert "use_username_as_clientid true" in text
    assert "allow_anonymous false" in text
    acl = (tmp_path / "tls-broker" / "acl").read_text()
    assert "pattern write edge-gate/+/audit/%u" in acl
    assert "pattern read edge-gate/+/audit" not in acl
    with b:
        park = Park(tmp_path, b.url, office_keys, lanes=1, fleet={"tls_ca_file": str(cert)})
        try:
            park.start(1)
            wait_for(lambda: park.state(1, "connected"), what="lane1 over mqtts")
            park.wait_ready(1)
        finally:
            park.stop_all()


def test_broker_config_command_writes_a_site_config(office_keys, tmp_path):
    from edge.lab.workspace import roster_all, write_member

    office = write_member(tmp_path, "office", "mqtt://127.0.0.1:1", "parkx", office_keys[1])
    lanes = [write_member(tmp_path, n, "mqtt://127.0.0.1:1", "parkx", office_keys[1])
             for n in ("lane1", "lane2")]  # fmt: skip
    roster_all(office, lanes, office_keys[0])
    out = tmp_path / "site-broker"
    r = cli(
        "fleet", "broker-config", "--config", str(office.config), "--out", str(out),
        "--tls-cert", "/etc/mosquitto/certs/server.crt",
        "--tls-key", "/etc/mosquitto/certs/server.key",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    conf = (out / "mosquitto.conf").read_text()
    assert "listener 8883" in conf
    assert "certfile /etc/mosquitto/certs/server.crt" in conf
    assert "use_username_as_clientid true" in conf
    for m in ("office", "lane1", "lane2"):
        f = out / "credentials" / f"{m}.cred"
        assert f.stat().st_mode & 0o077 == 0
        assert f.read_text().startswith(f"{m}:")
    pw_before = (out / "credentials" / "lane1.cred").read_text()
    r = cli("fleet", "broker-config", "--config", str(office.config), "--out", str(out))
    assert (out / "credentials" / "lane1.cred").read_text() == pw_before  # kept on re-run
    acl = (out / "acl").read_text()
    assert "pattern read edge-gate/parkx/office/audit-acks/%u" in acl
    assert "pattern write edge-gate/parkx/marks/%u" in acl
    assert "pattern read edge-gate/parkx/marks/%u" in acl


def _lane_status(park: Park, lane: str) -> dict:
    r = cli("fleet", "status", "--json", "--config", str(park.office.config))
    return json.loads(r.stdout)["lanes"][lane]


@pytest.mark.parametrize("left_out", [("/marks/",), ("/marks/", "/office/override/")])
def test_a_broker_acl_older_than_the_marks_topic_is_reported_with_the_fix(
    office_keys, tmp_path, left_out, caplog
):
    """Mosquitto grants a subscription and acknowledges a publish its ACL denies, and delivers
    nothing: the lane finds out because its own marks do not come back, says so in its
    heartbeat, and `fleet status --check` fails with the fix. Reloading the full ACL clears it."""
    _need_mosquitto()
    b = Mosquitto(tmp_path / "broker", users=USERS)
    acl = b.dir / "acl"
    full = acl.read_text()
    old = [ln for ln in full.splitlines() if not any(x in ln for x in left_out)]
    assert len(old) < len(full.splitlines())
    acl.write_text("\n".join(old) + "\n")  # what broker-config wrote before these lines
    b.start()
    park = Park(tmp_path, b.url, office_keys, lanes=1)
    try:
        park.start(1)
        wait_for(
            lambda: _lane_status(park, "lane1").get("broker_acl") == "outdated",
            what="lane1 reports its broker ACL outdated",
        )
        for config in (park.office.config, park.lanes[0].config):  # the office's view, the lane's
            r = cli("fleet", "status", "--check", "--config", str(config))
            assert r.returncode == 1, r.stdout + r.stderr
            assert "lane1: broker ACL outdated" in r.stderr
            assert "edge-gate fleet broker-config" in r.stderr and "reload mosquitto" in r.stderr
        r = cli("fleet", "status", "--config", str(park.office.config))
        assert "BROKER ACL OUTDATED" in r.stdout
        logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("broker ACL outdated" in m and "broker-config" in m for m in logged), logged
        acl.write_text(full)  # `fleet broker-config` again, and reload mosquitto
        assert b.proc is not None
        b.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: _lane_status(park, "lane1").get("broker_acl") == "ok",
            what="lane1's marks come back after the reload",
        )
        r = cli("fleet", "status", "--check", "--config", str(park.office.config))
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        park.stop_all()
        b.stop()


def test_with_the_full_acl_a_lane_reports_its_broker_acl_current(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    try:
        park.start(1)
        wait_for(  # the office hears it by heartbeat, lane1's fleet.db takes it within 1 s
            lambda: (
                _lane_status(park, "lane1").get("broker_acl") == "ok"
                and park.state(1, "broker_acl") == "ok"
            ),
            what="lane1's marks came back",
        )
        r = cli("fleet", "status", "--check", "--config", str(park.office.config))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ACL" not in r.stdout + r.stderr
    finally:
        park.stop_all()


def _self_signed(d: Path) -> tuple[Path, Path]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(k, hashes.SHA256())
    )
    cp, kp = d / "server.crt", d / "server.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cp, kp


def test_lane_key_readable_by_others_is_refused_with_the_fix(office_keys, tmp_path):
    from edge.errors import KeyFileError
    from edge.lab.workspace import write_member

    m = write_member(tmp_path, "lane1", "mqtt://127.0.0.1:1", "parkx", office_keys[1])
    key = m.dir / "var" / "lane.key"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_lane_key(config_mod.load(m.config))
    key.chmod(0o600)
    (m.dir / "var").chmod(0o777)
    with pytest.raises(KeyFileError, match="chmod go-w"):
        load_lane_key(config_mod.load(m.config))
    r = cli("sync", "--config", str(m.config))
    assert r.returncode != 0
    assert "chmod go-w" in r.stderr
    from edge.gate.doctor import CHECKS, Site

    res = dict(CHECKS)["fleet"](Site(config_mod.load(m.config), tmp_path / "g", tmp_path / "k"))
    assert res.status == "fail"
    assert res.fix == f"chmod go-w {m.dir / 'var'}"
