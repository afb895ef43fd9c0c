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
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import TicketError

PREFIX = "EG"
VERSION = 1
SIG_LEN = 64
MAX_TEXT = 400  # anything longer is not one of ours: refuse before decoding
_HEAD = struct.Struct(">B4sBHII")


class Kind(IntEnum):
    ONE_TIME = 0
    ENTRIES = 1
    SEASON = 2


# The fixed set of reasons a gate gives; operators and auditors grep for these.
OK = "ok"
MALFORMED = "malformed"
INVALID_SIGNATURE = "invalid_signature"
UNKNOWN_KEY = "unknown_key"
NOT_YET_VALID = "not_yet_valid"
EXPIRED = "expired"
REVOKED = "revoked"
ALREADY_USED = "already_used"
WRONG_GATE = "wrong_gate"
REASONS = (OK, MALFORMED, INVALID_SIGNATURE, UNKNOWN_KEY, NOT_YET_VALID, EXPIRED, REVOKED, ALREADY_USED, WRONG_GATE)


@dataclass(frozen=True)
class Ticket:
    ticket_id: str
    product: str = "day"
    valid_from: int = 0
    valid_until: int = 0
    kind: Kind = Kind.ONE_TIME
    count: int = 1
    holder: str = ""
    key_id: bytes = b""

    @property
    def max_entries(self) -> int:
        return 1 if self.kind == Kind.ONE_TIME else self.count


def key_id(pub: Ed25519PublicKey) -> bytes:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:4]


def _str(s: str, what: str, limit: int) -> bytes:
    b = s.encode("utf-8")
    if len(b) > limit:
        raise TicketError(f"{what} {s!r} is longer than {limit} bytes", "shorten it so the QR code stays readable")
    return bytes([len(b)]) + b


def encode_payload(t: Ticket) -> bytes:
    if not t.ticket_id:
        raise TicketError("a ticket needs an id")
    if not (0 <= t.count <= 0xFFFF) or (t.kind != Kind.ONE_TIME and t.count < 1):
        raise TicketError(f"entries {t.count} out of range", "use 1..65535")
    if t.valid_until and t.valid_until < t.valid_from:
        raise TicketError("valid-until is before valid-from")
    head = _HEAD.pack(VERSION, t.key_id, int(t.kind), t.count, t.valid_from, t.valid_until)
    return head + _str(t.ticket_id, "ticket id", 40) + _str(t.product, "product", 24) + _str(t.holder, "holder", 40)


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
    return PREFIX + base64.b32encode(payload + key.sign(payload)).decode("ascii").rstrip("=")


def split_text(text: str) -> tuple[bytes, bytes]:
    """QR text -> (payload, signature); ValueError if it is not one of our tickets."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ValueError("not a ticket text")
    text = text.strip()
    if not text.startswith(PREFIX):
        raise ValueError("no ticket prefix")
    body = text[len(PREFIX):].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (ValueError, base64.binascii.Error):
        raise ValueError("not base32") from None
    if len(raw) <= SIG_LEN:
        raise ValueError("too short")
    return raw[:-SIG_LEN], raw[-SIG_LEN:]


# --- keys -----------------------------------------------------------------------------------------

def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def keygen(out_dir: Path) -> tuple[Path, Path]:
    """Write issuer.key (private, 0600) and issuer.pub; refuse to overwrite an existing key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_p, pub_p = out_dir / "issuer.key", out_dir / "issuer.pub"
    if priv_p.exists() or pub_p.exists():
        raise TicketError(f"{priv_p} or {pub_p} already exists", "choose another --out; never overwrite an issuer key")
    key = Ed25519PrivateKey.generate()
    _write_private(priv_p, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    pub_p.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_p, pub_p


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise TicketError(f"issuer key {path} does not exist", "run edge-gate ticket keygen") from None
    except (ValueError, TypeError) as e:
        raise TicketError(f"{path} is not an issuer private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TicketError(f"{path} is not an Ed25519 key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TicketError(f"issuer public key {path} does not exist", "copy issuer.pub from the ticket office") from None
    if b"PRIVATE KEY" in data:
        raise TicketError(f"{path} holds a private key", "a gate must hold public keys only; copy issuer.pub instead")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise TicketError(f"{path} is not an issuer public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise TicketError(f"{path} is not an Ed25519 public key")
    return key


# --- verification (gate side) -------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    valid: bool
    reason: str
    ticket: Ticket | None = None
    detail: str = ""

    @property
    def ticket_id(self) -> str | None:
        return self.ticket.ticket_id if self.ticket else None


class Verifier:
    """Checks signature, key, validity window, product and revocation. No I/O after construction."""

    def __init__(self, pubkeys: list[Ed25519PublicKey], products: tuple[str, ...] = (),
                 revoked: frozenset[str] = frozenset(), clock_skew_s: float = 300.0):
        self.keys = {key_id(k): k for k in pubkeys}
        self.products = frozenset(products)
        self.revoked = revoked
        self.skew = clock_skew_s

    def verify(self, text: str, now: float) -> Verdict:
        try:
            payload, sig = split_text(text)
            kid = payload[1:5] if len(payload) >= 5 else b""
        except ValueError as e:
            return Verdict(False, MALFORMED, detail=str(e))
        key = self.keys.get(kid)
        if key is None:
            # Parse only to tell an unknown key from garbage; nothing unsigned is trusted.
            try:
                decode_payload(payload)
            except (ValueError, UnicodeDecodeError, IndexError):
                return Verdict(False, MALFORMED, detail="unparseable payload")
            return Verdict(False, UNKNOWN_KEY, detail=kid.hex())
        try:
            key.verify(sig, payload)
        except InvalidSignature:
            return Verdict(False, INVALID_SIGNATURE)
        try:
            t = decode_payload(payload)
        except (ValueError, UnicodeDecodeError, IndexError) as e:  # signed but unparseable: our bug or old format
            return Verdict(False, MALFORMED, detail=str(e))
        if t.ticket_id in self.revoked:
            return Verdict(False, REVOKED, t)
        if t.valid_from and now + self.skew < t.valid_from:
            return Verdict(False, NOT_YET_VALID, t)
        if t.valid_until and now - self.skew > t.valid_until:
            return Verdict(False, EXPIRED, t)
        if self.products and t.product not in self.products:
            return Verdict(False, WRONG_GATE, t, detail=t.product)
        return Verdict(True, OK, t)


def load_revocations(path: Path | None) -> frozenset[str]:
    """One ticket id per line; '#' comments; a missing file means nothing is revoked."""
    if not path:
        return frozenset()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return frozenset()
    return frozenset(s for s in (ln.split("#", 1)[0].strip() for ln in lines) if s)


def revoke(path: Path, ticket_ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for t in ticket_ids:
            f.write(t.strip() + "\n")
        f.flush()
        os.fsync(f.fileno())
