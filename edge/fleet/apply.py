"""A lane applies what the office signed: roster, revocations and their lifts, ticket keys,
enrollments, deletions and the forget list.

Each office message must verify against the lane's own ticket issuer keys (tickets.pubkeys).
Revocations are grow-only: every revoked ticket carries the office sequence number of its
revocation, and an unrevocation is its own message naming the revocation it lifts, so a replayed
old list cannot undo a lift and a lift cannot undo a later revocation. The roster and each
person's enrollment or deletion apply only with a sequence number above the last one applied
for that subject, so a replayed old message changes nothing. Revocations are written to the
lane's revocation list (a lift takes off only what sync put there) and keys to
fleet.keys_dir; the gate re-reads both when they change.
People records open only with the site key; every enrollment or deletion is answered with a
signed acknowledgement (`fleet status`). The forget list is applied whenever it arrives (every
sync start), so a gallery restored from before a deletion loses that person again. A
supervisor's override is only handed on: the gate judges and spends it (edge/fleet/override.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import tickets as tk
from edge.config import Config
from edge.errors import EdgeGateError
from edge.files import write_atomic
from edge.fleet import messages as msg
from edge.fleet import people
from edge.fleet.identity import OFFICE, IdentityError, Roster, parse_public
from edge.fleet.state import BEHIND_OFFICE, FleetState
from edge.tickets.revocation import unrevoke

log = logging.getLogger(__name__)
# fleet.db key: the ticket ids sync put on the revocation list (the ones a lift may take off)
APPLIED = "revocations_applied"
# fleet.db keys of the forget replay: the seq of the office's newest forget list, as its newest
# fresh heartbeat names it; the newest list taken since the replay began (both cleared when it
# begins, edge/fleet/sync.py _save_epoch)
OFFICE_LIST = "office_forget_list_seq"
LIST_SINCE = "forget_list_since_replay"
# fleet.db key: the office seqs of the office's newest revocation and roster, as its newest fresh
# heartbeat names them (while the lane holds an older one, BEHIND_OFFICE says why: no ticket is
# redeemed); what each is called in that reason
OFFICE_NEWEST = "office_newest"
BEHIND_WHAT = {"revocations": "revocation", "roster": "roster"}


def claim_revocations(cfg: Config, ticket_ids: list[str]) -> str:
    """`ticket revoke` on a lane: the ids are now this lane's own revocations, so a later lift
    from the office leaves them on the list (it takes off only what sync put there). Returns a
    note when the fleet state could not be told ('' otherwise: done, or no fleet)."""
    if not cfg.fleet.enabled:
        return ""
    path = cfg.resolve(cfg.fleet.state_db)
    if not path.exists():
        return ""  # sync never ran here: nothing of the fleet's is on the list
    try:
        st = FleetState(path, office=cfg.fleet.lane == OFFICE)
        try:
            applied = st.get(APPLIED)
            if applied is not None and set(applied) & set(ticket_ids):
                st.put(**{APPLIED: sorted(set(applied) - set(ticket_ids))})
        finally:
            st.close()
    except EdgeGateError as e:
        return (
            f"note: {path} could not be told these are this lane's own revocations ({e}); "
            "a lift from the office would take off those the office had revoked too"
        )
    return ""


def _seq_map(m: msg.Message, key: str) -> dict[str, int]:
    raw = m.body.get(key, {})
    if not isinstance(raw, dict):
        raise msg.MessageError(f"{m.type} message: {key} is not a map of ticket -> seq")
    try:
        return {str(k).strip(): int(v) for k, v in raw.items() if str(k).strip()}
    except (TypeError, ValueError) as e:
        raise msg.MessageError(f"{m.type} message: {e}") from None


class OfficeApplier:
    """Verifies and applies office messages for one lane; queues the acknowledgements to send."""

    def __init__(self, cfg: Config, state: FleetState, audit: Callable[..., None]):
        self.cfg, self.state, self.audit = cfg, state, audit
        self.trusted: list[Ed25519PublicKey] = [
            tk.load_public(cfg.resolve(p)) for p in cfg.tickets.pubkeys
        ]
        self._acks: list[tuple[str, str, int]] = []  # (person, op, office seq) to acknowledge
        self.roster_changed = False
        self._waiting: tuple[Any, Any] | None = None  # the forget replay's wait, as last said
        self._behind = ""  # why tickets wait for the office's newest, as last said
        self._audited = ""  # ... and as last audited

    def take_acks(self) -> list[tuple[str, str, int]]:
        """Hand the queued acknowledgements to sync, which signs and sends them."""
        out, self._acks = self._acks, []
        return out

    def handle(self, m: msg.Message, now: float) -> None:
        """Apply one office message (already authenticated with the issuer key)."""
        if m.type == msg.REVOCATIONS:
            self._revocations(_seq_map(m, "revoked"), {})
        elif m.type == msg.UNREVOCATIONS:
            self._revocations({}, _seq_map(m, "lifted"))
        elif m.type == msg.KEYS:
            self._keys(m)
        elif m.type == msg.FORGOTTEN:
            self._forgotten(m, now)
        elif m.type == msg.OVERRIDE:  # the gate checks it itself (edge/fleet/override.py)
            self.state.add_override(msg.encode(m), now)
            log.info("sync override for the gate seq=%d", m.seq)
        elif m.type in (msg.ROSTER, msg.PERSON):
            subject = str(m.body.get("person_id", "")) if m.type == msg.PERSON else ""
            if m.seq <= self.state.office_seq(m.type, subject):
                log.info("sync office %s seq=%d already applied", m.type, m.seq)
                return
            if m.type == msg.ROSTER:
                self._roster(m)
            else:
                self._person(m, now)
            self.state.set_office_seq(m.type, subject, m.seq)
            if m.type == msg.ROSTER and self.state.get(BEHIND_OFFICE):
                self._settle_behind(now)
        else:
            raise msg.MessageError(f"unexpected {m.type!r} message on an office topic")

    def _roster(self, m: msg.Message) -> None:
        lanes = m.body.get("lanes")
        if not isinstance(lanes, dict):
            raise msg.MessageError("roster without lanes")
        try:
            for v in lanes.values():
                parse_public(str(v))
        except IdentityError as e:
            raise msg.MessageError(f"roster: {e}") from None
        self.state.set_roster(Roster(m.seq, {str(k): str(v) for k, v in lanes.items()}))
        self.roster_changed = True
        log.info("sync applied roster seq=%d lanes=%d", m.seq, len(lanes))

    def _revocations(self, revoked: dict[str, int], lifted: dict[str, int]) -> None:
        if not self.cfg.tickets.revocation_list:
            raise msg.MessageError(
                "revocations received but tickets.revocation_list is not set",
                "set tickets.revocation_list in this lane's config",
            )
        path = self.cfg.resolve(self.cfg.tickets.revocation_list)
        have = tk.load_revocations(path) if path.exists() else frozenset()
        # a lift takes off only what the fleet put on the list: a ticket this lane revoked
        # itself (`ticket revoke`), before or after the office, stays revoked
        applied = self.state.get(APPLIED)
        if applied is None:  # a state from before this was kept: the fleet's revocations listed
            applied = self.state.fleet_revocations()[0]
        ours = set(applied) & have
        self.state.merge_revocations(revoked, lifted)
        now_revoked, now_lifted = self.state.fleet_revocations()
        new = sorted(now_revoked - have)
        gone = sorted(now_lifted & ours)
        self.state.put(**{APPLIED: sorted(ours | set(new))})  # before the list: never forgotten
        if new:
            tk.revoke(path, new)
        if gone:
            unrevoke(path, gone)
            self.state.put(**{APPLIED: sorted((ours | set(new)) - set(gone))})
        log.info("sync applied revocations new=%d lifted=%d", len(new), len(gone))
        if revoked and self.state.get(BEHIND_OFFICE):  # on the list now: tickets again
            self._settle_behind(None)

    def _keys(self, m: msg.Message) -> None:
        d = self.cfg.resolve(self.cfg.fleet.keys_dir)
        for pem in m.body.get("pubkeys", []):
            data = str(pem).encode()
            if b"PRIVATE KEY" in data:
                raise msg.MessageError("a published ticket key holds a private key")
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / ".incoming.pem"
            write_atomic(tmp, data)
            try:
                kid = tk.key_id(tk.load_public(tmp)).hex()
            except EdgeGateError as e:
                raise msg.MessageError(f"published ticket key unreadable: {e}") from None
            finally:
                tmp.unlink(missing_ok=True)
            if not (d / f"{kid}.pub").exists():
                write_atomic(d / f"{kid}.pub", data)
                log.info("sync added ticket key kid=%s", kid)

    def _person(self, m: msg.Message, now: float) -> None:
        pid, op = str(m.body.get("person_id", "")), m.body.get("op")
        if not pid.startswith("P-") or op not in ("enroll", "forget"):
            raise msg.MessageError(f"person message with id {pid!r} and op {op!r}")
        if op == "enroll":
            if pid in set(self.state.get("forgotten", [])):
                raise msg.MessageError(f"enrollment of {pid}, whom the office's list forgot")
            key = people.site_key(self.cfg)
            record = msg.open_for_site(key, self.cfg.fleet.site, pid, str(m.body.get("sealed", "")))
            people.import_record(self.cfg, pid, record)
        else:
            people.forget(self.cfg, pid)
        self.audit(now, "fleet_" + op, f"office seq {m.seq}")
        self._acks.append((pid, op, m.seq))

    def _forgotten(self, m: msg.Message, now: float) -> None:
        """Forget everyone on the office's list who is here; then faces may be granted again,
        once this list is the office's newest (office_floor)."""
        ids = m.body.get("people", [])
        if not isinstance(ids, list) or not all(str(p).startswith("P-") for p in ids):
            raise msg.MessageError("forget list is not a list of person ids")
        listed = sorted(set(self.state.get("forgotten", [])) | {str(p) for p in ids})
        generation = max(m.seq, int(self.state.get("forgotten_seq") or 0))
        self.state.put(forgotten=listed, forgotten_seq=generation)
        if self.state.get("forget_replay"):  # a list taken while replaying
            since = self.state.get(LIST_SINCE)
            self.state.put(**{LIST_SINCE: max(m.seq, int(since or 0))})
        gone = people.forget_many(self.cfg, listed, m.seq)
        if gone:
            self.audit(
                now, "fleet_forget_replay", f"{len(gone)} people on the office's forget list"
            )
        self._settle_replay(now)

    def office_floor(self, list_seq: int, now: float) -> None:
        """The office's fresh heartbeat names its newest forget list (its seq; 0: none, or an
        office that names none). A lane replaying the list (new, or restored) grants no face
        until it has taken a list that new since the replay began: a list it was given may be an
        older one, kept and put back on the broker, without the people forgotten since (and
        their older enrollments with it). A lane whose newest list is older than the office's
        replays again."""
        if self.state.get(OFFICE_LIST) != list_seq:  # written when it moves, not per heartbeat
            self.state.put(**{OFFICE_LIST: list_seq})
        newest = int(self.state.get("forgotten_seq") or 0)
        if list_seq > newest and not self.state.get("forget_replay"):
            # an older list ended the replay (a heartbeat of before a deletion, dated within the
            # tolerance, came first), or a deletion's list is on its way: no face until it comes
            why = f"the office's forget list is #{list_seq}, the newest applied here #{newest}"
            self.state.put(**{"forget_replay": why, LIST_SINCE: None})
            log.warning("sync forget_replay again: %s", why)
        self._settle_replay(now)

    def office_newest(self, newest: dict[str, int], now: float) -> None:
        """The office's fresh heartbeat names its newest revocation and roster (office seqs, by
        BEHIND_WHAT; a field an office of before does not send is left out). A lane that holds
        an older one was given an older retained message (kept and put back on the broker:
        without the tickets revoked since, or naming a lane since removed) or has not taken the
        newest yet: it redeems no ticket until it has."""
        if self.state.get(OFFICE_NEWEST) != newest:  # written when it moves, not per heartbeat
            self.state.put(**{OFFICE_NEWEST: newest})
        self._settle_behind(now)

    def _held(self) -> dict[str, int]:
        """The newest of each this lane holds, as office_newest compares them (0: none)."""
        return {
            "revocations": self.state.newest_revocation(),
            "roster": max(self.state.roster().seq, 0),
        }

    def _settle_behind(self, now: float | None) -> None:
        """Set or clear BEHIND_OFFICE by what the office's newest heartbeat named and what this
        lane holds: said at each change, audited (with `now`) once a later call finds it so."""
        office = self.state.get(OFFICE_NEWEST) or {}
        held = self._held()
        behind = {
            k: f"the office's newest {BEHIND_WHAT[k]} is #{v}, the newest applied here #{held[k]}"
            for k, v in sorted(office.items())
            if k in held and isinstance(v, int) and v > held[k]
        }
        if "revocations" in behind and not self.cfg.tickets.revocation_list:
            behind["revocations"] += " (this lane takes none: set tickets.revocation_list)"
        why = "; ".join(behind.values())
        if not why:
            if self.state.get(BEHIND_OFFICE):
                self.state.put(**{BEHIND_OFFICE: None})
                log.info("sync behind_office no more: %s (office's newest %s)", held, office)
            self._behind = self._audited = ""
            return
        if self.state.get(BEHIND_OFFICE) != why:
            self.state.put(**{BEHIND_OFFICE: why})
        if self._behind != why:
            self._behind = why
            log.warning("sync behind_office: %s; no ticket redeemed until it is applied", why)
        elif now is not None and self._audited != why:
            # audited once a later heartbeat finds it still so: a new lane hears the office's
            # heartbeat a moment before the retained list it names, and that is no finding
            self._audited = why
            self.audit(now, "fleet_behind_office", f"{why}: no ticket redeemed until then")

    def _settle_replay(self, now: float) -> None:
        """End the forget replay once a list at least as new as the office's newest (as its
        fresh heartbeat said) was taken since it began."""
        pending = self.state.get("forget_replay")
        if not pending:
            return
        office, since = self.state.get(OFFICE_LIST), self.state.get(LIST_SINCE)
        if office is None or since is None or int(since) < int(office):
            said = (since, office)
            if said != self._waiting:  # once per change, not at every heartbeat
                self._waiting = said
                log.warning(
                    "sync forget_replay waiting: list taken #%s, the office's newest %s",
                    since,
                    "not yet heard" if office is None else f"#{office}",
                )
                if since is not None and office is not None:  # given an older list
                    self.audit(
                        now,
                        "fleet_forget_list_old",
                        f"forget list #{since}, older than the office's newest #{office}: "
                        "no face grants until that one is applied",
                    )
            return
        self._waiting = None
        self.state.put(forget_replay=None)
        log.info("sync forget list #%s applied (office's newest #%s): %s", since, office, pending)
