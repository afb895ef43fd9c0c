"""systemd's sd_notify protocol (READY, WATCHDOG, STATUS, STOPPING), in a few lines of stdlib.

A datagram to $NOTIFY_SOCKET; outside systemd (no socket) every call is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator


class Notifier:
    """Tell systemd the gate is up, what it is doing, and that it is still alive."""

    def __init__(self, env: dict[str, str] | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        self.addr = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() else 0.0
        self._sock = None
        self._last_ping = 0.0
        self._wait_until = 0.0  # while a bounded wait runs: when its pings stop (0: none runs)
        self._feeder: threading.Thread | None = None
        if self.addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, *fields: str) -> None:
        """Send raw sd_notify fields; a no-op outside systemd, never fatal to the gate."""
        if self._sock is None:
            return
        # systemd gone or socket full: the service must not die of it
        with contextlib.suppress(OSError):
            self._sock.sendto("\n".join(fields).encode(), self.addr)

    def ready(self, status: str = "") -> None:
        """Tell systemd start-up is done, so `systemctl start` returns only when it is."""
        self.send("READY=1", f"STATUS={status}") if status else self.send("READY=1")

    def status(self, text: str) -> None:
        """Show the gate's state in `systemctl status` for the installer."""
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Ping at most every half watchdog interval; call it from the frame loop only."""
        if not self.watchdog_s:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_s / 2:
            self._last_ping = now
            self.send("WATCHDOG=1")

    @contextlib.contextmanager
    def bounded_wait(self, bound_s: float) -> Iterator[None]:
        """Keep pinging, for at most `bound_s`, while the loop waits on something that ends by
        itself: a store's busy timeout while another process holds its lock is no hang, but it
        can outlast WatchdogSec. A wait past `bound_s` stops the pings (a hang is still one).
        Entered around every step that writes, so it costs a comparison: one feeder thread,
        started once, pings while a wait runs."""
        if not self.watchdog_s or self._sock is None:
            yield
            return
        now = time.monotonic()
        # the loop's last ping may be nearly half an interval old already: with the feeder's
        # next one up to three quarters of an interval away, the gap could pass WatchdogSec
        if now - self._last_ping >= self.watchdog_s / 4:
            self._last_ping = now
            self.send("WATCHDOG=1")
        if self._feeder is None:
            self._feeder = threading.Thread(target=self._feed, name="watchdog-wait", daemon=True)
            self._feeder.start()
        self._wait_until = now + bound_s
        try:
            yield
        finally:
            self._wait_until = 0.0

    def _feed(self) -> None:
        """Every quarter interval: ping if a bounded wait runs and the last ping is half an
        interval old (so pings are never more than three quarters of an interval apart)."""
        while True:
            time.sleep(self.watchdog_s / 4)
            now = time.monotonic()
            if now < self._wait_until and now - self._last_ping >= self.watchdog_s / 2:
                self._last_ping = now
                self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """Tell systemd a shutdown is deliberate, not a crash."""
        self.send("STOPPING=1")

    def reloading(self) -> None:
        """Tell systemd a reload (new keys, gallery, revocations) is under way."""
        self.send("RELOADING=1")
