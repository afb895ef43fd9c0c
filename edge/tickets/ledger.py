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
transaction, and other lanes' redemptions land in `remote_redemptions`, keyed by (lane, epoch,
seq) so a duplicated or reordered message counts once; `used` counts both tables in one read.

Every entry, local or remote, takes the next place (`pos`) in one chain: a plain SHA-256 link
and, once a process holding the lane's evidence key has written it, an HMAC link
(edge/evidence.py). Triggers refuse UPDATE and DELETE; a row removed or edited anyway (triggers
dropped, or the file edited elsewhere) breaks the chain, and the ledger then refuses every
ticket (`ledger_error`, "chain broken"), because the missing row may be a spent ticket. The
check is incremental on the hot path: new entries are verified as they appear, the whole chain
again when the schema changes (a dropped trigger) or at open. `edge-gate ledger recover`
rebuilds a broken or restored ledger from its intact entries plus every ticket grant in the
audit log, so a spent ticket stays spent.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from edge.db import (
    DAMAGED_FIX,
    Migration,
    Store,
    columns,
    connect,
    migrate,
    run_script,
    sqlite_fix,
    tables,
)
from edge.errors import EdgeGateError, LedgerError
from edge.evidence import GENESIS, EvidenceKey, Mark, Witness, WitnessError, link
from edge.files import make_private_dirs
from edge.tickets.format import Kind, Reason, Ticket
from edge.timeutil import iso

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
CLOCK_TOLERANCE_S = 2.0  # NTP slews and rounding; a real step backwards is far larger
INIT_HINT = (
    "restore the ledger from its backup (with its -wal file); on a new gate, "
    "`edge-gate ledger init --config C`"
)
# A lost ledger: restore, or keep refusing tickets. Never a new empty ledger as the fix: every
# ticket redeemed before would open the gate again (README, "Common mistakes").
LOST_HINT = (
    "restore the newest backup of the ledger (with its -wal file), then `systemctl reload "
    "edge-gate`; if no backup is newer, run `edge-gate ledger recover --config C` (it rebuilds "
    "from the audit log, so spent tickets stay spent); never start an empty ledger: every spent "
    "ticket would open the gate again"
)


def _v1(c: sqlite3.Connection) -> None:
    run_script(
        c,
        """
        CREATE TABLE IF NOT EXISTS redemptions (id INTEGER PRIMARY KEY, ticket_id TEXT NOT NULL,
          t REAL NOT NULL, day TEXT NOT NULL, gate TEXT);
        CREATE INDEX IF NOT EXISTS redemptions_ticket ON redemptions(ticket_id);
        """,
    )


def _v2(c: sqlite3.Connection) -> None:
    """An id, a redemption counter and the newest time (schema 1 had none: derived once)."""
    c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    n, last = c.execute("SELECT count(*), max(t) FROM redemptions").fetchone()
    c.executemany(
        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
        [("ledger_id", uuid.uuid4().hex), ("seq", str(n)), ("last_t", str(last or 0))],
    )


def _v3(c: sqlite3.Connection) -> None:
    """The fleet's tables (empty when the gate works alone); a remote lane's epoch in the key."""
    run_script(
        c,
        """
        CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,
          ticket_id TEXT NOT NULL, t REAL NOT NULL, day TEXT NOT NULL, kind INTEGER NOT NULL,
          max_entries INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS remote_redemptions (lane TEXT NOT NULL, seq INTEGER NOT NULL,
          ticket_id TEXT NOT NULL, t REAL NOT NULL, day TEXT NOT NULL, PRIMARY KEY (lane, seq));
        """,
    )
    if "epoch" not in columns(c, "remote_redemptions"):
        run_script(
            c,
            """
            ALTER TABLE remote_redemptions RENAME TO remote_redemptions_v2;
            CREATE TABLE remote_redemptions (lane TEXT NOT NULL, epoch TEXT NOT NULL DEFAULT '',
              seq INTEGER NOT NULL, ticket_id TEXT NOT NULL, t REAL NOT NULL, day TEXT NOT NULL,
              PRIMARY KEY (lane, epoch, seq));
            INSERT INTO remote_redemptions (lane, seq, ticket_id, t, day)
              SELECT lane, seq, ticket_id, t, day FROM remote_redemptions_v2;
            DROP TABLE remote_redemptions_v2;
            DROP INDEX IF EXISTS remote_redemptions_ticket;
            CREATE INDEX remote_redemptions_ticket ON remote_redemptions(ticket_id);
            """,
        )


_APPEND_ONLY = """
CREATE UNIQUE INDEX IF NOT EXISTS {t}_pos ON {t}(pos);
CREATE TRIGGER IF NOT EXISTS {t}_no_update BEFORE UPDATE ON {t}
  WHEN NOT (old.mac IS NULL AND {same})
  BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {t}_no_delete BEFORE DELETE ON {t}
  BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""
_LOCAL = ("id", "ticket_id", "t", "day", "gate", "pos", "hash")
_REMOTE = ("lane", "epoch", "seq", "ticket_id", "t", "day", "pos", "hash")


def _v4(c: sqlite3.Connection) -> None:
    """The chain: every entry's place, plain hash and MAC; existing entries chained in time order
    (keyed by the first process that holds the evidence key). The outbox keeps the signed ticket
    each redemption counted (`proof`), so other lanes count that ticket and no other."""
    if "proof" not in columns(c, "outbox"):
        c.execute("ALTER TABLE outbox ADD COLUMN proof TEXT NOT NULL DEFAULT ''")
    for table in ("redemptions", "remote_redemptions"):
        for col, typ in (("pos", "INTEGER"), ("hash", "TEXT"), ("mac", "TEXT")):
            if col not in columns(c, table):
                c.execute(f"ALTER TABLE {table} ADD COLUMN {col} {typ}")
    entries = [
        Entry(0, "L", "", "", 0, tid, t, day, gate or "", rid)
        for rid, tid, t, day, gate in c.execute(
            "SELECT id, ticket_id, t, day, gate FROM redemptions ORDER BY t, id"
        )
    ] + [
        Entry(0, "R", lane, epoch, seq, tid, t, day, "", 0)
        for lane, epoch, seq, tid, t, day in c.execute(
            "SELECT lane, epoch, seq, ticket_id, t, day FROM remote_redemptions ORDER BY t"
        )
    ]
    h = GENESIS
    for pos, e in enumerate(sorted(entries, key=lambda e: e.t), 1):
        h = link(h, replace(e, pos=pos).body())
        if e.src == "L":
            c.execute("UPDATE redemptions SET pos = ?, hash = ? WHERE id = ?", (pos, h, e.rowid))
        else:
            c.execute(
                "UPDATE remote_redemptions SET pos = ?, hash = ? WHERE lane = ? AND epoch = ?"
                " AND seq = ?",
                (pos, h, e.lane, e.epoch, e.seq),
            )
    c.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [("chain_n", str(len(entries))), ("chain_hash", h), ("mac_n", "0")],
    )
    for table, cols in (("redemptions", _LOCAL), ("remote_redemptions", _REMOTE)):
        same = " AND ".join(f"new.{col} IS old.{col}" for col in cols)
        run_script(c, _APPEND_ONLY.format(t=table, same=same))


def _upload_outbox(c: sqlite3.Connection) -> None:
    """Check-ins to send back to a ticket shop (pretix: edge/pretix/sync.py): one row per decided
    scan, granted or refused, written in the transaction that decides it; `kind` names the call."""
    c.execute(
        "CREATE TABLE IF NOT EXISTS upload_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " t REAL NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,"
        " tries INTEGER NOT NULL DEFAULT 0, last_error TEXT)"
    )


MIGRATIONS = (
    Migration(1, _v1, "redemptions"),
    Migration(2, _v2, "ledger id, counter, newest time"),
    Migration(3, _v3, "fleet outbox and other lanes' redemptions"),
    Migration(4, _v4, "chained entries"),
    Migration(5, _upload_outbox, "check-ins for a ticket shop"),
)
# The rule a caller applies instead of the ledger's count and anti-passback (pretix's own rule):
# the earlier entries' times (this lane's and other lanes') in, a refusal or None out.
EntryRule = Callable[[list[float]], "Redemption | None"]
# What to queue for upload with the decision: (kind, JSON body), given the ledger's answer.
UploadRow = Callable[["Redemption"], tuple[str, str]]


@dataclass(frozen=True)
class Entry:
    """One counted entry in chain order: local (src "L", this gate's) or remote ("R")."""

    pos: int
    src: str
    lane: str
    epoch: str
    seq: int
    ticket_id: str
    t: float
    day: str
    gate: str
    rowid: int = 0  # local rows' id (not part of the chained text)
    hash: str = field(default="", compare=False)  # as stored (entries()), not recomputed
    mac: str | None = field(default=None, compare=False)

    def body(self) -> str:
        """The canonical text the chain hashes (ids of other files never enter it)."""
        if self.src == "L":
            fields = [self.pos, "L", self.ticket_id, float(self.t), self.day, self.gate]
        else:
            fields = [self.pos, "R", self.lane, self.epoch, self.seq, self.ticket_id,
                      float(self.t), self.day]  # fmt: skip
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=True)


RECOVER_HINT = (
    "run `edge-gate ledger recover --config C`: it keeps this file as "
    "evidence and rebuilds the ledger from its intact entries and every ticket grant in the "
    "audit log, so no spent ticket is let in again"
)


class LedgerUnreadable(LedgerError):
    """The ledger file is missing, empty or no readable ledger: `ledger recover` rebuilds it
    from the audit log alone (the damaged file kept as evidence)."""


UNREADABLE_HINT = (
    "restore it from backup; without one, `edge-gate ledger recover --config C` rebuilds it "
    "from the audit log (the damaged file is kept); do not replace it with a new one"
)


def _too_new(found: int, newest: int) -> LedgerError:
    return LedgerError(
        f"ledger has schema {found}, newer than this edge-gate ({newest})", "upgrade edge-gate"
    )


@dataclass(frozen=True)
class OutboxEntry:
    """One local redemption waiting for `edge-gate sync` to publish it (fleet)."""

    seq: int
    ticket_id: str
    t: float
    day: str
    kind: int
    max_entries: int
    proof: str = ""  # the ticket's signed text as scanned (Ticket.text), for the receivers


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


def day_of(t: float, tz: dt.tzinfo | None) -> str:
    return dt.datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d")


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
            LOST_HINT,
        )
    make_private_dirs(path.parent)
    try:
        conn = connect(path)
        try:
            migrate(conn, MIGRATIONS, _too_new)
        finally:
            conn.close()
    except (sqlite3.Error, LedgerError) as e:
        raise LedgerError(
            f"cannot create ledger {path}: {e}", "check the folder is writable"
        ) from None
    return path, True


def _refuse_other_database(path: Path) -> None:
    """Refuse a readable database that is no ledger (the gallery named by mistake) from a
    read-only look, before the writable open switches it to WAL mode: nothing in a refused
    file changes. A file this cannot read is left to the writable open, which says why."""
    try:
        ro = connect(path, readonly=True)
        try:
            found = tables(ro)
        finally:
            ro.close()
    except sqlite3.Error:
        return
    if "redemptions" not in found:
        raise LedgerError(
            f"ledger {path} is unreadable: no redemptions table: not an edge-gate ledger",
            "restore it from backup; do not replace it with a new one",
        )


class Ledger(Store):
    """One SQLite ledger file; use `with Ledger(...) as led:` so the connection always closes.

    With `key` (the gate, `ticket verify --redeem`, `ledger init/recover`) entries are keyed,
    the whole chain and the evidence witness are checked at open, and new entries as they come;
    without it (`edge-gate sync`, tests) entries are chained in plain and keyed later.
    """

    error = LedgerError
    what = "ledger"

    def __init__(
        self,
        path: str | Path,
        gate: str = "gate-1",
        anti_passback_s: float = 60.0,
        tz: dt.tzinfo | None = None,
        marks: MarkStore | None = None,
        outbox: bool = False,
        key: EvidenceKey | None = None,
        verify: bool | None = None,
    ):
        path = Path(path)
        self.gate, self.anti_passback_s, self.tz, self.marks = gate, anti_passback_s, tz, marks
        self.outbox = outbox  # fleet: queue each redemption for `edge-gate sync`
        self.key = key
        self.witness = Witness(key) if key is not None else None
        self.problem = ""  # why every ticket is refused: set when the chain breaks while open
        if path.is_dir() or not path.exists() or path.stat().st_size == 0:
            what = "is a directory" if path.is_dir() else "does not exist or is empty"
            raise (LedgerError if path.is_dir() else LedgerUnreadable)(
                f"ledger {path} {what}; tickets are refused until it is back "
                "(a new empty ledger would let every spent ticket in again)",
                INIT_HINT,
            )
        _refuse_other_database(path)
        try:
            self._connect(path)
        except LedgerError as e:
            if e.hint != DAMAGED_FIX:  # locked, or a folder it may not read: not damaged
                raise
            raise LedgerUnreadable(str(e.args[0]), UNREADABLE_HINT) from None
        try:
            if "redemptions" not in tables(self.conn):
                raise sqlite3.DatabaseError("no redemptions table: not an edge-gate ledger")
            migrate(self.conn, MIGRATIONS, _too_new)
            self.ledger_id = self._meta("ledger_id")
        except LedgerError as e:
            self.conn.close()
            raise LedgerError(f"ledger {self.path}: {e}", e.hint) from None
        except sqlite3.DatabaseError as e:
            self.conn.close()
            if sqlite_fix(e) != DAMAGED_FIX:  # locked, or another database (the gallery?)
                raise LedgerError(
                    f"ledger {self.path} is unreadable: {e}",
                    "restore it from backup; do not replace it with a new one",
                ) from None
            raise LedgerUnreadable(
                f"ledger {self.path} is unreadable: {e}", UNREADABLE_HINT
            ) from None
        self.floor = 0.0
        self._seen: tuple[int, int] = (-1, -1)  # (data_version, schema_version) last verified
        self._at = (0, GENESIS, "")  # (entries verified, their plain head, keyed head)
        try:
            self._check_marks()
            if key is not None if verify is None else verify:
                problem = self.verify()
                if problem:
                    raise LedgerError(f"ledger {self.path}: chain broken: {problem}", RECOVER_HINT)
                self.maintain()
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

    def _metas(self, c: sqlite3.Connection) -> dict[str, str]:
        return dict(c.execute("SELECT key, value FROM meta"))

    @staticmethod
    def _local_n(c: sqlite3.Connection, m: dict[str, str]) -> int:
        """This lane's own entries held (other lanes' apart): what the witness counts for
        `ledger recover`; counted once in a ledger written before it was kept."""
        if (n := m.get("local_n")) is not None:
            return int(n)
        return c.execute("SELECT count(*) FROM redemptions").fetchone()[0]

    @property
    def epoch(self) -> str:
        """The epoch of this lane's outbox numbers: the ledger's random id (new at every `ledger
        init` and `ledger recover`) unless `new_epoch` started another, so a replaced or restored
        lane numbers its outbox anew, never as a replay of the old one."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        return row[0] if row else self.ledger_id

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
                LOST_HINT,
            )
        if m is not None and here.seq < m.seq:
            raise LedgerError(
                f"ledger {self.path} went back in time: it holds {here.seq} redemptions, the "
                f"audit log recorded {m.seq} (last at {iso(m.t)}); an older copy or a lost -wal",
                LOST_HINT,
            )
        self.floor = max(m.t if m else 0.0, self.marks.newest_time() or 0.0)

    def mark(self) -> LedgerMark:
        """This ledger's id, redemptions ever counted, and newest redemption time."""
        return LedgerMark(self.ledger_id, int(self._meta("seq")), float(self._meta("last_t")))

    def lower_clock_floor(self, now: float) -> None:
        """The newest redemption time set back to `now` (`edge-gate ledger clock-checked`, after
        the audit log recorded it and took the lowered mark): entries dated by a clock that ran
        ahead stay counted, but no longer hold every ticket back until their date."""
        with self.transaction() as c:
            c.execute(
                "UPDATE meta SET value = ? WHERE key = 'last_t' AND CAST(value AS REAL) > ?",
                (str(now), now),
            )
        self.floor = now

    # --- the chain ------------------------------------------------------------------------------

    def entries(self, after: int = 0) -> list[Entry]:
        """Every entry (local and remote) after place `after`, in chain order."""
        local = "SELECT pos, 'L', '', '', 0, ticket_id, t, day, coalesce(gate, ''), id, hash, mac"
        remote = "SELECT pos, 'R', lane, epoch, seq, ticket_id, t, day, '', 0, hash, mac"
        rows = self.conn.execute(  # four indexed reads: each new entry costs one row each
            f"{local} FROM redemptions WHERE pos > ?1 UNION ALL"
            f" {local} FROM redemptions WHERE pos IS NULL UNION ALL"
            f" {remote} FROM remote_redemptions WHERE pos > ?1 UNION ALL"
            f" {remote} FROM remote_redemptions WHERE pos IS NULL ORDER BY 1",
            (after,),
        ).fetchall()
        return [Entry(*r) for r in rows]

    @property
    def kid(self) -> str | None:
        """The evidence key's fingerprint this ledger is keyed with (None: never keyed)."""
        return self._metas(self.conn).get("kid")

    def head(self) -> tuple[int, str]:
        """(entries in the chain, hash of the newest): published, signed, in heartbeats."""
        m = self._metas(self.conn)
        return int(m.get("chain_n", 0)), m.get("chain_hash", GENESIS)

    def verify(self) -> str:
        """Walk the whole chain (plain, and keyed with the key) and the witness: '' or the
        first break, in words a supervisor can act on."""
        self._at = (0, GENESIS, "")
        self._seen = (-1, -1)
        return self._verify_new() or self._check_witness()

    def _verify_new(self) -> str:
        """Verify the entries after the verified prefix; '' or the break.

        The prefix (`_at`: place, plain hash, MAC) only grows over entries that are final: keyed
        ones when this process holds the key, all of them when it does not. Entries written
        without the key and not keyed yet are re-checked in plain each time (few, and brief).
        """
        seen = (self.data_version(), self.conn.execute("PRAGMA schema_version").fetchone()[0])
        if seen[1] != self._seen[1]:
            self._at = (0, GENESIS, "")  # the schema changed (a trigger dropped?): all again
        m = self._metas(self.conn)
        n, kid, mac_n = int(m.get("chain_n", 0)), m.get("kid"), int(m.get("mac_n", 0))
        if kid is not None and self.key is not None and kid != self.key.kid:
            return f"the ledger is keyed with evidence key {kid}, not {self.key.kid}"
        keyed = kid is not None and self.key is not None
        at, h, mac = self._at
        if keyed and at and not mac:
            at, h, mac = self._at = (0, GENESIS, "")
        if n < at:
            return f"entries {n + 1}..{at} were removed while the gate ran"
        if keyed and not mac:
            mac = self.key.genesis(self.ledger_id)  # type: ignore[union-attr]
        cursor, last = (at, h, mac), at
        for e in self.entries(at):
            eh, emac = e.hash, e.mac
            if e.pos is None:
                return f"a {self._what(e)} has no place in the chain (inserted by hand)"
            if e.pos != last + 1:
                one = e.pos == last + 2
                gone = f"entry {last + 1} is" if one else f"entries {last + 1}..{e.pos - 1} are"
                return (
                    f"{gone} missing from the chain: rows were deleted (a spent ticket may be "
                    "among them)"
                )
            h = link(h, e.body())
            if eh != h:
                return f"entry {e.pos} ({self._what(e)}) was altered"
            if keyed and e.pos <= mac_n:
                if emac is None:
                    return f"entry {e.pos} lost its MAC (the ledger was edited with SQLite tools)"
                mac = self.key.mac(mac, h)  # type: ignore[union-attr]
                if emac != mac:
                    return (
                        f"entry {e.pos} ({self._what(e)}) was rewritten: its MAC does not match "
                        "(changed, or its chain recomputed, without the evidence key)"
                    )
                cursor = (e.pos, h, mac)
            elif keyed and emac is not None:
                return f"entry {e.pos} carries a MAC past the keyed head (entry {mac_n})"
            elif not keyed:
                cursor = (e.pos, h, "")
            last = e.pos
        if last != n or (n and m.get("chain_hash") != h):
            return f"entries after {last} were removed (the chain's head names entry {n})"
        if keyed and mac_n and (cursor[0] != mac_n or m.get("mac_head") != cursor[2]):
            return f"the keyed head (entry {mac_n}) does not match the entries: it was edited"
        self._at, self._seen = cursor, seen
        return ""

    @staticmethod
    def _what(e: Entry) -> str:
        """An entry named in a chain break, which is logged: its place and time, never its
        ticket id (identifiers stay out of the journal, as `run --quiet` promises)."""
        where = f"at lane {e.lane}" if e.src == "R" else "here"
        return f"a redemption {where} at {iso(e.t)}"

    def _check_witness(self) -> str:
        """'' if this file is at least as new as the head the lane last keyed, else why not."""
        if self.witness is None:
            return ""
        try:
            w = self.witness.get("ledger")
        except WitnessError as e:
            return str(e)
        m = self._metas(self.conn)
        mac_n = int(m.get("mac_n", 0))
        if w is None:  # a ledger this key keyed was witnessed: a witness naming none lost it
            if m.get("kid") == self.witness.key.kid and mac_n > 0:
                return (
                    f"the lane's evidence witness {self.witness.path} names no ledger, yet this "
                    f"one holds {mac_n} entries keyed with its key: the witness was deleted or "
                    "emptied, so the ledger cannot be checked for going back"
                )
            return ""
        if w.id != self.ledger_id:
            return (
                f"this is not the ledger this lane last wrote (id {self.ledger_id[:8]}; the "
                f"evidence witness names ledger {w.id[:8]} with {w.n} entries): it was replaced"
            )
        if (m.get("kid") is None and w.n) or mac_n < w.n:
            return (
                f"the ledger went back: the lane had keyed {w.n} entries, this file holds "
                f"{mac_n if m.get('kid') else 0}: an older copy was restored or entries were cut "
                "off the end (spent tickets may be among them)"
            )
        row = self.conn.execute(
            "SELECT mac FROM redemptions WHERE pos = ?1 UNION ALL"
            " SELECT mac FROM remote_redemptions WHERE pos = ?1",
            (w.n,),
        ).fetchone()
        if w.n and (row is None or row[0] != w.mac):
            return f"entry {w.n} is not the one the lane wrote (evidence witness): rewritten"
        return ""

    def _ensure_intact(self, count: bool = False) -> None:
        """The hot path's check, before every ticket decision: nothing to do unless another
        connection committed (data_version) or the schema changed (a trigger dropped: all
        again); then only the new entries. `count` (once a second, from `maintain`) also
        compares the rows held with the chain's length, for deletions that changed no schema."""
        if self.problem:
            return
        seen = (self.data_version(), self.conn.execute("PRAGMA schema_version").fetchone()[0])
        problem = "" if seen == self._seen else self._verify_new()
        if not problem and count:
            n = int(self._metas(self.conn).get("chain_n", 0))
            held = self.conn.execute(
                "SELECT (SELECT count(*) FROM redemptions) + (SELECT count(*) FROM"
                " remote_redemptions)"
            ).fetchone()[0]
            if held != n:
                problem = (
                    f"the ledger holds {held} entries, its chain {n}: rows were deleted or "
                    "inserted by hand"
                )
        if problem:
            self.problem = f"ledger chain broken: {problem}"
            log.error("ledger CHAIN_BROKEN every ticket is refused: %s", problem)

    def _refused(self) -> Redemption:
        return Redemption(False, Reason.LEDGER_ERROR, 0, f"{self.problem} (fix: {RECOVER_HINT})")

    def _append(self, c: sqlite3.Connection, e: Entry) -> int:
        """Give an entry the next place, chain it (keyed when the key is here), insert it."""
        m = self._metas(c)
        pos = int(m.get("chain_n", 0)) + 1
        h = link(m.get("chain_hash", GENESIS), replace(e, pos=pos).body())
        mac = None
        if self.key is not None and m.get("kid") == self.key.kid and int(m["mac_n"]) == pos - 1:
            mac = self.key.mac(m.get("mac_head") or self.key.genesis(self.ledger_id), h)
        local: list[tuple[str, str]] = []
        if e.src == "L":
            local = [("local_n", str(self._local_n(c, m) + 1))]
            cur = c.execute(
                "INSERT INTO redemptions (ticket_id, t, day, gate, pos, hash, mac)"
                " VALUES (?,?,?,?,?,?,?)",
                (e.ticket_id, e.t, e.day, e.gate, pos, h, mac),
            )
        else:
            cur = c.execute(
                "INSERT OR IGNORE INTO remote_redemptions (lane, epoch, seq, ticket_id, t, day,"
                " pos, hash, mac) VALUES (?,?,?,?,?,?,?,?,?)",
                (e.lane, e.epoch, e.seq, e.ticket_id, e.t, e.day, pos, h, mac),
            )
            if cur.rowcount != 1:
                return 0
        meta = [("chain_n", str(pos)), ("chain_hash", h), *local]
        if mac is not None:
            meta += [("mac_n", str(pos)), ("mac_head", mac)]
        c.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta)
        if self._at[0] == pos - 1 and (mac is not None or self.key is None):
            self._at = (pos, h, mac or "")  # our own write: verified as it was made
        return pos

    def _key_pending(self, c: sqlite3.Connection) -> None:
        """Key the entries written without the key (sync's, a keyless tool's), in order."""
        if self.key is None or self.problem:
            return
        m = self._metas(c)
        if m.get("kid") is None:
            c.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("kid", self.key.kid), ("mac_n", "0"), ("mac_head", "")],
            )
            m = self._metas(c)
        if m["kid"] != self.key.kid:
            return
        mac_n, n = int(m.get("mac_n", 0)), int(m.get("chain_n", 0))
        if mac_n >= n:
            return
        mac = m.get("mac_head") or self.key.genesis(self.ledger_id)
        prev = GENESIS
        if mac_n:
            prev = c.execute(
                "SELECT hash FROM redemptions WHERE pos = ?1 UNION ALL"
                " SELECT hash FROM remote_redemptions WHERE pos = ?1",
                (mac_n,),
            ).fetchone()[0]
        for e in self.entries(mac_n):
            eh = e.hash
            if e.pos != mac_n + 1 or link(prev, e.body()) != eh:
                self.problem = (
                    f"ledger chain broken: entry {e.pos} ({self._what(e)}) was altered or "
                    "removed before the gate keyed it"
                )
                log.error("ledger CHAIN_BROKEN every ticket is refused: %s", self.problem)
                return
            mac, prev, mac_n = self.key.mac(mac, eh), eh, e.pos
            table = "redemptions" if e.src == "L" else "remote_redemptions"
            c.execute(f"UPDATE {table} SET mac = ? WHERE pos = ?", (mac, e.pos))
        c.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("mac_n", str(mac_n)), ("mac_head", mac)],
        )

    def _witness(self) -> None:
        """After a keyed commit: the newest keyed head goes to the witness beside the key."""
        if self.witness is None or self.problem or self.conn.in_transaction:
            return
        m = self._metas(self.conn)
        if m.get("kid") == self.key.kid and int(m.get("mac_n", 0)):  # type: ignore[union-attr]
            try:
                local = self._local_n(self.conn, m)
                mark = Mark(self.ledger_id, int(m["mac_n"]), m["mac_head"], local)
                self.witness.advance("ledger", mark)
            except (OSError, WitnessError) as e:
                log.error("ledger witness not written error=%s", e)

    def rebuild(
        self,
        entries: list[Entry],
        pending: list[OutboxEntry],
        was: LedgerMark,
        last_t: float | None = None,
    ) -> None:
        """Fill a new, empty ledger in one transaction (`ledger recover`): the entries in order,
        the outbox rows not yet published (renumbered), and a counter never below the old one;
        the newest time `last_t`, or the newest of `was` and the entries."""
        with self.transaction() as c:
            for e in entries:
                self._append(c, replace(e, pos=0))
            c.executemany(
                "INSERT INTO outbox (ticket_id, t, day, kind, max_entries, proof)"
                " VALUES (?,?,?,?,?,?)",
                [(o.ticket_id, o.t, o.day, o.kind, o.max_entries, o.proof) for o in pending],
            )
            n_local = sum(1 for e in entries if e.src == "L")
            newest = max([was.t, *(e.t for e in entries)]) if last_t is None else last_t
            c.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("seq", str(max(was.seq, n_local))), ("last_t", str(newest))],
            )

    def adopt(self, replace_witness: bool = False) -> None:
        """Key every entry and make this file the ledger the witness names (`ledger init`; with
        `replace_witness`, `--after-loss` and `ledger recover`, which adopt a new ledger)."""
        if self.key is None or self.witness is None:
            return
        with self.transaction() as c:
            self._key_pending(c)
        m = self._metas(self.conn)
        if m.get("kid") == self.key.kid:
            n, head = int(m.get("mac_n", 0)), m.get("mac_head") or ""
            local = self._local_n(self.conn, m)
            self.witness.advance("ledger", Mark(self.ledger_id, n, head, local), replace_witness)

    def maintain(self) -> None:
        """Once a second from the gate: verify what others wrote, key it. Cheap when idle."""
        self._ensure_intact(count=True)
        if self.key is None or self.problem:
            return
        m = self._metas(self.conn)
        if m.get("kid") is None or int(m.get("mac_n", 0)) < int(m.get("chain_n", 0)):
            with self.transaction() as c:
                self._key_pending(c)
            self._ensure_intact()
            self._witness()

    def used(self, ticket_id: str, day: str | None = None) -> int:
        """Entries counted for a ticket (on one day, for season passes), here and at other lanes."""
        w = "WHERE ticket_id = ?" + (" AND day = ?" if day else "")
        q = (
            f"SELECT (SELECT count(*) FROM redemptions {w})"
            f" + (SELECT count(*) FROM remote_redemptions {w})"
        )
        args = (ticket_id, day) if day else (ticket_id,)
        return self.conn.execute(q, args * 2).fetchone()[0]

    # --- the fleet: other lanes' redemptions in, this lane's outbox out (edge-gate sync) ---------

    def entry_times(self, ticket_id: str) -> list[float]:
        """Times of every entry counted for a ticket, here and at other lanes, oldest first."""
        rows = self.conn.execute(
            "SELECT t FROM redemptions WHERE ticket_id = ?"
            " UNION ALL SELECT t FROM remote_redemptions WHERE ticket_id = ? ORDER BY 1",
            (ticket_id, ticket_id),
        )
        return [r[0] for r in rows]

    def apply_remote(
        self, lane: str, seq: int, ticket_id: str, t: float, day: str, epoch: str = ""
    ) -> bool:
        """Record another lane's redemption once; False if (lane, epoch, seq) was already applied.

        Joins the caller's `transaction()` when one is open (sync applies a batch in one commit).
        """
        e = Entry(0, "R", lane, epoch, int(seq), ticket_id, float(t), day, "")
        with self.transaction() as c:
            return self._append(c, e) > 0

    def remote_ticket(self, lane: str, epoch: str, seq: int) -> str | None:
        """The ticket another lane's redemption (lane, epoch, seq) named here, if applied."""
        row = self.conn.execute(
            "SELECT ticket_id FROM remote_redemptions WHERE lane = ? AND epoch = ? AND seq = ?",
            (lane, epoch, int(seq)),
        ).fetchone()
        return None if row is None else str(row[0])

    def outbox_batch(self, after_seq: int = 0, limit: int = 500) -> list[OutboxEntry]:
        """Local redemptions queued for publishing, oldest first, after `after_seq`."""
        rows = self.conn.execute(
            "SELECT seq, ticket_id, t, day, kind, max_entries, proof FROM outbox WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (after_seq, max(0, limit)),
        ).fetchall()
        return [OutboxEntry(*r) for r in rows]

    def outbox_done(self, seqs: Iterable[int]) -> int:
        """Drop outbox entries the broker acknowledged (PUBACK); returns how many went."""
        with self.transaction() as c:
            return c.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs]).rowcount

    def outbox_high(self) -> int:
        """The highest outbox sequence number ever given (kept when rows are published)."""
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def new_epoch(self) -> str:
        """Start a new epoch for this lane's outbox numbers (sync: the fleet saw more from this
        lane than this file holds, so it is a restored copy); returns it."""
        epoch = uuid.uuid4().hex
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        return epoch

    def outbox_size(self) -> int:
        """Redemptions not yet acknowledged by the broker."""
        return self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def lanes_of(self, ticket_id: str, day: str | None, here: str) -> list[str]:
        """Every lane that redeemed this ticket (`here` for this lane's own), for `double_use`."""
        w = "WHERE ticket_id = ?" + (" AND day = ?" if day else "")
        args = (ticket_id, day) if day else (ticket_id,)
        q = self.conn.execute
        lanes = {r[0] for r in q(f"SELECT DISTINCT lane FROM remote_redemptions {w}", args)}
        if q(f"SELECT count(*) FROM redemptions {w}", args).fetchone()[0]:
            lanes.add(here)
        return sorted(lanes)

    def remote_count(self, ticket_id: str | None = None) -> int:
        """Other lanes' redemptions held here (all, or of one ticket)."""
        if ticket_id is None:
            return self.conn.execute("SELECT count(*) FROM remote_redemptions").fetchone()[0]
        q = "SELECT count(*) FROM remote_redemptions WHERE ticket_id = ?"
        return self.conn.execute(q, (ticket_id,)).fetchone()[0]

    # --- the gate: check and redeem ------------------------------------------------------------

    def _refusal(
        self, t: Ticket, now: float, day: str, rule: EntryRule | None = None
    ) -> Redemption | None:
        """Why this entry may not count now (None: it may). Read-only; callers hold the lock."""
        floor = self.clock_behind(now)
        if floor is not None:
            return Redemption(
                False,
                Reason.CLOCK_BEHIND,
                self.used(t.ticket_id),
                f"clock {iso(now)} is before the newest recorded entry {iso(floor)}",
            )
        if rule is not None:  # the caller's rule replaces the count and anti-passback
            return rule(self._as_dated(self.entry_times(t.ticket_id), now))
        n = self.used(t.ticket_id, day if t.kind == Kind.SEASON else None)
        if n >= t.max_entries:
            detail = "daily limit" if t.kind == Kind.SEASON else "no entries left"
            return Redemption(False, Reason.ALREADY_USED, n, detail)
        last = self.conn.execute(  # entries dated ahead of the floor: see lower_clock_floor
            "SELECT max(t) FROM redemptions WHERE ticket_id = ? AND gate = ? AND t <= ?",
            (t.ticket_id, self.gate, now + CLOCK_TOLERANCE_S),
        ).fetchone()[0]
        if last is not None and now - last < self.anti_passback_s:
            return Redemption(False, Reason.ANTI_PASSBACK, n, f"used here {now - last:.0f} s ago")
        return None

    def _as_dated(self, times: list[float], now: float) -> list[float]:
        """Entry times as a rule reads them: an entry dated ahead of now, left only after
        `ledger clock-checked` lowered the floor, counts as of that check (still counted, and
        never minutes in the future)."""
        late = now + CLOCK_TOLERANCE_S
        if all(x <= late for x in times):
            return times
        checked = None
        if (when := getattr(self.marks, "clock_checked_time", None)) is not None:
            try:
                checked = when()
            except (sqlite3.Error, EdgeGateError) as e:
                log.warning("ledger clock_check_unread error=%s", e)
        at = min(now, checked) if checked is not None else now
        return sorted(at if x > late else x for x in times)

    def clock_behind(self, now: float) -> float | None:
        """The newest time this ledger or the audit log recorded, when `now` is behind it by
        more than CLOCK_TOLERANCE_S (tickets are refused `clock_behind`); None otherwise."""
        floor = max(self._seen_floor(), float(self._meta("last_t")))
        return floor if now < floor - CLOCK_TOLERANCE_S else None

    def _seen_floor(self) -> float:
        """The floor raised to the audit log's newest record as it is now: a clock set back
        while the gate runs is behind what it recorded since it opened the ledger. A log that
        cannot be read (deleted underneath, reopening) keeps the floor last read."""
        if self.marks is not None:
            try:
                self.floor = max(self.floor, self.marks.newest_time() or 0.0)
            except (sqlite3.Error, EdgeGateError) as e:
                log.warning("ledger floor_unread error=%s; the floor last read holds", e)
        return self.floor

    def check(self, t: Ticket, now: float, rule: EntryRule | None = None) -> Redemption:
        """What `redeem` would answer now, without counting anything."""
        self._ensure_intact()
        if self.problem:
            return self._refused()
        day = day_of(now, self.tz)
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

        One transaction holds the chain check, the refusal checks, the entry, its outbox row
        and the counter; anything that must count together with the entry is written inside it.
        A broken chain refuses every ticket: the missing row may be this one.
        """
        day = day_of(now, self.tz)
        with self.transaction() as c:
            self._ensure_intact()
            if self.problem:
                return self._refused()
            refusal = self._refusal(t, now, day, rule)
            if refusal is not None:
                if upload is not None:  # a refused scan the shop hears of, in this transaction
                    self._queue_upload(c, now, *upload(refusal))
                return refusal
            n = self.used(t.ticket_id, day if t.kind == Kind.SEASON else None)
            self._key_pending(c)
            self._append(c, Entry(0, "L", "", "", 0, t.ticket_id, now, day, self.gate))
            if self.outbox:  # same transaction: published by `edge-gate sync`
                c.execute(
                    "INSERT INTO outbox (ticket_id, t, day, kind, max_entries, proof)"
                    " VALUES (?,?,?,?,?,?)",
                    (t.ticket_id, now, day, int(t.kind), t.max_entries, getattr(t, "text", "")),
                )
            if upload is not None:  # the shop's check-in, counted together with the entry
                self._queue_upload(c, now, *upload(Redemption(True, Reason.OK, n + 1)))
            c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'seq'")
            c.execute(
                "UPDATE meta SET value = max(CAST(value AS REAL), ?) WHERE key = 'last_t'", (now,)
            )
        self._witness()
        self._store_mark()
        return Redemption(True, Reason.OK, n + 1)

    # --- check-ins for a ticket shop (pretix), sent by `edge-gate pretix sync` ------------------

    @staticmethod
    def _queue_upload(c: sqlite3.Connection, now: float, kind: str, body: str) -> None:
        c.execute("INSERT INTO upload_outbox (t, kind, body) VALUES (?, ?, ?)", (now, kind, body))

    def queue_upload(self, now: float, kind: str, body: str) -> None:
        """Queue a decision the ledger did not count (a refused scan) for the shop."""
        with self.transaction() as c:
            self._queue_upload(c, now, kind, body)

    def upload_batch(self, limit: int = 50) -> list[tuple[int, float, str, str]]:
        """The oldest queued check-ins: (id, t, kind, body)."""
        return self.conn.execute(
            "SELECT id, t, kind, body FROM upload_outbox ORDER BY id LIMIT ?", (limit,)
        ).fetchall()

    def upload_done(self, row_id: int) -> None:
        """The shop has the check-in: drop it from the queue."""
        with self.transaction() as c:
            c.execute("DELETE FROM upload_outbox WHERE id = ?", (row_id,))

    def upload_failed(self, row_id: int, error: str) -> None:
        """Keep the row for the next try, with why this one failed."""
        with self.transaction() as c:
            c.execute(
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
