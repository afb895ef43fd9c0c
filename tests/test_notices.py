"""Visitor notices: a fixed vocabulary on the wire, and sinks that can never stop the gate."""

from __future__ import annotations

import pytest

from edge.gate.notices import (
    SEE_STAFF,
    SHOW_TICKET,
    STEP_BACK,
    TICKET_USED,
    WELCOME,
    Notice,
    Notices,
    notice_for_decision,
)


class Recorder:
    def __init__(self):
        self.seen: list[Notice] = []

    def send(self, notice: Notice) -> None:
        self.seen.append(notice)


class Broken:
    def send(self, notice: Notice) -> None:
        raise OSError("screen socket gone")


def test_a_notice_survives_its_wire_form():
    n = Notice(t=1.5, lane="lane-1", notice=STEP_BACK, reason="too_close")
    wire = n.to_json()
    assert wire["v"] == 1 and wire["decision"] is None and wire["name"] is None
    assert Notice.from_json(wire) == n


@pytest.mark.parametrize(
    "bad",
    [
        {"notice": "open_sesame"},
        {"decision": "maybe"},
    ],
)
def test_words_outside_the_vocabulary_are_refused(bad):
    with pytest.raises(ValueError):
        Notice(**{"t": 0.0, "lane": "l", "notice": WELCOME, "reason": "ok", **bad})


def test_an_unknown_wire_version_is_refused():
    wire = Notice(t=0.0, lane="l", notice=WELCOME, reason="ok", decision="grant").to_json()
    with pytest.raises(ValueError, match="version"):
        Notice.from_json({**wire, "v": 2})


def test_a_failing_sink_is_skipped_and_the_others_still_hear():
    after = Recorder()
    fan = Notices([Broken(), after])
    n = Notice(t=0.0, lane="l", notice=WELCOME, reason="ok", decision="grant")
    fan.send(n)
    assert after.seen == [n]


@pytest.mark.parametrize(
    ("granted", "reason", "notice"),
    [
        (True, "ok", WELCOME),
        (False, "already_used", TICKET_USED),
        (False, "presentation_attack", SHOW_TICKET),
        (False, "too_close", SHOW_TICKET),
        (False, "not_enrolled", SHOW_TICKET),
        (False, "revoked", SEE_STAFF),
        (False, "invalid_signature", SEE_STAFF),
    ],
)
def test_each_decision_tells_the_visitor_what_to_do(granted, reason, notice):
    assert notice_for_decision(granted, reason) == notice
