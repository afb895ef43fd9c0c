"""A small client for pretix's REST API (stdlib HTTP): GET with pagination, POST with a key.

Authentication is a team API token (`Authorization: Token …`) or a device token (`Device …`).
The token is never logged. A shop that cannot be reached, or answers 5xx, raises
`PretixUnreachable` (try again later); any other non-2xx answer raises `PretixAPIError` with the
status and body (the request itself is wrong, or was refused).

Whatever answers at the URL is not trusted to be pretix: a redirect is never followed (it would
carry the token to wherever it points, and turn a POST into a GET), every request has a deadline
for its whole answer (a server that trickles bytes cannot hold sync), an answer is read up to
MAX_BODY bytes, and what is not HTTP or not JSON is an error, never a crash.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import platform
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ConfigError, EdgeGateError
from edge.keyfiles import read_private

TIMEOUT_S = 20.0  # each connect and each read; the whole answer gets DEADLINE_FACTOR times it
DEADLINE_FACTOR = 3
MAX_BODY = 16 << 20  # a page of 50 objects is kilobytes; more is not pretix's API
NOT_PRETIX = "check pretix.url (the shop's base address, without /api/v1) and any proxy in between"
MAX_PAGES = 10_000  # a shop answering `next` forever must not hang sync
USER_AGENT = "edge-gate-pretix-sync"


class PretixUnreachable(EdgeGateError):
    """The shop could not be reached (network, timeout, 5xx): keep deciding offline, retry."""


class PretixAPIError(EdgeGateError):
    """The shop answered with an error status; `status` and `body` say which."""

    def __init__(self, message: str, status: int, body: Any, hint: str | None = None):
        super().__init__(message, hint)
        self.status, self.body = status, body


@dataclass(frozen=True)
class Response:
    """One answer: HTTP status and the decoded JSON body (None when empty); `is_json` is False
    when the body was something else (an HTML page of a proxy), kept as {"raw": its start}."""

    status: int
    body: Any
    is_json: bool = True


class _Watch:
    """Shuts the connection's socket at the deadline, so a read blocked on a server that
    trickles its answer returns; `expired` says it did. It holds a duplicate of the socket:
    TLS takes the original over (ssl's wrap detaches it) and still stops at the shutdown."""

    def __init__(self, seconds: float):
        self.expired = False
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _shut(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing to wake
                self.sock.shutdown(socket.SHUT_RDWR)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shut()

    def attach(self, sock: socket.socket) -> socket.socket:
        """The connection's socket, once connected (shut at once when the deadline passed)."""
        with self._lock:
            self.sock = sock.dup()
            if self.expired:
                self._shut()
        return sock

    def cancel(self) -> None:
        """The answer is in (or the request failed): no shutdown, the duplicate closed."""
        self._timer.cancel()
        with self._lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx comes back as the answer (HTTPError), never followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener(watch: _Watch, ctx: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    """urllib's opener (proxies from the environment included) whose connections report their
    socket to `watch` and which follows no redirect."""

    def watched(base: type[http.client.HTTPConnection]):
        def make(*args: Any, **kw: Any) -> http.client.HTTPConnection:
            conn: Any = base(*args, **kw)
            create = conn._create_connection  # http.client's own hook for opening the socket
            conn._create_connection = lambda *a, **k: watch.attach(create(*a, **k))
            return conn

        return make

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(watched(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(watched(http.client.HTTPSConnection), req, context=ctx)

    return urllib.request.build_opener(Http(), Https(context=ctx), _NoRedirect())


def _read(resp: Any) -> bytes:
    raw = resp.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ValueError(f"an answer larger than {MAX_BODY >> 20} MiB")
    return raw


def one_token(text: str) -> bool:
    """Whether `text` can be an HTTP Authorization token: printable, one word, not empty."""
    return bool(text) and text.isprintable() and not any(c.isspace() for c in text)


def read_token(path: Path) -> str:
    """The API or device token: a systemd credential `pretix.token`, else a 0600 file."""
    raw = read_private(
        path,
        "pretix token",
        "create it with the team API token (or device token) from pretix, mode 0600",
        credential="pretix.token",
    )
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:  # an HTTP header carries ASCII only; pretix's tokens are
        token = ""
    if not one_token(token):
        raise ConfigError(
            f"pretix token {path} is empty or not one token (printable ASCII, no spaces)",
            "write the token pretix showed, alone on one line",
        )
    return token


class PretixClient:
    """One shop: base URL, token, and the TLS settings for reaching it."""

    def __init__(
        self,
        base_url: str,
        token: str,
        auth: str = "token",
        ca_file: str = "",
        timeout_s: float = TIMEOUT_S,
    ):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ConfigError(
                f"pretix.url = {base_url!r} is not an http(s) URL",
                "e.g. https://tickets.example.org",
            )
        self.base = base_url.rstrip("/")
        self.auth_header = (
            "" if auth == "none" else ("Device " if auth == "device" else "Token ") + token
        )
        self.timeout = timeout_s
        self.ctx = (
            ssl.create_default_context(cafile=ca_file or None) if u.scheme == "https" else None
        )

    def url(self, path: str, params: dict[str, Any] | None = None) -> str:
        """An API URL under /api/v1/ with its query string."""
        out = f"{self.base}/api/v1/{path.lstrip('/')}"
        if params:
            out += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return out

    def request(
        self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        """One call; 2xx and the 4xx of check-in refusals come back, the rest raise."""
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if self.auth_header:
            req.add_header("Authorization", self.auth_header)
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", USER_AGENT)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        watch = _Watch(self.timeout * DEADLINE_FACTOR)
        try:
            try:
                resp = _opener(watch, self.ctx).open(req, timeout=self.timeout)
            except urllib.error.HTTPError as e:  # 3xx, 4xx, 5xx: an answer too
                resp = e
            with resp:
                status, raw = resp.code, _read(resp)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            why = str(getattr(e, "reason", None) or e) or type(e).__name__
            if watch.expired:
                why = f"no complete answer within {self.timeout * DEADLINE_FACTOR:g} s"
            raise PretixUnreachable(f"pretix at {self.base} unreachable: {why}") from None
        finally:
            watch.cancel()
        if watch.expired:  # the socket was shut while reading: the answer may be cut short
            raise PretixUnreachable(
                f"pretix at {self.base} unreachable: no complete answer within "
                f"{self.timeout * DEADLINE_FACTOR:g} s"
            )
        body, is_json = _json(raw)
        if status >= 500 or status == 429:
            raise PretixUnreachable(f"pretix at {self.base} answered {status}")
        if 300 <= status < 400:
            where = resp.headers.get("Location", "") if resp.headers else ""
            raise PretixAPIError(
                f"pretix at {self.base} answered {status}, a redirect to {where[:200]!r}",
                status,
                body,
                "set pretix.url to the address the shop answers at itself (https://…, as in the "
                "browser's address bar after any redirect); a redirect is never followed",
            )
        return Response(status, body, is_json)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET one resource; anything but 200 raises."""
        r = self.request("GET", self.url(path, params))
        if r.status != 200:
            raise _api_error("GET", path, r)
        if not r.is_json:
            raise _not_pretix("GET", path, r)
        return r.body

    def pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[list[Any]]:
        """GET a list resource page by page, following `next` on the same host."""
        url = self.url(path, params)
        for _ in range(MAX_PAGES):
            r = self.request("GET", url)
            if r.status != 200:
                raise _api_error("GET", path, r)
            results = r.body.get("results") if isinstance(r.body, dict) else None
            nxt = r.body.get("next") if isinstance(r.body, dict) else None
            if not r.is_json or not isinstance(results, list) or not isinstance(nxt, str | None):
                raise _not_pretix("GET", path, r)  # never taken for an empty list
            yield results
            if not nxt:
                return
            if urllib.parse.urlsplit(nxt).netloc != urllib.parse.urlsplit(url).netloc:
                raise PretixAPIError(f"pretix paginated {path} to another host", 0, nxt)
            url = nxt
        raise PretixAPIError(f"pretix {path}: more than {MAX_PAGES} pages", 0, None)

    def post(self, path: str, body: Any, idempotency_key: str | None = None) -> Response:
        """POST; the answer comes back whatever its 4xx status (callers judge it)."""
        headers = {"X-Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", self.url(path), body, headers)


def initialize_device(
    base_url: str, init_token: str, software_version: str, ca_file: str = ""
) -> dict[str, Any]:
    """Initialise a device created in pretix (Organizer → Devices → Connect a device), as
    pretixSCAN does: one POST with the one-time initialisation token; the answer holds the
    device's API token (`api_token`), its organizer, id, name and security profile."""
    client = PretixClient(base_url, "", auth="none", ca_file=ca_file)
    body = {
        "token": init_token,
        "hardware_brand": "edge-gate",
        "hardware_model": platform.machine() or "unknown",
        "os_name": platform.system() or "unknown",
        "os_version": platform.release() or "unknown",
        "software_brand": "edge-gate",
        "software_version": software_version,
    }
    r = client.post("device/initialize", body)
    token = r.body.get("api_token") if isinstance(r.body, dict) else None
    # never a token that cannot be written to the token file and read back from it
    if r.status != 200 or not (isinstance(token, str) and one_token(token)):
        detail = r.body.get("token", r.body) if isinstance(r.body, dict) else r.body
        if isinstance(detail, dict):  # never a token in an error message
            detail = {k: v for k, v in detail.items() if "token" not in k}
        said = "answered without a usable device token to" if r.status == 200 else "refused"
        raise PretixAPIError(
            f"pretix {said} the initialisation token: {r.status} {detail!s:.200}",
            r.status,
            r.body,
            "an initialisation token works once: in pretix, create a new device (Organizer → "
            "Devices) and give its token",
        )
    return r.body


def _json(raw: bytes) -> tuple[Any, bool]:
    """(body, is_json): anything not JSON (a page, nesting too deep, a number too long) is
    kept as {"raw": its start} for the error message."""
    if not raw:
        return None, True
    try:
        return json.loads(raw), True
    except (ValueError, RecursionError):
        return {"raw": raw[:300].decode("utf-8", "replace")}, False


def _not_pretix(method: str, path: str, r: Response) -> PretixAPIError:
    detail = r.body.get("raw", r.body) if isinstance(r.body, dict) else r.body
    return PretixAPIError(
        f"pretix {method} {path}: an answer that is not pretix's API ({r.status} {detail!s:.120})",
        r.status,
        r.body,
        NOT_PRETIX,
    )


def _api_error(method: str, path: str, r: Response) -> PretixAPIError:
    hints = {
        401: "check pretix.token_file and pretix.auth (token or device)",
        403: "give the token's team the permission to read the event, orders and check-in lists",
        404: "check pretix.organizer, pretix.event and pretix.checkin_list",
    }
    detail = r.body.get("detail") if isinstance(r.body, dict) else r.body
    return PretixAPIError(
        f"pretix {method} {path}: {r.status} {detail!s:.200}", r.status, r.body, hints.get(r.status)
    )
