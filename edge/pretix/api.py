"""A small client for pretix's REST API (stdlib HTTP): GET with pagination, POST with a key.

Authentication is a team API token (`Authorization: Token …`) or a device token (`Device …`).
The token is never logged. A shop that cannot be reached, or answers 5xx, raises
`PretixUnreachable` (try again later); any other non-2xx answer raises `PretixAPIError` with the
status and body (the request itself is wrong, or was refused).
"""

from __future__ import annotations

import json
import platform
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ConfigError, EdgeGateError
from edge.keyfiles import read_private

TIMEOUT_S = 20.0
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
    """One answer: HTTP status and the decoded JSON body (None when empty)."""

    status: int
    body: Any


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
    if not token or not token.isprintable() or any(c.isspace() for c in token):
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
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ctx) as resp:
                return Response(resp.status, _json(resp.read()))
        except urllib.error.HTTPError as e:
            status, payload = e.code, _json(e.read())
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            why = getattr(e, "reason", e)
            raise PretixUnreachable(f"pretix at {self.base} unreachable: {why}") from None
        if status >= 500 or status == 429:
            raise PretixUnreachable(f"pretix at {self.base} answered {status}")
        return Response(status, payload)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET one resource; anything but 200 raises."""
        r = self.request("GET", self.url(path, params))
        if r.status != 200:
            raise _api_error("GET", path, r)
        return r.body

    def pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[list[Any]]:
        """GET a list resource page by page, following `next` on the same host."""
        url = self.url(path, params)
        for _ in range(MAX_PAGES):
            r = self.request("GET", url)
            if r.status != 200 or not isinstance(r.body, dict):
                raise _api_error("GET", path, r)
            yield list(r.body.get("results") or [])
            nxt = r.body.get("next")
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
    if r.status != 200 or not isinstance(r.body, dict) or not r.body.get("api_token"):
        detail = r.body.get("token", r.body) if isinstance(r.body, dict) else r.body
        if isinstance(detail, dict):  # never a token in an error message
            detail = {k: v for k, v in detail.items() if "token" not in k}
        raise PretixAPIError(
            f"pretix refused the initialisation token: {r.status} {detail!s:.200}",
            r.status,
            r.body,
            "an initialisation token works once: in pretix, create a new device (Organizer → "
            "Devices) and give its token",
        )
    return r.body


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"raw": raw[:300].decode("utf-8", "replace")}


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
