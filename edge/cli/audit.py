"""`edge-gate audit verify | export`: check the hash chain, read the log."""

from __future__ import annotations

import json
from dataclasses import asdict

from edge import config as config_mod
from edge.timeutil import iso, parse_time


def _open(args):
    from edge.gate.audit import AuditLog

    cfg = config_mod.load(args.config)
    path = cfg.resolve(cfg.audit.path)
    if not path.is_file():
        from edge.errors import EdgeGateError

        raise EdgeGateError(f"audit log {path} does not exist", "check audit.path in the config")
    return AuditLog(path, cfg.audit.retention_days)


def cmd_verify(args) -> int:
    """`audit verify`: prove to an inspector that no record was altered or dropped."""
    with _open(args) as log:
        rep = log.verify()
    if args.json:
        print(json.dumps(asdict(rep)))
    elif rep.ok:
        print(
            f"audit chain intact: {rep.records} records, {rep.removed} removed by purges "
            f"(checkpointed); head {rep.head_id} {rep.head_hash}"
        )
    else:
        print(f"audit chain BROKEN: {rep.problem}; head {rep.head_id} {rep.head_hash}")
    return 0 if rep.ok else 1


def cmd_export(args) -> int:
    """`audit export`: hand the records to an auditor as JSON lines or tab-separated rows."""
    zone = config_mod.load(args.config).gate.zone
    since = parse_time(args.since, zone) if args.since else None
    with _open(args) as log:
        for rid, r, h in log.rows(since=since):
            if args.json:
                out = {"id": rid, "time": iso(r.t), **asdict(r), "hash": h}
                print(json.dumps({k: v for k, v in out.items() if v not in ("", None)}))
            else:
                fields = [str(rid), iso(r.t) or "", r.gate, r.kind, r.decision, r.via, r.subject]
                fields += ["" if r.score is None else f"{r.score:.4f}", r.reason, r.detail]
                print("\t".join(f or "-" for f in fields))
    return 0


def register(sub, common) -> None:
    """Add `audit verify` and `audit export` to the parser."""
    a = sub.add_parser("audit", help="verify and read the audit log").add_subparsers(
        dest="audit_cmd", required=True
    )
    sp = a.add_parser(
        "verify",
        help="check the hash chain; prints the head hash to keep off the gate, "
        "e.g. edge-gate audit verify --config /etc/edge-gate/gate.toml",
    )
    common(sp)
    sp.add_argument("--json", action="store_true", help="one JSON object")
    sp.set_defaults(func=cmd_verify)
    sp = a.add_parser(
        "export",
        help="print the records, e.g. edge-gate audit export --since 2026-11-01 --json",
    )
    common(sp)
    sp.add_argument("--since", help="from this time on: YYYY-MM-DD, YYYY-MM-DDTHH:MM or Unix s")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_export)
