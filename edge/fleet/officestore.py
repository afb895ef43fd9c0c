"""The office's side of the fleet state (its fleet.state_db): what it sends and what it keeps.

The office's commands never talk to the broker themselves (with `use_username_as_clientid` a
second connection under the office's login would take over its sync's session): they sign a
message with the issuer key and queue it here, with the office's next sequence number, a
persisted counter (never the clock; never below what the broker already holds from the office).
The office's `edge-gate sync` publishes the queue (QoS 1, retained) and deletes a row on the
broker's acknowledgement. What sync receives lands here too: every lane's audit records and
the audit heads the lanes signed (`edge-gate fleet audit`, `fleet audit verify`), and the
lanes' signed enrollment/deletion acknowledgements (`fleet status`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.db import checkpoint, run_script
from edge.errors import FleetStateError
from edge.fleet import messages as msg
from edge.fleet.state import _SCHEMA as STATE_SCHEMA
from edge.fleet.state import FleetState, StateReader
from edge.gate.audit import AuditRecord, record_hash
from edge.gate.faces import file_id

# A record may be committed (by the gate, another process) a moment after the lane's sync read
# its log's head for a heartbeat: a record this much older than a head that lacks it is missing.
HEAD_LAG_S = 30.0

log = logging.getLogger(__name__)

# What one rostered lane can make the office keep, whatever it sends (docs/FLEET.md, "What the
# office keeps"): records are kept (the fleet's record); what they already vouch for is not.
HEADS_PER_EPOCH = 1000  # signed heads of one lane and epoch the records do not vouch for
CONFLICTS_PER_LANE = 100  # records that came again with another hash (one already says BROKEN)
EPOCHS_PER_LANE = 1000  # epochs a lane's records and heads may come under (a restore makes one)
MAX_EPOCH_CHARS = 64  # a lane's epoch is 32 hex characters
MAX_HASH_CHARS = 128  # a record's chain hash is 64

# The office tables' version, kept in fleet.db's kv: a newer edge-gate that changes them raises
# it, and this one then refuses the file instead of writing rows the newer tables do not expect.
OFFICE_SCHEMA = 1
SCHEMA_KEY = "office_schema"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS office_out (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
  payload BLOB NOT NULL, retain INTEGER NOT NULL, queued REAL NOT NULL);
CREATE TABLE IF NOT EXISTS people (person_id TEXT PRIMARY KEY, op TEXT NOT NULL,
  seq INTEGER NOT NULL, t REAL NOT NULL);
CREATE TABLE IF NOT EXISTS forgotten (person_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS revocation_log (ticket_id TEXT PRIMARY KEY,
  revoked_seq INTEGER NOT NULL DEFAULT -1, lifted_seq INTEGER NOT NULL DEFAULT -1);
CREATE TABLE IF NOT EXISTS acks (lane TEXT NOT NULL, person_id TEXT NOT NULL, op TEXT NOT NULL,
  office_seq INTEGER NOT NULL, t REAL NOT NULL, PRIMARY KEY (lane, person_id));
CREATE TABLE IF NOT EXISTS audit_records (lane TEXT NOT NULL, epoch TEXT NOT NULL,
  id INTEGER NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL, t REAL NOT NULL,
  record TEXT NOT NULL, received REAL NOT NULL, PRIMARY KEY (lane, epoch, id));
CREATE INDEX IF NOT EXISTS audit_records_t ON audit_records(t);
CREATE TABLE IF NOT EXISTS audit_heads (lane TEXT NOT NULL, epoch TEXT NOT NULL,
  count INTEGER NOT NULL, head TEXT NOT NULL, t REAL NOT NULL,
  PRIMARY KEY (lane, epoch, count, head));
CREATE TABLE IF NOT EXISTS audit_conflicts (lane TEXT NOT NULL, epoch TEXT NOT NULL,
  id INTEGER NOT NULL, stored TEXT NOT NULL, got TEXT NOT NULL, t REAL NOT NULL);
"""


def office_reader(path: str | Path, office: bool = False) -> StateReader:
    """fleet.db opened read-only (`StateReader`) for the commands that only read it (`fleet
    status`, `fleet audit`, `fleet audit verify`, whether a queued message was sent, the
    console's feed): the office's tables, where the file lacks them, read as empty too."""
    return StateReader(path, office, STATE_SCHEMA + _SCHEMA)


class OfficeStore:
    """Office tables on the office's FleetState connection; each write is one transaction, and
    every read and write fails as a FleetStateError carrying the fix, never a raw sqlite3 one
    (an office command says it in one line; the office's sync does not acknowledge a message it
    failed to store, so the broker delivers it again)."""

    def __init__(self, state: FleetState):
        self.state = state
        self.conn = state.conn
        self._unsent: list[int] = []  # acknowledged by the broker, not yet dropped from the queue
        if isinstance(state, StateReader):  # a reader: the version checked, nothing made
            self._known(state.get(SCHEMA_KEY, 0))
        else:  # FleetState opens with secure_delete: a person's queued enrollment (sealed
            # with the site key) deleted at a forget, or once sent, leaves no bytes in freed pages
            with self._tx() as c:
                found = self._known(self.state.get(SCHEMA_KEY, 0))
                run_script(c, _SCHEMA)
                if found != OFFICE_SCHEMA:
                    self.state.put(**{SCHEMA_KEY: OFFICE_SCHEMA})
        self._identity = file_id(state.path)

    def _known(self, found: Any) -> int:
        """The office schema a file has, refused when a newer edge-gate wrote it."""
        if not isinstance(found, int) or found > OFFICE_SCHEMA:
            raise FleetStateError(
                f"office store {self.state.path} has office schema {found!r}; this edge-gate "
                f"knows {OFFICE_SCHEMA}: written by a newer edge-gate, nothing was changed",
                "upgrade edge-gate at the office (or restore the file from a backup taken "
                "before the newer version ran)",
            )
        return found

    def _kept(self) -> None:
        """Before storing what a lane sent (and acknowledging it): is the file this connection
        writes still the office's fleet.db? One deleted or replaced underneath a running sync
        would take every record stored from then on with it at the next restart, after the
        lanes were told it was kept: refused instead (not acknowledged, so the broker delivers
        it again), until sync runs on the file at the path."""
        now = file_id(self.state.path)
        if now != self._identity:
            what = "deleted" if now is None else "replaced"
            raise FleetStateError(
                f"office store {self.state.path} was {what} while sync ran: nothing stored",
                "put the office's fleet.db back (restore it from backup), then restart "
                "edge-gate sync (systemctl restart edge-gate-sync); the lanes send again",
            )

    def _tx(self):
        return self.state.transaction()

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.state.reading() as c:
            return c.execute(sql, args).fetchall()

    # --- out: signed office messages, numbered by a persisted counter ------------------------

    def queue(
        self,
        type_: str,
        site: str,
        body: dict[str, Any],
        key: Ed25519PrivateKey,
        topic: str,
        retain: bool = True,
        now: float | None = None,
    ) -> tuple[int, msg.Message]:
        """Number, sign and queue one office message; (row id, message)."""
        now = time.time() if now is None else now
        with self._tx() as c:
            seq = max(self.state.get("office_seq", 0), self.state.get("office_seq_floor", 0)) + 1
            self.state.put(office_seq=seq)
            m = msg.sign(msg.Message(type_, site, msg.OFFICE, seq, now, body), key)
            if type_ == msg.PERSON and body["op"] == "forget":
                # what is still queued for this person (an enrollment) never goes out after it
                c.execute("DELETE FROM office_out WHERE topic = ?", (topic,))
            cur = c.execute(
                "INSERT INTO office_out (topic, payload, retain, queued) VALUES (?, ?, ?, ?)",
                (topic, msg.encode(m), int(retain), now),
            )
            if type_ == msg.PERSON:
                c.execute(
                    "INSERT OR REPLACE INTO people (person_id, op, seq, t) VALUES (?, ?, ?, ?)",
                    (body["person_id"], body["op"], seq, now),
                )
        return int(cur.lastrowid or 0), m

    def flush(self) -> bool:
        """Write the log into the file and empty it, so rows deleted (zeroed by secure_delete)
        leave no older copy in the log; False when a reader kept it (the next checkpoint
        does it)."""
        return checkpoint(self.conn, "office queue")

    def next_seq(self) -> int:
        """The sequence number the next queued message will get (for revocation entries)."""
        return max(self.state.get("office_seq", 0), self.state.get("office_seq_floor", 0)) + 1

    def seen_seq(self, seq: int) -> None:
        """The broker holds an office message with this seq: never number below it again."""
        with self._tx():
            if seq > self.state.get("office_seq_floor", 0):
                self.state.put(office_seq_floor=seq)

    def outgoing(self, after_id: int, limit: int) -> list[tuple[int, str, bytes, bool]]:
        """Queued messages after `after_id`: (id, topic, payload, retain)."""
        rows = self._rows(
            "SELECT id, topic, payload, retain FROM office_out WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [(i, t, bytes(p), bool(r)) for i, t, p, r in rows]

    def sent(self, ids: list[int]) -> bool:
        """The broker acknowledged these: drop them from the queue. A store that cannot be
        written now (locked, full) keeps them queued and they are dropped at the next call:
        logged, never fatal (sent again after a restart, a lane ignores a seq it has). False
        while some are still to drop (the office's sync calls again)."""
        self._unsent.extend(ids)
        if not self._unsent:
            return True
        try:
            with self._tx() as c:
                c.executemany("DELETE FROM office_out WHERE id = ?", [(i,) for i in self._unsent])
        except FleetStateError as e:
            log.error("office queue_not_cleared rows=%d error=%s", len(self._unsent), e)
            return False
        self._unsent = []
        return True

    def is_queued(self, row_id: int) -> bool:
        """Still waiting for the office's sync to publish it."""
        return bool(self._rows("SELECT 1 FROM office_out WHERE id = ?", (row_id,)))

    # --- the office's own lists ---------------------------------------------------------------

    def revocation_entries(self, revoke: list[str], lift: list[str]) -> None:
        """Number new revocations and lifts with the next seq (a lift names what it lifts)."""
        with self._tx() as c:
            seq = self.next_seq()
            for tid in revoke:
                c.execute(
                    "INSERT INTO revocation_log (ticket_id, revoked_seq) VALUES (?, ?) "
                    "ON CONFLICT(ticket_id) DO UPDATE SET revoked_seq = excluded.revoked_seq "
                    "WHERE revoked_seq <= lifted_seq",
                    (tid, seq),
                )
            for tid in lift:
                c.execute(
                    "UPDATE revocation_log SET lifted_seq = revoked_seq WHERE ticket_id = ?",
                    (tid,),
                )

    def revocation_lists(self) -> tuple[dict[str, int], dict[str, int]]:
        """({ticket: seq of its revocation}, {ticket: seq of the revocation lifted})."""
        rows = self._rows("SELECT ticket_id, revoked_seq, lifted_seq FROM revocation_log")
        revoked, lifted = {}, {}
        for tid, r, lift in rows:
            revoked[tid] = r
            if lift >= 0:
                lifted[tid] = lift
        return revoked, lifted

    def add_forgotten(self, person_id: str, seq: int) -> None:
        """The office's forget list grows only: replayed to every new or restored lane."""
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO forgotten (person_id, seq) VALUES (?, ?)", (person_id, seq)
            )

    def forgotten(self) -> list[str]:
        """Everyone the office has ever forgotten (pseudonymous ids)."""
        return [r[0] for r in self._rows("SELECT person_id FROM forgotten ORDER BY 1")]

    def people(self) -> dict[str, tuple[str, int]]:
        """person -> (latest op, its office seq), as the office sent them."""
        rows = self._rows("SELECT person_id, op, seq FROM people")
        return {p: (op, s) for p, op, s in rows}

    # --- in: acknowledgements and audit -------------------------------------------------------

    def store_ack(self, lane: str, person_id: str, op: str, office_seq: int, now: float) -> None:
        """A signed acknowledgement from a rostered lane (the signer, never the body, names it):
        kept only for a person the office sent, one per lane and person (`fleet status` reads
        no other); one for anyone else is refused, never stored."""
        self._kept()
        with self._tx() as c:
            if (
                op not in ("enroll", "forget")
                or not c.execute(
                    "SELECT 1 FROM people WHERE person_id = ?", (person_id,)
                ).fetchone()
            ):
                raise msg.MessageError(
                    f"acknowledgement from {lane!r} of {op[:20]!r} {person_id[:40]!r}: the "
                    "office sent no such message"
                )
            c.execute(
                "INSERT INTO acks (lane, person_id, op, office_seq, t) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(lane, person_id) DO UPDATE SET op = excluded.op, "
                "office_seq = excluded.office_seq, t = excluded.t "
                "WHERE excluded.office_seq >= office_seq",
                (lane, person_id, op, office_seq, now),
            )

    def acks(self, person_id: str) -> dict[str, tuple[str, int]]:
        """lane -> (op, office seq) acknowledged for one person."""
        rows = self._rows("SELECT lane, op, office_seq FROM acks WHERE person_id = ?", (person_id,))
        return {lane: (op, s) for lane, op, s in rows}

    def store_audit(
        self, lane: str, epoch: str, records: list[dict[str, Any]], now: float
    ) -> tuple[int, int, str] | None:
        """Keep a lane's records; a record received again with another hash is kept as a
        conflict (the lane's log was rewritten). Returns the acknowledgement to send:
        (first id held, last id held without a gap, its hash), or None before any."""
        checked = [_audit_record(lane, r) for r in records]  # junk: refused before any write
        self._kept()
        with self._tx() as c:
            self._epoch_room(lane, epoch)
            for rid, prev, h, t, fields in checked:
                cur = c.execute(
                    "INSERT OR IGNORE INTO audit_records (lane, epoch, id, prev, hash, t, record,"
                    " received) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (lane, epoch, rid, prev, h, t, json.dumps(fields), now),
                )
                if cur.rowcount == 0:
                    old = c.execute(
                        "SELECT hash FROM audit_records WHERE lane = ? AND epoch = ? AND id = ?",
                        (lane, epoch, rid),
                    ).fetchone()[0]
                    if old != h:  # once per other hash: a replay adds no second line
                        self._conflict(lane, epoch, rid, old, h, now)
            self._compact_heads(lane, epoch)
            return self._contiguous(lane, epoch)

    def _conflict(self, lane: str, epoch: str, rid: int, old: str, h: str, now: float) -> None:
        """Keep a record that came again with another hash, up to CONFLICTS_PER_LANE a lane
        (the first already makes it BROKEN); past that only counted."""
        c = self.conn  # inside store_audit's transaction
        if c.execute(
            "SELECT 1 FROM audit_conflicts WHERE lane = ? AND epoch = ? AND id = ? AND got = ?",
            (lane, epoch, rid, h),
        ).fetchone():
            return
        n = c.execute("SELECT count(*) FROM audit_conflicts WHERE lane = ?", (lane,)).fetchone()[0]
        if n >= CONFLICTS_PER_LANE:
            self._count_dropped(lane, "conflicts")
            return
        c.execute(
            "INSERT INTO audit_conflicts VALUES (?, ?, ?, ?, ?, ?)", (lane, epoch, rid, old, h, now)
        )

    def _count_dropped(self, lane: str, what: str) -> None:
        key = f"audit_dropped/{lane}"
        n = self.state.get(key) or {}
        self.state.put(**{key: {**n, what: int(n.get(what, 0)) + 1}})

    def _epoch_room(self, lane: str, epoch: str) -> None:
        """Refuse an epoch no lane makes (too long), or one more than EPOCHS_PER_LANE: a lane
        that sends each message under a new epoch would otherwise add rows without end."""
        if len(epoch) > MAX_EPOCH_CHARS:
            raise msg.MessageError(f"from {lane!r}: an epoch of {len(epoch)} characters")
        c = self.conn
        lo, hi = f"audit_acked/{lane}/", f"audit_acked/{lane}0"  # '0' follows '/'
        if c.execute(
            "SELECT 1 FROM audit_heads WHERE lane = ? AND epoch = ? UNION ALL "
            "SELECT 1 FROM kv WHERE key = ?",
            (lane, epoch, lo + epoch),
        ).fetchone():
            return
        n = c.execute(
            "SELECT count(*) FROM (SELECT epoch FROM audit_heads WHERE lane = ? UNION "
            "SELECT substr(key, ?) FROM kv WHERE key >= ? AND key < ?)",
            (lane, len(lo) + 1, lo, hi),
        ).fetchone()[0]
        if n >= EPOCHS_PER_LANE:
            raise msg.MessageError(
                f"from {lane!r}: a new epoch past the {EPOCHS_PER_LANE} the office keeps a lane's "
                "records and heads under (a lane makes one at a restore)"
            )

    def _compact_heads(self, lane: str, epoch: str) -> None:
        """Drop the heads of one lane and epoch the records held already vouch for, and past
        HEADS_PER_EPOCH the one before the newest (counted): see `redundant_heads`."""
        c = self.conn  # inside the caller's transaction
        heads = c.execute(
            "SELECT h.rowid, h.count, h.head = r.hash FROM audit_heads h LEFT JOIN audit_records "
            "r ON r.lane = h.lane AND r.epoch = h.epoch AND r.id = h.count "
            "WHERE h.lane = ? AND h.epoch = ? ORDER BY h.t, h.rowid",
            (lane, epoch),
        ).fetchall()
        drop = redundant_heads([(i, n, bool(m)) for i, n, m in heads])
        gone = set(drop)
        kept = [h[0] for h in heads if h[0] not in gone]
        if len(kept) > HEADS_PER_EPOCH:
            drop.append(kept[-2])
            self._count_dropped(lane, "heads")
        c.executemany("DELETE FROM audit_heads WHERE rowid = ?", [(i,) for i in drop])

    def _contiguous(self, lane: str, epoch: str) -> tuple[int, int, str] | None:
        key = f"audit_acked/{lane}/{epoch}"
        lo_row = self.conn.execute(  # inside store_audit's transaction
            "SELECT min(id) FROM audit_records WHERE lane = ? AND epoch = ?", (lane, epoch)
        ).fetchone()
        if lo_row[0] is None:
            return None
        lo = int(lo_row[0])
        upto = max(self.state.get(key, lo - 1), lo - 1)
        while True:
            ids = [
                r[0]
                for r in self.conn.execute(
                    "SELECT id FROM audit_records WHERE lane = ? AND epoch = ? AND id > ? "
                    "ORDER BY id LIMIT 1000",
                    (lane, epoch, upto),
                )
            ]
            run = 0
            while run < len(ids) and ids[run] == upto + run + 1:
                run += 1
            upto += run
            if run < 1000:
                break
        self.state.put(**{key: upto})
        if upto < lo:
            return None
        h = self.conn.execute(
            "SELECT hash FROM audit_records WHERE lane = ? AND epoch = ? AND id = ?",
            (lane, epoch, upto),
        ).fetchone()[0]
        return lo, upto, h

    def store_head(self, lane: str, epoch: str, count: int, head: str, t: float) -> None:
        """A head the lane signed in a heartbeat: its log's record count and newest hash (kept
        while the records held do not already vouch for it: `_compact_heads`)."""
        if not 0 <= count <= MAX_RECORD_ID or len(head) > MAX_HASH_CHARS:
            raise msg.MessageError(f"head from {lane!r}: count {count}, {len(head)} characters")
        self._kept()
        if self._rows(
            "SELECT 1 FROM audit_heads WHERE lane = ? AND epoch = ? AND count = ? AND head = ?",
            (lane, epoch, count, head),
        ):
            return  # the same head again (a quiet lane's heartbeats): no write, no lock
        with self._tx() as c:
            self._epoch_room(lane, epoch)
            c.execute(
                "INSERT INTO audit_heads (lane, epoch, count, head, t) VALUES (?,?,?,?,?)",
                (lane, epoch, count, head, t),
            )
            self._compact_heads(lane, epoch)

    def audit_rows(self, since: float = -math.inf) -> list[dict[str, Any]]:
        """Every lane's records received, oldest first, from `since` on."""
        rows = self._rows(
            "SELECT lane, epoch, id, record FROM audit_records WHERE t >= ? ORDER BY t, lane, id",
            (since,),
        )
        return [_row(lane, e, i, r) for lane, e, i, r in rows]

    def audit_after(
        self, after_row: int, kind: str | None = None, limit: int = 5000
    ) -> tuple[int, list[dict[str, Any]]]:
        """Records stored after row `after_row` (in arrival order), optionally of one kind:
        (the last row read, rows as `audit_rows` gives them), for a live view."""
        rows = self._rows(
            "SELECT rowid, lane, epoch, id, record FROM audit_records WHERE rowid > ? "
            "ORDER BY rowid LIMIT ?",
            (after_row, limit),
        )
        out = [_row(lane, e, i, r) for _, lane, e, i, r in rows]
        last = rows[-1][0] if rows else after_row
        return last, [r for r in out if kind is None or r.get("kind") == kind]

    def audit_row(self, row: int) -> tuple | None:
        """What says which record row `row` is (lane, epoch, id, hash), None when there is
        none: a reader of `audit_after` checks with it that a file changed underneath still
        holds the rows it read."""
        rows = self._rows("SELECT lane, epoch, id, hash FROM audit_records WHERE rowid = ?", (row,))
        return rows[0] if rows else None

    def audit_lanes(self) -> list[str]:
        """Every lane the office holds audit records of."""
        return [r[0] for r in self._rows("SELECT DISTINCT lane FROM audit_records")]

    def audit_evidence(self, lane: str) -> LaneEvidence:
        """Everything the office holds about one lane's log, for `fleet audit verify`."""
        q = self._rows
        recs = q(
            "SELECT epoch, id, prev, hash, received, record FROM audit_records WHERE lane = ? "
            "ORDER BY received, id",
            (lane,),
        )
        heads = q(
            "SELECT epoch, count, head, t FROM audit_heads WHERE lane = ? ORDER BY t, rowid",
            (lane,),
        )
        conflicts = q("SELECT epoch, id, stored, got FROM audit_conflicts WHERE lane = ?", (lane,))
        dropped = self.state.get(f"audit_dropped/{lane}") or {}
        return LaneEvidence(lane, recs, heads, conflicts, dropped)


@dataclass(frozen=True)
class LaneEvidence:
    """One lane's records (epoch, id, prev, hash, received[, fields as JSON]), signed heads and
    conflicts."""

    lane: str
    records: list[tuple]
    heads: list[tuple]
    conflicts: list[tuple]
    dropped: dict[str, int] = field(default_factory=dict)  # past the limits: heads, conflicts


def redundant_heads(heads: list[tuple[int, int, bool]]) -> list[int]:
    """Of one lane's and epoch's signed heads (row, count, matches the record held), in the
    order `verify_lane` reads them, the rows that tell it nothing the records do not: a head
    that matches the record it names and lies within a run of counts that does not go back.
    The first and newest stay, and every head around a count that went back, so verify's
    findings are the same without them. Pure."""
    out: list[int] = []
    kept = 0  # the last head kept before the one looked at
    for i in range(1, len(heads) - 1):
        row, count, matches = heads[i]
        if matches and heads[kept][1] <= count <= heads[i + 1][1]:
            out.append(row)
        else:
            kept = i
    return out


@dataclass(frozen=True)
class AuditFinding:
    """One thing `fleet audit verify` found: broken (exit 1) or only not received yet."""

    lane: str
    broken: bool
    text: str


def verify_lane(ev: LaneEvidence) -> list[AuditFinding]:
    """Check a lane's records received against each other and against the heads it signed.

    Pure. The office holds no HMAC key: it compares the hashes the lane signed when it sent
    each record with the heads it signed later, so a record edited, removed or restored from
    an older copy after it reached the office shows as a head or a link that no longer fits.
    """
    out: list[AuditFinding] = []

    def bad(text: str) -> None:
        out.append(AuditFinding(ev.lane, True, text))

    for what, n in sorted(ev.dropped.items()):
        out.append(AuditFinding(ev.lane, False, f"{n} more {what} not kept (the office's limit)"))

    for epoch, rid, stored, got in ev.conflicts:
        bad(
            f"record {rid} (epoch {epoch[:8]}) arrived again with another hash "
            f"({stored[:12]} then {got[:12]}): the lane's log was rewritten"
        )
    epochs: list[str] = []
    by_epoch: dict[str, dict[int, tuple[str, str]]] = {}
    written: dict[tuple[str, int], float] = {}  # the record's own time, on the lane's clock
    for epoch, rid, prev, h, _, *fields in ev.records:
        if epoch not in by_epoch:
            epochs.append(epoch)
            by_epoch[epoch] = {}
        by_epoch[epoch][rid] = (prev, h)
        if fields and isinstance(t := _record_time(fields[0]), float):
            written[(epoch, rid)] = t
        if fields and _content_hash(prev, rid, fields[0]) != h:
            bad(f"record {rid}'s content does not match the hash the lane signed with it")
    for i, epoch in enumerate(epochs):
        recs = by_epoch[epoch]
        ids = sorted(recs)
        gaps = []
        for a, b in zip(ids, ids[1:], strict=False):
            if b == a + 1 and recs[b][0] != recs[a][1]:
                bad(f"record {b} does not follow record {a}: the log was edited between them")
            elif b > a + 1:
                gaps.append(f"{a + 1}..{b - 1}")
        if gaps:
            out.append(AuditFinding(ev.lane, False, f"records {', '.join(gaps)} not received yet"))
        first = ids[0]
        for earlier in epochs[:i]:
            old = by_epoch[earlier]
            if first - 1 in old and old[first - 1][1] != recs[first][0]:
                bad(
                    f"epoch {epoch[:8]} starts at record {first}, which does not follow record "
                    f"{first - 1} as the lane sent it in epoch {earlier[:8]}: the lane's log "
                    "before it was rewritten or replaced"
                )
            else:
                out.extend(_across_epochs(ev.lane, (earlier, old), (epoch, recs), written))
    newest: dict[str, tuple[int, str, float]] = {}
    for epoch, count, head, t in ev.heads:
        recs = by_epoch.get(epoch, {})
        if count in recs and recs[count][1] != head:
            bad(
                f"the lane signed head {count} = {head[:12]}, but record {count} received here "
                f"has hash {recs[count][1][:12]}: the log was rewritten"
            )
        if epoch in newest and count < newest[epoch][0]:
            bad(
                f"the lane's log went back from {newest[epoch][0]} to {count} records "
                "(records removed, or an older copy restored)"
            )
        newest[epoch] = (count, head, t)  # heads come oldest first
    for epoch, (count, _, signed) in newest.items():
        beyond = [rid for rid in by_epoch.get(epoch, {}) if rid > count]
        # A record written after the newest head was signed is on its way into the next one;
        # one written before it (by its own time, which its hash covers) should be in it.
        cut = [
            r for r in beyond if (w := written.get((epoch, r))) is None or w < signed - HEAD_LAG_S
        ]
        if cut:
            bad(
                f"the lane's newest signed head has {count} records, but record {max(cut)}, "
                "written before it, was received here: records were removed from the end of "
                "its log"
            )
        elif beyond:
            out.append(
                AuditFinding(
                    ev.lane, False, f"records {count + 1}..{max(beyond)} not in a signed head yet"
                )
            )
    return out


def _across_epochs(
    lane: str,
    older: tuple[str, dict[int, tuple[str, str]]],
    newer: tuple[str, dict[int, tuple[str, str]]],
    written: dict[tuple[str, int], float],
) -> list[AuditFinding]:
    """A later epoch's records against an earlier one's, wherever both hold the same record id.

    One log sent under two epochs (its ledger re-initialised, or a copy restored) must agree
    on every record both hold: a chain, once it differs, differs from there on, so the first
    record that differs says where the log changed. The records of the earlier epoch from there
    on are no longer in the lane's log. A log that differs from record 1 is another log: fine
    when it began after the earlier epoch's last record (a Pi replaced or installed again; the
    earlier records are then kept here only), broken when it claims to have begun before (the
    log rewritten from its first record and sent again under a new epoch).
    """
    (e_old, old), (e_new, new) = older, newer
    d = next((r for r in sorted(old.keys() & new.keys()) if old[r][1] != new[r][1]), None)
    if d is None:
        return []
    if d == 1:
        began = written.get((e_new, 1))
        last = max((written.get((e_old, r), -math.inf) for r in old), default=-math.inf)
        if began is not None and began > last:
            return [
                AuditFinding(
                    lane,
                    False,
                    f"epoch {e_new[:8]} is another log, begun after epoch {e_old[:8]}'s last "
                    f"record (a lane replaced or installed again): records 1..{max(old)} of "
                    f"epoch {e_old[:8]} are kept here only",
                )
            ]
        return [
            AuditFinding(
                lane,
                True,
                f"epoch {e_new[:8]} sent a log whose record 1 differs from the one the lane sent "
                f"in epoch {e_old[:8]} but was written before that epoch's last record: the "
                "lane's log was rewritten from its start",
            )
        ]
    went_on = d - 1 in old and (
        new.get(d - 1, ("", ""))[1] == old[d - 1][1] or new[d][0] == old[d - 1][1]
    )
    if went_on:
        return [
            AuditFinding(
                lane,
                True,
                f"epoch {e_new[:8]} went on from record {d - 1}: records {d}..{max(old)} of "
                f"epoch {e_old[:8]}, received here, are no longer in the lane's log (restored "
                "from an older copy or cut)",
            )
        ]
    return [
        AuditFinding(
            lane,
            True,
            f"record {d} sent in epoch {e_new[:8]} differs from record {d} sent in epoch "
            f"{e_old[:8]}: the lane's log was rewritten",
        )
    ]


MAX_RECORD_ID = 2**63 - 1  # SQLite's INTEGER
# A record's fields the lane's chain hash covers: the only ones kept (any other a lane adds
# is vouched for by nothing, and could make each record as large as a message)
RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(AuditRecord))


def _audit_record(lane: str, r: Any) -> tuple[int, str, str, float, dict[str, Any]]:
    """One record of a lane's audit message, checked before anything is stored: (id, prev,
    hash, t, the other fields). A lane's log writes a positive integer id, hex text hashes and
    a finite time; anything else (an id given as text or as true, a time "nan", a hash that is
    a list) is refused as the junk it is, never stored and never a store failure tried again.
    Fields the chain hash does not cover are not kept."""
    if not isinstance(r, dict):
        raise msg.MessageError(f"audit message from {lane!r}: a record is not an object")
    rid, prev, h, t = r.get("id"), r.get("prev"), r.get("hash"), r.get("t", 0.0)
    if isinstance(rid, bool) or not isinstance(rid, int) or not 0 < rid <= MAX_RECORD_ID:
        raise msg.MessageError(f"audit message from {lane!r}: record id {str(rid)[:40]!r}")
    if not isinstance(prev, str) or not isinstance(h, str):
        raise msg.MessageError(f"audit message from {lane!r}: record {rid} without text hashes")
    if not _finite(t):
        raise msg.MessageError(f"audit message from {lane!r}: record {rid} time {str(t)[:40]!r}")
    if len(prev) > MAX_HASH_CHARS or len(h) > MAX_HASH_CHARS:
        raise msg.MessageError(f"audit message from {lane!r}: record {rid} hash too long")
    return rid, prev, h, float(t), {k: r[k] for k in RECORD_FIELDS if k in r}


def _finite(x: Any) -> bool:
    """A JSON number a float holds (not true/false, not an integer past float's range)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _row(lane: str, epoch: str, rid: int, fields_json: str) -> dict[str, Any]:
    """A stored record as `fleet audit` shows it: the lane is the signer's, never a field of
    the record (a lane sending `"lane": "lane2"` in its records speaks for itself only)."""
    try:
        fields = json.loads(fields_json)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        fields = {"detail": "(record unreadable)"}
    own = {"lane": lane, "seq": rid, "epoch": epoch}
    return {**own, **{k: v for k, v in fields.items() if k not in own}}


def _record_time(fields_json: str) -> float | None:
    try:
        t = json.loads(fields_json).get("t")
    except (ValueError, AttributeError):
        return None
    return float(t) if isinstance(t, (int, float)) and math.isfinite(t) else None


def _content_hash(prev: str, rid: int, fields_json: str) -> str | None:
    """The audit log's plain chain hash of a record as received (the office needs no key);
    None for a record that is no record (stored before records were checked on arrival)."""
    try:
        f = json.loads(fields_json)
        t = float(f.get("t", 0.0))
    except (ValueError, TypeError, AttributeError, OverflowError):
        return None
    r = AuditRecord(
        t,
        f.get("gate", ""),
        f.get("kind", ""),
        f.get("decision", ""),
        f.get("via", ""),
        f.get("subject", ""),
        f.get("score"),
        f.get("reason", ""),
        f.get("detail", ""),
    )
    return record_hash(prev, rid, r)
