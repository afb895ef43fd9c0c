"""Visitor notices: what the lane tells the person at the turnstile, and where it goes.

A notice is a word from a fixed vocabulary, so every screen, speaker or LED pattern renders the
same meaning in its own language. The gate fans each notice out to its sinks (the decision
events file, the lane screen's socket); a sink that fails is logged and skipped, never raised
into the gate, because telling the visitor must never stop the gate deciding.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TextIO

log = logging.getLogger("edge.gate.notices")

VERSION = 1
# decision notices
WELCOME = "welcome"  # granted: please pass
SHOW_TICKET = "show_ticket"  # refused by face (or not recognised): a ticket always works
TICKET_USED = "ticket_used"  # the ticket has no entries left: see staff
SEE_STAFF = "see_staff"  # any other refusal a visitor cannot fix alone
# guidance: nothing decided yet, the visitor can help
STEP_BACK = "step_back"  # too close for the camera to see around the face
COME_CLOSER = "come_closer"  # too small to recognise
HOLD_STILL = "hold_still"  # not yet judged: keep facing the camera
NOTICES = (WELCOME, SHOW_TICKET, TICKET_USED, SEE_STAFF, STEP_BACK, COME_CLOSER, HOLD_STILL)
GUIDANCE = (STEP_BACK, COME_CLOSER, HOLD_STILL)


@dataclass(frozen=True)
class Notice:
    """One thing to tell the visitor; `decision` is None for guidance before any decision."""

    t: float  # wall clock, Unix seconds
    lane: str
    notice: str  # one of NOTICES
    reason: str  # the decision's reason word, or the cause of the guidance (e.g. too_close)
    decision: str | None = None  # "grant" / "deny" / None
    name: str | None = None  # only when the park turns names on for its screens

    def __post_init__(self) -> None:
        if self.notice not in NOTICES:
            raise ValueError(f"unknown notice {self.notice!r} (one of {', '.join(NOTICES)})")
        if self.decision not in (None, "grant", "deny"):
            raise ValueError(f"decision must be grant, deny or None, not {self.decision!r}")

    def to_json(self) -> dict[str, Any]:
        """The wire form: one JSON object per notice (the contract of every sink)."""
        return {"v": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Notice:
        """Read the wire form back; an unknown version or word is a ValueError."""
        if d.get("v") != VERSION:
            raise ValueError(f"notice version {d.get('v')!r} is not {VERSION}")
        return cls(**{k: d.get(k) for k in ("t", "lane", "notice", "reason", "decision", "name")})


def notice_for_decision(granted: bool, reason: str) -> str:
    """The notice a decision shows: welcome, show a ticket, ticket used, or see staff."""
    if granted:
        return WELCOME
    if reason == "already_used":
        return TICKET_USED
    if reason in FACE_REFUSALS:
        return SHOW_TICKET
    return SEE_STAFF


# Refusals of the face path: the visitor is not stuck, a ticket works.
FACE_REFUSALS = frozenset(
    {"not_enrolled", "presentation_attack", "too_close", "tailgating", "pass_expired"}
)


class NoticeSink(Protocol):
    """Anything that can show or carry a notice (a file, a socket, a buzzer)."""

    def send(self, notice: Notice) -> None: ...


class Notices:
    """Fan a notice out to every sink; a failing sink is logged, never raised."""

    def __init__(self, sinks: Iterable[NoticeSink] = ()):
        self.sinks = list(sinks)

    def add(self, sink: NoticeSink) -> None:
        """Attach one more sink (the screen's socket, a signal light)."""
        self.sinks.append(sink)

    def remove(self, sink: NoticeSink) -> None:
        """Detach a sink (the screen's socket when a reload names another)."""
        self.sinks = [s for s in self.sinks if s is not sink]

    def send(self, notice: Notice) -> None:
        """Deliver to every sink; the gate goes on whatever a sink does."""
        for sink in self.sinks:
            try:
                sink.send(notice)
            except Exception as e:  # a sink must never stop the gate deciding
                log.warning("notice sink %s failed: %s", type(sink).__name__, e)


class JsonLinesSink:
    """Each notice as one JSON line (its wire form) on an open text file: `run --events`.

    A decision line there has "via"; a notice line has "notice" and "v".
    """

    def __init__(self, out: TextIO):
        self.out = out

    def send(self, notice: Notice) -> None:
        """Append and flush: the events file is read while the gate runs."""
        self.out.write(json.dumps(notice.to_json()) + "\n")
        self.out.flush()
