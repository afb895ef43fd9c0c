"""Staff accounts: name, role, language and an argon2id password hash, in the console's SQLite.

Roles are ordered: a supervisor can do what a steward can, an admin what a supervisor can.
What each role may do is one table (`CAN`), read by the routes and by the templates (a button
a role may not use is not shown, and its route answers 403 anyway).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from edge.console.roles import CAN, LANGS, ROLES, allowed
from edge.db import connect
from edge.errors import EdgeGateError

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
    """The users table; safe to share between the server's threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = connect(self.path, timeout_s=5.0)  # the project's pragmas (edge/db.py)
            self.conn.executescript(_SCHEMA)
            self.path.chmod(0o600)
        except (OSError, sqlite3.Error) as e:  # a folder it may not write, a damaged file
            raise UserError(
                f"staff accounts {self.path} cannot be opened: {e}",
                "check console.users_db: run as the office's service user, in a folder it may "
                "write; restore a damaged file from its backup",
            ) from None

    def add(self, name: str, role: str, password: str, lang: str = "en") -> User:
        """Create an account; refuses a taken name, an unknown role or a short password."""
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
        with self._lock:
            try:
                self.conn.execute(
                    "INSERT INTO users (name, role, lang, hash, created) VALUES (?,?,?,?,?)",
                    (name, role, lang, _HASHER.hash(password), time.time()),
                )
            except sqlite3.IntegrityError:
                raise UserError(f"user {name!r} exists", "pick another name") from None
        return User(name, role, lang, 1)

    def get(self, name: str) -> User | None:
        """The account, or None."""
        with self._lock:
            row = self.conn.execute(
                "SELECT name, role, lang, generation, disabled FROM users WHERE name = ?", (name,)
            ).fetchone()
        return User(row[0], row[1], row[2], row[3], bool(row[4])) if row else None

    def all(self) -> list[User]:
        """Every account, by name."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT name, role, lang, generation, disabled FROM users ORDER BY name"
            ).fetchall()
        return [User(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password is theirs (and the account enabled); None otherwise.

        Always runs one argon2 verification, so timing does not tell which names exist.
        """
        with self._lock:
            row = self.conn.execute("SELECT hash FROM users WHERE name = ?", (name,)).fetchone()
        try:
            _HASHER.verify(row[0] if row else _DUMMY, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        user = self.get(name) if row else None
        if user is None or user.disabled:
            return None
        if row and _HASHER.check_needs_rehash(row[0]):
            with self._lock:
                self.conn.execute(
                    "UPDATE users SET hash = ? WHERE name = ?", (_HASHER.hash(password), name)
                )
        return user

    def _update(self, name: str, sql: str, args: tuple) -> User:
        with self._lock:
            cur = self.conn.execute(
                f"UPDATE users SET {sql}, generation = generation + 1 WHERE name = ?",
                (*args, name),
            )
        if cur.rowcount != 1:
            raise UserError(f"no user {name!r}")
        user = self.get(name)
        assert user is not None
        return user

    def set_role(self, name: str, role: str) -> User:
        """Change a role; the user's open sessions end (they log in again)."""
        if role not in ROLES:
            raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
        return self._update(name, "role = ?", (role,))

    def set_password(self, name: str, password: str) -> User:
        """Change a password; every open session of the user ends."""
        check_password(password)
        return self._update(name, "hash = ?", (_HASHER.hash(password),))

    def set_disabled(self, name: str, disabled: bool) -> User:
        """Lock or unlock an account; a locked account's sessions end."""
        return self._update(name, "disabled = ?", (int(disabled),))

    def set_lang(self, name: str, lang: str) -> User:
        """The user's language (their sessions stay valid)."""
        if lang not in LANGS:
            raise UserError(f"language {lang!r} is not one of {', '.join(LANGS)}")
        with self._lock:
            self.conn.execute("UPDATE users SET lang = ? WHERE name = ?", (lang, name))
        user = self.get(name)
        if user is None:
            raise UserError(f"no user {name!r}")
        return user

    def end_sessions(self, name: str) -> None:
        """Log the user out everywhere."""
        self._update(name, "disabled = disabled", ())

    def close(self) -> None:
        """Close the database."""
        self.conn.close()
