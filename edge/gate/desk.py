"""The gate's ticket desk from a config: open the ledger, set it up, verify and redeem inputs.

The CLI and the daemon both come here, so `ticket verify --config C` sees exactly what the gate
sees: the same keys, products, revocations, ledger, gate id, time zone and high-water mark.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from edge import config as config_mod
from edge.db import file_id
from edge.errors import ClockError, EdgeGateError, ImageError, LedgerError
from edge.evidence import key_path, lane_key
from edge.files import fsync_dir
from edge.fleet import lane
from edge.fleet.lane import LaneLedger
from edge.fleet.state import LaneGuard, fleet_pubkey_paths
from edge.gate.audit import CLOCK_CHECKED, AuditRecord, open_audit
from edge.tickets.format import PREFIX, Reason
from edge.tickets.keys import load_public
from edge.tickets.ledger import (
    CLOCK_TOLERANCE_S,
    LOST_HINT,
    Entry,
    Ledger,
    LedgerMark,
    LedgerUnreadable,
    MarkStore,
    day_of,
    init_ledger,
)
from edge.tickets.pretix_desk import PretixVerdict, PretixVerifier, desk_result, load_verifier
from edge.tickets.pretix_offline import dir_stamp
from edge.tickets.revocation import load_revocations
from edge.tickets.verifier import Verifier
from edge.timeutil import iso

log = logging.getLogger(__name__)


def open_ledger(
    cfg: config_mod.Config, marks: MarkStore | None = None, key: str = "create"
) -> Ledger:
    """The gate's ledger, checked against the mark kept in `marks` (the audit log) and keyed with
    the lane's evidence key (`key`: an `edge.evidence.lane_key` mode); in a fleet, with its
    outbox and behind the fleet link check (edge/fleet/lane.py)."""
    led = Ledger(
        cfg.resolve(cfg.tickets.ledger),
        cfg.gate.id,
        cfg.tickets.anti_passback_s,
        cfg.gate.zone,
        marks,
        outbox=cfg.fleet.enabled,
        key=lane_key(key_path(cfg), key),
    )
    if not cfg.fleet.enabled:
        return led
    return LaneLedger(led, LaneGuard(cfg))


class UnavailableLedger:
    """Stands in for a ledger that could not be opened: every redemption is a LedgerError."""

    def __init__(self, problem: str):
        self.problem = problem

    def redeem(self, t, now: float, *rule_and_upload):
        """Refuse: an entry that cannot be counted is not granted."""
        raise LedgerError(self.problem)

    def maintain(self) -> None:
        """Nothing to verify or key."""

    def close(self) -> None:
        """Nothing to close."""


def open_gate_ledger(
    cfg: config_mod.Config, audit, now: float
) -> Ledger | LaneLedger | UnavailableLedger:
    """The daemon's ledger; if it cannot be opened, a stand-in that refuses, logged and audited.
    A fleet lane's stand-in keeps the lane's guard: its face check (the office's forget list
    applied) does not depend on the ledger."""
    try:
        return open_ledger(cfg, audit)
    except EdgeGateError as e:
        log.error("gate LEDGER_ERROR every ticket is refused: %s", e)
        audit.record(
            AuditRecord(now, cfg.gate.id, "system", reason=Reason.LEDGER_ERROR, detail=str(e)[:300])
        )
        return stand_in_ledger(cfg, str(e))


def stand_in_ledger(cfg: config_mod.Config, problem: str) -> LaneLedger | UnavailableLedger:
    """A ledger refusing every ticket for `problem`; a fleet lane's keeps the lane's guard, so
    its face check (the office's forget list applied) holds without the ledger. A guard whose
    fleet.db does not open refuses too (edge.fleet.state.LaneGuard)."""
    stand_in = UnavailableLedger(problem)
    if cfg.fleet.enabled:
        return LaneLedger(stand_in, LaneGuard(cfg))  # type: ignore[arg-type]
    return stand_in


def configured_revocations(cfg: config_mod.Config) -> frozenset[str]:
    """The gate's revocation list; a configured list that cannot be read raises (never "none")."""
    return load_revocations(
        cfg.resolve(cfg.tickets.revocation_list) if cfg.tickets.revocation_list else None
    )


def gate_verifier(
    cfg: config_mod.Config, pubkeys: list[str] | None = None, keys: list | None = None
) -> Verifier:
    """The gate's verifier: its issuer keys, products, revocation list and clock skew."""
    if keys is None:
        paths = pubkeys or [str(cfg.resolve(p)) for p in cfg.tickets.pubkeys] + [
            str(p) for p in fleet_pubkey_paths(cfg)
        ]
        keys = [load_public(Path(p)) for p in paths]
    return Verifier(keys, cfg.gate.products, configured_revocations(cfg), cfg.tickets.clock_skew_s)


def init_gate_ledger(path: Path, audit=None, after_loss: bool = False, gate: str = "") -> str:
    """`edge-gate ledger init`: create the ledger; after a loss, adopt it with an audit record.

    Without `after_loss` a ledger that the audit log's mark does not match is refused, so a
    deleted or older ledger is never quietly replaced.
    """
    if audit is not None and not after_loss and not Path(path).exists():
        seen = audit.ledger_mark()  # a lost ledger: refused before an empty one is made there
        if seen is not None:
            raise LedgerError(
                f"ledger {path} does not exist; the audit log recorded {seen.seq} redemptions "
                f"of ledger {seen.ledger_id[:8]}: redemptions are lost",
                LOST_HINT,
            )
    path, created = init_ledger(path)
    state = "created" if created else "already exists"
    if audit is None:
        return f"ledger {path} {state}"
    with Ledger(path, key=audit.key, verify=False) as led:
        here: LedgerMark = led.mark()
    seen = audit.ledger_mark()
    if seen is None or seen == here or (seen.ledger_id == here.ledger_id and seen.seq <= here.seq):
        audit.set_ledger_mark(here)
        if created:  # an existing ledger is keyed by the gate, after its chain is checked
            with Ledger(path, key=audit.key, verify=False) as led:
                led.adopt()
        return f"ledger {path} {state} ({here.seq} redemptions)"
    if not after_loss:
        raise LedgerError(
            f"ledger {path} holds {here.seq} redemptions of ledger {here.ledger_id[:8]}; the "
            f"audit log recorded {seen.seq} of ledger {seen.ledger_id[:8]}: redemptions are lost",
            LOST_HINT,
        )
    audit.replace_ledger_mark(
        here,
        AuditRecord(
            time.time(),
            gate,
            "ledger",
            reason="ledger_replaced",
            detail=f"ledger {seen.ledger_id[:8]} seq {seen.seq} lost; now {here.ledger_id[:8]} "
            f"seq {here.seq}",
        ),
    )
    with Ledger(path, key=audit.key, verify=False) as led:
        led.adopt(replace_witness=True)
    return (
        f"ledger {path} {state} and adopted; the audit log had counted {seen.seq} redemptions "
        f"of ledger {seen.ledger_id[:8]}: the loss is recorded there"
    )


def _granted_tickets(audit) -> list[tuple[str, float, str]]:
    """(ticket id, time, gate) of every ticket grant the audit log holds, oldest first."""
    out = []
    for r in audit.records("decision"):
        if r.decision != "grant":
            continue
        tid = r.subject if r.via == "ticket" else (r.detail if r.via == "face+ticket" else "")
        if tid:
            out.append((tid, float(r.t), r.gate))
    return out


def recover_gate_ledger(
    cfg: config_mod.Config, audit, now: float | None = None, accept_loss: bool = False
) -> str:
    """`edge-gate ledger recover`: rebuild a broken or restored ledger without re-admitting anyone.

    The new ledger (a new id, so a new epoch for the fleet) holds every entry still readable in
    the old file plus, for each ticket (and day), the grants the audit log recorded beyond them;
    the old file is kept beside it as evidence; the audit log records the recovery and adopts
    the new ledger. Refused when the audit log does not verify either: then only backups help.
    Refused too, unless `accept_loss`, when the evidence witness counted more entries than can
    be rebuilt (an audit log adopted after it went back holds no grant of the entries lost with
    the ledger): the tickets spent in them would be let in again.
    """
    rep = audit.verify()
    if not rep.ok:
        raise LedgerError(
            f"the audit log does not verify either ({rep.problem}): the ledger cannot be rebuilt "
            "from it",
            "restore the newest backups of the ledger and the audit log (with their -wal); if "
            "the audit log was found restored, cut short or replaced (kept as evidence), "
            "`edge-gate audit adopt --config C` first, then run this again; without either, "
            "tickets stay refused (faces still work)",
        )
    now = time.time() if now is None else now
    path, tz = cfg.resolve(cfg.tickets.ledger), cfg.gate.zone
    try:
        with Ledger(path, cfg.gate.id, key=audit.key, verify=False) as old:
            why = old.verify() or "no break found (rebuilt on request)"
            entries, before = old.entries(), old.mark()
            pending = old.outbox_batch(0, 1 << 30)
    except LedgerUnreadable as e:  # missing or damaged: every grant the audit log holds
        why, entries, pending = f"{e.args[0]}"[:150], [], []
        before = audit.ledger_mark() or LedgerMark("none", 0, 0.0)
    local = Counter((e.ticket_id, e.day) for e in entries if e.src == "L")
    added: list[Entry] = []
    for tid, t, gate in reversed(_granted_tickets(audit)):  # newest grants fill the gaps
        day = day_of(t, tz)
        if local[(tid, day)] > 0:
            local[(tid, day)] -= 1
        else:
            added.append(Entry(0, "L", "", "", 0, tid, t, day, gate))
    witnessed = audit.witness.get("ledger") if audit.witness is not None else None
    if witnessed is None and before.seq > 0 and audit.witness is not None and not accept_loss:
        raise LedgerError(
            f"the evidence witness names no ledger, yet ledger {before.ledger_id[:8]} counted "
            f"{before.seq} redemptions: the witness was deleted or emptied, and how many entries "
            "were lost with it cannot be told; nothing was changed",
            "restore the witness (evidence.witness beside the evidence key) from where it was, "
            "or the newest backups of the ledger and the audit log taken together (with their "
            "-wal); if neither can be had, `edge-gate ledger recover --config C --accept-loss` "
            "(recorded in the audit log) and revoke the tickets that may have been spent since",
        )
    # this lane's own redemptions only: other lanes' come back from them, not from here
    counted = witnessed.local if witnessed is not None and witnessed.local is not None else 0
    rebuilt = sum(e.src == "L" for e in entries) + len(added)
    lost = counted - rebuilt
    if lost > 0 and not accept_loss:
        raise LedgerError(
            f"the evidence witness counted {counted} redemptions at this lane; {rebuilt} can be "
            f"rebuilt ({rebuilt - len(added)} readable in the ledger, {len(added)} grant(s) in "
            f"the audit log beyond them): {lost} are in neither (older than the audit log's "
            "retention, or lost with an audit log that went back with the ledger), and the "
            "tickets spent in them could be used again; nothing was changed",
            "restore the newest backups of the ledger and the audit log (with their -wal); if "
            "none holds them, `edge-gate ledger recover --config C --accept-loss` (recorded in "
            "the audit log) and revoke the tickets still valid that may have been used then",
        )
    new = path.with_name(path.name + ".recovering")
    for p in (new, *(Path(f"{new}{x}") for x in ("-wal", "-shm"))):
        p.unlink(missing_ok=True)
    init_ledger(new)
    last_t = None  # entries dated ahead before a clock check do not raise the floor again
    if audit.clock_checked_time() is not None:
        late = now + CLOCK_TOLERANCE_S
        last_t = max([before.t, *(e.t for e in entries + added if e.t <= late)])
    with Ledger(new, cfg.gate.id, key=audit.key, verify=False, outbox=True) as led:
        led.rebuild(sorted(entries + added, key=lambda e: e.t), pending, before, last_t)
        here = led.mark()
    kept = swap_in_ledger(new, path, time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)))
    detail = (
        f"ledger {before.ledger_id[:8]} ({why}) rebuilt as {here.ledger_id[:8]}: "
        f"{len(entries)} entries kept, {len(added)} restored from the audit log"
        + (f", {lost} lost (accepted)" if lost > 0 else "")
    )
    rec = AuditRecord(now, cfg.gate.id, "ledger", reason="ledger_recovered", detail=detail[:300])
    audit.replace_ledger_mark(here, rec)
    with Ledger(path, cfg.gate.id, key=audit.key, verify=False) as led:
        led.adopt(replace_witness=True)
    return (
        f"ledger {path} rebuilt: {len(entries)} entries kept, {len(added)} ticket grants restored "
        "from the audit log"
        + (f", {lost} entries lost (tickets spent in them can be used again)" if lost > 0 else "")
        + (
            f"; the old file is kept as {kept.name}"
            if kept is not None
            else "; there was no old file"
        )
        + ". Reload the gate (systemctl reload edge-gate) so it opens the new ledger."
    )


def clock_checked(
    cfg: config_mod.Config,
    audit,
    reason: str,
    synced: bool | None,
    by_hand: bool = False,
    now: float | None = None,
) -> str:
    """`edge-gate ledger clock-checked`: the clock is right now and the records dated after it
    were dated by a clock that ran ahead; tickets (and passes with an end) are judged again
    instead of refused `clock_behind` until that date.

    The audit log records it first (with the lowered ledger mark, in one transaction), then the
    ledger's newest time is set back: the entries stay counted (a ticket used then stays used).
    Refused unless the kernel reports the clock synchronised (`synced`) or the operator checked
    a clock set by hand (`by_hand`): a clock set back is the attack the floor stops."""
    now = time.time() if now is None else now
    with open_ledger(cfg, audit, "use") as led:
        floor = led.clock_behind(now)
        if floor is None:
            return f"the clock ({iso(now)}) is not behind any record: nothing to lower"
        if not (synced or by_hand):
            raise ClockError(
                f"the clock ({iso(now)}) is behind the newest record ({iso(floor)}) and the "
                "kernel does not report it synchronised: set back, or not set",
                "set the time (`timedatectl set-ntp true`, wait for it to synchronise); if it "
                "was set by hand and checked against a reliable clock, add --set-by-hand",
            )
        mark = led.mark()
        detail = (
            f"records dated up to {iso(floor)} by a clock that ran ahead; the clock at "
            f"{iso(now)} is right ({'synchronised' if synced else 'set by hand, checked'})"
        )
        audit.record_clock_checked(
            LedgerMark(mark.ledger_id, mark.seq, min(mark.t, now)),
            AuditRecord(now, cfg.gate.id, CLOCK_CHECKED, reason=reason, detail=detail),
        )
        led.lower_clock_floor(now)
    return (
        f"clock checked: records dated up to {iso(floor)} no longer hold tickets back (recorded "
        "in the audit log; the redemptions stay counted). Restart the gate "
        "(systemctl restart edge-gate) so it judges by the clock from now on."
    )


def swap_in_ledger(new: Path, path: Path, stamp: str) -> Path | None:
    """Put the closed ledger built at `new` at `path` in one `os.replace`; the old file (with
    its -wal and -shm) is kept as `path.broken-STAMP` by hard links (a copy where links fail).

    Cut at any step, `path` holds the old file or the new one, never nothing: the old file is
    never moved off its path, and its -wal and -shm (only while they are still the ones kept)
    leave the path before the new file arrives, so the new file never reads the old one's log.
    Returns the name the old file is kept under (None: there was none at `path`)."""
    if Path(f"{new}-wal").exists():  # not closed cleanly: its last commits are not in it
        raise LedgerError(
            f"the rebuilt ledger {new} still has a -wal file; the ledger at {path} is unchanged",
            "run `edge-gate ledger recover --config C` again",
        )
    fd = os.open(new, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    kept, n = path.with_name(f"{path.name}.broken-{stamp}"), 0
    while any(Path(f"{kept}{x}").exists() for x in ("", "-wal", "-shm")):
        n += 1
        kept = path.with_name(f"{path.name}.broken-{stamp}.{n}")
    ids = {x: file_id(f"{path}{x}") for x in ("", "-wal", "-shm")}
    for x, fid in ids.items():
        if fid is not None:
            try:
                os.link(f"{path}{x}", f"{kept}{x}")
            except OSError:  # a file system without hard links
                shutil.copy2(f"{path}{x}", f"{kept}{x}")
    try:
        for x in ("-wal", "-shm"):
            if ids[x] is not None and file_id(f"{path}{x}") == ids[x]:
                os.unlink(f"{path}{x}")
        os.replace(new, path)
        fsync_dir(path.parent)
    except OSError as e:
        raise LedgerError(
            f"the rebuilt ledger could not be put at {path} ({e}); the old file is still there "
            f"(and kept as {kept.name})",
            "make the disk writable (space, errors), then run `edge-gate ledger recover "
            "--config C` again",
        ) from None
    return kept if ids[""] is not None else None


def texts_from_input(item: str, max_pixels: int | None = None) -> list[str]:
    """An argument is an image file (every code in it) or the ticket text itself."""
    p = Path(item)
    if os.path.isdir(item):  # a text is never a folder's name: say what it is
        raise ImageError(f"{item}: is a folder; give an image file or the ticket text")
    # os.path.isfile: a long pasted code is no file name (Path.is_file raises ENAMETOOLONG)
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif") or os.path.isfile(p):
        # zxing-cpp and OpenCV load only when an input is an image: `ticket verify TEXT` stays quick
        from edge.tickets.qr import read_codes
        from edge.vision.image import MAX_PIXELS, load_image

        return read_codes(load_image(p, max_pixels or MAX_PIXELS))
    return [item]


def pick_ticket_text(texts: list[str]) -> str | None:
    """Of all codes in an image, the one like a ticket, else the first (refused later)."""
    return next((t for t in texts if t.startswith(PREFIX)), texts[0] if texts else None)


@dataclass
class Desk:
    """A verifier and, optionally, a ledger (and the audit log that records redemptions)."""

    verifier: Verifier
    ledger: Ledger | None = None
    audit: object | None = None  # edge.gate.audit.AuditLog when verifying with a gate config
    gate: str = ""
    ledger_problem: str = ""  # why the ledger could not be opened: every ticket is refused
    max_image_pixels: int | None = None  # vision.max_image_pixels for ticket photos


@dataclass(frozen=True)
class DeskOptions:
    """`ticket verify`'s choices: a gate config, and flags that override it (or stand alone)."""

    config: Path | None = None
    pubkeys: tuple[str, ...] = ()
    db: str | None = None
    gate: str | None = None
    products: tuple[str, ...] = ()
    revocations: str | None = None
    skew: float | None = None
    antipassback: float | None = None
    redeem: bool = False
    pretix_dir: str | None = None  # decide pretix secrets from this folder (pretix_desk)


def tickets_stamp(cfg: config_mod.Config) -> tuple:
    """Changes when anything the gate's verifier is built from changed on disk: the office's
    revocations and keys, and the lane's pretix folder."""
    folder = cfg.resolve(cfg.pretix.dir) if cfg.pretix.enabled else None
    return (lane.tickets_stamp(cfg), dir_stamp(folder) if folder else None)


def with_pretix(cfg: config_mod.Config, edge: Verifier | None, pretix_dir: str | None = None):
    """The gate's verifier, deciding pretix secrets too when a pretix folder is configured."""
    folder = pretix_dir or (str(cfg.resolve(cfg.pretix.dir)) if cfg.pretix.enabled else None)
    if folder is None:
        return edge
    if pretix_dir:  # a folder named on the command line: whatever event and list it holds
        return load_verifier(folder, edge, cfg.pretix.gate)
    px = cfg.pretix
    return load_verifier(folder, edge, px.gate, px.event, px.checkin_list)


def open_desk(opts: DeskOptions, stack: ExitStack) -> Desk:
    """The verifier and ledger from the gate's config (flags override it); closed with `stack`."""
    cfg = config_mod.load(opts.config) if opts.config else config_mod.Config()
    cfg = config_mod.override(
        cfg,
        gate={"id": opts.gate, "products": opts.products or None},
        tickets={
            "ledger": str(Path(opts.db).resolve()) if opts.db else None,
            "revocation_list": str(Path(opts.revocations).resolve()) if opts.revocations else None,
            "clock_skew_s": opts.skew,
            "anti_passback_s": opts.antipassback,
        },
    )
    if not opts.config and not opts.pubkeys and not opts.pretix_dir:
        raise EdgeGateError(
            "no issuer key",
            "pass --config C (the gate's), --pubkey issuer.pub or --pretix-dir DIR",
        )
    edge = gate_verifier(cfg, list(opts.pubkeys)) if opts.config or opts.pubkeys else None
    desk = Desk(
        with_pretix(cfg, edge, opts.pretix_dir),
        gate=cfg.gate.id,
        max_image_pixels=cfg.vision.max_image_pixels,
    )
    if not opts.config and not opts.db:
        if opts.redeem:
            raise EdgeGateError("--redeem needs a ledger", "pass --config C or --db LEDGER")
        return desk  # signature, validity and revocation only
    if opts.config:  # acting as the gate: its evidence key (made on the lane's first run)
        desk.audit = stack.enter_context(open_audit(cfg, "create" if opts.redeem else "use"))
    try:
        keyed = ("create" if opts.redeem else "use") if opts.config else "none"
        desk.ledger = stack.enter_context(open_ledger(cfg, desk.audit, keyed))
    except LedgerError as e:
        desk.ledger_problem = str(e)
    return desk


def verify_tickets(opts: DeskOptions, inputs: list[str], now: float) -> Iterator[dict]:
    """`ticket verify`: one result per input, as the gate configured by `opts` would decide."""
    with ExitStack() as stack:
        yield from verify_inputs(open_desk(opts, stack), inputs, opts.redeem, now)


def verify_inputs(desk: Desk, inputs: list[str], redeem: bool, now: float) -> Iterator[dict]:
    """One JSON-ready result per input: valid, reason, ticket id; a spent ticket is not valid."""
    for item in inputs:
        out: dict = {"input": item, "valid": False, "reason": Reason.MALFORMED, "ticket_id": None}
        try:
            texts = texts_from_input(item, desk.max_image_pixels)
        except ImageError as e:
            texts, out["detail"] = [], str(e)
        if not texts:
            out.setdefault("detail", "no code found")
        text = pick_ticket_text(texts)
        if text is not None:
            v = desk.verifier.verify(text, now)
            out.update(valid=v.valid, reason=v.reason, ticket_id=v.ticket_id)
            if v.detail:
                out["detail"] = v.detail
            if isinstance(v, PretixVerdict) and isinstance(desk.verifier, PretixVerifier):
                # a pretix secret: pretix's rule, its upload queue
                out.update(
                    desk_result(desk.ledger, desk.ledger_problem, desk.verifier, v, redeem, now)
                )
            elif v.valid and desk.ledger_problem:
                out.update(valid=False, reason=Reason.LEDGER_ERROR, detail=desk.ledger_problem)
            elif v.valid and desk.ledger is not None:
                r = (
                    desk.ledger.redeem(v.ticket, now)
                    if redeem
                    else desk.ledger.check(v.ticket, now)
                )
                out.update(valid=r.ok, reason=r.reason, entries_used=r.entries_used)
                if r.detail:
                    out["detail"] = r.detail
        if redeem and desk.audit is not None:
            _record(desk, out, now)
        yield out


def _record(desk: Desk, out: dict, now: float) -> None:
    desk.audit.record(
        AuditRecord(
            now,
            desk.gate,
            "decision",
            "grant" if out["valid"] else "deny",
            "ticket",
            out["ticket_id"] or "",
            None,
            str(out["reason"]),
            "ticket verify --redeem",
        )
    )
