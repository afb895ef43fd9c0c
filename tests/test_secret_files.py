"""Every secret (gallery key, issuer key, pretix token, broker password, console secret) is read
one way (edge/keyfiles.py: read_private): systemd's credential or a file only its owner can read
or replace, and each way that fails is a KeyFileError naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import tickets as tk
from edge.console.auth import load_secret
from edge.errors import KeyFileError
from edge.gallery.crypto import init_key, load_key
from edge.pretix.api import read_token


def _private_dir(tmp_path: Path) -> Path:
    d = tmp_path / "secrets"
    d.mkdir(mode=0o700)
    return d


def test_a_key_the_user_cannot_read_is_a_key_file_error(tmp_path, monkeypatch):
    d = _private_dir(tmp_path)
    key = d / "gallery.key"
    init_key(key)
    issuer, _ = tk.keygen(d)
    real_read = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self in (key, issuer):  # what a root-owned 0600 file gives the service user
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    for load in (lambda: load_key(key), lambda: tk.load_private(issuer)):
        with pytest.raises(KeyFileError, match="cannot be read by this user") as e:
            load()
        assert "chown" in e.value.hint


def test_a_folder_where_a_key_should_be_is_a_key_file_error(tmp_path):
    d = _private_dir(tmp_path)
    (d / "gallery.key").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="gallery.key"):
        load_key(d / "gallery.key")


def test_a_secret_in_a_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    """Someone who can write the folder can swap the file: a console secret so swapped would
    let them mint an administrator's session cookie."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    d = _private_dir(tmp_path)
    token = d / "pretix.token"
    token.write_text("tok-1\n")
    token.chmod(0o600)
    assert read_token(token) == "tok-1"
    secret = load_secret(d / "console.secret")  # created on first use
    assert load_secret(d / "console.secret") == secret
    d.chmod(0o770)
    for read in (lambda: read_token(token), lambda: load_secret(d / "console.secret")):
        with pytest.raises(KeyFileError, match="writable by group") as e:
            read()
        assert e.value.hint == f"chmod go-w {d}"


def test_systemds_credential_is_read_in_place_of_the_file(tmp_path, monkeypatch):
    d = _private_dir(tmp_path)
    token = d / "pretix.token"
    token.write_text("tok-file\n")
    token.chmod(0o644)  # loose, but not read at all when systemd hands the credential over
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pretix.token").write_text("tok-cred\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_token(token) == "tok-cred"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(KeyFileError, match="loose permissions 0644"):
        read_token(token)
