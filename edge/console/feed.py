"""The console's live view of the fleet: one MQTT subscription kept open while the app runs.

It reads what `fleet status` and `fleet audit` read (heartbeats, acks, the office's people
messages, every lane's audit records) and computes status with the same function
(`edge.fleet.office.status_of`), so the console and the CLI cannot disagree. Decisions are kept
in memory, newest last, bounded; a page render never waits for the broker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edge.config import Config
from edge.fleet import messages as msg
from edge.fleet.office import audit_row, status_filters, status_of

log = logging.getLogger(__name__)
MAX_DECISIONS = 20_000  # in memory; older ones stay on the broker (`fleet audit`)


@dataclass(frozen=True)
class DecisionFilter:
    """What the decisions page asks for: lane, reason, outcome, from a time on."""

    lane: str = ""
    reason: str = ""
    decision: str = ""  # grant | deny | ""
    since: float = 0.0

    def matches(self, r: dict[str, Any]) -> bool:
        """Whether one decision row passes every filter that is set."""
        return (
            (not self.lane or r.get("lane") == self.lane)
            and (not self.reason or r.get("reason") == self.reason)
            and (not self.decision or r.get("decision") == self.decision)
            and float(r.get("t", 0)) >= self.since
        )


class FleetFeed:
    """Latest retained status messages, and decisions with an arrival counter for live pages."""

    def __init__(self, cfg: Config, max_decisions: int = MAX_DECISIONS):
        self.cfg = cfg
        self.site = cfg.fleet.site
        self.enabled = cfg.fleet.enabled
        self._lock = threading.Lock()
        self._status: dict[str, msg.Message] = {}  # topic -> latest message
        self._decisions: deque[dict[str, Any]] = deque(maxlen=max_decisions)
        self._seen: set[tuple[str, int]] = set()
        self.version = 0  # counts decisions that arrived: live pages wait for it to move
        self.connected = False
        self._client = None

    # --- MQTT (paho's thread) -------------------------------------------------------------------

    def start(self) -> FleetFeed:
        """Connect in the background; reconnects on its own while the app runs."""
        if not self.enabled:
            return self
        from edge.fleet.client import make_client

        c, addr = make_client(
            self.cfg, f"edge-gate-{self.site}-console-{os.getpid()}", persistent=False
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.connect_async(addr.host, addr.port, keepalive=10)
        c.loop_start()
        self._client = c
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("console broker refused connection: %s", reason_code)
            return
        filters = [*status_filters(self.site), msg.topics(self.site)["audit"]]
        client.subscribe([(f, 1) for f in filters])
        self.connected = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False

    def _on_message(self, client, userdata, message) -> None:
        try:
            m = msg.decode(message.payload, self.site)
        except msg.MessageError:
            return
        self.add(message.topic, [m])

    def add(self, topic: str, messages: Iterable[msg.Message]) -> None:
        """Take messages in (from MQTT, or from a test or benchmark feeding them directly)."""
        with self._lock:
            for m in messages:
                row = audit_row(m)
                if row is None:
                    self._status[topic] = m
                elif row.get("kind") == "decision" and (m.lane, m.seq) not in self._seen:
                    if len(self._seen) >= 4 * (self._decisions.maxlen or 1):
                        self._seen = {(r["lane"], r["seq"]) for r in self._decisions}
                    self._seen.add((m.lane, m.seq))
                    self._decisions.append(row)
                    self.version += 1

    def close(self) -> None:
        """Disconnect."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    # --- reads (the app's threads) --------------------------------------------------------------

    def status(self, now: float | None = None) -> dict[str, Any]:
        """`fleet status`, from what the feed holds now."""
        with self._lock:
            got = list(self._status.values())
        return status_of(self.site, got, time.time() if now is None else now)

    def decisions(self, f: DecisionFilter, limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` decisions that pass the filter, newest first."""
        out: list[dict[str, Any]] = []
        with self._lock:
            rows = list(self._decisions)
        for r in reversed(rows):
            if f.matches(r):
                out.append(r)
                if len(out) >= limit:
                    break
        return out

    def decisions_after(self, version: int, f: DecisionFilter) -> tuple[int, list[dict]]:
        """Decisions that arrived after `version` and pass the filter (oldest first)."""
        with self._lock:
            v = self.version
            n = min(v - version, len(self._decisions))
            rows = list(self._decisions)[len(self._decisions) - n :] if n > 0 else []
        return v, [r for r in rows if f.matches(r)]

    def ticket_usage(self, ticket_id: str) -> list[dict[str, Any]]:
        """Every decision about one ticket at any lane, newest first."""
        with self._lock:
            rows = list(self._decisions)
        return [
            r
            for r in reversed(rows)
            if r.get("subject") == ticket_id or r.get("detail") == ticket_id
        ]

    def reasons(self) -> list[str]:
        """The refusal and grant reasons seen so far, for the filter's menu."""
        with self._lock:
            return sorted({str(r.get("reason", "")) for r in self._decisions} - {""})
