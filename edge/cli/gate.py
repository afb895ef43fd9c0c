"""`edge-gate run / demo / doctor`: the daemon, the two-minute tour, and the installer's checklist."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge import config as config_mod


def _printer(quiet: bool):
    return None if quiet else (lambda s: print(s, flush=True))


def cmd_run(args) -> int:
    from edge.gate.daemon import Gate

    cfg = config_mod.load(args.config)
    realtime = True if args.realtime else (False if args.fast else None)
    source, pubkeys = args.source, args.pubkey
    if (source or cfg.camera.source) == "demo":
        from edge.measure.demo import demo_source, demo_state

        for line in demo_state(cfg):
            print(f'camera.source = "demo": {line}', flush=True)
        source, demo_pub = demo_source(Path.cwd() / "var" / "demo-run")
        if not pubkeys and not cfg.tickets.pubkeys:
            pubkeys = [str(demo_pub)]
        print(
            f'camera.source = "demo": replaying the generated ticket clip {source}; '
            "set camera.source to a camera for real use",
            flush=True,
        )
    scanner = None
    if args.scanner == "stdin":
        scanner = sys.stdin
    elif args.scanner:
        from edge.tickets.scanner import evdev_scans

        scanner = evdev_scans(args.scanner)
    gate = Gate(
        cfg,
        source_spec=str(source) if source else None,
        db=args.db,
        key_file=args.key_file,
        pubkeys=pubkeys,
        events=args.events,
        realtime=realtime,
        printer=_printer(args.quiet),
        scanner=scanner,
    )
    return gate.run()


def cmd_demo(args) -> int:
    from edge.gate.daemon import Gate
    from edge.measure.demo import prepare

    fixtures = config_mod.fixtures_dir()
    fx = fixtures if (fixtures / "MANIFEST.tsv").is_file() else None
    work = Path(args.workdir) if args.workdir else Path.cwd() / "var" / "demo"
    cfg_path, scenes = prepare(work, fx)
    cfg = config_mod.load(cfg_path)
    print(f"edge-gate demo: workspace {work} (mock relay, nothing leaves this machine)")
    if fx is None:
        print(f"  shared fixtures not found at {fixtures}: showing the generated ticket clip only")
    else:
        from edge.measure.demo import enroll_person
        from edge.vision.pipeline import FacePipeline

        pid = enroll_person(
            cfg,
            FacePipeline.from_config(cfg),
            "Lin-Manuel Miranda",
            [fx / "faces" / "lin_manuel_miranda" / "lin-manuel-miranda.png"],
        )
        print(f"  enrolled Lin-Manuel Miranda as {pid} (from one photo; the photo is not stored)")
    totals = {"grant": 0, "deny": 0}
    for scene in scenes:
        print(f"\n== {scene.title}\n   clip: {scene.clip}")
        seen = []

        def show(line, seen=seen):
            print("   " + line, flush=True)
            seen.append(line)

        gate = Gate(
            cfg,
            source_spec=str(scene.clip),
            realtime=not args.fast,
            printer=show,
            events=str(work / "events.jsonl"),
        )
        gate.run()
        pin = gate.relay.pin
        opened = (
            sum(1 for s in pin.states if s.state) if hasattr(pin, "states") else gate.relay.pulses
        )
        print(
            f"   -> {gate.frames} frames, relay opened {opened} time(s), relay now {'OPEN' if gate.relay.is_open else 'closed'}"
        )
    for line in (work / "events.jsonl").read_text().splitlines():
        totals[json.loads(line)["decision"]] += 1
    print(
        f"\n{totals['grant']} grants, {totals['deny']} refusals. Events: {work / 'events.jsonl'}; "
        f"audit log: {work / 'audit.db'}."
    )
    return 0


def cmd_doctor(args) -> int:
    from edge.gate.doctor import Site, run_checks

    cfg = config_mod.load(args.config)
    db = Path(args.db) if args.db else cfg.resolve(cfg.gallery.db)
    key = Path(args.key_file) if args.key_file else cfg.resolve(cfg.gallery.key_file)
    results = run_checks(Site(cfg, db, key))
    if args.json:
        print(json.dumps([c.as_dict() for c in results]))
    else:
        for c in results:
            fix = f" (fix: {c.fix})" if c.fix else ""
            print(f"[{c.status.upper():>4}] {c.check:<18} {c.detail}{fix}")
    return 1 if any(c.status == "fail" for c in results) else 0


def register(sub, common) -> None:
    sp = sub.add_parser("run", help="run the gate (systemd runs this)")
    common(sp)
    sp.add_argument(
        "--source", help="video file, /dev/videoN, N, or picamera2 (default camera.source)"
    )
    sp.add_argument("--db")
    sp.add_argument("--key-file")
    sp.add_argument(
        "--pubkey", action="append", help="issuer.pub (repeatable; default tickets.pubkeys)"
    )
    sp.add_argument("--events", help="append one JSON line per decision to this file")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--realtime", action="store_true", help="replay a file at its recorded rate")
    g.add_argument("--fast", action="store_true", help="replay a file as fast as possible")
    sp.add_argument("--scanner", help="USB barcode scanner: 'stdin' or an evdev device path")
    sp.add_argument("--quiet", action="store_true", help="do not print decisions")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("demo", help="run the gate on recorded clips with a simulated relay")
    sp.add_argument("--fast", action="store_true", help="do not wait for real time")
    sp.add_argument("--workdir", help="demo workspace (default var/demo)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("doctor", help="check camera, models, keys, database, GPIO and clock")
    common(sp)
    sp.add_argument("--db")
    sp.add_argument("--key-file")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_doctor)
