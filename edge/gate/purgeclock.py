"""May `purge` erase by the wall clock now? Retention is judged by it, and an erasure cannot be
undone, so a clock set forward would erase pass holders whose passes are still valid.

Two checks, each refusing only on evidence the clock is wrong (a purge refused erases less,
never more; a clock set back only makes a purge erase less, so it is not checked):

- in a fleet, the clock as `edge-gate sync` measured it against the fleet's (`check_clock`,
  the gate's own check before tickets and overrides); a fleet state that cannot be read or
  judged refuses too, as it refuses tickets at the gate;
- everywhere, the clock against the first purge of the same boot (or the last run with
  --clock-checked): each purge records the boot it ran in (the kernel's boot id) and the time
  since that boot (CLOCK_BOOTTIME, which a change of the wall clock does not move). Within one
  boot the wall clock must have moved as much as the time that really elapsed; further by more
  than `gallery.purge_max_clock_jump_days` or the purge's own days (whichever is fewer; an hour
  at least, for clock noise) is a clock set forward, and nothing is erased. After a reboot (a
  lane off for a season) or before any purge (a new install) there is nothing to compare with,
  and the purge runs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from edge.config import Config
from edge.errors import FleetStateError
from edge.fleet.identity import OFFICE
from edge.fleet.state import StateReader, check_clock

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
DAY_S = 86400.0
FLEET_STATE = "fleet_state_unreadable"  # refused: the fleet's measure of the clock is unreadable
CLOCK_JUMP = "clock_jump"  # refused: the clock moved far further than the time elapsed
_MARK = re.compile(r"clock: boot ([0-9a-f-]{8,64}) at (\d+(?:\.\d+)?) s")

SET_THE_TIME = (
    "set the time (enable NTP: `timedatectl set-ntp true`, or `timedatectl set-time`), then "
    "run `edge-gate purge --config C` again"
)


@dataclass(frozen=True)
class BootClock:
    """Which boot this is and how long since it started, by a clock the wall clock never moves."""

    boot_id: str
    since_boot_s: float


@dataclass(frozen=True)
class Refusal:
    """Why the purge erases nothing now: the audit reason, what was found, the fix."""

    reason: str
    detail: str
    fix: str


def boot_clock(boot_id_file: Path = BOOT_ID) -> BootClock | None:
    """This boot's id and the time since it (None where the system does not say: no check)."""
    try:
        boot_id = boot_id_file.read_text().strip()
        since = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, AttributeError, ValueError):
        return None
    return BootClock(boot_id, since) if re.fullmatch(r"[0-9a-f-]{8,64}", boot_id) else None


def clock_mark(clock: BootClock | None) -> str:
    """What a purge's audit record says of the boot it ran in ("" when unknown)."""
    return "" if clock is None else f"clock: boot {clock.boot_id} at {clock.since_boot_s:.3f} s"


def read_mark(detail: str) -> BootClock | None:
    """The boot a purge's audit record names (None: none named)."""
    m = _MARK.search(detail or "")
    return BootClock(m.group(1), float(m.group(2))) if m else None


CHECKED = "clock checked"  # ends the record of a purge run with --clock-checked
CLOCK_NOISE_S = 3600.0  # wall and boot clocks part by this much within a boot (NTP slews, steps)


def reference(
    purges: list[tuple[float, str]], clock: BootClock | None
) -> tuple[float, BootClock] | None:
    """The purge this one's clock is judged against: the first purge of this boot, or the last
    run with --clock-checked since; None before any (a new install, the first after a reboot).
    `purges`: (time, detail) of the purges that ran, oldest first. Measured from there, not
    from the last purge, so steps forward of a few days each never add up unseen. Pure."""
    ref = None
    for t, detail in reversed(purges):
        mark = read_mark(detail)
        if clock is None or mark is None or mark.boot_id != clock.boot_id:
            break
        ref = (t, mark)
        if detail.endswith(CHECKED):
            break
    return ref


def trusted_now(ref: tuple[float, BootClock] | None, clock: BootClock | None) -> float | None:
    """The wall time by the reference purge and the boot clock since (None: no reference)."""
    if ref is None or clock is None:
        return None
    return ref[0] + (clock.since_boot_s - ref[1].since_boot_s)


def jump_refusal(max_days: int, days: int, trusted: float | None, now: float) -> Refusal | None:
    """Refusal when the wall clock `now` is further ahead of `trusted` (trusted_now: the time
    the boot clock vouches for) than both `max_days` and the purge's own `days` allow (a jump
    of more than `days` erases passes still valid), with an hour for clock noise; None: go on,
    or nothing to judge by. Pure."""
    if max_days <= 0 or trusted is None:
        return None
    jump = now - trusted
    allowed = max(CLOCK_NOISE_S, min(max_days, days) * DAY_S)
    if jump <= allowed:
        return None
    return Refusal(
        CLOCK_JUMP,
        f"the clock moved {jump / DAY_S:.1f} days further than the time that elapsed since "
        "this boot's first purge (or the last with a checked clock) (allowed: "
        f"{allowed / DAY_S:.2f} days, the smaller of "
        f"gallery.purge_max_clock_jump_days = {max_days} and the purge's {days} days): set "
        "forward?",
        f"{SET_THE_TIME}; if the clock is right (it was behind at that purge), run "
        "`edge-gate purge --config C --clock-checked` once",
    )


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
