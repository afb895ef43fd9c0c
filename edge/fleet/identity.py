"""Who a lane is: its own Ed25519 key, and the roster the office signs (lane name -> public key).

Every message a lane sends is signed with its lane key (`fleet.lane_key_file`, 0600, made by
`edge-gate fleet join` or `ledger init`); receivers accept it only when the roster names that
key for the lane the topic names. The roster itself is signed with the ticket issuer key, which
every lane already trusts (tickets.pubkeys), so the broker, the network or another lane cannot
add a lane. The office keeps the roster it publishes in `fleet.roster_file`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.config import Config
from edge.errors import EdgeGateError
from edge.files import make_private_dirs, write_atomic
from edge.keyfiles import check_private_key, write_secret
from edge.tickets.format import key_id

OFFICE = "office"  # the member name the office signs and logs in as


class IdentityError(EdgeGateError):
    """A lane key or a roster is missing, unreadable or unsafe."""


def lane_key_path(cfg: Config) -> Path:
    """Where this lane's (or the office's) signing key lives."""
    return cfg.resolve(cfg.fleet.lane_key_file)


def ensure_lane_key(cfg: Config) -> Path | None:
    """Create the lane key (0600) if absent; None without [fleet]. Never overwrites a key."""
    if not cfg.fleet.enabled:
        return None
    path = lane_key_path(cfg)
    if path.exists():
        load_lane_key(cfg)  # an existing key must be readable and private
        return path
    make_private_dirs(path.parent)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret(path, pem.decode("ascii"), "keep it: the roster names this key for the lane")
    return path


def load_lane_key(cfg: Config) -> Ed25519PrivateKey:
    """This lane's signing key, refused when missing or readable by others."""
    path = lane_key_path(cfg)
    if not path.is_file():
        raise IdentityError(
            f"lane key {path} does not exist",
            f"run `edge-gate fleet join --config {cfg.source_file or 'gate.toml'}` and have the "
            "office add the printed key to the roster",
        )
    check_private_key(path, "lane key")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise IdentityError(
            f"lane key {path} is unreadable: {e}", "restore it or join again"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"lane key {path} is not an Ed25519 key", "join again")
    return key


def public_text(pub: Ed25519PublicKey) -> str:
    """A public key as the roster writes it: base64 of the 32 raw bytes."""
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public(text: str) -> Ed25519PublicKey:
    """A roster key back to a public key; IdentityError when it is not 32 base64 bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        raise IdentityError(
            f"{text[:60]!r} is not a lane public key", "paste what `fleet join` printed"
        ) from None


@dataclass(frozen=True)
class Roster:
    """The lanes of a site and their keys, as the office signed them (seq orders versions)."""

    seq: int = -1
    lanes: dict[str, str] = field(default_factory=dict)

    def key(self, lane: str) -> Ed25519PublicKey | None:
        """The public key the roster names for a lane, or None if the lane is not in it."""
        text = self.lanes.get(lane)
        if text is None:
            return None
        try:
            return parse_public(text)
        except IdentityError:
            return None

    def kid(self, lane: str) -> str:
        """The key id (hex) of a lane's rostered key, for messages that name their signer."""
        k = self.key(lane)
        return key_id(k).hex() if k else ""

    def gates(self) -> list[str]:
        """The rostered lanes other than the office: who must acknowledge a deletion."""
        return sorted(n for n in self.lanes if n != OFFICE)


def read_roster_file(path: Path) -> dict[str, str]:
    """The office's roster file (lane -> key); empty when it does not exist yet."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        lanes = {str(k): str(v) for k, v in dict(data["lanes"]).items()}
    except (ValueError, KeyError, TypeError) as e:
        raise IdentityError(f"roster {path} is unreadable: {e}", "fix or remove it") from None
    for v in lanes.values():
        parse_public(v)
    return lanes


def write_roster_file(path: Path, lanes: dict[str, str]) -> None:
    """Save the office's roster atomically (0644: public keys only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"lanes": dict(sorted(lanes.items()))}, indent=1) + "\n")
