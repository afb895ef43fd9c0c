"""`edge-gate pretix sync`: the lane's link to its pretix shop (its own process, like `sync`)."""

from __future__ import annotations

import json
import time

from edge import config as config_mod
from edge.errors import EdgeGateError


def cmd_sync(args) -> int:
    """`pretix sync`: pull the shop's keys, list and revocations; send the lane's check-ins."""
    # the shop's HTTP client (urllib, ssl) loads only for `pretix sync`
    from edge.pretix.sync import PretixSync

    cfg = config_mod.load(args.config)
    sync = PretixSync(cfg)
    if not args.once:
        return sync.run()
    try:
        ok = sync.step()
        try:
            pending, _oldest = sync.ledger().upload_pending()
        except EdgeGateError:  # no ledger yet: said in `error`
            pending = None
    finally:
        sync.close()
    report = {
        "reached": ok,
        "error": sync.state.last_error or None,
        "pulled_at": sync.state.pulled_at,
        "age_s": round(time.time() - sync.state.pulled_at, 1) if sync.state.pulled_at else None,
        "uploaded": sync.state.uploaded,
        "upload_pending": pending,
    }
    if args.json:
        print(json.dumps(report))
    else:
        state = "reached" if ok else f"NOT reached ({report['error']})"
        age = f"{report['age_s']} s old" if report["age_s"] is not None else "none yet"
        print(
            f"pretix {cfg.pretix.url} {state}; data {age}; uploaded {report['uploaded']} "
            f"check-in(s), {pending} waiting"
        )
    return 0 if ok else 1


def register(sub, common) -> None:
    """Add `pretix sync` to the CLI."""
    px = sub.add_parser("pretix", help="tickets sold in a pretix shop").add_subparsers(
        dest="pretix_cmd", required=True
    )
    sp = px.add_parser(
        "sync",
        help="keep the lane's [pretix] folder in step with the shop and upload its check-ins "
        "(a separate process: systemd/edge-gate-pretix-sync.service)",
    )
    common(sp)
    sp.add_argument("--once", action="store_true", help="one round (upload, download), then exit")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_sync)
