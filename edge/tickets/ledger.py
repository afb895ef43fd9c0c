"""Redemption ledger: a ticket is redeemed at most as often as it allows, across restarts.

Offline check-in systems can let one ticket in several times; this ledger closes that gap.
The check and the insert happen in one IMMEDIATE transaction, so the commit is the single point
at which an entry counts: a process killed before it leaves no entry, and two scans of the
same code, even from two processes, are serialised by SQLite's write lock.

A ledger that disappears or goes back in time (deleted, truncated, an older copy restored, a lost
-wal) would let spent tickets in again, so it is never created implicitly (`edge-gate ledger
init`), it carries a random id and a redemption counter, and the gate keeps the last counter it
saw in a second place (the audit log, `MarkStore`) and refuses the ledger when it is behind.

In a fleet (docs/FLEET.md) each local redemption is also queued in `outbox` in the same
transaction, and other lanes' redemptions land in `remote_redemptions`, keyed by (lane, seq) so
a duplicated or reordered message counts once; `used` counts both tables in one read.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from edge.errors import LedgerError
from edge.tickets.format import Kind, Reason, Ticket
from edge.timeutil import iso

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
CLOCK_TOLERANCE_S = 2.0  # NTP slews and rounding; a real step backwards is far larger
INIT_HINT = "run `edge-gate ledger init --config /etc/edge-gate/gate.toml` (or restore the backup)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS redemptions (
  id INTEGER PRIMARY KEY, ticket_id TEXT NOT NULL, t REAL NOT NULL, day TEXT NOT NULL, gate TEXT);
CREATE INDEX IF NOT EXISTS redemptions_ticket ON redemptions(ticket_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_FLEET_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, ticket_id TEXT NOT NULL,
  t REAL NOT NULL, day TEXT NOT NULL, kind INTEGER NOT NULL, max_entries INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS remote_redemptions (lane TEXT NOT NULL, seq INTEGER NOT NULL,
  ticket_id TEXT NOT NULL, t REAL NOT NULL, day TEXT NOT NULL, PRIMARY KEY (lane, seq));
CREATE INDEX IF NOT EXISTS remote_redemptions_ticket ON remote_redemptions(ticket_id);
"""
# Check-ins to send back to a ticket shop (pretix: edge/pretix/upload.py): one row per decided
# scan, granted or refused, written in the transaction that decides it; `kind` names the call.
_UPLOAD_SCHEMA = """
CREATE TABLE IF NOT EXISTS upload_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL,
  kind TEXT NOT NULL, body TEXT NOT NULL, tries INTEGER NOT NULL DEFAULT 0, last_error TEXT);
"""
# The rule a caller applies instead of the ledger's count and anti-passback (pretix's own rule):
# the earlier entries' times (this lane's and other lanes') in, a refusal or None out.
EntryRule = Callable[[list[float]], "Redemption | None"]
# What to queue for upload with the decision: (kind, JSON body), given the ledger's answer.
UploadRow = Callable[["Redemption"], tuple[str, str]]


@dataclass(frozen=True)
class Redemption:
    """The ledger's answer for one ticket: counted (ok) or refused with a reason."""

    ok: bool
    reason: Reason
    entries_used: int
    detail: str = ""


@dataclass(frozen=True)
class LedgerMark:
    """How far a ledger has counted: its random id, redemptions ever recorded, newest time."""

    ledger_id: str
    seq: int
    t: float


class MarkStore(Protocol):
    """A second place (the audit log) that remembers the newest ledger mark the gate saw."""

    def ledger_mark(self) -> LedgerMark | None:
        """The last mark stored, or None if none was ever stored."""

    def set_ledger_mark(self, mark: LedgerMark) -> None:
        """Remember a mark (called after every committed redemption)."""

    def newest_time(self) -> float | None:
        """The newest time recorded there: the clock must not be behind it."""


def site_zone(name: str) -> dt.tzinfo | None:
    """The site's time zone from config ("" = the system's local zone), for per-day limits."""
    return ZoneInfo(name) if name else None


def _day(t: float, tz: dt.tzinfo | None) -> str:
    return dt.datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def init_ledger(path: str | Path) -> tuple[Path, bool]:
    """Create an empty ledger; (path, created). An existing readable ledger is left untouched."""
    path = Path(path)
    if path.is_dir():
        raise LedgerError(f"ledger {path} is a directory", "point tickets.ledger at a file")
    if path.exists() and path.stat().st_size > 0:
        with Ledger(path):  # refuses a corrupt or foreign file
            return path, False
    if path.exists():
        raise LedgerError(
            f"ledger {path} exists but is empty: it may have been truncated",
            "restore it from backup; if none exists, delete it and run "
            "`edge-gate ledger init --after-loss` to record the loss",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = _connect(path)
        with conn:
            conn.executescript(_SCHEMA)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("ledger_id", uuid.uuid4().hex), ("seq", "0"), ("last_t", "0")],
            )
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.close()
    except sqlite3.Error as e:
        raise LedgerError(
            f"cannot create ledger {path}: {e}", "check the folder is writable"
        ) from None
    return path, True


class Ledger:
    """One SQLite ledger file; use `with Ledger(...) as led:` so the connection always closes."""

    def __init__(
        self,
        path: str | Path,
        gate: str = "gate-1",
        antipassback_s: float = 60.0,
        tz: dt.tzinfo | None = None,
        marks: MarkStore | None = None,
        outbox: bool = False,
    ):
        self.path = Path(path)
        self.gate, self.antipassback_s, self.tz, self.marks = gate, antipassback_s, tz, marks
        self.outbox = outbox  # fleet: queue each redemption for `edge-gate sync`
        self.problem = ""  # a Ledger that opened has none (see desk.UnavailableLedger)
        if self.path.is_dir() or not self.path.exists() or self.path.stat().st_size == 0:
            what = "is a directory" if self.path.is_dir() else "does not exist or is empty"
            raise LedgerError(
                f"ledger {self.path} {what}; tickets are refused until it is back "
                "(a new empty ledger would let every spent ticket in again)",
                INIT_HINT,
            )
        try:
            self.conn = _connect(self.path)
            self._upgrade()
            self.ledger_id = self._meta("ledger_id")
        except sqlite3.DatabaseError as e:
            if hasattr(self, "conn"):
                self.conn.close()
            raise LedgerError(
                f"ledger {self.path} is unreadable: {e}",
                "restore it from backup; do not replace it with a new one",
            ) from None
        self.floor = 0.0
        try:
            self._check_marks()
        except LedgerError:
            self.conn.close()
            raise

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _meta(self, key: str) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise sqlite3.DatabaseError(f"no {key} in meta")
        return row[0]

    def _upgrade(self) -> None:
        ver = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if ver > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema {ver}, newer than this edge-gate "
                f"({SCHEMA_VERSION})",
                "upgrade edge-gate",
            )
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master")}
        if "redemptions" not in tables:
            raise sqlite3.DatabaseError("no redemptions table: not an edge-gate ledger")
        if ver < 2:  # schema 1 had no id, counter or newest time: derive them once
            with self.conn:
                self.conn.executescript(_SCHEMA)
                n, last = self.conn.execute("SELECT count(*), max(t) FROM redemptions").fetchone()
                self.conn.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    [("ledger_id", uuid.uuid4().hex), ("seq", str(n)), ("last_t", str(last or 0))],
                )
                self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.conn.executescript(_FLEET_SCHEMA)  # fleet tables; empty when the gate works alone
        self.conn.executescript(_UPLOAD_SCHEMA)  # shop check-ins; empty without a ticket shop

    def _check_marks(self) -> None:
        """Refuse a ledger that is not the one the gate last saw, or that has lost entries."""
        if self.marks is None:
            return
        m = self.marks.ledger_mark()
        here = self.mark()
        if m is not None and m.ledger_id != here.ledger_id:
            raise LedgerError(
                f"ledger {self.path} (id {here.ledger_id[:8]}) is not the ledger this gate last "
                f"used (id {m.ledger_id[:8]}, {m.seq} redemptions): it was replaced",
                "restore the ledger from backup; if it is lost for good, run `edge-gate ledger "
                "init --config C --after-loss` (recorded in the audit log)",
            )
        if m is not None and here.seq < m.seq:
            raise LedgerError(
                f"ledger {self.path} went back in time: it holds {here.seq} redemptions, the "
                f"audit log recorded {m.seq} (last at {iso(m.t)}); an older copy or a lost -wal",
                "restore the newest backup; if none is newer, run `edge-gate ledger init "
                "--config C --after-loss` (recorded in the audit log)",
            )
        self.floor = max(m.t if m else 0.0, self.marks.newest_time() or 0.0)

    def mark(self) -> LedgerMark:
        """This ledger's id, redemptions ever counted, and newest redemption time."""
        return LedgerMark(self.ledger_id, int(self._meta("seq")), float(self._meta("last_t")))

    def used(self, ticket_id: str, day: str | None = None) -> int:
        """Entries counted for a ticket (on one day, for season passes), here and at other lanes."""
        w = "WHERE ticket_id = ?" + (" AND day = ?" if day else "")
        q = (
            f"SELECT (SELECT count(*) FROM redemptions {w})"
            f" + (SELECT count(*) FROM remote_redemptions {w})"
        )
        args = (ticket_id, day) if day else (ticket_id,)
        return self.conn.execute(q, args * 2).fetchone()[0]

    def entry_times(self, ticket_id: str) -> list[float]:
        """Times of every entry counted for a ticket, here and at other lanes, oldest first."""
        rows = self.conn.execute(
            "SELECT t FROM redemptions WHERE ticket_id = ?"
            " UNION ALL SELECT t FROM remote_redemptions WHERE ticket_id = ? ORDER BY 1",
            (ticket_id, ticket_id),
        )
        return [r[0] for r in rows]

    def apply_remote(self, lane: str, seq: int, ticket_id: str, t: float, day: str) -> bool:
        """Record another lane's redemption once; False if (lane, seq) was already applied."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO remote_redemptions (lane, seq, ticket_id, t, day)"
            " VALUES (?,?,?,?,?)",
            (lane, seq, ticket_id, t, day),
        )
        return cur.rowcount == 1

    def _refusal(
        self, t: Ticket, now: float, day: str, rule: EntryRule | None = None
    ) -> Redemption | None:
        """Why this entry may not count now (None: it may). Read-only; callers hold the lock."""
        floor = max(self.floor, float(self._meta("last_t")))
        if now < floor - CLOCK_TOLERANCE_S:
            return Redemption(
                False,
                Reason.CLOCK_BEHIND,
                self.used(t.ticket_id),
                f"clock {iso(now)} is before the newest recorded entry {iso(floor)}",
            )
        if rule is not None:  # the caller's rule replaces the count and anti-passback
            return rule(self.entry_times(t.ticket_id))
        n = self.used(t.ticket_id, day if t.kind == Kind.SEASON else None)
        if n >= t.max_entries:
            detail = "daily limit" if t.kind == Kind.SEASON else "no entries left"
            return Redemption(False, Reason.ALREADY_USED, n, detail)
        last = self.conn.execute(
            "SELECT max(t) FROM redemptions WHERE ticket_id = ? AND gate = ?",
            (t.ticket_id, self.gate),
        ).fetchone()[0]
        if last is not None and now - last < self.antipassback_s:
            return Redemption(False, Reason.ANTI_PASSBACK, n, f"used here {now - last:.0f} s ago")
        return None

    def check(self, t: Ticket, now: float, rule: EntryRule | None = None) -> Redemption:
        """What `redeem` would answer now, without counting anything."""
        day = _day(now, self.tz)
        refusal = self._refusal(t, now, day, rule)
        if refusal is not None:
            return refusal
        return Redemption(
            True, Reason.OK, self.used(t.ticket_id, day if t.kind == Kind.SEASON else None)
        )

    def redeem(
        self,
        t: Ticket,
        now: float,
        rule: EntryRule | None = None,
        upload: UploadRow | None = None,
    ) -> Redemption:
        """Count one entry if the ticket still allows it; the COMMIT is the moment it counts.

        One transaction holds the check, the redemption row and the counter; anything that must
        count together with the entry is written inside it, before the COMMIT. `rule` decides
        instead of the ledger's count; `upload` queues the decision for the shop, granted or
        refused, in the same transaction.
        """
        day = _day(now, self.tz)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                refusal = self._refusal(t, now, day, rule)
                if refusal is not None:
                    if upload is not None:
                        self._queue_upload(now, *upload(refusal))
                        self.conn.execute("COMMIT")
                    else:
                        self.conn.execute("ROLLBACK")
                    return refusal
                n = self.used(t.ticket_id, day if t.kind == Kind.SEASON else None)
                self.conn.execute(
                    "INSERT INTO redemptions (ticket_id, t, day, gate) VALUES (?, ?, ?, ?)",
                    (t.ticket_id, now, day, self.gate),
                )
                if self.outbox:  # same transaction: published by `edge-gate sync`
                    self.conn.execute(
                        "INSERT INTO outbox (ticket_id, t, day, kind, max_entries)"
                        " VALUES (?,?,?,?,?)",
                        (t.ticket_id, now, day, int(t.kind), t.max_entries),
                    )
                if upload is not None:
                    self._queue_upload(now, *upload(Redemption(True, Reason.OK, n + 1)))
                self.conn.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'seq'"
                )
                self.conn.execute(
                    "UPDATE meta SET value = max(CAST(value AS REAL), ?) WHERE key = 'last_t'",
                    (now,),
                )
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:  # locked for longer than the timeout, disk full, ...
            raise LedgerError(
                f"ledger {self.path}: {e}",
                "check disk space and that no other process holds the ledger",
            ) from None
        self._store_mark()
        return Redemption(True, Reason.OK, n + 1)

    def _queue_upload(self, now: float, kind: str, body: str) -> None:
        self.conn.execute(
            "INSERT INTO upload_outbox (t, kind, body) VALUES (?, ?, ?)", (now, kind, body)
        )

    def queue_upload(self, now: float, kind: str, body: str) -> None:
        """Queue a decision the ledger did not count (a refused scan) for the shop."""
        try:
            with self.conn:
                self._queue_upload(now, kind, body)
        except sqlite3.Error as e:
            raise LedgerError(f"ledger {self.path}: {e}", "check disk space") from None

    def upload_batch(self, limit: int = 50) -> list[tuple[int, float, str, str]]:
        """The oldest queued check-ins: (id, t, kind, body)."""
        return self.conn.execute(
            "SELECT id, t, kind, body FROM upload_outbox ORDER BY id LIMIT ?", (limit,)
        ).fetchall()

    def upload_done(self, row_id: int) -> None:
        """The shop has the check-in: drop it from the queue."""
        with self.conn:
            self.conn.execute("DELETE FROM upload_outbox WHERE id = ?", (row_id,))

    def upload_failed(self, row_id: int, error: str) -> None:
        """Keep the row for the next try, with why this one failed."""
        with self.conn:
            self.conn.execute(
                "UPDATE upload_outbox SET tries = tries + 1, last_error = ? WHERE id = ?",
                (error[:300], row_id),
            )

    def upload_pending(self) -> tuple[int, float | None]:
        """(queued check-ins, time of the oldest) for `doctor` and `fleet status`."""
        n, oldest = self.conn.execute("SELECT count(*), min(t) FROM upload_outbox").fetchone()
        return n, oldest

    def _store_mark(self) -> None:
        """After the commit the entry counts; a failing mark store is logged, never un-counts it."""
        if self.marks is None:
            return
        try:
            self.marks.set_ledger_mark(self.mark())
        except Exception as e:  # audit disk full: the next start compares against an older mark
            log.error("ledger mark_not_stored error=%s", e)

    def purge_before(self, cutoff: float) -> int:
        """Drop redemption rows older than cutoff (the counter and newest time stay)."""
        self.conn.execute("DELETE FROM remote_redemptions WHERE t < ?", (cutoff,))
        return self.conn.execute("DELETE FROM redemptions WHERE t < ?", (cutoff,)).rowcount

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.conn.close()
