"""How the product is installed and how its secrets and biometric files are kept on disk: the
units, the installer and the files the stores create."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from edge import config as config_mod
from edge.console.users import UserStore
from edge.gallery.crypto import init_key
from edge.gallery.store import Gallery
from edge.tickets.revocation import load_revocations
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


def _service_settings(unit: Path) -> dict[str, str]:
    """A unit's [Service] settings, each key's last assignment (the one in force for these
    single-valued settings)."""
    settings: dict[str, str] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


# The sandbox every service of the gate's user runs in (the lane screen, a kiosk browser under
# its own user, is not one of them).
SANDBOX = {
    "User": "edge-gate",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "SystemCallErrorNumber": "EPERM",
    "IPAddressDeny": "any",
    "LimitCORE": "0",
}


def _sandbox_gaps(unit: Path) -> dict[str, str | None]:
    """The sandbox settings a unit lacks or weakens, with what it has instead (None: absent);
    a unit other than the gate's must also see no device."""
    settings = _service_settings(unit)
    want = dict(SANDBOX)
    if unit.name == "edge-gate.service":
        want["DevicePolicy"] = "closed"  # the camera, GPIO and the scanner only
    else:
        want["PrivateDevices"] = "yes"
    return {k: settings.get(k) for k, v in want.items() if settings.get(k) != v}


def test_every_service_of_the_gate_user_runs_in_the_same_sandbox():
    """Before: edge-gate-purge.service, which holds the gallery key and opens the gallery and the
    audit log, could read the kernel log, set the clock and the host name, see every process,
    take realtime scheduling and make SUID files, and had no IP deny list; and
    edge-gate-pretix-sync.service, which holds the shop's API token, could leave it in a core
    dump. Now all four services of the gate's user have the same sandbox (the gate's devices
    aside: the others see none), and the purge has no network at all."""
    for unit in (
        "edge-gate.service",
        "edge-gate-sync.service",
        "edge-gate-purge.service",
        "edge-gate-pretix-sync.service",
    ):
        assert _sandbox_gaps(ROOT / "systemd" / unit) == {}, unit
    purge = _service_settings(ROOT / "systemd" / "edge-gate-purge.service")
    assert purge["PrivateNetwork"] == "yes"
    assert purge["RestrictAddressFamilies"] == "AF_UNIX"


def test_a_unit_that_drops_or_weakens_a_sandbox_setting_is_caught(tmp_path):
    """The check reads the settings as systemd does: one removed, or set again further down,
    is a gap."""
    text = (ROOT / "systemd" / "edge-gate-purge.service").read_text()
    unit = tmp_path / "edge-gate-purge.service"
    unit.write_text(text.replace("\nProtectProc=invisible\n", "\n"))
    assert _sandbox_gaps(unit) == {"ProtectProc": None}
    unit.write_text(text.replace("\nLimitCORE=0\n", "\nLimitCORE=0\nLimitCORE=infinity\n"))
    assert _sandbox_gaps(unit) == {"LimitCORE": "infinity"}


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


def _migration() -> tuple[str, list[str]]:
    """install-pi.sh's migrate_revocation_list function and the arguments the script calls it
    with (the installed config, the old list, the list in the state directory, the owner)."""
    script = (ROOT / "scripts" / "install-pi.sh").read_text()
    func = re.search(r"^migrate_revocation_list\(\) \{.*?^\}$", script, re.M | re.S)
    call = re.search(r"^migrate_revocation_list (.+)$", script, re.M)
    assert func and call, "install-pi.sh does not migrate a revocation list left in /etc"
    return func.group(0), shlex.split(call.group(1))


def _migrate(
    func: str, conf: Path, old: Path, new: Path, owner: str = ""
) -> subprocess.CompletedProcess:
    """The installer's migration against a temporary root, the files owned by this user."""
    argv = _migrate_argv(func, conf, old, new, owner)
    return subprocess.run(argv, capture_output=True, text=True)


def _migrate_argv(func: str, conf: Path, old: Path, new: Path, owner: str = "") -> list[str]:
    owner = owner or pwd.getpwuid(os.getuid()).pw_name
    code = f'set -euo pipefail\n{func}\nmigrate_revocation_list "$@"\n'
    return ["bash", "-c", code, "migrate", str(conf), str(old), str(new), owner]


def _lists(tmp_path: Path, named: str, old_text: str, new_text: str) -> tuple[Path, Path, Path]:
    """An installed gate.toml naming the `named` list ("old" in etc/ or "new" in state/), both
    lists written: (old, new, conf)."""
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state.mkdir()
    old, new, conf = etc / "revoked.txt", state / "revoked.txt", etc / "gate.toml"
    path = old if named == "old" else new
    conf.write_text(installed_gate_toml().replace("/var/lib/edge-gate/revoked.txt", str(path)))
    old.write_text(old_text)
    new.write_text(new_text)
    return old, new, conf


def _tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_installer_calls_the_migration_for_the_installed_config_and_list(tmp_path):
    """The migration is run on /etc/edge-gate/gate.toml, from the list an earlier installer
    configured to the one it configures now, for the service user, once the state folder and its
    list exist, after the new units are loaded (an earlier sync unit names the old list in
    ReadWritePaths= and would not start without it) and before any unit is enabled."""
    script = (ROOT / "scripts" / "install-pi.sh").read_text()
    _, args = _migration()
    new = _installed_config(tmp_path).tickets.revocation_list
    assert args == ["/etc/edge-gate/gate.toml", "/etc/edge-gate/revoked.txt", new, "edge-gate"]
    call = script.index("\nmigrate_revocation_list /etc/")
    assert script.index(f"/dev/null {new}\n") < call
    assert script.index("/etc/systemd/system/\n") < script.index("systemctl daemon-reload") < call
    assert call < script.index("systemctl enable")


@pytest.mark.parametrize("newer", ["T-2\nT-3\n", None], ids=["newer-list", "no-list"])
def test_a_reinstall_moves_a_revocation_list_left_in_etc_into_the_state_directory(tmp_path, newer):
    """Before: a lane installed when the list lived in /etc/edge-gate kept that gate.toml on
    every later run of the installer, and sync (ProtectSystem=strict, root's folder) could never
    replace the list there, so no office revocation reached the lane; the fix was a manual move.
    Now the installer joins the old list's lines to the list in the state directory (no id lost
    from either), gives it the service user and 0644, points gate.toml at it (that one line),
    and removes the old list; a second run changes nothing."""
    func, _ = _migration()
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state.mkdir()
    new_default = _installed_config(tmp_path).tickets.revocation_list
    old, new, conf = etc / "revoked.txt", state / "revoked.txt", etc / "gate.toml"
    before = installed_gate_toml().replace(
        f'revocation_list = "{new_default}"', f'revocation_list = "{old}"'
    )
    assert before != installed_gate_toml()
    conf.write_text(before)
    conf.chmod(0o640)
    old.write_text("T-1\n# sold twice\nT-2")  # no newline at the end
    (etc / ".revoked.txt.lock").touch()  # left by a `ticket revoke` as root
    if newer is not None:
        new.write_text(newer)  # revoked there since (by hand)
        new.chmod(0o600)
    p = _migrate(func, conf, old, new)
    assert p.returncode == 0, p.stderr
    assert "restart edge-gate and edge-gate-sync" in p.stdout
    want = (newer or "") + ("T-1\n# sold twice\n" if newer else "T-1\n# sold twice\nT-2\n")
    assert new.read_text() == want
    assert load_revocations(new) == ({"T-1", "T-2", "T-3"} if newer else {"T-1", "T-2"})
    assert stat.S_IMODE(new.stat().st_mode) == 0o644
    assert new.stat().st_uid == os.getuid()
    # no temp file left; the list's lock file stays (as after any `ticket revoke`)
    assert sorted(f.name for f in state.iterdir()) == [".revoked.txt.lock", "revoked.txt"]
    assert sorted(f.name for f in etc.iterdir()) == ["gate.toml"]  # the old list and its lock
    assert config_mod.load(conf).tickets.revocation_list == str(new)
    changed = [
        (a, b)
        for a, b in zip(before.splitlines(), conf.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert changed == [(f'revocation_list = "{old}"', f'revocation_list = "{new}"')]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    settled = _tree(tmp_path)
    p = _migrate(func, conf, old, new)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert _tree(tmp_path) == settled


def test_the_migration_leaves_an_install_that_names_the_state_directory_alone(tmp_path):
    """A gate.toml that already names the list in the state directory (a new install, or one
    migrated before) is not touched, nor is either list."""
    func, _ = _migration()
    old, new, conf = _lists(tmp_path, "new", "T-9\n", "T-1\n")
    settled = _tree(tmp_path)
    p = _migrate(func, conf, old, new)
    assert p.returncode == 0, p.stderr
    assert _tree(tmp_path) == settled
    assert f"{old} is not the lane's revocation list" in p.stdout  # named, never read


def test_a_migration_that_fails_midway_leaves_no_temp_file_and_gate_toml_as_it_was(tmp_path):
    """A step that fails (here: chown to a user that does not exist) stops the installer; the
    merged list it was writing beside the list is removed, the list and gate.toml unchanged."""
    func, _ = _migration()
    old, new, conf = _lists(tmp_path, "old", "T-1\n", "T-2\n")
    settled = _tree(tmp_path)
    p = _migrate(func, conf, old, new, owner="no-such-user-here")
    assert p.returncode != 0
    locks = {"etc/.revoked.txt.lock", "state/.revoked.txt.lock"}  # empty, as a revoke leaves
    assert {k: v for k, v in _tree(tmp_path).items() if k not in locks} == settled
    assert all((tmp_path / k).stat().st_size == 0 for k in locks)
    # and no revoked.txt.XXXXXXXX beside the list


@pytest.mark.parametrize("held", ["old", "new"])
def test_a_revocation_written_while_the_migration_runs_is_kept(tmp_path, held):
    """Before, the migration read both lists without their lock: a `ticket revoke` (or sync)
    writing either list meanwhile lost its id when the merged list replaced them. Now the
    migration holds both locks while merging: a writer holding one is waited for."""
    func, _ = _migration()
    old, new, conf = _lists(tmp_path, "old", "T-1\n", "T-2\n")
    target = old if held == "old" else new
    fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a revoke in the middle of its read-modify-write
        argv = _migrate_argv(func, conf, old, new)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        assert proc.poll() is None, "the migration did not wait for the list's lock"
        target.write_text(target.read_text() + "T-LATE\n")  # the revoke lands, then unlocks
    finally:
        os.close(fd)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert load_revocations(new) == {"T-1", "T-2", "T-LATE"}
    assert not old.exists()
