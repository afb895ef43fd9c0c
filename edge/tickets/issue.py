"""The office side: turn an operator's request into a signed ticket and its PNG, refusing mistakes.

An expiry is required (or an explicit "no expiry"), entry counts are checked, the id uses a fixed
character set, and an existing PNG is never overwritten (two tickets with one id would share a
ledger count and a revocation).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2

from edge.errors import TicketError
from edge.tickets.format import Kind, Ticket, check_ticket_id, sign
from edge.tickets.keys import load_private
from edge.tickets.qr import render_ticket
from edge.timeutil import iso, parse_time


@dataclass(frozen=True)
class IssueRequest:
    """What the operator asked for, as typed (times as text)."""

    ticket_id: str
    product: str = "day"
    valid_from: str | None = None
    valid_until: str | None = None
    no_expiry: bool = False
    entries: int = 1
    season_per_day: int = 0
    holder: str = ""
    zone: dt.tzinfo = dt.UTC  # dates typed without an offset are in it (the CLI: the site's)
    allow_expired: bool = False  # tests and demos only: a ticket already past its expiry


@dataclass(frozen=True)
class Issued:
    """A written ticket: its QR text, the PNG, and the validity window to show the operator."""

    text: str
    path: Path
    ticket: Ticket

    @property
    def window(self) -> str:
        """'FROM .. UNTIL' in UTC, or 'FROM .. no expiry' ('any time' for no start)."""
        t = self.ticket
        start = iso(t.valid_from) if t.valid_from else "any time"
        return f"{start} .. {iso(t.valid_until) if t.valid_until else 'no expiry'}"


def make_ticket(req: IssueRequest, now: float | None = None) -> Ticket:
    """Validate a request into an unsigned Ticket."""
    check_ticket_id(req.ticket_id)
    if req.no_expiry == bool(req.valid_until):
        raise TicketError(
            "give either --valid-until or --no-expiry"
            + (" (not both)" if req.no_expiry else ": a ticket without expiry is valid forever"),
            "e.g. --valid-until 2026-12-31 (end of that day in the site's zone, gate.timezone)",
        )
    if not 1 <= req.entries <= 0xFFFF:
        raise TicketError(f"--entries {req.entries} is out of range", "use 1..65535")
    if not 0 <= req.season_per_day <= 0xFFFF:
        raise TicketError(f"--season-per-day {req.season_per_day} is out of range", "use 1..65535")
    if req.season_per_day and req.entries != 1:
        raise TicketError("--entries and --season-per-day exclude each other", "choose one")
    kind, count = Kind.ONE_TIME, 1
    if req.season_per_day:
        kind, count = Kind.SEASON, req.season_per_day
    elif req.entries > 1:
        kind, count = Kind.ENTRIES, req.entries
    now = int(now or time.time())
    vu = 0 if req.no_expiry else parse_time(req.valid_until or "", req.zone, end_of_day=True)
    if vu and vu < now and not req.allow_expired:  # said first: the usual mistake is the year
        raise TicketError(
            f"--valid-until {req.valid_until} ({iso(vu)}) is already past: every gate would "
            "refuse this ticket as expired",
            "give a date still to come, or --allow-expired to make an expired ticket on purpose "
            "(tests)",
        )
    # no --valid-from: valid from now, or (an expired ticket made on purpose) up to its end
    vf = parse_time(req.valid_from, req.zone) if req.valid_from else min(now, vu or now)
    if vu and vu < vf:
        raise TicketError(f"--valid-until {req.valid_until} is before the start {iso(vf)}")
    return Ticket(req.ticket_id, req.product, vf, vu, kind, count, req.holder)


def issue_ticket(key_path: Path, req: IssueRequest, out_dir: Path) -> Issued:
    """Sign the ticket and write OUT/ID.png (never overwriting) with the code and its text."""
    ticket = make_ticket(req)
    path = Path(out_dir) / f"{ticket.ticket_id}.png"
    if path.exists():
        raise TicketError(
            f"{path} already exists: ticket {ticket.ticket_id} was issued before",
            "use a new --id (reusing one would share its entries and revocation)",
        )
    key = load_private(key_path)
    text = sign(ticket, key)
    ticket = replace(ticket, key_id=b"")
    entries = {
        Kind.ONE_TIME: "1 entry",
        Kind.ENTRIES: f"{ticket.count} entries",
        Kind.SEASON: f"season, {ticket.count}/day",
    }[ticket.kind]
    issued = Issued(text, path, ticket)
    img = render_ticket(
        text, [f"{ticket.ticket_id}  {ticket.product}  {entries}", issued.window, text]
    )
    ok, png = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - encoding a generated image does not fail
        raise TicketError(f"cannot encode {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as f:
            f.write(png.tobytes())
    except FileExistsError:
        raise TicketError(f"{path} already exists", "use a new --id") from None
    except OSError as e:
        raise TicketError(
            f"cannot write {path}: {e.strerror}", "check the folder is writable"
        ) from None
    return issued
