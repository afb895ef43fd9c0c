"""`edge-gate keys / enroll / people / forget / purge / privacy-report`: the gallery lifecycle."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from edge import config as config_mod
from edge.cli.paths import existing_dir
from edge.errors import EdgeGateError
from edge.gallery.crypto import credential_path, init_key, load_key
from edge.gallery.store import FILING_THRESHOLD, Consent, Gallery, rotate_key
from edge.gate.audit import AuditLog, AuditRecord
from edge.timeutil import iso, parse_time


def paths(args) -> tuple[config_mod.Config, Path, Path]:
    cfg = config_mod.load(args.config)
    db = Path(args.db) if getattr(args, "db", None) else cfg.resolve(cfg.gallery.db)
    key = (
        Path(args.key_file)
        if getattr(args, "key_file", None)
        else cfg.resolve(cfg.gallery.key_file)
    )
    return cfg, db, key


def audit_log(cfg: config_mod.Config) -> AuditLog:
    return AuditLog(cfg.resolve(cfg.audit.path), cfg.audit.retention_days)


def cmd_keys_init(args) -> int:
    _, _, key = paths(args)
    k = init_key(key)
    print(
        f"wrote {key} (0600, key id {k.kid}); back it up offline: without it the gallery cannot be opened"
    )
    return 0


def cmd_keys_rotate(args) -> int:
    _, db, key = paths(args)
    old, new = rotate_key(db, key)
    print(f"rotated {key}: key id {old} -> {new}")
    return 0


def _min_templates(args) -> int:
    from edge.gallery.enroll import MIN_TEMPLATES

    return MIN_TEMPLATES if args.min_templates is None else args.min_templates


def cmd_enroll(args) -> int:
    if args.folder:
        return cmd_enroll_folder(args)
    if not args.inputs:
        raise EdgeGateError(
            "nothing to enroll from", "give photos, a video or a camera, or --folder DIR"
        )
    from edge.gallery.enroll import check_consent, enroll, notice_sha256
    from edge.gallery.matcher import resolve_threshold
    from edge.vision.pipeline import FacePipeline

    cfg, db, key = paths(args)
    consent = Consent(
        args.consent_version,
        args.consent_method,
        args.operator or os.environ.get("USER", ""),
        args.guardian or "",
        notice_sha256(Path(args.notice_file) if args.notice_file else None),
    )
    check_consent(consent, args.minor)  # refuse before any model or camera is touched
    pipe = FacePipeline.from_config(cfg)
    g = Gallery(db, load_key(key))
    try:
        pid, n = enroll(
            g,
            pipe,
            args.name or "",
            consent,
            args.inputs,
            threshold=resolve_threshold(cfg.gallery.match_threshold, pipe.spec.threshold),
            min_margin=cfg.gallery.min_margin,
            pass_ref=args.pass_id or "",
            valid_until=parse_time(args.valid_until, end_of_day=True) if args.valid_until else None,
            minor=args.minor,
            person_id=args.person_id,
            force=args.force,
            max_templates=args.templates,
            min_templates=_min_templates(args),
        )
    finally:
        g.close()
    with audit_log(cfg) as log:
        log.record(
            AuditRecord(time.time(), cfg.gate.id, "enroll", subject=pid, detail=f"{n} templates")
        )
    print(f"enrolled {n} template(s)")
    print(pid)
    return 0


def cmd_enroll_folder(args) -> int:
    """`enroll --folder DIR`: every DIR/<name>/ as one person; exit 1 only if nobody enrolled."""
    from edge.cli.progress import Progress
    from edge.gallery.bulk import enroll_folder
    from edge.gallery.enroll import check_consent, notice_sha256
    from edge.gallery.matcher import resolve_threshold
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
            valid_until=parse_time(args.valid_until, end_of_day=True) if args.valid_until else None,
            on_progress=Progress("enroll"),
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
    for reason, names in sorted(r.by_reason().items()):
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        print(f"refused {len(names)}: {reason}: {shown}")
    return 0 if r.enrolled else 1


def cmd_people(args) -> int:
    _, db, key = paths(args)
    g = Gallery(db, load_key(key), create=False)
    people = g.people()
    g.close()
    rows = [
        {
            "id": p.id,
            "name": p.name,
            "pass": p.pass_ref or None,
            "valid_until": iso(p.valid_until),
            "consent_time": iso(p.consent_time),
            "template_count": p.template_count,
            "minor": p.minor,
        }
        for p in people
    ]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(
                f"{r['id']}  {r['name']:<24} pass={r['pass'] or '-'} valid_until={r['valid_until'] or '-'}"
                f" consent={r['consent_time']} templates={r['template_count']}"
            )
    return 0


def cmd_forget(args) -> int:
    cfg, db, key = paths(args)
    g = Gallery(db, load_key(key), create=False)
    try:
        found = g.forget(args.person_id)
    finally:
        g.close()
    if not found:
        print(f"edge-gate: error: no person {args.person_id} in {db}")
        return 1
    # The audit trail says that a deletion happened and why, never who.
    with audit_log(cfg) as log:
        log.record(AuditRecord(time.time(), cfg.gate.id, "deletion", reason=args.reason))
    print(f"forgot {args.person_id}: templates, personal fields and consent erased from {db}")
    return 0


def cmd_purge(args) -> int:
    from contextlib import closing

    from edge.gate.audit import purge_with_gallery

    cfg, db, key = paths(args)
    days = args.days if args.days is not None else cfg.gallery.purge_after_days
    with audit_log(cfg) as log, closing(Gallery(db, load_key(key), create=False)) as g:
        gone, aged = purge_with_gallery(log, g, time.time(), days, cfg.gate.id)
    print(
        f"purged {len(gone)} people whose pass expired more than {days} days ago; {aged} old audit records"
    )
    return 0


def privacy_report(cfg: config_mod.Config, db: Path, key: Path) -> dict:
    kek = load_key(key)
    g = Gallery(db, kek, create=False)
    try:
        s = g.stats()
    finally:
        g.close()
    real_key = credential_path(key)
    mode = stat.S_IMODE(os.stat(real_key).st_mode)
    files = [db, db.with_name(db.name + "-wal")]
    return {
        "generated": iso(time.time()),
        "gate": cfg.gate.id,
        "purpose": "open the entrance gate for enrolled pass holders who consented; a ticket is always accepted instead",
        "stored": {
            "database": str(db),
            "database_bytes": sum(f.stat().st_size for f in files if f.exists()),
            "people": s["people"],
            "minors": s["minors"],
            "templates": s["templates"],
            "templates_by_model": s["templates_by_model"],
            "consent_records": s["consents"],
            "fields_encrypted": [
                "people.name",
                "people.pass_ref",
                "consents.operator",
                "consents.guardian",
                "templates.embedding",
            ],
            "fields_in_clear": [
                "pseudonymous ids",
                "pass valid-until",
                "minor flag",
                "consent notice version, its SHA-256, method and time",
                "template model id and quality",
                "creation times",
            ],
            "never_stored": [
                "face images or video (enrollment frames are embedded in memory and dropped)",
                "the key-encryption key (kept outside the database)",
            ],
            "audit_log": str(cfg.resolve(cfg.audit.path)),
            "audit_log_contents": "time, gate, grant/deny, face/ticket, pseudonymous person id or ticket id, score, reason",
        },
        "consent": {
            "oldest": iso(s["oldest_consent"]),
            "newest": iso(s["newest_consent"]),
            "notice_versions": s["notice_versions"],
        },
        "retention": {
            "purge_after_pass_expiry_days": cfg.gallery.purge_after_days,
            "people_without_expiry": s["people_without_expiry"],
            "audit_retention_days": cfg.audit.retention_days,
            "schedule": "edge-gate-purge.timer runs `edge-gate purge` daily",
            "withdrawal": "`edge-gate forget PERSON_ID` erases a person at once (secure_delete, WAL checkpoint, VACUUM)",
        },
        "encryption": {
            "algorithm": "AES-256-GCM, associated data binds table, row, column and model",
            "key_file": str(real_key),
            "key_file_mode": oct(mode),
            "key_file_ok": not (mode & 0o077),
            "from_systemd_credential": real_key != key,
            "key_id": kek.kid,
            "data_key_wrappings": s["key_ids"],
            "schema_version": s["schema_version"],
        },
        "filing_threshold": {
            "people": s["people"],
            "threshold": FILING_THRESHOLD,
            "share": round(s["people"] / FILING_THRESHOLD, 6),
            "above": s["people"] >= FILING_THRESHOLD,
        },
        "network": "none: the service runs with PrivateNetwork=yes",
    }


def report_markdown(r: dict) -> str:
    st, rt, enc, ft = r["stored"], r["retention"], r["encryption"], r["filing_threshold"]
    lines = [
        f"# Privacy report: {r['gate']}",
        "",
        f"Generated {r['generated']}.",
        "",
        f"**Purpose.** {r['purpose']}.",
        "",
        "## What is stored, and where",
        "",
        f"- Gallery `{st['database']}` ({st['database_bytes']} bytes): {st['people']} people ({st['minors']} minors), "
        f"{st['templates']} face templates, {st['consent_records']} consent records.",
        f"- Encrypted: {', '.join(st['fields_encrypted'])}.",
        f"- In clear: {', '.join(st['fields_in_clear'])}.",
        f"- Never stored: {'; '.join(st['never_stored'])}.",
        f"- Audit log `{st['audit_log']}`: {st['audit_log_contents']}.",
        "",
        "## Consent",
        "",
        f"- Oldest consent {r['consent']['oldest']}, newest {r['consent']['newest']}; notice versions "
        f"{r['consent']['notice_versions']}.",
        "",
        "## Retention",
        "",
        f"- People are purged {rt['purge_after_pass_expiry_days']} days after their pass expires ({rt['schedule']}); "
        f"{rt['people_without_expiry']} people have no expiry date.",
        f"- Audit records are kept {rt['audit_retention_days']} days.",
        f"- Withdrawal: {rt['withdrawal']}.",
        "",
        "## Encryption and keys",
        "",
        f"- {enc['algorithm']}.",
        f"- Key file `{enc['key_file']}` mode {enc['key_file_mode']} ({'ok' if enc['key_file_ok'] else 'TOO OPEN'})"
        f"{', from a systemd credential' if enc['from_systemd_credential'] else ''}; key id {enc['key_id']}.",
        "",
        "## Filing threshold",
        "",
        f"- {ft['people']} of {ft['threshold']} people ({ft['share'] * 100:.3f}%): "
        f"{'ABOVE' if ft['above'] else 'below'} the threshold.",
        "",
        f"Network: {r['network']}.",
    ]
    return "\n".join(lines) + "\n"


def cmd_privacy_report(args) -> int:
    cfg, db, key = paths(args)
    r = privacy_report(cfg, db, key)
    print(
        json.dumps(r, indent=2) if args.json else report_markdown(r),
        end="" if not args.json else "\n",
    )
    return 0


def register(sub, common) -> None:
    def gallery_args(sp):
        common(sp)
        sp.add_argument("--db", help="gallery database (default: gallery.db from the config)")
        sp.add_argument("--key-file", help="key file (default: gallery.key_file from the config)")

    k = sub.add_parser("keys", help="gallery key file: init, rotate").add_subparsers(
        dest="keys_cmd", required=True
    )
    sp = k.add_parser("init", help="create a new key file (0600); refuses to overwrite")
    gallery_args(sp)
    sp.set_defaults(func=cmd_keys_init)
    sp = k.add_parser("rotate", help="replace the key file's key; crash-safe")
    gallery_args(sp)
    sp.set_defaults(func=cmd_keys_rotate)

    sp = sub.add_parser(
        "enroll", help="enroll a consenting person from images, a video or a camera"
    )
    gallery_args(sp)
    sp.add_argument("--name")
    sp.add_argument(
        "--consent-version", required=True, help="version of the notice the person agreed to"
    )
    sp.add_argument("--notice-file", help="the notice text (its SHA-256 is recorded)")
    sp.add_argument("--consent-method", default="written", help="written | electronic | ...")
    sp.add_argument("--operator", help="staff member taking consent (default $USER)")
    sp.add_argument("--pass-id")
    sp.add_argument("--valid-until")
    sp.add_argument("--guardian", help="guardian giving consent (required for minors)")
    sp.add_argument("--minor", action="store_true", help="the person is under 14")
    sp.add_argument("--person-id", help="re-enroll: add templates to this person")
    sp.add_argument(
        "--force", action="store_true", help="enroll even if the face matches someone else"
    )
    sp.add_argument("--templates", type=int, default=5, help="best N faces to keep")
    sp.add_argument(
        "--min-templates",
        type=int,
        help="refuse a person with fewer usable, distinct faces (default: 3)",
    )
    sp.add_argument(
        "--folder",
        type=existing_dir,
        help="bulk import: enroll every DIR/<name>/ as one person named <name>",
    )
    sp.add_argument("inputs", nargs="*", metavar="IMAGE_OR_VIDEO")
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
    sp.add_argument("person_id")
    sp.set_defaults(func=cmd_forget)

    sp = sub.add_parser("purge", help="erase people whose pass expired more than N days ago")
    gallery_args(sp)
    sp.add_argument("--days", type=int, help="default gallery.purge_after_days")
    sp.set_defaults(func=cmd_purge)

    sp = sub.add_parser(
        "privacy-report", help="what is stored, for how long and why (Markdown or --json)"
    )
    gallery_args(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_privacy_report)
