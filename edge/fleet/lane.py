"""A lane's ticket path in a fleet: the ledger (with its outbox) behind the fleet link check.

`edge.gate.desk.open_ledger` wraps the gate's ledger in a `LaneLedger` when `[fleet]` is set,
so the daemon and `edge-gate ticket verify --config C` refuse tickets the same way when the lane
is cut off with `fleet.offline = "deny"`, or when its clock is off from the fleet's. The gate's
other doors to what sync leaves on disk are here too: its status and versions for the heartbeat,
and the inbox of a supervisor's overrides (edge/fleet/override.py).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from edge.config import Config
from edge.errors import EdgeGateError
from edge.files import content_stamp
from edge.fleet.override import OverrideInbox
from edge.fleet.state import LaneGuard, LinkCheck
from edge.gate.versions import lane_versions
from edge.tickets.format import Ticket
from edge.tickets.ledger import Ledger, LedgerMark, Redemption

log = logging.getLogger(__name__)


class LaneLedger:
    """A Ledger whose check and redeem first ask the fleet link (the wrapped one: `.ledger`)."""

    def __init__(self, ledger: Ledger, guard: LaneGuard):
        self.ledger, self.guard = ledger, guard

    @property
    def problem(self) -> str:
        """Why the ledger refuses every ticket ("" when it does not)."""
        return self.ledger.problem

    @property
    def outbox(self) -> bool:
        """True: every redemption is queued for `edge-gate sync` in its own transaction."""
        return self.ledger.outbox

    def mark(self) -> LedgerMark:
        """The ledger's high-water mark (see Ledger.mark)."""
        return self.ledger.mark()

    def clock_behind(self, now: float) -> float | None:
        """The newest recorded time when `now` is behind it (see Ledger.clock_behind)."""
        return self.ledger.clock_behind(now)

    def lower_clock_floor(self, now: float) -> None:
        """See Ledger.lower_clock_floor."""
        self.ledger.lower_clock_floor(now)

    def maintain(self) -> None:
        """Verify and key what sync wrote (see Ledger.maintain)."""
        self.ledger.maintain()

    def __enter__(self) -> LaneLedger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _link(self, now: float) -> Redemption | None:
        link = self.guard.check(now)
        return None if link.ok else Redemption(False, link.reason, 0, link.detail)

    def check(self, t: Ticket, now: float, rule=None) -> Redemption:
        """What redeem would answer now: the link first, then the ledger."""
        return self._link(now) or self.ledger.check(t, now, rule)

    def redeem(self, t: Ticket, now: float, rule=None, upload=None) -> Redemption:
        """The link check, then the ledger: its commit is the moment the entry counts."""
        return self._link(now) or self.ledger.redeem(t, now, rule, upload)

    def close(self) -> None:
        """Release both the fleet state and the ledger that the gate opened."""
        self.guard.close()
        self.ledger.close()


def tickets_stamp(cfg: Config) -> tuple:
    """Changes when the office's revocations or keys reached this lane (files sync writes), by
    what they hold, not only their times (edge.files.content_stamp)."""
    rev = cfg.resolve(cfg.tickets.revocation_list) if cfg.tickets.revocation_list else None
    keys = cfg.resolve(cfg.fleet.keys_dir) if cfg.fleet.enabled else None
    pubs: tuple = ()
    if keys is not None:
        with contextlib.suppress(OSError):
            pubs = tuple((p.name, content_stamp(p)) for p in sorted(keys.glob("*.pub")))
    return (content_stamp(rev) if rev else None, pubs)


def face_refusal(ledger: object) -> LinkCheck | None:
    """Why a fleet lane may not grant by face now (a forget list still to replay), or None."""
    if isinstance(ledger, LaneLedger):
        c = ledger.guard.check_faces()
        return None if c.ok else c
    return None


def report_status(ledger: object, **status: Any) -> None:
    """The gate's figures for sync's heartbeat, when its ledger is a fleet lane's."""
    if isinstance(ledger, LaneLedger):
        ledger.guard.report(**status)


def report_versions(ledger: object, cfg: Config, face_on: bool) -> None:
    """What the gate runs (models, config version) for sync's heartbeat, at start and reload."""
    if isinstance(ledger, LaneLedger):
        try:
            ledger.guard.report_versions(lane_versions(cfg, face_on))
        except EdgeGateError as e:  # a busy or full disk: the heartbeat goes without them
            log.warning("gate versions not reported: %s", e)


def open_overrides(cfg: Config) -> OverrideInbox | None:
    """The gate's inbox of supervisor overrides (edge/fleet/override.py): None alone or at
    the office."""
    return OverrideInbox.open(cfg)
