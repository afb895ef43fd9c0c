"""Fleet wire format (version 2): topics and JSON payloads, every one signed; people sealed.

Every payload is a JSON object with `v` (format version), `type`, `site`, `lane` (the signer),
`epoch` (the signer's numbering space: new when a lane's ledger is initialised or restored),
`seq` (the signer's sequence number within it), `time` (its clock, Unix seconds), a `body`, and
`kid` + `sig`: an Ed25519 signature over the canonical JSON of everything else. Office messages
that change what lanes do (roster, revocations, keys, people) are signed with the ticket issuer
key; everything a lane sends (and the office's heartbeat and audit acknowledgements) is signed
with the sender's lane key, which the signed roster names. A receiver accepts a lane message
only when the topic names the same lane as the signature (`authenticate`). People records
travel inside the body sealed with the site key (AES-256-GCM). No I/O here.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import EdgeGateError
from edge.fleet.identity import OFFICE as OFFICE
from edge.fleet.identity import Roster
from edge.gallery.crypto import SealError, open_sealed, seal
from edge.tickets.format import key_id

VERSION = 2
ROOT = "edge-gate"
# Lane message types (signed with the sender's lane key).
REDEMPTION, HEARTBEAT, OFFLINE, AUDIT, ACK = "redemption", "heartbeat", "offline", "audit", "ack"
MARKS = "marks"  # how far a lane's files go, retained where its last will never writes
AUDIT_ACK = "audit_ack"  # the office: "I stored your audit records up to id N"
# Office message types (signed with the ticket issuer key).
ROSTER, REVOCATIONS, UNREVOCATIONS = "roster", "revocations", "unrevocations"
KEYS, PERSON, FORGOTTEN = "keys", "person", "forgotten"
OVERRIDE = "override"  # a supervisor opens one lane's turnstile once (edge/fleet/override.py)
ISSUER_TYPES = frozenset({ROSTER, REVOCATIONS, UNREVOCATIONS, KEYS, PERSON, FORGOTTEN, OVERRIDE})
# The topic folder each lane type travels in: edge-gate/<site>/<folder>/<lane>[/...].
LANE_FOLDER = {
    REDEMPTION: "redemptions",
    HEARTBEAT: "heartbeat",
    OFFLINE: "heartbeat",
    AUDIT: "audit",
    ACK: "acks",
    MARKS: "marks",
}


class MessageError(EdgeGateError):
    """A fleet message is malformed, from another site, unsigned or signed by the wrong key."""


class NotRostered(MessageError):
    """Signed by a lane the roster does not (yet) name: kept aside until a roster names it."""


def topic(site: str, *parts: str | int) -> str:
    """edge-gate/<site>/<part>/...; every fleet topic is built here."""
    return "/".join([ROOT, site, *(str(p) for p in parts)])


def topics(site: str) -> dict[str, str]:
    """The subscription filters (documented in docs/FLEET.md)."""
    return {
        "redemptions": topic(site, "redemptions", "+"),
        "office": topic(site, "office", "#"),
        "roster": topic(site, "office", "roster"),
        "heartbeat": topic(site, "heartbeat", "+"),
        "acks": topic(site, "acks", "+", "+"),
        "audit": topic(site, "audit", "+"),
        "people": topic(site, "office", "people", "+"),
    }


def audit_ack_topic(site: str, lane: str) -> str:
    """Where the office acknowledges a lane's audit records (only that lane needs them)."""
    return topic(site, "office", "audit-acks", lane)


def marks_topic(site: str, lane: str) -> str:
    """Where a lane keeps its signed marks, retained (only that lane reads them back)."""
    return topic(site, "marks", lane)


def override_topic(site: str, lane: str) -> str:
    """Where the office sends a supervisor's override for one lane (only that lane reads it)."""
    return topic(site, "office", "override", lane)


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
    epoch: str = ""

    def unsigned(self) -> dict[str, Any]:
        """The fields a signature covers, so signing and verifying agree byte for byte."""
        return {
            "v": VERSION,
            "type": self.type,
            "site": self.site,
            "lane": self.lane,
            "epoch": self.epoch,
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
    """Sign with a lane key (lane messages) or the issuer key (office messages)."""
    sig = key.sign(_canonical(m.unsigned()))
    kid = key_id(key.public_key()).hex()
    return Message(
        m.type, m.site, m.lane, m.seq, m.time, m.body, kid, base64.b64encode(sig).decode(), m.epoch
    )


MAX_PAYLOAD = 16 * 1024 * 1024  # bytes; the broker's max_packet_size (brokerconf) is the same


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a message may carry")


def decode(payload: bytes, site: str) -> Message:
    """Parse and check shape, version and site; raise MessageError saying what is wrong.

    Whatever a sender puts on the broker ends here as a Message or a MessageError: an oversized
    payload, NaN or Infinity, a nesting too deep to parse, a number too large for an integer.
    A retained message that raised anything else would stop every receiver's sync at each start.
    """
    if len(payload) > MAX_PAYLOAD:
        raise MessageError(f"message of {len(payload)} bytes, more than {MAX_PAYLOAD}")
    try:
        d = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise MessageError(f"not JSON: {e}") from None
    except RecursionError:
        raise MessageError("not JSON: nested too deep") from None
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
            str(d.get("epoch", "")),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise MessageError(f"missing or wrong field: {e}") from None
    if not math.isfinite(m.time):
        raise MessageError("its time is not a finite number")
    if m.site != site:
        raise MessageError(f"message for site {m.site!r}, this is {site!r}")
    return m


def _check_sig(m: Message, key: Ed25519PublicKey, who: str) -> None:
    try:
        key.verify(base64.b64decode(m.sig), _canonical(m.unsigned()))
    except (InvalidSignature, ValueError):
        raise MessageError(f"{m.type} message from {m.lane!r}: bad signature ({who})") from None


def verify_signed(m: Message, pubkeys: list[Ed25519PublicKey]) -> Message:
    """Accept an office message only if one of the trusted issuer keys signed it."""
    if not m.sig:
        raise MessageError(f"{m.type} message from {m.lane!r} is not signed")
    keys = {key_id(k).hex(): k for k in pubkeys}
    key = keys.get(m.kid)
    if key is None:
        raise MessageError(f"{m.type} message signed by unknown key {m.kid!r}")
    _check_sig(m, key, "issuer key")
    return m


def topic_lane(site: str, topic_: str) -> tuple[str, str]:
    """(folder, lane) a topic names: redemptions/<lane>, heartbeat/<lane>, marks/<lane>,
    audit/<lane>, acks/<lane>/<person>, office/audit-acks/<lane> (lane = the addressee there)."""
    parts = topic_.split("/")
    if len(parts) < 4 or parts[0] != ROOT or parts[1] != site:
        raise MessageError(f"not a topic of site {site!r}: {topic_}")
    if parts[2] == "office" and len(parts) == 5 and parts[3] == "audit-acks":
        return "audit-acks", parts[4]
    return parts[2], parts[3]


def authenticate(
    topic_: str, m: Message, roster: Roster, issuer_keys: list[Ed25519PublicKey]
) -> Message:
    """The one check every receiver makes: who signed it, and may that signer write here.

    Office types need the issuer key and an office topic. A lane type needs the signature of
    the key the roster names for `m.lane`, and `m.lane` must be the lane the topic names (the
    broker's ACL lets a lane's login write only its own topics, so topic, login and key agree).
    """
    folder, lane = topic_lane(m.site, topic_)
    if m.type in ISSUER_TYPES:
        if folder != "office" or m.lane != OFFICE:
            raise MessageError(f"{m.type} message on {topic_} (office messages go to office/)")
        return verify_signed(m, issuer_keys)
    if m.type == AUDIT_ACK:
        if folder != "audit-acks" or m.lane != OFFICE:
            raise MessageError(f"audit_ack from {m.lane!r} on {topic_}")
    elif LANE_FOLDER.get(m.type) != folder:
        raise MessageError(f"{m.type} message on {topic_}")
    elif lane != m.lane:
        raise MessageError(f"{m.type} signed as {m.lane!r} on lane {lane!r}'s topic {topic_}")
    if not m.sig:
        raise MessageError(f"{m.type} message from {m.lane!r} is not signed")
    key = roster.key(m.lane)
    if key is None:
        raise NotRostered(
            f"{m.type} from {m.lane!r}: not in the roster",
            "at the office: edge-gate fleet roster add LANE KEY (from `fleet join`)",
        )
    if m.kid and m.kid != key_id(key).hex():
        raise MessageError(
            f"{m.type} from {m.lane!r} signed by key {m.kid}, the roster names {key_id(key).hex()}"
        )
    _check_sig(m, key, "lane key")
    return m


def seal_for_site(site_key: bytes, site: str, person_id: str, record: bytes) -> str:
    """Encrypt one person's exported record so only holders of the site key can open it."""
    return base64.b64encode(seal(site_key, record, _person_aad(site, person_id))).decode()


def open_for_site(site_key: bytes, site: str, person_id: str, blob: str) -> bytes:
    """Open a sealed person record; MessageError if the site key does not open it."""
    try:
        return open_sealed(site_key, base64.b64decode(blob), _person_aad(site, person_id))
    except (SealError, ValueError):
        raise MessageError(
            f"person record {person_id!r} does not open with this lane's site key",
            "give every lane the site key the office uses (fleet.site_key_file)",
        ) from None


def _person_aad(site: str, person_id: str) -> bytes:
    return f"edge-gate-fleet/{site}/person/{person_id}".encode()
