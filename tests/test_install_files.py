"""How the product is installed and how its secrets and biometric files are kept on disk: the
units, the installer and the files the stores create."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from edge import config as config_mod
from edge.console.users import UserStore
from edge.gallery.crypto import init_key
from edge.gallery.store import Gallery
from tests.helpers import installed_gate_toml

ROOT = config_mod.PROJECT_ROOT


def _installed_config(tmp_path: Path) -> config_mod.Config:
    """gate.toml as install-pi.sh writes it, loaded."""
    p = tmp_path / "gate.toml"
    p.write_text(installed_gate_toml())
    return config_mod.load(p)


def _writable_folders(unit: str) -> list[Path]:
    """The folders a unit under ProtectSystem=strict may create files in."""
    text = (ROOT / "systemd" / unit).read_text()
    roots = [Path("/var/lib") / d for d in re.findall(r"^StateDirectory=(\S+)$", text, re.M)]
    for line in re.findall(r"^ReadWritePaths=(.+)$", text, re.M):
        roots += [Path(p.lstrip("-")) for p in line.split()]
    return roots


def test_sync_may_write_the_folder_of_the_revocation_list_the_installer_configures(tmp_path):
    """Before: the installer put the lane's revocation list in /etc/edge-gate, which the service
    user may not write (root's 0750 folder) and edge-gate-sync.service opened for that one file
    only; the list is replaced atomically (a temp file and a lock file beside it), so every
    revocation the office sent failed at the lane. Now the list lives in the state directory,
    which the service user owns and sync may write."""
    cfg = _installed_config(tmp_path)
    folder = Path(cfg.tickets.revocation_list).parent
    roots = _writable_folders("edge-gate-sync.service")
    assert any(folder == r or r in folder.parents for r in roots), (folder, roots)
    script = (ROOT / "scripts" / "install-pi.sh").read_text()
    # the list is made (the gate refuses a missing one), owned by the service user, once its
    # folder exists (0700, the service user's)
    create = f"install -m 0644 -o edge-gate -g edge-gate /dev/null {cfg.tickets.revocation_list}"
    assert create in script
    made = script.index("install -d -m 0700 -o edge-gate -g edge-gate /var/lib/edge-gate")
    assert made < script.index(create)


def _loose(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode) & 0o077


def test_a_new_database_and_its_log_are_private_whatever_the_umask(tmp_path):
    """Before: a new staff accounts file was made with the process's umask (0644) and only then
    set 0600, and its write-ahead log and index, made meanwhile, stayed 0644 while the console
    ran, with every password hash written to them readable by all; a gallery made by `enroll`
    from a shell was 0644 as well. Now every store's file is made 0600 before SQLite opens it,
    and SQLite gives its log and index the same mode."""
    old = os.umask(0o022)
    try:
        users = UserStore(tmp_path / "office" / "console.db")
        users.add("alice", "admin", "a long enough password 7")
        gallery = Gallery(tmp_path / "gallery.db", init_key(tmp_path / "gallery.key"))
    finally:
        os.umask(old)
    try:
        for name in ("office/console.db", "gallery.db"):
            for side in ("", "-wal", "-shm"):
                f = tmp_path / f"{name}{side}"
                assert f.exists(), f
                assert _loose(f) == 0, (f, oct(f.stat().st_mode))
    finally:
        users.close()
        gallery.close()


def test_every_unit_that_reads_the_gallery_key_makes_no_core_dump():
    """Before: only edge-gate.service set LimitCORE=0; edge-gate-purge.service (the gallery key
    as its credential) and edge-gate-sync.service (the gallery key and the site key, and the
    templates of the enrollments it applies) could leave a core dump holding them. Now every
    unit that reads the gallery key makes none."""
    for unit in ("edge-gate.service", "edge-gate-purge.service", "edge-gate-sync.service"):
        text = (ROOT / "systemd" / unit).read_text()
        assert re.search(r"^LimitCORE=0$", text, re.M), unit


def test_the_readme_makes_the_pretix_token_where_the_installer_lets_it_be_written():
    """Before: the README ran `pretix init-device` as the service user, which may not create a
    file in /etc/edge-gate (root's, 0750: the installer makes it so), so the documented step
    stopped with "cannot write the pretix token file". Now it runs as root and gives the token
    to the service user, who reads it for `pretix sync --once`."""
    script = (ROOT / "scripts" / "install-pi.sh").read_text()
    assert "install -d -m 0750 -o root -g edge-gate /etc/edge-gate" in script
    readme = (ROOT / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines() if "pretix init-device --config /etc/" in ln]
    assert "sudo -u edge-gate" not in line, line
    assert "chown edge-gate:edge-gate /etc/edge-gate/pretix.token" in readme
