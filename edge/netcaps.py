"""Caps on connections for the project's small HTTP servers: the lane screen's page and the
staff console.

A client (or a scan of the network) that opens connections by the hundred and never finishes
them would otherwise use up the server's threads or file handles, and the lane's kiosk or the
staff could not load a page. Each server admits a connection through `ConnectionCaps`: over the
cap in all, or from one address, it is answered `BUSY` (503) at once, never read as a request,
and the refusals are logged once a minute with the count so far.
"""

from __future__ import annotations

import logging
import math
import threading
import time

REFUSAL_LOG_EVERY_S = 60.0
_BUSY_BODY = b"too many connections: try again"
BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class ConnectionCaps:
    """Open connections in all and per address. Thread-safe: a server may admit on one thread
    and free the slot on another. `exempt`: an address counted in all only (a local proxy
    whose clients are the whole staff, and which caps them itself)."""

    def __init__(
        self,
        max_connections: int,
        max_per_address: int,
        what: str,
        fix: str,
        log: logging.Logger,
        exempt: str | None = None,
    ):
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.what, self.fix, self.log, self.exempt = what, fix, log, exempt
        self.refused = 0
        self._open: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()
        self._logged = -math.inf

    def open_connections(self) -> int:
        with self._lock:
            return self._total

    def take(self, host: str) -> bool:
        """A slot for a new connection from `host`, or False (refused: the caller answers BUSY)."""
        with self._lock:
            taken = self._open.get(host, 0)
            if self._total < self.max_connections and (
                host == self.exempt or taken < self.max_per_address
            ):
                self._open[host] = taken + 1
                self._total += 1
                return True
            self.refused += 1
            total, refused = self._total, self.refused
            now = time.monotonic()
            say = now - self._logged >= REFUSAL_LOG_EVERY_S
            if say:
                self._logged = now
        if say:
            self.log.warning(
                "%s connection refused address=%s open=%d max=%d from_address=%d "
                "max_per_address=%d refused_so_far=%d: a client opens connections without end "
                "(fix: find it on the network; %s)",
                self.what, host, total, self.max_connections, taken, self.max_per_address,
                refused, self.fix,
            )  # fmt: skip
        return False

    def give_back(self, host: str) -> None:
        """The connection from `host` closed: its slot is free."""
        with self._lock:
            left = self._open.get(host, 0) - 1
            if left > 0:
                self._open[host] = left
            else:
                self._open.pop(host, None)
            self._total -= 1
