"""`edge-gate run / demo / doctor`: the daemon, the two-minute tour, the installer's checklist."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from edge import config as config_mod
from edge.cli.hints import for_this_run
from edge.cli.lab import demo_run_config
from edge.cli.paths import file_path, nonempty_file
from edge.errors import EdgeGateError
from edge.gate.notices import JsonLinesSink, Notices
from edge.tickets.scanner import evdev_scans, fd_lines

log = logging.getLogger(__name__)


def with_flags(cfg: config_mod.Config, args) -> config_mod.Config:
    """The command-line flags over the config file, applied once (they survive SIGHUP reloads).

    Paths given on the command line are relative to the working directory, not the config file.
    """

    def path(p: str | None) -> str | None:
        return str(Path(p).resolve()) if p else None

    flag = lambda name: getattr(args, name, None)  # noqa: E731
    realtime = True if flag("realtime") else (False if flag("fast") else None)
    pubkeys = tuple(str(Path(p).resolve()) for p in flag("pubkey")) if flag("pubkey") else None
    source = flag("source")
    if source and os.path.exists(source) and "/dev/" not in source:  # no OSError: long name
        source = path(source)
    return config_mod.override(
        cfg,
        camera={"source": source, "realtime": realtime},
        gallery={"db": path(flag("db")), "key_file": path(flag("key_file"))},
        tickets={"pubkeys": pubkeys},
    )


def _open_scanner(spec: str | None):
    """The --scanner input: stdin's bytes, or an evdev device reader (checked now)."""
    if spec is None:
        return None
    if spec == "stdin":
        return fd_lines(sys.stdin.fileno())  # not sys.stdin: see edge/tickets/scanner.py

    return evdev_scans(spec)  # a missing evdev module or device is an error now, not in a thread


def cmd_run(args) -> int:
    """`edge-gate run`: the daemon systemd runs; exit 2 with one line for a bad setting."""
    # the gate's loop (OpenCV, gpiozero, zxing-cpp) loads only for `run`
    from edge.gate.daemon import Gate, decisions_on_console, format_decision

    cfg = with_flags(config_mod.load(args.config), args)
    if cfg.camera.source == "demo":  # the embedded default: a generated clip from the lab
        cfg = demo_run_config(cfg)
    scanner = _open_scanner(args.scanner)
    with contextlib.ExitStack() as stack:
        stack.enter_context(decisions_on_console(printed=not args.quiet))
        events = stack.enter_context(open_events(args.events)) if args.events else None

        def on_decision(ev: dict) -> None:
            if not args.quiet:  # identifiers go to the console only, never to the journal
                print(format_decision(ev), flush=True)  # first: a full disk must not hide it
            if events is not None:
                events.write(json.dumps(ev) + "\n")
                events.flush()

        notices = Notices([JsonLinesSink(events)] if events is not None else [])
        gate = stack.enter_context(Gate(cfg, on_decision, scanner=scanner, notices=notices))
        if gate.degraded and not args.quiet:
            print(f"DEGRADED: {for_this_run(gate.degraded, args)}", flush=True)
        if gate.ledger.problem and not args.quiet:
            problem = for_this_run(gate.ledger.problem, args)
            print(f"LEDGER ERROR, every ticket is refused: {problem}", flush=True)
        return gate.run()


@contextlib.contextmanager
def open_events(path: str) -> Iterator[TextIO]:
    """The --events file, appended to; a directory or unwritable path is a one-line error.
    A new file is made 0600 whatever the umask: its lines name the ticket and pseudonymous ids
    of every decision. An existing file keeps its mode (the operator's).

    Lines that a full disk kept from the file are logged when it closes, never raised: the
    gate has stopped by then, and its exit status is not the file's.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        f = os.fdopen(fd, "a", encoding="utf-8")
    except OSError as e:
        raise EdgeGateError(
            f"--events {path} cannot be opened for writing: {e.strerror}",
            "give a writable file path",
        ) from None
    try:
        yield f
    finally:
        try:
            f.close()
        except OSError as e:
            log.error("--events %s: its last lines could not be written: %s", path, e.strerror)


def cmd_doctor(args) -> int:
    """`edge-gate doctor`: the checks `run` makes at start, and the installer's checklist."""
    # the checklist and what it checks load only for `doctor`
    from edge.gate.doctor import doctor_checks

    results = doctor_checks(with_flags(config_mod.load(args.config), args))
    if args.json:
        print(json.dumps([c.as_dict() for c in results]))
    else:
        for c in results:
            fix = f" (fix: {c.fix})" if c.fix else ""
            line = f"[{c.status.upper():>4}] {c.check:<18} {c.detail}{fix}"
            print(for_this_run(line, args))
    return 1 if any(c.status == "fail" for c in results) else 0


def register(sub, common) -> None:
    """Add the gate commands (run, demo, doctor) to the CLI."""
    sp = sub.add_parser("run", help="run the gate (systemd runs this)")
    common(sp)
    sp.add_argument(
        "--source", help="video file, /dev/videoN, N, or picamera2 (default camera.source)"
    )
    sp.add_argument("--db", type=file_path, help="gallery database (default: the config's)")
    sp.add_argument("--key-file", type=nonempty_file, help="gallery key (default: the config's)")
    sp.add_argument(
        "--pubkey",
        action="append",
        type=nonempty_file,
        help="issuer.pub (repeatable; default tickets.pubkeys)",
    )
    sp.add_argument(
        "--events",
        type=file_path,
        help="append one JSON line per decision and per visitor notice to this file",
    )
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--realtime", action="store_true", help="replay a file at its recorded rate")
    g.add_argument("--fast", action="store_true", help="replay a file as fast as possible")
    sp.add_argument("--scanner", help="USB barcode scanner: 'stdin' or an evdev device path")
    sp.add_argument("--quiet", action="store_true", help="do not print decisions")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("doctor", help="check camera, models, keys, database, GPIO and clock")
    common(sp)
    sp.add_argument("--db", type=file_path, help="gallery database (default: the config's)")
    sp.add_argument("--key-file", type=file_path, help="gallery key (default: the config's)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_doctor)
