"""Staff accounts: name, role, language and an argon2id password hash, in the console's SQLite.

Roles are ordered: a supervisor can do what a steward can, an admin what a supervisor can.
What each role may do is one table (`CAN`), read by the routes and by the templates (a button
a role may not use is not shown, and its route answers 403 anyway).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from edge.console.follow import Followed, let_go, stamp
from edge.console.roles import CAN, LANGS, ROLES, allowed
from edge.db import connect, sqlite_fix, transaction
from edge.errors import EdgeGateError
from edge.files import make_private_dirs

log = logging.getLogger(__name__)

__all__ = ["CAN", "LANGS", "ROLES", "allowed", "User", "UserError", "UserStore"]

NAME_RULE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}"
MIN_PASSWORD = 10

_HASHER = PasswordHasher()  # argon2id, the library's defaults (RFC 9106 second recommendation)
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY = _HASHER.hash("edge-gate-console-no-such-user")


class UserError(EdgeGateError):
    """A staff account cannot be created or changed as asked."""


@dataclass(frozen=True)
class User:
    """One staff account as the app sees it (never the hash)."""

    name: str
    role: str
    lang: str
    generation: int  # bumped on logout-everywhere, password or role change: old cookies die
    disabled: bool = False

    def can(self, capability: str) -> bool:
        """Whether this user's role allows `capability`."""
        return not self.disabled and allowed(self.role, capability)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    lang TEXT NOT NULL DEFAULT 'en',
    hash TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 1,
    disabled INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
"""


def check_password(password: str) -> None:
    """Refuse passwords too short to survive an offline guess."""
    if len(password) < MIN_PASSWORD:
        raise UserError(
            f"the password has {len(password)} characters; at least {MIN_PASSWORD} are needed",
            "use a longer passphrase",
        )


class UserStore:
    """The users table; safe to share between the server's threads.

    The file at `path` is followed: deleted (and made again by `console adduser`), replaced
    or written over in place (restored from a backup, by `mv` or `cp`) while the console runs,
    it is opened again as at start, so the accounts that log in are the ones on disk. A SQLite
    failure (locked past the busy timeout, a full disk, a read-only file) is a UserError
    carrying the fix; a change fails whole.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()  # the reading connection and the file's identity
        self._wlock = threading.Lock()  # one change at a time, on its own connection
        self._file = Followed(self.path)
        self.conn, self.writer = self._open()

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """Connections to the file at `path` (one reads, one writes: a change waiting inside
        its transaction for its audit record holds up no session check); the file's identity
        kept only once they opened (a file that does not open is tried again at the next use)."""
        seen = stamp(self.path)  # read before it is opened: a file replaced in between is
        try:  # followed at the next use
            make_private_dirs(self.path.parent)
            conn = connect(self.path, timeout_s=5.0)  # the project's pragmas (edge/db.py)
        except (OSError, sqlite3.Error) as e:  # a folder it may not write, a damaged file
            raise self._unopened(e) from None
        try:
            conn.executescript(_SCHEMA)  # the file 0600, its log and index too (`connect`)
            writer = connect(self.path, timeout_s=5.0)
        except (OSError, sqlite3.Error) as e:
            conn.close()
            raise self._unopened(e) from None
        self._file.opened(seen)
        return conn, writer

    def _unopened(self, e: Exception) -> UserError:
        return UserError(
            f"staff accounts {self.path} cannot be opened: {e}",
            "check console.users_db: run as the office's service user, in a folder it may "
            "write; free disk space; restore a damaged file from its backup",
        )

    def _follow(self, changing: bool = False) -> None:
        """Under `_lock`: the file deleted or replaced since it was opened is opened again.
        A change in flight on another thread (`_wlock` held) is let finish first: its
        connection is left alone until the next use."""
        how = self._file.changed(stamp(self.path))
        if not how:
            return
        if not changing and not self._wlock.acquire(blocking=False):
            return
        try:
            log.error(
                "console users_moved path=%s: %s while the console ran; opened again as at start",
                self.path,
                how,
            )
            let_go(self.conn)
            let_go(self.writer)
            self.conn, self.writer = self._open()
        finally:
            if not changing:
                self._wlock.release()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """The reading connection to the file now at `path`, one thread at a time; a SQLite
        failure is a UserError with the operator's fix."""
        with self._lock:
            self._follow()
            try:
                yield self.conn
            except sqlite3.Error as e:
                raise UserError(f"staff accounts {self.path}: {e}", sqlite_fix(e)) from None
            finally:
                self._file.backfill(self.conn)

    @contextlib.contextmanager
    def _change(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the file now at `path` (one change at a time); reads go
        on meanwhile. A SQLite failure is a UserError with the fix, and nothing is written."""
        with self._wlock:
            with self._lock:
                self._follow(changing=True)
                writer = self.writer
            try:
                with transaction(writer):
                    yield writer
            except sqlite3.Error as e:
                raise UserError(
                    f"staff accounts {self.path}: {e}; nothing was changed", sqlite_fix(e)
                ) from None
            finally:
                with self._lock:
                    if self.writer is writer:
                        self._file.backfill(writer)

    def add(
        self,
        name: str,
        role: str,
        password: str,
        lang: str = "en",
        then: Callable[[], None] | None = None,
    ) -> User:
        """Create an account; refuses a taken name, an unknown role or a short password.
        `then` (the audit record) runs inside the write: if it fails, nothing is added."""
        if not re.fullmatch(NAME_RULE, name):
            raise UserError(
                f"user name {name!r} is not allowed",
                "letters, digits, '.', '_' and '-', at most 40, starting with a letter or digit",
            )
        if role not in ROLES:
            raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if lang not in LANGS:
            raise UserError(f"language {lang!r} is not one of {', '.join(LANGS)}")
        check_password(password)
        hashed = _HASHER.hash(password)
        with self._change() as conn:
            try:
                conn.execute(
                    "INSERT INTO users (name, role, lang, hash, created) VALUES (?,?,?,?,?)",
                    (name, role, lang, hashed, time.time()),
                )
            except sqlite3.IntegrityError:
                raise UserError(f"user {name!r} exists", "pick another name") from None
            if then is not None:
                then()
        return User(name, role, lang, 1)

    def get(self, name: str) -> User | None:
        """The account, or None."""
        with self._db() as conn:
            row = conn.execute(
                "SELECT name, role, lang, generation, disabled FROM users WHERE name = ?", (name,)
            ).fetchone()
        return User(row[0], row[1], row[2], row[3], bool(row[4])) if row else None

    def all(self) -> list[User]:
        """Every account, by name."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT name, role, lang, generation, disabled FROM users ORDER BY name"
            ).fetchall()
        return [User(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password is theirs (and the account enabled); None otherwise.

        Always runs one argon2 verification, so timing does not tell which names exist.
        """
        with self._db() as conn:
            row = conn.execute("SELECT hash FROM users WHERE name = ?", (name,)).fetchone()
        try:
            _HASHER.verify(row[0] if row else _DUMMY, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        user = self.get(name) if row else None
        if user is None or user.disabled:
            return None
        if row and _HASHER.check_needs_rehash(row[0]):
            try:  # a stronger hash next time; the login does not wait on a locked file for it
                with self._change() as conn:
                    conn.execute(
                        "UPDATE users SET hash = ? WHERE name = ?", (_HASHER.hash(password), name)
                    )
            except UserError as e:
                log.warning("console rehash_skipped user=%s error=%s", name, e)
        return user

    def _update(
        self, name: str, sql: str, args: tuple, then: Callable[[], None] | None = None
    ) -> User:
        admins = "SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0"
        with self._change() as conn:
            had = conn.execute(admins).fetchone()[0]
            cur = conn.execute(
                f"UPDATE users SET {sql}, generation = generation + 1 WHERE name = ?",
                (*args, name),
            )
            if cur.rowcount != 1:
                raise UserError(f"no user {name!r}")
            if had and not conn.execute(admins).fetchone()[0]:  # rolled back: nothing changes
                raise UserError(
                    f"{name} is the last admin whose account is not locked: no one could "
                    "manage the staff accounts after this",
                    "make another user an admin first",
                )
            if then is not None:
                then()
        user = self.get(name)
        assert user is not None
        return user

    def set_role(self, name: str, role: str, then: Callable[[], None] | None = None) -> User:
        """Change a role; the user's open sessions end (they log in again). `then` (the audit
        record) runs inside the write: if it fails, nothing changes."""
        if role not in ROLES:
            raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
        return self._update(name, "role = ?", (role,), then)

    def set_password(self, name: str, password: str) -> User:
        """Change a password; every open session of the user ends."""
        check_password(password)
        return self._update(name, "hash = ?", (_HASHER.hash(password),))

    def set_disabled(
        self, name: str, disabled: bool, then: Callable[[], None] | None = None
    ) -> User:
        """Lock or unlock an account; a locked account's sessions end (`then` as for a role)."""
        return self._update(name, "disabled = ?", (int(disabled),), then)

    def set_lang(self, name: str, lang: str, then: Callable[[], None] | None = None) -> User:
        """The user's language (their sessions stay valid; `then` as for a role)."""
        if lang not in LANGS:
            raise UserError(f"language {lang!r} is not one of {', '.join(LANGS)}")
        with self._change() as conn:
            cur = conn.execute("UPDATE users SET lang = ? WHERE name = ?", (lang, name))
            if cur.rowcount != 1:
                raise UserError(f"no user {name!r}")
            if then is not None:
                then()
        user = self.get(name)
        if user is None:
            raise UserError(f"no user {name!r}")
        return user

    def end_sessions(self, name: str, then: Callable[[], None] | None = None) -> None:
        """Log the user out everywhere."""
        self._update(name, "disabled = disabled", (), then)

    def close(self) -> None:
        """Close the database."""
        with self._wlock, self._lock:
            self.conn.close()
            self.writer.close()
