"""Following a SQLite file the console keeps open (the staff accounts, the office audit log, the
office's fleet store) when it is deleted, replaced or written over in place underneath: its
stamp is compared at each use, and the old connection let go as every follower does
(`edge.db.let_go`)."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from edge.db import file_id, let_go

__all__ = ["Followed", "Stamp", "file_id", "let_go", "stamp"]

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int, int]


def stamp(path: Path) -> Stamp | None:
    """(device, inode, size, modification time) of a SQLite file, None when there is none: a
    file replaced changes its inode, one written over in place (`cp` onto it) its size or time,
    which SQLite's data_version does not see. Commits go to its write-ahead log, not here."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class Followed:
    """The stamp of the file at `path` as the console opened it (and as its own checkpoints
    left it). The caller serialises the use of one Followed with its connection."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.seen: Stamp | None = None

    def opened(self, before: Stamp | None) -> None:
        """The file was opened; `before` is its stamp read before it was opened (a file replaced
        in between is followed at the next use), None when there was none (made by the open)."""
        self.seen = before if before is not None else stamp(self.path)

    def changed(self, now: Stamp | None) -> str:
        """How the file at `path`, stamped `now`, is no longer the one opened ("" when it still
        is)."""
        if now == self.seen:
            return ""
        if now is not None and self.seen is not None and now[:2] == self.seen[:2]:
            return "overwritten in place"
        return "deleted or replaced"

    def backfill(self, conn: sqlite3.Connection) -> None:
        """After a use: what the write-ahead log holds is copied into the file (a passive
        checkpoint, waiting for nobody), so a file written over in place is read as written
        (pages still in the log would be read, and copied back over it, in its place); the
        file's new stamp is then the console's own doing. A read-only connection cannot: its
        file changes stamp at the writer's checkpoints too, and is read again then.

        The file as it was before the checkpoint decides: still the one seen, its stamp after is
        the console's own doing (the log's frame counts cannot tell: two commits of one size
        leave the same counts, and a change was taken for a restore written over it); already
        another, it is left for the next use to see."""
        before = stamp(self.path)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as e:  # locked, damaged: the next use says so, with its fix
            log.info("console checkpoint_skipped path=%s error=%s", self.path, e)
            return
        if before is None or before != self.seen:
            return
        now = stamp(self.path)
        if now is not None and now[:2] == before[:2]:
            self.seen = now
