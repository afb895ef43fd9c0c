"""The lane's fleet state (SQLite, fleet.state_db), shared by `edge-gate sync` and the gate.

Sync writes the link state (connected, last broker contact, clock offset against the fleet),
what the office last sent per subject, and how far it has published the audit log. The gate
and `ticket verify` only read the link state, through `LaneGuard`, before a ticket redemption:
with `fleet.offline = "deny"` a lane cut off from the broker refuses tickets, and any lane
whose clock is off by more than `fleet.max_clock_offset_s` refuses them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import Config, FleetConfig
from edge.db import Store, run_script
from edge.errors import FleetStateError

# Reasons a lane gives when the fleet link, not the ticket, refuses an entry.
FLEET_OFFLINE = "fleet_offline"
CLOCK_SKEW = "clock_skew"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS office_seq (type TEXT NOT NULL, subject TEXT NOT NULL,
  seq INTEGER NOT NULL, PRIMARY KEY (type, subject));
CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, upto INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS double_use (ticket_id TEXT PRIMARY KEY, reported INTEGER NOT NULL);
"""


class FleetState(Store):
    """Small key/value and bookkeeping tables; every write is its own short transaction."""

    error = FleetStateError
    what = "fleet state"

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._connect(Path(path))
        try:
            with self.transaction() as c:
                run_script(c, _SCHEMA)
        except FleetStateError as e:
            self.conn.close()
            raise FleetStateError(
                f"fleet state {self.path} is unreadable: {e}", "move it aside; sync rebuilds it"
            ) from None

    def put(self, **values: Any) -> None:
        """Record link facts (connected, clock offset, outbox) for the gate and status."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def get(self, key: str, default: Any = None) -> Any:
        """Read a link fact written by sync, or the default before the first sync."""
        row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def office_seq(self, type_: str, subject: str) -> int:
        """The last office sequence applied for a subject, to reject replays."""
        row = self.conn.execute(
            "SELECT seq FROM office_seq WHERE type = ? AND subject = ?", (type_, subject)
        ).fetchone()
        return row[0] if row else -1

    def set_office_seq(self, type_: str, subject: str, seq: int) -> None:
        """Remember an applied office message so an older one cannot undo it."""
        self.conn.execute(
            "INSERT OR REPLACE INTO office_seq (type, subject, seq) VALUES (?, ?, ?)",
            (type_, subject, seq),
        )

    def cursor(self, name: str) -> int:
        """How far a stream (the audit log) has been acknowledged, to resume after restart."""
        row = self.conn.execute("SELECT upto FROM cursor WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def set_cursor(self, name: str, upto: int) -> None:
        """Advance a stream's acknowledged position once the office has it."""
        self.conn.execute("INSERT OR REPLACE INTO cursor (name, upto) VALUES (?, ?)", (name, upto))

    def double_use_reported(self, ticket_id: str) -> int:
        """How many uses of a ticket were already reported, to alert once per new use."""
        row = self.conn.execute(
            "SELECT reported FROM double_use WHERE ticket_id = ?", (ticket_id,)
        ).fetchone()
        return row[0] if row else 0

    def set_double_use_reported(self, ticket_id: str, n: int) -> None:
        """Remember a reported double use so it is not reported again."""
        self.conn.execute(
            "INSERT OR REPLACE INTO double_use (ticket_id, reported) VALUES (?, ?)", (ticket_id, n)
        )


def read_state(state_db: Path, key: str) -> Any:
    """One value from a lane's fleet state, opened and closed (demo, bench, status)."""
    st = FleetState(state_db)
    try:
        return st.get(key)
    finally:
        st.close()


@dataclass(frozen=True)
class LinkCheck:
    """Why a lane may or may not redeem a ticket now, with the reason for the audit log."""

    ok: bool
    reason: str = ""
    detail: str = ""


def check_link(fl: FleetConfig, state: FleetState | None, now: float) -> LinkCheck:
    """May this lane redeem a ticket now? Pure given the state read."""
    if not fl.enabled:
        return LinkCheck(True)
    offset = state.get("clock_offset") if state else None
    if offset is not None and abs(offset) > fl.max_clock_offset_s:
        return LinkCheck(
            False,
            CLOCK_SKEW,
            f"clock off by {offset:+.1f} s from the fleet (max {fl.max_clock_offset_s})",
        )
    if fl.offline == "deny":
        connected = bool(state.get("connected")) if state else False
        last = state.get("last_contact") if state else None
        if not connected or last is None or now - last > fl.offline_after_s:
            since = "never" if last is None else f"{now - last:.0f} s ago"
            return LinkCheck(False, FLEET_OFFLINE, f"no broker contact (last {since})")
    return LinkCheck(True)


class LaneGuard:
    """Gate-side view of the fleet: the link check before redemptions and the gate's status."""

    def __init__(self, cfg: Config):
        self.fleet = cfg.fleet
        self.state = FleetState(cfg.resolve(cfg.fleet.state_db)) if cfg.fleet.enabled else None

    def check(self, now: float | None = None) -> LinkCheck:
        """Ask before each redemption whether the fleet link allows it (clock, offline)."""
        return check_link(self.fleet, self.state, time.time() if now is None else now)

    def report(self, **status: Any) -> None:
        """The gate's own figures (fps, camera, mode, last decision) for sync's heartbeat."""
        if self.state is not None:
            self.state.put(gate_status=status)

    def close(self) -> None:
        """Release the fleet state, if this gate belongs to a fleet."""
        if self.state is not None:
            self.state.close()


def fleet_pubkey_paths(cfg: Config) -> list[Path]:
    """Ticket keys the office published to this lane (fleet.keys_dir), besides tickets.pubkeys."""
    if not cfg.fleet.enabled:
        return []
    d = cfg.resolve(cfg.fleet.keys_dir)
    return sorted(d.glob("*.pub")) if d.is_dir() else []
