"""A lane's ticket path built from its config: keys (own and office-published), revocations,
the ledger (with its outbox when in a fleet) and the link check; one place for the gate daemon
and `edge-gate ticket verify --config`.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge import tickets as tk
from edge.config import Config
from edge.fleet.state import LaneGuard
from edge.tickets.ledger import Ledger, Redemption


def revocation_path(cfg: Config) -> Path | None:
    return cfg.resolve(cfg.tickets.revocation_list) if cfg.tickets.revocation_list else None


def lane_verifier(cfg: Config) -> tk.Verifier:
    """The gate's verifier: its own and office-published keys, its revocation list."""
    from edge.gate import checks

    keys, revoked = checks.ticket_keys(cfg), checks.revocations(cfg)
    return tk.Verifier(keys, cfg.gate.products, revoked, cfg.tickets.clock_skew_s)


def lane_ledger(cfg: Config) -> Ledger:
    return Ledger(
        cfg.resolve(cfg.tickets.ledger),
        cfg.gate.id,
        cfg.tickets.antipassback_s,
        outbox=cfg.fleet.enabled,
    )


def tickets_stamp(cfg: Config) -> tuple:
    """Changes when the office's revocations or keys reached this lane (files sync writes)."""
    out = []
    for p in (revocation_path(cfg), cfg.resolve(cfg.fleet.keys_dir) if cfg.fleet.enabled else None):
        try:
            out.append(os.stat(p).st_mtime_ns if p else None)
        except OSError:
            out.append(None)
    return tuple(out)


def redeem(ledger: Ledger, guard: LaneGuard, ticket: tk.Ticket, now: float) -> Redemption:
    """The link check (offline deny, clock skew), then the ledger; either may refuse."""
    link = guard.check(now)
    if not link.ok:
        return Redemption(False, link.reason, 0, link.detail)
    return ledger.redeem(ticket, now)
