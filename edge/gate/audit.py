"""Append-only, hash-chained audit log of decisions and privacy events. Never an image or a name.

Each record carries the SHA-256 hash of the one before it (the plain chain, which the office can
recompute from published records) and, once the gate has written it, an HMAC over the previous
MAC and its hash under the lane's evidence key (edge/evidence.py). An edit made with SQLite tools
(even after dropping the triggers), a record removed from the middle, a forged purge checkpoint
or a chain recomputed after an edit breaks one of the two, and `edge-gate audit verify` names
the first broken record; the evidence witness beside the key catches a log cut short or
restored from an older copy. `purge` removes only records past retention (never less than
MIN_RETENTION_DAYS) and keeps a keyed checkpoint of every run of records it removed, so both
chains still verify across the gap.

`edge-gate sync` writes its records without the key (it never reads it): they are chained in
plain at once and keyed by the gate's next write or tick (`maintain`), in order.

The log also keeps the redemption ledger's high-water mark (`ledger.MarkStore`), so a ledger that
went back in time is refused at start, and folds floods of unreadable codes into one record per
window (`JunkFolder`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import time
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

from edge.config import MAX_JUNK_WINDOW_S
from edge.config import MIN_AUDIT_RETENTION_DAYS as MIN_RETENTION_DAYS
from edge.db import Migration, Store, columns, migrate, run_script, tables
from edge.errors import AuditError, ConfigError, EdgeGateError, KeyFileError, ReasonError
from edge.evidence import EvidenceKey, Mark, Witness, WitnessError, key_path, lane_key
from edge.files import make_private_dirs
from edge.tickets.ledger import LedgerMark

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
GENESIS = "0" * 64
RETENTION = "retention"  # the reason of the record of a purge that ran (kind `purge`)
# the kind of the record that the clock is right now (`edge-gate ledger clock-checked`):
# records before it dated by a clock that ran ahead no longer hold tickets back
CLOCK_CHECKED = "clock_checked"
AUDIT_BROKEN_FIX = (  # a broken chain is evidence: adopting keeps it and names what was found
    "keep the file as evidence; after a restore, a cut or a replacement: "
    "`edge-gate audit adopt --config C` (edited records stay named)"
)


@dataclass(frozen=True)
class AuditRecord:
    """One event; subject is a pseudonymous person id or a ticket id, never a name."""

    t: float
    gate: str
    kind: str  # decision | deletion | purge | enroll | door | system | ledger | fleet
    decision: str = ""  # grant | deny
    via: str = ""  # face | ticket | exit_button
    subject: str = ""  # pseudonymous person id or ticket id; empty for privacy events
    score: float | None = None
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
class ChainReport:
    """What `verify` found: ok, records and checkpoints checked, the head, the first break."""

    ok: bool
    records: int
    removed: int
    head_id: int
    head_hash: str
    problem: str = ""
    keyed: bool = False  # the HMAC chain and the witness were checked too
    note: str = ""  # not a break: e.g. records sync wrote that the gate has not keyed yet


class ChainHead(NamedTuple):
    """How far a chain has grown: records ever appended (purged ones too) and the newest hash."""

    count: int  # type: ignore[assignment]  # shadows tuple.count, which nothing here calls
    head: str


@dataclass(frozen=True)
class ChainedRecord:
    """One record with its place in the chain: its id, the previous hash and its own."""

    id: int
    record: AuditRecord
    prev: str
    hash: str


_COLS = "t, gate, kind, decision, via, subject, score, reason, detail"
_ALL = f"id, {_COLS}, prev, hash"
_SAME = " AND ".join(f"new.{c} IS old.{c}" for c in _ALL.split(", "))
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY, t REAL NOT NULL, gate TEXT, kind TEXT NOT NULL, decision TEXT, via TEXT,
  subject TEXT, score REAL, reason TEXT, detail TEXT, prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_t ON events(t);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL);
CREATE TABLE IF NOT EXISTS chain (k INTEGER PRIMARY KEY CHECK (k = 1), head_id INTEGER NOT NULL,
  head_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (id INTEGER PRIMARY KEY, t REAL NOT NULL,
  runs TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_mark (k INTEGER PRIMARY KEY CHECK (k = 1), ledger_id TEXT,
  seq INTEGER, t REAL);
CREATE TRIGGER IF NOT EXISTS events_retention BEFORE DELETE ON events
  WHEN old.t >= CAST(strftime('%s','now') AS REAL) - max({MIN_RETENTION_DAYS * 86400.0},
    coalesce((SELECT value FROM meta WHERE key = 'retention_s'), 0))
  BEGIN SELECT RAISE(ABORT, 'audit record is inside its retention period'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
  BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
"""
# Schema 3: the keyed chain. A record's or checkpoint's MAC may be set once (NULL -> value),
# nothing else ever changes.
_KEYED = f"""
ALTER TABLE events ADD COLUMN mac TEXT;
ALTER TABLE checkpoints ADD COLUMN macs TEXT;
ALTER TABLE checkpoints ADD COLUMN mac TEXT;
ALTER TABLE chain ADD COLUMN log_id TEXT;
ALTER TABLE chain ADD COLUMN kid TEXT;
ALTER TABLE chain ADD COLUMN mac_from INTEGER;
ALTER TABLE chain ADD COLUMN mac_cp_from INTEGER;
ALTER TABLE chain ADD COLUMN mac_id INTEGER;
ALTER TABLE chain ADD COLUMN mac_head TEXT;
DROP TRIGGER IF EXISTS events_no_update;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
  WHEN NOT (old.mac IS NULL AND {_SAME})
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
DROP TRIGGER IF EXISTS checkpoints_no_update;
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
  WHEN NOT (old.mac IS NULL AND new.id IS old.id AND new.t IS old.t AND new.runs IS old.runs
    AND new.prev IS old.prev AND new.hash IS old.hash)
  BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
"""


def record_hash(prev: str, rid: int, r: AuditRecord) -> str:
    """SHA-256 over the previous hash, the record's id and every field, in a fixed encoding."""
    body = json.dumps([rid, *asdict(r).values()], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


def _checkpoint_hash(prev: str, t: float, runs: str) -> str:
    return hashlib.sha256(f"{prev}\n{t!r}\n{runs}".encode()).hexdigest()


JUNK_REASONS = frozenset({"malformed", "invalid_signature", "unknown_key"})
JUNK_WINDOW_RANGE_S = (0.0, MAX_JUNK_WINDOW_S)


def check_junk_window(s: float, where: str = "audit.junk_window_s") -> float:
    """The folding window for junk codes: 0 (off) to an hour."""
    lo, hi = JUNK_WINDOW_RANGE_S
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not lo <= s <= hi:
        raise ConfigError(
            f"key '{where}' = {s!r} must be seconds in [{lo:g}, {hi:g}]",
            "set it to 60 (the default), or 0 to record every code",
        )
    return float(s)


class JunkFolder:
    """Unreadable or invalid codes at one lane, folded into one record per window with a count.

    A flood of junk QR codes would otherwise cost an fsync'd record (and a published message)
    each. The first junk code opens a window; codes until it ends are only counted; the window's
    one record (reason `junk_codes`, the count by reason in `detail`) is written when it ends:
    at the next record or tick after it, or when the log closes.
    """

    def __init__(self, window_s: float):
        self.window_s = check_junk_window(window_s)
        self.start: float | None = None
        self.gate = ""
        self.counts: dict[str, int] = {}

    @staticmethod
    def is_junk(r: AuditRecord) -> bool:
        """A ticket denied because its code is not a ticket this lane could ever accept."""
        return r.kind == "decision" and r.via == "ticket" and r.reason in JUNK_REASONS

    def take(self, r: AuditRecord) -> bool:
        """Count a junk record in the open window (True: nothing to write now)."""
        if self.window_s <= 0 or not self.is_junk(r):
            return False
        if self.start is None:
            self.start, self.gate = float(r.t), r.gate
        self.counts[r.reason] = self.counts.get(r.reason, 0) + 1
        return True

    def folded(self, now: float, force: bool = False) -> AuditRecord | None:
        """The window's record once it has ended (or at once with `force`), then a new window."""
        if self.start is None or (not force and now < self.start + self.window_s):
            return None
        n = sum(self.counts.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        rec = AuditRecord(
            self.start, self.gate, "decision", "deny", "ticket", reason="junk_codes",
            detail=f"{n} unreadable or invalid codes in {self.window_s:g} s ({by})",
        )  # fmt: skip
        self.start, self.counts = None, {}
        return rec

    def flush_due(self, log: AuditLog, now: float, force: bool = False) -> None:
        """Write the window's record if it has ended."""
        rec = self.folded(now, force)
        if rec is not None:
            log.append(rec)


def check_retention(days: int, where: str = "audit.retention_days") -> int:
    """A retention shorter than MIN_RETENTION_DAYS is refused (0 would let purge erase all)."""
    if isinstance(days, bool) or not isinstance(days, int) or days < MIN_RETENTION_DAYS:
        raise ConfigError(
            f"key '{where}' = {days!r} is below the minimum of {MIN_RETENTION_DAYS} days",
            f"set it to at least {MIN_RETENTION_DAYS}",
        )
    return days


def _v2(c: sqlite3.Connection) -> None:
    """The hash chain. A log written before it (schema 1) is renamed, chained, then dropped."""
    have = tables(c)
    if "events" in have and "hash" not in columns(c, "events") and "events_v1" not in have:
        run_script(
            c,
            "DROP TRIGGER IF EXISTS events_no_update; DROP TRIGGER IF EXISTS events_retention;"
            "ALTER TABLE events RENAME TO events_v1; DROP INDEX IF EXISTS events_t;",
        )
    elif "events_v1" in have and "events" in have:  # an upgrade interrupted by older code
        c.execute("DROP TABLE events")
        if "chain" in have:
            c.execute("DELETE FROM chain")
    run_script(c, _SCHEMA)
    c.execute("INSERT OR IGNORE INTO chain VALUES (1, 0, ?)", (GENESIS,))
    if "events_v1" in tables(c):
        for row in c.execute(f"SELECT {_COLS} FROM events_v1 ORDER BY id").fetchall():
            _append(c, AuditRecord(*row))
        c.execute("DROP TABLE events_v1")


def _v3(c: sqlite3.Connection) -> None:
    """The keyed chain's columns, and the log's random id (binds the keyed chain to this file)."""
    run_script(c, _KEYED)
    c.execute("UPDATE chain SET log_id = ?", (uuid.uuid4().hex,))


MIGRATIONS = (Migration(2, _v2, "hash chain"), Migration(3, _v3, "keyed chain"))


def _too_new(found: int, newest: int) -> AuditError:
    return AuditError(
        f"audit log has schema {found}, newer than this edge-gate ({newest})", "upgrade edge-gate"
    )


def _append(c: sqlite3.Connection, r: AuditRecord) -> tuple[int, str]:
    """Chain one record to the plain head, inside the caller's transaction; (id, hash)."""
    r = replace(r, t=float(r.t), score=None if r.score is None else float(r.score))
    head_id, head = c.execute("SELECT head_id, head_hash FROM chain").fetchone()
    rid = head_id + 1
    h = record_hash(head, rid, r)
    c.execute(
        f"INSERT INTO events (id, {_COLS}, prev, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (rid, *asdict(r).values(), head, h),
    )
    c.execute("UPDATE chain SET head_id = ?, head_hash = ?", (rid, h))
    return rid, h


@dataclass(frozen=True)
class _Chain:
    """The chain row: plain head, the file's id, and how far the keyed chain reaches."""

    head_id: int
    head_hash: str
    log_id: str
    kid: str | None
    mac_from: int | None  # first record keyed (earlier ones: plain chain only)
    mac_cp_from: int | None  # first checkpoint keyed
    mac_id: int  # last record keyed
    mac_head: str | None


def _chain(c: sqlite3.Connection) -> _Chain:
    row = c.execute(
        "SELECT head_id, head_hash, log_id, kid, mac_from, mac_cp_from, mac_id, mac_head FROM chain"
    ).fetchone()
    return _Chain(row[0], row[1], row[2], row[3], row[4], row[5], row[6] or 0, row[7])


def _put_mark(c: sqlite3.Connection, mark: LedgerMark) -> None:
    """The ledger mark as given, lower or of another ledger (`set_ledger_mark` only raises)."""
    c.execute(
        "INSERT OR REPLACE INTO ledger_mark VALUES (1, ?, ?, ?)",
        (mark.ledger_id, mark.seq, mark.t),
    )


def _clock_sig(key: EvidenceKey, log_id: str, prev: str, t: float) -> str:
    """What a `clock_checked` record's subject must be: bound to its log and place in it."""
    return key.sign(CLOCK_CHECKED, log_id, prev, repr(float(t)))


def _cp_mac(key: EvidenceKey, prev_mac: str, cp_hash: str, macs: str) -> str:
    return key.sign("checkpoint", prev_mac, cp_hash, macs)


class AuditLog(Store):
    """The log file; use `with AuditLog(...) as log:` so the connection always closes.

    With `key` (the gate, `purge`, `ledger init`, `audit verify`) every record is keyed and the
    witness advanced; without it (`edge-gate sync`, tests) records are chained in plain only and
    a keyed writer keys them later.
    """

    error = AuditError
    what = "audit log"

    def __init__(
        self,
        path: str | Path,
        retention_days: int = 90,
        key: EvidenceKey | None = None,
        maintain: bool = True,
    ):
        path = Path(path)
        self.retention_days = check_retention(retention_days)
        self.key = key
        self.witness = Witness(key) if key is not None else None
        self.problem = ""  # a break found while running: logged once, shown by doctor/verify
        self.junk: JunkFolder | None = None
        # the newest time of a record appended through this connection (the writer's own
        # records, known without reading the log); 0.0: none yet
        self.newest_appended = 0.0
        # (records read, (id, time) of the newest signed clock_checked record) for newest_time
        self._checked_scan: tuple[int, tuple[int, float | None]] = (0, (0, None))
        make_private_dirs(path.parent)
        # records removed past retention (pseudonymous ids, ticket ids) leave no bytes behind
        self._connect(path, timeout_s=5.0, secure_delete=True)
        try:
            migrate(self.conn, MIGRATIONS, _too_new)
            kept = self.conn.execute("SELECT value FROM meta WHERE key = 'retention_s'").fetchone()
            if kept is None or kept[0] != self.retention_days * 86400.0:
                with self.transaction() as c:
                    c.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('retention_s', ?)",
                        (self.retention_days * 86400.0,),
                    )
            self._seen = -1
            if key is not None and maintain:  # `audit verify` reports what is unkeyed instead
                self.maintain()
        except (sqlite3.DatabaseError, EdgeGateError) as e:
            self.conn.close()
            if isinstance(e, KeyFileError):
                raise
            raise AuditError(
                f"audit log {self.path} is unreadable: {e}",
                "restore it from backup (it also holds the ledger's high-water mark)",
            ) from None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------------------

    def record(self, r: AuditRecord) -> int:
        """Append one record; junk codes are folded into one record per window (0 returned)."""
        if self.junk is not None:
            self.junk.flush_due(self, r.t)
            if self.junk.take(r):
                return 0
        return self.append(r)

    def append(self, r: AuditRecord) -> int:
        """Append one record chained to the current head (keyed, with a key); returns its id."""
        with self.transaction() as c:
            keyed = self._key_pending(c)
            rid, h = _append(c, r)
            if keyed is not None:
                mac = self.key.mac(keyed, h)  # type: ignore[union-attr]
                c.execute("UPDATE events SET mac = ? WHERE id = ?", (mac, rid))
                c.execute("UPDATE chain SET mac_id = ?, mac_head = ?", (rid, mac))
        self.newest_appended = max(self.newest_appended, r.t)
        self._witness()
        return rid

    def _key_pending(self, c: sqlite3.Connection) -> str | None:
        """Key the records written without the key (sync's), in order, after checking their
        plain links; returns the keyed head to chain onto, or None if nothing may be keyed."""
        if self.key is None or self.problem:
            return None
        ch = _chain(c)
        if ch.kid is None:  # the first keyed write: the keyed chain starts after any purged run
            purged = c.execute("SELECT runs FROM checkpoints").fetchall()
            last = max((run[1] for (runs,) in purged for run in json.loads(runs)), default=0)
            ncp = c.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
            ch = replace(ch, kid=self.key.kid, mac_from=last + 1, mac_cp_from=ncp + 1)
            ch = replace(ch, mac_id=last, mac_head=self.key.genesis(ch.log_id))
            c.execute(
                "UPDATE chain SET kid = ?, mac_from = ?, mac_cp_from = ?, mac_id = ?, mac_head = ?",
                (ch.kid, ch.mac_from, ch.mac_cp_from, ch.mac_id, ch.mac_head),
            )
        if ch.kid != self.key.kid:
            self._broken(
                f"the log is keyed with evidence key {ch.kid}, not {self.key.kid} "
                f"({self.key.path}): records are no longer keyed"
            )
            return None
        mac = ch.mac_head or self.key.genesis(ch.log_id)
        if ch.mac_id >= ch.head_id:
            return mac
        prev_row = c.execute("SELECT hash FROM events WHERE id = ?", (ch.mac_id,)).fetchone()
        prev = prev_row[0] if prev_row else None
        rows = c.execute(
            f"SELECT id, {_COLS}, prev, hash FROM events WHERE id > ? ORDER BY id", (ch.mac_id,)
        ).fetchall()
        expect = ch.mac_id + 1
        for rid, *fields, rprev, h in rows:
            rec = AuditRecord(*fields)
            if (
                rid != expect
                or (prev is not None and rprev != prev)
                or (record_hash(rprev, rid, rec) != h)
            ):
                self._broken(
                    f"record {rid}, written without the evidence key, was altered or removed "
                    "before the gate keyed it"
                )
                return None
            mac = self.key.mac(mac, h)
            c.execute("UPDATE events SET mac = ? WHERE id = ?", (mac, rid))
            prev, expect = h, rid + 1
        c.execute("UPDATE chain SET mac_id = ?, mac_head = ?", (expect - 1, mac))
        return mac

    def _broken(self, problem: str) -> None:
        if not self.problem:
            log.error("audit chain BROKEN %s; run `edge-gate audit verify`", problem)
        self.problem = problem

    def _witness(self) -> None:
        """After a keyed commit: the newest keyed head goes to the witness beside the key (not
        inside an outer transaction: the witness must never be ahead of a commit)."""
        if self.witness is None or self.problem or self.conn.in_transaction:
            return
        ch = _chain(self.conn)
        if ch.kid == self.key.kid and ch.mac_head and ch.mac_id:  # type: ignore[union-attr]
            try:
                self.witness.advance("audit", Mark(ch.log_id, ch.mac_id, ch.mac_head))
            except (OSError, WitnessError) as e:  # the record is committed; verify will say
                log.error("audit witness not written error=%s", e)

    def maintain(self, now: float | None = None) -> None:
        """Once a second from the gate: key what sync wrote, check the witness, flush folded
        junk. Cheap when nothing changed (one pragma)."""
        if self.junk is not None and now is not None:
            self.junk.flush_due(self, now)
        if self.key is None:
            return
        v = self.data_version()
        if v == self._seen or self.problem:
            return
        self._seen = v
        problem = self._check_witness()
        if problem:
            self._broken(problem)
            return
        ch = _chain(self.conn)
        if ch.kid is None or ch.mac_id < ch.head_id:
            with self.transaction() as c:
                self._key_pending(c)
            self._witness()

    def adopt(self, gate: str, now: float) -> str:
        """After a restored, cut-short or replaced log was found (and the old file kept as
        evidence): this log becomes the one the witness names, with a keyed record saying what
        was found, so the lane's new records are keyed again. Returns what was found."""
        if self.key is None or self.witness is None:
            raise AuditError(
                "adopting an audit log needs the evidence key",
                "run it as the gate's user (or root)",
            )
        why = self._check_witness() or "no break against the witness"
        self.problem = ""
        ch = _chain(self.conn)
        detail = f"{why}; this log {ch.log_id[:8]} adopted at record {ch.head_id + 1}"
        self.append(AuditRecord(now, gate, "system", reason="audit_adopted", detail=detail[:300]))
        ch = _chain(self.conn)
        if self.problem or ch.kid != self.key.kid:
            raise AuditError(f"audit log {self.path} cannot be keyed: {self.problem}")
        self.witness.advance("audit", Mark(ch.log_id, ch.mac_id, ch.mac_head or ""), replace=True)
        return why

    def purge(self, now: float | None = None) -> int:
        """Remove records past retention, keeping a keyed checkpoint of every removed run."""
        with self.transaction() as c:
            ch = _chain(c)
            if ch.kid is not None and self.key is None:
                raise AuditError(
                    f"audit log {self.path} is keyed: purging it needs the evidence key",
                    "run `edge-gate purge --config C` as the gate's service user (or root)",
                )
            self._key_pending(c)
            # The same clock and retention as the trigger, one second inside, so no DELETE aborts.
            sql_now, kept = c.execute(
                "SELECT CAST(strftime('%s','now') AS REAL), max(?, coalesce((SELECT value FROM "
                "meta WHERE key = 'retention_s'), 0))",
                (self.retention_days * 86400.0,),
            ).fetchone()
            cutoff = min(now if now is not None else time.time(), sql_now) - kept
            # the newest clock check stays: records dated ahead before it outlive it, and
            # without it they would refuse tickets again until their date
            keep = self._clock_checked()[0]
            rows = c.execute(
                "SELECT id, prev, hash, mac FROM events WHERE t < ? AND id != ? ORDER BY id",
                (cutoff - 1.0, keep),
            ).fetchall()
            if not rows:
                return 0
            runs: list[list] = []
            macs: list[list] = []
            for rid, prev, h, mac in rows:
                if runs and runs[-1][1] == rid - 1:
                    runs[-1][1], runs[-1][3] = rid, h
                    macs[-1][1] = mac
                else:
                    pm = c.execute("SELECT mac FROM events WHERE id = ?", (rid - 1,)).fetchone()
                    runs.append([rid, rid, prev, h])
                    macs.append([pm[0] if pm else None, mac])
            last = c.execute(
                "SELECT hash, mac FROM checkpoints ORDER BY id DESC LIMIT 1"
            ).fetchone()
            prev = last[0] if last else GENESIS
            t = float(sql_now)
            text = json.dumps(runs, separators=(",", ":"))
            cp_hash = _checkpoint_hash(prev, t, text)
            mac_text = mac = None
            ch = _chain(c)
            if self.key is not None and ch.kid == self.key.kid:
                for i, (first, *_rest) in enumerate(runs):  # a run from the first keyed record
                    if first == ch.mac_from:
                        macs[i][0] = self.key.genesis(ch.log_id)
                mac_text = json.dumps(macs, separators=(",", ":"))
                prev_mac = last[1] if last and last[1] else self.key.genesis(ch.log_id)
                mac = _cp_mac(self.key, prev_mac, cp_hash, mac_text)
            c.execute(
                "INSERT INTO checkpoints (t, runs, prev, hash, macs, mac) VALUES (?,?,?,?,?,?)",
                (t, text, prev, cp_hash, mac_text, mac),
            )
            ids = [r[0] for r in rows]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                c.execute(f"DELETE FROM events WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        self._witness()
        return len(ids)

    # --- the ledger's high-water mark (edge.tickets.ledger.MarkStore) -------------------------

    def ledger_mark(self) -> LedgerMark | None:
        """The newest ledger mark this gate stored, or None."""
        row = self.conn.execute("SELECT ledger_id, seq, t FROM ledger_mark").fetchone()
        return LedgerMark(row[0], int(row[1]), float(row[2])) if row else None

    def set_ledger_mark(self, mark: LedgerMark) -> None:
        """Store a newer mark; a mark never moves backwards here except by `replace_ledger_mark`."""
        with self.transaction() as c:
            c.execute(
                "INSERT INTO ledger_mark VALUES (1, ?, ?, ?) ON CONFLICT(k) DO UPDATE SET "
                "seq = max(seq, excluded.seq), t = max(t, excluded.t) "
                "WHERE ledger_id = excluded.ledger_id",
                (mark.ledger_id, mark.seq, mark.t),
            )

    def replace_ledger_mark(self, mark: LedgerMark, r: AuditRecord) -> None:
        """Adopt another ledger (after a loss), with the record that says so, in one transaction."""
        with self.transaction() as c:
            _put_mark(c, mark)
            self.record(r)

    def newest_time(self, kind: str | None = None) -> float | None:
        """The newest record time (of one kind): a clock behind it has stepped backwards.

        Of all kinds, counted from the last `clock_checked` record on (`edge-gate ledger
        clock-checked`) that the evidence key signed: records before it dated by a clock that
        ran ahead no longer count. Without the key no such record is honoured."""
        if kind is not None:
            q = "SELECT max(t) FROM events WHERE kind = ?"
            return self.conn.execute(q, (kind,)).fetchone()[0]
        since = self._clock_checked()[0]
        if since == 0:
            return self.conn.execute("SELECT max(t) FROM events").fetchone()[0]
        # by the time index, newest first: only the records dated ahead are passed over
        q = "SELECT t FROM events WHERE id >= ? ORDER BY t DESC LIMIT 1"
        row = self.conn.execute(q, (since,)).fetchone()
        return row[0] if row else None

    def clock_checked_time(self) -> float | None:
        """When the clock was last checked right (a signed `clock_checked` record), or None."""
        return self._clock_checked()[1]

    def _clock_checked(self) -> tuple[int, float | None]:
        """(id, time) of the newest `clock_checked` record the evidence key signed ((0, None):
        none); records read once each."""
        if self.key is None:
            return 0, None
        head = self.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        scanned, found = self._checked_scan
        if head < scanned:  # another file at this path (a restore): read it whole
            scanned, found = 0, (0, None)
        if head > scanned:
            log_id = _chain(self.conn).log_id or ""
            q = "SELECT id, t, prev, subject FROM events WHERE id > ? AND kind = ? ORDER BY id DESC"
            for rid, t, prev, sig in self.conn.execute(q, (scanned, CLOCK_CHECKED)).fetchall():
                if hmac.compare_digest(str(sig or ""), _clock_sig(self.key, log_id, prev, t)):
                    found = (rid, t)
                    break
            scanned = head
        self._checked_scan = (scanned, found)
        return found

    def record_clock_checked(self, mark: LedgerMark, r: AuditRecord) -> None:
        """The `clock_checked` record and the ledger mark it lowers, in one transaction. Its
        subject is the evidence key's signature over the log, the record it follows and its
        time: a record a writer without the key appended (or copied) lowers no floor."""
        if self.key is None:
            raise AuditError(
                "checking the clock needs the lane's evidence key",
                "run it as the gate's service user (sudo -u edge-gate) or root",
            )
        with self.transaction() as c:
            ch = _chain(c)
            _put_mark(c, mark)
            sig = _clock_sig(self.key, ch.log_id or "", ch.head_hash, r.t)
            self.append(replace(r, kind=CLOCK_CHECKED, subject=sig))

    def granted_since(self, via: str, subject: str, since: float) -> bool:
        """Whether a grant `via` for `subject` was recorded at or after `since` (an override
        already used here, even when the fleet state that spent its nonce was made anew)."""
        row = self.conn.execute(
            "SELECT 1 FROM events WHERE t >= ? AND kind = 'decision' AND decision = 'grant'"
            " AND via = ? AND subject = ? LIMIT 1",
            (since, via, subject),
        ).fetchone()
        return row is not None

    def head(self) -> ChainHead:
        """(records ever appended, hash of the newest): what the lane publishes, signed, so the
        office can tell a log that lost records or went back to an older copy."""
        n, h = self.conn.execute("SELECT head_id, head_hash FROM chain").fetchone()
        return ChainHead(n, h)

    def batch(self, after_id: int = 0, limit: int = 200) -> list[ChainedRecord]:
        """Records after `after_id`, oldest first, with their place in the chain (to publish)."""
        rows = self.conn.execute(
            f"SELECT id, {_COLS}, prev, hash FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, max(0, limit)),
        ).fetchall()
        return [ChainedRecord(r[0], AuditRecord(*r[1:-2]), r[-2], r[-1]) for r in rows]

    # --- reading -----------------------------------------------------------------------------

    def records(self, kind: str | None = None, since: float | None = None) -> list[AuditRecord]:
        """Records in order, optionally of one kind and from a time on."""
        return [r for _, r, _ in self.rows(kind, since)]

    def rows(
        self, kind: str | None = None, since: float | None = None
    ) -> Iterator[tuple[int, AuditRecord, str]]:
        """(id, record, hash) in order, optionally of one kind and from a time on."""
        where, args = [], []
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if since is not None:
            where.append("t >= ?")
            args.append(since)
        q = f"SELECT id, {_COLS}, hash FROM events"
        q += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        for row in self.conn.execute(q, args):
            yield row[0], AuditRecord(*row[1:-1]), row[-1]

    def page(
        self, before_id: int | None = None, limit: int = 100, kind: str | None = None
    ) -> list[tuple[int, AuditRecord, str]]:
        """Newest first: up to `limit` (id, record, hash) below `before_id` (console pages)."""
        where, args = ["id < ?"], [before_id if before_id is not None else 2**62]
        if kind:
            where.append("kind = ?")
            args.append(kind)
        q = f"SELECT id, {_COLS}, hash FROM events WHERE {' AND '.join(where)}"
        rows = self.conn.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [(r[0], AuditRecord(*r[1:-1]), r[-1]) for r in rows]

    def verify(self) -> ChainReport:
        """Walk records and checkpoints from the start; report the first break.

        The plain chain always; with the key, also the keyed chain and the witness. A log that
        was keyed is reported broken when verified without its key."""
        # (first id, last id, prev hash, hash, record or None for a purged run, MAC, run MACs)
        segs: list[tuple] = []
        for rid, prev, h, mac, *fields in self.conn.execute(
            f"SELECT id, prev, hash, mac, {_COLS} FROM events ORDER BY id"
        ):
            segs.append((rid, rid, prev, h, AuditRecord(*fields), mac, None))
        removed, cp_prev = 0, GENESIS
        ch = _chain(self.conn)
        keyed = self.key is not None and ch.kid is not None
        cp_mac = self.key.genesis(ch.log_id) if keyed else ""  # type: ignore[union-attr]
        for cid, t, runs, prev, h, macs, mac in self.conn.execute(
            "SELECT id, t, runs, prev, hash, macs, mac FROM checkpoints ORDER BY id"
        ):
            if prev != cp_prev or _checkpoint_hash(prev, t, runs) != h:
                return self._report(False, 0, removed, f"checkpoint {cid} was altered")
            cp_prev = h
            run_macs: list = [[None, None]] * len(json.loads(runs))
            if keyed and cid >= (ch.mac_cp_from or 1):
                if mac is None or macs is None or mac != _cp_mac(self.key, cp_mac, h, macs):  # type: ignore[arg-type]
                    return self._report(
                        False, 0, removed,
                        f"checkpoint {cid} was forged or altered (its MAC does not match: "
                        "written without the evidence key)",
                    )  # fmt: skip
                cp_mac, run_macs = mac, json.loads(macs)
            for (first, last, fprev, lhash), rm in zip(json.loads(runs), run_macs, strict=False):
                segs.append((first, last, fprev, lhash, None, None, rm))
                removed += last - first + 1
        segs.sort(key=lambda s: s[0])
        at, head = 0, GENESIS
        n = sum(1 for s in segs if s[4] is not None)
        for first, last, prev, h, rec, _mac, _rm in segs:
            what = f"record {first}" if rec else f"removed records {first}..{last}"
            if first != at + 1:
                gap = f"records {at + 1}..{first - 1}" if first > at + 1 else f"record {first}"
                return self._report(False, n, removed, f"{gap} missing or duplicated")
            if prev != head:
                return self._report(False, n, removed, f"{what}: chain broken before it")
            if rec is not None and record_hash(prev, first, rec) != h:
                return self._report(False, n, removed, f"{what} was altered")
            at, head = last, h
        if (at, head) != (ch.head_id, ch.head_hash):
            return self._report(
                False, n, removed, f"records after {at} removed (head was {ch.head_id})"
            )
        if ch.kid is not None and self.key is None:
            return self._report(
                False, n, removed,
                f"the log is keyed (evidence key {ch.kid}) and no evidence key was given: "
                "records may have been rewritten",
            )  # fmt: skip
        if ch.kid is not None and ch.kid != self.key.kid:  # type: ignore[union-attr]
            return self._report(
                False, n, removed,
                f"the log is keyed with evidence key {ch.kid}, not {self.key.kid}",  # type: ignore[union-attr]
            )  # fmt: skip
        if keyed:
            problem = self._verify_keyed(segs, ch) or self._check_witness()
            if problem:
                return self._report(False, n, removed, problem, keyed=True)
        elif self.key is not None:
            problem = self._check_witness()
            if problem:
                return self._report(False, n, removed, problem, keyed=True)
        note = ""
        if ch.mac_id < ch.head_id and ch.kid is not None:
            note = (
                f"records {ch.mac_id + 1}..{ch.head_id} are not keyed yet (written without "
                "the evidence key: by edge-gate sync, or a command run by a user who cannot read "
                "the key; the gate keys them within a second while it runs)"
            )
        elif ch.kid is None and ch.head_id:
            note = "the log is not keyed yet (no evidence key has written to it)"
        return self._report(True, n, removed, keyed=keyed, note=note)

    def _verify_keyed(self, segs: list, ch: _Chain) -> str:
        """The HMAC chain from the first keyed record to the keyed head: '' or the break."""
        key = self.key
        assert key is not None
        mac = key.genesis(ch.log_id)
        start = ch.mac_from or 1
        for first, last, _prev, h, rec, rmac, rm in segs:
            if last < start or first > ch.mac_id:
                if rec is not None and first > ch.mac_id and rmac is not None:
                    return f"record {first} carries a MAC past the keyed head {ch.mac_id}"
                continue
            if rec is not None:
                if rmac is None:
                    return f"record {first} lost its MAC (the log was edited with SQLite tools)"
                if rmac != key.mac(mac, h):
                    return (
                        f"record {first} was rewritten: its MAC does not match (changed, or its "
                        "chain recomputed, without the evidence key)"
                    )
                mac = rmac
            else:
                pm, lm = rm
                if pm != mac or lm is None:
                    return f"removed records {first}..{last}: the checkpoint's MACs do not chain"
                mac = lm
        if ch.mac_head != mac:
            return f"the keyed head does not match record {ch.mac_id} (the chain row was edited)"
        return ""

    def _mac_at(self, n: int) -> str | None:
        """The MAC of record n, from the record or the end of a purged run; None if unknown."""
        row = self.conn.execute("SELECT mac FROM events WHERE id = ?", (n,)).fetchone()
        if row is not None:
            return row[0]
        for runs, macs in self.conn.execute("SELECT runs, macs FROM checkpoints"):
            for (_first, last, *_), rm in zip(
                json.loads(runs), json.loads(macs or "[]"), strict=False
            ):
                if last == n:
                    return rm[1]
        return None

    def _check_witness(self) -> str:
        """'' if this file is at least as new as the head the lane last keyed, else why not."""
        if self.witness is None:
            return ""
        try:
            m = self.witness.get("audit")
        except WitnessError as e:
            return str(e)
        ch = _chain(self.conn)
        if m is None:  # a log this key keyed was witnessed: a witness that names none lost it
            if ch.kid == self.witness.key.kid and ch.mac_id > 0:
                return (
                    f"the lane's evidence witness {self.witness.path} names no audit log, yet "
                    f"this one holds {ch.mac_id} records keyed with its key: the witness was "
                    "deleted or emptied, so the log cannot be checked for going back"
                )
            return ""
        if m.id != ch.log_id:
            return (
                f"this is not the audit log this lane last wrote (log {ch.log_id[:8]}; the "
                f"lane's evidence witness names log {m.id[:8]} with {m.n} records): it was "
                "replaced or deleted"
            )
        if (ch.kid is None and m.n) or ch.mac_id < m.n:
            return (
                f"the log went back: the lane had keyed {m.n} records, this file holds "
                f"{ch.mac_id if ch.kid else 0} keyed: an older copy was restored, or records "
                "were cut off the end"
            )
        at = self._mac_at(m.n) if m.n else None
        if at is not None and at != m.mac:
            return (
                f"record {m.n} is not the one the lane wrote (evidence witness): the log was "
                "rewritten"
            )
        return ""

    def _report(
        self, ok: bool, n: int, removed: int, problem: str = "", keyed: bool = False, note: str = ""
    ) -> ChainReport:
        head_id, head_hash = self.conn.execute("SELECT head_id, head_hash FROM chain").fetchone()
        return ChainReport(ok, n, removed, head_id, head_hash, problem, keyed, note)

    def close(self) -> None:
        """Write a pending junk window's record, then close (idempotent)."""
        if self.junk is not None:
            try:
                self.junk.flush_due(self, time.time(), force=True)
            except EdgeGateError as e:
                log.error("audit junk record not written error=%s", e)
            self.junk = None
        super().close()

    def summary(self) -> dict:
        """Counts for the privacy report and `doctor`."""
        q = self.conn.execute
        return {
            "records": q("SELECT count(*) FROM events").fetchone()[0],
            "oldest": q("SELECT min(t) FROM events").fetchone()[0],
            "by_kind": dict(q("SELECT kind, count(*) FROM events GROUP BY kind")),
            "retention_days": self.retention_days,
        }


def purge_with_gallery(
    log: AuditLog, gallery, now: float, after_days: int, gate: str, note: str = ""
):
    """Purge expired passes and old audit records with the record of both, as one transaction.
    `note` ends the record's detail (the boot the purge ran in, for the next one's clock check).

    The gallery's delete commits inside the audit log's open write transaction (its lock held,
    so nothing else writes in between); the record is appended and committed right after. If
    the gallery fails, nothing is removed from either. Returns (people removed, records removed).
    """
    gone: list[str] | None = None
    try:
        with log.transaction():
            aged = log.purge(now)
            gone = gallery.purge_expired(now, after_days, scrub=False)  # caller scrubs after
            log.record(
                AuditRecord(
                    now,
                    gate,
                    "purge",
                    reason=RETENTION,
                    detail=f"{len(gone)} people expired > {after_days} days; "
                    f"{aged} audit records past retention" + (f"; {note}" if note else ""),
                )
            )
    except (sqlite3.Error, EdgeGateError) as e:
        if gone is None:
            kind = type(e) if isinstance(e, EdgeGateError) else AuditError
            raise kind(f"purge failed, nothing removed: {e}") from None
        raise AuditError(
            f"{len(gone)} people were purged from the gallery but the audit log could not "
            f"record it: {e}",
            "free disk space on the audit log's volume and record the purge by hand",
        ) from None
    return gone, aged


def verify_published(
    rows: Iterable[ChainedRecord], head: ChainHead | None = None, start: str | None = GENESIS
) -> str:
    """The office's check of the records a lane published, without any key: each record's hash
    is its content's, each links to the one before (ids without gaps), and the lane's signed
    head names one of them with that hash. `start` is the hash the first record must follow
    (None: the office holds the lane's records from the middle on). '' or the first break."""
    prev_id, prev_hash, hashes = None, start, {}
    for r in sorted(rows, key=lambda r: r.id):
        if prev_id is not None and r.id != prev_id + 1:
            return f"records {prev_id + 1}..{r.id - 1} missing"
        if prev_hash is not None and r.prev != prev_hash:
            return f"record {r.id}: chain broken before it"
        if record_hash(r.prev, r.id, r.record) != r.hash:
            return f"record {r.id} was altered"
        prev_id, prev_hash, hashes[r.id] = r.id, r.hash, r.hash
    if head is not None and head.count in hashes and hashes[head.count] != head.head:
        return f"the lane's signed head names record {head.count} with another hash: rewritten"
    if head is not None and prev_id is not None and head.count < prev_id:
        return f"the lane's signed head ({head.count}) is behind its records ({prev_id})"
    return ""


def open_audit(cfg, key: str = "create", fold_junk: bool = False) -> AuditLog:
    """The audit log a config names, with the lane's evidence key (`audit.evidence_key`; `key`
    is an `edge.evidence.lane_key` mode); the gate folds junk codes (`audit.junk_window_s`)."""
    ek = lane_key(key_path(cfg), key)
    log_ = AuditLog(cfg.resolve(cfg.audit.path), cfg.audit.retention_days, ek)
    if fold_junk:
        log_.junk = JunkFolder(cfg.audit.junk_window_s)
    return log_


MAX_REASON = 200  # characters of a typed reason (an override, a deletion) the log keeps


# Unicode's bidirectional controls: they reorder how the text around them is shown
BIDI = frozenset(
    "\u061c\u200e\u200f"
    + "".join(map(chr, range(0x202A, 0x202F)))
    + "".join(map(chr, range(0x2066, 0x206A)))
)


def check_reason(text: str, what: str = "the reason") -> str:
    """A typed reason as the log keeps it (runs of whitespace as one space). Empty or longer
    than MAX_REASON is a ReasonError: what an auditor reads is what was typed, never cut."""
    why = " ".join(text.split())
    if not why:
        raise ReasonError(f"{what} is empty", "type why, in a few words")
    hidden = next((c for c in why if unicodedata.category(c) == "Cc" or c in BIDI), None)
    if hidden is not None:  # a NUL, or a right-to-left override that reorders what is read
        raise ReasonError(
            f"{what} holds the control character U+{ord(hidden):04X}",
            "type the reason as plain text",
        )
    if len(why) > MAX_REASON:
        raise ReasonError(
            f"{what} is {len(why):,} characters long, more than {MAX_REASON}",
            "say why in a sentence; keep longer notes in the site's own records",
        )
    return why
