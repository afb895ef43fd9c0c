"""Following a SQLite file the console keeps open (the staff accounts, the office audit log, the
office's fleet store) when it is deleted or replaced underneath: its identity is compared at each
use, as the gate does (`edge.gate.faces.file_id`), and the old connection let go safely."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Protocol

from edge.gate.faces import file_id

__all__ = ["file_id", "let_go"]


class _Open(Protocol):
    conn: sqlite3.Connection

    def close(self) -> None: ...


def let_go(store: _Open | sqlite3.Connection) -> None:
    """Close a connection to a file deleted or replaced underneath, its write-ahead log first
    emptied into the old file: SQLite leaves the log of a moved file at the path, where the
    file now there would take its pages for its own. Never raises (the file may be gone)."""
    conn = store if isinstance(store, sqlite3.Connection) else store.conn
    with contextlib.suppress(Exception):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with contextlib.suppress(Exception):
        store.close()
