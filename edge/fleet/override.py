"""A supervisor's override: the office's signed "open this lane's turnstile once".

A supervisor at the console (or `edge-gate fleet override` at the office) gives a lane and a
reason; the office signs an `override` message with the issuer key, addressed to that lane, with
a random nonce and a short validity, and its sync publishes it to `office/override/<lane>` (QoS
1, never retained). The lane's sync authenticates it like every office message and leaves the
payload in the lane's fleet state: the gate has no network. The gate takes it from there and
decides itself, fail-closed, with the same signature check (a compromised sync cannot write an
override the office did not sign): one for another lane, past its validity, dated in the future,
valid for longer than MAX_VALID_S, whose nonce was already spent, or that comes while this
lane's clock is off from the fleet's (as sync measured it) is refused; one that passes
is spent (its nonce kept in the fleet state) and pulses the relay once. Both outcomes are
written to the lane's audit log as a decision `via override` with the supervisor's name, and so
reach the office's decisions page.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import tickets as tk
from edge.config import Config
from edge.errors import ConfigError, FleetStateError
from edge.fleet import messages as msg
from edge.fleet.state import CLOCK_SKEW, FleetState, GateView
from edge.gate.audit import MAX_REASON, AuditLog, AuditRecord, check_reason
from edge.gate.notices import Notice, notice_for_decision
from edge.timeutil import iso

VIA = "override"  # the audit record's and decision event's `via`, and a grant's reason
MAX_VALID_S = 120.0  # no override is accepted for longer than this, whatever it says
DEFAULT_VALID_S = 30.0
POLL_S = 0.1  # how often the gate looks for overrides sync left

# Why a lane refused an override (the audit record's reason).
EXPIRED = "override_expired"
REPLAYED = "override_replayed"
OTHER_LANE = "override_other_lane"
INVALID = "override_invalid"
# CLOCK_SKEW (edge.fleet.state): this lane's clock is off from the fleet's, as for tickets


@dataclass(frozen=True)
class Override:
    """One override as the office signed it."""

    nonce: str
    lane: str
    issued: float  # the office's clock when it signed
    until: float  # valid up to this instant (the office's clock)
    by: str  # the supervisor's name
    reason: str  # what the supervisor typed

    @property
    def oid(self) -> str:
        """The id the console, the lane's audit record and the office's audit record share."""
        return override_id(self.nonce)


def override_id(nonce: str) -> str:
    """An override's short id (its nonce's first 16 hex digits)."""
    return "O-" + nonce[:16]


def override_body(
    lane: str, reason: str, by: str, now: float, valid_s: float = DEFAULT_VALID_S
) -> dict[str, Any]:
    """The signed body of a new override; ReasonError for an empty or overlong reason,
    ConfigError for a validity out of (0, MAX_VALID_S]."""
    why = check_reason(reason, "an override's reason")
    if not 0 < valid_s <= MAX_VALID_S:
        raise ConfigError(
            f"override validity {valid_s} s is outside (0, {MAX_VALID_S:.0f}] s",
            "set console.override_valid_s to a few seconds, e.g. 30",
        )
    return {
        "lane": lane,
        "nonce": secrets.token_hex(16),
        "until": round(now + valid_s, 3),
        "by": by,
        "reason": why,
    }


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on one override: open once, or refused with the reason."""

    ok: bool
    reason: str  # VIA when ok, else one of the refusals above
    detail: str  # for the audit record: who, why, and what was wrong
    override: Override | None = None

    @property
    def subject(self) -> str:
        """The override's id, or "" when the payload was not even an override."""
        return self.override.oid if self.override else ""

    @property
    def outcome(self) -> str:
        """grant or deny."""
        return "grant" if self.ok else "deny"

    def refused(self, reason: str) -> Verdict:
        """The same override, refused after all (the relay did not switch)."""
        return Verdict(False, reason, self.detail, self.override)

    def unless_granted(self, audit: AuditLog, skew_s: float) -> Verdict:
        """This verdict, or refused as a replay when the lane's audit log already holds a grant
        of this override: its nonce was spent in a fleet state that has since been made anew
        (moved aside, restored). A lane grants an override no earlier than `skew_s` before the
        office signed it, so only records from then on are looked at."""
        if not self.ok or self.override is None:
            return self
        if not audit.granted_since(VIA, self.subject, self.override.issued - skew_s):
            return self
        return Verdict(False, REPLAYED, self.detail + " (already granted here)", self.override)

    def record(self, gate: str, wall: float) -> AuditRecord:
        """The lane's audit record: a decision via override, the supervisor's name in detail."""
        return AuditRecord(
            wall, gate, "decision", self.outcome, VIA, self.subject, None, self.reason, self.detail
        )

    def event(self, gate: str, wall: float) -> dict[str, Any]:
        """The decision event (`run --events`), with the override's id."""
        return {
            "t": round(time.monotonic(), 3),
            "time": iso(wall),
            "frame": -1,
            "gate": gate,
            "decision": self.outcome,
            "via": VIA,
            "score": None,
            "reason": self.reason,
            "override": self.subject,
        }

    def notice(self, lane: str, wall: float) -> Notice:
        """What the visitor is shown: welcome, or please see staff."""
        return Notice(
            wall, lane, notice_for_decision(self.ok, self.reason), self.reason, self.outcome
        )


def judge(
    payload: bytes,
    site: str,
    lane: str,
    now: float,
    keys: list[Ed25519PublicKey],
    skew_s: float,
) -> Verdict:
    """Check one override against this lane and its clock (pure; replay is the caller's, by
    spending the nonce). `skew_s`: how far the office's clock may be ahead of ours."""
    try:
        m = msg.verify_signed(msg.decode(payload, site), keys)
        if m.type != msg.OVERRIDE or m.lane != msg.OFFICE:
            raise msg.MessageError(f"a {m.type} message from {m.lane!r} is not an override")
        b = m.body
        o = Override(
            str(b["nonce"]),
            str(b["lane"]),
            float(m.time),
            float(b["until"]),
            str(b.get("by", ""))[:64],
            str(b.get("reason", ""))[:MAX_REASON],
        )
        if len(o.nonce) < 16:
            raise msg.MessageError("override nonce too short")
        if not (math.isfinite(o.issued) and math.isfinite(o.until)):  # NaN passes every bound
            raise msg.MessageError("override validity is not a time")
    except Exception as e:  # noqa: BLE001 - any malformed payload (a nesting too deep to
        # decode included) is refused and audited; it must never stay in the inbox
        return Verdict(False, INVALID, f"override refused: {type(e).__name__}: {e}"[:300])
    who = f"by {o.by}: {o.reason}"
    if o.lane != lane:
        return Verdict(False, OTHER_LANE, f"{who} (for lane {o.lane!r}, this is {lane!r})", o)
    if o.issued > now + skew_s:
        ahead = o.issued - now
        return Verdict(False, INVALID, f"{who} (signed {ahead:.0f} s in this lane's future)", o)
    if o.until - o.issued > MAX_VALID_S:
        return Verdict(False, INVALID, f"{who} (valid {o.until - o.issued:.0f} s: too long)", o)
    if now > o.until:
        return Verdict(False, EXPIRED, f"{who} (expired {now - o.until:.0f} s ago)", o)
    return Verdict(True, VIA, who, o)


class OverrideInbox:
    """The gate's side: takes what sync left in the fleet state, judges it, spends nonces."""

    def __init__(self, cfg: Config):
        self.configure(cfg)
        # the file at the path, followed when sync makes it again (a damaged one moved aside,
        # a restore); one that does not open takes no override, the gate starts and goes on
        self.view = GateView(cfg.resolve(cfg.fleet.state_db))
        self._next = 0.0

    def configure(self, cfg: Config) -> None:
        """Take the site, lane, clock allowance and issuer keys of `cfg` (at start and at each
        reload: an issuer key taken out of tickets.pubkeys signs no override from then on)."""
        fl = cfg.fleet
        self.site, self.lane, self.skew = fl.site, fl.lane, fl.max_clock_offset_s
        self.key_paths: list[Path] = [cfg.resolve(p) for p in cfg.tickets.pubkeys]

    @classmethod
    def open(cls, cfg: Config) -> OverrideInbox | None:
        """The inbox of a fleet lane; None alone or at the office."""
        if not cfg.fleet.enabled or cfg.fleet.lane == msg.OFFICE:
            return None
        return cls(cfg)

    def take(self, now: float) -> list[Verdict]:
        """Every override waiting (at most every POLL_S), judged; an accepted one's nonce is
        spent in the same transaction that takes it, so it opens the gate at most once."""
        if time.monotonic() < self._next:
            return []
        self._next = time.monotonic() + POLL_S
        try:
            state = self.view.current()
        except FleetStateError:  # said once by the view; nothing is taken, nothing opens
            return []
        if not state.has_overrides():  # the common case: no write lock for nothing
            return []
        out = self._spend(state, now)
        # The rows taken (the supervisor's name and reason) are overwritten in the file, but an
        # older copy stays in the write-ahead log until a checkpoint: a rare event, so the gate
        # empties the log now (waiting at most CHECKPOINT_WAIT_MS for a reader).
        state.checkpoint()
        return out

    def _spend(self, state: FleetState, now: float) -> list[Verdict]:
        """Take every override and judge it, spending an accepted one's nonce, in one
        transaction."""
        out: list[Verdict] = []
        with state.transaction():
            payloads = state.take_overrides()
            if not payloads:
                return []
            try:
                keys = [tk.load_public(p) for p in self.key_paths]
            except Exception as e:  # no key to check with: every override refused
                return [Verdict(False, INVALID, f"override refused: issuer key: {e}"[:300])] * len(
                    payloads
                )
            # sync's measure of this lane's clock against the fleet's (our clock minus the
            # fleet's): a clock off by more than the allowance cannot tell expired from valid
            offset = state.get("clock_offset")
            for p in payloads:
                v = judge(p, self.site, self.lane, now, keys, self.skew)
                if v.ok and offset is not None and not abs(offset) <= self.skew:
                    off = f" (this lane's clock is off by {offset:+.0f} s from the fleet's)"
                    v = Verdict(False, CLOCK_SKEW, v.detail + off, v.override)
                if (
                    v.ok
                    and v.override
                    and not state.use_nonce(v.override.nonce, v.override.until, now)
                ):
                    v = Verdict(False, REPLAYED, v.detail + " (already used here)", v.override)
                out.append(v)
        return out

    def close(self) -> None:
        """Release the fleet state connection."""
        self.view.close()
