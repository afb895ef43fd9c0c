"""`edge-gate enroll / people / forget / purge`: the gallery lifecycle (keys, passes: passes.py)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import NoReturn

from edge import config as config_mod
from edge.cli.fleet import check_publish, publish_args, publish_deletion, publish_enrollment
from edge.cli.hints import for_this_run
from edge.cli.numbers import non_negative_int, positive_int
from edge.cli.paths import existing_dir, file_path, nonempty_file
from edge.cli.personal import add_detail_args, resolve_details
from edge.errors import AuditError, ClockError, EdgeGateError, EnrollError
from edge.gallery.crypto import load_key
from edge.gallery.erase import ErasureIncomplete
from edge.gallery.forgetlist import read_replay_file
from edge.gallery.store import Consent, Gallery
from edge.gate.audit import (
    RETENTION,
    AuditLog,
    AuditRecord,
    check_reason,
    open_audit,
    purge_with_gallery,
)
from edge.gate.purgeclock import (
    CHECKED,
    Refusal,
    boot_clock,
    clock_mark,
    fleet_refusal,
    jump_refusal,
    reference,
    trusted_now,
)
from edge.timeutil import iso, parse_time

logger = logging.getLogger(__name__)


def paths(args) -> tuple[config_mod.Config, Path, Path]:
    """The config plus gallery db and key paths, so flags override the config in one place."""
    cfg = config_mod.load(args.config)
    db = Path(args.db) if getattr(args, "db", None) else cfg.resolve(cfg.gallery.db)
    key = (
        Path(args.key_file)
        if getattr(args, "key_file", None)
        else cfg.resolve(cfg.gallery.key_file)
    )
    return cfg, db, key


def audit_log(cfg: config_mod.Config) -> AuditLog:
    """The audit log the config names."""
    return open_audit(cfg, "use")


def audit_record(cfg: config_mod.Config, kind: str, **fields: str) -> None:
    """Append one privacy event (who did what to which pseudonymous id, never a name)."""
    with audit_log(cfg) as log:
        log.record(AuditRecord(time.time(), cfg.gate.id, kind, **fields))


def _min_templates(args) -> int:
    # gallery.enroll brings the models (LiteRT, OpenCV): only for `enroll`
    from edge.gallery.enroll import MIN_TEMPLATES

    return MIN_TEMPLATES if args.min_templates is None else args.min_templates


def _note_if_ended(valid_until: int | None, who: str, args) -> None:
    """A pass enrolled already ended (a typo in the year, most often) is refused at the gate:
    said, as `pass renew` says it, with the command for this person and this run's flags."""
    if valid_until is not None and valid_until < time.time():
        pid = who if who.startswith("P-") else "P-..."
        renew = f"`edge-gate pass renew {pid} --valid-until YYYY-MM-DD --config C`"
        print(
            f"note: this pass has already ended: the gate refuses {who} by face (pass_expired) "
            f"until it is renewed ({for_this_run(renew, args)})",
            file=sys.stderr,
        )


def _valid_until(args, cfg: config_mod.Config) -> int | None:
    """--valid-until as a Unix time: the end of that day in the site's zone (gate.timezone)."""
    if not args.valid_until:
        return None
    return parse_time(args.valid_until, cfg.gate.zone, end_of_day=True)


def cmd_enroll(args) -> int:
    """`enroll`: add one consenting person, refusing before any camera opens without consent."""
    if args.folder:
        return cmd_enroll_folder(args)
    if not args.inputs:
        raise EdgeGateError(
            "nothing to enroll from", "give photos, a video or a camera, or --folder DIR"
        )
    resolve_details(args, prompt=("name",) if args.person_id is None else ())
    # the models (LiteRT, OpenCV) load only for `enroll`
    from edge.gallery.enroll import check_consent, enroll, notice_sha256
    from edge.gallery.matcher import resolve_threshold
    from edge.vision.pipeline import FacePipeline

    cfg, db, key = paths(args)
    if args.replace_templates and not args.person_id:
        raise EnrollError("--replace-templates needs --person-id", "pass --person-id P-...")
    consent = Consent(
        args.consent_version,
        args.consent_method,
        args.operator or os.environ.get("USER", ""),
        args.guardian or "",
        notice_sha256(Path(args.notice_file) if args.notice_file else None),
    )
    check_consent(consent, args.minor)  # refuse before any model or camera is touched
    pipe = FacePipeline.from_config(cfg)
    with Gallery(db, load_key(key)) as g:
        pid, n = enroll(
            g,
            pipe,
            args.name or "",
            consent,
            args.inputs,
            threshold=resolve_threshold(cfg.gallery.match_threshold, pipe.spec.threshold),
            pass_ref=args.pass_id or "",
            valid_until=_valid_until(args, cfg),
            minor=args.minor,
            person_id=args.person_id,
            replace=args.replace_templates,
            force=args.force,
            max_templates=args.templates,
            min_templates=_min_templates(args),
            pick=args.pick,
        )
    what = "replaced all templates with" if args.replace_templates else "added"
    picked = f"; --pick {args.pick}" if args.pick else ""
    audit_record(
        cfg,
        "enroll",
        subject=pid,
        reason="replace_templates" if args.replace_templates else "",
        detail=f"{what} {n} templates; consent {args.consent_version}{picked}",
    )
    print(
        f"enrolled {n} template(s)"
        + (" (previous templates erased)" if args.replace_templates else "")
    )
    print(pid)
    _note_if_ended(_valid_until(args, cfg), pid, args)
    if args.publish:
        publish_enrollment(args, cfg, db, key, pid)
    return 0


def cmd_enroll_folder(args) -> int:
    """`enroll --folder DIR`: every DIR/<name>/ as one person; exit 1 only if nobody enrolled."""
    # the models (LiteRT, OpenCV) and tqdm load only for `enroll --folder`
    from edge.gallery.bulk import enroll_folder
    from edge.gallery.enroll import check_consent, notice_sha256
    from edge.gallery.matcher import resolve_threshold
    from edge.progress import Progress
    from edge.vision.pipeline import FacePipeline

    single = [f for f in ("name", "person_id", "pass_id", "guardian") if getattr(args, f)]
    if single or args.minor or args.inputs:
        raise EdgeGateError(
            "--folder enrolls one person per subfolder; it takes no photos, --name, --person-id,"
            " --pass-id, --minor or --guardian",
            "enroll single people (and minors, with their guardian) one at a time",
        )
    cfg, db, key = paths(args)
    consent = Consent(
        args.consent_version,
        args.consent_method,
        args.operator or os.environ.get("USER", ""),
        "",
        notice_sha256(Path(args.notice_file) if args.notice_file else None),
    )
    check_consent(consent, False)
    pipe = FacePipeline.from_config(cfg)
    g = Gallery(db, load_key(key))
    try:
        r = enroll_folder(
            g,
            pipe,
            Path(args.folder),
            consent,
            threshold=resolve_threshold(cfg.gallery.match_threshold, pipe.spec.threshold),
            min_templates=_min_templates(args),
            max_templates=args.templates,
            force=args.force,
            valid_until=_valid_until(args, cfg),
            on_progress=Progress("enroll", unit="person"),
            pick=args.pick,
        )
    finally:
        g.close()
    log = audit_log(cfg)
    for name, pid in r.enrolled.items():
        detail = f"{r.templates[name]} templates (folder)"
        log.record(AuditRecord(time.time(), cfg.gate.id, "enroll", subject=pid, detail=detail))
    total = len(r.enrolled) + len(r.refused)
    print(
        f"enrolled {len(r.enrolled)} of {total} people ({sum(r.templates.values())} templates)"
        f" from {args.folder}"
    )
    if r.enrolled:
        _note_if_ended(_valid_until(args, cfg), "them", args)
    for reason, names in sorted(r.by_reason().items()):
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        print(f"refused {len(names)}: {reason}: {shown}")
    for s in r.skipped[:10]:
        print(f"left out {s.detail}")
    if len(r.skipped) > 10:
        print(f"left out {len(r.skipped) - 10} more file(s) (unreadable, or several faces)")
    if any(s.reason == "several_faces" for s in r.skipped):
        print("(photos showing several faces are left out; --pick largest enrolls the largest)")
    return 0 if r.enrolled else 1


def cmd_people(args) -> int:
    """`people`: let the operator see who is enrolled and spot damaged records."""
    _, db, key = paths(args)
    with Gallery(db, load_key(key), create=False) as g:
        if g.needs_forget_replay():  # its keys are not read: every row would say "damaged"
            raise EdgeGateError(
                f"{g.forget_state().reason}; nobody is listed or admitted by face until the "
                "forget list is replayed (the records are not damaged)",
                "`edge-gate forget --replay --config C` (with the office's list: --replay FILE)",
            )
        people = g.people()
    rows = [
        {
            "id": p.id,
            "name": p.name,
            "pass": p.pass_ref or None,
            "valid_until": iso(p.valid_until),
            "consent_time": iso(p.consent_time),
            "template_count": p.template_count,
            "minor": p.minor,
            "intact": p.intact,
        }
        for p in people
    ]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(
                f"{r['id']}  {r['name']:<24} pass={r['pass'] or '-'} "
                f"valid_until={r['valid_until'] or '-'}"
                f" consent={r['consent_time']} templates={r['template_count']}"
                + ("" if r["intact"] else "  DAMAGED (failed authentication; never matches)")
            )
    return 0


OWN_LIST = "-"  # `forget --replay` without FILE: the lane's own forget list only


def cmd_replay(args) -> int:
    """`forget --replay [FILE]`: a gallery restored from a backup forgets again everyone the
    lane's forget list (and FILE) names that it still holds, then admits faces again. As
    `forget`: the deletion is recorded first, then done, so an audit log that refuses the
    record erases nothing; people already gone are neither erased nor recorded again (a restored
    gallery made current with nobody left to erase is recorded once, as 0 erased)."""
    cfg, db, key = paths(args)
    ids, gen = read_replay_file(Path(args.replay)) if args.replay != OWN_LIST else ([], 0)
    with Gallery(db, load_key(key), create=False) as g:
        before = g.forget_state()
        held = g.held_of_forget_list(ids)
        record = bool(held or before.reason)  # an erasure, or faces admitted again
        if record:
            _record_replay(cfg, len(held), before.generation)
        try:
            gone = g.apply_forget_list(held, gen)
        except ErasureIncomplete:  # the rows are gone; the audit trail says not yet from disk
            audit_record(cfg, "deletion", reason=REPLAYED, detail="erasure incomplete on disk")
            raise
        except EdgeGateError as e:
            if record:
                with contextlib.suppress(EdgeGateError):
                    audit_record(cfg, "deletion", reason=REPLAYED, detail=f"not done: {e}")
            raise
        after = g.forget_state()
    was = f" ({before.reason})" if before.reason else ""
    print(
        f"replayed the forget list on {db}{was}: {len(gone)} people erased again; generation "
        f"{after.generation}; faces are admitted again"
    )
    return 0


REPLAYED = "forget_list_replayed"


def _record_replay(cfg: config_mod.Config, count: int, generation: int) -> None:
    """The deletion a replay is about to make, recorded (how many, never who) before it is
    made; AuditError saying nothing was erased when the audit log refuses it."""
    try:
        audit_record(
            cfg, "deletion", reason=REPLAYED,
            detail=f"{count} erased again; restored gallery at generation {generation}",
        )  # fmt: skip
    except EdgeGateError as e:
        fix = e.hint or "check the audit log's file, folder and disk"
        raise AuditError(
            f"forget --replay: the audit log did not take the record of the deletion of {count} "
            f"people, so nothing was erased: {e.args[0] if e.args else e}",
            f"{fix}; then run edge-gate forget --replay again",
        ) from None


def cmd_forget(args) -> int:
    """`forget`: honour an erasure request, recording that it happened but not who."""
    if args.replay is not None:
        if args.person_id:
            raise EdgeGateError("give a person id or --replay, not both")
        return cmd_replay(args)
    if not args.person_id:
        raise EdgeGateError(
            "no person id", "edge-gate forget P-..., or --replay after restoring a backup"
        )
    reason = check_reason(args.reason, "--reason")  # before anything is erased
    cfg, db, key = paths(args)
    if args.publish:  # what publishing needs is checked before anything is erased
        check_publish(args, cfg, "forget --publish")
    try:
        with Gallery(db, load_key(key), create=False) as g:
            found = _forget_recorded(cfg, g, args.person_id, reason)
    except ErasureIncomplete:
        # The rows are gone from the database; the audit trail says the erasure is not complete.
        audit_record(cfg, "deletion", reason=reason, detail="erasure incomplete on disk")
        raise
    if args.publish:  # also when already gone here: the lanes may still hold the person
        publish_deletion(args, cfg)
    if not found:
        if args.publish:  # the deletion still went out to the lanes: say so, not an error
            print(f"no person {args.person_id} in {db}; the deletion was published to the lanes")
            return 0
        print(f"edge-gate: error: no person {args.person_id} in {db}", file=sys.stderr)
        return 1
    print(
        f"forgot {args.person_id}: their key destroyed; templates, personal fields and consent"
        f" erased from {db}"
    )
    return 0


def _forget_recorded(cfg: config_mod.Config, g: Gallery, person_id: str, reason: str) -> bool:
    """Record the deletion (that it happened and why, never who), then erase: a record that
    fails erases nothing; an erasure that fails after its record gets a second record saying
    it was not done. Whether the person was here."""
    if not g.holds(person_id):
        if g.pending_erasure():  # an earlier erasure still on disk is finished all the same
            g.scrub()
        return False
    audit_record(cfg, "deletion", reason=reason, detail="key destroyed; file scrubbed")
    try:
        found = g.forget(person_id, scrub=False)
    except EdgeGateError as e:
        with contextlib.suppress(EdgeGateError):
            audit_record(cfg, "deletion", reason=reason, detail=f"not done: {e}")
        raise
    g.scrub()  # after the record: the bytes leave the file, or ErasureIncomplete says not yet
    return found


def cmd_purge(args) -> int:
    """`purge`: enforce retention by erasing expired passes and aged audit records, unless the
    clock it judges by is off from the fleet's or jumped far forward (purgeclock)."""
    cfg, db, key = paths(args)
    days = args.days if args.days is not None else cfg.gallery.purge_after_days
    now, boot = time.time(), boot_clock()
    if (refusal := fleet_refusal(cfg)) is not None:
        _refuse_purge(cfg, refusal, None, None)
    with audit_log(cfg) as log:
        trusted = trusted_now(reference(_purges(log), boot), boot)
        if not args.clock_checked:
            jump = jump_refusal(cfg.gallery.purge_max_clock_jump_days, days, trusted, now)
            if jump is not None:
                _refuse_purge(cfg, jump, log, trusted)
        note = "; ".join(x for x in (clock_mark(boot), CHECKED if args.clock_checked else "") if x)
        with Gallery(db, load_key(key), create=False) as g:
            gone, aged = purge_with_gallery(log, g, now, days, cfg.gate.id, note)
            if gone or g.pending_erasure():  # after the record is committed; fails loudly
                g.scrub()
        if aged:  # the removed records' bytes leave the log too (zeroed in the file already)
            log.checkpoint()
    print(
        f"purged {len(gone)} people whose pass expired more than {days} days ago; "
        f"{aged} old audit records"
    )
    return 0


def _purges(log: AuditLog) -> list[tuple[float, str]]:
    """(time, detail) of the purges that ran, oldest first."""
    return [(r.t, r.detail) for r in log.records("purge") if r.reason == RETENTION]


def _refuse_purge(
    cfg: config_mod.Config, r: Refusal, log: AuditLog | None, trusted: float | None
) -> NoReturn:
    """Record the refusal in the audit log if it takes it, then raise ClockError: nothing was
    erased. A refusal the log does not take refuses all the same, and says so. The record is
    dated no later than the log's newest record or the time the boot clock vouches for: the
    clock it refuses must not become the floor a clock set right is then refused against."""

    def record(opened: AuditLog) -> None:
        stamps = (time.time(), trusted, opened.newest_time())
        t = min(x for x in stamps if x is not None)
        opened.record(AuditRecord(t, cfg.gate.id, "purge", reason=r.reason,
                                  detail=f"refused, nothing erased: {r.detail}"[:300]))  # fmt: skip

    unrecorded = ""
    try:
        if log is not None:
            record(log)
        else:
            with audit_log(cfg) as opened:
                record(opened)
    except (EdgeGateError, OSError, sqlite3.Error) as e:
        logger.warning("purge refusal_unrecorded reason=%s error=%s", r.reason, e)
        unrecorded = f" (the audit log did not take the record of this refusal: {e})"
    raise ClockError(f"purge refused, nothing erased: {r.detail}{unrecorded}", r.fix)


def gallery_options(sp, common, key_exists: bool = True) -> None:
    """--config, --db and --key-file, shared by every command that opens the gallery."""
    common(sp)
    sp.add_argument(
        "--db", type=file_path, help="gallery database (default: gallery.db from the config)"
    )
    sp.add_argument(
        "--key-file",
        type=nonempty_file if key_exists else file_path,
        help="key file (default: gallery.key_file from the config)",
    )


def register(sub, common) -> None:
    """Add the gallery commands (enroll, people, forget, purge)."""

    gallery_args = functools.partial(gallery_options, common=common)

    sp = sub.add_parser(
        "enroll", help="enroll a consenting person from images, a video or a camera"
    )
    gallery_args(sp)
    sp.add_argument(
        "--name", help="the person's name (visible in `ps`: prefer --name-file or the prompt)"
    )
    sp.add_argument(
        "--consent-version", required=True, help="version of the notice the person agreed to"
    )
    sp.add_argument(
        "--notice-file", type=nonempty_file, help="the notice text (its SHA-256 is recorded)"
    )
    sp.add_argument("--consent-method", default="written", help="written | electronic | ...")
    sp.add_argument("--operator", help="staff member taking consent (default $USER)")
    sp.add_argument(
        "--pass-id", help="pass reference in the park's pass system (or --pass-id-file)"
    )
    sp.add_argument(
        "--valid-until",
        help="pass expiry: YYYY-MM-DD (to the end of that day in the site's zone, gate.timezone) "
        "or ISO time",
    )
    sp.add_argument("--guardian", help="guardian giving consent (required for minors)")
    add_detail_args(sp)
    sp.add_argument("--minor", action="store_true", help="the person is under 14")
    sp.add_argument(
        "--person-id",
        help="add faces to this person; each new face must match their existing templates",
    )
    sp.add_argument(
        "--replace-templates",
        action="store_true",
        help="with --person-id: re-enroll from scratch (their templates are erased and replaced;"
        " consent is recorded again)",
    )
    sp.add_argument(
        "--force", action="store_true", help="enroll even if the face matches someone else"
    )
    sp.add_argument(
        "--pick",
        choices=("largest",),  # edge.gallery.enroll.PICKS (imported only when enrolling)
        help="a photo showing several faces is refused; 'largest' enrolls its largest face "
        "instead (logged)",
    )
    sp.add_argument("--templates", type=positive_int, default=5, help="best N faces to keep")
    sp.add_argument(
        "--min-templates",
        type=positive_int,
        help="refuse a person with fewer usable, distinct faces (default: 3)",
    )
    sp.add_argument(
        "--folder",
        type=existing_dir,
        help="bulk import: enroll every DIR/<name>/ as one person named <name>",
    )
    publish_args(sp)
    sp.add_argument(
        "inputs",
        nargs="*",
        metavar="IMAGE_OR_VIDEO",
        help="photos, a short video, or a camera (/dev/video0); the best faces are kept",
    )
    sp.set_defaults(func=cmd_enroll)

    sp = sub.add_parser("people", help="who is enrolled (never biometric data)")
    gallery_args(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_people)

    sp = sub.add_parser("forget", help="erase a person (consent withdrawn or deletion request)")
    gallery_args(sp)
    sp.add_argument(
        "--reason", default="consent_withdrawn", help="consent_withdrawn | deletion_request | ..."
    )
    publish_args(sp)
    sp.add_argument("person_id", nargs="?", help="the pseudonymous id (P-...) to erase")
    sp.add_argument(
        "--replay",
        nargs="?",
        const=OWN_LIST,
        metavar="FILE",
        help="after restoring the gallery from a backup: erase everyone forgotten since (the "
        "lane's own list, plus FILE: the office's list, one id per line) so faces work again",
    )
    sp.set_defaults(func=cmd_forget)

    sp = sub.add_parser("purge", help="erase people whose pass expired more than N days ago")
    gallery_args(sp)
    sp.add_argument("--days", type=non_negative_int, help="default gallery.purge_after_days")
    sp.add_argument(
        "--clock-checked",
        action="store_true",
        help="the clock was checked and is right: skip the check against the first purge of "
        "this boot (gallery.purge_max_clock_jump_days) and become the next purges' reference; "
        "the fleet's clock check still applies",
    )
    sp.set_defaults(func=cmd_purge)
