"""Issuer keys: the office holds the Ed25519 private key, every gate only public keys."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import TicketError
from edge.files import make_private_dirs, write_atomic
from edge.keyfiles import check_public_key, read_private


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o600, overwrite=False)


def keygen(out_dir: Path) -> tuple[Path, Path]:
    """Write issuer.key (private, 0600) and issuer.pub; refuse to overwrite an existing key."""
    priv_p, pub_p = out_dir / "issuer.key", out_dir / "issuer.pub"
    try:
        make_private_dirs(out_dir)
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
    except FileExistsError:  # created meanwhile by another keygen: never touch it
        raise TicketError(
            f"{priv_p} already exists", "choose another --out; never overwrite an issuer key"
        ) from None
    except OSError as e:
        raise _cannot_write(out_dir, e) from None
    try:
        write_atomic(
            pub_p,
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
    except OSError as e:  # a full disk: no half pair left behind (the key was written here)
        priv_p.unlink(missing_ok=True)
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
    _not_public(Path(path))
    data = read_private(Path(path), "issuer key", "run edge-gate ticket keygen")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise TicketError(
            f"{path} is not an issuer private key (PEM)",
            "pass the issuer.key `edge-gate ticket keygen` wrote",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TicketError(f"{path} is not an Ed25519 key")
    return key


def _not_public(path: Path) -> None:
    """A public key given where the private one belongs is said as such, before its file mode
    is judged (a fix that made issuer.pub owner-only would lock the gates out of it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return  # read_private says what is wrong with it
    if b"PUBLIC KEY" in head and b"PRIVATE KEY" not in head:
        raise TicketError(
            f"{path} is a public key, not the issuer's private key",
            "pass issuer.key (kept at the ticket office beside issuer.pub)",
        )


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
    except OSError as e:  # a folder, or unreadable by the service user
        raise TicketError(
            f"issuer public key {path}: {e.strerror}",
            "make it a file the gate's service user can read (chmod 644)",
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
