"""The gate's ticket desk from a config: open the ledger, set it up, verify and redeem inputs.

The CLI and the daemon both come here, so `ticket verify --config C` sees exactly what the gate
sees: the same keys, products, revocations, ledger, gate id, time zone and high-water mark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from edge import config as config_mod
from edge.errors import EdgeGateError, ImageError, LedgerError
from edge.tickets.format import PREFIX, Reason
from edge.tickets.keys import load_public
from edge.tickets.ledger import Ledger, LedgerMark, MarkStore, init_ledger, site_zone
from edge.tickets.revocation import load_revocations
from edge.tickets.verifier import Verifier

log = logging.getLogger(__name__)


def open_ledger(cfg: config_mod.Config, marks: MarkStore | None = None) -> Ledger:
    """The gate's ledger, checked against the mark kept in `marks` (the audit log); in a fleet,
    with its outbox and behind the fleet link check (edge/fleet/lane.py)."""
    led = Ledger(
        cfg.resolve(cfg.tickets.ledger),
        cfg.gate.id,
        cfg.tickets.antipassback_s,
        site_zone(cfg.gate.timezone),
        marks,
        outbox=cfg.fleet.enabled,
    )
    if not cfg.fleet.enabled:
        return led
    from edge.fleet.lane import LaneLedger
    from edge.fleet.state import LaneGuard

    return LaneLedger(led, LaneGuard(cfg))


class UnavailableLedger:
    """Stands in for a ledger that could not be opened: every redemption is a LedgerError."""

    def __init__(self, problem: str):
        self.problem = problem

    def redeem(self, t, now: float, *rule_and_upload):
        """Refuse: an entry that cannot be counted is not granted."""
        raise LedgerError(self.problem)

    def close(self) -> None:
        """Nothing to close."""


def open_gate_ledger(cfg: config_mod.Config, audit, now: float) -> Ledger | UnavailableLedger:
    """The daemon's ledger; if it cannot be opened, a stand-in that refuses, logged and audited."""
    try:
        return open_ledger(cfg, audit)
    except EdgeGateError as e:
        from edge.gate.audit import AuditRecord

        log.error("gate LEDGER_ERROR every ticket is refused: %s", e)
        audit.record(
            AuditRecord(now, cfg.gate.id, "system", reason=Reason.LEDGER_ERROR, detail=str(e)[:300])
        )
        return UnavailableLedger(str(e))


def configured_revocations(cfg: config_mod.Config) -> frozenset[str]:
    """The gate's revocation list; a configured list that cannot be read raises (never "none")."""
    return load_revocations(
        cfg.resolve(cfg.tickets.revocation_list) if cfg.tickets.revocation_list else None
    )


def gate_verifier(
    cfg: config_mod.Config, pubkeys: list[str] | None = None, keys: list | None = None
) -> Verifier:
    """The gate's verifier: its issuer keys, products, revocation list and clock skew."""
    if keys is None:
        from edge.fleet.state import fleet_pubkey_paths

        paths = pubkeys or [str(cfg.resolve(p)) for p in cfg.tickets.pubkeys] + [
            str(p) for p in fleet_pubkey_paths(cfg)
        ]
        keys = [load_public(Path(p)) for p in paths]
    return Verifier(keys, cfg.gate.products, configured_revocations(cfg), cfg.tickets.clock_skew_s)


def init_gate_ledger(path: Path, audit=None, after_loss: bool = False, gate: str = "") -> str:
    """`edge-gate ledger init`: create the ledger; after a loss, adopt it with an audit record.

    Without `after_loss` a ledger that the audit log's mark does not match is refused, so a
    deleted or older ledger is never quietly replaced.
    """
    path, created = init_ledger(path)
    state = "created" if created else "already exists"
    if audit is None:
        return f"ledger {path} {state}"
    with Ledger(path) as led:
        here: LedgerMark = led.mark()
    seen = audit.ledger_mark()
    if seen is None or seen == here or (seen.ledger_id == here.ledger_id and seen.seq <= here.seq):
        audit.set_ledger_mark(here)
        return f"ledger {path} {state} ({here.seq} redemptions)"
    if not after_loss:
        raise LedgerError(
            f"ledger {path} holds {here.seq} redemptions of ledger {here.ledger_id[:8]}; the "
            f"audit log recorded {seen.seq} of ledger {seen.ledger_id[:8]}: redemptions are lost",
            "restore the newest backup; if there is none, run again with --after-loss (recorded "
            "in the audit log; revoke one-time tickets sold before the loss if you can)",
        )
    from edge.gate.audit import AuditRecord

    audit.replace_ledger_mark(
        here,
        AuditRecord(
            time.time(),
            gate,
            "ledger",
            reason="ledger_replaced",
            detail=f"ledger {seen.ledger_id[:8]} seq {seen.seq} lost; now {here.ledger_id[:8]} "
            f"seq {here.seq}",
        ),
    )
    return (
        f"ledger {path} {state} and adopted; the audit log had counted {seen.seq} redemptions "
        f"of ledger {seen.ledger_id[:8]}: the loss is recorded there"
    )


def texts_from_input(item: str) -> list[str]:
    """An argument is an image file (every code in it) or the ticket text itself."""
    p = Path(item)
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif") or p.is_file():
        from edge.tickets.qr import read_codes
        from edge.vision.image import load_image

        return read_codes(load_image(p))
    return [item]


def pick_ticket_text(texts: list[str]) -> str | None:
    """Of all codes in an image, the one like a ticket, else the first (refused later)."""
    return next((t for t in texts if t.startswith(PREFIX)), texts[0] if texts else None)


@dataclass
class Desk:
    """A verifier and, optionally, a ledger (and the audit log that records redemptions)."""

    verifier: Verifier
    ledger: Ledger | None = None
    audit: object | None = None  # edge.gate.audit.AuditLog when verifying with a gate config
    gate: str = ""
    ledger_problem: str = ""  # why the ledger could not be opened: every ticket is refused


@dataclass(frozen=True)
class DeskOptions:
    """`ticket verify`'s choices: a gate config, and flags that override it (or stand alone)."""

    config: Path | None = None
    pubkeys: tuple[str, ...] = ()
    db: str | None = None
    gate: str | None = None
    products: tuple[str, ...] = ()
    revocations: str | None = None
    skew: float | None = None
    antipassback: float | None = None
    redeem: bool = False
    pretix_dir: str | None = None  # decide pretix secrets from this folder (pretix_desk)


def with_pretix(cfg: config_mod.Config, edge: Verifier | None, pretix_dir: str | None = None):
    """The gate's verifier, deciding pretix secrets too when a pretix folder is configured."""
    folder = pretix_dir or (str(cfg.resolve(cfg.pretix.dir)) if cfg.pretix.enabled else None)
    if folder is None:
        return edge
    from edge.tickets.pretix_desk import load_verifier

    return load_verifier(folder, edge, cfg.pretix.gate)


def open_desk(opts: DeskOptions, stack: ExitStack) -> Desk:
    """The verifier and ledger from the gate's config (flags override it); closed with `stack`."""
    from edge.gate.audit import AuditLog

    cfg = config_mod.load(opts.config) if opts.config else config_mod.Config()
    cfg = config_mod.override(
        cfg,
        gate={"id": opts.gate, "products": opts.products or None},
        tickets={
            "ledger": str(Path(opts.db).resolve()) if opts.db else None,
            "revocation_list": str(Path(opts.revocations).resolve()) if opts.revocations else None,
            "clock_skew_s": opts.skew,
            "antipassback_s": opts.antipassback,
        },
    )
    if not opts.config and not opts.pubkeys and not opts.pretix_dir:
        raise EdgeGateError(
            "no issuer key",
            "pass --config C (the gate's), --pubkey issuer.pub or --pretix-dir DIR",
        )
    edge = gate_verifier(cfg, list(opts.pubkeys)) if opts.config or opts.pubkeys else None
    desk = Desk(with_pretix(cfg, edge, opts.pretix_dir), gate=cfg.gate.id)
    if not opts.config and not opts.db:
        if opts.redeem:
            raise EdgeGateError("--redeem needs a ledger", "pass --config C or --db LEDGER")
        return desk  # signature, validity and revocation only
    if opts.config:
        desk.audit = stack.enter_context(
            AuditLog(cfg.resolve(cfg.audit.path), cfg.audit.retention_days)
        )
    try:
        desk.ledger = stack.enter_context(open_ledger(cfg, desk.audit))
    except LedgerError as e:
        desk.ledger_problem = str(e)
    return desk


def verify_tickets(opts: DeskOptions, inputs: list[str], now: float) -> Iterator[dict]:
    """`ticket verify`: one result per input, as the gate configured by `opts` would decide."""
    with ExitStack() as stack:
        yield from verify_inputs(open_desk(opts, stack), inputs, opts.redeem, now)


def verify_inputs(desk: Desk, inputs: list[str], redeem: bool, now: float) -> Iterator[dict]:
    """One JSON-ready result per input: valid, reason, ticket id; a spent ticket is not valid."""
    for item in inputs:
        out: dict = {"input": item, "valid": False, "reason": Reason.MALFORMED, "ticket_id": None}
        try:
            texts = texts_from_input(item)
        except ImageError as e:
            texts, out["detail"] = [], str(e)
        if not texts:
            out.setdefault("detail", "no code found")
        text = pick_ticket_text(texts)
        if text is not None:
            v = desk.verifier.verify(text, now)
            out.update(valid=v.valid, reason=v.reason, ticket_id=v.ticket_id)
            if v.detail:
                out["detail"] = v.detail
            if hasattr(v, "pretix_reason"):  # a pretix secret: pretix's rule, its upload queue
                from edge.tickets.pretix_desk import desk_result

                out.update(
                    desk_result(desk.ledger, desk.ledger_problem, desk.verifier, v, redeem, now)
                )
            elif v.valid and desk.ledger_problem:
                out.update(valid=False, reason=Reason.LEDGER_ERROR, detail=desk.ledger_problem)
            elif v.valid and desk.ledger is not None:
                r = (
                    desk.ledger.redeem(v.ticket, now)
                    if redeem
                    else desk.ledger.check(v.ticket, now)
                )
                out.update(valid=r.ok, reason=r.reason, entries_used=r.entries_used)
                if r.detail:
                    out["detail"] = r.detail
        if redeem and desk.audit is not None:
            _record(desk, out, now)
        yield out


def _record(desk: Desk, out: dict, now: float) -> None:
    from edge.gate.audit import AuditRecord

    desk.audit.record(
        AuditRecord(
            now,
            desk.gate,
            "decision",
            "grant" if out["valid"] else "deny",
            "ticket",
            out["ticket_id"] or "",
            None,
            str(out["reason"]),
            "ticket verify --redeem",
        )
    )
