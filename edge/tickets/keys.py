"""Issuer keys: the office holds the Ed25519 private key, every gate only public keys."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import TicketError
from edge.keyfiles import check_private_key, check_public_key


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def keygen(out_dir: Path) -> tuple[Path, Path]:
    """Write issuer.key (private, 0600) and issuer.pub; refuse to overwrite an existing key."""
    priv_p, pub_p = out_dir / "issuer.key", out_dir / "issuer.pub"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_write(out_dir, e) from None
    if priv_p.exists() or pub_p.exists():
        raise TicketError(
            f"{priv_p} or {pub_p} already exists",
            "choose another --out; never overwrite an issuer key",
        )
    key = Ed25519PrivateKey.generate()
    try:
        _write_private(
            priv_p,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        pub_p.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    except OSError as e:  # a full disk: no half pair left behind (neither existed before)
        priv_p.unlink(missing_ok=True)
        pub_p.unlink(missing_ok=True)
        raise _cannot_write(out_dir, e) from None
    return priv_p, pub_p


def _cannot_write(out_dir: Path, e: OSError) -> TicketError:
    return TicketError(
        f"--out {out_dir}: the key pair cannot be written: {e.strerror or e}",
        "give --out a folder this user may write",
    )


def load_private(path: Path) -> Ed25519PrivateKey:
    """Read the office's Ed25519 issuer key (PEM), with an error that names the file; refused
    when others could read or replace it."""
    try:
        check_private_key(Path(path), "issuer key")
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise TicketError(
            f"issuer key {path} does not exist", "run edge-gate ticket keygen"
        ) from None
    except (ValueError, TypeError) as e:
        raise TicketError(f"{path} is not an issuer private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TicketError(f"{path} is not an Ed25519 key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """Read an issuer public key for a gate; refuses a private key so none ends up on a gate, and
    a key file or folder others could write (they could swap in their own key)."""
    try:
        check_public_key(Path(path), "issuer public key")
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TicketError(
            f"issuer public key {path} does not exist", "copy issuer.pub from the ticket office"
        ) from None
    if b"PRIVATE KEY" in data:
        raise TicketError(
            f"{path} holds a private key",
            "a gate must hold public keys only; copy issuer.pub instead",
        )
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise TicketError(f"{path} is not an issuer public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise TicketError(f"{path} is not an Ed25519 public key")
    return key
