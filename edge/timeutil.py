"""Parse operator-typed times: ISO dates/datetimes or Unix seconds; naive = gate's local time."""

from __future__ import annotations

import datetime as dt

from edge.errors import EdgeGateError


def parse_time(text: str, end_of_day: bool = False) -> int:
    """'2026-12-31' (start, or end of day with end_of_day), '2026-12-31T18:00', '+02:00' offsets,
    or 1767225600.
    """
    s = text.strip()
    if s.isdigit():
        return int(s)
    try:
        if len(s) == 10:
            d = dt.date.fromisoformat(s)
            t = dt.time(23, 59, 59) if end_of_day else dt.time(0, 0)
            value = dt.datetime.combine(d, t)
        else:
            value = dt.datetime.fromisoformat(s)
    except ValueError:
        raise EdgeGateError(
            f"cannot read time {text!r}", "use YYYY-MM-DD, YYYY-MM-DDTHH:MM[+HH:MM] or Unix seconds"
        ) from None
    if value.tzinfo is None:
        value = value.astimezone()  # the gate's local zone
    return int(value.timestamp())


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC text for a Unix time, as the audit log and the CLI print it."""
    if not ts:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
