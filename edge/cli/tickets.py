"""`edge-gate ticket …` and `edge-gate qr read`: the office side and the gate side of tickets."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from edge import config as config_mod
from edge import tickets as tk
from edge.cli.fleet import report_sent
from edge.cli.hints import for_this_run
from edge.cli.numbers import non_negative_float, positive_int
from edge.cli.paths import existing_dir, existing_file, file_path, nonempty_file, output_dir
from edge.errors import EdgeGateError, ImageError
from edge.tickets.format import TICKET_ID, TICKET_ID_RULE
from edge.tickets.revocation import joined_ids, unrevoke
from edge.timeutil import parse_time


def cmd_keygen(args) -> int:
    """`ticket keygen`: the office key pair that makes tickets unforgeable."""
    priv, pub = tk.keygen(Path(args.out))
    print(f"wrote {priv} (private, 0600: keep it in the ticket office)")
    print(f"wrote {pub} (copy to every gate)")
    return 0


def cmd_issue(args) -> int:
    """`ticket issue`: sign a ticket and write its QR code for the customer."""
    # segno, zxing-cpp and OpenCV load only for `ticket issue`
    from edge.tickets.issue import IssueRequest, issue_ticket

    req = IssueRequest(
        args.id,
        args.product,
        args.valid_from,
        args.valid_until,
        args.no_expiry,
        args.entries,
        args.season_per_day or 0,
        args.holder or "",
        config_mod.load(args.config).gate.zone,
        args.allow_expired,
    )
    issued = issue_ticket(Path(args.key), req, Path(args.out))
    print(f"wrote {issued.path}")
    print(f"valid {issued.window} (UTC)")
    print(issued.text)
    return 0


def cmd_verify(args) -> int:
    """`ticket verify`: check tickets at a desk the same way a gate would, as JSON lines."""
    # the ticket desk (verifiers, pretix rules) loads only for `ticket verify`
    from edge.gate.desk import DeskOptions, verify_tickets

    if args.at is not None and args.redeem:
        raise EdgeGateError(
            "--at judges at another time; --redeem records an entry now",
            "drop --at to redeem, or --redeem to judge at that time",
        )
    if args.redeem and not (args.db or args.config):
        raise EdgeGateError("--redeem needs a ledger", "pass --db LEDGER (edge-gate ledger init)")
    now = time.time()
    if args.at is not None:  # a time without an offset is in the site's zone
        cfg = config_mod.load(args.config) if args.config else config_mod.Config()
        now = float(parse_time(args.at, cfg.gate.zone))
    opts = DeskOptions(
        config=args.config,
        pubkeys=tuple(str(p) for p in args.pubkey or ()),
        db=args.db,
        gate=args.gate,
        products=tuple(args.product or ()),
        revocations=args.revocations,
        skew=args.skew,
        antipassback=args.antipassback,
        redeem=args.redeem,
        pretix_dir=str(args.pretix_dir) if args.pretix_dir else None,
    )
    rc, problems = 0, set()
    for out in verify_tickets(opts, args.inputs, now):
        if out.get("detail"):  # a fix it quotes names this run's flags, as the error line does
            out["detail"] = for_this_run(out["detail"], args)
        print(json.dumps(out))
        if out["reason"] == tk.Reason.LEDGER_ERROR:
            problems.add(out.get("detail", ""))
        rc = max(rc, 0 if out["valid"] else 1)
    for problem in sorted(problems):
        print(f"edge-gate: error: {for_this_run(problem, args)}", file=sys.stderr)
    return 2 if problems else rc


def _gate_list(cfg: config_mod.Config) -> Path | None:
    """The revocation list the config's gate reads (None: it names none)."""
    return cfg.resolve(cfg.tickets.revocation_list) if cfg.tickets.revocation_list else None


def check_list_path(args) -> None:
    """A list that does not exist yet is made only with --create.

    A typo (`--list revokd.txt`) would otherwise start a new list that no gate ever reads, and
    the ticket would go on opening gates; the gate's own list gone missing would be started
    anew, and every ticket revoked before it would open gates again.
    """
    path = Path(args.list)
    if path.exists() or args.create:
        return
    cfg = config_mod.load(args.config)
    named = _gate_list(cfg)
    if named is not None and path.resolve() == named:  # lost, or never made
        raise EdgeGateError(
            f"--list {path}, the list the gate reads (tickets.revocation_list), does not exist: "
            "a new list would hold only these ids, and every ticket revoked before would be "
            "let in again",
            "restore it from its backup and run this again; for a first list, pass --create",
        )
    where = (
        f"the config's list is {named} (tickets.revocation_list in {cfg.source_file})"
        if named
        else f"{cfg.source_file} names no list (tickets.revocation_list)"
    )
    raise EdgeGateError(
        f"--list {path} does not exist and no gate reads it: {where}",
        "check the spelling, or pass --create to start a new list on purpose",
    )


RELOADED = "a running gate here reads the list again within a second"


def listed_ids(ids: list[str]) -> list[str]:
    """The ids as typed, each one argument. An id is matched exactly (spaces and any sign
    kept), so a comma-separated list pasted as one argument would be one id that no ticket
    has, and every ticket in it would go on opening gates: refused before anything is written."""
    pasted = [t for t in ids if joined_ids(t)]
    if pasted:
        raise EdgeGateError(
            f"ticket id {pasted[0]!r} is a list joined by commas: ids are matched exactly, so "
            "it would revoke no ticket",
            "pass each id as its own argument, separated by spaces (T-5 T-6)",
        )
    return ids


def cmd_revoke(args) -> int:
    """`ticket revoke`: stop lost or refunded tickets opening gates, optionally fleet-wide."""
    ids = listed_ids(args.ids)
    check_list_path(args)
    cfg = config_mod.load(args.config)  # before the list changes: a broken config changes nothing
    added = tk.revoke(Path(args.list), ids)
    named = _gate_list(cfg)
    if named is not None and Path(args.list).resolve() == named:  # the gate's list: its own now
        # the fleet library loads only where a lane's list changes
        from edge.fleet.apply import claim_revocations

        if note := claim_revocations(cfg, [i.strip() for i in ids]):
            print(note)
    known = len(ids) - len(added)
    print(
        f"revoked {len(added)} ticket(s) in {args.list}"
        + (f"; {known} already revoked" if known else "")
    )
    odd = [t for t in added if not TICKET_ID.fullmatch(t.strip())]
    if odd:  # another system's ids may look like this; a typo may too
        what = "is not an id" if len(odd) == 1 else "are not ids"
        it = "it is" if len(odd) == 1 else "they are"
        print(
            f"note: {', '.join(map(repr, odd))} {what} edge-gate issues ({TICKET_ID_RULE}); "
            f"{it} revoked exactly as written"
        )
    print(RELOADED)
    if args.publish:
        # the office library loads only for the office's commands (edge/cli/__init__.py)
        from edge.fleet.office import publish_revocations

        if not args.key:
            raise EdgeGateError(
                "--publish needs --key issuer.key", "the office signs what it sends"
            )
        n = publish_revocations(cfg, Path(args.key), tk.load_revocations(Path(args.list)))
        report_sent(cfg, f"the revocation list ({n} id(s) in all)")
    return 0


def cmd_unrevoke(args) -> int:
    """`ticket unrevoke`: undo a mistaken revocation."""
    if not Path(args.list).is_file():
        raise EdgeGateError(f"--list {args.list} does not exist", "check the spelling")
    removed = unrevoke(Path(args.list), listed_ids(args.ids))
    missing = sorted(set(args.ids) - set(removed))
    print(
        f"un-revoked {len(removed)} ticket(s) in {args.list}"
        + (f"; not listed: {', '.join(missing)}" if missing else "")
    )
    print(RELOADED)
    if args.publish:  # a lift is its own signed message naming the revocations it lifts
        # the office library loads only for the office's commands (edge/cli/__init__.py)
        from edge.fleet.office import publish_unrevocations

        if not args.key:
            raise EdgeGateError(
                "--publish needs --key issuer.key", "the office signs what it sends"
            )
        cfg = config_mod.load(args.config)
        n = publish_unrevocations(cfg, Path(args.key), list(args.ids))
        report_sent(cfg, f"the lifting of {n} revocation(s)")
    return 0 if removed else 1


def cmd_qr_read(args) -> int:
    """`qr read`: decode QR codes from images to debug what a gate camera sees."""
    # zxing-cpp and OpenCV load only for `qr read`
    from edge.tickets.qr import read_codes
    from edge.vision.image import load_image

    limit = config_mod.load(args.config).vision.max_image_pixels
    rc = 0
    for p in args.images:
        try:
            print(json.dumps({"path": str(p), "texts": read_codes(load_image(p, limit))}))
        except ImageError as e:
            print(json.dumps({"path": str(p), "texts": [], "error": str(e)}))
            rc = 1
    return rc


def register(sub, common) -> None:
    """Add `ticket keygen|issue|verify|revoke|unrevoke` and `qr read` to the CLI."""
    t = sub.add_parser("ticket", help="issue, verify and revoke signed tickets").add_subparsers(
        dest="ticket_cmd", required=True
    )
    sp = t.add_parser(
        "keygen", help="create an issuer key pair (office side), e.g. ticket keygen --out office/"
    )
    sp.add_argument(
        "--out", required=True, type=output_dir, help="folder for issuer.key (0600) and issuer.pub"
    )
    sp.set_defaults(func=cmd_keygen)

    sp = t.add_parser(
        "issue",
        help="sign a ticket and write OUT/ID.png, e.g. ticket issue --key issuer.key --id DAY-7 "
        "--valid-until 2026-12-31 --out tickets/",
    )
    common(sp)  # --config: the site's zone (gate.timezone) for dates typed without an offset
    sp.add_argument("--key", required=True, type=nonempty_file, help="issuer.key")
    sp.add_argument("--id", required=True, help=TICKET_ID_RULE)
    sp.add_argument("--product", default="day", help="product name gates may filter on")
    sp.add_argument(
        "--valid-from", help="YYYY-MM-DD, YYYY-MM-DDTHH:MM[+HH:MM] or Unix seconds (default now)"
    )
    exp = sp.add_mutually_exclusive_group(required=True)
    exp.add_argument(
        "--valid-until",
        help="last valid day or time, e.g. 2026-12-31 (end of that day in the site's zone, "
        "gate.timezone) or "
        "2026-12-31T18:00+01:00",
    )
    exp.add_argument("--no-expiry", action="store_true", help="valid forever (say so explicitly)")
    sp.add_argument("--entries", type=int, default=1, help="total entries, 1..65535 (1: one-time)")
    sp.add_argument(
        "--season-per-day",
        type=positive_int,
        help="season pass: at most N entries per day, 1..65535 (without it: not a season pass)",
    )
    sp.add_argument(
        "--holder", help="pass holder reference (links an annual pass to an enrolled person)"
    )
    sp.add_argument(
        "--allow-expired",
        action="store_true",
        help="issue even if --valid-until is already past (test tickets; gates refuse them)",
    )
    sp.add_argument(
        "--out", required=True, type=output_dir, help="folder for ID.png (an existing file is kept)"
    )
    sp.set_defaults(func=cmd_issue)

    sp = t.add_parser(
        "verify",
        help="verify (and optionally redeem) ticket images or texts as a gate would, e.g. "
        "ticket verify --config /etc/edge-gate/gate.toml ticket.png",
    )
    common(sp)
    sp.add_argument(
        "--pubkey",
        action="append",
        type=nonempty_file,
        help="issuer.pub (repeatable; default: the config's keys)",
    )
    sp.add_argument(
        "--db", type=file_path, help="redemption ledger (default: the config's tickets.ledger)"
    )
    sp.add_argument("--redeem", action="store_true", help="count an entry for each valid ticket")
    sp.add_argument("--gate", help="gate id (default: the config's gate.id)")
    sp.add_argument(
        "--product", action="append", help="products accepted here (repeatable; default all)"
    )
    sp.add_argument(
        "--revocations",
        type=existing_file,
        help="revocation list (default: the config's); must exist",
    )
    sp.add_argument(
        "--skew", type=non_negative_float, help="clock skew allowance, seconds (default 300)"
    )
    sp.add_argument(
        "--antipassback",
        type=non_negative_float,
        help="seconds before the same ticket may re-enter at this gate (default 60)",
    )
    sp.add_argument(
        "--pretix-dir",
        type=existing_dir,
        help="decide pretix secrets (pretix_sig1) from this folder: event.json, checkinlist.json, "
        "revokedsecrets.json, blockedsecrets.json, optionally items.json (default: the config's "
        "[pretix] dir)",
    )
    sp.add_argument(
        "--at",
        help="judge at this time instead of now (ISO 8601, e.g. 2026-06-01T12:00:00Z); "
        "not with --redeem",
    )
    sp.add_argument(
        "--json", action="store_true", help="one JSON object per input (the output format)"
    )
    sp.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_TEXT",
        help="ticket images or ticket texts (EG…, or pretix secrets with --pretix-dir)",
    )
    sp.set_defaults(func=cmd_verify)

    sp = t.add_parser(
        "revoke", help="add ticket ids to a revocation list, e.g. ticket revoke --list L DAY-7"
    )
    sp.add_argument(
        "--list",
        required=True,
        type=file_path,
        help="revocation list file (gate: tickets.revocation_list)",
    )
    sp.add_argument(
        "--publish", action="store_true", help="also send the whole list to every lane (fleet)"
    )
    sp.add_argument(
        "--key", type=nonempty_file, help="with --publish: issuer.key that signs the message"
    )
    sp.add_argument(
        "--config",
        type=existing_file,
        help="gate.toml naming the list (tickets.revocation_list; default: the shipped one); "
        "with --publish: the office's ([fleet] section)",
    )
    sp.add_argument(
        "--create",
        action="store_true",
        help="start a new list at --list even though the config does not name it",
    )
    sp.add_argument("ids", nargs="+", help="ticket ids, exactly as printed on the ticket")
    sp.set_defaults(func=cmd_revoke)

    sp = t.add_parser(
        "unrevoke",
        help="remove ticket ids from a revocation list, e.g. ticket unrevoke --list L DAY-7",
    )
    sp.add_argument("--list", required=True, type=file_path, help="revocation list file")
    sp.add_argument(
        "--publish", action="store_true", help="also lift them at every lane (fleet), signed"
    )
    sp.add_argument(
        "--key", type=nonempty_file, help="with --publish: issuer.key that signs the message"
    )
    sp.add_argument(
        "--config",
        type=existing_file,
        help="with --publish: the office's gate.toml ([fleet] section)",
    )
    sp.add_argument("ids", nargs="+", help="ticket ids, exactly as printed on the ticket")
    sp.set_defaults(func=cmd_unrevoke)

    q = sub.add_parser("qr", help="read codes from images").add_subparsers(
        dest="qr_cmd", required=True
    )
    sp = q.add_parser("read", help="print every code found in each image")
    common(sp)
    sp.add_argument("images", nargs="+", type=nonempty_file, help="photos of QR codes")
    sp.set_defaults(func=cmd_qr_read)
