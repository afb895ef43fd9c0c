"""`edge-gate sync`: a fleet member's only network process, between its SQLite files and the broker.

A lane (fleet.lane = its name). Out: the ledger's outbox (QoS 1; a row is deleted only when the
broker acknowledged it, so a kill -9 loses nothing and at worst sends a row twice); its audit
records (QoS 1, never retained) to the office, which stores them and acknowledges: the lane's
cursor moves only on that acknowledgement; a retained heartbeat carrying its epoch, the outbox's
high-water mark and the audit log's head; signed acknowledgements of enrollments and deletions.
In: other lanes' redemptions (applied by (lane, epoch, seq), so duplicates and reordering are
harmless, and a replaced lane's new epoch is never mistaken for a replay; over-use found on
arrival is audited as `double_use` naming the lanes), office messages (edge/fleet/apply.py) and
heartbeats (the fleet's clock, edge/fleet/clock.py).

The office (fleet.lane = "office"). Out: what the office's commands queued (signed with the
issuer key, edge/fleet/officestore.py), its own heartbeat (a clock vote) and audit
acknowledgements. In: heartbeats, every lane's audit records and heads, acknowledgements.

Everything sent is signed with the member's lane key; everything received passes
`messages.authenticate` (signer = the topic's lane = a rostered key). Messages of lanes the
roster does not name yet are kept (bounded) and tried again when a roster arrives. Refusals
are audited at most once a minute per sender and reason, with a count, so junk costs little.
A message this member failed to store (its disk) stays unacknowledged; sync resumes its session
with a growing wait (`StoreRetry`), so the broker delivers it again while sync runs.
Its own files failing (full, locked, read-only) end nothing: each failed write is said once
(`sync write_failed what=…`, with the fix; one failing and working in turn summed up once a
minute, `FaultLines`) and tried again, and nothing it acknowledged is lost; the ledger, audit
log and fleet.db deleted or replaced underneath are opened again at their paths
(`_follow_files`), never written on after they left the disk.
At each connection a lane first reads back its own retained heartbeat (or last will) and its
retained marks (a topic the will never writes, so a crash does not hide them): if the fleet has
seen more from it than its files hold (a restored ledger or audit log), it starts a new epoch and
grants nobody by face until the office's forget list was applied again; its heartbeat counter
goes on past their numbers (a count fleet.db did not take is not used twice). Its marks must
come back to it once published: when they do not, the broker's ACL predates them
(`broker_acl: outdated` in its heartbeat).
paho's network thread only queues; every SQLite access happens on the calling thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import paho.mqtt.client as mqtt

from edge import tickets as tk
from edge.config import Config
from edge.db import let_go, sqlite_fix
from edge.errors import AuditError, EdgeGateError, Unforeseen
from edge.fleet import messages as msg
from edge.fleet.apply import LIST_SINCE, OFFICE_LIST, OfficeApplier
from edge.fleet.brokerconf import ACL_OUTDATED_FIX
from edge.fleet.client import make_client
from edge.fleet.clock import ClockView, finite_number, fleet_clock
from edge.fleet.identity import load_lane_key
from edge.fleet.lane import tickets_stamp
from edge.fleet.officestore import OfficeStore
from edge.fleet.proof import verify_proof
from edge.fleet.state import BEHIND_OFFICE, STATE_EVERY_S, FleetState, fleet_pubkey_paths
from edge.gate.audit import AuditLog, AuditRecord
from edge.gate.faces import file_id
from edge.tickets.ledger import Ledger
from edge.tickets.pretix_desk import pretix_heartbeat
from edge.tickets.pretix_offline import is_pretix_text, lane_proof

log = logging.getLogger(__name__)

DOUBLE_USE = "double_use"
SEQ_REUSED = "seq_reused"  # a lane's redemption number used again for another ticket
BATCH = 500
AUDIT_BATCH = 100  # records per audit message
AUDIT_WINDOW = 2000  # records sent ahead of the office's acknowledgement
AUDIT_RESEND_S = 30.0  # no acknowledgement for this long: send again from the cursor
POLL_S = 0.01  # how often the ledger is checked for new local redemptions (a cheap pragma)
SELF_CHECK_S = 1.5  # after subscribing: time for the broker to hand back our heartbeat and marks
ACL_READBACK_S = 10.0  # after publishing our marks: time for the broker to hand them back
REFUSAL_EVERY_S = 60.0  # at most one audit record per sender and reason in this window
STORE_RETRY_FIRST_S = 15.0  # a message this member failed to store: the first try again after
STORE_RETRY_MAX_S = 300.0  # ... and twice as long each time it fails again, at most this
RESUME_GRACE_S = 5.0  # a session resumed on purpose: the link counts as up for this long
WRITE_RETRY_S = 1.0  # a write of sync's own that failed (state, outbox clean-up): tried again after
STATE_LOCK_WAIT_S = 1.0  # a lane's fleet.db write waits at most this long for another's lock
CLEANUP_RETRY_MAX_S = 60.0  # ... the outbox clean-up, failing again, at most this long after
FLAP_WINDOW_S = 60.0  # a write failing and working in turn: its lines at most once this long
FAULTS = (EdgeGateError, sqlite3.Error, OSError)  # what a file of sync's own can raise at run time


# the office heartbeat's fields naming the newest a lane must hold to redeem tickets, by what
# OfficeApplier.office_newest calls them
NEWEST_FIELDS = {"revocations": "revoked_seq", "roster": "roster_seq"}


@dataclass
class _Peer:
    """What this member last heard from another member (signed heartbeats and last wills)."""

    epoch: str = ""
    seq: int = -1
    time: float = 0.0  # the peer's clock in its newest heartbeat
    received: float = 0.0  # our clock when it arrived (for a retained one: its own time)
    reading: float | None = None  # its clock minus ours, from live heartbeats only
    seen: float = -1e18  # our monotonic time of the newest live heartbeat
    gone: str = ""  # "lost" (the broker published its last will) or "stopped"
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoreRetry:
    """When to try again what this member failed to store (its disk locked or full, a gallery
    key problem): `first_s` after the failure, twice as long after each try that failed again,
    at most `max_s`, so a disk that stays full costs a try every few minutes, never a loop;
    from `first_s` again once what arrived after a try was stored. Pure: times are given."""

    first_s: float = STORE_RETRY_FIRST_S
    max_s: float = STORE_RETRY_MAX_S
    delay: float = 0.0  # the wait before the next try (0: first_s)
    due: float | None = None  # when the next try is due; None: nothing waits
    tries: int = 0  # tries since the last success

    def __post_init__(self) -> None:
        self.delay = self.delay or self.first_s

    def failed(self, now: float) -> None:
        """A store failed: a try is due `delay` from now, unless one is due already."""
        if self.due is None:
            self.due = now + self.delay

    def stored(self) -> None:
        """What arrived after the last try was stored: the next failure waits `first_s`."""
        if self.due is None:
            self.delay, self.tries = self.first_s, 0

    def take(self, now: float) -> bool:
        """True when a try is due now; the wait after it doubles (at most `max_s`)."""
        if self.due is None or now < self.due:
            return False
        self.due, self.tries = None, self.tries + 1
        self.delay = min(self.delay * 2, self.max_s)
        return True


@dataclass
class _Turns:
    """How one of sync's writes has been said: see FaultLines."""

    said: dict[str, float] = field(default_factory=dict)  # error -> when last said
    failing: bool = False
    error: str = ""  # the current (or last) error
    loud: bool = False  # this spell's failure was said, so its end is said too
    quiet: int = 0  # failures not said since the last summary
    quiet_error: str = ""  # the last of them
    due: float = 0.0  # when they are summed up


@dataclass
class FaultLines:
    """Which lines a write of sync's own that fails (`what`: state, outbox, step...) says.
    The first failure is said, and its end; a write failing and working in turn is not said
    again within `window_s` of its error's last line (that was two lines a second), its
    failures counted and summed up in one line when the window is over. An error not said
    within the window is said at once, even while the write is failing. Pure: times are
    given."""

    window_s: float = FLAP_WINDOW_S
    turns: dict[str, _Turns] = field(default_factory=dict)

    LIMIT: ClassVar[int] = 100  # errors remembered per write: bounded however many kinds

    def failed(self, what: str, error: str, now: float) -> bool:
        """A write failed with `error`: True when that is to be said now."""
        t = self.turns.setdefault(what, _Turns())
        if t.failing and error == t.error:
            return False  # the same spell
        started, t.failing, t.error = not t.failing, True, error
        last = t.said.get(error)
        if last is not None and now - last < self.window_s:
            if not t.quiet:
                t.due = last + self.window_s
            t.quiet, t.quiet_error = t.quiet + 1, error
            t.loud = t.loud and not started
            return False
        if error in t.said or len(t.said) < self.LIMIT:
            t.said[error] = now
        t.loud = True
        return True

    def recovered(self, what: str) -> bool:
        """The write went through: True when its end is to be said (its failure was)."""
        t = self.turns.get(what)
        if t is None or not t.failing:
            return False
        t.failing = False
        return t.loud

    def due(self, now: float) -> list[tuple[str, int, str, bool]]:
        """(what, failures not said, the last of their errors, failing now) for each write
        whose window is over; each error summed up is quiet again for a window."""
        out = []
        for what, t in self.turns.items():
            if t.quiet and now >= t.due:
                out.append((what, t.quiet, t.quiet_error, t.failing))
                t.said[t.quiet_error], t.quiet = now, 0
        return out


class _NotKept(Exception):
    """A message to keep aside (a lane not rostered yet, a ticket key still to come) that
    fleet.db could not take: not acknowledged, so the broker's session holds it."""


def _fix_of(e: BaseException) -> str:
    """An error as the operator reads it: with its fix (EdgeGateError carries its own)."""
    if isinstance(e, EdgeGateError):
        return str(e)
    if isinstance(e, sqlite3.Error):
        return f"{e} (fix: {sqlite_fix(e)})"
    return f"{e} (fix: check the file, its folder and the disk)"


def _sender_of(topic_: str) -> str:
    """The member a topic names (edge-gate/<site>/<kind>/<member>...), for refusals."""
    return topic_.split("/")[3] if topic_.count("/") >= 3 else topic_


@dataclass(frozen=True)
class _Arrival:
    """A message as the network thread received it. It is acknowledged to the broker (PUBACK)
    only after it was applied and committed, or refused on purpose, and only on the connection
    it came on: what is still queued when sync stops or crashes comes again from the session."""

    topic: str
    payload: bytes
    retained: bool
    mid: int = 0
    qos: int = 0  # 0: nothing to acknowledge (kept messages tried again)
    conn: int = -1  # the connection it arrived on
    arrived: float = 0.0  # our clock when it arrived: a clock reading is taken against this
    live: bool = False  # not retained and after this connection's SUBACK (not the backlog)


@dataclass(frozen=True)
class _Checked:
    """A message whose signature (and, for a redemption, ticket) checked out, to apply."""

    topic: str
    sender: str
    m: msg.Message
    retained: bool
    ticket: tk.Ticket | None
    arrived: float = 0.0  # as in _Arrival
    live: bool = False


def restore_reason(announced: msg.Message, epoch: str, out_high: int, audit_count: int) -> str:
    """Why this lane must start a new epoch, given what it last announced to the fleet (its own
    retained heartbeat or last will), or "" when its files are at least as new. Pure."""
    b = announced.body
    audit = (b.get("evidence") or {}).get("audit") or {}
    if announced.epoch != epoch:
        return f"the fleet last saw epoch {announced.epoch[:8]}, the ledger holds {epoch[:8]}"
    if int(b.get("out_seq") or 0) > out_high:
        return (
            f"the ledger's outbox went back to {out_high} (the fleet saw {b.get('out_seq')}):"
            " restored from an older copy"
        )
    count = int(audit.get("count") or 0)
    if count > audit_count:
        return f"the audit log went back to {audit_count} records (the fleet saw {count})"
    return ""


def restore_reason_of(
    announced: list[msg.Message], epoch: str, out_high: int, audit_count: int
) -> str:
    """`restore_reason` against the highest marks the fleet holds from this lane: its retained
    heartbeat or last will (a will's marks date from its connection) and its retained marks.
    Another epoch in the newest of them (by the lane's own signed time) is a restore; one only
    in an older message is not: a will signed before this lane started its current epoch (a
    restore found, then a crash in the same connection) is older than the marks of that epoch.
    Pure."""
    if not announced:
        return ""
    newest = max(m.time for m in announced)
    for m in announced:
        if m.time >= newest or m.epoch == epoch:
            why = restore_reason(m, epoch, out_high, audit_count)
            if why:
                return why
    return ""


MEASURE_GRACE_HEARTBEATS = 3  # after a start, members heard in this many periods judge the clock


class Sync:
    """One member's sync loop; `step()` does one round of work, `run()` loops until stopped."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time):
        fl = cfg.fleet
        self.cfg, self.fleet, self.clock = cfg, fl, clock
        self.me, self.site = fl.lane, fl.site
        self._started = time.monotonic()  # a clock measure from fewer members waits past a grace
        self._faults: dict[str, str] = {}  # the writes of sync's own failing now
        self._fault_lines = FaultLines(FLAP_WINDOW_S)  # which of their failures and ends are said
        self._hb = 0  # the heartbeat counter, ahead of fleet.db while it cannot be written
        self._floor_said = ""  # why the office's heartbeat named no forget list, as last said
        self._closing = False  # close() has begun: a disconnect is its own, not an outage
        self._audit_gone = ""  # why the audit log at audit.path does not open (moved away)
        self._unforeseen_seen = Unforeseen()
        self._reported: dict[str, int] = {}  # double uses recorded that fleet.db did not note
        self.connected = False
        self.is_office = fl.lane == msg.OFFICE
        self.key = load_lane_key(cfg)
        self.state = FleetState(cfg.resolve(fl.state_db), office=self.is_office)
        self.audit = AuditLog(cfg.resolve(cfg.audit.path), cfg.audit.retention_days)
        self.issuer_keys = [tk.load_public(cfg.resolve(p)) for p in cfg.tickets.pubkeys]
        self.roster = self.state.roster()
        self.ledger: Ledger | None = None
        self.store: OfficeStore | None = None
        self.office: OfficeApplier | None = None
        if self.is_office:
            self.store = OfficeStore(self.state)
            self.epoch = self.state.get("office_epoch") or uuid.uuid4().hex[:16]
            self.state.put(office_epoch=self.epoch)
        else:
            self.ledger = Ledger(
                cfg.resolve(cfg.tickets.ledger),
                cfg.gate.id,
                cfg.tickets.anti_passback_s,
                outbox=True,
            )
            self.office = OfficeApplier(cfg, self.state, self._audit_event)
            self.epoch = self.ledger.epoch
            if self.state.get("epoch") != self.epoch:
                self._new_epoch(f"ledger epoch {self.epoch[:8]} is new here", rotated=False)
        # the files sync holds open, as (device, inode): one deleted or replaced underneath is
        # opened again at its path (`_follow_files`), never written on in a file no longer there
        self._files = self._file_ids()
        self._follow_due = 0.0
        self._ledger_gone = ""  # why the ledger at tickets.ledger does not open (moved away)
        self._last_marks: dict[str, Any] | None = None  # the marks this lane last announced
        self._done_unsaved: list[int] = []  # outbox rows the broker has, not yet deleted here
        # their clean-up tried again with a growing wait: a ledger locked past its busy timeout
        # holds the loop for that long at each try
        self.cleanup_retry = StoreRetry(WRITE_RETRY_S, CLEANUP_RETRY_MAX_S)
        self.office_retry = StoreRetry(WRITE_RETRY_S, CLEANUP_RETRY_MAX_S)  # the same, office
        self._epoch_unsaved = ""  # a new epoch fleet.db could not take yet (tried each second)
        self._keys_stamp: tuple = ()
        self.ticket_keys = self._ticket_keys()
        self.client, self.addr = make_client(cfg, f"edge-gate-{fl.site}-{fl.lane}", manual_ack=True)
        self._conn = 0  # counts connections (network thread): an ack goes on its own one only
        self._subacked = False  # this connection's SUBACK came: what arrives from here is live
        # our own retained heartbeat (or will) and marks of this connection, set aside on arrival
        # (network thread): a session's backlog before them in the inbox cannot hide them
        self.own: dict[str, _Arrival] = {}
        self.hb_topic = msg.topic(self.site, "heartbeat", self.me)
        self._set_will()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self._outage_logged = False  # one line per outage, not one per reconnection attempt
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self._override_mid = -1
        self._marks_mid = -1
        self.inbox: queue.Queue[_Arrival] = queue.Queue()
        self.acked: queue.Queue[int] = queue.Queue()
        self.wake = threading.Event()
        self.resend = True
        self.pending: dict[int, tuple[str, int]] = {}  # mid -> ("outbox"|"office"|"other", id)
        self.sent_outbox = 0
        self.sent_office = 0
        self._named: dict[str, int] | None = None  # what the office's heartbeat last named
        self.sent_audit = self.state.cursor("audit")
        self.audit_waiting = 0.0  # monotonic time since which records wait for the office
        self.audit_acks: dict[str, dict[str, Any]] = {}  # office: lane -> ack body to send
        self.peers: dict[str, _Peer] = {}
        self.clock_view = ClockView(0.0)
        self.self_checked = True  # until subscribed: nothing is published anyway
        self.compared = True
        self.check_until = 0.0
        # this connection: our own retained "heartbeat" (or last will) and "marks", to compare
        self.announced: dict[str, msg.Message] = {}
        self.marks_readable = True  # False when the broker refused the marks subscription
        self.marks_sent: dict[str, Any] | None = None  # the marks last published (this connection)
        self.marks_topic = msg.marks_topic(self.site, self.me)
        self.readback: tuple[float, float] | None = None  # marks published at, awaited until
        self.marks_back = -1.0  # when our marks last came back live (network thread)
        self.acl_problems: set[str] = set()  # "marks" (did not come back), "override" (refused)
        self.acl_known = False  # our marks came back, or did not in time, at least once
        self.broker_acl: str | None = None  # "ok" / "outdated" once acl_known
        self.next_heartbeat = 0.0
        self.next_out_heartbeat = 0.0
        self.stop_requested = False
        self.refusals: dict[tuple[str, str], list] = {}
        self._seen = {"ledger": -1, "audit": -1}
        self._more = True  # the last outbox read filled a batch, or a resend is due
        self._audit_next = 0.0
        self._link: tuple = ()
        self._state_due = 0.0
        self._retry_pending = False
        # what this member failed to store: the broker holds it unacknowledged and delivers it
        # again only when the session is resumed (MQTT 3.1.1, 4.4), so sync resumes it itself
        self.store_retry = StoreRetry(STORE_RETRY_FIRST_S, STORE_RETRY_MAX_S)
        self._held = 0  # messages the broker holds unacknowledged since the last try
        self._held_conn = -1  # the connection they came on
        self._kept_failed = False  # a kept message failed again: kept, tried with the next try
        self._unkept: list[_Arrival] = []  # taken from fleet.db, failed, and not kept again
        self._tried_conn = -1  # the connection a try ended: what arrives after it was stored
        self._goodbye = False  # our DISCONNECT to resume the session: no outage
        self._resume_until = 0.0  # while resuming on purpose, the link counts as up until then
        self.stats = {"published": 0, "applied": 0, "duplicates": 0, "refused": 0}
        # (redemption time, seconds until applied here) for the benchmark; at most 100k
        self.delays: list[tuple[float, float]] = []

    @property
    def state(self) -> FleetState:
        """fleet.db, whichever file is open at its path."""
        return self._state

    @state.setter
    def state(self, st: FleetState) -> None:
        # a lane's writes wait for another process's lock (an operator's shell) at most a
        # moment: they are tried again, and the loop goes on heartbeating and receiving
        if not self.is_office:
            st.lock_wait_s = STATE_LOCK_WAIT_S
        self._state = st

    # --- signing ---------------------------------------------------------------------------------

    def _signed(self, type_: str, seq: int, body: dict, epoch: str | None = None) -> bytes:
        """A message from this member, signed with its lane key (epoch: this member's now)."""
        e = self.epoch if epoch is None else epoch
        m = msg.Message(type_, self.site, self.me, seq, self.clock(), body, epoch=e)
        return msg.encode(msg.sign(m, self.key))

    def _hb_seq(self) -> int:
        """The next heartbeat number; counted on in memory while fleet.db cannot be written."""
        try:
            stored = int(self.state.get("hb_seq", 0))
        except FAULTS as e:
            stored = 0
            self._fault("state", e)
        self._hb = max(self._hb, stored) + 1
        try:
            self.state.put(hb_seq=self._hb)
        except FAULTS as e:
            self._fault("state", e)
        return self._hb

    # --- faults of sync's own files --------------------------------------------------------------

    def _fault(self, what: str, e: BaseException) -> None:
        """A file of sync's own failed (full, locked, read-only, gone): said once until it works
        again, with the fix (failing and working in turn: `FaultLines`); sync goes on and
        tries again."""
        error = _fix_of(e)
        if self._fault_lines.failed(what, error, time.monotonic()):
            log.error(
                "sync write_failed what=%s error=%s; sync goes on and tries again", what, error
            )
        self._faults[what] = str(e)

    def _unforeseen(self, e: Exception) -> None:
        """A step that raised what no step expects: logged (its traceback the first time that
        error is seen); what it had taken from the inbox was not acknowledged."""
        kind, first, unsaid = self._unforeseen_seen.seen(e)
        if unsaid is None:  # said less than a minute ago: counted, said with the next line
            return
        log.error(
            "sync step_failed error=%s%s (fix: report it as a bug; sync goes on, the broker "
            "holds what was not acknowledged)",
            kind,
            f" ({unsaid} more times since its last line)" if unsaid else "",
            exc_info=first,
        )

    def _fault_over(self, what: str) -> None:
        if self._faults.pop(what, None) is not None and self._fault_lines.recovered(what):
            log.info("sync write_ok what=%s: written again", what)

    def _say_turns(self) -> None:
        """Sum up the failures of writes failing and working in turn that were not said."""
        for what, n, error, failing in self._fault_lines.due(time.monotonic()):
            log.warning(
                "sync write_flapping what=%s: failed %d more times, working in between, "
                "since its last line (last error=%s); %s",
                what,
                n,
                error,
                "failing now" if failing else "working now",
            )

    def _file_ids(self) -> dict[str, tuple[int, int] | None]:
        """The files sync holds open, as (device, inode); None: not there."""
        ids = {"audit": file_id(self.audit.path)}
        if self.ledger is not None:  # the office's fleet.db is its store: not followed here
            ids["ledger"] = file_id(self.cfg.resolve(self.cfg.tickets.ledger))
            ids["state"] = file_id(self.state.path)
        return ids

    def _follow_files(self, now_too: bool = False) -> None:
        """The ledger, audit log or fleet.db deleted or replaced underneath (a restore, a repair,
        space freed): opened again at its path, as at start, so nothing is written on into a
        file no longer on disk (lost at the next start) and the gate's new redemptions are
        published. One that does not open is tried again each second, said once; meanwhile
        other lanes' redemptions are not acknowledged (the broker's session holds them)."""
        if time.monotonic() < self._follow_due and not now_too:
            return
        self._follow_due = time.monotonic() + STATE_EVERY_S
        now = self._file_ids()  # read before opening: one replaced in between is seen next time
        moved = [n for n, i in now.items() if i != self._files.get(n)]
        if not moved:
            return
        if not any(n in self._faults for n in moved):
            log.error(
                "sync file_moved files=%s: deleted or replaced while sync ran; opening them "
                "again at their paths",
                ",".join(moved),
            )
        reopen = {"audit": self._reopen_audit, "ledger": self._reopen_ledger}
        reopen["state"] = self._reopen_state
        opened: list[str] = []
        for name in moved:
            try:
                reopen[name]()
            except FAULTS as e:  # its old identity stays: tried again in a second
                self._fault(name, e)
                if name == "ledger":
                    self._ledger_gone = str(e)
                if name == "audit":
                    self._audit_gone = str(e)
                continue
            # one deleted was made by this open: its identity now, or it is taken for a move
            self._files[name] = now[name] if now[name] is not None else self._file_ids()[name]
            opened.append(name)
            self._fault_over(name)
            log.info("sync reopened %s at its path", name)
        changed = [n for n in opened if n in ("audit", "ledger")]
        if self.ledger is not None and changed and not self._ledger_gone:
            try:
                self._files_changed()
            except FAULTS as e:  # compared again in a second: followed as if moved again
                self._fault("ledger", e)
                for n in changed:
                    self._files[n] = None

    # Each reopen first lets go of the old file's log (edge.db.let_go): opened before, the file
    # at the path would read the old file's pages from the log their names share. The old
    # connection is kept until the new one opens (one that does not is tried again).

    def _reopen_audit(self) -> None:
        let_go(self.audit, close=False)
        new = AuditLog(self.audit.path, self.cfg.audit.retention_days)
        old, self.audit, self._audit_gone = self.audit, new, ""
        self._seen["audit"] = -1
        with contextlib.suppress(*FAULTS):
            old.close()

    def _reopen_ledger(self) -> None:
        cfg = self.cfg
        path = cfg.resolve(cfg.tickets.ledger)
        if self.ledger is not None:
            let_go(self.ledger, close=False)
        new = Ledger(path, cfg.gate.id, cfg.tickets.anti_passback_s, outbox=True)
        old, self.ledger, self._ledger_gone = self.ledger, new, ""
        # outbox numbers in flight or acknowledged belong to the old file: none deleted here
        self.pending = {m: w for m, w in self.pending.items() if w[0] != "outbox"}
        self._done_unsaved = []
        self._seen["ledger"] = -1
        with contextlib.suppress(*FAULTS):
            if old is not None:
                old.close()

    def _reopen_state(self) -> None:
        """A new or other fleet.db: what sync holds (roster, epoch) written to it; the forget
        list is replayed before faces are granted again (the gate follows the file too)."""
        let_go(self.state, close=False)
        new = FleetState(self.state.path, office=self.is_office)
        old, self.state = self.state, new
        if self.office is not None:
            self.office.state = new
        with contextlib.suppress(*FAULTS):
            old.close()
        if new.roster().seq < self.roster.seq:
            new.set_roster(self.roster)
        if new.get("epoch") != self.epoch:  # the same epoch; the forget list asked for again
            self._epoch_unsaved = f"the fleet state {new.path} was replaced while sync ran"
            with contextlib.suppress(*FAULTS):  # else tried again each second
                self._save_epoch(self._epoch_unsaved)
        self._office_again()  # what the office sent, into the file this one replaced

    def _office_again(self) -> None:
        """Ask the broker again for the office's retained messages (a subscription delivers
        them anew): a new or restored fleet.db holds none of them, and a lane that lacks the
        office's newest revocation or roster refuses tickets until it has them."""
        if self.connected:
            self.client.subscribe([(o, 1) for o in self._office_topics()])

    def _office_topics(self) -> list[str]:
        return [
            msg.topic(self.site, "office", x)
            for x in ("roster", "revocations", "unrevocations", "keys", "forgotten")
        ]

    def _files_changed(self) -> None:
        """The ledger or audit log opened again: another ledger (its own epoch), or files
        behind what this lane last announced (an older copy), go on under a new epoch."""
        led = self.lane_ledger
        if led.epoch != self.epoch:
            self._rotate(led.epoch, f"the ledger was replaced while sync ran ({led.epoch[:8]})")
            return
        why = ""
        if self._last_marks is not None:
            m = msg.Message(
                msg.MARKS, self.site, self.me, 0, 0.0, self._last_marks, epoch=self.epoch
            )
            why = restore_reason(m, self.epoch, led.outbox_high(), self.audit.head().count)
        if why:
            self._rotate(led.new_epoch(), why)
        else:
            self.resend, self._more = True, True

    def _set_will(self) -> None:
        """The broker publishes this (retained) if the connection drops without a goodbye."""
        body = {"reason": "lost", "connected_at": self.clock(), **self._marks()}
        self.client.will_set(
            msg.topic(self.site, "heartbeat", self.me),
            self._signed(msg.OFFLINE, self._hb_seq(), body),
            qos=1,
            retain=True,
        )

    def _marks(self) -> dict[str, Any]:
        """How far this lane's files go, as announced: a restored copy is behind these. The
        `evidence` fields are the chain heads of the audit log and the ledger, which the office
        checks the records it receives against (`fleet audit verify`)."""
        if self.ledger is None:
            return {}
        a = self.audit.head()
        count, head = self.ledger.head()
        ledger = {"epoch": self.ledger.epoch, "count": count, "head": head}
        return {
            "out_seq": self.lane_ledger.outbox_high(),
            "evidence": {"audit": {"count": a.count, "head": a.head}, "ledger": ledger},
        }

    # --- paho callbacks (network thread): only queue --------------------------------------------

    def _subscriptions(self) -> list[tuple[str, int]]:
        t = msg.topics(self.site)
        if self.is_office:
            return [(t["heartbeat"], 1), (t["audit"], 1), (t["acks"], 1), (t["office"], 1)]
        office = self._office_topics()
        return [
            (t["redemptions"], 1),
            (t["heartbeat"], 1),
            *[(o, 1) for o in office],
            (t["people"], 1),
            (msg.audit_ack_topic(self.site, self.me), 1),
        ]

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._resume_until = 0.0
            log.error("sync broker refused connection: %s", reason_code)
            return
        self._conn += 1
        self._subacked, self.own = False, {}
        client.subscribe(self._subscriptions())
        if not self.is_office:  # apart: a broker whose ACL predates them refuses only these
            self._marks_mid = client.subscribe(self.marks_topic, 1)[1]
            self._override_mid = client.subscribe(msg.override_topic(self.site, self.me), 1)[1]

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        """Connected counts from the SUBACK on: before it, other lanes' messages could be missed."""
        if mid == self._marks_mid:
            if any(rc.is_failure for rc in reason_codes):
                self.marks_readable = False  # the restore check does not wait for them
                self.acl_problems.add("marks")
                log.error("sync marks subscription refused: %s; %s", reason_codes, ACL_OUTDATED_FIX)
            return
        if mid == self._override_mid:
            if not any(rc.is_failure for rc in reason_codes):
                self.acl_problems.discard("override")
            else:
                self.acl_problems.add("override")
                log.error(
                    "sync override subscription refused: %s; supervisor overrides cannot reach "
                    "this lane (%s)",
                    reason_codes,
                    ACL_OUTDATED_FIX,
                )
            return
        if any(rc.is_failure for rc in reason_codes):
            log.error("sync subscription refused: %s (check the broker's ACL)", reason_codes)
            return
        # the session's backlog came before the SUBACK (queued while we were away): from here
        # on, what arrives not retained is live, a clock reading
        self._subacked = True
        if self.connected:  # a re-subscription (the forget list again), not a new connection
            return
        self.self_checked, self.check_until = False, time.monotonic() + SELF_CHECK_S
        self.compared, self.announced, self.marks_readable = False, {}, True
        self.marks_sent, self.readback = None, None  # published again: the ACL checked again
        self.connected, self.resend, self._outage_logged = True, True, False
        self._goodbye, self._resume_until = False, 0.0
        log.info("sync connected broker=%s lane=%s", self.fleet.broker, self.me)
        self.wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._conn += 1  # what arrived on the lost connection comes again on the next one
        if self._goodbye:  # ours, to resume the session (its line was logged): no outage
            self.connected = self._goodbye = False
            self.wake.set()
            return
        if self._closing:  # sync stopping: no outage, nothing to retry
            self.connected = False
            log.info("sync disconnected from broker: stopped")
            return
        self.connected, self._outage_logged, self._resume_until = False, True, 0.0
        self.stats["disconnects"] = self.stats.get("disconnects", 0) + 1
        log.warning("sync disconnected from broker: %s; retrying", reason_code)
        self.wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._resume_until = 0.0  # a resumption that cannot connect is an outage
        if not self._outage_logged:
            self._outage_logged = True
            log.error(
                "sync broker unreachable broker=%s; retrying every few seconds (this lane's "
                "redemptions wait in its outbox)",
                self.fleet.broker,
            )

    def _on_message(self, client, userdata, message) -> None:
        try:
            topic_ = message.topic
        except UnicodeDecodeError:  # junk no rule names: refused here, never delivered again
            log.warning("sync refused a message whose topic is not UTF-8")
            client.ack(message.mid, message.qos)
            return
        if not message.retain and topic_ == self.marks_topic:
            self.marks_back = time.monotonic()  # read back on arrival: a busy inbox is no outage
        retained = bool(message.retain)
        a = _Arrival(
            topic_,
            bytes(message.payload),
            retained,
            message.mid,
            message.qos,
            self._conn,
            arrived=self.clock(),
            live=self._subacked and not retained,
        )
        if retained and topic_ in (self.hb_topic, self.marks_topic) and not self.is_office:
            self.own["marks" if topic_ == self.marks_topic else "heartbeat"] = a
        self.inbox.put(a)
        self.wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.acked.put(mid)
        self.wake.set()

    # --- work (caller's thread) -------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background, so sync starts and retries even while the broker is down."""
        self.client.connect_async(self.addr.host, self.addr.port, keepalive=5)
        self.client.loop_start()

    def run(self) -> int:
        """Loop until SIGTERM/SIGINT (main thread) or stop_requested."""
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                signal.signal(s, lambda *_: setattr(self, "stop_requested", True))
        self.start()
        try:
            while not self.stop_requested:
                self.wake.wait(POLL_S)
                self.wake.clear()
                try:
                    self.step()
                except FAULTS as e:  # a file of its own failed where no step expected it
                    self._fault("step", e)
                    self.wake.wait(WRITE_RETRY_S)  # then tried again, never in a tight loop
                except Exception as e:  # what no step foresaw: said, the next step runs
                    self._unforeseen(e)
                    self.wake.wait(WRITE_RETRY_S)
                else:
                    self._fault_over("step")
                self._say_turns()
        finally:
            self.close()
        return 0

    def step(self) -> None:
        """One pass: apply what arrived, publish what is pending, heartbeat, link state."""
        now = self.clock()
        self._follow_files()
        batch: list[_Arrival] = []
        while len(batch) < BATCH:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        if batch:
            try:
                failed = self._handle_batch(batch, now)
            except Exception as e:  # none acknowledged: the broker's session holds them all
                failed = {id(a) for a in batch}
                self._apply_failed(now, batch[0].topic, "", e, len(batch))
            self._ack([a for a in batch if id(a) not in failed])
            self._note_stores(batch, failed)
        if self._retry_pending:
            self._retry_pending = False
            try:
                taken = self.state.take_pending()
            except FAULTS as e:  # still in fleet.db: tried with the next try
                self._fault("state", e)
                self._kept_failed = True
                self.store_retry.failed(time.monotonic())
                taken = []
            kept = self._unkept + [_Arrival(t, p, False, arrived=now) for t, p in taken]
            self._unkept = []
            try:
                failed = self._handle_batch(kept, now)  # old: no clock readings
            except Exception as e:  # taken out of fleet.db: kept again, never dropped
                failed = {id(a) for a in kept}
                self._apply_failed(now, kept[0].topic if kept else "kept", "", e, len(kept))
            self._keep_again([a for a in kept if id(a) in failed], now)
        self._handle_acks()
        if self.connected and self.store_retry.take(time.monotonic()):
            self._try_stores_again()
        if self.connected:
            if self.resend:  # after (re)connection, everything not acknowledged goes again
                self.resend, self.sent_outbox, self.sent_office, self._more = False, 0, 0, True
                self.sent_audit = self.state.cursor("audit")
                self.pending.clear()
            if not self.compared and self.own and self.roster.seq >= 0:
                self._take_own(now)
            if (
                not self.self_checked
                and time.monotonic() >= self.check_until
                and (self.roster.seq >= 0 or self.is_office)
            ):  # not all of ours came back (a first connection), and a roster to check with
                self._compare()
            if self.self_checked:
                self._publish(now)
            self._check_readback()
        self._refresh_state(now)

    @property
    def lane_ledger(self) -> Ledger:
        """The lane's ledger: only a lane's sync has one (the office's has its store)."""
        if self.ledger is None:
            raise RuntimeError("the office's sync has no ledger")
        return self.ledger

    @property
    def office_store(self) -> OfficeStore:
        """The office's store: only the office's sync has one."""
        if self.store is None:
            raise RuntimeError("a lane's sync has no office store")
        return self.store

    @property
    def applier(self) -> OfficeApplier:
        """What applies the office's messages: only a lane's sync has one."""
        if self.office is None:
            raise RuntimeError("the office's sync applies no office messages")
        return self.office

    def _tx(self):
        if self.ledger is not None:
            return self.ledger.transaction()
        return self.state.transaction()

    def _publish(self, now: float) -> None:
        if self.ledger is not None:
            ledger_v = self.ledger.data_version()
            if ledger_v != self._seen["ledger"] or self._more:
                self._seen["ledger"] = ledger_v
                self._publish_outbox(now)
            audit_v = self.audit.data_version()
            if audit_v != self._seen["audit"] or self._audit_due():
                self._seen["audit"] = audit_v
                self._publish_audit()
            for pid, op, seq in self.office.take_acks() if self.office else []:
                body = {"person_id": pid, "op": op, "office_seq": seq}
                self._send(
                    msg.topic(self.site, "acks", self.me, pid),
                    self._signed(msg.ACK, seq, body),
                    ("other", 0),
                    retain=True,
                )
        else:
            self._publish_office()
        if time.monotonic() >= self.next_heartbeat:
            self._heartbeat(now)

    def _link_up(self) -> bool:
        """Connected, or resuming the session on purpose (for at most RESUME_GRACE_S): the
        broker holds what comes meanwhile, as for a connected member that is busy."""
        return self.connected or time.monotonic() < self._resume_until

    def _refresh_state(self, now: float) -> None:
        link = self._link_up()
        if time.monotonic() < self._state_due and (link,) == self._link[:1]:
            return
        self._state_due = time.monotonic() + STATE_EVERY_S
        self._refresh_keys()
        self.clock_view = self._clock()
        self._link = (link,)
        try:
            if self.is_office:  # the office's commands change the roster in this same file
                self.roster = self.state.roster()
            if self._epoch_unsaved:
                self._save_epoch(self._epoch_unsaved)
            measured = {"clock_offset": self.clock_offset()} if self._measured() else {}
            self.state.put(
                connected=link,
                last_contact=now if self.connected else self.state.get("last_contact"),
                **measured,
                clocks=self.clock_view.offsets if self._readings() else {},
                outbox=self.outbox_size(),
                broker_acl=self.broker_acl,
                peers={lane: self._peer_view(p) for lane, p in self.peers.items()},
                sync_seen=now,
            )
        except FAULTS as e:  # the gate reads a link older than offline_after_s: fails closed
            self._fault("state", e)
        else:
            self._fault_over("state")

    @staticmethod
    def _peer_view(p: _Peer) -> dict[str, Any]:
        return {
            "epoch": p.epoch,
            "time": p.time,
            "received": p.received,
            "gone": p.gone,
            "body": p.body,
        }

    def _audit_due(self) -> bool:
        """Audit rows written here don't change data_version: look each second."""
        if time.monotonic() < self._audit_next:
            return False
        self._audit_next = time.monotonic() + STATE_EVERY_S
        return True

    def _send(self, topic_: str, payload: bytes, what: tuple[str, int], retain=False) -> None:
        info = self.client.publish(topic_, payload, qos=1, retain=retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.pending[info.mid] = what
            self.stats["published"] += 1

    def _publish_outbox(self, now: float) -> None:
        room = max(0, BATCH - len(self.pending))
        rows = self.lane_ledger.outbox_batch(self.sent_outbox, room)
        self._more = len(rows) > 0 and len(rows) == room
        done = set(self._done_unsaved)  # the broker has them: their clean-up failed
        for r in rows:
            if r.seq in done:
                self.sent_outbox = r.seq
                continue
            body = {"ticket": r.proof, "ticket_id": r.ticket_id, "t": r.t, "day": r.day}
            self._send(
                msg.topic(self.site, "redemptions", self.me),
                self._signed(msg.REDEMPTION, r.seq, body),
                ("outbox", r.seq),
            )
            self.sent_outbox = r.seq
        if rows and time.monotonic() >= self.next_out_heartbeat:  # announce the new mark soon
            self.next_out_heartbeat = time.monotonic() + 1.0
            self.next_heartbeat = min(self.next_heartbeat, time.monotonic() + 0.2)

    def _publish_audit(self) -> None:
        cursor = self.state.cursor("audit")
        if self.sent_audit > cursor and time.monotonic() - self.audit_waiting > AUDIT_RESEND_S:
            self.sent_audit = cursor  # no acknowledgement: the office may not have had them
            self.audit_waiting = time.monotonic()
        if self.sent_audit - cursor >= AUDIT_WINDOW:
            return
        rows = self.audit.batch(self.sent_audit, AUDIT_BATCH)
        if not rows:
            return
        records = [
            {
                "id": r.id,
                "prev": r.prev,
                "hash": r.hash,
                **{k: v for k, v in asdict(r.record).items() if v not in ("", None)},
            }
            for r in rows
        ]
        if self.sent_audit <= cursor:
            self.audit_waiting = time.monotonic()
        self._send(
            msg.topic(self.site, "audit", self.me),
            self._signed(msg.AUDIT, rows[-1].id, {"records": records}),
            ("other", 0),
        )
        self.sent_audit = rows[-1].id

    def _publish_office(self) -> None:
        rows = self.office_store.outgoing(self.sent_office, max(0, BATCH - len(self.pending)))
        for rid, topic_, payload, retain in rows:
            self._send(topic_, payload, ("office", rid), retain=retain)
            self.sent_office = rid
        for lane, body in self.audit_acks.items():
            self._send(
                msg.audit_ack_topic(self.site, lane),
                self._signed(msg.AUDIT_ACK, int(body["upto"]), body),
                ("other", 0),
            )
        self.audit_acks.clear()

    def _heartbeat(self, now: float) -> None:
        self.next_heartbeat = time.monotonic() + self.fleet.heartbeat_s
        body: dict[str, Any] = {
            "period": self.fleet.heartbeat_s,
            "clock_offset": self.clock_offset(),
            "clocks": self.clock_view.offsets if self._readings() else {},
        }
        if self.store is not None:  # the forget list a new or restored lane must replay, and
            # the newest revocation and roster a lane must hold to redeem tickets
            try:
                body.update(self._newest_named())
            except FAULTS as e:  # null: lanes keep the newest they heard; the heartbeat goes
                self._fault("state", e)
                body["forget_list_seq"] = body["revoked_seq"] = body["roster_seq"] = None
        if self.ledger is not None:
            last = self.audit.newest_time("decision")
            gate = self.state.get("gate_status") or {}
            versions = self.state.get("gate_versions") or {}  # edge/gate/versions.py
            body.update(
                fps=gate.get("fps"),
                camera=gate.get("camera"),
                mode=gate.get("mode", self.cfg.gate.mode),
                last_decision_t=last,
                outbox=self.outbox_size(),
                models=versions.get("models"),
                config_version=versions.get("config_version"),
                **self._marks(),
            )
            if self.broker_acl is not None:  # "outdated": our marks did not come back
                body["broker_acl"] = self.broker_acl
            try:  # the office's `fleet status` shows a lane refusing tickets for it
                body["behind_office"] = bool(self.state.get(BEHIND_OFFICE))
            except FAULTS as e:
                self._fault("state", e)
            self._last_marks = {k: body[k] for k in ("out_seq", "evidence")}
            self._publish_marks(self._last_marks)
            if self.cfg.pretix.enabled:  # how old the lane's pretix data is, for the office
                body["pretix"] = pretix_heartbeat(self.cfg, now)
        self.client.publish(
            msg.topic(self.site, "heartbeat", self.me),
            self._signed(msg.HEARTBEAT, self._hb_seq(), body),
            1,
            retain=True,
        )

    def _newest_named(self) -> dict[str, int]:
        """The office's newest forget list, revocation and roster, as its heartbeat names them:
        read again only once every queued message was handed to the broker (a message still
        queued behind others would be named before it is sent, and every lane would wait for
        it: no face, no ticket); until then what the last heartbeat named."""
        if self._named is None or not self.office_store.outgoing(self.sent_office, 1):
            self._named = {
                "forget_list_seq": self.state.get("forget_list_seq") or 0,
                "revoked_seq": self.state.get("revoked_seq") or 0,
                "roster_seq": max(self.state.roster().seq, 0),
            }
        return self._named

    def _publish_marks(self, marks: dict[str, Any]) -> None:
        """Our marks, retained where our last will never writes, when they moved (and once per
        connection); they must come back on our own subscription within ACL_READBACK_S. While
        they did not, again each time the last try is over (the ACL may have been fixed)."""
        if marks == self.marks_sent and (self.broker_acl != "outdated" or self.readback):
            return
        sent_at = time.monotonic()
        payload = self._signed(msg.MARKS, self._hb_seq(), marks)
        if self.client.publish(self.marks_topic, payload, 1, retain=True).rc:
            return  # not connected: sent again when connected
        self.marks_sent = marks
        if self.readback is None:
            self.readback = (sent_at, sent_at + ACL_READBACK_S)

    def _check_readback(self) -> None:
        """Mosquitto accepts a publish and a subscription its ACL denies and delivers nothing:
        our marks not coming back in time means the site's ACL predates them."""
        if self.readback is not None and self.marks_back >= self.readback[0]:
            self.readback = None
            self.acl_problems.discard("marks")
            self.acl_known = True
        elif self.readback is not None and time.monotonic() > self.readback[1]:
            self.readback = None
            self.acl_problems.add("marks")
            self.acl_known = True
        state = "outdated" if self.acl_problems else "ok" if self.acl_known else None
        if state == self.broker_acl:
            return
        self.broker_acl = state
        if state == "outdated":
            what = sorted(self.acl_problems)
            log.error(
                "sync broker ACL outdated (%s): this lane's %s; %s",
                ", ".join(what),
                "retained marks did not come back"
                if "marks" in what
                else "override subscription was refused",
                ACL_OUTDATED_FIX,
            )
        elif state == "ok":
            log.info("sync broker ACL current: this lane's marks came back")
        self.next_heartbeat = min(self.next_heartbeat, time.monotonic() + 0.2)  # tell the office

    def _handle_acks(self) -> None:
        done: list[int] = []
        office: list[int] = []
        while True:
            try:
                what = self.pending.pop(self.acked.get_nowait(), None)
            except queue.Empty:
                break
            if what and what[0] == "outbox":
                done.append(what[1])
            elif what and what[0] == "office":
                office.append(what[1])
        if done:
            self._more = True  # room in the window again
            self._done_unsaved.extend(done)
        r = self.cleanup_retry
        if self._done_unsaved and (r.due is None or r.take(time.monotonic())):
            try:  # deleted only here: kept, they are sent again after a restart, counted once
                self.lane_ledger.outbox_done(self._done_unsaved)
            except FAULTS as e:
                self._fault("outbox", e)
                r.failed(time.monotonic())
            else:
                self._done_unsaved = []
                r.stored()
                self._fault_over("outbox")
        r = self.office_retry  # acknowledged rows the store could not drop: tried again
        if office or (r.due is not None and r.take(time.monotonic())):
            if self.office_store.sent(office):
                r.stored()
            else:
                r.failed(time.monotonic())

    # --- receiving -------------------------------------------------------------------------------

    def _ack(self, batch: list[_Arrival]) -> None:
        """Acknowledge what was applied and committed, or refused on purpose (junk, a replay,
        kept for a roster or keys): the broker's session holds the rest for the next
        connection. One that came on an earlier connection comes again on this one."""
        for a in batch:
            if a.qos and a.conn == self._conn:
                self.client.ack(a.mid, a.qos)

    def _note_stores(self, batch: list[_Arrival], failed: set[int]) -> None:
        """After a batch: what failed to store on this connection waits in the broker's
        session, tried again when `store_retry` says; a batch stored in full after a try
        resets its wait."""
        held = [a for a in batch if id(a) in failed and a.qos and a.conn == self._conn]
        if held:
            self._held += len(held)
            self._held_conn = self._conn
            self.store_retry.failed(time.monotonic())
        elif not failed and any(a.conn > self._tried_conn for a in batch):
            self.store_retry.stored()

    def _keep_again(self, kept: list[_Arrival], now: float) -> None:
        """Kept messages (acknowledged when kept) that failed to store are kept again and
        tried with the next try, not lost."""
        if not kept:
            return
        for i, a in enumerate(kept):
            try:
                self.state.add_pending(a.topic, a.payload, now)
            except Exception as e:  # fleet.db on the same full disk: held here instead
                self._unkept.extend(kept[i:])
                log.error(
                    "sync apply_failed: %d kept messages could not be kept again (held in "
                    "memory, tried with the next try): %s",
                    len(kept) - i,
                    _fix_of(e),
                )
                break
        self._kept_failed = True
        self.store_retry.failed(time.monotonic())

    def _try_stores_again(self) -> None:
        """Try again what failed to store: kept messages from fleet.db; what the broker holds
        unacknowledged is delivered again when the session is resumed (MQTT 3.1.1 delivers a
        session's unacknowledged QoS 1 messages again only then), so disconnect with a goodbye
        (no last will, no outage) and connect again with the same persistent session. One
        line per try; the restore check and the ACL readback run as at any connection."""
        if self._kept_failed:
            self._kept_failed, self._retry_pending = False, True
        held, self._held = self._held, 0
        if not held or self._held_conn != self._conn:
            return  # connected again since: the broker delivered them on the new connection
        r = self.store_retry
        self.stats["store_retries"] = self.stats.get("store_retries", 0) + 1
        log.warning(
            "sync store_retry try=%d held=%d next_wait_s=%.0f: resuming the broker session "
            "so it delivers again what this member failed to store",
            r.tries,
            held,
            r.delay,
        )
        self._tried_conn = self._conn
        self._goodbye, self._resume_until = True, time.monotonic() + RESUME_GRACE_S
        if self.client.disconnect() != mqtt.MQTT_ERR_SUCCESS:
            self._goodbye = False  # the connection was already gone: no goodbye to expect
        self.client.loop_stop()  # the network thread ends once the goodbye is sent
        self.client.connect_async(self.addr.host, self.addr.port, keepalive=5)
        self.client.loop_start()

    def _handle_batch(self, items: list[_Arrival], now: float) -> set[int]:
        """Check every signature first (no lock held), then apply: redemptions in one short
        ledger transaction (the gate's redemptions wait for it), the rest outside it. Returns
        the `id()`s of the arrivals this lane failed to apply (a locked or full disk): they are
        not acknowledged, so the broker's session delivers them again (`_try_stores_again`).
        When the transaction itself fails (the ledger locked past its busy timeout, a full
        disk at COMMIT), none of its redemptions was stored."""
        if items:  # the files written next are the ones at their paths (a few stat calls)
            self._follow_files(now_too=True)
        self._refresh_keys()
        checked: list[tuple[_Arrival, _Checked]] = []
        failed: set[int] = set()
        for a in items:
            try:
                c = self._check(a.topic, a.payload, a.retained, now)
            except _NotKept as e:
                failed.add(id(a))
                self._apply_failed(now, a.topic, "", e)
                continue
            if c is not None:
                checked.append((a, replace(c, arrived=a.arrived, live=a.live)))
        failed |= {id(a) for a, c in checked if c.ticket is None and not self._apply(c, now)}
        redemptions = [(a, c) for a, c in checked if c.ticket is not None]
        if redemptions and self._ledger_gone:  # never into a ledger no longer at its path
            failed |= {id(a) for a, _ in redemptions}
            why = f"the ledger is not open: {self._ledger_gone}"
            self._apply_failed(
                now, redemptions[0][0].topic, "", RuntimeError(why), len(redemptions)
            )
        elif redemptions:  # one ledger transaction (one fsync) for everything that arrived
            try:
                with self._tx() as conn:
                    failed |= {id(a) for a, c in redemptions if not self._apply_one(conn, c, now)}
            except Exception as e:  # nothing of it was committed: all of it comes again
                failed |= {id(a) for a, _ in redemptions}
                c0 = redemptions[0][1]
                self._apply_failed(now, c0.topic, c0.sender, e, len(redemptions))
        return failed

    def _apply_one(self, conn: sqlite3.Connection, c: _Checked, now: float) -> bool:
        """`_apply` inside the batch's ledger transaction: a message that failed (its audit
        record, say) leaves nothing of it committed, since it is not acknowledged and comes
        again (its redemption kept would make that a duplicate, its record never written)."""
        conn.execute("SAVEPOINT fleet_message")
        ok = self._apply(c, now)
        if not ok:
            conn.execute("ROLLBACK TO fleet_message")
        conn.execute("RELEASE fleet_message")
        return ok

    def _keep(self, topic_: str, payload: bytes, now: float) -> bool:
        """Keep a message aside in fleet.db (False: too large to keep); _NotKept when fleet.db
        cannot take it, so it is not acknowledged."""
        try:
            return self.state.add_pending(topic_, payload, now)
        except FAULTS as e:
            self._fault("state", e)
            raise _NotKept(str(e)) from None

    def _check(self, topic_: str, payload: bytes, retained: bool, now: float) -> _Checked | None:
        """Authenticate (and for a redemption, verify its ticket); None when refused; _NotKept
        when it was to be kept aside and fleet.db could not take it."""
        sender = _sender_of(topic_)
        try:
            m = msg.authenticate(
                topic_, msg.decode(payload, self.site), self.roster, self.issuer_keys
            )
            ticket = None
            if m.type == msg.REDEMPTION and self.ledger is not None and m.lane != self.me:
                ticket = self._proof(m, topic_, payload, now)
                if ticket is None:
                    return None
            return _Checked(topic_, sender, m, retained, ticket)
        except msg.NotRostered as e:
            self._keep(topic_, payload, now)
            self._refuse(now, sender, "not_rostered", f"{topic_}: {e}")
        except _NotKept:
            raise
        except msg.MessageError as e:
            self._refuse(now, sender, "refused", f"{topic_}: {e}")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            self._refuse(now, sender, "refused", f"{topic_}: bad body {e!r}")
        except Exception as e:  # whatever else a message causes: refused, sync goes on
            self._refuse(now, sender, "refused", f"{topic_}: {type(e).__name__}: {e}"[:300])
        return None

    def _proof(self, m: msg.Message, topic_: str, payload: bytes, now: float):
        """The ticket a redemption proves; one signed by a key this lane has not been sent yet
        is kept aside and tried again when the office's keys arrive."""
        text = str(m.body.get("ticket", ""))
        if self.cfg.pretix.enabled and is_pretix_text(text):  # a pretix ticket: its secret
            try:
                return lane_proof(self.cfg, text, m.body.get("ticket_id"))
            except ValueError as e:
                raise msg.MessageError(f"redemption's pretix ticket proves nothing: {e}") from None
        try:
            ticket = verify_proof(text, self.ticket_keys)
        except msg.MessageError as e:
            if "unknown key" not in str(e):
                raise
            kept = self._keep(topic_, payload, now)
            why = "kept until keys arrive" if kept else "too large to keep"
            self._refuse(now, m.lane, "refused", f"{topic_}: {e} ({why})")
            return None
        if m.body.get("ticket_id") not in (None, ticket.ticket_id):
            raise msg.MessageError(
                f"redemption from {m.lane!r} names {m.body.get('ticket_id')!r} but proves "
                f"{ticket.ticket_id!r}"
            )
        _ = (float(m.body["t"]), str(m.body["day"]))  # a body without them is refused here
        return ticket

    def _apply(self, c: _Checked, now: float) -> bool:
        """Apply one checked message; False when this lane failed to (its own disk or keys),
        True when it was applied or refused on purpose."""
        m = c.m
        try:
            if m.type in msg.ISSUER_TYPES:
                self._office_message(m, now)
            elif m.lane == self.me:
                if c.retained and m.type in (msg.HEARTBEAT, msg.OFFLINE, msg.MARKS):
                    self._count_past(m)
                    if self.ledger:
                        self._self_check("marks" if m.type == msg.MARKS else "heartbeat", m)
            elif c.ticket is not None:
                self._apply_redemption(m, c.ticket, now)
            elif m.type == msg.HEARTBEAT:  # a clock reading only if live, against its arrival
                self._heartbeat_in(m, c.retained or not c.live, c.arrived)
            elif m.type == msg.OFFLINE:
                p = self.peers.setdefault(m.lane, _Peer())
                p.gone = str(m.body.get("reason", "lost"))
            elif m.type == msg.ACK and self.store is not None:
                b = m.body
                self.store.store_ack(
                    m.lane, str(b["person_id"]), str(b["op"]), int(b["office_seq"]), now
                )
            elif m.type == msg.AUDIT and self.store is not None:
                self._audit_in(m, now)
            elif m.type == msg.AUDIT_ACK and self.ledger is not None:
                self._audit_ack(m)
        except msg.MessageError as e:
            self._refuse(now, c.sender, "refused", f"{c.topic}: {e}")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            self._refuse(now, c.sender, "refused", f"{c.topic}: bad body {e!r}")
        except Exception as e:  # this lane could not apply it (gallery key, disk): say so, go on
            self._apply_failed(now, c.topic, c.sender, e)
            return False
        return True

    def _apply_failed(self, now: float, topic_: str, sender: str, e: BaseException, n=1) -> None:
        """Say that this lane failed to store `n` messages (the first on `topic_`): logged, and
        audited at most once a minute, if the audit log itself can still be written."""
        what = topic_ if n == 1 else f"{topic_} and {n - 1} more"
        log.error("sync apply_failed topic=%s error=%s", what, _fix_of(e))
        self._refuse(now, sender or _sender_of(topic_), "apply_failed", f"{what}: {e}")

    def _refuse(self, now: float, sender: str, reason: str, detail: str) -> None:
        """Audit a refusal, at most once a minute per sender and reason (junk costs little)."""
        self.stats["refused"] += 1
        log.warning("sync %s %s", reason, detail)
        key = (sender, reason)
        seen = self.refusals.get(key)
        if seen is not None and time.monotonic() - seen[0] < REFUSAL_EVERY_S:
            seen[1] += 1
            return
        more = f" (+{seen[1]} more from {sender} in the last minute)" if seen and seen[1] else ""
        self.refusals[key] = [time.monotonic(), 0]
        try:
            self._audit_event(now, reason, (detail[:260] + more)[:300])
        except FAULTS as e:  # the audit log full, locked or gone: the line above stands
            self._fault("audit", e)
        else:
            self._fault_over("audit")

    def _office_message(self, m: msg.Message, now: float) -> None:
        if self.store is not None:  # the office hears its own retained messages: the seq floor
            self.store.seen_seq(m.seq)
            return
        self.applier.handle(m, now)
        if self.applier.roster_changed:
            self.applier.roster_changed = False
            self.roster = self.state.roster()
            self._retry_pending = True

    def _take_own(self, now: float) -> None:
        """Our own retained heartbeat (or will) and marks, set aside as they arrived: verified
        like any message, then compared, however much of the session's backlog is still in the
        inbox before them (their copies there are ignored: compared once per connection)."""
        for kind in ("heartbeat", "marks"):
            a = self.own.pop(kind, None)
            if a is None:
                continue
            try:
                c = self._check(a.topic, a.payload, True, now)
            except _NotKept:  # retained: it comes again at the next connection
                continue
            if c is not None and c.m.lane == self.me:
                self._count_past(c.m)
                if self.ledger is not None:
                    self._self_check("marks" if c.m.type == msg.MARKS else "heartbeat", c.m)

    def _count_past(self, announced: msg.Message) -> None:
        """Our own retained heartbeat, last will or marks, read back from the broker (from the
        inbox or set aside, at whichever step it is taken, in time or late): the heartbeat
        counter goes on past its number. fleet.db holds each count before it is used, except
        while it refuses writes; a restart then starts from an older count, and receivers take
        heartbeats numbered at or below one they saw for replays (the lane looks stale)."""
        self._hb = max(self._hb, announced.seq)

    def _self_check(self, kind: str, announced: msg.Message) -> None:
        """Our own retained heartbeat (or last will), or marks, came back: once both are here
        (or the wait is over), are our files behind the highest of them? (Late, when it waited
        for the roster: still compared once per connection.) Our marks coming back live, once
        published, are the ACL's readback (`_on_message`), not this."""
        if self.compared:
            return
        self.announced[kind] = announced
        if "heartbeat" in self.announced and ("marks" in self.announced or not self.marks_readable):
            self._compare()

    def _compare(self) -> None:
        """Compare our files with what came back of ours (maybe nothing: a first connection);
        from here on this connection publishes."""
        self.compared = self.self_checked = True
        if self.ledger is None or not self.announced:
            return
        why = restore_reason_of(
            list(self.announced.values()),
            self.epoch,
            self.lane_ledger.outbox_high(),
            self.audit.head().count,
        )
        if why:
            try:
                epoch = self.lane_ledger.new_epoch()
            except FAULTS as e:  # publish nothing under the old numbers: compared again soon
                self._fault("ledger", e)
                self.compared = self.self_checked = False
                self.check_until = time.monotonic() + WRITE_RETRY_S
                return
            self._rotate(epoch, why)

    def _rotate(self, epoch: str, why: str) -> None:
        """Go on under a new epoch (a restore found, or the ledger replaced while sync ran)."""
        self.epoch = epoch
        self._last_marks = None  # announced under the old epoch: the next heartbeat's count
        log.warning("sync new epoch=%s: %s", self.epoch, why)
        self._new_epoch(why, rotated=True)
        self._set_will()  # the next connection's last will names the new epoch
        self.resend, self._more = True, True

    def _new_epoch(self, why: str, rotated: bool) -> None:
        """A new numbering space: the audit cursor at most the log's head; faces wait for the
        office's forget list (asked for again: it is retained). While running, a fleet.db that
        cannot take it is tried again each second; at start, sync does not start without it."""
        try:
            self._save_epoch(why)
        except FAULTS as e:
            if not rotated:
                raise
            self._fault("state", e)
            self._epoch_unsaved = why
        try:
            self._audit_event(self.clock(), "new_epoch", why[:300])
        except FAULTS as e:
            self._fault("audit", e)
        if rotated:
            self._office_again()

    def _save_epoch(self, why: str) -> None:
        """The epoch and the forget list to replay, in fleet.db for the gate."""
        count = self.audit.head().count
        if self.state.cursor("audit") > count:
            self.state.set_cursor("audit", count)
        # the office's newest list is heard again, and a list taken again, from here on: a
        # restored fleet.db's own say nothing of what was forgotten since its copy
        self.state.put(
            epoch=self.epoch,
            forget_replay=f"new epoch {self.epoch[:8]}: {why}"[:200],
            **{OFFICE_LIST: None, LIST_SINCE: None},
        )
        self._epoch_unsaved = ""

    def _heartbeat_in(self, m: msg.Message, retained: bool, now: float) -> None:
        p = self.peers.setdefault(m.lane, _Peer())
        if m.epoch == p.epoch and m.seq <= p.seq:
            return  # a replayed or reordered older heartbeat
        audit = (m.body.get("evidence") or {}).get("audit")
        if self.store is not None and isinstance(audit, dict):
            # stored before the peer moves on: a head the store refused (and so not
            # acknowledged) comes again and is not taken for a replay
            self.store.store_head(
                m.lane, m.epoch, int(audit.get("count", 0)), str(audit.get("head", "")), m.time
            )
        p.epoch, p.seq, p.time, p.body, p.gone = m.epoch, m.seq, m.time, m.body, ""
        p.received = m.time if retained else now
        if not retained:
            p.reading, p.seen = m.time - now, time.monotonic()
        if m.lane == msg.OFFICE and self.office is not None:
            self._office_floor(m)

    def _office_floor(self, m: msg.Message) -> None:
        """The office's heartbeat, retained or live, if it is fresh (dated within the clock
        tolerance and three of its periods, at most an hour, of this clock: a kept older one is
        not), names its newest forget list (the one a replay must reach) and its newest
        revocation and roster (those this lane must hold to redeem tickets)."""
        n = m.body.get("forget_list_seq", 0)  # an office of before names none: any list will do
        newest = {k: m.body[f] for k, f in NEWEST_FIELDS.items() if f in m.body}
        period = finite_number(m.body.get("period")) or self.fleet.heartbeat_s
        tolerance = self.fleet.max_clock_offset_s + 3 * min(max(period, 0.0), 3600.0)
        off = self.clock() - m.time
        if not abs(off) <= tolerance or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in (n, *newest.values())
        ):
            said = "stale" if not abs(off) <= tolerance else "unreadable"
            if self._floor_said != said:
                self._floor_said = said
                log.warning(
                    "sync office heartbeat %s (dated %.0f s from this clock, forget_list_seq "
                    "%r, %r): faces wait on a new or restored lane (check both clocks)",
                    said, off, n, newest
                )  # fmt: skip
            return
        self._floor_said = ""
        self.applier.office_floor(max(n, 0), self.clock())
        self.applier.office_newest({k: max(v, 0) for k, v in newest.items()}, self.clock())

    def _audit_in(self, m: msg.Message, now: float) -> None:
        records = m.body.get("records")
        if not isinstance(records, list) or not records:
            raise msg.MessageError(f"audit message from {m.lane!r} without records")
        for r in records:
            if not isinstance(r, dict) or not {"id", "prev", "hash"} <= r.keys():
                raise msg.MessageError(f"audit message from {m.lane!r}: a record lacks id/hash")
        ack = self.office_store.store_audit(m.lane, m.epoch, records, now)
        if ack is not None:
            lo, upto, h = ack
            self.audit_acks[m.lane] = {"lane": m.lane, "from": lo, "upto": upto, "hash": h}
            self.audit_acks[m.lane]["epoch"] = m.epoch

    def _audit_ack(self, m: msg.Message) -> None:
        """The office stored our records up to `upto`: move the cursor, if it is our log."""
        b = m.body
        lo, upto, h = int(b["from"]), int(b["upto"]), str(b["hash"])
        cursor = self.state.cursor("audit")
        if b.get("epoch") != self.epoch or upto <= cursor:
            return
        nxt = self.audit.batch(cursor, 1)
        mine = self.audit.batch(upto - 1, 1)
        if not nxt or nxt[0].id < lo or not mine or mine[0].id != upto or mine[0].hash != h:
            return  # a gap before what the office holds, or not our record: send again
        self.state.set_cursor("audit", upto)
        self.audit_waiting = time.monotonic()

    def _apply_redemption(self, m: msg.Message, ticket: tk.Ticket, now: float) -> None:
        t, day = float(m.body["t"]), str(m.body["day"])
        tid = ticket.ticket_id
        epoch = m.epoch
        before = self.lane_ledger.remote_ticket(m.lane, m.epoch, m.seq)
        if before is not None and before != tid:
            # The same number for another ticket: that lane's numbering went back without a new
            # epoch (a restore its own check missed: after a crash its last will, written at
            # connection, is the newest mark the broker holds). Not a duplicate: counted apart.
            epoch = f"{m.epoch}/reused/{tid}"
        if not self.lane_ledger.apply_remote(m.lane, m.seq, tid, t, day, epoch=epoch):
            self.stats["duplicates"] += 1
            # delivered again: its double use, if its report failed before, is reported now
            self._report_double_use(ticket, day, now)
            return
        self.stats["applied"] += 1
        if epoch != m.epoch:
            detail = f"lane {m.lane} epoch {m.epoch[:8]} seq {m.seq}: {before}, then {tid}"
            log.warning("sync seq_reused %s", detail)
            self._audit_event(now, SEQ_REUSED, detail[:300], subject=tid)
        if len(self.delays) < 100_000:
            self.delays.append((t, self.clock() - t))
        self._report_double_use(ticket, day, now)

    def _report_double_use(self, ticket: tk.Ticket, day: str, now: float) -> None:
        """Audit a ticket used more often than it allows, once per new use. A report that
        failed (the audit log full or locked) fails the message's store: it is delivered again
        and reported then."""
        tid = ticket.ticket_id
        on_day = day if ticket.kind == tk.Kind.SEASON else None
        used = self.lane_ledger.used(tid, on_day)
        if used <= ticket.max_entries or used <= self._reported.get(tid, 0):
            return
        if used > self.state.double_use_reported(tid):
            lanes = self.lane_ledger.lanes_of(tid, on_day, self.me)
            detail = f"lanes {', '.join(lanes)}: {used} entries of {ticket.max_entries}"
            log.warning("sync double_use ticket=%s %s", tid, detail)
            self._audit_event(now, DOUBLE_USE, detail, subject=tid)
            try:
                self.state.set_double_use_reported(tid, used)
            except FAULTS as e:  # recorded: noted here, so a redelivery records it not again
                self._fault("state", e)
                if len(self._reported) < 100_000:
                    self._reported[tid] = used

    def _ticket_keys(self) -> list:
        return self.issuer_keys + [tk.load_public(p) for p in fleet_pubkey_paths(self.cfg)]

    def _refresh_keys(self) -> None:
        """Keys the office published since: proofs signed with them verify too (and the
        redemptions kept for them are tried again)."""
        stamp = tickets_stamp(self.cfg)
        if stamp != self._keys_stamp:
            try:
                keys = self._ticket_keys()
            except FAULTS as e:  # a key file half there: the keys in hand, read again later
                self._fault("keys", e)
                return
            self._fault_over("keys")
            self._retry_pending |= bool(self._keys_stamp)
            self._keys_stamp = stamp
            self.ticket_keys = keys

    def _audit_event(self, now: float, reason: str, detail: str, subject: str = "") -> None:
        """One record of sync's in the audit log; never into a log no longer at its path (a
        record that must be kept, a double use, fails its message's store: it comes again)."""
        if self._audit_gone:
            raise AuditError(
                f"audit log {self.audit.path} is not open: {self._audit_gone}",
                "free space or restore the folder; sync opens it again each second",
            )
        self.audit.record(
            AuditRecord(
                now, self.cfg.gate.id, "fleet", subject=subject, reason=reason, detail=detail
            )
        )

    # --- the fleet's clock ------------------------------------------------------------------------

    def _readings(self) -> dict[str, float]:
        fresh = time.monotonic() - 3 * max(self.fleet.heartbeat_s, 1.0)
        return {
            lane: p.reading
            for lane, p in self.peers.items()
            if p.reading is not None and p.seen >= fresh and not p.gone
        }

    def _clock(self) -> ClockView:
        """The fleet's clock from fresh readings; members heard earlier are named against it
        with their last reading, so a lane whose clock was off stays named once silent."""
        view = fleet_clock(self._readings(), self.me, self.fleet.max_clock_offset_s)
        offsets = dict(view.offsets)
        for lane, p in self.peers.items():
            if lane not in offsets and p.reading is not None:
                offsets[lane] = round(p.reading + view.offset, 3)
        skew = self.fleet.max_clock_offset_s
        off = tuple(sorted(lane for lane, o in offsets.items() if abs(o) > skew))
        return ClockView(view.offset, offsets, off)

    def _measured(self) -> bool:
        """A measure of this clock may be written: two of the other members heard (every other
        one in a fleet of two or three), or one and MEASURE_GRACE_HEARTBEATS heartbeat periods
        since sync started. After a restart the measure last written stands until then (the gate
        judges by it): the first member heard alone gives 0.0 whatever this clock says (the
        median of two clocks is the one nearer this one's), and a lane whose clock was off
        admitted tickets until the others were heard. One member heard for longer (the others
        gone) is the measure it always was: this clock cannot be judged against one other."""
        others = [m for m in self.roster.lanes if m != self.me]
        heard = len(self._readings())
        if not others or not heard:
            return False
        grace = MEASURE_GRACE_HEARTBEATS * self.fleet.heartbeat_s
        return heard >= min(2, len(others)) or time.monotonic() - self._started >= grace

    def clock_offset(self) -> float | None:
        """Our clock minus the fleet's (median of signed heartbeats, outliers dropped); None
        while no other member is heard."""
        return self._clock().offset if self._readings() else None

    def outbox_size(self) -> int:
        """Redemptions not yet acknowledged by the broker, shown in status and heartbeats."""
        return self.ledger.outbox_size() if self.ledger is not None else 0

    def close(self) -> None:
        """Say goodbye (a signed "stopped"), disconnect, save the figures `bench --fleet` reads."""
        self._closing = True  # the disconnect below is no outage
        try:
            if self.connected:
                body = {"reason": "stopped", **self._marks()}
                info = self.client.publish(
                    msg.topic(self.site, "heartbeat", self.me),
                    self._signed(msg.OFFLINE, self._hb_seq(), body),
                    qos=1,
                    retain=True,
                )
                with contextlib.suppress(Exception):
                    info.wait_for_publish(2.0)
            self.client.disconnect()
            self.client.loop_stop()
        finally:  # figures for `edge-gate bench --fleet`
            try:
                self.state.put(connected=False, stats=self.stats, apply_delays=self.delays)
            except FAULTS as e:  # the gate's link check fails closed on the old last_contact
                self._fault("state", e)
            closers = [self.audit.close, self.state.close]
            if self.ledger is not None:
                closers.insert(0, self.ledger.close)
            for c in closers:
                try:
                    c()
                except FAULTS as e:
                    log.warning("sync close error=%s", e)
