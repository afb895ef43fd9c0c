"""`edge-gate sync` and `edge-gate fleet …`: a member's link to the park, and the office's view.

No command here connects to the broker: with the client id bound to the login, a second
connection would take over the member's sync session. Office commands sign and queue for the
office's sync; status and audit read what the member's sync stored.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from edge import config as config_mod
from edge.cli.paths import file_path, nonempty_file, output_dir
from edge.errors import EdgeGateError
from edge.fleet.brokerconf import BrokerOptions, write_site_broker
from edge.fleet.identity import (
    OFFICE,
    ensure_lane_key,
    load_lane_key,
    public_text,
    read_roster_file,
)
from edge.timeutil import iso, parse_time


def cmd_sync(args) -> int:
    """`sync`: the member's link to the broker that systemd keeps running beside the gate."""
    # MQTT (paho) and the office library load only for `sync`
    from edge.fleet.office import need_fleet
    from edge.fleet.sync import Sync

    cfg = config_mod.load(args.config)
    need_fleet(cfg)
    return Sync(cfg).run()


def report_sent(cfg: config_mod.Config, what: str, wait_s: float = 10.0) -> None:
    """Say whether the office's sync has sent what was just queued (bounded wait)."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge.fleet.office import wait_all_sent

    sent = wait_all_sent(cfg, what, wait_s)
    if sent is None:
        print(
            f"queued {what}, signed; whether the office's `edge-gate sync` has sent it cannot "
            "be read now: do not queue it again, see `edge-gate fleet status`"
        )
    elif sent:
        print(f"published {what} to the fleet, signed")
    else:
        print(
            f"queued {what}, signed: the office's `edge-gate sync` sends it when it runs "
            "(systemctl status edge-gate-sync)"
        )


def _seconds(x: object) -> str:
    """A lane's clock offset as status prints it: '+0.4 s', or '?' for none or no number."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return "?"
    return f"{x:+.1f} s"


def _when(t: object) -> str:
    """A record's time as `fleet audit` prints it; a time no calendar holds (a lane's clock
    years off, or junk) is printed as the number it is, never a crash."""
    try:
        return iso(t) or "-"  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return str(t)[:40]


def _pretix_seen(px: dict) -> str:
    """A lane's pretix data in one word or two: its age and uploads waiting."""
    age = "missing" if px["age_s"] is None else f"{px['age_s']:.0f} s old"
    return f"{age}, {px.get('upload_pending') or 0} to upload" + (
        ", pull failing" if px.get("pull_failing") else ""
    )


def cmd_status(args) -> int:
    """`fleet status`: which members are alive, stale or gone, whose clock is off, who acked."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge.fleet.office import fleet_status, status_problems

    cfg = config_mod.load(args.config)
    rep = fleet_status(cfg)
    if cfg.pretix.enabled and rep.get("this_lane") is not None:  # the lane's pretix data
        # pretix's offline rules load only for a lane that takes pretix tickets
        from edge.tickets.pretix_desk import lane_status

        rep["this_lane"]["pretix"] = lane_status(cfg, time.time())
    problems = status_problems(rep)
    if args.json:
        print(json.dumps({**rep, "problems": problems}))
    else:
        sync = rep["sync"]
        print(
            f"site {rep['site']} ({rep['member']}): {len(rep['roster'])} in the roster; "
            f"sync {'connected' if sync['connected'] else 'NOT connected'}, "
            f"last ran {sync['last_seen']}"
        )
        for lane, v in sorted(rep["lanes"].items()):
            off = v.get("clock_offset")
            flags = []
            if v["state"] == "stale" and not sync.get("hearing", True):
                flags.append("NOT HEARD (this member hears nothing)")
            elif v["state"] != "ok":
                flags.append(v["state"].upper() + (f" ({v['gone']})" if v.get("gone") else ""))
            if v.get("clock_off"):
                flags.append("CLOCK OFF")
            if not v["rostered"]:
                flags.append("NOT IN ROSTER")
            if v.get("broker_acl") == "outdated":
                flags.append("BROKER ACL OUTDATED")
            if v.get("behind_office") is True:
                flags.append("NO TICKETS: BEHIND THE OFFICE")
            px = v.get("pretix")
            if px and px["stale"]:
                flags.append("PRETIX DATA " + ("MISSING" if px["age_s"] is None else "STALE"))
            clock = _seconds(off)
            shown = {k: "-" if v.get(k) is None else v[k] for k in ("mode", "camera", "fps")}
            print(
                f"  {lane:<12} heartbeat {v['last_seen']:<11} mode {shown['mode']}  "
                f"camera {shown['camera']}  fps {shown['fps']}  "
                f"outbox {'-' if v.get('outbox') is None else v['outbox']}  clock {clock}"
                + (f"  pretix {_pretix_seen(px)}" if px else "")
                + (f"  {' '.join(flags)}" if flags else "")
            )
        if rep["clock"]["off"]:
            print(f"  clock off from the fleet's: {', '.join(rep['clock']['off'])}")
        this = rep.get("this_lane")
        if this:
            off = this["clock_offset"]
            skew = cfg.fleet.max_clock_offset_s
            print(
                f"  this lane {this['lane']}: clock {'?' if off is None else f'{off:+.1f} s'}"
                + ("  CLOCK OFF" if off is not None and abs(off) > skew else "")
                + f", outbox {this['outbox']}"
                + (f", NO FACE GRANTS: {this['forget_replay']}" if this["forget_replay"] else "")
                + (f", NO TICKETS: {this['behind_office']}" if this.get("behind_office") else "")
                + (", BROKER ACL OUTDATED" if this.get("broker_acl") == "outdated" else "")
            )
        px = (rep.get("this_lane") or {}).get("pretix")
        if px:
            age = f"{px['age_s']:.0f} s old" if px["age_s"] is not None else "missing"
            print(f"  pretix data {age}, {px['upload_pending']} check-in(s) waiting for upload")
        for pid, p in sorted(rep["people"].items()):
            print(f"  {pid}: {p['summary']}")
    if args.check and problems:
        for p in problems:
            print(f"edge-gate: fleet: {p}", file=sys.stderr)
        return 1
    return 0


def cmd_audit(args) -> int:
    """`fleet audit`: every lane's audit records received at the office; `verify` checks them."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge.fleet.office import fleet_audit, fleet_audit_verify

    cfg = config_mod.load(args.config)
    if args.action == "verify":
        found = fleet_audit_verify(cfg)
        broken = False
        for lane, findings in found.items():
            bad = [f for f in findings if f.broken]
            broken |= bool(bad)
            if args.json:
                print(
                    json.dumps(
                        {
                            "lane": lane,
                            "ok": not bad,
                            "broken": [f.text for f in bad],
                            "notes": [f.text for f in findings if not f.broken],
                        }
                    )
                )
                continue
            print(f"{lane}: {'BROKEN' if bad else 'ok'}")
            for f in findings:
                print(f"  {'BROKEN: ' if f.broken else ''}{f.text}")
        return 1 if broken else 0
    since = parse_time(args.since, cfg.gate.zone) if args.since else -math.inf
    for r in fleet_audit(cfg, since):
        if args.json:
            print(json.dumps(r))
        else:
            fields = " ".join(
                f"{k}={v}" for k, v in r.items() if k not in ("t", "lane", "seq", "gate", "epoch")
            )
            print(f"{_when(r.get('t'))} {r['lane']:<10} {fields}")
    return 0


def cmd_publish_keys(args) -> int:
    """`fleet publish-keys`: roll new ticket keys out to every lane, signed by the office."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge.fleet.office import publish_keys

    cfg = config_mod.load(args.config)
    publish_keys(cfg, Path(args.key), [Path(p) for p in args.pubkeys])
    report_sent(cfg, f"{len(args.pubkeys)} ticket key(s)")
    return 0


def cmd_join(args) -> int:
    """`fleet join`: this member's signing key (made if absent), for the office's roster."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge.fleet.office import need_fleet

    cfg = config_mod.load(args.config)
    need_fleet(cfg)
    path = ensure_lane_key(cfg)
    pub = public_text(load_lane_key(cfg).public_key())
    lane = cfg.fleet.lane
    if args.json:
        print(json.dumps({"lane": lane, "public_key": pub, "key_file": str(path)}))
        return 0
    print(f"lane {lane}: key {path} (0600); public key {pub}")
    if lane == OFFICE:  # the office signs the roster; it is in it from the start
        print("the office's own key: it signs its heartbeats (the roster names it already)")
        return 0
    print(
        "at the office: edge-gate fleet roster add --config office.toml --key issuer.key "
        f"{lane} {pub}"
    )
    return 0


def cmd_roster(args) -> int:
    """`fleet roster add|remove|show|publish`: the office's signed list of lanes and keys."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge.fleet.office import need_office, publish_roster, roster_lanes

    cfg = config_mod.load(args.config)
    need_office(cfg, "fleet roster")
    if args.action == "show":
        lanes = roster_lanes(cfg)
        for lane, pub in sorted(lanes.items()):
            print(f"{lane:<12} {pub}")
        return 0
    if not args.key:
        raise EdgeGateError(f"fleet roster {args.action} needs --key issuer.key", "it is signed")
    add, remove = {}, []
    if args.action == "add":
        lane, pub = args.items
        if Path(pub).is_file():
            pub = Path(pub).read_text().strip()
        add[lane] = pub
    elif args.action == "remove":
        known = read_roster_file(cfg.resolve(cfg.fleet.roster_file))
        missing = [x for x in args.items if x not in known]
        if missing:
            raise EdgeGateError(f"not in the roster: {', '.join(missing)}", "fleet roster show")
        remove = list(args.items)
    lanes = publish_roster(cfg, Path(args.key), add, remove)
    print(f"roster: {', '.join(sorted(lanes))}")
    report_sent(cfg, "the roster")
    return 0


def cmd_broker_config(args) -> int:
    """`fleet broker-config`: Mosquitto config, ACLs and per-lane logins for the roster."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge.fleet.office import roster_lanes

    cfg = config_mod.load(args.config)
    lanes = sorted(roster_lanes(cfg))
    out = Path(args.out)
    opts = BrokerOptions(
        port=args.port or 0,
        bind=args.bind or "",
        tls_cert=str(args.tls_cert or ""),
        tls_key=str(args.tls_key or ""),
        tls_ca=str(args.tls_ca or ""),
        persistence_dir=args.persistence_dir,
        password_file=str((out / "passwd").resolve()),
        acl_file=str((out / "acl").resolve()),
    )
    write_site_broker(out, cfg.fleet.site, lanes, opts)
    print(f"wrote {out}/mosquitto.conf, acl, passwd for {', '.join(lanes)}")
    print(f"give each member its {out}/credentials/<name>.cred (0600) as fleet.credentials_file")
    return 0


def _port(text: str) -> int:
    """A TCP port for mosquitto.conf's listener."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a port (1-65535)")
    return port


def _conf_word(text: str) -> str:
    """An address or folder for one mosquitto.conf line: a space or a newline in it would end
    the value, or add a line of its own."""
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r}: one word, without spaces or control characters"
        )
    return text


def publish_args(sp) -> None:
    """`--publish --issuer-key K` for the office's enroll and forget."""
    sp.add_argument(
        "--publish", action="store_true", help="office: send to every lane of the fleet"
    )
    sp.add_argument(
        "--issuer-key", type=nonempty_file, help="with --publish: issuer.key that signs the message"
    )


def _issuer_key(args) -> Path:
    if not args.issuer_key:
        raise EdgeGateError(
            "--publish needs --issuer-key issuer.key", "the office signs what it sends"
        )
    return Path(args.issuer_key)


def publish_enrollment(args, cfg: config_mod.Config, db: Path, key: Path, pid: str) -> None:
    """`enroll --publish`: the person, sealed for the site, to every lane."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge.fleet.office import publish_enrollment as publish

    publish(cfg, _issuer_key(args), db, key, pid)
    report_sent(cfg, f"{pid}, sealed for site {cfg.fleet.site},")


def check_publish(args, cfg: config_mod.Config, what: str) -> None:
    """Before `forget --publish` erases anything: this is the office and its issuer key loads,
    so a local erasure is never left with its audit record or the lanes' deletion missing."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge import tickets as tk
    from edge.fleet.office import need_office

    need_office(cfg, what)
    tk.load_private(_issuer_key(args))


def publish_deletion(args, cfg: config_mod.Config) -> None:
    """`forget --publish`: every lane erases the person and acknowledges it."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge.fleet.office import publish_person

    publish_person(cfg, _issuer_key(args), args.person_id, "forget")
    report_sent(cfg, f"the deletion of {args.person_id} (see edge-gate fleet status)")


def cmd_override(args) -> int:
    """`fleet override`: open one lane's turnstile once (a supervisor's decision), signed."""
    # the office library loads only for the office's commands (edge/cli/__init__.py)
    from edge.fleet.office import publish_override
    from edge.gate.audit import open_audit

    cfg = config_mod.load(args.config)
    with open_audit(cfg, "use") as audit:  # recorded before it is sent (publish_override)
        _, oid = publish_override(
            cfg,
            Path(args.key),
            args.lane,
            args.reason,
            args.by,
            args.valid_s,
            record=audit.record,
        )
    report_sent(cfg, f"override {oid} for {args.lane} (valid {args.valid_s:.0f} s)", args.valid_s)
    return 0


def register(sub, common) -> None:
    """Add `sync` and `fleet status|audit|publish-keys|join|roster|broker-config`."""
    sp = sub.add_parser("sync", help="move this lane's records to and from the fleet's broker")
    common(sp)
    sp.set_defaults(func=cmd_sync)

    f = sub.add_parser("fleet", help="the park's lanes over MQTT").add_subparsers(
        dest="fleet_cmd", required=True
    )
    sp = f.add_parser("status", help="lanes, heartbeats, clock, and enrollment/deletion acks")
    sp.add_argument("--json", action="store_true")
    sp.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a rostered lane is stale, gone or never heard, or a clock is off",
    )
    common(sp)
    sp.set_defaults(func=cmd_status)

    sp = f.add_parser("audit", help="office: every lane's audit records; `verify` checks them")
    sp.add_argument(
        "action",
        nargs="?",
        choices=("verify",),
        help="verify: check each lane's records received against the heads it signed",
    )
    sp.add_argument("--since", help="ISO date/time or Unix seconds")
    sp.add_argument("--json", action="store_true")
    common(sp)
    sp.set_defaults(func=cmd_audit)

    sp = f.add_parser("publish-keys", help="office: send ticket public keys to every lane, signed")
    sp.add_argument(
        "--key", required=True, type=nonempty_file, help="issuer.key that signs the message"
    )
    sp.add_argument(
        "pubkeys", nargs="+", type=nonempty_file, help="issuer.pub file(s) the lanes should accept"
    )
    common(sp)
    sp.set_defaults(func=cmd_publish_keys)

    sp = f.add_parser("override", help="office: open one lane's turnstile once, signed")
    sp.add_argument("lane", help="the lane to open (a name from `fleet status`)")
    sp.add_argument("--reason", required=True, help="why (kept in both audit logs)")
    sp.add_argument("--by", required=True, help="the supervisor's name (kept in both audit logs)")
    sp.add_argument(
        "--key", required=True, type=nonempty_file, help="issuer.key that signs the message"
    )
    sp.add_argument(
        "--valid-s",
        type=float,
        default=30.0,
        help="the lane refuses it after this many seconds (at most 120; default 30)",
    )
    common(sp)
    sp.set_defaults(func=cmd_override)

    sp = f.add_parser("join", help="make this lane's signing key; print it for the roster")
    sp.add_argument("--json", action="store_true")
    common(sp)
    sp.set_defaults(func=cmd_join)

    rs = f.add_parser(
        "roster", help="office: the signed list of lanes and their keys"
    ).add_subparsers(dest="action", required=True)
    # one parser per action: a list of lanes after the flags (`add --config C --key K LANE
    # KEY`, as `fleet join` prints it) is read whole, never as "no lanes" then stray words
    for action, what in (
        ("add", "add a lane with the public key `fleet join` printed (signed)"),
        ("remove", "take lanes out (signed)"),
        ("show", "the roster's lanes and keys"),
        ("publish", "publish the roster again (signed)"),
    ):
        sp = rs.add_parser(action, help=what)
        if action == "add":
            sp.add_argument(
                "items",
                nargs=2,
                metavar=("LANE", "PUBLIC_KEY"),
                help="the lane and its key (or its file)",
            )
        elif action == "remove":
            sp.add_argument("items", nargs="+", metavar="LANE", help="lanes to take out")
        else:
            sp.set_defaults(items=[])
        sp.add_argument("--key", type=nonempty_file, help="issuer.key that signs the roster")
        common(sp)
        sp.set_defaults(func=cmd_roster)

    sp = f.add_parser(
        "broker-config", help="office: mosquitto.conf, ACLs and a login per rostered lane"
    )
    sp.add_argument(
        "--out", required=True, type=output_dir, help="folder for mosquitto.conf, acl, passwd"
    )
    sp.add_argument("--port", type=_port, help="default 8883 with TLS, else 1883")
    sp.add_argument("--bind", type=_conf_word, help="listen on this address only")
    sp.add_argument(
        "--tls-cert", type=file_path, help="server certificate (PEM) on the broker: TLS on"
    )
    sp.add_argument("--tls-key", type=file_path, help="its private key, on the broker")
    sp.add_argument(
        "--tls-ca", type=file_path, help="CA bundle for clients' certificates (optional)"
    )
    sp.add_argument(
        "--persistence-dir",
        type=_conf_word,
        default="/var/lib/mosquitto/",
        help="the broker's own folder for its sessions (on the broker's machine)",
    )
    common(sp)
    sp.set_defaults(func=cmd_broker_config)
