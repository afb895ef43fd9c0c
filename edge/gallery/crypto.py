"""Keys and AEAD for the gallery.

A key-encryption key (KEK) lives outside the database: a 0600 key file, or a systemd credential
($CREDENTIALS_DIRECTORY/gallery.key). It wraps the data key (DEK) stored in the database; the DEK
seals names, personal fields and templates with AES-256-GCM. Associated data binds each sealed
value to its table, row, column and model, so a value copied into another row does not open.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.errors import KeyFileError
from edge.keyfiles import credential_path, read_private, write_secret

KEY_HEADER = "edge-gate-kek-v1:"
NONCE = 12


class SealError(Exception):
    """A sealed value did not open: tampered, swapped between rows, or the wrong key."""


@dataclass(frozen=True)
class Kek:
    """The gallery key-encryption key, kept outside the db (0600 file or systemd credential)."""

    key: bytes
    path: Path

    @property
    def kid(self) -> str:
        """Public fingerprint of the key: tells which key a database expects, reveals nothing."""
        return hashlib.sha256(b"edge-gate-kid" + self.key).hexdigest()[:16]


def aad(table: str, row: str, column: str, model: str = "") -> bytes:
    """Bind a sealed value to its table, row, column and model, so it cannot be moved."""
    return f"{table}|{row}|{column}|{model}".encode()


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """Encrypt and authenticate one value at rest, with a fresh random nonce each time."""
    nonce = os.urandom(NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes | AESGCM, blob: bytes, associated: bytes) -> bytes:
    """Open a sealed value; key may be a prepared AESGCM (one per key when opening many)."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) < NONCE + 16:
        raise SealError("sealed value too short")
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    try:
        return aead.decrypt(bytes(blob[:NONCE]), bytes(blob[NONCE:]), associated)
    except InvalidTag:
        raise SealError("authentication failed") from None


def _write_key_file(path: Path, key: bytes) -> None:
    """Write whole-or-nothing (0600); refused if the file exists."""
    write_secret(
        path,
        KEY_HEADER + base64.b64encode(key).decode() + "\n",
        "keep it; use `edge-gate keys rotate` to change keys",
    )


def init_key(path: Path) -> Kek:
    """Create a new key file (0600); refuse to overwrite, because that would lose every template."""
    if path.exists():
        raise KeyFileError(
            f"key file {path} already exists", "keep it; use `edge-gate keys rotate` to change keys"
        )
    key = os.urandom(32)
    _write_key_file(path, key)
    return Kek(key, path)


def load_key(path: Path, check_mode: bool = True) -> Kek:
    """Read the KEK; a missing file, loose permissions or a damaged file is a KeyFileError."""
    real = credential_path(path)
    raw = read_private(  # missing, unreadable, loose permissions, another owner, open folder
        path,
        "key file",
        "run `edge-gate keys init --key-file PATH`, or restore the key from its backup",
        check=check_mode,
    )
    text = raw.decode("ascii", errors="replace").strip()
    if not text.startswith(KEY_HEADER):
        raise KeyFileError(
            f"{real} is not an edge-gate key file", "point --key-file at the file `keys init` wrote"
        )
    try:
        key = base64.b64decode(text[len(KEY_HEADER) :], validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise KeyFileError(f"key file {real} is damaged", "restore the key file from its backup")
    return Kek(key, path)
