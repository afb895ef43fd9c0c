"""Frames in, Grant/Deny out. Pure: no I/O, no clock, no randomness; time comes with each frame.

Face: the same person must match in k of the last n usable frames within window_s (with liveness
on, and be judged live in k of them; k judged not live: `presentation_attack`, and no face grant
until the visitor leaves, so a screen flickering between verdicts gets no retries; k not live
because the face was too close to judge: `too_close`, and the visitor may step back and try
again), with exactly one sizeable face in the gate zone (two or more: no face grant,
`tailgating`, said again only after a window without two faces). A stranger never causes a
grant. Tickets are decided independently of faces.
Each decision is made once per episode: a code held in view or a person lingering does not
produce a stream of decisions; a visitor let in (by face or ticket) is not refused
`not_enrolled` or `too_close` on the way through. A visit ends when a window passes without a
face, or when the window confirms another pass holder and none of the last one's frames is left
in it, or when the visitor's face has been gone for half a window and k frames since showed a
face that matches nobody and does not look like theirs (the next in a queue: a stranger right
behind someone let in is told to show a ticket); a pass holder judged an attack stays refused
until no face at all has been at the gate for a window. Before any decision the policy may guide
the visitor (step back, come closer, hold still), once per visitor each; the daemon takes that
guidance and tells them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from edge.config import Config, PolicyConfig
from edge.errors import ConfigError
from edge.tickets import Reason as TicketReason
from edge.tickets import Ticket, Verdict
from edge.tickets.ledger import CLOCK_TOLERANCE_S


class Outcome(StrEnum):
    """What the gate does: a str, so events and audit records carry "grant" / "deny"."""

    GRANT = "grant"
    DENY = "deny"


class Via(StrEnum):
    """Which way in a decision was made by."""

    FACE = "face"
    TICKET = "ticket"
    FACE_AND_TICKET = "face+ticket"


class Reason(StrEnum):
    """The reasons the gate itself gives; ticket refusals carry the verifier's or ledger's reason.

    Reasons that tickets and faces share are the tickets' own values (one spelling each).
    """

    OK = TicketReason.OK.value
    TAILGATING = "tailgating"
    NOT_ENROLLED = "not_enrolled"
    ANTI_PASSBACK = TicketReason.ANTI_PASSBACK.value
    PASS_EXPIRED = "pass_expired"
    TICKET_HOLDER_MISMATCH = "ticket_holder_mismatch"
    LEDGER_ERROR = TicketReason.LEDGER_ERROR.value
    RELAY_ERROR = "relay_error"
    AUDIT_ERROR = "audit_error"  # a face grant the audit log could not record: not let in
    PRESENTATION_ATTACK = "presentation_attack"
    TOO_CLOSE = "too_close"  # matched, but too close for liveness to see around the face
    CLOCK_BEHIND = TicketReason.CLOCK_BEHIND.value  # a pass with an end, and a clock set back


GRANT, DENY = Outcome.GRANT, Outcome.DENY
FACE, TICKET, FACE_AND_TICKET = Via.FACE, Via.TICKET, Via.FACE_AND_TICKET
TWO_FACTOR_WINDOW_S = 10.0
STRANGER_AFTER_WINDOWS = 2  # "not enrolled" is said after a face was at the gate this many windows
# Guidance words (the visitor-notice vocabulary of edge/gate/notices.py) and their causes.
STEP_BACK, COME_CLOSER, HOLD_STILL = "step_back", "come_closer", "hold_still"
PAD_TOO_CLOSE = "too_close"  # FaceSeen.pad: the liveness check could not see around the face
PAD_NOT_MOVED = "not_moved"  # FaceSeen.pad: live so far, not yet seen to move (liveness.NOT_MOVED)
TOO_SMALL = "too_small"  # the quality gate's word for a face too small to recognise
NOT_YET_LIVE = "not_yet_live"


@dataclass(frozen=True)
class FaceSeen:
    """One detected face in one frame, with the matcher's verdict; checks add optional fields."""

    person_id: str | None  # the matcher's verdict; None = nobody (stranger, ambiguous)
    score: float
    width_frac: float  # face width / frame width
    center: tuple[float, float]  # fractions of the frame
    quality_ok: bool
    valid_until: int | None = None  # the candidate's pass validity (Unix seconds), None = open
    pass_ref: str = ""
    candidate: str | None = None  # best person even when this frame alone is refused
    embedding: Any = field(default=None, compare=False, repr=False)  # for fuse_frames only
    live: bool | None = None  # presentation-attack verdict on this frame; None = not judged
    pad: str = ""  # why not live (liveness.Verdict.reason, e.g. "too_close"); "" = live or unjudged
    quality: tuple[str, ...] = ()  # the quality gate's refusals (e.g. "too_small", "blurry")


@dataclass(frozen=True)
class TicketSeen:
    """One code read (by the camera, or once by a scanner) and the verifier's verdict on it."""

    text: str
    verdict: Verdict
    scanned: bool = False  # from a scanner: read once, not seen again while it is held up

    @property
    def key(self) -> str:
        """Identity of the code while in view: the ticket id, else a hash of the text."""
        if self.verdict.ticket is not None:
            return "id:" + self.verdict.ticket.ticket_id
        return "tx:" + hashlib.sha256(self.text.encode("utf-8", "replace")).hexdigest()[:16]


@dataclass(frozen=True)
class Observation:
    """Everything seen at one instant: a camera frame's faces and codes, or scanner input alone."""

    t: float  # frame time (seconds, monotonic within a run)
    frame: int  # frame index; -1 = no camera frame (scanner input only)
    wall: float  # Unix time, for pass validity
    faces: tuple[FaceSeen, ...] = ()
    tickets: tuple[TicketSeen, ...] = ()
    floor: float = 0.0  # the newest time the gate recorded: a wall behind it judges no pass end


@dataclass(frozen=True)
class Decision:
    """A grant or a refusal, once per episode; a ticket grant is final only once redeemed."""

    t: float
    frame: int
    decision: Outcome
    via: Via
    subject: str | None  # pseudonymous person id or ticket id
    score: float | None
    reason: str  # a Reason, or the verifier's / ledger's reason for a ticket
    ticket: Ticket | None = None  # a ticket grant becomes final only when the ledger records it
    code: str = ""  # the scanned text of a ticket decision (refused pretix scans are reported)


@dataclass(frozen=True)
class Guidance:
    """What the visitor can do before any decision: a notice word, its cause, for whom."""

    t: float
    frame: int
    notice: str  # STEP_BACK, COME_CLOSER or HOLD_STILL
    reason: str  # PAD_TOO_CLOSE, TOO_SMALL or NOT_YET_LIVE
    subject: str | None = None  # the matched person, when there is one


@dataclass(frozen=True)
class WindowEntry:
    """One usable face at the gate in one frame: the unit of k-of-n confirmation."""

    t: float
    face: FaceSeen

    @property
    def person_id(self) -> str | None:
        """The matcher's verdict for this frame."""
        return self.face.person_id

    @property
    def score(self) -> float:
        """The match score for this frame."""
        return self.face.score


@dataclass
class Episode:
    """One visitor at the gate: from their first usable frame until a window passes without them."""

    start: float
    last: float
    granted: bool = False  # let in by face
    admitted: bool = False  # let in by a ticket shown meanwhile: lifts no attack verdict
    stranger_reported: bool = False
    attack_reported: bool = False
    close_reported: bool = False
    told: set[str] = field(default_factory=set)  # guidance already given to this visitor
    subject: str | None = None  # the pass holder the window first confirmed in this visit
    # the visitor's newest faces (embeddings, at most n), when one was last seen, and how many
    # frames since showed someone else who matches nobody (Policy._stranger_next)
    faces: list = field(default_factory=list, compare=False, repr=False)
    own_last: float | None = None
    others: int = 0
    ticket_next: bool = False  # a ticket let someone in since the visitor's last own face


@dataclass
class StepUndo:
    """What one step's grants changed, so that a grant the daemon could not carry out changes
    nothing (Policy.not_carried_out): the opening before the step and the grants it made; the
    visit a ticket grant took as let in, and a face grant's visit, with their flags before."""

    t: float = float("-inf")
    frame: int = -1
    opened: float = float("-inf")
    grants: int = 0
    ticket_visit: Episode | None = None
    admitted: bool = False
    ticket_next: bool = False
    face_visit: Episode | None = None
    granted: bool = False


@dataclass(frozen=True)
class PendingTicket:
    """face-and-ticket: a valid ticket shown, waiting for its holder's face."""

    t: float
    ticket: Ticket


@dataclass(frozen=True)
class PolicyParams(PolicyConfig):
    """The [policy] settings plus what the gate adds at start: the mode and whether faces run."""

    mode: str = "face-or-ticket"
    face_enabled: bool = True
    liveness: bool = False  # a face grant needs k frames of the matched person judged live
    open_s: float = 1.0  # one opening (relay.pulse_s): a grant meanwhile opens nothing more

    @classmethod
    def from_config(cls, cfg: Config, face_enabled: bool = True) -> PolicyParams:
        """The params a gate runs with; faces only if configured and loaded."""
        return cls(
            **dataclasses.asdict(cfg.policy),
            mode=cfg.gate.mode,
            face_enabled=face_enabled
            and cfg.vision.face_enabled
            and cfg.gate.mode != "ticket-only",
            liveness=cfg.liveness.mode != "off",
            open_s=cfg.relay.pulse_s,
        )


def check_non_face_way_in(mode: str, ticket_keys: int) -> None:
    """Refuse to start a gate whose only way in would be a face."""
    if ticket_keys < 1:
        raise ConfigError(
            f"gate.mode {mode!r} with no ticket public key leaves no non-face way in",
            "set tickets.pubkeys to the issuer.pub of your ticket office",
        )


# What a reload keeps of the decision state (Policy.carry_over); the window is not kept.
CARRIED_OVER = (
    "last_grant",
    "held",
    "last_deny",
    "ticket_seen",
    "pending",
    "opened",
    "waiting",
    "tailgating",
    "tailgating_last",
    "episode",
    "attacked",
    "present_last",
    "small_since",
    "small_last",
    "small_told",
)


@dataclass
class Policy:
    """The decision state machine; the daemon feeds it observations and acts on its decisions."""

    params: PolicyParams
    window: deque[WindowEntry] = field(default_factory=deque)
    last_grant: dict[str, float] = field(default_factory=dict)  # person id -> t
    # person id -> t of a face grant the daemon could not carry out: tried again after the
    # cooldown (not refused `anti_passback`: they never went through)
    held: dict[str, float] = field(default_factory=dict)
    last_deny: dict[tuple[str | None, str], float] = field(default_factory=dict)
    ticket_seen: dict[str, float] = field(default_factory=dict)  # ticket key -> last t in view
    pending: PendingTicket | None = None
    opened: float = float("-inf")  # the newest grant: the gate is open for that visitor
    # valid tickets shown while it was (key -> first shown, seen): each waits for an opening of
    # its own, at most the opening and a window after it (a scanned code is read once: it
    # waits here and the daemon asks again without a frame; a code the camera saw is judged
    # only when in view again: its holder may have gone through on the opening it waited for)
    waiting: dict[str, tuple[float, TicketSeen]] = field(default_factory=dict)
    _undo: StepUndo = field(default_factory=StepUndo)  # the last step's grants
    tailgating: bool = False  # refused as such, until a window passes without two faces
    tailgating_last: float = 0.0  # two or more faces at the gate, last seen
    episode: Episode | None = None
    # pass holders judged an attack since faces were last gone from the gate for a window: the
    # verdict holds through every visit of that presence (another face shown in between, the
    # window emptied by two faces or by faces matching nobody), so a replay gets no retry
    attacked: set[str] = field(default_factory=set)
    present_last: float = float("-inf")  # a face at the gate, of any quality, last seen
    # fuse_frames: the matcher's decision on several frames of one visitor (Matcher.match_fused)
    fuse: Callable[[list], Any] | None = None
    guidance: list[Guidance] = field(default_factory=list)  # not yet taken by the daemon
    small_since: float | None = None  # a face at the gate too small to recognise, since
    small_last: float = 0.0
    small_told: bool = False
    # Cosine similarity at or above which two faces are one person (the matcher's threshold):
    # below it, a face that matches nobody is not the visitor's (Policy._stranger_next). None:
    # visits are told apart by matches alone.
    same_person: float | None = None

    def carry_over(self, old: Policy) -> Policy:
        """This policy with what `old` remembers of visitors, for a reload: grants (cooldown,
        anti-passback), refusals made once, codes in view, a ticket waiting for its face and
        the visitor at the gate (an attack stays one until they leave). The k-of-n window starts
        again: its matches were made against the gallery and model before the reload; so do the
        visitor's faces (another embedder's vectors are not comparable)."""
        for name in CARRIED_OVER:
            setattr(self, name, getattr(old, name))
        if self.episode is not None:
            self.episode = dataclasses.replace(self.episode, faces=[], own_last=None, others=0)
        return self

    def take_guidance(self) -> list[Guidance]:
        """The guidance produced since the last call (the daemon turns it into notices)."""
        out, self.guidance = self.guidance, []
        return out

    def step(self, obs: Observation) -> list[Decision]:
        """Decide on one observation: ticket decisions first, then faces."""
        u = self._undo = StepUndo(obs.t, obs.frame, self.opened)
        out = self._tickets(obs)
        if self.params.face_enabled:
            out += self._faces(obs)
        u.grants = sum(1 for d in out if d.decision == GRANT)
        if u.grants:
            self.opened = obs.t
        return out

    def not_carried_out(self, d: Decision) -> None:
        """A grant of the last step the daemon turned into a refusal (a ticket spent at another
        lane meanwhile, the ledger, the audit log, the relay or the fleet refused it): once none
        of that step's grants was carried out the gate did not open, so a ticket waiting for an
        opening of its own is judged at the next frame. The visitor is not taken as let in
        (guidance and refusals are said to them again), and a pass holder refused so is tried
        again after the cooldown (never refused `anti_passback`: they did not go through)."""
        u = self._undo
        if d.decision != GRANT or (d.t, d.frame) != (u.t, u.frame) or u.grants <= 0:
            return  # not one of the last step's grants
        u.grants -= 1
        if d.via == TICKET and (ep := u.ticket_visit) is not None:
            ep.admitted = ep.admitted and u.admitted
            ep.ticket_next = ep.ticket_next and u.ticket_next
            now = self.episode  # a visit begun in this step, let in by what this ticket set
            if not u.ticket_next and now is not None and now is not ep and now.start == u.t:
                now.admitted = False
        elif d.via != TICKET:
            if d.subject is not None:
                if self.last_grant.get(d.subject) == u.t:
                    del self.last_grant[d.subject]
                keep = u.t - self.params.cooldown_s
                self.held = {k: t for k, t in self.held.items() if t > keep}
                self.held[d.subject] = u.t
            if u.face_visit is not None and not u.granted:
                u.face_visit.granted = False
        if u.grants <= 0:
            self.opened = u.opened

    # --- tickets -------------------------------------------------------------------------------

    def _tickets(self, obs: Observation) -> list[Decision]:
        """One ticket per opening: a valid ticket shown while the gate is open for someone
        (two codes in one frame, a scan during a pulse) waits, unredeemed, for an opening of
        its own (at most open_s + window_s); the relay would only have been held open longer
        for it."""
        out = []
        p = self.params
        shown = {ts.key: ts for ts in obs.tickets}
        for key, (first, ts) in list(self.waiting.items()):
            if obs.t - first > p.open_s + p.window_s:
                del self.waiting[key]  # its holder did not come through
            elif ts.scanned:
                shown.setdefault(key, ts)  # a scan is read once: it waits here
        for ts in obs.tickets:  # scanned after the camera read it: it waits as a scan now
            if ts.scanned and ts.key in self.waiting and not self.waiting[ts.key][1].scanned:
                self.waiting[ts.key] = (self.waiting[ts.key][0], ts)
        for ts in sorted(shown.values(), key=lambda s: self.waiting.get(s.key, (obs.t,))[0]):
            last = self.ticket_seen.get(ts.key)
            if last is not None and obs.t - last < p.cooldown_s:
                self.ticket_seen[ts.key] = obs.t
                continue  # the same code is still in view
            v = ts.verdict
            if v.valid and p.mode != "face-and-ticket" and obs.t - self.opened < p.open_s:
                self.waiting.setdefault(ts.key, (obs.t, ts))
                continue
            self.waiting.pop(ts.key, None)
            self.ticket_seen[ts.key] = obs.t
            tid = v.ticket.ticket_id if v.ticket else None
            if not v.valid:
                out.append(
                    Decision(obs.t, obs.frame, DENY, TICKET, tid, None, v.reason, code=ts.text)
                )
            elif p.mode == "face-and-ticket":
                self.pending = PendingTicket(obs.t, v.ticket)
            else:
                out.append(
                    Decision(obs.t, obs.frame, GRANT, TICKET, tid, None, Reason.OK, v.ticket)
                )
                self.opened = obs.t  # a second code in this frame waits
                self._admitted(obs)
        stale = [k for k, t in self.ticket_seen.items() if obs.t - t > 10 * p.cooldown_s]
        for k in stale:
            del self.ticket_seen[k]
        return out

    def _admitted(self, obs: Observation) -> None:
        """A ticket let the visitor at the gate in: the face path says nothing more to them
        (no `not_enrolled`, `too_close` or guidance) until they leave."""
        ep = self.episode
        if ep is None or obs.t - ep.last > self.params.window_s:
            ep = self.episode = Episode(obs.t, obs.t)
        u = self._undo
        u.ticket_visit, u.admitted, u.ticket_next = ep, ep.admitted, ep.ticket_next
        ep.admitted = True
        ep.ticket_next = True  # theirs, unless the visitor's own face comes next

    # --- faces ---------------------------------------------------------------------------------

    def _at_gate(self, f: FaceSeen) -> bool:
        x0, y0, x1, y1 = self.params.zone
        cx, cy = f.center
        return f.width_frac >= self.params.min_face_fraction and x0 <= cx <= x1 and y0 <= cy <= y1

    def _deny_once(
        self,
        obs: Observation,
        subject: str | None,
        reason: Reason,
        score: float | None,
        via: Via = FACE,
        hold_s: float | None = None,
    ) -> list[Decision]:
        key = (subject, str(reason))
        last = self.last_deny.get(key)
        hold = self.params.anti_passback_s if hold_s is None else hold_s
        if last is not None and obs.t - last < hold:
            return []
        self.last_deny[key] = obs.t
        return [Decision(obs.t, obs.frame, DENY, via, subject, score, reason)]

    def _faces(self, obs: Observation) -> list[Decision]:
        p = self.params
        gate = [f for f in obs.faces if self._at_gate(f)]
        if gate:
            if obs.t - self.present_last > p.window_s:
                self.attacked.clear()  # the gate was empty for a window: everyone judged anew
            self.present_last = obs.t
        if len(gate) >= 2:
            self.window.clear()
            last, self.tailgating_last = self.tailgating_last, obs.t
            if not self.tailgating or obs.t - last > p.window_s:
                self.tailgating = True
                return [Decision(obs.t, obs.frame, DENY, FACE, None, None, Reason.TAILGATING)]
            return []
        if obs.t - self.tailgating_last > p.window_s:  # a face missed for a frame: still two
            self.tailgating = False
        while self.window and obs.t - self.window[0].t > p.window_s:
            self.window.popleft()
        self._too_small(obs, gate)
        if len(gate) != 1 or not gate[0].quality_ok:
            return []
        self.window.append(WindowEntry(obs.t, gate[0]))
        while len(self.window) > p.n:
            self.window.popleft()
        ep = self.episode
        if ep is None or obs.t - ep.last > p.window_s:
            ep = self.episode = Episode(obs.t, obs.t)
        ep.last = obs.t
        ep = self._stranger_next(obs, ep, gate[0])
        counts: dict[str | None, int] = {}
        for e in self.window:
            counts[e.person_id] = counts.get(e.person_id, 0) + 1
        best, fused = self._candidate(counts)
        if best is not None:
            ep = self._visitor(obs, ep, best)
        if best is not None and p.liveness:
            if (ep.attack_reported or best in self.attacked) and not ep.granted:
                return []  # judged an attack: it stays one until the gate is left empty
            mine = [e for e in self.window if best in (e.person_id, e.face.candidate)]
            if gate[0].pad == PAD_TOO_CLOSE:
                self._guide(obs, ep, STEP_BACK, PAD_TOO_CLOSE, best)
            live = sum(1 for e in mine if e.face.live)
            if live < p.k:
                return self._not_live(obs, ep, best, mine, live)
        if best is not None:
            out = self._confirmed(obs, best, fused)
            if out and out[0].decision == GRANT:
                self._undo.face_visit, self._undo.granted = ep, ep.granted
                ep.granted = True
            return out
        # A face at the gate for a while, never matched: tell the visitor (and the log) once.
        if (
            counts.get(None, 0) >= p.k
            and not (ep.granted or ep.admitted)
            and not ep.stranger_reported
            and obs.t - ep.start >= STRANGER_AFTER_WINDOWS * p.window_s
        ):
            ep.stranger_reported = True
            score = max(e.score for e in self.window if e.person_id is None)
            return [
                Decision(obs.t, obs.frame, DENY, FACE, None, round(score, 4), Reason.NOT_ENROLLED)
            ]
        return []

    def _visitor(self, obs: Observation, ep: Episode, best: str) -> Episode:
        """The visit `best` belongs to: a new one when the window confirms another pass holder
        than this visit's and none of that one's frames is left in the window (the next in a
        queue stepping up with no gap: they get their own liveness judgement, guidance and
        refusals). While frames of both are in the window it stays one visit; and a pass holder
        judged an attack stays one in every visit until the gate is left empty (`attacked`):
        a replay switching faces gets no fresh verdict for a face already refused. Confirmed
        on their own frame, the pass holder's faces in the window are the visitor's faces
        from then on (Policy._stranger_next), not those of a stranger before them: the frames
        matched to them on their own (a stranger's frames name their nearest pass holder as
        candidate), or with none, those they were the best candidate of (fuse_frames)."""
        was = ep.subject
        if was is not None and was != best:
            if any(was in (e.person_id, e.face.candidate) for e in self.window):
                return ep
            ep = self.episode = Episode(obs.t, obs.t)
        if was != best and best in (self.window[-1].person_id, self.window[-1].face.candidate):
            mine = [e.face.embedding for e in self.window if e.person_id == best] or [
                e.face.embedding for e in self.window if e.face.candidate == best
            ]
            ep.faces = [v for v in mine if v is not None][-self.params.n :]
            ep.own_last, ep.others, ep.ticket_next = obs.t, 0, False
        ep.subject = best
        return ep

    def _stranger_next(self, obs: Observation, ep: Episode, f: FaceSeen) -> Episode:
        """The visit this face belongs to: a new one once the visitor's own face has been gone
        for half a window and k frames since showed faces that match nobody and are less like
        each of the visitor's last n faces than the matcher asks of one person (the next in a
        queue, a stranger stepping up right behind someone let in: they are told `not_enrolled`
        in turn, and guided). The visitor's own frames keep the visit and follow their face as
        it turns (on the recorded clips one frame in a row at most falls below the bound
        against the visitor's last five); someone passing in front of them for less than half
        a window, or two strangers seen in turn, do not split it; a frame with no embedding or
        one that is not finite (like nobody, NaN would stand for the visitor's face from then
        on), or a gate with no bound, keeps it too. A ticket that let someone in after the
        visitor's last own face was the next one's: their visit starts let in."""
        if self.same_person is None or f.embedding is None or not np.isfinite(f.embedding).all():
            return ep
        theirs = (
            not ep.faces
            or (ep.subject is not None and f.person_id == ep.subject)
            or float(np.max(np.stack(ep.faces) @ f.embedding)) >= self.same_person
        )
        if not theirs and f.person_id is not None:
            return ep  # another pass holder: _visitor tells once the window confirms them
        if not theirs:
            ep.others += 1
            gone = obs.t - (ep.start if ep.own_last is None else ep.own_last)
            if ep.others < self.params.k or gone < self.params.window_s / 2:
                return ep
            ep = self.episode = Episode(obs.t, obs.t, admitted=ep.ticket_next)
        ep.faces = [*ep.faces, f.embedding][-self.params.n :]
        ep.own_last, ep.others, ep.ticket_next = obs.t, 0, False
        return ep

    def _not_live(
        self, obs: Observation, ep: Episode, pid: str, mine: list[WindowEntry], live: int
    ) -> list[Decision]:
        """A matching face not (yet) live in k frames: an attack, too close, or wait.

        k frames judged not live (model, cues, motion, a PAD error): refused once per episode
        as an attack, and it stays one. k frames not live, some only because the face was too
        close to judge: refused once as `too_close`; the visitor may step back. A matched frame
        PAD did not judge counts as not live; a frame of the candidate that matched nobody on
        its own was never asked (PAD runs on matched faces; with fuse_frames it runs on the
        candidate's too, and that verdict counts) and counts neither way (counted as
        not live, two such frames and one miss of the model refused a live visitor as an attack
        and held them out until the gate was left empty). A frame live so far but with a face
        not yet seen to move (`not_moved`) counts neither way: it is a picture only once it has
        been still for long enough, and then its frames are judged not live.
        """
        p = self.params
        close = sum(1 for e in mine if not e.face.live and e.face.pad == PAD_TOO_CLOSE)
        unjudged = sum(
            1
            for e in mine
            if (e.face.live is None and e.person_id != pid)
            or (not e.face.live and e.face.pad == PAD_NOT_MOVED)
        )
        judged_not = len(mine) - live - close - unjudged
        score = round(sum(e.score for e in mine) / len(mine), 4)
        if judged_not >= p.k:
            if ep.attack_reported:
                return []
            ep.attack_reported = True
            self.attacked.add(pid)
            return [Decision(obs.t, obs.frame, DENY, FACE, pid, score, Reason.PRESENTATION_ATTACK)]
        if judged_not + close >= p.k:
            if ep.close_reported or ep.granted or ep.admitted:  # close on the way through
                return []
            ep.close_reported = True
            return [Decision(obs.t, obs.frame, DENY, FACE, pid, score, Reason.TOO_CLOSE)]
        waiting = any(not e.face.live and e.face.pad == PAD_NOT_MOVED for e in mine)
        if len(mine) >= p.k and obs.t - ep.start >= p.window_s / 2 and not waiting:
            # not while waiting to see the face move: holding still would get them refused
            self._guide(obs, ep, HOLD_STILL, NOT_YET_LIVE, pid)
        return []

    def _guide(
        self, obs: Observation, ep: Episode, notice: str, reason: str, pid: str | None
    ) -> None:
        """Queue guidance for the visitor, once per visitor for each word."""
        if notice not in ep.told and not (ep.granted or ep.admitted):
            ep.told.add(notice)
            self.guidance.append(Guidance(obs.t, obs.frame, notice, reason, pid))

    def _too_small(self, obs: Observation, gate: list[FaceSeen]) -> None:
        """One face at the gate, too small to recognise for window_s / 2: come closer, once
        until no such face has been seen for a window."""
        if len(gate) != 1 or TOO_SMALL not in gate[0].quality:
            return
        if self.small_since is None or obs.t - self.small_last > self.params.window_s:
            self.small_since, self.small_told = obs.t, False
        self.small_last = obs.t
        if not self.small_told and obs.t - self.small_since >= self.params.window_s / 2:
            self.small_told = True
            self.guidance.append(Guidance(obs.t, obs.frame, COME_CLOSER, TOO_SMALL))

    def _candidate(self, counts: dict[str | None, int]) -> tuple[str | None, float | None]:
        """The person the window confirms, and the fused score when frames are fused.

        Voting: the same person matched in k frames on their own. Fusing: the same person is
        the best candidate in k frames, and the mean of those frames' embeddings matches them.
        """
        k = self.params.k
        if self.fuse is None:
            best = max((q for q in counts if q is not None), key=counts.__getitem__, default=None)
            return (best, None) if best is not None and counts[best] >= k else (None, None)
        cands: dict[str, list] = {}
        for e in self.window:
            if e.face.candidate is not None and e.face.embedding is not None:
                cands.setdefault(e.face.candidate, []).append(e.face.embedding)
        best = max(cands, key=lambda c: len(cands[c]), default=None)
        if best is None or len(cands[best]) < k:
            return None, None
        m = self.fuse(cands[best])
        return (best, round(float(m.score), 4)) if m.person_id == best else (None, None)

    def _confirmed(self, obs: Observation, pid: str, fused: float | None = None) -> list[Decision]:
        p = self.params
        mine = [e for e in self.window if pid in (e.person_id, e.face.candidate)]
        face = mine[-1].face
        voted = [e.score for e in mine if e.person_id == pid]
        score = fused if fused is not None else round(sum(voted) / len(voted), 4)
        last = self.last_grant.get(pid)
        if last is not None and obs.t - last < p.cooldown_s:
            return []  # just let in; still in view
        if obs.t - self.held.get(pid, float("-inf")) < p.cooldown_s:
            return []  # just refused by the daemon (the relay, the audit log): not at once again
        if last is not None and obs.t - last < p.anti_passback_s:
            return self._deny_once(obs, pid, Reason.ANTI_PASSBACK, score)
        if face.valid_until is not None and obs.wall < obs.floor - CLOCK_TOLERANCE_S:
            return self._deny_once(obs, pid, Reason.CLOCK_BEHIND, score)
        if face.valid_until is not None and obs.wall > face.valid_until:
            return self._deny_once(obs, pid, Reason.PASS_EXPIRED, score)
        ticket = None
        via = FACE
        if p.mode == "face-and-ticket":
            pending = self.pending
            if pending is None or obs.t - pending.t > TWO_FACTOR_WINDOW_S:
                return []  # wait for the ticket
            self.pending = None
            if not pending.ticket.holder or pending.ticket.holder not in (pid, face.pass_ref):
                return self._deny_once(
                    obs, pid, Reason.TICKET_HOLDER_MISMATCH, score, FACE_AND_TICKET, p.cooldown_s
                )
            ticket, via = pending.ticket, FACE_AND_TICKET
        self.window.clear()
        self.last_grant[pid] = obs.t
        return [Decision(obs.t, obs.frame, GRANT, via, pid, score, Reason.OK, ticket)]
