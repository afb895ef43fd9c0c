"""Append-only audit log of decisions and privacy events. Never an image, a template or a name.

SQLite triggers refuse UPDATE and refuse DELETE of any record younger than the retention period,
so the log cannot be edited from the gate; `purge` removes only what retention allows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.errors import GalleryError


@dataclass(frozen=True)
class AuditRecord:
    t: float
    gate: str
    kind: str  # decision | deletion | purge | enroll | door | system
    decision: str = ""  # grant | deny
    via: str = ""  # face | ticket | exit_button
    subject: str = ""  # pseudonymous person id or ticket id; empty for privacy events
    score: float | None = None
    reason: str = ""
    detail: str = ""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY, t REAL NOT NULL, gate TEXT, kind TEXT NOT NULL, decision TEXT, via TEXT,
  subject TEXT, score REAL, reason TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS events_t ON events(t);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_retention BEFORE DELETE ON events
  WHEN old.t >= CAST(strftime('%s','now') AS REAL) - (SELECT value FROM meta WHERE key = 'retention_s')
  BEGIN SELECT RAISE(ABORT, 'audit record is inside its retention period'); END;
"""


class AuditLog:
    def __init__(self, path: str | Path, retention_days: int = 90):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(
                str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(_SCHEMA)
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('retention_s', ?)",
                (retention_days * 86400.0,),
            )
        except sqlite3.DatabaseError as e:
            raise GalleryError(
                f"audit log {self.path} is unreadable: {e}", "move it aside; a new one is created"
            ) from None
        self.retention_days = retention_days

    def record(self, r: AuditRecord) -> None:
        self.conn.execute(
            "INSERT INTO events (t, gate, kind, decision, via, subject, score, reason, detail) VALUES (?,?,?,?,?,?,?,?,?)",
            (r.t, r.gate, r.kind, r.decision, r.via, r.subject, r.score, r.reason, r.detail),
        )

    def purge(self, now: float | None = None) -> int:
        cutoff = (now or time.time()) - self.retention_days * 86400
        return self.conn.execute("DELETE FROM events WHERE t < ?", (cutoff,)).rowcount

    def records(self, kind: str | None = None) -> list[AuditRecord]:
        q = "SELECT t, gate, kind, decision, via, subject, score, reason, detail FROM events"
        rows = self.conn.execute(
            q + (" WHERE kind = ?" if kind else "") + " ORDER BY id", (kind,) if kind else ()
        )
        return [AuditRecord(*r) for r in rows]

    def summary(self) -> dict:
        q = self.conn.execute
        return {
            "records": q("SELECT count(*) FROM events").fetchone()[0],
            "oldest": q("SELECT min(t) FROM events").fetchone()[0],
            "by_kind": dict(q("SELECT kind, count(*) FROM events GROUP BY kind")),
            "retention_days": self.retention_days,
        }

    def close(self) -> None:
        self.conn.close()


def to_json(r: AuditRecord) -> str:
    return json.dumps({k: v for k, v in asdict(r).items() if v not in ("", None)})
