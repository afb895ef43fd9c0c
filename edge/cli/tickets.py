"""`edge-gate ticket …` and `edge-gate qr read`: the office side and the gate side of tickets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2

from edge import tickets as tk
from edge.errors import EdgeGateError, ImageError
from edge.timeutil import iso, parse_time


def issue_ticket(key_path: Path, ticket: tk.Ticket, out_dir: Path) -> tuple[str, Path]:
    """Sign a ticket and write OUT/ID.png with the code and its text underneath."""
    from edge.tickets.qr import render_ticket

    text = tk.sign(ticket, tk.load_private(key_path))
    if any(c in ticket.ticket_id for c in "/\\\0") or ticket.ticket_id in (".", ".."):
        raise EdgeGateError(
            f"ticket id {ticket.ticket_id!r} cannot be a file name", "use letters, digits, - and _"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    valid = f"{iso(ticket.valid_from) or 'now'} .. {iso(ticket.valid_until) or 'open'}"
    entries = {
        tk.Kind.ONE_TIME: "1 entry",
        tk.Kind.ENTRIES: f"{ticket.count} entries",
        tk.Kind.SEASON: f"season, {ticket.count}/day",
    }[ticket.kind]
    img = render_ticket(text, [f"{ticket.ticket_id}  {ticket.product}  {entries}", valid, text])
    path = out_dir / f"{ticket.ticket_id}.png"
    if not cv2.imwrite(str(path), img):
        raise EdgeGateError(f"cannot write {path}", "check the folder exists and is writable")
    return text, path


def texts_from_input(item: str) -> list[str]:
    """An argument is an image file (every code in it) or the ticket text itself."""
    p = Path(item)
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif") or p.is_file():
        from edge.tickets.qr import read_codes
        from edge.vision.image import load_image

        return read_codes(load_image(p))
    return [item]


def pick_ticket_text(texts: list[str]) -> str | None:
    """Of every code in an image, the one that looks like a ticket, else the first (refused later)."""
    return next((t for t in texts if t.startswith(tk.PREFIX)), texts[0] if texts else None)


def cmd_keygen(args) -> int:
    priv, pub = tk.keygen(Path(args.out))
    print(f"wrote {priv} (private, 0600: keep it in the ticket office)")
    print(f"wrote {pub} (copy to every gate)")
    return 0


def cmd_issue(args) -> int:
    kind, count = tk.Kind.ONE_TIME, 1
    if args.season_per_day:
        kind, count = tk.Kind.SEASON, args.season_per_day
    elif args.entries and args.entries > 1:
        kind, count = tk.Kind.ENTRIES, args.entries
    t = tk.Ticket(
        args.id,
        args.product,
        parse_time(args.valid_from) if args.valid_from else int(time.time()),
        parse_time(args.valid_until, end_of_day=True) if args.valid_until else 0,
        kind,
        count,
        args.holder or "",
    )
    text, _ = issue_ticket(Path(args.key), t, Path(args.out))
    print(text)
    return 0


def cmd_verify(args) -> int:
    from edge.tickets.ledger import Ledger

    verifier = tk.Verifier(
        [tk.load_public(Path(p)) for p in args.pubkey],
        tuple(args.product or ()),
        tk.load_revocations(Path(args.revocations) if args.revocations else None),
        args.skew,
    )
    ledger = Ledger(args.db, gate=args.gate, antipassback_s=args.antipassback) if args.db else None
    if args.redeem and ledger is None:
        raise EdgeGateError("--redeem needs --db LEDGER", "pass the ledger database path")
    all_ok = True
    now = time.time()
    for item in args.inputs:
        out = {"input": item, "valid": False, "reason": tk.MALFORMED, "ticket_id": None}
        try:
            texts = texts_from_input(item)
        except ImageError as e:
            texts, out["detail"] = [], str(e)
        if not texts:
            out.setdefault("detail", "no code found")
        text = pick_ticket_text(texts)
        if text is not None:
            v = verifier.verify(text, now)
            out.update(valid=v.valid, reason=v.reason, ticket_id=v.ticket_id)
            if v.detail:
                out["detail"] = v.detail
            if v.valid and ledger is not None:
                if args.redeem:
                    r = ledger.redeem(v.ticket, now)
                    out.update(valid=r.ok, reason=r.reason, entries_used=r.entries_used)
                    if r.detail:
                        out["detail"] = r.detail
                else:
                    out["entries_used"] = ledger.used(v.ticket.ticket_id)
        all_ok &= bool(out["valid"])
        print(json.dumps(out))
    return 0 if all_ok else 1


def cmd_revoke(args) -> int:
    tk.revoke(Path(args.list), args.ids)
    print(f"revoked {len(args.ids)} ticket(s) in {args.list}")
    return 0


def cmd_qr_read(args) -> int:
    from edge.tickets.qr import read_codes
    from edge.vision.image import load_image

    rc = 0
    for p in args.images:
        try:
            print(json.dumps({"path": p, "texts": read_codes(load_image(p))}))
        except ImageError as e:
            print(json.dumps({"path": p, "texts": [], "error": str(e)}))
            rc = 1
    return rc


def register(sub, common) -> None:
    t = sub.add_parser("ticket", help="issue, verify and revoke signed tickets").add_subparsers(
        dest="ticket_cmd", required=True
    )
    sp = t.add_parser("keygen", help="create an issuer key pair (office side)")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_keygen)

    sp = t.add_parser("issue", help="sign a ticket and write OUT/ID.png")
    sp.add_argument("--key", required=True, help="issuer.key")
    sp.add_argument("--id", required=True)
    sp.add_argument("--product", default="day")
    sp.add_argument("--valid-from")
    sp.add_argument("--valid-until")
    sp.add_argument("--entries", type=int, default=1, help="total entries (default 1: one-time)")
    sp.add_argument(
        "--season-per-day", type=int, default=0, help="season pass: at most N entries per day"
    )
    sp.add_argument(
        "--holder", help="pass holder reference (links an annual pass to an enrolled person)"
    )
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_issue)

    sp = t.add_parser("verify", help="verify (and optionally redeem) ticket images or texts")
    sp.add_argument(
        "--pubkey", action="append", required=True, help="issuer.pub (repeatable, for key rotation)"
    )
    sp.add_argument("--db", help="redemption ledger (SQLite)")
    sp.add_argument("--redeem", action="store_true", help="count an entry for each valid ticket")
    sp.add_argument("--gate", default="gate-1")
    sp.add_argument(
        "--product", action="append", help="products accepted here (repeatable; default all)"
    )
    sp.add_argument("--revocations", help="revocation list file")
    sp.add_argument("--skew", type=float, default=300.0, help="clock skew allowance, seconds")
    sp.add_argument(
        "--antipassback",
        type=float,
        default=60.0,
        help="seconds before the same ticket may re-enter",
    )
    sp.add_argument("inputs", nargs="+", metavar="IMAGE_OR_TEXT")
    sp.set_defaults(func=cmd_verify)

    sp = t.add_parser("revoke", help="add ticket ids to a revocation list")
    sp.add_argument(
        "--list", required=True, help="revocation list file (gate: tickets.revocation_list)"
    )
    sp.add_argument("ids", nargs="+")
    sp.set_defaults(func=cmd_revoke)

    q = sub.add_parser("qr", help="read codes from images").add_subparsers(
        dest="qr_cmd", required=True
    )
    sp = q.add_parser("read", help="print every code found in each image")
    sp.add_argument("images", nargs="+")
    sp.set_defaults(func=cmd_qr_read)
