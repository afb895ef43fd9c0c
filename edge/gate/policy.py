"""Frames in, Grant/Deny out. Pure: no I/O, no clock, no randomness; time comes with each frame.

Face: the same person must match in k of the last n usable frames within window_s, with exactly
one sizeable face in the gate zone (two or more: no face grant, `tailgating`). A stranger never
causes a grant. Tickets are decided independently of faces. Each decision is made once per
episode: a code held in view or a person lingering does not produce a stream of decisions.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque
from dataclasses import dataclass, field

from edge.config import Config, PolicyConfig
from edge.errors import ConfigError
from edge.tickets import OK, Ticket, Verdict

GRANT, DENY = "grant", "deny"
FACE, TICKET, FACE_AND_TICKET = "face", "ticket", "face+ticket"
TWO_FACTOR_WINDOW_S = 10.0
STRANGER_AFTER_WINDOWS = (
    2  # "not enrolled" is said after a face has been at the gate this many windows
)


@dataclass(frozen=True)
class FaceSeen:
    person_id: str | None  # the matcher's verdict; None = nobody (stranger, ambiguous)
    score: float
    width_frac: float  # face width / frame width
    center: tuple[float, float]  # fractions of the frame
    quality_ok: bool
    valid_until: int | None = None  # the person's pass validity (Unix seconds), None = open
    pass_ref: str = ""


@dataclass(frozen=True)
class TicketSeen:
    text: str
    verdict: Verdict

    @property
    def key(self) -> str:
        if self.verdict.ticket is not None:
            return "id:" + self.verdict.ticket.ticket_id
        return "tx:" + hashlib.sha256(self.text.encode("utf-8", "replace")).hexdigest()[:16]


@dataclass(frozen=True)
class Observation:
    t: float  # frame time (seconds, monotonic within a run)
    frame: int
    wall: float  # Unix time, for pass validity
    faces: tuple[FaceSeen, ...] = ()
    tickets: tuple[TicketSeen, ...] = ()


@dataclass(frozen=True)
class Decision:
    t: float
    frame: int
    decision: str  # grant | deny
    via: str  # face | ticket | face+ticket
    subject: str | None  # pseudonymous person id or ticket id
    score: float | None
    reason: str
    ticket: Ticket | None = None  # a ticket grant becomes final only when the ledger records it


@dataclass(frozen=True)
class PolicyParams(PolicyConfig):
    """The [policy] settings plus what the gate adds at start: the mode and whether faces run."""

    mode: str = "face-or-ticket"
    face_enabled: bool = True

    @classmethod
    def from_config(cls, cfg: Config, face_enabled: bool = True) -> PolicyParams:
        return cls(
            **dataclasses.asdict(cfg.policy),
            mode=cfg.gate.mode,
            face_enabled=face_enabled
            and cfg.vision.face_enabled
            and cfg.gate.mode != "ticket-only",
        )


def check_non_face_way_in(mode: str, ticket_keys: int) -> None:
    """Refuse to start a gate whose only way in would be a face."""
    if ticket_keys < 1:
        raise ConfigError(
            f"gate.mode {mode!r} with no ticket public key leaves no non-face way in",
            "set tickets.pubkeys to the issuer.pub of your ticket office",
        )


@dataclass
class Policy:
    params: PolicyParams
    window: deque = field(default_factory=deque)  # (t, person_id | None, score)
    last_grant: dict = field(default_factory=dict)  # person id -> t
    last_deny: dict = field(default_factory=dict)  # (subject, reason) -> t
    ticket_seen: dict = field(default_factory=dict)  # ticket key -> last t in view
    pending: tuple | None = None  # face-and-ticket: (t, Ticket) waiting for the face
    tailgating: bool = False
    episode: tuple | None = (
        None  # (start t, last t, granted, stranger reported): one visitor at the gate
    )

    def step(self, obs: Observation) -> list[Decision]:
        out = self._tickets(obs)
        if self.params.face_enabled:
            out += self._faces(obs)
        return out

    # --- tickets -------------------------------------------------------------------------------

    def _tickets(self, obs: Observation) -> list[Decision]:
        out = []
        p = self.params
        for ts in obs.tickets:
            last = self.ticket_seen.get(ts.key)
            self.ticket_seen[ts.key] = obs.t
            if last is not None and obs.t - last < p.cooldown_s:
                continue  # the same code is still in view
            v = ts.verdict
            tid = v.ticket.ticket_id if v.ticket else None
            if not v.valid:
                out.append(Decision(obs.t, obs.frame, DENY, TICKET, tid, None, v.reason))
            elif p.mode == "face-and-ticket":
                self.pending = (obs.t, v.ticket)
            else:
                out.append(Decision(obs.t, obs.frame, GRANT, TICKET, tid, None, OK, v.ticket))
        stale = [k for k, t in self.ticket_seen.items() if obs.t - t > 10 * p.cooldown_s]
        for k in stale:
            del self.ticket_seen[k]
        return out

    # --- faces ---------------------------------------------------------------------------------

    def _at_gate(self, f: FaceSeen) -> bool:
        x0, y0, x1, y1 = self.params.zone
        cx, cy = f.center
        return f.width_frac >= self.params.min_face_fraction and x0 <= cx <= x1 and y0 <= cy <= y1

    def _deny_once(
        self,
        obs: Observation,
        subject: str | None,
        reason: str,
        score: float | None,
        via: str = FACE,
        hold_s: float | None = None,
    ) -> list[Decision]:
        key = (subject, reason)
        last = self.last_deny.get(key)
        hold = self.params.anti_passback_s if hold_s is None else hold_s
        if last is not None and obs.t - last < hold:
            return []
        self.last_deny[key] = obs.t
        return [Decision(obs.t, obs.frame, DENY, via, subject, score, reason)]

    def _faces(self, obs: Observation) -> list[Decision]:
        p = self.params
        gate = [f for f in obs.faces if self._at_gate(f)]
        if len(gate) >= 2:
            self.window.clear()
            if not self.tailgating:
                self.tailgating = True
                return [Decision(obs.t, obs.frame, DENY, FACE, None, None, "tailgating")]
            return []
        self.tailgating = False
        while self.window and obs.t - self.window[0][0] > p.window_s:
            self.window.popleft()
        if len(gate) == 1 and gate[0].quality_ok:
            f = gate[0]
            self.window.append((obs.t, f.person_id, f.score, f))
            while len(self.window) > p.n:
                self.window.popleft()
            if self.episode is None or obs.t - self.episode[1] > p.window_s:
                self.episode = (obs.t, obs.t, False, False)
            else:
                self.episode = (self.episode[0], obs.t, *self.episode[2:])
        else:
            return []
        counts: dict = {}
        for _, pid, _, _ in self.window:
            counts[pid] = counts.get(pid, 0) + 1
        best = max(
            (pid for pid in counts if pid is not None), key=lambda x: counts[x], default=None
        )
        if best is not None and counts[best] >= p.k:
            out = self._confirmed(obs, best)
            if out and out[0].decision == GRANT:
                self.episode = (self.episode[0], obs.t, True, self.episode[3])
            return out
        start, _, granted, reported = self.episode
        # A face at the gate for a while, never matched: tell the visitor (and the log) once.
        if (
            counts.get(None, 0) >= p.k
            and not granted
            and not reported
            and obs.t - start >= STRANGER_AFTER_WINDOWS * p.window_s
        ):
            self.episode = (start, obs.t, granted, True)
            score = max(s for _, pid, s, _ in self.window if pid is None)
            return [Decision(obs.t, obs.frame, DENY, FACE, None, round(score, 4), "not_enrolled")]
        return []

    def _confirmed(self, obs: Observation, pid: str) -> list[Decision]:
        p = self.params
        scores = [s for _, q, s, _ in self.window if q == pid]
        face = next(f for _, q, _, f in reversed(self.window) if q == pid)
        score = round(sum(scores) / len(scores), 4)
        last = self.last_grant.get(pid)
        if last is not None and obs.t - last < p.cooldown_s:
            return []  # just let in; still in view
        if last is not None and obs.t - last < p.anti_passback_s:
            return self._deny_once(obs, pid, "anti_passback", score)
        if face.valid_until is not None and obs.wall > face.valid_until:
            return self._deny_once(obs, pid, "pass_expired", score)
        if p.mode == "face-and-ticket":
            if self.pending is None or obs.t - self.pending[0] > TWO_FACTOR_WINDOW_S:
                return []  # wait for the ticket
            _, ticket = self.pending
            if ticket.holder not in (pid, face.pass_ref) or not ticket.holder:
                self.pending = None
                return self._deny_once(
                    obs, pid, "ticket_holder_mismatch", score, FACE_AND_TICKET, p.cooldown_s
                )
            self.pending = None
            self.window.clear()
            self.last_grant[pid] = obs.t
            return [Decision(obs.t, obs.frame, GRANT, FACE_AND_TICKET, pid, score, OK, ticket)]
        self.window.clear()
        self.last_grant[pid] = obs.t
        return [Decision(obs.t, obs.frame, GRANT, FACE, pid, score, OK)]
