"""`edge-gate run / demo / doctor`: the daemon, the two-minute tour, and the installer's checklist."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from pathlib import Path

from edge import config as config_mod
from edge.errors import EdgeGateError


def _printer(quiet: bool):
    return None if quiet else (lambda s: print(s, flush=True))


def cmd_run(args) -> int:
    from edge.gate.daemon import Gate

    cfg = config_mod.load(args.config)
    realtime = True if args.realtime else (False if args.fast else None)
    source, pubkeys = args.source, args.pubkey
    if (source or cfg.camera.source) == "demo":
        from edge.measure.demo import demo_source

        source, demo_pub = demo_source(config_mod.PROJECT_ROOT / "var" / "demo-run")
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
    work = Path(args.workdir) if args.workdir else config_mod.PROJECT_ROOT / "var" / "demo"
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


# --- doctor --------------------------------------------------------------------------------------


def doctor_checks(cfg: config_mod.Config, db: Path, key: Path) -> list[tuple[str, str, str]]:
    """(status, check, detail) with status ok | warn | fail."""
    from edge.vision import runtime
    from edge.vision.models import detector_spec, embedder_spec, load_catalogue, verify_file

    out = []

    def check(name, fn):
        try:
            res = fn()
            out.append(res if isinstance(res, tuple) else ("ok", name, res or ""))
        except EdgeGateError as e:
            out.append(("fail", name, str(e)))
        except Exception as e:
            out.append(("fail", name, f"{type(e).__name__}: {e}"))

    check("config", lambda: f"{cfg.source_file or 'defaults'}; mode {cfg.gate.mode}")
    check(
        "tflite runtime",
        lambda: (
            runtime.RUNTIME
            or (_ for _ in ()).throw(EdgeGateError("none installed", "pip install ai-edge-litert"))
        ),
    )

    def models():
        mdir = config_mod.models_path(cfg)
        cat = load_catalogue(mdir)
        for group in ("detectors", "embedders"):
            for e in cat[group].values():
                verify_file(mdir / e["file"], e["sha256"])
        d, e = detector_spec(mdir, cfg.vision.detector), embedder_spec(mdir, cfg.vision.embedder)
        return f"{len(cat['detectors']) + len(cat['embedders'])} files match models.json; using {d.name} + {e.name} (threshold {e.threshold})"

    check("models (SHA-256)", models)

    def keyfile():
        from edge.gallery.crypto import credential_path, load_key

        k = load_key(key)
        real = credential_path(key)
        mode = oct(stat.S_IMODE(os.stat(real).st_mode))
        return f"{real} mode {mode}, key id {k.kid}"

    check("gallery key file", keyfile)

    def gallery():
        from edge.gallery.crypto import load_key
        from edge.gallery.store import Gallery

        if not db.exists():
            return (
                "warn",
                "gallery database",
                f"{db} does not exist yet (created at first enrollment)",
            )
        g = Gallery(db, load_key(key), create=False)
        s = g.stats()
        ok = g.conn.execute("PRAGMA quick_check").fetchone()[0]
        g.close()
        if ok != "ok":
            return ("fail", "gallery database", f"{db}: integrity {ok}")
        return (
            f"{db}: {s['people']} people, {s['templates']} templates, schema {s['schema_version']}"
        )

    check("gallery database", gallery)

    def ticket_keys():
        from edge import tickets as tk
        from edge.gate.policy import check_non_face_way_in

        keys = [tk.load_public(cfg.resolve(p)) for p in cfg.tickets.pubkeys]
        check_non_face_way_in(cfg.gate.mode, len(keys))
        return f"{len(keys)} issuer public key(s); no private key on the gate"

    check("ticket keys", ticket_keys)

    def camera():
        src = cfg.camera.source
        if src == "demo":
            return (
                "warn",
                "camera",
                'camera.source = "demo": set /dev/video0 or picamera2 on the gate',
            )
        if src == "picamera2":
            import importlib.util

            if importlib.util.find_spec("picamera2") is None:
                raise EdgeGateError("picamera2 is not installed", "pip install 'edge-gate[pi]'")
            return "picamera2 importable"
        from edge.gate.sources import open_source

        s = open_source(src, cfg.camera.width, cfg.camera.height, cfg.camera.fps, realtime=False)
        f = s.read()
        s.close()
        if f is None:
            raise EdgeGateError(
                f"camera {src} opened but gave no frame", "check the cable and lighting"
            )
        return f"{src}: {f.image.shape[1]}x{f.image.shape[0]}"

    check("camera", camera)

    def gpio():
        from edge.gate.relay import make_pin_factory

        f = make_pin_factory(cfg.relay.pin_factory)
        f.close()
        if cfg.relay.pin_factory == "mock":
            return (
                "warn",
                "GPIO",
                'relay.pin_factory = "mock": the relay is simulated (set lgpio on a Pi)',
            )
        return f"{cfg.relay.pin_factory} on BCM {cfg.relay.pin}"

    check("GPIO", gpio)

    def clock():
        now = time.time()
        if now < 1_735_689_600:  # 2025-01-01
            raise EdgeGateError(
                f"the clock says {time.ctime(now)}",
                "set the time (RTC or NTP); ticket validity depends on it",
            )
        return time.strftime("%Y-%m-%d %H:%M:%S %Z")

    check("clock", clock)

    def disk():
        folder = db.parent if db.parent.exists() else Path(".")
        free = shutil.disk_usage(folder).free / 2**20
        if free < 100:
            raise EdgeGateError(
                f"only {free:.0f} MiB free in {folder}",
                "free space: the ledger and audit log must be able to write",
            )
        return f"{free:.0f} MiB free in {folder}"

    check("disk", disk)
    return out


def cmd_doctor(args) -> int:
    cfg = config_mod.load(args.config)
    db = Path(args.db) if args.db else cfg.resolve(cfg.gallery.db)
    key = Path(args.key_file) if args.key_file else cfg.resolve(cfg.gallery.key_file)
    results = doctor_checks(cfg, db, key)
    if args.json:
        print(json.dumps([{"status": s, "check": c, "detail": d} for s, c, d in results]))
    else:
        for s, c, d in results:
            print(f"[{s.upper():>4}] {c:<18} {d}")
    return 1 if any(s == "fail" for s, _, _ in results) else 0


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
