"""`edge-gate console` (the office's staff web app, its users) and `edge-gate screen` (a lane's
visitor screen): thin parsers; the apps live in edge/console and edge/screen."""

from __future__ import annotations

import argparse
import getpass
import sys

from edge import config as config_mod
from edge.console.roles import LANGS, ROLES
from edge.errors import EdgeGateError


def cmd_console(args) -> int:
    """`console`: serve the staff web app until SIGTERM (localhost unless told otherwise)."""
    # the web stack (the console extra, absent on a lane) loads only for `console`
    import uvicorn

    from edge.console.app import build_app
    from edge.console.serve import server_config
    from edge.screen.server import bind_listen, parse_listen

    cfg = config_mod.load(args.config)
    host, port = parse_listen(args.listen or cfg.console.listen)
    sock = bind_listen("console.listen", host, port)  # a taken port: one line, before the app
    if not cfg.console.consent_version:
        print(
            "edge-gate: note: console.consent_version is empty: the kiosk refuses enrollment",
            file=sys.stderr,
        )
    server = uvicorn.Server(server_config(build_app(cfg), cfg, host, port))  # capped
    print(f"edge-gate console on http://{host}:{port}/ (site {cfg.fleet.site or cfg.gate.id})")
    server.run(sockets=[sock])
    return 0


def read_password(stdin: bool) -> str:
    """The new password from the terminal (asked twice) or, with --password-stdin, one line."""
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise EdgeGateError("the two passwords differ", "run the command again")
    return first


def cmd_adduser(args) -> int:
    """`console adduser NAME --role R`: a staff account with an argon2id password hash."""
    # argon2 (the console extra, absent on a lane) loads only for `console adduser`
    from edge.console.users import UserStore

    cfg = config_mod.load(getattr(args, "config", None))
    store = UserStore(cfg.resolve(cfg.console.users_db))
    try:
        user = store.add(args.name, args.role, read_password(args.password_stdin), args.lang)
    finally:
        store.close()
    print(f"added {user.name} ({user.role}, {user.lang}) to {cfg.resolve(cfg.console.users_db)}")
    return 0


def cmd_screen(args) -> int:
    """`screen`: the visitor screen of this lane, fed by the gate's notice socket."""
    # http.server loads only for `screen`
    from edge.screen.server import run_screen

    cfg = config_mod.load(args.config)
    return run_screen(cfg, listen=args.listen, kiosk=args.kiosk, browser=args.browser)


def register(sub, common) -> None:
    """Add `console [adduser]` and `screen` to the parser."""
    sp = sub.add_parser(
        "console", help="the office's staff web app (lanes, decisions, enrollment, tickets, audit)"
    )
    common(sp)
    sp.add_argument("--listen", help="host:port (default console.listen, 127.0.0.1:8088)")
    sp.set_defaults(func=cmd_console)
    c = sp.add_subparsers(dest="console_cmd")
    au = c.add_parser("adduser", help="create a staff account (the password is asked for)")
    au.add_argument("name", help="the staff member's login name")
    au.add_argument(
        "--role",
        required=True,
        choices=ROLES,
        help="steward, supervisor or admin (what they may do)",
    )
    au.add_argument("--lang", default="en", choices=LANGS, help="the user's language")
    au.add_argument(
        "--password-stdin", action="store_true", help="read the password as one line on stdin"
    )
    au.add_argument(
        "--config", type=common_type(sp), default=argparse.SUPPRESS, help="the office gate.toml"
    )
    au.set_defaults(func=cmd_adduser)

    sp = sub.add_parser("screen", help="this lane's visitor screen (reads the gate's notices)")
    common(sp)
    sp.add_argument("--listen", help="host:port of the page (default screen.listen)")
    sp.add_argument(
        "--kiosk", action="store_true", help="also start the browser full-screen on this display"
    )
    sp.add_argument("--browser", default="chromium", help="browser for --kiosk (default chromium)")
    sp.set_defaults(func=cmd_screen)


def common_type(parser: argparse.ArgumentParser):
    """The type of the parser's --config (an existing file), reused by a subcommand's copy."""
    for a in parser._actions:
        if a.dest == "config":
            return a.type
    return str
