"""Fleet wire format: topics and versioned JSON payloads; office messages signed, people sealed.

Every payload is a JSON object with `v` (format version), `type`, `site`, `lane` (sender),
`seq` (sender's sequence number) and `time` (sender's clock, Unix seconds) plus a `body`.
Office messages also carry `kid` and `sig`: an Ed25519 signature by the ticket issuer key over
the canonical JSON of everything else, so a lane accepts only what the office signed. People
records travel inside the body sealed with the site key (AES-256-GCM), so neither the broker
nor anyone on the network sees a name or a template. No I/O here.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import EdgeGateError
from edge.tickets.format import key_id

VERSION = 1
ROOT = "edge-gate"
OFFICE = "office"  # the lane name the office signs as
# Message types.
REDEMPTION, HEARTBEAT, AUDIT, ACK = "redemption", "heartbeat", "audit", "ack"
REVOCATIONS, KEYS, PERSON = "revocations", "keys", "person"
SIGNED_TYPES = frozenset({REVOCATIONS, KEYS, PERSON})


class MessageError(EdgeGateError):
    """A fleet message is malformed, from another site, unsigned or signed by an unknown key."""


def topic(site: str, *parts: str | int) -> str:
    """edge-gate/<site>/<part>/...; every fleet topic is built here."""
    return "/".join([ROOT, site, *(str(p) for p in parts)])


def topics(site: str) -> dict[str, str]:
    """The subscription filters a lane uses (documented in docs/FLEET.md)."""
    return {
        "redemptions": topic(site, "redemptions", "+"),
        "office": topic(site, "office", "#"),
        "heartbeat": topic(site, "heartbeat", "+"),
        "acks": topic(site, "acks", "#"),
        "audit": topic(site, "audit", "#"),
    }


@dataclass(frozen=True)
class Message:
    """One fleet payload, so every lane and the office share a single wire format."""

    type: str
    site: str
    lane: str
    seq: int
    time: float
    body: dict[str, Any] = field(default_factory=dict)
    kid: str = ""
    sig: str = ""

    def unsigned(self) -> dict[str, Any]:
        """The fields a signature covers, so signing and verifying agree byte for byte."""
        return {
            "v": VERSION,
            "type": self.type,
            "site": self.site,
            "lane": self.lane,
            "seq": self.seq,
            "time": self.time,
            "body": self.body,
        }


def _canonical(d: dict[str, Any]) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode(m: Message) -> bytes:
    """Canonical JSON bytes to publish, with the signature when there is one."""
    d = m.unsigned()
    if m.sig:
        d.update(kid=m.kid, sig=m.sig)
    return _canonical(d)


def sign(m: Message, key: Ed25519PrivateKey) -> Message:
    """The office signs with the ticket issuer key; lanes trust it through tickets.pubkeys."""
    sig = key.sign(_canonical(m.unsigned()))
    return Message(
        m.type,
        m.site,
        m.lane,
        m.seq,
        m.time,
        m.body,
        key_id(key.public_key()).hex(),
        base64.b64encode(sig).decode(),
    )


def decode(payload: bytes, site: str) -> Message:
    """Parse and check shape, version and site; raise MessageError saying what is wrong."""
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise MessageError(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise MessageError("not a JSON object")
    if d.get("v") != VERSION:
        raise MessageError(f"unsupported version {d.get('v')!r}", "upgrade edge-gate on this lane")
    try:
        m = Message(
            str(d["type"]),
            str(d["site"]),
            str(d["lane"]),
            int(d["seq"]),
            float(d["time"]),
            dict(d.get("body") or {}),
            str(d.get("kid", "")),
            str(d.get("sig", "")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise MessageError(f"missing or wrong field: {e}") from None
    if m.site != site:
        raise MessageError(f"message for site {m.site!r}, this is {site!r}")
    return m


def verify_signed(m: Message, pubkeys: list[Ed25519PublicKey]) -> Message:
    """Accept an office message only if one of the trusted issuer keys signed it."""
    if not m.sig:
        raise MessageError(f"{m.type} message from {m.lane!r} is not signed")
    keys = {key_id(k).hex(): k for k in pubkeys}
    key = keys.get(m.kid)
    if key is None:
        raise MessageError(f"{m.type} message signed by unknown key {m.kid!r}")
    try:
        key.verify(base64.b64decode(m.sig), _canonical(m.unsigned()))
    except (InvalidSignature, ValueError):
        raise MessageError(f"{m.type} message from {m.lane!r}: bad signature") from None
    return m


def seal_for_site(site_key: bytes, site: str, person_id: str, record: bytes) -> str:
    """Encrypt one person's exported record so only holders of the site key can open it."""
    from edge.gallery.crypto import seal

    return base64.b64encode(seal(site_key, record, _person_aad(site, person_id))).decode()


def open_for_site(site_key: bytes, site: str, person_id: str, blob: str) -> bytes:
    """Open a sealed person record; MessageError if the site key does not open it."""
    from edge.gallery.crypto import SealError, open_sealed

    try:
        return open_sealed(site_key, base64.b64decode(blob), _person_aad(site, person_id))
    except (SealError, ValueError):
        raise MessageError(
            f"person record {person_id!r} does not open with this lane's site key",
            "give every lane the site key the office uses (fleet.site_key_file)",
        ) from None


def _person_aad(site: str, person_id: str) -> bytes:
    return f"edge-gate-fleet/{site}/person/{person_id}".encode()
