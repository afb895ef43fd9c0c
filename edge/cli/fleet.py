"""`edge-gate sync` and `edge-gate fleet …`: the lane's link to the park, and the office's view."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge import config as config_mod
from edge.cli.paths import nonempty_file
from edge.errors import EdgeGateError
from edge.timeutil import iso, parse_time


def cmd_sync(args) -> int:
    """`sync`: the lane-office link that systemd keeps running beside the gate."""
    from edge.fleet.office import need_fleet
    from edge.fleet.sync import Sync

    cfg = config_mod.load(args.config)
    need_fleet(cfg)
    return Sync(cfg).run()


def cmd_status(args) -> int:
    """`fleet status`: one screen showing which lanes are alive, in sync and on time."""
    from edge.fleet.office import fleet_status
    from edge.fleet.state import FleetState

    cfg = config_mod.load(args.config)
    rep = fleet_status(cfg)
    if cfg.fleet.lane != "office":  # a lane: its own link, as its sync last wrote it
        st = FleetState(cfg.resolve(cfg.fleet.state_db))
        rep["this_lane"] = {
            "lane": cfg.fleet.lane,
            "connected": st.get("connected"),
            "last_contact": st.get("last_contact"),
            "clock_offset": st.get("clock_offset"),
            "outbox": st.get("outbox"),
        }
        st.close()
        if cfg.pretix.enabled:  # how old this lane's pretix data is, what waits for upload
            from edge.tickets.pretix_desk import lane_status

            rep["this_lane"]["pretix"] = lane_status(cfg, time.time())
    if args.json:
        print(json.dumps(rep))
        return 0
    print(f"site {rep['site']}: {len(rep['lanes'])} lane(s)")
    for lane, hb in sorted(rep["lanes"].items()):
        off = hb.get("clock_offset")
        skew = "" if off is None or abs(off) <= cfg.fleet.clock_skew_s else "  CLOCK OFF"
        print(
            f"  {lane:<12} heartbeat {hb['age_s']:>6.1f} s ago  mode {hb.get('mode')}  "
            f"camera {hb.get('camera')}  fps {hb.get('fps')}  outbox {hb.get('outbox')}  "
            f"clock {off if off is not None else '?'} s{skew}"
        )
    for pid, p in sorted(rep["people"].items()):
        print(f"  {pid}: {p['summary']}")
    px = rep.get("this_lane", {}).get("pretix")
    if px:
        age = f"{px['age_s']:.0f} s old" if px["age_s"] is not None else "missing"
        print(f"  pretix data {age}, {px['upload_pending']} check-in(s) waiting for upload")
    return 0


def cmd_audit(args) -> int:
    """`fleet audit`: the whole site's audit records in one stream, for the office."""
    from edge.fleet.office import fleet_audit

    cfg = config_mod.load(args.config)
    since = parse_time(args.since) if args.since else 0.0
    rows = fleet_audit(cfg, since)
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            fields = " ".join(
                f"{k}={v}" for k, v in r.items() if k not in ("t", "lane", "seq", "gate")
            )
            print(f"{iso(r.get('t', 0))} {r['lane']:<10} {fields}")
    return 0


def cmd_publish_keys(args) -> int:
    """`fleet publish-keys`: roll new ticket keys out to every lane, signed by the office."""
    from edge.fleet.office import publish_keys

    cfg = config_mod.load(args.config)
    publish_keys(cfg, Path(args.key), [Path(p) for p in args.pubkeys])
    print(f"published {len(args.pubkeys)} ticket key(s) to the fleet, signed; {time.ctime()}")
    return 0


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
    from edge.fleet.office import publish_enrollment as publish

    publish(cfg, _issuer_key(args), db, key, pid)
    print(f"published {pid} to the fleet, sealed for site {cfg.fleet.site}")


def publish_deletion(args, cfg: config_mod.Config) -> None:
    """`forget --publish`: every lane erases the person and acknowledges it."""
    from edge.fleet.office import publish_person

    publish_person(cfg, _issuer_key(args), args.person_id, "forget")
    print(f"published the deletion of {args.person_id}; see edge-gate fleet status")


def register(sub, common) -> None:
    """Add `sync` and `fleet status|audit|publish-keys` to the parser."""
    sp = sub.add_parser("sync", help="move this lane's records to and from the fleet's broker")
    common(sp)
    sp.set_defaults(func=cmd_sync)

    f = sub.add_parser("fleet", help="the park's lanes over MQTT").add_subparsers(
        dest="fleet_cmd", required=True
    )
    sp = f.add_parser("status", help="lanes, heartbeats, clock, and enrollment/deletion acks")
    sp.add_argument("--json", action="store_true")
    common(sp)
    sp.set_defaults(func=cmd_status)

    sp = f.add_parser("audit", help="every lane's audit records, from the broker")
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
