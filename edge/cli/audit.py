"""`edge-gate audit verify | export`: check the hash chain, read the log."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from edge import config as config_mod
from edge.cli.hints import for_this_run
from edge.errors import EdgeGateError, LedgerError
from edge.evidence import key_path, load_key
from edge.gate.audit import AUDIT_BROKEN_FIX, AuditLog
from edge.tickets.ledger import Ledger
from edge.timeutil import iso, parse_time


def _key(cfg):
    """The lane's evidence key if it exists (any problem with it is an error, never a skip)."""
    path = key_path(cfg)
    return load_key(path) if path.exists() else None


def _open(args, maintain: bool = True):
    cfg = config_mod.load(args.config)
    path = cfg.resolve(cfg.audit.path)
    if not path.is_file():
        raise EdgeGateError(f"audit log {path} does not exist", "check audit.path in the config")
    return cfg, AuditLog(path, cfg.audit.retention_days, _key(cfg), maintain)


def _ledger_report(cfg, key) -> dict | None:
    """The ledger's chain, checked with the same key (None when this config has no ledger)."""
    path = cfg.resolve(cfg.tickets.ledger)
    if not path.is_file():
        return None
    try:
        with Ledger(path, key=key, verify=False) as led:
            problem = led.verify()
            n, head = led.head()
            if not problem and key is None and led.kid is not None:
                problem = (
                    f"the ledger is keyed (evidence key {led.kid}) and no evidence key was given"
                )
    except LedgerError as e:
        return {"ok": False, "entries": 0, "head": "", "problem": str(e)}
    return {"ok": not problem, "entries": n, "head": head, "problem": problem}


def cmd_verify(args) -> int:
    """`audit verify`: prove to an inspector that no record was altered, dropped or rolled back,
    in the audit log and in the redemption ledger."""
    cfg, log = _open(args, maintain=False)  # what is not keyed yet is reported, not keyed
    with log:
        rep = log.verify()
        led = _ledger_report(cfg, log.key)
    ok = rep.ok and (led is None or led["ok"])
    if args.json:
        print(json.dumps({**asdict(rep), "ledger": led}))
    else:
        how = "hashed and keyed" if rep.keyed else "hashed, not keyed"
        if rep.ok:
            print(
                f"audit chain intact: {rep.records} records, {rep.removed} removed by purges "
                f"(checkpointed); head {rep.head_id} {rep.head_hash} ({how})"
            )
        else:
            print(f"audit chain BROKEN: {rep.problem}; head {rep.head_id} {rep.head_hash}")
            print(f"  fix: {for_this_run(AUDIT_BROKEN_FIX, args)}")
        if rep.note:
            print(f"note: {rep.note}")
        if led is not None and led["ok"]:
            print(f"ledger chain intact: {led['entries']} entries; head {led['head']}")
        elif led is not None:
            print(f"ledger chain BROKEN: {led['problem']}")
            fix = "`edge-gate ledger recover --config C` (spent tickets stay spent)"
            print(f"  fix: {for_this_run(fix, args)}")
    return 0 if ok else 1


def cmd_adopt(args) -> int:
    """`audit adopt`: after `audit verify` found the log restored, cut short or replaced, and
    the old file was kept: the lane's new records are keyed again, from a record saying so."""
    cfg, log = _open(args)
    if log.key is None:
        log.close()
        raise EdgeGateError(
            "no evidence key for this lane", "run it as the gate's user (or root) with its config"
        )
    with log:
        why = log.adopt(cfg.gate.id, time.time())
    print(f"audit log {log.path} adopted ({why}); the record audit_adopted says so")
    return 0


def cmd_export(args) -> int:
    """`audit export`: hand the records to an auditor as JSON lines or tab-separated rows."""
    cfg, log = _open(args)
    since = parse_time(args.since, cfg.gate.zone) if args.since else None
    with log:
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
    """Add `audit verify`, `audit adopt` and `audit export` to the parser."""
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
        "adopt",
        help="after verify found the log restored, cut short or replaced (keep the old file): "
        "key the lane's new records again, with a record saying so, "
        "e.g. edge-gate audit adopt --config /etc/edge-gate/gate.toml",
    )
    common(sp)
    sp.set_defaults(func=cmd_adopt)
    sp = a.add_parser(
        "export",
        help="print the records, e.g. edge-gate audit export --since 2026-11-01 --json",
    )
    common(sp)
    sp.add_argument("--since", help="from this time on: YYYY-MM-DD, YYYY-MM-DDTHH:MM or Unix s")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_export)
