"""`edge-gate pretix sync`: the lane's link to its pretix shop (its own process, like `sync`)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from edge import __version__
from edge import config as config_mod
from edge.errors import ConfigError, EdgeGateError
from edge.files import make_private_dirs
from edge.keyfiles import write_secret


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
            "check-in(s), "
            + (f"{pending} waiting" if pending is not None else "none counted (no ledger read)")
        )
    return 0 if ok else 1


def _check_writable(path: Path) -> None:
    """Create and remove a file beside `path`: a folder the command may not write to is said
    before pretix hands out a token that exists only once."""
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        make_private_dirs(path.parent)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"cannot write the pretix token file {path}: {e.strerror}",
            "run as the user that may write that folder (sudo -u edge-gate …), or point "
            "[pretix] token_file elsewhere",
        ) from None


def cmd_init_device(args) -> int:
    """`pretix init-device`: turn a device created in pretix into this lane's device token."""
    # the shop's HTTP client (urllib, ssl) loads only for the pretix commands
    from edge.pretix.api import initialize_device

    cfg = config_mod.load(args.config)
    px = cfg.pretix
    if not px.url or not px.token_file:
        raise ConfigError(
            "pretix init-device needs [pretix] url and token_file", f"set both in {cfg.source_file}"
        )
    if px.auth != "device":
        raise ConfigError(
            '[pretix] auth is not "device": the device token would be sent as a team token',
            f'set auth = "device" in [pretix] of {cfg.source_file}',
        )
    token_file = cfg.resolve(px.token_file)
    if Path(token_file).exists():  # before the one-time token is spent
        raise ConfigError(
            f"pretix token file {token_file} already exists",
            "move it away first (the lane keeps using it until then)",
        )
    init = (sys.stdin.readline() if args.init_token == "-" else args.init_token).strip()
    if not init:
        raise ConfigError("no initialisation token given", "pretix shows it when a device is made")
    _check_writable(Path(token_file))  # before the one-time token is spent
    dev = initialize_device(px.url, init, __version__, px.tls_ca_file)
    try:
        write_secret(token_file, dev["api_token"] + "\n", "move it away first")
    except (OSError, EdgeGateError) as e:  # the token exists once: never lose it
        print(dev["api_token"])
        raise ConfigError(
            f"the device token could not be written to {token_file}: {e}; it is printed above",
            "save it there yourself (one line, mode 0600, owned by the gate's user)",
        ) from None
    org, profile = dev.get("organizer"), dev.get("security_profile")
    print(
        f"pretix device {dev.get('device_id')} ({dev.get('name')}) of {org}: token written to "
        f"{token_file} (0600); security profile {profile}"
    )
    if profile != "pretixscan":
        print(
            f"edge-gate: note: the device's security profile is {profile!r}; pretixSCAN's "
            "('pretixscan') is all a lane needs",
            file=sys.stderr,
        )
    if org != px.organizer:
        print(
            f"edge-gate: the device belongs to organizer {org!r}, [pretix] organizer is "
            f'{px.organizer!r}: set organizer = "{org}"',
            file=sys.stderr,
        )
        return 1
    return 0


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
    sp = px.add_parser(
        "init-device",
        help="connect this lane as a pretix device (pretix: Organizer → Devices → Connect a "
        "device) and write its device token to [pretix] token_file",
    )
    common(sp)
    sp.add_argument(
        "--init-token",
        required=True,
        metavar="TOKEN",
        help="the device's one-time initialisation token ('-' reads it from standard input)",
    )
    sp.set_defaults(func=cmd_init_device)
