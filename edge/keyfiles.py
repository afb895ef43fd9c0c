"""Key files are refused when others could read or replace them, as ssh refuses them.

A private key (gallery key, site key, lane key, evidence key) must be readable by its owner
only; a public key (the issuer's) must be writable by its owner only, or anyone on the machine
could swap in their own and sign tickets; and the folder holding either must not be writable by
others, who could otherwise rename another file into its place. Each refusal names the exact
`chmod` that fixes it. Files under systemd's `$CREDENTIALS_DIRECTORY` are laid out by systemd and
are not checked here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edge.errors import KeyFileError
from edge.files import make_private_dirs, write_atomic


def _who(mode: int, bits: int) -> str:
    """'group', 'others' or 'group and others' for the permission bits that are set."""
    g, o = mode & bits & 0o070, mode & bits & 0o007
    return "group and others" if g and o else ("group" if g else "others")


def _credential(path: Path) -> bool:
    cred = os.environ.get("CREDENTIALS_DIRECTORY")
    if not cred:
        return False
    return Path(path).resolve().parent == Path(cred).resolve()


def check_dir(path: Path, what: str) -> None:
    """The folder holding a key: refused when group or others may write to it."""
    folder = Path(path).resolve().parent
    try:
        mode = stat.S_IMODE(os.stat(folder).st_mode)
    except FileNotFoundError:
        return  # the key's own check reports the missing file
    if mode & 0o022:
        raise KeyFileError(
            f"the folder {folder} holding {what} {path} is writable by {_who(mode, 0o022)} "
            f"(mode {mode:04o}): anyone who can write there can replace the key",
            f"chmod go-w {folder}",
        )


def _owner(path: Path, st: os.stat_result, what: str) -> None:
    """Owned by this user or root (root itself may use the service user's keys)."""
    if os.geteuid() != 0 and st.st_uid not in (0, os.geteuid()):
        raise KeyFileError(
            f"{what} {path} is owned by uid {st.st_uid}, not by this user or root: "
            "that user could replace it",
            f"chown {os.geteuid()} {path}",
        )


def credential_path(path: Path, name: str | None = None) -> Path:
    """systemd's credential `name` (default: the file's own name) when the service was started
    with LoadCredential= and holds it, else `path` itself."""
    cred = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred:
        cand = Path(cred) / (name or Path(path).name)
        if cand.is_file():
            return cand
    return Path(path)


def read_private(
    path: Path, what: str, missing_fix: str, credential: str | None = None, check: bool = True
) -> bytes:
    """A secret's bytes (a key, a token, a password): systemd's credential when the service has
    one, else the file, refused when others could read or replace it. Every way it can fail is
    a KeyFileError that names the file and the fix, never a bare OSError."""
    path = Path(path)
    real = credential_path(path, credential)
    try:
        if check and real == path:
            check_private_key(path, what)
        return real.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist", missing_fix) from None
    except PermissionError:
        raise KeyFileError(
            f"{what} {real} cannot be read by this user (uid {os.geteuid()})",
            f"run as the gate's service user or root, or `chown {os.geteuid()} {real}`",
        ) from None
    except OSError as e:
        raise KeyFileError(f"{what} {path}: {e.strerror}", missing_fix) from None


def check_private_key(path: Path, what: str = "key file") -> os.stat_result:
    """A secret key: readable and writable by its owner only, in a folder others cannot write."""
    path = Path(path)
    st = os.stat(path)
    if _credential(path):
        return st
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{what} {path} has loose permissions {mode:04o}: {_who(mode, 0o077)} can "
            f"{'read' if mode & 0o044 else 'change'} it",
            f"chmod 600 {path}",
        )
    _owner(path, st, what)
    check_dir(path, what)
    return st


def check_public_key(path: Path, what: str = "public key") -> os.stat_result:
    """A public key others may read but never change: not group/world-writable, nor its folder."""
    path = Path(path)
    st = os.stat(path)
    if _credential(path):
        return st
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise KeyFileError(
            f"{what} {path} is writable by {_who(mode, 0o022)} (mode {mode:04o}): anyone on "
            "this machine could replace it with their own",
            f"chmod go-w {path}",
        )
    _owner(path, st, what)
    check_dir(path, what)
    return st


def write_secret(path: Path, text: str, exists_hint: str) -> None:
    """Write a new secret file whole-or-nothing (0600, `write_atomic`), so a crash never leaves
    half a key; refused if the name exists (never overwrite a key)."""
    path = Path(path)
    try:
        make_private_dirs(path.parent)
        write_atomic(path, text, 0o600, overwrite=False)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists", exists_hint) from None
    except OSError as e:  # a folder this user may not write, or a full disk: no half key
        raise KeyFileError(
            f"key file {path} cannot be written: {e.strerror or e} (in {path.parent})",
            "run it as the user that owns the folder (e.g. sudo -u edge-gate), or give a path "
            "in a folder it may write",
        ) from None
