"""`edge-gate keys / pass / privacy-report`: the gallery key, pass edits, and what is stored."""

from __future__ import annotations

import functools
import json
import sys
import time

from edge.cli.gallery import audit_record, gallery_options, paths
from edge.cli.personal import add_detail_args, resolve_details
from edge.errors import EnrollError, FleetStateError
from edge.fleet.state import read_state
from edge.gallery.crypto import init_key, load_key
from edge.gallery.keys import rotate_key
from edge.gallery.privacy import privacy_report, report_markdown
from edge.gallery.store import UNCHANGED, Gallery
from edge.timeutil import iso, parse_time


def cmd_keys_init(args) -> int:
    """`keys init`: create the key that encrypts the gallery, once, before any enrolment."""
    _, _, key = paths(args)
    k = init_key(key)
    print(
        f"wrote {key} (0600, key id {k.kid}); back it up offline: "
        "without it the gallery cannot be opened"
    )
    return 0


def cmd_keys_rotate(args) -> int:
    """`keys rotate`: new key file, audited; the operator backs it up and reloads the gate."""
    cfg, db, key = paths(args)
    old, new = rotate_key(db, key)
    audit_record(cfg, "keys", reason="rotated", detail=f"{old} -> {new}")
    print(f"rotated {key}: key id {old} -> {new}")
    print(f"!! back up {key} offline now: older backups of it no longer open the gallery")
    print("   then `sudo systemctl reload edge-gate` so the running gate uses it")
    return 0


def cmd_pass(args) -> int:
    """`pass renew` / `pass edit`: change a person's pass without touching their templates."""
    if args.pass_cmd == "edit":
        resolve_details(args)
    cfg, db, key = paths(args)
    changes: dict = {}
    if args.valid_until is not None:
        changes["valid_until"] = parse_time(args.valid_until, cfg.gate.zone, end_of_day=True)
    if getattr(args, "no_expiry", False):
        changes["valid_until"] = None
    if getattr(args, "pass_id", None) is not None:
        changes["pass_ref"] = args.pass_id
    if getattr(args, "name", None) is not None:
        if not args.name.strip():
            raise EnrollError("a name cannot be empty", 'pass --name "Full Name"')
        changes["name"] = args.name
    if not changes:
        raise EnrollError(
            "nothing to change", "pass --valid-until, --no-expiry, --pass-id or --name"
        )
    with Gallery(db, load_key(key), create=False) as g:
        p = g.update_person(
            args.person_id,
            **{k: changes.get(k, UNCHANGED) for k in ("name", "pass_ref", "valid_until")},
        )
    audit_record(
        cfg,
        "pass",
        subject=p.id,
        reason=args.pass_cmd,
        detail="changed " + ", ".join(sorted(changes)),
    )
    print(f"{p.id}: pass={p.pass_ref or '-'} valid_until={iso(p.valid_until) or 'no expiry'}")
    if p.valid_until is not None and p.valid_until < time.time():  # a typo, or ending it on purpose
        print(
            f"note: this pass has already ended: the gate refuses {p.id} by face (pass_expired) "
            "until it is renewed",
            file=sys.stderr,
        )
    return 0


def fleet_forgotten(cfg) -> int | None:
    """How many ids the fleet state's copy of the office's forget list holds (0: no list has
    arrived), None when the fleet state cannot be read (the report says so)."""
    try:
        return len(read_state(cfg.resolve(cfg.fleet.state_db), "forgotten") or [])
    except FleetStateError:
        return None


def cmd_privacy_report(args) -> int:
    """`privacy-report`: the facts a data-protection officer asks for, on demand."""
    cfg, db, key = paths(args)
    r = privacy_report(cfg, db, key, fleet_forgotten(cfg) if cfg.fleet.enabled else None)
    print(
        json.dumps(r, indent=2) if args.json else report_markdown(r),
        end="" if not args.json else "\n",
    )
    return 0


def _expiry_args(sp, required: bool) -> None:
    """--valid-until DATE or --no-expiry, one of the two (both optional for `pass edit`)."""
    exp = sp.add_mutually_exclusive_group(required=required)
    exp.add_argument("--valid-until", help="YYYY-MM-DD (end of that day), or ISO time")
    exp.add_argument("--no-expiry", action="store_true", help="the pass never expires")


def register(sub, common) -> None:
    """Add the keys, pass and privacy-report commands."""
    gallery_args = functools.partial(gallery_options, common=common)
    k = sub.add_parser("keys", help="gallery key file: init, rotate").add_subparsers(
        dest="keys_cmd", required=True
    )
    sp = k.add_parser("init", help="create a new key file (0600); refuses to overwrite")
    gallery_args(sp, key_exists=False)
    sp.set_defaults(func=cmd_keys_init)
    sp = k.add_parser("rotate", help="replace the key file's key; crash-safe")
    gallery_args(sp)
    sp.set_defaults(func=cmd_keys_rotate)

    pp = sub.add_parser("pass", help="renew or edit a person's pass (not their face)")
    ps = pp.add_subparsers(dest="pass_cmd", required=True)
    sp = ps.add_parser(
        "renew", help="set a new expiry, e.g. `edge-gate pass renew P-… --valid-until 2027-03-31`"
    )
    gallery_args(sp)
    sp.add_argument("person_id")
    _expiry_args(sp, required=True)
    sp.set_defaults(func=cmd_pass)
    sp = ps.add_parser(
        "edit", help="change pass id, name or expiry, e.g. `edge-gate pass edit P-… --pass-id AP-9`"
    )
    gallery_args(sp)
    sp.add_argument("person_id")
    sp.add_argument("--pass-id", help="new pass reference")
    sp.add_argument("--name", help="new name")
    add_detail_args(sp, ("name", "pass_id"))
    _expiry_args(sp, required=False)
    sp.set_defaults(func=cmd_pass)

    sp = sub.add_parser(
        "privacy-report", help="what is stored, for how long and why (Markdown or --json)"
    )
    gallery_args(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_privacy_report)
