"""The lane's fleet state (SQLite, fleet.state_db), shared by `edge-gate sync` and the gate.

Sync writes the link state (connected, last broker contact, clock offset against the fleet,
the other lanes as it last heard them), the roster, what the office last sent per subject,
messages from lanes the roster does not name yet, and how far the office has acknowledged the
audit log. The gate and `ticket verify` only read it, through `LaneGuard`: before a ticket
redemption (with `fleet.offline = "deny"` a lane cut off from the broker refuses tickets, and
any lane whose clock is off by more than `fleet.max_clock_offset_s` refuses them), and before a face
grant (a restored lane admits nobody by face until the office's forget list was replayed).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import Config, FleetConfig
from edge.db import (
    BUSY_TIMEOUT_S,
    DAMAGED_FIX,
    UNKNOWN_FIX,
    Store,
    connect,
    let_go,
    run_script,
    sqlite_fix,
    tables,
)
from edge.errors import FleetStateError
from edge.files import make_private_dirs
from edge.fleet.identity import Roster
from edge.gate.faces import file_id
from edge.tickets.ledger import CLOCK_TOLERANCE_S

# Reasons a lane gives when the fleet link, not the ticket, refuses an entry.
FLEET_OFFLINE = "fleet_offline"
CLOCK_SKEW = "clock_skew"
FORGET_REPLAY = "forget_replay"  # a new or restored lane: the office's forget list not yet applied
# the office's fresh heartbeat names a revocation or a roster newer than this lane holds: an older
# list was put back on the broker, or the newest dropped; no ticket is redeemed until it comes
BEHIND_OFFICE = "behind_office"
# ... and what to do about it (doctor, `fleet status --check`)
BEHIND_OFFICE_FIX = (
    "the one on the broker is older than the office's: send it again at the office, "
    "`edge-gate ticket revoke --publish --key issuer.key --list LIST ID` with ID any ticket "
    "already on it, or `edge-gate fleet roster publish --key issuer.key`, and check who can "
    "publish on the broker"
)
# every reason above, for those who name them (the console's translations)
LINK_REASONS = (FLEET_OFFLINE, CLOCK_SKEW, FORGET_REPLAY, BEHIND_OFFICE)
STATE_EVERY_S = 1.0  # sync writes its link state (and `sync_seen`) at least this often

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS office_seq (type TEXT NOT NULL, subject TEXT NOT NULL,
  seq INTEGER NOT NULL, PRIMARY KEY (type, subject));
CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, upto INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS double_use (ticket_id TEXT PRIMARY KEY, reported INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, topic TEXT NOT NULL,
  payload BLOB NOT NULL, t REAL NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (ticket_id TEXT PRIMARY KEY,
  revoked_seq INTEGER NOT NULL DEFAULT -1, lifted_seq INTEGER NOT NULL DEFAULT -1);
CREATE TABLE IF NOT EXISTS overrides_in (id INTEGER PRIMARY KEY AUTOINCREMENT,
  payload BLOB NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS overrides_used (nonce TEXT PRIMARY KEY, until REAL NOT NULL,
  used REAL NOT NULL);
"""
log = logging.getLogger(__name__)

PENDING_MAX = 10_000  # messages of lanes not (yet) in the roster kept for a later roster
PENDING_PER_TOPIC = 1_000  # of them from one topic (one lane's redemptions): a flood on one
# topic pushes out only its own, never another lane's redemptions kept for a key still to come
PENDING_BYTES_MAX = 256 * 1024  # a message larger than this is not kept (redemptions are ~1 KB)
OVERRIDES_MAX = 100  # supervisor overrides waiting for the gate (it takes them within a second)
NONCE_KEEP_S = 86_400.0  # a used override nonce is remembered this long after it expired


# At the office fleet.db is the fleet's record: the lane's fix for an unreadable one (move it
# aside, sync makes a new one) would throw away what only the office holds.
LANE_STATE_FIX = "move it aside; sync rebuilds it"
OFFICE_STATE_FIX = (
    "at the office this file is the fleet's record (lanes' audit records, the forget list, "
    "the office's message counter): free space or stop what holds it if that is the cause, "
    "else restore it from backup (never move it aside: sync would start an empty one)"
)


def schema_tables(schema: str) -> dict[str, str]:
    """The tables a schema script makes: name -> its CREATE TABLE statement."""
    found = (re.match(r"\s*CREATE TABLE IF NOT EXISTS (\w+)", stmt) for stmt in schema.split(";"))
    return {m.group(1): m.string for m in found if m}


def _is_lock(e: BaseException | None) -> bool:
    """A SQLite error saying another connection holds the file (busy or locked)."""
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF  # extended codes keep the primary below
    return isinstance(e, sqlite3.Error) and code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class FleetState(Store):
    """Small key/value and bookkeeping tables; every write is its own short transaction (or
    joins the caller's), and a SQLite failure is a FleetStateError, never a raw sqlite3 one.

    `lock_wait_s` (None: the busy timeout) bounds how long a write waits for a lock another
    process holds; once one failed on such a lock, the next ones do not wait at all until one
    goes through. A lane's sync sets it: its writes are tried again anyway (the link state each
    second, a message's store when it comes again), and waiting out the busy timeout at each
    one held its loop, heartbeats and receiving, while an operator's shell held the file."""

    error = FleetStateError
    what = "fleet state"
    lock_wait_s: float | None = None

    def __init__(self, path: str | Path, office: bool = False):
        self._locked = False  # the last write found the file locked: the next ones do not wait
        make_private_dirs(Path(path).parent)
        # rows deleted here leave no bytes in freed pages: an override spent (the supervisor's
        # name and reason), a kept message taken back, a queued enrollment at the office (sealed
        # name and templates) dropped at a forget or once sent
        self._connect(Path(path), secure_delete=True)
        try:
            with self.reading() as c:
                have = tables(c)
            if not set(schema_tables(_SCHEMA)) <= have:  # else no write lock taken at open
                with self.transaction() as c:
                    run_script(c, _SCHEMA)
        except FleetStateError as e:
            self.conn.close()
            damaged = e.hint in (DAMAGED_FIX, UNKNOWN_FIX)  # a lock or a full disk: its own fix
            raise FleetStateError(
                f"fleet state {self.path} is unreadable: {e}",
                (OFFICE_STATE_FIX if office else LANE_STATE_FIX) if damaged else e.hint,
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Store.transaction, waiting for another process's lock at most `lock_wait_s`."""
        if self.lock_wait_s is None or self.conn.in_transaction:
            with super().transaction() as c:
                yield c
            return
        with self._lock:
            wait = 0.0 if self._locked else min(self.lock_wait_s, BUSY_TIMEOUT_S)
            with self.reading() as conn:
                conn.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
            try:
                with super().transaction() as c:
                    yield c
            except FleetStateError as e:
                self._locked = _is_lock(e.__context__)  # the SQLite error it was raised from
                raise
            self._locked = False

    def put(self, **values: Any) -> None:
        """Record link facts (connected, clock offset, outbox) for the gate and status."""
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def get(self, key: str, default: Any = None) -> Any:
        """Read a link fact written by sync, or the default before the first sync."""
        with self.reading() as c:
            row = c.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def office_seq(self, type_: str, subject: str) -> int:
        """The last office sequence applied for a subject, to reject replays."""
        with self.reading() as c:
            row = c.execute(
                "SELECT seq FROM office_seq WHERE type = ? AND subject = ?", (type_, subject)
            ).fetchone()
        return row[0] if row else -1

    def set_office_seq(self, type_: str, subject: str, seq: int) -> None:
        """Remember an applied office message so an older one cannot undo it."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO office_seq (type, subject, seq) VALUES (?, ?, ?)",
                (type_, subject, seq),
            )

    def cursor(self, name: str) -> int:
        """How far a stream (the audit log) has been acknowledged, to resume after restart."""
        with self.reading() as c:
            row = c.execute("SELECT upto FROM cursor WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def set_cursor(self, name: str, upto: int) -> None:
        """Advance a stream's acknowledged position once the office has it."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO cursor (name, upto) VALUES (?, ?)", (name, upto))

    def roster(self):
        """The newest roster applied here (office: the one it publishes); empty before one."""
        r = self.get("roster")
        return Roster(int(r["seq"]), dict(r["lanes"])) if r else Roster()

    def set_roster(self, roster) -> None:
        """Remember the roster, so a restarted sync verifies lanes before the broker resends it."""
        self.put(roster={"seq": roster.seq, "lanes": roster.lanes})

    def add_pending(self, topic: str, payload: bytes, now: float) -> bool:
        """Keep a message of a lane the roster does not name yet, or signed with a ticket key
        not here yet (bounded: the oldest go, first those of the same topic); False when it is
        too large to keep."""
        if len(payload) > PENDING_BYTES_MAX:
            return False
        with self.transaction() as c:
            c.execute(
                "INSERT INTO pending (topic, payload, t) VALUES (?, ?, ?)", (topic, payload, now)
            )
            c.execute(
                "DELETE FROM pending WHERE id IN (SELECT id FROM pending WHERE topic = ?"
                " ORDER BY id DESC LIMIT -1 OFFSET ?)",
                (topic, PENDING_PER_TOPIC),
            )
            c.execute(
                "DELETE FROM pending WHERE id <= (SELECT max(id) FROM pending) - ?",
                (PENDING_MAX,),
            )
        return True

    def take_pending(self) -> list[tuple[str, bytes]]:
        """Every kept message, removed: tried again once a new roster arrived."""
        with self.transaction() as c:
            rows = c.execute("SELECT id, topic, payload FROM pending ORDER BY id").fetchall()
            c.execute("DELETE FROM pending")
        return [(t, bytes(p)) for _, t, p in rows]

    def merge_revocations(self, revoked: dict[str, int], lifted: dict[str, int]) -> None:
        """Grow-only: each ticket keeps its newest revocation and newest lift (office seqs)."""
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO revocations (ticket_id, revoked_seq) VALUES (?, ?)"
                " ON CONFLICT(ticket_id)"
                " DO UPDATE SET revoked_seq = max(revoked_seq, excluded.revoked_seq)",
                list(revoked.items()),
            )
            c.executemany(
                "INSERT INTO revocations (ticket_id, lifted_seq) VALUES (?, ?)"
                " ON CONFLICT(ticket_id)"
                " DO UPDATE SET lifted_seq = max(lifted_seq, excluded.lifted_seq)",
                list(lifted.items()),
            )

    def newest_revocation(self) -> int:
        """The office seq of the newest revocation sync applied (lifted or not; 0: none)."""
        with self.reading() as c:
            row = c.execute("SELECT max(revoked_seq) FROM revocations").fetchone()
        return max(int(row[0]), 0) if row and row[0] is not None else 0

    def fleet_revocations(self) -> tuple[set[str], set[str]]:
        """(revoked now, lifted now): a lift counts only for the revocations it names."""
        with self.reading() as c:
            q = "SELECT ticket_id, revoked_seq, lifted_seq FROM revocations"
            rows = c.execute(q).fetchall()
        revoked: set[str] = set()
        lifted: set[str] = set()
        for tid, r, lift in rows:
            (revoked if r > lift else lifted).add(tid)
        return revoked, lifted

    def add_override(self, payload: bytes, now: float) -> None:
        """Sync: an office override for this lane, as received (the gate checks it itself)."""
        with self.transaction() as c:
            c.execute("INSERT INTO overrides_in (payload, received) VALUES (?, ?)", (payload, now))
            c.execute(
                "DELETE FROM overrides_in WHERE id <= (SELECT max(id) FROM overrides_in) - ?",
                (OVERRIDES_MAX,),
            )

    def has_overrides(self) -> bool:
        """Whether sync left any override (a plain read: no lock taken when there is none)."""
        with self.reading() as c:
            return c.execute("SELECT 1 FROM overrides_in LIMIT 1").fetchone() is not None

    def take_overrides(self) -> list[bytes]:
        """The gate: every override sync left, removed (call inside `transaction()`, with
        `use_nonce`, so taking and spending commit together)."""
        with self.transaction() as c:
            rows = c.execute("SELECT id, payload FROM overrides_in ORDER BY id").fetchall()
            if rows:
                c.execute("DELETE FROM overrides_in WHERE id <= ?", (rows[-1][0],))
        # a row written as text (by hand, or an older sync) is judged, and refused, like any
        return [
            p.encode("utf-8", "replace") if isinstance(p, str) else bytes(p or b"") for _, p in rows
        ]

    def use_nonce(self, nonce: str, until: float, now: float) -> bool:
        """Spend an override's nonce: True the first time, False for a replay. Nonces are
        kept a day past their validity (a replay later than that is refused as expired)."""
        with self.transaction() as c:
            c.execute("DELETE FROM overrides_used WHERE until < ?", (now - NONCE_KEEP_S,))
            cur = c.execute(
                "INSERT OR IGNORE INTO overrides_used (nonce, until, used) VALUES (?, ?, ?)",
                (nonce, until, now),
            )
        return cur.rowcount == 1

    def double_use_reported(self, ticket_id: str) -> int:
        """How many uses of a ticket were already reported, to alert once per new use."""
        with self.reading() as c:
            row = c.execute(
                "SELECT reported FROM double_use WHERE ticket_id = ?", (ticket_id,)
            ).fetchone()
        return row[0] if row else 0

    def set_double_use_reported(self, ticket_id: str, n: int) -> None:
        """Remember a reported double use so it is not reported again."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO double_use (ticket_id, reported) VALUES (?, ?)",
                (ticket_id, n),
            )


class StateReader(FleetState):
    """fleet.db opened for reading only (`mode=ro`, `query_only`), for what only reads it
    (doctor's fleet check, `fleet status`, `fleet audit`, the console's feed). It takes no lock
    and changes nothing (no file or schema made or upgraded), so it answers at once from the
    last committed state while sync, or anyone, holds a write: WAL lets readers through. A
    table of `schema` the file lacks (one made by an older edge-gate and not opened since, or
    no file at all) reads as empty, from a stand-in in this connection's temp schema."""

    def __init__(self, path: str | Path, office: bool = False, schema: str = _SCHEMA):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._locked = False
        try:
            self.conn = (
                connect(self.path, readonly=True)
                if self.path.exists()
                else connect(":memory:", wal=False)
            )
        except sqlite3.Error as e:
            raise FleetStateError(
                f"fleet state {self.path} is unreadable: {e}", sqlite_fix(e)
            ) from None
        try:
            have = tables(self.conn)
            for name, stmt in schema_tables(schema).items():
                if name not in have:
                    self.conn.execute(stmt.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
            self.conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as e:
            self.conn.close()
            fix = sqlite_fix(e)
            if fix in (DAMAGED_FIX, UNKNOWN_FIX):
                fix = OFFICE_STATE_FIX if office else LANE_STATE_FIX
            raise FleetStateError(f"fleet state {self.path} is unreadable: {e}", fix) from None


def read_state(state_db: Path, key: str) -> Any:
    """One value from a lane's fleet state, opened read-only and closed (demo, bench)."""
    st = StateReader(state_db)
    try:
        return st.get(key)
    finally:
        st.close()


@dataclass(frozen=True)
class LinkCheck:
    """Why a lane may or may not redeem a ticket now, with the reason for the audit log."""

    ok: bool
    reason: str = ""
    detail: str = ""


def check_faces(fl: FleetConfig, state: FleetState | None) -> LinkCheck:
    """May this lane grant by face now? Not while a new or restored lane still has to replay
    the office's forget list (a backup from before a deletion would bring the person back)."""
    if not fl.enabled or state is None:
        return LinkCheck(True)
    pending = state.get("forget_replay")
    if pending:
        detail = f"no face grants until the office's forget list is applied ({pending})"
        return LinkCheck(False, FORGET_REPLAY, detail)
    return LinkCheck(True)


def check_clock(fl: FleetConfig, state: FleetState | None) -> LinkCheck:
    """Is this member's clock within `max_clock_offset_s` of the fleet's, as sync last measured
    it? (No measure yet: nothing to judge by, as for tickets.) Pure given the state read."""
    if not fl.enabled:
        return LinkCheck(True)
    offset = state.get("clock_offset") if state else None
    if offset is not None and abs(offset) > fl.max_clock_offset_s:
        return LinkCheck(
            False,
            CLOCK_SKEW,
            f"this lane's ({fl.lane}) clock is off by {offset:+.1f} s from the fleet's (median "
            f"of the office's and the lanes' signed heartbeats; max {fl.max_clock_offset_s})",
        )
    return LinkCheck(True)


def check_link(fl: FleetConfig, state: FleetState | None, now: float) -> LinkCheck:
    """May this lane redeem a ticket now? Pure given the state read."""
    if not (clock := check_clock(fl, state)).ok:
        return clock
    if not fl.enabled:
        return LinkCheck(True)
    behind = state.get(BEHIND_OFFICE) if state else None
    if behind:
        detail = f"no ticket redeemed until the office's newest is applied ({behind})"
        return LinkCheck(False, BEHIND_OFFICE, detail)
    if fl.offline == "deny":
        connected = bool(state.get("connected")) if state else False
        last = state.get("last_contact") if state else None
        if not connected or last is None or now - last > fl.offline_after_s:
            since = "never" if last is None else f"{now - last:.0f} s ago"
            return LinkCheck(False, FLEET_OFFLINE, f"no broker contact (last {since})")
        if last - now > CLOCK_TOLERANCE_S:  # the clock set back since: its age says nothing
            return LinkCheck(
                False,
                FLEET_OFFLINE,
                f"the last broker contact is dated {last - now:.0f} s after this lane's clock "
                "(set back?); refused until edge-gate sync writes it again",
            )
    return LinkCheck(True)


class GateView:
    """The gate's connection to the lane's fleet.db, following the file at the path (sync opens
    it again there when it is deleted or replaced): never a deleted one whose link state,
    forget-list flag and overrides no longer change. A file that does not open is said once and
    tried again at most every `retry_s` seconds (each redemption and face decision asks), the
    old one read meanwhile; with none open (none opened at start) `current` raises
    FleetStateError, so nothing is let in that the fleet's answer could have refused."""

    def __init__(self, path: Path, retry_s: float = 1.0):
        self.path = path
        self.retry_s = retry_s  # a file that did not open is tried again after this long
        self._id = file_id(path)  # read before opening: a swap in between is seen next
        # a file (its identity, None: none) that did not open at the path, and when it failed
        # (time.monotonic); False: none failed
        self._failed: tuple[object, float] = (False, 0.0)
        self.problem = ""  # why none is open ("": one is)
        self.made_anew = False  # the last file taken up was made by this open after a deletion
        self.state: FleetState | None = None
        try:
            self.state = FleetState(path)
        except (FleetStateError, OSError) as e:
            self._unopened(self._id, e)
            return
        if self._id is None:  # made just now by this open
            self._id = file_id(path)

    def _unopened(self, now: object, e: Exception) -> None:
        if now != self._failed[0]:  # said once per file, not at each decision
            if self.state is None:
                log.error(
                    "gate fleet_state_unopened path=%s; faces and tickets refused: %s",
                    self.path,
                    e,
                )
            else:
                log.error("gate fleet_state_moved path=%s; not reopened: %s", self.path, e)
        if self.state is None:
            self.problem = f"fleet state {self.path} not open: {e}"
        self._failed = (now, time.monotonic())

    def current(self) -> FleetState:
        """The fleet state at the path, opened again when the file there changed."""
        self._follow()
        if self.state is None:
            raise FleetStateError(self.problem, LANE_STATE_FIX)
        return self.state

    def _follow(self) -> None:
        now = file_id(self.path)
        if self.state is not None and now == self._id:
            return
        if now == self._failed[0] and time.monotonic() - self._failed[1] < self.retry_s:
            return  # this file did not open a moment ago: tried again every retry_s
        if self.state is not None:
            let_go(self.state, close=False)  # first: the log at the path is the old file's
        try:
            new = FleetState(self.path)
        except (FleetStateError, OSError) as e:
            self._unopened(now, e)
            return
        self._failed, self.problem = (False, 0.0), ""
        if self.state is None:
            log.warning("gate fleet_state_opened path=%s", self.path)
        else:
            log.warning(
                "gate fleet_state_moved path=%s; reading the file now at its path", self.path
            )
        # one deleted was made by this open: its identity now, or it is taken for a move
        old, self.state, self._id = self.state, new, now if now is not None else file_id(self.path)
        self.made_anew = now is None
        if old is not None:
            old.close()

    def close(self) -> None:
        """Release the connection, if one is open."""
        if self.state is not None:
            self.state.close()


class LaneGuard:
    """Gate-side view of the fleet: the link check before redemptions and the gate's status."""

    def __init__(self, cfg: Config):
        self.fleet = cfg.fleet
        self.path = cfg.resolve(cfg.fleet.state_db)
        self.view = GateView(self.path) if cfg.fleet.enabled else None
        self._anew = False  # made anew by this gate after a deletion: sync has not taken it up

    @property
    def state(self) -> FleetState | None:
        """The fleet state read now (None: this gate is in no fleet, or none is open)."""
        return self.view.state if self.view is not None else None

    def _follow(self) -> FleetState | None:
        """The fleet state at the path (FleetStateError: none open)."""
        if self.view is None:
            return None
        st = self.view.current()
        if self.view.made_anew:
            self._anew, self.view.made_anew = True, False
        return st

    def check(self, now: float | None = None) -> LinkCheck:
        """Ask before each redemption whether the fleet link allows it (clock, offline)."""
        st = self._follow()
        return check_link(self.fleet, st, time.time() if now is None else now)

    def check_faces(self) -> LinkCheck:
        """Ask before each face grant whether the office's forget list has been replayed."""
        st = self._follow()
        if self._anew and st is not None:  # no epoch yet: no forget list asked for
            if st.get("epoch") is None:
                detail = f"no face grants until sync has taken up {self.path}, made anew"
                return LinkCheck(False, FORGET_REPLAY, detail)
            self._anew = False
        return check_faces(self.fleet, st)

    def report(self, **status: Any) -> None:
        """The gate's own figures (fps, camera, mode, last decision) for sync's heartbeat."""
        if (st := self._follow()) is not None:
            st.put(gate_status=status)

    def report_versions(self, versions: dict[str, Any]) -> None:
        """What the gate runs (models, config version) for sync's heartbeat."""
        if (st := self._follow()) is not None:
            st.put(gate_versions=versions)

    def close(self) -> None:
        """Release the fleet state, if this gate belongs to a fleet."""
        if self.view is not None:
            self.view.close()


def fleet_pubkey_paths(cfg: Config) -> list[Path]:
    """Ticket keys the office published to this lane (fleet.keys_dir), besides tickets.pubkeys."""
    if not cfg.fleet.enabled:
        return []
    d = cfg.resolve(cfg.fleet.keys_dir)
    return sorted(d.glob("*.pub")) if d.is_dir() else []
