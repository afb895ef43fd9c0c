"""Times as operators type them and as the site counts them, always in a named zone.

A date or time typed without an offset means the site's zone (`gate.timezone`, through
`Config.gate.zone`), never whatever zone the machine running the command happens to be in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import os
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge.errors import EdgeGateError

LOCALTIME = "/etc/localtime"
FIRST_TIME, LAST_TIME = -62135596800, 253402300799  # the years 1 to 9999 (UTC): dates can show


def known_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone this machine knows (e.g. "Europe/Madrid")."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def system_zone() -> dt.tzinfo:
    """The zone this machine is set to: $TZ if it names one, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").removeprefix(":")
    if name and known_zone(name):
        return ZoneInfo(name)
    try:
        with open(LOCALTIME, "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return dt.UTC


def site_zone(name: str) -> dt.tzinfo:
    """The site's zone from `gate.timezone`: the IANA name, or "" for the machine's own zone."""
    return ZoneInfo(name) if name else system_zone()


def parse_time(text: str, zone: dt.tzinfo, end_of_day: bool = False) -> int:
    """'2026-12-31' (start, or end of day with end_of_day), '2026-12-31T18:00', '+02:00' offsets,
    or 1767225600; a time without an offset is in `zone` (the site's). Refused outside the years
    1 to 9999: such a time cannot be shown as a date, so no page or export may be handed one.
    """
    s = text.strip()
    try:
        if s.isascii() and s.isdigit():  # not "²": str.isdigit() also takes digits int() refuses
            ts = int(s)
        else:
            if len(s) == 10:
                d = dt.date.fromisoformat(s)
                t = dt.time(23, 59, 59) if end_of_day else dt.time(0, 0)
                value = dt.datetime.combine(d, t)
            else:
                value = dt.datetime.fromisoformat(s)
            if value.tzinfo is None:
                value = value.replace(tzinfo=zone)
            ts = int(value.timestamp())
    except (ValueError, OverflowError):  # also digits past int()'s limit, year 1 minus an offset
        ts = LAST_TIME + 1
    if not FIRST_TIME <= ts <= LAST_TIME:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise EdgeGateError(
            f"cannot read time {shown!r}",
            "use YYYY-MM-DD, YYYY-MM-DDTHH:MM[+HH:MM] or Unix seconds, up to the year 9999",
        )
    return ts


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC text for a Unix time, as the audit log and the CLI print it."""
    if not ts:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def kernel_clock_synced() -> bool | None:
    """The kernel's view (adjtimex, as systemd-time-wait-sync uses): synced, not, or unknown."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(1024)  # struct timex with modes = 0: read only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != 5  # 5 = TIME_ERROR: clock not synchronised
