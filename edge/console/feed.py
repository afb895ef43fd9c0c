"""The console's live view of the fleet: what the office's `edge-gate sync` verified and stored.

The console never connects to the broker itself: the broker binds the client id to the login,
so a second connection under the office's login would take over the office sync's session,
and only what sync verified (signer = the topic's lane = a rostered key) may be shown. It reads
the office's fleet state the way `fleet status` and `fleet audit` do (`edge.fleet.office`), so
the console and the CLI cannot disagree. Decisions are polled in the background, kept in
memory, newest last, bounded; a page render never waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from edge.config import Config
from edge.console.follow import Followed, let_go, stamp
from edge.errors import FleetStateError
from edge.fleet.office import fleet_status
from edge.fleet.officestore import OfficeStore, office_reader

log = logging.getLogger(__name__)
MAX_DECISIONS = 20_000  # in memory; every record stays in the office's store (`fleet audit`)
POLL_S = 0.1  # how often the office's store is read for new decisions (one indexed read)
STATUS_EVERY_S = 1.0  # how often `fleet status` is read again (lanes, acknowledgements)


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
    """Status and decisions from the office's store, with an arrival counter for live pages."""

    def __init__(self, cfg: Config, max_decisions: int = MAX_DECISIONS):
        self.cfg = cfg
        self.site = cfg.fleet.site
        self.enabled = cfg.fleet.enabled and cfg.fleet.lane == "office"
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"site": self.site, "lanes": {}, "people": {}}
        self._decisions: deque[dict[str, Any]] = deque(maxlen=max_decisions)
        self._after = 0  # the store's last row read
        self.version = 0  # counts decisions that arrived: live pages wait for it to move
        self.connected = False  # the office's sync is connected to the broker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: Any = None  # the office's store, opened by the first poll
        self._store_file = Followed(cfg.resolve(cfg.fleet.state_db))  # its stamp then
        self._last: tuple | None = None  # the store's last row read (`audit_row`)
        self.error = ""  # why the last poll failed ("" when it worked)
        self._status_due = 0.0

    def start(self) -> FleetFeed:
        """Read the office's store in the background while the app runs."""
        if not self.enabled:
            return self
        self.poll_once()  # a store that cannot be read yet does not stop the console
        self._thread = threading.Thread(target=self._run, daemon=True, name="console-feed")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self.poll_once()

    def poll_once(self) -> None:
        """One poll that never raises: a failure (the store busy, damaged, being restored) is
        logged when it starts or changes, not ten times a second, and the header shows the
        fleet as not connected until a read works again."""
        try:
            self.poll()
        except Exception as e:
            with self._lock:
                self.connected = False
            if str(e) != self.error:
                log.warning("console feed read failed: %s", e)
            self.error = str(e)
            return
        if self.error:
            log.info("console feed reads again")
            self.error = ""

    def poll(self) -> None:
        """One read of the office's store: the decisions that arrived since, and (once a
        second) `fleet status`. A store not at its path is never made here: the office's sync
        may still write into the deleted file through the log and index left at the path, and
        the fix is to restore it from backup."""
        path = self.cfg.resolve(self.cfg.fleet.state_db)
        if not path.exists():
            raise FleetStateError(
                f"no office store at {path} (fleet.state_db)",
                "start the office's edge-gate sync; if the file was deleted, restore it from "
                "backup (the console makes none)",
            )
        if time.monotonic() >= self._status_due:
            self._status_due = time.monotonic() + STATUS_EVERY_S
            rep = fleet_status(self.cfg)
            lanes = {  # rostered lanes never heard too: the page says so
                n: {**v, "online": v["state"] == "ok"}
                for n, v in rep["lanes"].items()
                if n != "office" and (v["rostered"] or v["age_s"] is not None)
            }
            with self._lock:
                self._status = {"site": self.site, "lanes": lanes, "people": rep["people"]}
                self.connected = rep["sync"]["connected"] and rep["sync"]["running"]
        now = stamp(path)
        how = self._store_file.changed(now) if self._store is not None else ""
        if how:  # deleted, replaced or written over (a restore) while the console runs
            let_go(self._store.state)
            self._store = None
        if self._store is None:
            self._store = OfficeStore(office_reader(path, office=True))  # reads only: no lock
            self._store_file.opened(now)
        # Read-only, the feed cannot empty the log into the file as the console's own files
        # are: sync's checkpoints write over the file too. The last row read still there, the
        # same, says so; else the rows shown come from the file now there, read from its
        # start (the old file's rows are no longer held).
        if how and (
            how != "overwritten in place" or self._store.audit_row(self._after) != self._last
        ):
            log.error(
                "console fleet_store_moved path=%s: %s; reading the file now there", path, how
            )
            with self._lock:
                self._decisions.clear()
                self._after = 0
        after, rows = self._store.audit_after(self._after, kind="decision")
        if after != self._after:
            self._last = self._store.audit_row(after)
        with self._lock:
            self._after = after
            for r in rows:
                self._decisions.append(r)
                self.version += 1

    def add_rows(self, lanes: dict[str, dict[str, Any]], decisions: list[dict[str, Any]]) -> None:
        """Fill the feed directly (a benchmark without an office): lanes as `fleet status`
        shows them, decision rows as `fleet audit` gives them."""
        with self._lock:
            self._status = {
                "site": self.site,
                "lanes": {n: {**v, "online": v.get("state") == "ok"} for n, v in lanes.items()},
                "people": {},
            }
            for r in decisions:
                self._decisions.append(r)
                self.version += 1

    def close(self) -> None:
        """Stop reading."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._store is not None:
            self._store.state.close()
            self._store = None

    # --- reads (the app's threads) --------------------------------------------------------------

    def status(self, now: float | None = None) -> dict[str, Any]:
        """`fleet status` (lanes heard, people), as the feed last read it."""
        with self._lock:
            return dict(self._status)

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
