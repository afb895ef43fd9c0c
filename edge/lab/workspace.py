"""Lane and office folders for a fleet on one machine (demo, benchmark, tests): config files,
broker credentials (0600), a lane key, an initialised ledger and an empty revocation list; and
the office's roster naming every lane's key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import config as config_mod
from edge.config import PROJECT_ROOT
from edge.fleet.identity import ensure_lane_key, load_lane_key, public_text
from edge.fleet.office import publish_roster
from edge.tickets.ledger import init_ledger


@dataclass(frozen=True)
class Member:
    """One lane or office folder of a one-machine fleet, and its config file."""

    name: str
    dir: Path
    config: Path


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_member(
    root: Path,
    name: str,
    broker: str,
    site: str,
    issuer_pub: Path,
    password: str | None = None,
    site_key: Path | None = None,
    fleet: dict[str, Any] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
) -> Member:
    """ROOT/NAME/gate.toml for a ticket-only lane (or the office, name "office") in `site`."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    fl: dict[str, Any] = {
        "broker": broker,
        "site": site,
        "lane": name,
        "state_db": "fleet.db",
        "keys_dir": "fleet-keys",
    }
    if password is not None:
        cred = d / "mqtt.cred"
        fd = os.open(cred, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{name}:{password}\n")
        fl["credentials_file"] = "mqtt.cred"
    if site_key is not None:
        fl["site_key_file"] = str(site_key)
    fl.update(fleet or {})
    conf: dict[str, dict[str, Any]] = {
        "gate": {"id": name, "mode": "ticket-only"},
        "tickets": {
            "pubkeys": [str(issuer_pub)],
            "ledger": "ledger.db",
            "revocation_list": "revoked.txt",
        },
        "gallery": {"db": "gallery.db", "key_file": "gallery.key"},
        "audit": {"path": "audit.db"},
        "fleet": fl,
    }
    for k, v in (sections or {}).items():
        conf.setdefault(k, {}).update(v)
    text = "".join(
        f"[{sec}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in vals.items()) + "\n"
        for sec, vals in conf.items()
    )
    (d / "gate.toml").write_text(text)

    init_ledger(d / "ledger.db")  # a ledger is never created implicitly
    (d / "revoked.txt").touch()

    ensure_lane_key(config_mod.load(d / "gate.toml"))  # what `edge-gate fleet join` does
    return Member(name, d, d / "gate.toml")


def lane_public_key(m: Member) -> str:
    """The public key `edge-gate fleet join` prints for a member, for the office's roster."""
    return public_text(load_lane_key(config_mod.load(m.config)).public_key())


def roster_all(office: Member, lanes: Iterable[Member], issuer_key: Path) -> None:
    """The office adds every lane's key to its roster and queues it, signed, for its sync."""
    publish_roster(
        config_mod.load(office.config), issuer_key, {m.name: lane_public_key(m) for m in lanes}
    )


def start_syncs(members: Iterable[Member]) -> list[subprocess.Popen]:
    """`edge-gate sync` for each member, as a process of its own (as systemd runs it)."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return [
        subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "sync", "--config", str(m.config)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        for m in members
    ]


def stop_all(procs: list[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM every process, then wait for each; one that will not stop is killed."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
