"""Sessions, CSRF tokens and login rate limits: the console's security rules, without I/O.

A session is a signed, timestamped cookie (itsdangerous) holding the user name, the account's
generation and a random CSRF token; the server keeps no session table, and bumping the
account's generation (logout, password or role change) ends every cookie issued before.
Every POST must carry that CSRF token (form field `csrf` or header `X-CSRF-Token`); the login
form, before any session, carries a token that must match a short-lived signed cookie.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from edge.errors import ConfigError
from edge.files import make_private_dirs, write_atomic
from edge.keyfiles import read_private

SESSION_COOKIE = "eg_session"
LOGIN_COOKIE = "eg_login"
LOGIN_FORM_S = 3600  # a login form older than this is refused (reload the page)


def load_secret(path: Path) -> bytes:
    """The cookie-signing key: 32 random bytes in a 0600 file, created on first use."""
    path = Path(path)
    if not path.exists():
        make_private_dirs(path.parent)
        write_atomic(path, secrets.token_bytes(32), 0o600, overwrite=False)
    key = read_private(path, "console secret", "delete it; it is recreated")
    if len(key) < 32:
        raise ConfigError(f"console secret {path} is too short", "delete it; it is recreated")
    return key


@dataclass(frozen=True)
class Session:
    """What a valid session cookie says."""

    user: str
    generation: int
    csrf: str


class Sessions:
    """Issue and read session and login-form cookies signed with the console's secret."""

    def __init__(self, secret: bytes, max_age_s: float):
        self._s = URLSafeTimedSerializer(secret, salt="edge-gate-console-session")
        self._login = URLSafeTimedSerializer(secret, salt="edge-gate-console-login")
        self.max_age_s = max_age_s

    def issue(self, user: str, generation: int) -> tuple[str, Session]:
        """A new cookie value (with a fresh CSRF token) for a user who just logged in."""
        s = Session(user, generation, secrets.token_urlsafe(24))
        return self._s.dumps({"u": s.user, "g": s.generation, "c": s.csrf}), s

    def read(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None if absent, forged or expired."""
        if not cookie:
            return None
        try:
            d = self._s.loads(cookie, max_age=self.max_age_s)
            return Session(str(d["u"]), int(d["g"]), str(d["c"]))
        except (BadSignature, SignatureExpired, KeyError, TypeError, ValueError):
            return None

    def login_token(self) -> tuple[str, str]:
        """(cookie value, form token) for a login form: the form must send the token back."""
        token = secrets.token_urlsafe(24)
        return self._login.dumps(token), token

    def login_token_ok(self, cookie: str | None, form_token: object) -> bool:
        """The login form's token matches its signed cookie (and is not stale)."""
        if not cookie or not form_token:
            return False
        try:
            expected = self._login.loads(cookie, max_age=LOGIN_FORM_S)
        except (BadSignature, SignatureExpired):
            return False
        return _same_token(str(expected), form_token)


def _same_token(expected: str, sent: object) -> bool:
    """Constant-time compare of a token with what a request sent: anything but a non-empty
    text (a file part, non-ASCII characters) is simply not the token, never an error."""
    if not isinstance(sent, str) or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode("utf-8", "surrogatepass"))


def csrf_ok(session: Session | None, sent: object) -> bool:
    """A POST's token is the session's own (constant-time compare)."""
    return session is not None and _same_token(session.csrf, sent)


MAX_NAME_KEY = 200  # a user name longer than any account's is counted by its first characters
MAX_TRACKED = 10_000  # names and addresses remembered before the expired ones are swept


class LoginLimiter:
    """Failed logins per user name and per client address in a sliding window.

    `blocked` says for how many more seconds a key is refused; a success clears the user's
    failures (not the address's: one address guessing many names stays limited).
    """

    def __init__(self, attempts: int, window_s: float, clock=time.monotonic):
        self.attempts, self.window_s, self.clock = attempts, window_s, clock
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.get(key) or deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            self._fails.pop(key, None)  # nothing left to remember: asking adds no entry
        return q

    @staticmethod
    def _keys(user: str, address: str) -> tuple[str, str]:
        return f"u:{user.lower()[:MAX_NAME_KEY]}", f"a:{address}"

    def blocked(self, user: str, address: str) -> float:
        """Seconds until a login for this user from this address may be tried; 0 = now."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key in self._keys(user, address):
                q = self._recent(key, now)
                if len(q) >= self.attempts:
                    wait = max(wait, q[len(q) - self.attempts] + self.window_s - now)
        return wait

    def failed(self, user: str, address: str) -> None:
        """Count one failed login against the name and the address (memory stays bounded:
        names and addresses whose failures are all older than the window are forgotten)."""
        now = self.clock()
        with self._lock:
            if len(self._fails) >= MAX_TRACKED:  # sweep the expired; then the least recent go
                for key in list(self._fails):
                    self._recent(key, now)
                for key in list(self._fails)[: max(0, len(self._fails) - MAX_TRACKED + 2)]:
                    del self._fails[key]
            for key in self._keys(user, address):
                q = self._recent(key, now)
                q.append(now)
                self._fails.pop(key, None)
                self._fails[key] = q  # the most recently failed last

    def succeeded(self, user: str) -> None:
        """A correct password clears that user's failures."""
        with self._lock:
            self._fails.pop(self._keys(user, "")[0], None)
