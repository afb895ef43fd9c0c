"""Append-only, hash-chained audit log of decisions and privacy events. Never an image or a name.

Each record carries the hash of the one before it, so an edit made with SQLite tools (even after
dropping the triggers) or a record removed from the middle breaks the chain, and `edge-gate audit
verify` names the first broken record. `purge` removes only records past retention (never less
than MIN_RETENTION_DAYS) and keeps a hashed checkpoint of every run of records it removed, so the
chain still verifies across the gap. The chain is hashed, not signed: an attacker who rewrites
every later hash is caught only by comparing the head hash with one exported earlier.

The log also keeps the redemption ledger's high-water mark (`ledger.MarkStore`), so a ledger that
went back in time is refused at start.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edge.errors import ConfigError, GalleryError
from edge.tickets.ledger import LedgerMark

SCHEMA_VERSION = 2
MIN_RETENTION_DAYS = 7  # below this, a misconfiguration or an intruder could erase the evidence
GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    """One event; subject is a pseudonymous person id or a ticket id, never a name."""

    t: float
    gate: str
    kind: str  # decision | deletion | purge | enroll | door | system | ledger
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


_COLS = "t, gate, kind, decision, via, subject, score, reason, detail"
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
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_retention BEFORE DELETE ON events
  WHEN old.t >= CAST(strftime('%s','now') AS REAL) - max({MIN_RETENTION_DAYS * 86400.0},
    coalesce((SELECT value FROM meta WHERE key = 'retention_s'), 0))
  BEGIN SELECT RAISE(ABORT, 'audit record is inside its retention period'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
  BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
  BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
"""


def record_hash(prev: str, rid: int, r: AuditRecord) -> str:
    """SHA-256 over the previous hash, the record's id and every field, in a fixed encoding."""
    body = json.dumps([rid, *asdict(r).values()], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


def _checkpoint_hash(prev: str, t: float, runs: str) -> str:
    return hashlib.sha256(f"{prev}\n{t!r}\n{runs}".encode()).hexdigest()


def check_retention(days: int, where: str = "audit.retention_days") -> int:
    """A retention shorter than MIN_RETENTION_DAYS is refused (0 would let purge erase all)."""
    if isinstance(days, bool) or not isinstance(days, int) or days < MIN_RETENTION_DAYS:
        raise ConfigError(
            f"key '{where}' = {days!r} is below the minimum of {MIN_RETENTION_DAYS} days",
            f"set it to at least {MIN_RETENTION_DAYS}",
        )
    return days


class AuditLog:
    """The log file; use `with AuditLog(...) as log:` so the connection always closes."""

    def __init__(self, path: str | Path, retention_days: int = 90):
        self.path = Path(path)
        self.retention_days = check_retention(retention_days)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self.conn = sqlite3.connect(
                str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            old = self._legacy_rows()
            self.conn.executescript(_SCHEMA)
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('retention_s', ?)",
                (self.retention_days * 86400.0,),
            )
            self.conn.execute("INSERT OR IGNORE INTO chain VALUES (1, 0, ?)", (GENESIS,))
            self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if old is not None:
                self._rechain(old)
        except sqlite3.DatabaseError as e:
            raise GalleryError(
                f"audit log {self.path} is unreadable: {e}",
                "restore it from backup (it also holds the ledger's high-water mark)",
            ) from None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction on the log: all inside commits together or not at all."""
        with self._lock:
            if self.conn.in_transaction:  # nested: the outer transaction commits
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def record(self, r: AuditRecord) -> int:
        """Append one record chained to the current head; returns its id."""
        r = replace(r, t=float(r.t), score=None if r.score is None else float(r.score))
        with self.transaction() as c:
            head_id, head = c.execute("SELECT head_id, head_hash FROM chain").fetchone()
            rid = head_id + 1
            h = record_hash(head, rid, r)
            c.execute(
                f"INSERT INTO events (id, {_COLS}, prev, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (rid, *asdict(r).values(), head, h),
            )
            c.execute("UPDATE chain SET head_id = ?, head_hash = ?", (rid, h))
            return rid

    def purge(self, now: float | None = None) -> int:
        """Remove records past retention, keeping a hashed checkpoint of every removed run."""
        with self.transaction() as c:
            # The same clock and retention as the trigger, one second inside, so no DELETE aborts.
            sql_now, kept = c.execute(
                "SELECT CAST(strftime('%s','now') AS REAL), max(?, coalesce((SELECT value FROM "
                "meta WHERE key = 'retention_s'), 0))",
                (self.retention_days * 86400.0,),
            ).fetchone()
            cutoff = min(now if now is not None else time.time(), sql_now) - kept
            rows = c.execute(
                "SELECT id, prev, hash FROM events WHERE t < ? ORDER BY id", (cutoff - 1.0,)
            ).fetchall()
            if not rows:
                return 0
            runs: list[list] = []
            for rid, prev, h in rows:
                if runs and runs[-1][1] == rid - 1:
                    runs[-1][1], runs[-1][3] = rid, h
                else:
                    runs.append([rid, rid, prev, h])
            last = c.execute("SELECT hash FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
            prev = last[0] if last else GENESIS
            t = float(sql_now)
            text = json.dumps(runs, separators=(",", ":"))
            c.execute(
                "INSERT INTO checkpoints (t, runs, prev, hash) VALUES (?,?,?,?)",
                (t, text, prev, _checkpoint_hash(prev, t, text)),
            )
            ids = [r[0] for r in rows]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                c.execute(f"DELETE FROM events WHERE id IN ({','.join('?' * len(chunk))})", chunk)
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
            c.execute(
                "INSERT OR REPLACE INTO ledger_mark VALUES (1, ?, ?, ?)",
                (mark.ledger_id, mark.seq, mark.t),
            )
            self.record(r)

    def newest_time(self) -> float | None:
        """The newest record time: a clock behind it has stepped backwards."""
        return self.conn.execute("SELECT max(t) FROM events").fetchone()[0]

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
        """Walk records and checkpoints from the start; report the first break."""
        segs = []
        for rid, prev, h, *fields in self.conn.execute(
            f"SELECT id, prev, hash, {_COLS} FROM events ORDER BY id"
        ):
            segs.append((rid, rid, prev, h, AuditRecord(*fields)))
        removed, cp_prev = 0, GENESIS
        for cid, t, runs, prev, h in self.conn.execute(
            "SELECT id, t, runs, prev, hash FROM checkpoints ORDER BY id"
        ):
            if prev != cp_prev or _checkpoint_hash(prev, t, runs) != h:
                return self._report(False, 0, removed, f"checkpoint {cid} was altered")
            cp_prev = h
            for first, last, fprev, lhash in json.loads(runs):
                segs.append((first, last, fprev, lhash, None))
                removed += last - first + 1
        segs.sort(key=lambda s: s[0])
        at, head = 0, GENESIS
        n = sum(1 for s in segs if s[4] is not None)
        for first, last, prev, h, rec in segs:
            what = f"record {first}" if rec else f"removed records {first}..{last}"
            if first != at + 1:
                gap = f"records {at + 1}..{first - 1}" if first > at + 1 else f"record {first}"
                return self._report(False, n, removed, f"{gap} missing or duplicated")
            if prev != head:
                return self._report(False, n, removed, f"{what}: chain broken before it")
            if rec is not None and record_hash(prev, first, rec) != h:
                return self._report(False, n, removed, f"{what} was altered")
            at, head = last, h
        head_id, head_hash = self.conn.execute("SELECT head_id, head_hash FROM chain").fetchone()
        if (at, head) != (head_id, head_hash):
            return self._report(
                False, n, removed, f"records after {at} removed (head was {head_id})"
            )
        return self._report(True, n, removed)

    def _report(self, ok: bool, n: int, removed: int, problem: str = "") -> ChainReport:
        head_id, head_hash = self.conn.execute("SELECT head_id, head_hash FROM chain").fetchone()
        return ChainReport(ok, n, removed, head_id, head_hash, problem)

    def summary(self) -> dict:
        """Counts for the privacy report and `doctor`."""
        q = self.conn.execute
        return {
            "records": q("SELECT count(*) FROM events").fetchone()[0],
            "oldest": q("SELECT min(t) FROM events").fetchone()[0],
            "by_kind": dict(q("SELECT kind, count(*) FROM events GROUP BY kind")),
            "retention_days": self.retention_days,
        }

    # --- upgrade -----------------------------------------------------------------------------

    def _legacy_rows(self) -> list[tuple] | None:
        """Rows of a log written before the hash chain (schema 1), or None.

        The old table is renamed first and dropped only once its rows are chained, so an upgrade
        interrupted half-way resumes at the next open.
        """
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master")}
        cols = [r[1] for r in self.conn.execute("PRAGMA table_info(events)")]
        if "events_v1" not in tables:
            if not cols or "hash" in cols:
                return None
            self.conn.executescript(
                "DROP TRIGGER IF EXISTS events_no_update; DROP TRIGGER IF EXISTS events_retention;"
                "ALTER TABLE events RENAME TO events_v1; DROP INDEX IF EXISTS events_t;"
            )
        elif cols:  # interrupted: start the chain again from the old rows
            self.conn.execute("DROP TABLE events")
            if "chain" in tables:
                self.conn.execute("DELETE FROM chain")
        return self.conn.execute(f"SELECT {_COLS} FROM events_v1 ORDER BY id").fetchall()

    def _rechain(self, rows: list[tuple]) -> None:
        """Chain the records of a schema-1 log, in order, then drop the old table."""
        with self.transaction() as c:
            for row in rows:
                self.record(AuditRecord(*row))
            c.execute("DROP TABLE events_v1")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def purge_with_gallery(log: AuditLog, gallery, now: float, after_days: int, gate: str):
    """Purge expired passes and old audit records with the record of both, as one transaction.

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
                    reason="retention",
                    detail=f"{len(gone)} people expired > {after_days} days; "
                    f"{aged} audit records past retention",
                )
            )
    except sqlite3.Error as e:
        if gone is None:
            raise GalleryError(f"purge failed, nothing removed: {e}") from None
        raise GalleryError(
            f"{len(gone)} people were purged from the gallery but the audit log could not "
            f"record it: {e}",
            "free disk space on the audit log's volume and record the purge by hand",
        ) from None
    return gone, aged


def to_json(r: AuditRecord) -> str:
    """One record as compact JSON without empty fields."""
    return json.dumps({k: v for k, v in asdict(r).items() if v not in ("", None)})
