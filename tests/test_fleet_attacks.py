"""Issue 20's attacks on the fleet, reproduced on a real mosquitto (first form, against main)."""

from __future__ import annotations

import json
import sys
import time

from edge import config as config_mod
from edge.fleet import messages as msg
from edge.fleet.client import OneShot
from tests.test_fleet import USERS, Park, broker, cli, office_keys, verify, wait_for  # noqa: F401


def _publish_as(park: Park, user: str, topic: str, payload: bytes, retain=False) -> None:
    from edge.fleet.workspace import write_member

    root = park.lanes[0].dir.parent / "attacker"
    url = config_mod.load(park.office.config).fleet.broker
    m = write_member(root, user, url, park.site, park.pub, USERS[user])
    cfg = config_mod.load(m.config)
    with OneShot(cfg, "attacker") as c:
        c.publish(topic, payload, retain=retain)


def test_row1_replaced_lane_redemptions_still_count(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        park.start(1)
        park.start(2)
        assert verify(park, 1, park.ticket("T-BEFORE"))[0] == 0
        wait_for(lambda: park.remote(2, "T-BEFORE") == 1, what="lane2 hears T-BEFORE")
        park.stop(1)
        d = park.lanes[0].dir
        for p in list(d.glob("ledger.db*")) + list(d.glob("audit.db*")) + list(d.glob("fleet.db*")):
            p.unlink()
        r = cli("ledger", "init", "--config", str(park.lanes[0].config))
        assert r.returncode == 0, r.stderr
        park.start(1)
        text = park.ticket("T-AFTER")
        assert verify(park, 1, text)[0] == 0
        wait_for(lambda: park.remote(2, "T-AFTER") == 1, timeout=15, what="lane2 hears T-AFTER")
        assert verify(park, 2, text)[1]["reason"] == "already_used"
    finally:
        park.stop_all()


def test_row2_office_clock_ahead_once(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    try:
        park.start(1)
        ahead = (
            "import time, sys; real = time.time; time.time = lambda: real() + 3e7; "
            "from edge.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        base = ["--publish", "--key", str(park.priv), "--config", str(park.office.config)]
        lst = str(park.office.dir / "revoked.txt")
        r = cli_py(ahead, "ticket", "revoke", "--list", lst, *base, "T-AHEAD")
        assert r.returncode == 0, r.stderr
        rev = park.lanes[0].dir / "revoked.txt"
        wait_for(lambda: "T-AHEAD" in rev.read_text(), what="first revocation")
        r = cli("ticket", "revoke", "--list", lst, *base, "T-LATER")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "T-LATER" in rev.read_text(), timeout=10, what="later revocation")
    finally:
        park.stop_all()


def cli_py(code: str, *args: str):
    import os
    import subprocess

    from edge.config import PROJECT_ROOT

    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_row3_forged_heartbeats_do_not_move_the_clock(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        park.start(1)
        park.start(2)
        wait_for(lambda: park.state(1, "clock_offset") is not None, what="lane1 hears lane2")
        for _ in range(5):
            for fake in ("lane7", "lane8", "lane9"):
                m = msg.Message(msg.HEARTBEAT, park.site, fake, 1, time.time() + 3600, {})
                _publish_as(park, "lane3", msg.topic(park.site, "heartbeat", "lane3"), msg.encode(m))
            time.sleep(0.2)
        time.sleep(1.5)
        rc, out = verify(park, 1, park.ticket("T-CLOCK"))
        assert rc == 0, out
    finally:
        park.stop_all()


def test_row4_edited_redemption_is_refused(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        park.start(1)
        park.start(2)
        assert verify(park, 1, park.ticket("T-A"))[0] == 0
        wait_for(lambda: park.remote(2, "T-A") == 1, what="lane2 hears T-A")
        body = {"ticket_id": "T-VICTIM", "t": time.time(), "day": "x", "kind": 0, "max_entries": 1}
        m = msg.Message(msg.REDEMPTION, park.site, "lane3", 1, time.time(), body)
        _publish_as(park, "lane3", msg.topic(park.site, "redemptions", "lane3"), msg.encode(m))
        time.sleep(2)
        rc, out = verify(park, 2, park.ticket("T-VICTIM"))
        assert rc == 0, out
    finally:
        park.stop_all()


def test_row5_status_and_audit_take_the_lane_from_the_signer(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=3)
    pid = "P-0123456789abcdef"
    from edge.fleet.office import publish_person

    publish_person(config_mod.load(park.office.config), park.priv, pid, "forget")
    for lane in ("lane1", "lane2", "lane3"):
        body = {"person_id": pid, "op": "forget", "office_seq": 10**15}
        m = msg.Message(msg.ACK, park.site, lane, 10**15, time.time(), body)
        _publish_as(
            park, "lane3", msg.topic(park.site, "acks", "lane3", pid, lane), msg.encode(m), True
        )
    body = {"t": time.time(), "kind": "fleet", "reason": "double_use", "subject": "T-FAKE"}
    m = msg.Message(msg.AUDIT, park.site, "lane1", 99999, time.time(), body)
    _publish_as(park, "lane3", msg.topic(park.site, "audit", "lane3", 99999), msg.encode(m), True)
    r = cli("fleet", "status", "--json", "--config", str(park.office.config))
    assert r.returncode == 0, r.stderr
    people = json.loads(r.stdout)["people"]
    assert people[pid]["lanes_done"] == [], people
    r = cli("fleet", "audit", "--json", "--config", str(park.office.config))
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert not [x for x in rows if x.get("lane") == "lane1" and x.get("subject") == "T-FAKE"]


def test_row9_no_retained_audit_and_lanes_cannot_read_it(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        park.start(1)
        for k in range(5):
            verify(park, 1, f"JUNK-{k}")
        wait_for(lambda: park.state(1, "connected"), what="lane1 connected")
        time.sleep(3)
        with OneShot(config_mod.load(park.lanes[1].config), "peek") as c:
            got = c.collect([msg.topic(park.site, "audit", "#")])
        assert got == [], f"lane2 read {len(got)} audit messages of lane1"
        with OneShot(config_mod.load(park.office.config), "peek") as c:
            got = c.collect([msg.topic(park.site, "audit", "#")])
        assert [g for g in got if g.retain] == []
    finally:
        park.stop_all()
