"""Junk on the broker costs a receiver a refusal, never its sync: whatever a lane's login can
publish (retained, so the broker hands it to every receiver at each start) ends as a refused
message, and status and the fleet clock read only finite numbers from a lane's heartbeat."""

from __future__ import annotations

import json
import math

import pytest

from edge.fleet import messages as msg
from edge.fleet.clock import fleet_clock
from edge.fleet.office import _member_view
from tests.test_fleet import OneShot, Park, verify, wait_for

SITE = "park"


def _raw(**over) -> bytes:
    d = {"v": msg.VERSION, "type": "heartbeat", "site": SITE, "lane": "lane2", "seq": 1,
         "time": 1.0, "body": {}}  # fmt: skip
    d.update(over)
    return json.dumps(d).encode()


POISON = {
    "seq Infinity": _raw(seq=math.inf),
    "time NaN": _raw(time=math.nan),
    "seq 1e400": _raw().replace(b'"seq": 1,', b'"seq": 1e400,'),
    "nested too deep": b'{"v": 2, "body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "oversized": b'{"v": 2, "pad": "' + b"x" * (msg.MAX_PAYLOAD + 1) + b'"}',
}


@pytest.mark.parametrize("name", POISON)
def test_decode_turns_every_kind_of_junk_into_a_message_error(name):
    with pytest.raises(msg.MessageError):
        msg.decode(POISON[name], SITE)


def test_a_lane_reading_that_is_not_a_number_moves_no_clock():
    honest = {"lane2": 0.4, "lane3": -0.2}
    for junk in (math.nan, math.inf, "600", None, [1]):
        view = fleet_clock({**honest, "lane4": junk}, "lane1", 5.0)  # type: ignore[dict-item]
        assert math.isfinite(view.offset) and abs(view.offset) < 1, junk
        assert "lane4" not in view.offsets


def test_a_heartbeat_body_of_the_wrong_types_is_shown_not_fatal():
    now = 1000.0
    seen = {"received": now - 600, "body": {"period": 1e12, "clock_offset": "x", "fps": [1]}}
    v = _member_view(seen, now, 5.0, True, 5.0)
    assert v["state"] == "stale"  # a claimed period of 1e12 s keeps no dead lane alive
    assert v["clock_off"] is False
    v = _member_view({"received": now, "body": ["not", "a", "dict"]}, now, 5.0, True, 5.0)
    assert v["state"] == "ok"


def test_a_retained_poison_message_stops_no_sync(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        hb = msg.topic(park.site, "heartbeat", "lane2")
        for name in ("seq Infinity", "nested too deep"):
            payload = POISON[name].replace(b'"site": "park"', f'"site": "{park.site}"'.encode())
            with OneShot(park.cfg(2), "attacker") as c:  # lane2's own login, its own topic
                c.publish(hb, payload, retain=True)
            refused = len(park.audit(1, "refused"))
            park.start(1)  # the broker hands it the retained junk at subscribe
            wait_for(
                lambda n=refused: len(park.audit(1, "refused")) > n,
                what=f"lane1 refused the retained {name!r}",
            )
            park.stop(1)
        park.start(1)
        park.start(2)
        assert verify(park, 2, park.ticket("T-AFTER"))[0] == 0
        wait_for(lambda: park.remote(1, "T-AFTER") == 1, what="lane1 still applies redemptions")
        assert park.syncs[1][1].is_alive()
        assert park.syncs[0][1].is_alive()  # the office too
    finally:
        park.stop_all()
