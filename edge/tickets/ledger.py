"""Redemption ledger: a ticket is redeemed at most as often as it allows, across restarts.

Offline check-in systems can let one ticket in several times; this ledger closes that gap.
The check and the insert happen in one IMMEDIATE transaction, so the commit is the single point
at which an entry counts: a process killed before it leaves no entry, and two scans of the
same code, even from two processes, are serialised by SQLite's write lock.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from edge.errors import GalleryError
from edge.tickets.format import ALREADY_USED, OK, Kind, Ticket

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Redemption:
    ok: bool
    reason: str
    entries_used: int
    detail: str = ""


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")


class Ledger:
    def __init__(self, path: str | Path, gate: str = "gate-1", antipassback_s: float = 60.0):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            db = sqlite_utils.Database(self.conn)
            if "redemptions" not in db.table_names():
                db["redemptions"].create(
                    {"id": int, "ticket_id": str, "t": float, "day": str, "gate": str},
                    pk="id",
                    if_not_exists=True,
                )
                db["redemptions"].create_index(["ticket_id"], if_not_exists=True)
                self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            ver = self.conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise GalleryError(
                f"ledger {path} is unreadable: {e}", "restore it from backup or move it aside"
            ) from None
        if ver > SCHEMA_VERSION:
            raise GalleryError(
                f"ledger {path} has schema {ver}, newer than this edge-gate ({SCHEMA_VERSION})",
                "upgrade edge-gate",
            )
        self.gate = gate
        self.antipassback_s = antipassback_s

    def used(self, ticket_id: str, day: str | None = None) -> int:
        q = "SELECT count(*) FROM redemptions WHERE ticket_id = ?" + (" AND day = ?" if day else "")
        return self.conn.execute(q, (ticket_id, day) if day else (ticket_id,)).fetchone()[0]

    def redeem(self, t: Ticket, now: float) -> Redemption:
        """Count one entry if the ticket still allows it; the COMMIT is the moment it counts."""
        day = _day(now)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                n = self.used(t.ticket_id, day if t.kind == Kind.SEASON else None)
                if n >= t.max_entries:
                    self.conn.execute("ROLLBACK")
                    detail = "daily limit" if t.kind == Kind.SEASON else "no entries left"
                    return Redemption(False, ALREADY_USED, n, detail)
                last = self.conn.execute(
                    "SELECT max(t) FROM redemptions WHERE ticket_id = ? AND gate = ?",
                    (t.ticket_id, self.gate),
                ).fetchone()[0]
                if last is not None and 0 <= now - last < self.antipassback_s:
                    self.conn.execute("ROLLBACK")
                    return Redemption(False, ALREADY_USED, n, "anti-passback")
                self.conn.execute(
                    "INSERT INTO redemptions (ticket_id, t, day, gate) VALUES (?, ?, ?, ?)",
                    (t.ticket_id, now, day, self.gate),
                )
                self.conn.execute("COMMIT")
                return Redemption(True, OK, n + 1)
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:  # locked for longer than the timeout, disk full, ...
            raise GalleryError(
                f"ledger {self.path}: {e}",
                "check disk space and that no other process holds the ledger",
            ) from None

    def purge_before(self, cutoff: float) -> int:
        cur = self.conn.execute("DELETE FROM redemptions WHERE t < ?", (cutoff,))
        return cur.rowcount

    def close(self) -> None:
        self.conn.close()
