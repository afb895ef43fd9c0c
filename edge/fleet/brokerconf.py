"""A site's Mosquitto configuration: one login per lane, pattern ACLs, client id = login, TLS.

`edge-gate fleet broker-config --config office.toml --out DIR` writes DIR/mosquitto.conf,
DIR/acl, DIR/passwd and, for every member of the office's roster that has none yet, a 0600
DIR/credentials/<name>.cred ("name:password", what that member's fleet.credentials_file
holds). The lab's test broker (tests, demo, bench) writes its config with the same functions.

What the broker enforces (docs/FLEET.md, threat model): a lane's login writes only its own
redemptions, heartbeat, marks, audit and acknowledgement topics and reads only what a lane needs
(never another lane's audit records; its own marks back, which tells it the ACL is current); the
office's login reads and writes the site; the client id is the login
(`use_username_as_clientid`), so one login cannot take over another's session.
Passwords are stored as Mosquitto 2.0 PBKDF2-SHA512 hashes ($7$), made here, so the office needs
no mosquitto_passwd.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.files import make_private_dirs, write_atomic
from edge.fleet.identity import OFFICE
from edge.fleet.messages import MAX_PAYLOAD

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's own default in 2.0
# What a lane's login may read besides the lanes' redemptions and heartbeats.
LANE_READS_OFFICE = ("roster", "revocations", "unrevocations", "keys", "forgotten", "people/+")
# What a lane whose retained marks do not come back (an ACL older than the marks topic, or than
# overrides) is told, and `fleet status` prints for it.
ACL_OUTDATED_FIX = (
    "at the office run `edge-gate fleet broker-config --config office.toml --out DIR` again "
    "(it keeps the passwords) and reload mosquitto"
)


def acl_text(site: str) -> str:
    """Topic ACLs; %u is the MQTT username, which is the lane's name. site "+" = any site."""
    root = f"edge-gate/{site}"
    lines = [
        "# The office (its sync and commands): the whole site.",
        f"user {OFFICE}",
        f"topic readwrite {root}/#",
        "",
        "# Every lane, by its own login (%u): writes only its own topics; reads what a lane",
        "# needs. Audit records are written by their lane and read by the office only.",
        f"pattern write {root}/redemptions/%u",
        f"pattern write {root}/heartbeat/%u",
        f"pattern write {root}/marks/%u",
        f"pattern write {root}/audit/%u",
        f"pattern write {root}/acks/%u/+",
        f"pattern read {root}/redemptions/+",
        f"pattern read {root}/heartbeat/+",
        f"pattern read {root}/marks/%u",
        *[f"pattern read {root}/office/{t}" for t in LANE_READS_OFFICE],
        f"pattern read {root}/office/audit-acks/%u",
        f"pattern read {root}/office/override/%u",
        "",
    ]
    return "\n".join(lines)


def password_line(user: str, password: str, salt: bytes | None = None) -> str:
    """One password-file line in Mosquitto 2.0's PBKDF2-SHA512 format."""
    salt = salt or os.urandom(12)
    h = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"{user}:$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(h).decode()}"


@dataclass(frozen=True)
class BrokerOptions:
    """Where the broker listens and keeps its files; TLS when a certificate is given."""

    port: int = 0  # 0 = 8883 with TLS, else 1883
    bind: str = ""  # an address, or "" for every interface
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    persistence_dir: str = "/var/lib/mosquitto/"
    password_file: str = "/etc/mosquitto/conf.d/edge-gate/passwd"
    acl_file: str = "/etc/mosquitto/conf.d/edge-gate/acl"
    max_queued_messages: int = 100_000  # per offline session: the longest outage accepted


def mosquitto_conf(opts: BrokerOptions, extra: Sequence[str] = ()) -> str:
    """mosquitto.conf for a site (a complete file: include it, or run `mosquitto -c`)."""
    tls = bool(opts.tls_cert)
    port = opts.port or (8883 if tls else 1883)
    lines = [
        "# edge-gate site broker (edge-gate fleet broker-config); docs/FLEET.md",
        "per_listener_settings false",
        f"listener {port}" + (f" {opts.bind}" if opts.bind else ""),
    ]
    if tls:
        lines += [
            f"certfile {opts.tls_cert}",
            f"keyfile {opts.tls_key}",
            *([f"cafile {opts.tls_ca}"] if opts.tls_ca else []),
            "tls_version tlsv1.2",
            "require_certificate false",
        ]
    lines += [
        "allow_anonymous false",
        f"password_file {opts.password_file}",
        f"acl_file {opts.acl_file}",
        "# the client id is the login: one login cannot take over another lane's session",
        "use_username_as_clientid true",
        "persistence true",
        f"persistence_location {opts.persistence_dir}",
        "autosave_interval 1",
        "# no member sends more in one message (edge/fleet/messages.py MAX_PAYLOAD)",
        f"max_packet_size {MAX_PAYLOAD + 4096}",
        f"max_queued_messages {opts.max_queued_messages}",
        "max_inflight_messages 0",
        "set_tcp_nodelay true",
        *extra,
    ]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    make_private_dirs(path.parent)
    write_atomic(path, text, 0o600)


def write_site_broker(
    out: Path, site: str, members: list[str], opts: BrokerOptions, passwords: dict | None = None
) -> dict[str, str]:
    """Write the broker's files into `out` for these members (lanes and "office").

    A member keeps the password in its existing credentials file; a new member gets a random
    one (or the one given in `passwords`). Returns member -> password of the members written.
    """
    out.mkdir(parents=True, exist_ok=True)
    creds = out / "credentials"
    known: dict[str, str] = {}
    for m in sorted({*members, OFFICE}):
        f = creds / f"{m}.cred"
        given = (passwords or {}).get(m)
        if given is not None:
            known[m] = given
        elif f.exists():
            user, _, pw = f.read_text().strip().partition(":")
            known[m] = pw if user == m and pw else secrets.token_urlsafe(24)
        else:
            known[m] = secrets.token_urlsafe(24)
        _write_private(f, f"{m}:{known[m]}\n")
    _write_private(out / "passwd", "".join(password_line(u, p) + "\n" for u, p in known.items()))
    write_atomic(out / "acl", acl_text(site))
    write_atomic(out / "mosquitto.conf", mosquitto_conf(opts))
    return known
