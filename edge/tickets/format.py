"""Signed tickets: a compact Ed25519-signed payload that fits a QR code, verified offline.

Text form: "EG" + base32 (no padding) of  payload || signature(64).  Payload, version byte first:
    u8 version (1) | 4B key id | u8 kind | u16 count | u32 valid_from | u32 valid_until
    | str ticket_id | str product | str holder          (str = u8 length + UTF-8 bytes)
kind: 0 one-time, 1 N entries in total, 2 season pass with at most `count` entries per day.
Base32 keeps the text inside QR alphanumeric mode, which a phone screen or cheap print shows
reliably. The gate holds public keys only; the office holds the private key.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import TicketError

PREFIX = "EG"
VERSION = 1
SIG_LEN = 64
MAX_TEXT = 400  # anything longer is not one of ours: refuse before decoding
MAX_TIME = 0xFFFFFFFF  # valid_from / valid_until: u32 Unix seconds (until 2106-02-07)
_HEAD = struct.Struct(">B4sBHII")
TICKET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
TICKET_ID_RULE = (
    "1-40 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"
)


class Kind(IntEnum):
    """What a ticket allows: one entry, N entries in total, or N entries per day (season)."""

    ONE_TIME = 0
    ENTRIES = 1
    SEASON = 2


class Reason(StrEnum):
    """The fixed reasons a ticket is accepted or refused; operators and auditors grep them."""

    OK = "ok"
    MALFORMED = "malformed"
    INVALID_SIGNATURE = "invalid_signature"
    UNKNOWN_KEY = "unknown_key"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    ALREADY_USED = "already_used"
    ANTI_PASSBACK = "anti_passback"
    WRONG_GATE = "wrong_gate"
    CLOCK_BEHIND = "clock_behind"  # the clock is earlier than the newest recorded entry
    LEDGER_ERROR = "ledger_error"  # the entry cannot be counted, so it is refused
    # pretix tickets (edge/tickets/pretix_offline.py): refusals pretix has and edge tickets lack
    BLOCKED = "blocked"  # in the event's blocked secrets
    RULES = "rules"  # the check-in list's rules refuse this entry
    RULES_UNSUPPORTED = "rules_unsupported"  # rules this lane cannot evaluate as pretix would


REASONS = tuple(Reason)


@dataclass(frozen=True)
class Ticket:
    """The signed content of a ticket; `max_entries` is what the ledger counts against."""

    ticket_id: str
    product: str = "day"
    valid_from: int = 0
    valid_until: int = 0
    kind: Kind = Kind.ONE_TIME
    count: int = 1
    holder: str = ""
    key_id: bytes = b""
    # The signed text as verified ("EG" + base32 of payload and signature): a fleet redemption
    # names its ticket by these bytes, so it cannot be pointed at another ticket.
    text: str = field(default="", compare=False, repr=False)

    @property
    def max_entries(self) -> int:
        """How many entries the ledger allows: one for one-time tickets, else the count."""
        return 1 if self.kind == Kind.ONE_TIME else self.count


def check_ticket_id(tid: str) -> str:
    """Ids issued from now on use a fixed character set (safe in files, lists and file names)."""
    if not TICKET_ID.fullmatch(tid):
        raise TicketError(f"ticket id {tid!r} is not allowed", TICKET_ID_RULE)
    return tid


def key_id(pub: Ed25519PublicKey) -> bytes:
    """Short key fingerprint in each ticket, so a gate picks the right issuer key to verify."""
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:4]


def _str(s: str, what: str, limit: int) -> bytes:
    b = s.encode("utf-8")
    if len(b) > limit:
        raise TicketError(
            f"{what} {s!r} is longer than {limit} bytes", "shorten it so the QR code stays readable"
        )
    return bytes([len(b)]) + b


def encode_payload(t: Ticket) -> bytes:
    """The compact bytes that get signed and put in the QR, refusing out-of-range fields."""
    if not t.ticket_id:
        raise TicketError("a ticket needs an id")
    if not (0 <= t.count <= 0xFFFF) or (t.kind != Kind.ONE_TIME and t.count < 1):
        raise TicketError(f"entries {t.count} out of range", "use 1..65535")
    if t.valid_until and t.valid_until < t.valid_from:
        raise TicketError("valid-until is before valid-from")
    for what, v in (("valid-from", t.valid_from), ("valid-until", t.valid_until)):
        if not 0 <= v <= MAX_TIME:  # the payload holds unsigned 32-bit Unix seconds
            raise TicketError(
                f"{what} {v} is outside what a ticket can carry (1970 to 2106)",
                "give a date between 1970 and 2106; for a ticket that never expires, --no-expiry",
            )
    head = _HEAD.pack(VERSION, t.key_id, int(t.kind), t.count, t.valid_from, t.valid_until)
    return (
        head
        + _str(t.ticket_id, "ticket id", 40)
        + _str(t.product, "product", 24)
        + _str(t.holder, "holder", 40)
    )


def decode_payload(p: bytes) -> Ticket:
    """Parse a payload; ValueError on any structural problem (the caller maps it to `malformed`)."""
    if len(p) < _HEAD.size + 3:
        raise ValueError("too short")
    ver, kid, kind, count, vf, vu = _HEAD.unpack_from(p)
    if ver != VERSION:
        raise ValueError(f"version {ver}")
    kind = Kind(kind)
    off, fields = _HEAD.size, []
    for _ in range(3):
        n = p[off]
        s = p[off + 1 : off + 1 + n]
        if len(s) != n:
            raise ValueError("truncated")
        fields.append(s.decode("utf-8"))
        off += 1 + n
    if off != len(p):
        raise ValueError("trailing bytes")
    if not fields[0]:
        raise ValueError("empty ticket id")
    return Ticket(fields[0], fields[1], vf, vu, kind, count, fields[2], kid)


def sign(t: Ticket, key: Ed25519PrivateKey) -> str:
    """Issue: bind the key id, sign, and return the QR text."""
    t = Ticket(**{**t.__dict__, "key_id": key_id(key.public_key())})
    payload = encode_payload(t)
    return signed_text(payload, key.sign(payload))


def signed_text(payload: bytes, sig: bytes) -> str:
    """The canonical ticket text for a payload and its signature (what `sign` returns)."""
    return PREFIX + base64.b32encode(payload + sig).decode("ascii").rstrip("=")


def split_text(text: str) -> tuple[bytes, bytes]:
    """QR text -> (payload, signature); ValueError if it is not one of our tickets."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ValueError("not a ticket text")
    text = text.strip()
    if not text.startswith(PREFIX):
        raise ValueError("no ticket prefix")
    body = text[len(PREFIX) :].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (ValueError, base64.binascii.Error):
        raise ValueError("not base32") from None
    if len(raw) <= SIG_LEN:
        raise ValueError("too short")
    if base64.b32encode(raw).decode("ascii").rstrip("=") != body:
        # the last character's unused bits, or a padding character: another spelling of the
        # same bytes, which no issuer writes (one ticket, one text, as a pretix secret)
        raise ValueError("not the canonical spelling")
    return raw[:-SIG_LEN], raw[-SIG_LEN:]
