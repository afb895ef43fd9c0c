"""The office side of the fleet: roster, revocations and their lifts, keys, people; status, audit.

The office's commands sign with the issuer key and queue in the office's fleet state; the
office's `edge-gate sync` publishes (retained, so a lane that was away gets the latest of each)
and keeps what the lanes send. Sequence numbers are the office's persisted counter, never its
clock (edge/fleet/officestore.py). `fleet status` and `fleet audit` read what sync stored: the
lane of every line is the lane whose key signed it, never a field of the message body.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import tickets as tk
from edge.config import NAME_IN_TOPICS, Config
from edge.errors import ConfigError, EdgeGateError, FleetStateError
from edge.fleet import messages as msg
from edge.fleet.brokerconf import ACL_OUTDATED_FIX
from edge.fleet.clock import finite_number
from edge.fleet.identity import (
    Roster,
    ensure_lane_key,
    load_lane_key,
    parse_public,
    public_text,
    read_roster_file,
    write_roster_file,
)
from edge.fleet.officestore import AuditFinding, OfficeStore, office_reader, verify_lane
from edge.fleet.override import DEFAULT_VALID_S, VIA, override_body, override_id
from edge.fleet.people import export_record, site_key
from edge.fleet.state import BEHIND_OFFICE_FIX, STATE_EVERY_S, FleetState
from edge.gate.audit import AuditRecord
from edge.tickets.pretix_desk import pretix_view

log = logging.getLogger(__name__)

STALE_HEARTBEATS = 3  # a member not heard for this many of its heartbeat periods is stale


def need_fleet(cfg: Config) -> None:
    """Refuse a fleet command on a gate without a [fleet] section, saying what to add."""
    if not cfg.fleet.enabled:
        raise ConfigError(
            f"{cfg.source_file or '<defaults>'}: no [fleet] broker configured",
            "add a [fleet] section with broker, site and lane (docs/FLEET.md)",
        )


def need_office(cfg: Config, what: str) -> None:
    """Office commands run with the office's config, whose sync publishes what they queue."""
    need_fleet(cfg)
    if cfg.fleet.lane != msg.OFFICE:
        raise ConfigError(
            f"{what} runs at the office; {cfg.source_file or 'this config'} is lane "
            f"{cfg.fleet.lane!r}",
            'pass the office\'s config (fleet.lane = "office")',
        )


def open_state(cfg: Config, must_exist: bool = False, read_only: bool = False) -> FleetState:
    """The member's fleet state; at the office a failure names the office's fix (the lane's,
    move it aside, would throw away what only the office holds). `must_exist`: a command that
    only reads it refuses a missing file (an empty one made now would report nothing as all
    well) instead of making one. `read_only`: for a command that only reads, opened without
    the write lock (it answers while sync holds a write) and never made or upgraded."""
    path = cfg.resolve(cfg.fleet.state_db)
    if must_exist and not path.exists():
        raise FleetStateError(
            f"no office store at {path} (fleet.state_db)",
            "run the office's edge-gate sync or an office command first; if it was deleted, "
            "restore it from backup",
        )
    office = cfg.fleet.lane == msg.OFFICE
    return office_reader(path, office) if read_only else FleetState(path, office=office)


@contextlib.contextmanager
def office_store(
    cfg: Config, must_exist: bool = False, read_only: bool = False
) -> Iterator[OfficeStore]:
    """The office's store, opened and closed around one command (`read_only`: see open_state)."""
    need_fleet(cfg)
    st = open_state(cfg, must_exist, read_only)
    try:
        yield OfficeStore(st)
    finally:
        st.close()


@dataclass(frozen=True)
class Queued:
    """An office message waiting for the office's sync: its queue row and sequence number."""

    row_id: int
    seq: int
    what: str


def _queue(
    cfg: Config,
    type_: str,
    body: dict,
    key_path: Path,
    topic: str,
    what: str,
    retain: bool = True,
    now: float | None = None,
) -> Queued:
    need_office(cfg, what)
    key = tk.load_private(key_path)
    # one transaction: a forget queued is on the forget list, a roster queued is the roster
    # this office verifies with, or neither (a store that fails between them kept half)
    forget = type_ == msg.PERSON and body["op"] == "forget"
    with office_store(cfg) as store:
        with store.state.transaction():
            row, m = store.queue(type_, cfg.fleet.site, body, key, topic, retain, now)
            if type_ == msg.ROSTER:
                store.state.set_roster(Roster(m.seq, dict(body["lanes"])))
            if type_ == msg.FORGOTTEN:  # named in the office's heartbeat: lanes replay this one
                store.state.put(forget_list_seq=m.seq)
            if type_ == msg.REVOCATIONS:  # named in the heartbeat: a lane lacking it is behind
                store.state.put(revoked_seq=max(body["revoked"].values(), default=0))
            if forget:
                store.add_forgotten(body["person_id"], m.seq)
        if forget:  # the person's queued enrollment, dropped, leaves the log too
            store.flush()
    return Queued(row, m.seq, what)


def wait_sent(cfg: Config, queued: list[Queued], timeout_s: float = 10.0) -> bool:
    """Wait (bounded) until the office's sync has the broker's acknowledgement for each.
    False also when the store cannot be read just now: what was queued stays queued, and a
    caller that took this for a failure would queue it again (an override: a second opening)."""
    deadline = time.monotonic() + timeout_s
    try:
        with office_store(cfg, must_exist=True, read_only=True) as store:
            while time.monotonic() < deadline:
                if not any(store.is_queued(q.row_id) for q in queued):
                    return True
                time.sleep(0.1)
    except FleetStateError as e:
        log.warning("office sent_unknown: queued, whether sent cannot be read: %s", e)
    return False


def wait_all_sent(cfg: Config, what: str, timeout_s: float = 10.0) -> bool | None:
    """Whether everything the office has queued (what was just queued among it) was sent
    within `timeout_s`: True sent, False still queued, None the store cannot be read now."""
    try:  # queued and committed already: a store that cannot be read now fails nothing
        with office_store(cfg, must_exist=True, read_only=True) as store:
            queued = [Queued(r[0], 0, what) for r in store.outgoing(0, 10_000)]
    except EdgeGateError as e:
        log.warning("office sent_unknown what=%s: %s", what, e)
        return None
    return wait_sent(cfg, queued, timeout_s)


def _forget_list(cfg: Config, key_path: Path) -> Queued:
    with office_store(cfg) as store:
        people = store.forgotten()
    return _queue(
        cfg,
        msg.FORGOTTEN,
        {"people": people},
        key_path,
        msg.topic(cfg.fleet.site, "office", "forgotten"),
        "the forget list",
    )


def publish_revocations(cfg: Config, key_path: Path, revoked: frozenset[str]) -> int:
    """Revoke these tickets fleet-wide (each numbered once); lanes add what they lack."""
    need_office(cfg, "ticket revoke --publish")
    with office_store(cfg) as store:
        store.revocation_entries(sorted(revoked), [])
        entries, _ = store.revocation_lists()
    _queue(
        cfg,
        msg.REVOCATIONS,
        {"revoked": entries},
        key_path,
        msg.topic(cfg.fleet.site, "office", "revocations"),
        "revocations",
    )
    return len(revoked)


def publish_unrevocations(cfg: Config, key_path: Path, ticket_ids: list[str]) -> int:
    """Lift revocations fleet-wide: a signed message naming each revocation it lifts."""
    need_office(cfg, "ticket unrevoke --publish")
    with office_store(cfg) as store:
        store.revocation_entries([], ticket_ids)
        _, lifted = store.revocation_lists()
    _queue(
        cfg,
        msg.UNREVOCATIONS,
        {"lifted": lifted},
        key_path,
        msg.topic(cfg.fleet.site, "office", "unrevocations"),
        "unrevocations",
    )
    return len([t for t in ticket_ids if t in lifted])


def publish_keys(cfg: Config, key_path: Path, pubkeys: list[Path]) -> None:
    """Publish ticket public keys (e.g. a new issuer key before rotation), signed by the office."""
    pems = []
    for p in pubkeys:
        tk.load_public(p)  # refuses private keys and garbage
        pems.append(p.read_text())
    _queue(
        cfg,
        msg.KEYS,
        {"pubkeys": pems},
        key_path,
        msg.topic(cfg.fleet.site, "office", "keys"),
        "ticket keys",
    )


def publish_person(
    cfg: Config, key_path: Path, person_id: str, op: str, record: bytes | None = None
) -> None:
    """Enrollment (record sealed for the site) or deletion of one person, to every lane; a
    deletion also joins the office's forget list, replayed to every new or restored lane."""
    body: dict[str, Any] = {"person_id": person_id, "op": op}
    if op == "enroll":
        body["sealed"] = msg.seal_for_site(site_key(cfg), cfg.fleet.site, person_id, record or b"")
    _queue(
        cfg,
        msg.PERSON,
        body,
        key_path,
        msg.topic(cfg.fleet.site, "office", "people", person_id),
        f"{op} {person_id}",
    )
    if op == "forget":
        _forget_list(cfg, key_path)


def publish_enrollment(cfg: Config, key_path: Path, db: Path, gallery_key: Path, pid: str) -> None:
    """Export one person from the office gallery and send it, sealed, to every lane."""
    publish_person(cfg, key_path, pid, "enroll", export_record(db, gallery_key, pid))


def publish_override(
    cfg: Config,
    key_path: Path,
    lane: str,
    reason: str,
    by: str,
    valid_s: float = DEFAULT_VALID_S,
    now: float | None = None,
    record: Callable[[AuditRecord], object] | None = None,
) -> tuple[Queued, str]:
    """A supervisor's "open once" for one rostered lane: signed, with a nonce and a short
    validity, queued for the office's sync (never retained: a lane away longer than the
    validity refuses it as expired). Returns the queue entry and the override's id.

    `record` writes the office's audit record (`override_record`) before anything is queued:
    an office log that cannot be written stops the override, so no lane opens unrecorded."""
    need_office(cfg, "override")
    with office_store(cfg) as store:
        gates = store.state.roster().gates()
    if lane not in gates:
        raise ConfigError(
            f"no lane {lane!r} in the roster ({', '.join(gates) or 'none'})",
            "pick a lane from `edge-gate fleet status`",
        )
    now = time.time() if now is None else now
    body = override_body(lane, reason, by, now, valid_s)
    if record is not None:
        record(override_record(cfg, override_id(body["nonce"]), lane, reason, by))
    q = _queue(
        cfg,
        msg.OVERRIDE,
        body,
        key_path,
        msg.override_topic(cfg.fleet.site, lane),
        f"override for {lane}",
        retain=False,
        now=now,
    )
    return q, override_id(body["nonce"])


def override_record(cfg: Config, oid: str, lane: str, reason: str, by: str) -> AuditRecord:
    """The office audit log's record of an override sent (the lane writes its own decision)."""
    detail = f"by {by}: {lane}: {' '.join(reason.split())}"[:300]
    return AuditRecord(time.time(), cfg.gate.id, "override", "", VIA, oid, None, VIA, detail)


def override_lane(r: AuditRecord) -> str:
    """The lane an `override_record` names ("" when its detail is not of that form)."""
    parts = r.detail.split(": ", 2)
    return parts[1] if len(parts) == 3 and parts[0].startswith("by ") else ""


# --- the roster ------------------------------------------------------------------------------


def roster_lanes(cfg: Config) -> dict[str, str]:
    """The office's roster file, with the office's own key (made if it has none yet)."""
    need_office(cfg, "fleet roster")
    ensure_lane_key(cfg)
    lanes = read_roster_file(cfg.resolve(cfg.fleet.roster_file))
    lanes[msg.OFFICE] = public_text(load_lane_key(cfg).public_key())
    return lanes


def publish_roster(
    cfg: Config, key_path: Path, add: dict[str, str] | None = None, remove: Sequence[str] = ()
) -> dict[str, str]:
    """Change the roster file and publish it signed (with the forget list, so a lane that
    joins has one to apply before it grants anyone by face)."""
    lanes = roster_lanes(cfg)
    for lane, text in (add or {}).items():
        if lane == msg.OFFICE:  # a lane's key there would let that lane sign as the office
            raise ConfigError(
                "the office is in the roster already, with its own key",
                "add lanes by their own names; the office's key is its lane.key",
            )
        if re.fullmatch(NAME_IN_TOPICS, lane) is None:  # a topic level, a wildcard, an ACL line
            raise ConfigError(
                f"lane name {lane[:70]!r} cannot be carried in MQTT topics and the broker's ACL",
                "use the lane's fleet.lane: 1-64 letters, digits, '.', '_' or '-'",
            )
        parse_public(text)
        lanes[lane] = text.strip()
    for lane in remove:
        if lane == msg.OFFICE:
            raise ConfigError("the office cannot leave its own roster")
        lanes.pop(lane, None)
    write_roster_file(
        cfg.resolve(cfg.fleet.roster_file), {k: v for k, v in lanes.items() if k != msg.OFFICE}
    )
    _queue(
        cfg,
        msg.ROSTER,
        {"lanes": lanes},
        key_path,
        msg.topic(cfg.fleet.site, "office", "roster"),
        "the roster",
    )
    _forget_list(cfg, key_path)
    return lanes


# --- what the office's (or a lane's) sync heard -------------------------------------------------


def ago(seconds: float | None) -> str:
    """'never' or '12 s ago' (minutes and hours past a minute), for people reading status."""
    if seconds is None:
        return "never"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s ago"
    if s < 3600:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def _member_view(
    p: dict | None, now: float, period: float, rostered: bool, skew: float
) -> dict[str, Any]:
    if p is None:
        return {"age_s": None, "last_seen": "never", "state": "never", "rostered": rostered}
    body = dict(p.get("body") or {}) if isinstance(p.get("body"), dict) else {}
    age = now - float(p["received"])
    # a lane's own word for its period counts within what a heartbeat period may be here: one
    # claiming a day would look alive a day after it died
    claimed = finite_number(body.get("period"))
    period = min(max(claimed if claimed is not None else period, 1.0), 10 * period)
    # a retained heartbeat counts from its own time: one dated ahead of this clock by more
    # than a clock may be off has no age to tell (it would look fresh for years): stale
    ahead = age < -skew
    if p.get("gone"):
        state = "gone"
    elif ahead or age > STALE_HEARTBEATS * period:
        state = "stale"
    else:
        state = "ok"
    off = finite_number(body.get("clock_offset"))
    if "pretix" in body:
        body["pretix"] = pretix_view(body["pretix"], now)
    return {
        **body,
        "age_s": round(age, 1),
        "last_seen": "dated ahead of this clock" if ahead else ago(age),
        "state": state,
        "gone": p.get("gone") or None,
        "rostered": rostered,
        "epoch": p.get("epoch"),
        "clock_off": ahead or (off is not None and abs(off) > skew),
    }


def fleet_status(cfg: Config, now: float | None = None) -> dict[str, Any]:
    """Members (last signed heartbeat, stale, gone, clock), and at the office each person's
    latest action with the signed acknowledgements of rostered lanes."""
    need_fleet(cfg)
    now = time.time() if now is None else now
    fl = cfg.fleet
    st = open_state(cfg, read_only=True)
    try:
        roster = st.roster()
        peers = st.get("peers") or {}
        names = sorted((set(roster.lanes) | set(peers)) - {fl.lane})
        lanes = {
            n: _member_view(
                peers.get(n), now, fl.heartbeat_s, n in roster.lanes, fl.max_clock_offset_s
            )
            for n in names
        }
        clocks = st.get("clocks") or {}
        off = sorted(
            {n for n, o in clocks.items() if abs(o) > fl.max_clock_offset_s}
            | {n for n, v in lanes.items() if v.get("clock_off")}
        )
        seen = st.get("sync_seen")
        age = None if seen is None else now - seen
        if age is not None and age < -fl.max_clock_offset_s:
            age = None  # dated ahead of this clock (set back since): no run it can place
        rep: dict[str, Any] = {
            "site": fl.site,
            "member": fl.lane,
            "roster": sorted(roster.lanes),
            "lanes": lanes,
            "people": {},
            "clock": {"offsets": clocks, "off": off},
            "sync": {
                "connected": bool(st.get("connected")),
                "last_seen": "dated ahead of this clock"
                if seen is not None and age is None
                else ago(age),
                "running": age is not None and age < 5 * STALE_HEARTBEATS,
                # heartbeats reach this member now: its sync ran within a heartbeat period,
                # connected (a sync killed leaves "connected" as it was); when not, the lanes'
                # states say nothing of the lanes
                "hearing": bool(st.get("connected"))
                and age is not None
                and age < max(fl.heartbeat_s, 3 * STATE_EVERY_S),
            },
        }
        if fl.lane == msg.OFFICE:
            store = OfficeStore(st)
            gates = roster.gates()
            for pid, (op, seq) in sorted(store.people().items()):
                done = sorted(
                    lane
                    for lane, (aop, aseq) in store.acks(pid).items()
                    if aop == op and aseq >= seq and lane in gates
                )
                word = "forgotten" if op == "forget" else "enrolled"
                rep["people"][pid] = {
                    "op": op,
                    "lanes_done": done,
                    "summary": f"{word} on {len(done)} of {len(gates)} lanes",
                }
        else:
            rep["this_lane"] = {
                "lane": fl.lane,
                "connected": st.get("connected"),
                "last_contact": st.get("last_contact"),
                "clock_offset": st.get("clock_offset"),
                "outbox": st.get("outbox"),
                "forget_replay": st.get("forget_replay"),
                "behind_office": st.get("behind_office"),
                "broker_acl": st.get("broker_acl"),
            }
        return rep
    finally:
        st.close()


def _pretix_age(px: dict[str, Any]) -> str:
    """'missing' or 'last good 3 min ago (limit 3600 s)'."""
    if px["age_s"] is None:
        return "missing"
    limit = px.get("stale_after_s")
    return f"last good {ago(px['age_s'])}" + (
        f" (limit {limit:.0f} s)" if isinstance(limit, int | float) else ""
    )


# what `fleet status --check` says of a lane refusing tickets as behind the office
BEHIND_OFFICE_PROBLEM = (
    "refuses tickets: it holds an older revocation list or roster than the office's newest "
    f"(`fleet status` on the lane says which; {BEHIND_OFFICE_FIX})"
)


def status_problems(rep: dict[str, Any]) -> list[str]:
    """What `fleet status --check` fails on: a rostered member stale, gone or never heard, a
    clock off, a broker ACL that predates what a lane publishes (its marks did not come back),
    or this member's own sync not running or not connected. While this member hears no
    heartbeat, a lane gone quiet is not blamed: its state is unknown until sync hears again."""
    sync = rep["sync"]
    deaf = not sync.get("hearing", sync["running"])
    unheard = [
        n
        for n, v in sorted(rep["lanes"].items())
        if deaf and v["rostered"] and v["state"] == "stale"
    ]
    out = [
        f"{n}: {v['state']} (last heartbeat {v['last_seen']})"
        for n, v in sorted(rep["lanes"].items())
        if v["rostered"] and v["state"] != "ok" and n not in unheard
    ]
    out += [f"{n}: clock off" for n in rep["clock"]["off"]]
    out += [
        f"{n}: pretix data {_pretix_age(v['pretix'])}"
        for n, v in sorted(rep["lanes"].items())
        if v["rostered"] and v["state"] == "ok" and (v.get("pretix") or {}).get("stale")
    ]
    outdated = [n for n, v in sorted(rep["lanes"].items()) if v.get("broker_acl") == "outdated"]
    if (rep.get("this_lane") or {}).get("broker_acl") == "outdated":
        outdated.append(rep["this_lane"]["lane"])
    out += [f"{n}: broker ACL outdated ({ACL_OUTDATED_FIX})" for n in outdated]
    behind = [n for n, v in sorted(rep["lanes"].items()) if v.get("behind_office") is True]
    if (rep.get("this_lane") or {}).get("behind_office"):
        behind.append(rep["this_lane"]["lane"])
    out += [f"{n}: {BEHIND_OFFICE_PROBLEM}" for n in behind]
    if not sync["running"]:
        out.append(f"{rep['member']}: edge-gate sync not running (last {sync['last_seen']})")
    elif unheard:  # a sync quiet for a moment, or reconnecting, is no problem until it shows
        why = (
            "not connected to the broker (stopped, or the broker out of reach)"
            if not sync["connected"]
            else f"last ran {sync['last_seen']}"
        )
        out.append(f"{rep['member']}: edge-gate sync {why}: no heartbeat reaches it")
    if unheard:
        out.append(
            f"{', '.join(unheard)}: not heard while this member's sync hears nothing"
            " (state unknown; judged again once it hears)"
        )
    return out


def fleet_audit(cfg: Config, since: float = -math.inf) -> list[dict[str, Any]]:
    """Every lane's audit records the office's sync received, oldest first, from `since` on
    (by default all, those a lane's clock dated before 1970 too)."""
    need_office(cfg, "fleet audit")
    with office_store(cfg, must_exist=True, read_only=True) as store:
        return store.audit_rows(since)


def fleet_audit_verify(cfg: Config) -> dict[str, list[AuditFinding]]:
    """For each rostered lane: its records received checked against the heads it signed."""
    need_office(cfg, "fleet audit verify")
    with office_store(cfg, must_exist=True, read_only=True) as store:
        lanes = store.state.roster().gates()
        held = set(store.audit_lanes())
        return {lane: verify_lane(store.audit_evidence(lane)) for lane in sorted(set(lanes) | held)}
