"""pretix's signed ticket secrets ("pretix_sig1"), checked offline with the event's public keys.

Layout, as pretix writes it (pretix/base/secrets.py, Sig1TicketSecretGenerator) and pretixSCAN
reads it (libpretixsync, AsyncCheckProvider.decodePretixSig1):

    secret = reversed( base64( u8 version (1) | u16 n | u16 m | payload[n] | signature[m] ) )

lengths big-endian; the signature is Ed25519 over the payload; the payload is the protobuf
message `Ticket` (pretix_sig1.proto):

    1 seed string | 2 item int64 | 3 variation int64 | 4 subevent int64
    | 5 optional validFromUnixTime int64 | 6 optional validUntilUnixTime int64

The string is reversed so that secrets of one event do not all start alike. Keys come from the
event's `valid_keys["pretix_sig1"]`: each one base64 of a PEM public key; a secret is genuine if
any of them verifies it (key rotation).

The protobuf message is six scalar fields, so it is read here with a small wire-format reader
(varints and length-delimited fields, unknown fields skipped as protobuf does) instead of the
protobuf runtime: no generated code, no C extension to match on the Pi.

Stricter than pretix, on purpose: pretix decodes base64 leniently and ignores bytes after the
signature, so one ticket has many spellings; revocation and blocking match the exact string, so
another spelling of a revoked secret would pass them. Here only the one canonical spelling is
genuine (`invalid` otherwise); every secret pretix issues is canonical.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import TicketError

VERSION = 1
SIG_LEN = 64
MAX_SECRET = 512  # pretix's are ~116 characters; anything far longer is refused before decoding
_HEAD = struct.Struct(">BHH")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_U64 = 1 << 64


@dataclass(frozen=True)
class Sig1Ticket:
    """The signed content of a pretix_sig1 secret; ids are pretix's database ids (0 = none)."""

    seed: str
    item: int = 0
    variation: int = 0
    subevent: int = 0
    valid_from: int | None = None  # Unix seconds; None = no limit (absent or 0, as pretixSCAN)
    valid_until: int | None = None


class Sig1Invalid(ValueError):
    """Not a genuine pretix_sig1 secret for these keys; `malformed` when it is not one at all."""

    def __init__(self, detail: str, malformed: bool = True):
        super().__init__(detail)
        self.malformed = malformed


# --- protobuf wire format (only what the Ticket message needs) -----------------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def _int64(v: int) -> int:
    v %= _U64
    return v - _U64 if v >= 1 << 63 else v


def _fields(buf: bytes) -> dict[int, int | bytes]:
    """Field number -> last value (protobuf's rule for repeated scalars); unknown ones kept too."""
    out: dict[int, int | bytes] = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i)
            out[number] = value
        elif wire == 1:
            if i + 8 > len(buf):
                raise ValueError("truncated fixed64")
            out[number] = buf[i : i + 8]
            i += 8
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated length-delimited field")
            out[number] = buf[i : i + n]
            i += n
        elif wire == 5:
            if i + 4 > len(buf):
                raise ValueError("truncated fixed32")
            out[number] = buf[i : i + 4]
            i += 4
        else:
            raise ValueError(f"wire type {wire} (groups) in a Ticket")
    return out


def decode_ticket(payload: bytes) -> Sig1Ticket:
    """The Ticket message; ValueError on anything protobuf itself would not parse."""
    f = _fields(payload)

    def num(n: int) -> int | None:
        v = f.get(n)
        return _int64(v) if isinstance(v, int) else None  # wrong wire type: an unknown field

    seed_raw = f.get(1, b"")
    seed = seed_raw.decode("utf-8") if isinstance(seed_raw, bytes) else ""
    vf, vu = num(5), num(6)
    return Sig1Ticket(
        seed,
        num(2) or 0,
        num(3) or 0,
        num(4) or 0,
        vf if vf is not None and vf > 0 else None,
        vu if vu is not None and vu > 0 else None,
    )


def _put_varint(v: int) -> bytes:
    v %= _U64
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_ticket(t: Sig1Ticket) -> bytes:
    """Serialise like protobuf: proto3 scalars only when non-zero, the optional times when set."""
    seed = t.seed.encode("utf-8")
    out = bytearray()
    if seed:
        out += b"\x0a" + _put_varint(len(seed)) + seed
    for number, value in ((2, t.item), (3, t.variation), (4, t.subevent)):
        if value:
            out += _put_varint(number << 3) + _put_varint(value)
    for number, when in ((5, t.valid_from), (6, t.valid_until)):
        if when is not None:
            out += _put_varint(number << 3) + _put_varint(when)
    return bytes(out)


# --- the secret ----------------------------------------------------------------------------------


def split_secret(secret: str) -> tuple[bytes, bytes]:
    """Secret text -> (payload, signature); Sig1Invalid if it is not a canonical sig1 secret."""
    if not isinstance(secret, str) or len(secret) > MAX_SECRET:
        raise Sig1Invalid("not a pretix_sig1 secret")
    text = secret.strip()
    b64 = text[::-1]
    if not text or not _B64.fullmatch(b64):
        raise Sig1Invalid("not base64")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise Sig1Invalid("not base64") from None
    if base64.b64encode(raw).decode("ascii") != b64:
        raise Sig1Invalid("not the canonical base64 spelling")
    if len(raw) < _HEAD.size:
        raise Sig1Invalid("too short")
    version, n, m = _HEAD.unpack_from(raw)
    if version != VERSION:
        raise Sig1Invalid(f"version {version}, not {VERSION}")
    if m != SIG_LEN or len(raw) != _HEAD.size + n + m:
        raise Sig1Invalid("lengths do not match the secret")
    return raw[_HEAD.size : _HEAD.size + n], raw[_HEAD.size + n :]


def canonical(secret: str) -> str:
    """The spelling revocation and blocking lists are matched against (surrounding space gone)."""
    return secret.strip()


def verify_secret(secret: str, keys: list[Ed25519PublicKey] | tuple) -> Sig1Ticket:
    """The signed ticket if any key verifies the secret; Sig1Invalid otherwise (no I/O)."""
    payload, sig = split_secret(secret)
    for key in keys:
        try:
            key.verify(sig, payload)
        except InvalidSignature:
            continue
        try:
            return decode_ticket(payload)
        except (ValueError, UnicodeDecodeError) as e:  # signed by the shop, yet unreadable
            raise Sig1Invalid(f"signed payload unreadable: {e}") from None
    raise Sig1Invalid("no key of this event verifies it", malformed=False)


def sign_secret(t: Sig1Ticket, key: Ed25519PrivateKey) -> str:
    """Make a secret exactly as pretix does (tests and demos; the shop signs real tickets)."""
    payload = encode_ticket(t)
    sig = key.sign(payload)
    raw = _HEAD.pack(VERSION, len(payload), len(sig)) + payload + sig
    return base64.b64encode(raw).decode("ascii")[::-1]


def public_key_b64(key: Ed25519PublicKey) -> str:
    """A public key as it appears in `valid_keys["pretix_sig1"]`: base64 of the PEM."""
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(pem).decode("ascii")


def load_keys(valid_keys: object) -> list[Ed25519PublicKey]:
    """The event's `valid_keys` object (or its `pretix_sig1` list) -> Ed25519 public keys."""
    if isinstance(valid_keys, dict):
        valid_keys = valid_keys.get("pretix_sig1", [])
    if not isinstance(valid_keys, list):
        raise TicketError(
            "valid_keys.pretix_sig1 is not a list", "write event.json from the API's event detail"
        )
    keys = []
    for i, text in enumerate(valid_keys):
        try:
            pem = base64.b64decode(str(text), validate=True)
            key = serialization.load_pem_public_key(pem)
        except (binascii.Error, ValueError, TypeError) as e:
            raise TicketError(
                f"valid_keys.pretix_sig1[{i}] is not a base64 PEM public key: {e}",
                "write event.json from the API's event detail (edge-gate pretix sync)",
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise TicketError(f"valid_keys.pretix_sig1[{i}] is not an Ed25519 key")
        keys.append(key)
    return keys
