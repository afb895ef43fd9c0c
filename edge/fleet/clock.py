"""The fleet's clock: a median of signed heartbeats that no single lane can move. No I/O.

Each member (the office and every lane) reads the others' clocks from their live, signed
heartbeats, one reading per rostered member. The fleet's time is the median of the readings
(this member's own counting as 0) after dropping those further than the skew from a first
median, so one clock set far ahead or behind, or a lane lying about its clock, is an outlier
that moves nothing. Of two middle values the one nearer this member is taken, so two clocks
that disagree blame nobody: three are needed to tell which one is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def _median_near_zero(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    cands = [xs[mid]] if len(xs) % 2 else [xs[mid - 1], xs[mid]]
    return min(cands, key=abs)


@dataclass(frozen=True)
class ClockView:
    """This member's offset from the fleet, and every member's (lane -> its clock minus the
    fleet's), with the ones beyond the skew named."""

    offset: float
    offsets: dict[str, float] = field(default_factory=dict)
    off: tuple[str, ...] = ()


def finite_number(v: object) -> float | None:
    """A finite number from another member's message, or None: a lane's body is its own word,
    and NaN or a string must neither move the clock nor break a report."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def fleet_clock(readings: dict[str, float], me: str, skew: float) -> ClockView:
    """readings: member -> its clock minus this member's (this member itself is added as 0)."""
    # a reading that is not a finite number says nothing about time (and would poison sorting)
    seen = {k: finite_number(v) for k, v in readings.items()}
    values = {k: v for k, v in seen.items() if v is not None} | {me: 0.0}
    first = _median_near_zero(list(values.values()))
    inliers = [v for v in values.values() if abs(v - first) <= skew]
    fleet = _median_near_zero(inliers or [first])
    offsets = {lane: round(v - fleet, 3) for lane, v in values.items()}
    off = tuple(sorted(lane for lane, o in offsets.items() if abs(o) > skew))
    return ClockView(round(-fleet, 3) + 0.0, offsets, off)
