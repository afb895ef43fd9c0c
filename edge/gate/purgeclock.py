"""May `purge` erase by the wall clock now? Retention is judged by it, and an erasure cannot be
undone, so a clock set forward would erase pass holders whose passes are still valid.

In a fleet, the clock as `edge-gate sync` measured it against the fleet's (`check_clock`, the
gate's own check before tickets and overrides) decides; a fleet state that cannot be read or
judged refuses too, as it refuses tickets at the gate. A purge refused erases less, never more.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.config import Config
from edge.errors import FleetStateError
from edge.fleet.identity import OFFICE
from edge.fleet.state import StateReader, check_clock

FLEET_STATE = "fleet_state_unreadable"  # refused: the fleet's measure of the clock is unreadable

SET_THE_TIME = (
    "set the time (enable NTP: `timedatectl set-ntp true`, or `timedatectl set-time`), then "
    "run `edge-gate purge --config C` again"
)


@dataclass(frozen=True)
class Refusal:
    """Why the purge erases nothing now: the audit reason, what was found, the fix."""

    reason: str
    detail: str
    fix: str


def fleet_refusal(cfg: Config) -> Refusal | None:
    """Refusal while this member's clock is off from the fleet's, as sync measured it (the
    gate's `check_clock`), or while that measure cannot be read or judged; None: go on, or
    no fleet."""
    fl = cfg.fleet
    if not fl.enabled:
        return None
    path = cfg.resolve(fl.state_db)
    try:
        st = StateReader(path, office=fl.lane == OFFICE)
        try:
            link = check_clock(fl, st)
        finally:
            st.close()
    except (FleetStateError, ValueError, TypeError) as e:  # unreadable, or no number there
        return Refusal(
            FLEET_STATE,
            f"the fleet's measure of this clock cannot be read from {path}: {e}",
            "start edge-gate-sync (systemctl status edge-gate-sync) and see `edge-gate doctor "
            "--config C`; then run `edge-gate purge --config C` again",
        )
    if link.ok:
        return None
    return Refusal(link.reason, link.detail, SET_THE_TIME)  # clock_skew
