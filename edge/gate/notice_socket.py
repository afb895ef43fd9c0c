"""The lane screen's sink: each visitor notice as one datagram on a local Unix socket.

The gate runs with PrivateNetwork=yes; a Unix datagram socket on the filesystem is its one way
to the screen process (`edge-gate screen`, which binds the socket). Sending never blocks and
never raises into the gate: with no screen listening (not started, restarting, too slow) the
notice is dropped and counted, and a warning is logged at most once a minute.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

log = logging.getLogger(__name__)
WARN_EVERY_S = 60.0
MAX_DATAGRAM = 4096
MAX_SOCKET_PATH = 107  # bytes in a Unix socket's address on Linux (sun_path, less its NUL)


def path_problem(path: str | Path) -> ConfigError | None:
    """Why no socket can ever be at `path` (longer than a Unix socket address), or None."""
    n = len(os.fsencode(path))
    if n <= MAX_SOCKET_PATH:
        return None
    return ConfigError(
        f"screen.socket {path}: {n} bytes, longer than a Unix socket path may be "
        f"({MAX_SOCKET_PATH})",
        'choose a shorter path, e.g. socket = "/run/edge-gate-screen/notices.sock" in [screen] '
        "of the gate's config (the screen reads the same one)",
    )


def notice_json(notice: Any) -> dict[str, Any]:
    """The contract's JSON object (edge/gate/notices.py) from a Notice or a dict."""
    if isinstance(notice, dict):
        return notice
    to_json = getattr(notice, "to_json", None)
    if callable(to_json):
        out = to_json()
        return json.loads(out) if isinstance(out, (str, bytes)) else dict(out)
    if dataclasses.is_dataclass(notice) and not isinstance(notice, type):
        return dataclasses.asdict(notice)
    raise TypeError(f"not a notice: {type(notice).__name__}")


class SocketSink:
    """Send notices to the screen's socket (`[screen] socket`); a callable the gate fans out to."""

    def __init__(self, path: str | Path, clock=time.monotonic):
        self.path = str(path)
        self.clock = clock
        self.sent = 0
        self.dropped = 0
        self._warned = float("-inf")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def send(self, notice: Any) -> None:
        """Send one notice (a `notices.Notice`, or its JSON form); never raises, never waits."""
        try:
            data = json.dumps(notice_json(notice), separators=(",", ":")).encode()
            if len(data) > MAX_DATAGRAM:
                raise ValueError(f"notice of {len(data)} bytes")
            self.sock.sendto(data, self.path)
            self.sent += 1
        except Exception as e:  # no screen, a full queue, a bad notice: the gate goes on
            self.dropped += 1
            now = self.clock()
            if now - self._warned >= WARN_EVERY_S:
                self._warned = now
                log.warning(
                    "screen notice dropped socket=%s reason=%s (%d dropped so far)",
                    self.path,
                    e,
                    self.dropped,
                )

    def close(self) -> None:
        """Release the socket."""
        self.sock.close()
