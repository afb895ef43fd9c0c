"""pretix tickets at a lane: one verifier for both kinds of code, the ledger, the upload queue.

The gate and `ticket verify --pretix-dir` come here. A scanned code is routed by its shape
(`pretix_offline.is_pretix_text`): edge-gate tickets go to the edge-gate verifier unchanged,
everything else is decided as pretixSCAN decides it offline. A pretix entry is counted by the
same ledger as edge-gate tickets (so the fleet shares it and a second lane refuses it), under
pretix's rule instead of the ledger's count; the check-in for the shop (granted or refused) is
queued in the ledger's upload outbox in the transaction that decides it, for `edge-gate pretix
sync` to send with a nonce.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ConfigError
from edge.tickets import pretix_offline as po
from edge.tickets.format import Reason, Ticket
from edge.tickets.ledger import Ledger, Redemption
from edge.tickets.pretix_sig1 import Sig1Ticket, canonical
from edge.tickets.verifier import Verdict, Verifier

log = logging.getLogger(__name__)

REDEEM = "pretix.redeem"  # upload kind: checkinrpc/redeem (an entry the lane granted)
FAILED = "pretix.failed"  # upload kind: checkinlists/<id>/failed_checkins (a refused scan)
MAX_RAW = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class PretixTicket(Ticket):
    """A ledger ticket for a pretix secret, carrying what its check-in upload needs."""

    secret: str = ""
    sig1: Sig1Ticket | None = None


@dataclass(frozen=True)
class PretixVerdict(Verdict):
    """A Verdict with pretix's own word for it (`pretix_reason`) and the code it was made on."""

    pretix_reason: str = ""
    text: str = ""
    sig1: Sig1Ticket | None = None


def scan_time(now: float) -> str:
    """The scan's datetime as pretix takes it: ISO 8601 with milliseconds and offset."""
    return dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds")


def _raw_barcode(text: str) -> str:
    """What pretixSCAN sends as raw_barcode: the text, or "binary:" + base64 with control bytes."""
    text = text[:MAX_RAW]
    if _CONTROL.search(text):
        return "binary:" + base64.b64encode(text.encode("utf-8", "replace")).decode("ascii")
    return text


def redeem_row(data: po.PretixData, secret: str, now: float) -> tuple[str, str]:
    """The checkinrpc/redeem call for an entry the lane granted offline: `force` (it happened),
    the scan's own datetime, and a nonce so a repeated upload counts once."""
    body = {
        "secret": canonical(secret),
        "source_type": "barcode",
        "lists": [data.checkin_list.id],
        "type": "entry",
        "force": True,
        "ignore_unpaid": False,
        "questions_supported": False,
        "datetime": scan_time(now),
        "nonce": secrets.token_urlsafe(24),
    }
    return REDEEM, json.dumps(
        {"list": data.checkin_list.id, "event": data.event.slug, "body": body}
    )


def failed_row(
    data: po.PretixData, text: str, pretix_reason: str, sig1: Sig1Ticket | None, now: float
) -> tuple[str, str]:
    """The failed_checkins call for a refused scan, as pretixSCAN queues it."""
    body: dict[str, Any] = {
        "raw_barcode": _raw_barcode(text.strip()),
        "error_reason": pretix_reason if pretix_reason in po.PRETIX_REASONS else po.ERROR,
        "datetime": scan_time(now),
        "type": "entry",
        "nonce": secrets.token_urlsafe(24),
    }
    if sig1 is not None and pretix_reason not in (po.REVOKED, po.BLOCKED):
        for key, value in (
            ("raw_item", sig1.item),
            ("raw_variation", sig1.variation),
            ("raw_subevent", sig1.subevent),
        ):
            if value > 0:
                body[key] = value
    return FAILED, json.dumps(
        {"list": data.checkin_list.id, "event": data.event.slug, "body": body}
    )


class PretixVerifier:
    """The lane's verifier: edge-gate tickets as before, pretix secrets from the pretix folder.

    Stateless like `Verifier` (no I/O after construction); the entry-history part of pretix's
    decision happens in `redeem`, inside the ledger's transaction.
    """

    def __init__(self, edge: Verifier | None, data: po.PretixData, gate: int | None = None):
        self.edge, self.data, self.gate = edge, data, gate

    def is_pretix(self, text: str) -> bool:
        """Whether this code is decided the pretix way."""
        return self.edge is None or po.is_pretix_text(text)

    def decision(self, text: str, now: float | dt.datetime) -> po.PretixDecision:
        """The stateless part of pretix's decision (no earlier entries considered)."""
        return po.check_secret(self.data, text, now)

    def verify(self, text: str, now: float) -> Verdict:
        """Decide offline whether a scanned code is genuine and valid now."""
        if self.edge is not None and not po.is_pretix_text(text):
            return self.edge.verify(text, now)
        d = self.decision(text, now)
        ticket = self.ticket(text, d.sig1) if d.sig1 is not None else None
        return PretixVerdict(
            d.valid, str(d.reason), ticket, d.detail, d.pretix_reason, text.strip(), d.sig1
        )

    def ticket(self, text: str, sig1: Sig1Ticket) -> PretixTicket:
        """The ledger ticket of a genuine secret."""
        fields = dataclasses.asdict(po.ledger_ticket(self.data, sig1))
        if "text" in fields:  # a ticket names itself by its signed text in fleet redemptions
            fields["text"] = canonical(text)
        return PretixTicket(**fields, secret=canonical(text), sig1=sig1)


@dataclass
class PretixEntry:
    """`redeem`'s answer: the ledger's, plus pretix's word for it."""

    redemption: Redemption
    pretix_reason: str


class _EntryRule:
    """pretix's entry rule, run by the ledger inside its transaction with the ticket's earlier
    entries; it remembers its decision, for pretix's word."""

    def __init__(self, v: PretixVerifier, t: PretixTicket, now: float):
        self.v, self.t, self.now = v, t, now
        self.decision: po.PretixDecision | None = None

    def __call__(self, times: list[float]) -> Redemption | None:
        if self.t.sig1 is None:  # never: a PretixTicket is made from a verified payload
            return Redemption(False, Reason.MALFORMED, len(times), "no pretix payload")
        d = po.decide_entry(self.v.data, self.t.sig1, self.now, times, self.v.gate)
        self.decision = d
        return None if d.valid else Redemption(False, Reason(d.reason), len(times), d.detail)

    def word(self, r: Redemption) -> str:
        """pretix's word: its rule's, or `valid`/`error` when the ledger or the link decided."""
        if self.decision is not None:
            return self.decision.pretix_reason
        return po.VALID if r.ok else po.ERROR


def redeem(ledger: Any, v: PretixVerifier, t: PretixTicket, now: float) -> PretixEntry:
    """Count a pretix entry under pretix's rule and queue its check-in, in one transaction.

    A refusal by the ledger or the fleet link (clock behind, lane cut off) is queued as a
    failed check-in with reason `error`; one by pretix's rule with pretix's word.
    """
    rule, queued = _EntryRule(v, t, now), []

    def upload(r: Redemption) -> tuple[str, str]:
        queued.append(True)
        if r.ok:
            return redeem_row(v.data, t.secret, now)
        return failed_row(v.data, t.secret, rule.word(r), t.sig1, now)

    r = ledger.redeem(t, now, rule, upload)
    if not queued:  # refused before the ledger ran (the fleet link): still a scan pretix hears of
        queue_refusal(ledger, v, t.secret, rule.word(r), t.sig1, now)
    return PretixEntry(r, rule.word(r))


def check(ledger: Any, v: PretixVerifier, t: PretixTicket, now: float) -> PretixEntry:
    """What `redeem` would answer now, counting and queueing nothing."""
    rule = _EntryRule(v, t, now)
    r = ledger.check(t, now, rule)
    return PretixEntry(r, rule.word(r))


def queue_refusal(
    ledger: Any,
    v: PretixVerifier,
    text: str,
    pretix_reason: str,
    sig1: Sig1Ticket | None,
    now: float,
) -> None:
    """Queue a refused scan for pretix's failed check-ins; a ledger that cannot is logged."""
    queue = getattr(ledger, "queue_upload", None)
    if queue is None:  # a fleet lane's ledger wrapper: its ledger queues
        queue = getattr(getattr(ledger, "ledger", None), "queue_upload", None)
    if queue is None:  # no ledger (UnavailableLedger): nothing is counted or queued
        log.error("pretix refused scan not queued: the ledger is unavailable")
        return
    queue(now, *failed_row(v.data, text, pretix_reason, sig1, now))


def load_verifier(
    pretix_dir: str | Path, edge: Verifier | None, gate: int = 0, event: str = "", list_id: int = 0
) -> PretixVerifier:
    """A PretixVerifier over a pretix folder (ConfigError when the folder is incomplete, or
    holds another event or check-in list than `event` and `list_id`, when given)."""
    data = po.load_dir(pretix_dir)
    po.check_configured(data, pretix_dir, event, list_id)
    return PretixVerifier(edge, data, gate or None)


def desk_result(
    ledger: Any,
    ledger_problem: str,
    v: PretixVerifier,
    verdict: PretixVerdict,
    redeem_: bool,
    now: float,
) -> dict:
    """`ticket verify`'s fields for a pretix code: edge-gate's reason beside pretix's word.

    Without a ledger only the secret itself is judged (no earlier entries); with one, the
    entry is checked (or, with `redeem_`, counted and queued for the shop) under pretix's rule.
    """
    out: dict[str, Any] = {"pretix_reason": verdict.pretix_reason}
    t = verdict.ticket
    if not verdict.valid or not isinstance(t, PretixTicket) or t.sig1 is None:
        if redeem_ and ledger is not None:
            queue_refusal(ledger, v, verdict.text, verdict.pretix_reason, verdict.sig1, now)
        return out
    if ledger_problem:
        return {**out, "valid": False, "reason": Reason.LEDGER_ERROR, "detail": ledger_problem}
    if ledger is None:
        d = po.decide_entry(v.data, t.sig1, now, (), v.gate)
        out.update(valid=d.valid, reason=d.reason, pretix_reason=d.pretix_reason)
        return {**out, "detail": d.detail} if d.detail else out
    e = (redeem if redeem_ else check)(ledger, v, t, now)
    r = e.redemption
    out.update(
        valid=r.ok, reason=r.reason, pretix_reason=e.pretix_reason, entries_used=r.entries_used
    )
    return {**out, "detail": r.detail} if r.detail else out


def gate_redeem(ledger: Any, verifier: Any, t: Ticket, now: float) -> tuple[Redemption, str]:
    """The gate's redemption of a granted ticket: pretix's rule for a pretix ticket (and its
    check-in queued), the ledger's own otherwise. Returns the answer and pretix's word ("")."""
    if isinstance(t, PretixTicket) and isinstance(verifier, PretixVerifier):
        e = redeem(ledger, verifier, t, now)
        return e.redemption, e.pretix_reason
    return ledger.redeem(t, now), ""


def gate_refused(ledger: Any, verifier: Any, code: str, now: float) -> str:
    """A ticket code the gate refused: if it was decided the pretix way, queue the failed
    check-in and return pretix's word for it ("" for anything else)."""
    if not code or not isinstance(verifier, PretixVerifier) or not verifier.is_pretix(code):
        return ""
    d = verifier.decision(code, now)
    if d.valid:  # refused for another reason (face-and-ticket holder mismatch): not pretix's
        return ""
    queue_refusal(ledger, verifier, code, d.pretix_reason, d.sig1, now)
    return d.pretix_reason


def lane_status(cfg: Any, now: float) -> dict[str, Any]:
    """How old the lane's pretix data is and what waits for upload (`doctor`, `fleet status`)."""
    folder = cfg.resolve(cfg.pretix.dir)
    t = po.data_time(folder)
    try:
        state = po.read_json(folder / po.SYNC_STATE)
    except ConfigError:  # none yet, or damaged: sync writes it again
        state = {}
    error = state.get("last_error") if isinstance(state, dict) else None
    out: dict[str, Any] = {
        "dir": str(folder),
        "data_time": t,
        "age_s": round(now - t, 1) if t is not None else None,
        "last_error": str(error)[:300] if error else None,
        "upload_pending": None,
    }
    ledger_path = cfg.resolve(cfg.tickets.ledger)
    if ledger_path.is_file():
        try:
            with Ledger(ledger_path) as led:
                n, oldest = led.upload_pending()
            out["upload_pending"] = n
            out["oldest_pending_s"] = round(now - oldest, 1) if oldest else None
        except Exception as e:  # noqa: BLE001 - a status line must not fail the report
            out["upload_error"] = str(e)
    return out


def pretix_heartbeat(cfg: Any, now: float) -> dict[str, Any]:
    """What a lane's heartbeat says of its pretix data (the office's `fleet status` and the
    console's Lanes page): when it was last known good, the lane's own limit, uploads waiting,
    whether the last pull failed. No path, URL or token leaves the lane."""
    st = lane_status(cfg, now)
    return {
        "data_time": st["data_time"],
        "stale_after_s": cfg.pretix.stale_after_s,
        "upload_pending": st["upload_pending"],
        "pull_failing": st["last_error"] is not None,
    }


AHEAD_SLACK_S = 300.0  # pretix data dated further ahead of the reader's clock is not believed


def pretix_view(hb: Any, now: float) -> dict[str, Any] | None:
    """A heartbeat's pretix part as `fleet status` shows it: its age and whether it is older
    than the lane's limit (missing data counts as stale). None when the lane sent none. Pure."""
    if not isinstance(hb, dict):
        return None
    t = hb.get("data_time")
    limit = hb.get("stale_after_s")
    age = None  # not a time, or far ahead of the office's clock: counted as missing
    if isinstance(t, int | float) and math.isfinite(t) and t <= now + AHEAD_SLACK_S:
        age = round(now - float(t), 1)
    stale = age is None or (isinstance(limit, int | float) and age > float(limit))
    return {**hb, "age_s": age, "stale": stale}
