"""One storage layer: how every edge-gate SQLite file is opened, written and upgraded.

Each store (gallery, redemption ledger, audit log, fleet state) is a `Store`: it owns its
tables, writes only inside `transaction()` (BEGIN IMMEDIATE, so the write lock is taken before
the first read and two processes are serialised by SQLite, not by luck), upgrades itself with
`migrate()` steps keyed by `PRAGMA user_version`, and turns any SQLite failure into its own
error type carrying the operator's fix. No other module writes another store's tables.

The project's pragmas: WAL (readers never block the gate's writes), synchronous=FULL (a
committed entry survives a power cut: the commit is the grant), a busy timeout instead of
"database is locked" at the first contention. The gallery, the audit log and the fleet state
add secure_delete (deleted rows are overwritten: a template, a name, an expired record does not
stay readable in a freed page); the gallery adds foreign keys.

A file deleted or replaced under a running process (a restore) shares the names of its
write-ahead log and index with the file now at the path: every connection lets go of it the
same way (`let_go`, also at every close), so the file at the path never takes the old one's
pages.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from edge.errors import EdgeGateError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0

FileId = tuple[int, int]


def file_id(path: str | Path) -> FileId | None:
    """(device, inode) of a file, None when there is none (or it cannot be looked at)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Connection(sqlite3.Connection):
    """A connection that lets go safely of a file deleted or replaced underneath (see
    `let_go`) whenever it is closed: at a follower's reopen and as a service stops alike. It
    remembers the files it opened, as (device, inode): the database, its write-ahead log and
    the log's index."""

    opened: tuple[Path, FileId | None, FileId | None, FileId | None] | None = None
    _said = False  # the shared log of a file in use elsewhere, said once

    def release_log(self) -> None:
        """The log of a file no longer at its path emptied into it, and its names taken off
        the path (`let_go`); nothing for a file still there. Never raises."""
        if self.opened is None:
            return
        path, db, wal, shm = self.opened
        now = file_id(path)
        if now == db:  # not moved: the log is the file's own, SQLite's to keep
            return
        shared = wal is not None and file_id(f"{path}-wal") == wal
        if shared and now is not None and _in_use(now):
            if not self._said:
                self._said = True
                log.error(
                    "db let_go path=%s: the file now at the path was opened while the old "
                    "one was still held, and reads the old one's log; stop every edge-gate "
                    "service, restore the file again, then start them",
                    path,
                )
            return
        with suppress(Exception):
            self.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if shared:
            for suffix, was in (("-wal", wal), ("-shm", shm)):
                name = f"{path}{suffix}"
                if was is not None and file_id(name) == was:
                    with suppress(OSError):
                        os.unlink(name)

    def close(self) -> None:
        """Close, the log of a file moved underneath let go of first (`let_go`)."""
        self.release_log()
        super().close()


def connect(
    path: str | Path,
    *,
    timeout_s: float = BUSY_TIMEOUT_S,
    secure_delete: bool = False,
    foreign_keys: bool = False,
    wal: bool = True,
    readonly: bool = False,
) -> sqlite3.Connection:
    """Open a database with the project's pragmas; autocommit (transactions are explicit).
    readonly: opened `mode=ro` for a command that only reads, so it takes no lock at open and
    makes or upgrades nothing (its journal mode is the file's own). A new file is made 0600
    before SQLite opens it (whatever the umask), and SQLite gives its log and index the
    database's mode: the stores hold password hashes, sealed templates and the evidence. An
    existing file of this user's, or its log or index, that others may read (made before that
    rule) is made private first (`_tighten`)."""
    if not readonly and str(path) != ":memory:":
        _make_private(Path(path))
        for suffix in ("", "-wal", "-shm"):
            _tighten(Path(f"{path}{suffix}"))
    conn = sqlite3.connect(
        f"file:{quote(str(Path(path).resolve()))}?mode=ro" if readonly else str(path),
        timeout=timeout_s,
        isolation_level=None,
        check_same_thread=False,
        factory=Connection,
        uri=readonly,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        if wal and not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("SELECT count(*) FROM sqlite_master")  # opens the log and its index
            p = Path(path)
            conn.opened = (p, file_id(p), file_id(f"{p}-wal"), file_id(f"{p}-shm"))
        conn.execute("PRAGMA synchronous=FULL")
        if secure_delete:
            conn.execute("PRAGMA secure_delete=ON")
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _make_private(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist. Nothing else: a folder that
    is missing or not writable is left for SQLite to report as it always does."""
    with suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


_warned: set[tuple[str, FileId, int]] = set()  # files left loose, each said once per process


def _tighten(path: Path) -> None:
    """A file of this user's that its group or others may read or write: group and other bits
    removed (0644 -> 0600), said once in one line. A file of another user's, or a chmod that
    fails (a read-only file system), is a warning with the fix, and the open goes on: a mode
    is never a reason to refuse the gallery or the ledger. Nothing for a missing file."""
    try:
        st = os.stat(path)
    except OSError:
        return
    mode = st.st_mode & 0o7777
    if not mode & 0o077 or not stat.S_ISREG(st.st_mode):
        return
    problem = ""
    if st.st_uid != os.geteuid():
        problem = f"owned by uid {st.st_uid}, not this user"
    else:
        try:
            os.chmod(path, mode & ~0o077)
        except FileNotFoundError:
            return  # taken off the path meanwhile (SQLite removes a log at its last close)
        except OSError as e:
            problem = e.strerror or str(e)
        else:
            log.warning("db mode_tightened path=%s was=%04o", path, mode)
            return
    said = (str(path), (st.st_dev, st.st_ino), mode)
    if said not in _warned:
        _warned.add(said)
        log.warning(
            "db mode_loose path=%s mode=%04o: %s; its group and others may read it: "
            "run chmod go= %s as its owner",
            path,
            mode,
            problem,
            path,
        )


@contextmanager
def transaction(
    conn: sqlite3.Connection, lock: threading.RLock | None = None
) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; inside an open transaction it
    joins it (the outer one commits), so a store's methods compose into one commit."""
    with lock if lock is not None else _NO_LOCK:
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()


CHECKPOINT_WAIT_MS = 100  # a checkpoint gives up on readers after this; the next one does it


def checkpoint(conn: sqlite3.Connection, what: str) -> bool:
    """wal_checkpoint(TRUNCATE): the log written into the file and emptied (what a delete under
    secure_delete needs before its bytes are gone from disk); False, with a warning naming
    `what`, when a reader kept it busy or it failed. Never raises. It waits for readers at
    most CHECKPOINT_WAIT_MS, holding the write lock meanwhile: a running gate writing its
    decision waits no longer than that behind a long reader (a backup, `audit export`)."""
    try:
        (was,) = conn.execute("PRAGMA busy_timeout").fetchone()
        conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(was)}")
    except sqlite3.Error as e:
        log.warning("%s not_checkpointed error=%s: the next checkpoint does it", what, e)
        return False
    if busy:
        log.warning(
            "%s not_checkpointed: a reader holds the log; the next checkpoint does it", what
        )
    return not busy


def run_script(conn: sqlite3.Connection, sql: str) -> None:
    """Run several statements inside the caller's transaction (executescript would COMMIT it)."""
    stmt = ""
    for part in sql.split(";"):
        stmt += part + ";"
        if sqlite3.complete_statement(stmt):
            if stmt.strip(" \n\t;"):
                conn.execute(stmt)
            stmt = ""
    if stmt.strip(" \n\t;"):
        raise sqlite3.ProgrammingError(f"incomplete SQL statement: {stmt[:80]}")


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version a file was written with (0 = new or pre-versioning)."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def tables(conn: sqlite3.Connection) -> set[str]:
    """Names of the tables in a file."""
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """Column names of one table ([] if it does not exist)."""
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


@dataclass(frozen=True)
class Migration:
    """One schema step: `apply` brings a file from version `to - 1` (or older) to `to`."""

    to: int
    apply: Callable[[sqlite3.Connection], None]
    what: str = ""


def migrate(
    conn: sqlite3.Connection,
    steps: Sequence[Migration],
    too_new: Callable[[int, int], EdgeGateError],
) -> int:
    """Run the steps newer than the file's version, all in one transaction; returns the version
    the file had. A file from a newer edge-gate is refused (`too_new(found, newest)`)."""
    newest = steps[-1].to
    if user_version(conn) == newest:  # the common case: no write lock taken at open
        return newest
    with transaction(conn):
        found = user_version(conn)
        if found > newest:
            raise too_new(found, newest)
        for step in steps:
            if step.to > found:
                step.apply(conn)
        if found != newest:
            conn.execute(f"PRAGMA user_version={newest}")
    return found


def sqlite_fix(e: sqlite3.Error) -> str:
    """The operator's fix for a SQLite failure, from its message."""
    text = str(e).lower()
    if "full" in text:
        return "free disk space and retry"
    if "locked" in text or "busy" in text:
        return "another process holds the file; retry, or stop the process that holds it"
    if "readonly" in text or "read-only" in text:
        return "check the file and its folder are writable by the service user"
    if "malformed" in text or "not a database" in text:
        return DAMAGED_FIX
    return UNKNOWN_FIX


DAMAGED_FIX = "the file is damaged: restore it from backup"
UNKNOWN_FIX = "check the file, its folder and the disk"


class Store:
    """One SQLite file owned by one class: its tables, its transactions, its error type."""

    error: ClassVar[type[EdgeGateError]] = EdgeGateError
    what: ClassVar[str] = "database"
    path: Path
    conn: sqlite3.Connection

    def _connect(self, path: Path, **pragmas: object) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            self.conn = connect(path, **pragmas)  # type: ignore[arg-type]
        except sqlite3.Error as e:
            raise self.error(f"{self.what} {path} is unreadable: {e}", sqlite_fix(e)) from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction on this store; a SQLite failure is this store's error."""
        try:
            with transaction(self.conn, self._lock) as c:
                yield c
        except sqlite3.Error as e:
            raise self.error(
                f"{self.what} {self.path}: {e}; nothing was written", sqlite_fix(e)
            ) from None

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A plain read (no transaction); a SQLite failure (a damaged or vanished file) is this
        store's error, so callers that catch it keep running."""
        try:
            yield self.conn
        except sqlite3.Error as e:
            raise self.error(f"{self.what} {self.path}: {e}", sqlite_fix(e)) from None

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Reads that must agree with each other (a generation and the key wrapped for it; rows
        and the keys that open them) in one read transaction: another process's commit lands
        before all of them or after, never between two. Inside an open transaction it joins it.
        A SQLite failure is this store's error."""
        with self._lock:
            if self.conn.in_transaction:
                yield self.conn
                return
            try:
                self.conn.execute("BEGIN")
                try:
                    yield self.conn
                finally:
                    # a read: nothing to keep or undo; a body that closed the connection (a
                    # key that no longer opens the file) keeps its own error
                    with suppress(sqlite3.ProgrammingError):
                        if self.conn.in_transaction:
                            self.conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise self.error(f"{self.what} {self.path}: {e}", sqlite_fix(e)) from None

    def checkpoint(self) -> bool:
        """After a delete: the log written into the file and emptied, so no older copy of the
        deleted rows (overwritten in the file by secure_delete) stays in it. False, with a
        warning, when a reader kept it (the next checkpoint does it). Never raises."""
        return checkpoint(self.conn, f"{self.what} {self.path}")

    def data_version(self) -> int:
        """Changes whenever another connection commits to this file."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        """Close the connection (idempotent), after any transaction another thread has open
        on it (a relay's door record while the gate reopens its audit log)."""
        with self._lock:
            self.conn.close()


def let_go(store: Store | sqlite3.Connection, close: bool = True) -> None:
    """Let go of a file deleted or replaced underneath (a restore, a repair): the one way
    every follower does (gallery, ledger, audit log, fleet state, the console's files), and
    what every connection from `connect` does when it is closed. Never raises.

    The old file and the one now at its path share the names of the write-ahead log and its
    index, and SQLite does not empty the log of a moved file when it closes: the next opener
    of the path would take the old file's pages for the new file's (a restore silently
    undone, or a mix of both). So the log is first emptied into the old file (a file renamed
    away keeps its last commits), then the log and index this connection opened are taken off
    the path: the file now there starts a log of its own, and a follower in another process
    that lets go later empties its own log into the old file, never the new file's commits.

    Left alone: a file still at its path (its log is SQLite's to keep); names at the path no
    longer the ones opened (taken off by another follower, started again by the new file);
    and names the file now at the path already uses, opened by another process before this
    let go (SQLite gave it the old log; emptying it would take that process's commits away,
    taking its names off would give one file two logs): said, and closed as SQLite does.

    Call it before opening the file now at the path. close=False keeps the connection, on the
    old file and a log of its own, for a follower that reads the old file until the new one
    opens (it closes it then)."""
    conn = store if isinstance(store, sqlite3.Connection) else store.conn
    with store._lock if isinstance(store, Store) else _NO_LOCK:  # no write in between
        if isinstance(conn, Connection):
            conn.release_log()
        if close:
            with suppress(Exception):
                store.close()


def _in_use(file: FileId) -> bool:
    """Whether a connection (any process) has the file open: SQLite holds a shared lock on a
    WAL database for as long as a connection is open on it. Linux (/proc/locks); elsewhere,
    not known: False."""
    dev, ino = file
    tag = f" {os.major(dev):02x}:{os.minor(dev):02x}:{ino} "
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            return any(tag in line for line in f)
    except OSError:
        return False
