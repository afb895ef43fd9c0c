"""Making deletions real on disk: checkpoint the WAL, VACUUM, and say so when it cannot be done.

In WAL mode a deleted row's old page stays in the main file until a checkpoint writes the new
page back, and a checkpoint cannot pass a reader holding an older snapshot. So erasure is retried,
and when another connection still pins old pages it fails loudly, naming what is still on disk.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from edge.errors import GalleryError

log = logging.getLogger(__name__)

ATTEMPTS = 6  # checkpoint tries before giving up
WAIT_S = 0.25  # busy wait per try, doubled each time (about 16 s in all)


class ErasureIncomplete(GalleryError):
    """Rows were deleted but their old bytes are still in the gallery files on disk."""


def _checkpoint(conn: sqlite3.Connection, attempts: int, wait_s: float) -> bool:
    """wal_checkpoint(TRUNCATE) until it completes; False if readers kept it busy throughout."""
    for i in range(attempts):
        conn.execute(f"PRAGMA busy_timeout={int(wait_s * (2**i) * 1000)}")
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return True
        log.warning("gallery checkpoint busy attempt=%d of %d", i + 1, attempts)
    return False


def scrub_file(
    conn: sqlite3.Connection,
    path: Path,
    busy_timeout_s: float,
    attempts: int | None = None,
    wait_s: float | None = None,
) -> None:
    """Checkpoint, VACUUM, checkpoint; then clear the pending-erasure mark.

    `conn` is the gallery's connection to the file at `path`; its busy timeout goes back to
    `busy_timeout_s` afterwards. Raises ErasureIncomplete, leaving the mark set, when another
    connection keeps old pages.
    """
    attempts, wait_s = attempts or ATTEMPTS, wait_s or WAIT_S
    try:
        done = _checkpoint(conn, attempts, wait_s)
        if done:
            conn.execute("VACUUM")  # freed pages (already zeroed by secure_delete) leave the file
            conn.execute("DELETE FROM gallery_state WHERE key = 'pending_erasure'")
            done = _checkpoint(conn, attempts, wait_s)
            if not done:
                conn.execute(
                    "INSERT OR REPLACE INTO gallery_state (key, value)"
                    " VALUES ('pending_erasure', 1)"
                )
    except sqlite3.OperationalError as e:
        done = False
        log.warning("gallery scrub failed reason=%s", e)
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    if not done:
        wal = path.with_name(path.name + "-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        raise ErasureIncomplete(
            f"deleted from gallery {path}, but NOT yet erased from disk: another process holds"
            f" a read transaction, so the old pages (sealed values and the wrapped person key)"
            f" are still in {path.name} and {wal.name} ({wal_bytes} bytes)",
            "stop or restart the process reading the gallery, then run `edge-gate purge`"
            " (it finishes pending erasures)",
        )
