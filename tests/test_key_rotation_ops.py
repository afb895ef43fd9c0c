"""`keys rotate` under the documented model: root rotates the service's key, the gate reloads."""

from __future__ import annotations

import os

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from edge.errors import KeyFileError
from edge.gallery import keys as keys_mod
from edge.gallery.crypto import init_key, load_key
from edge.gallery.store import Consent, Gallery
from edge.gate.audit import AuditLog

from .gallery_helpers import cli
from .helpers import ListSource, enroll_lin, make_config

SERVICE_UID = 65534  # "nobody": stands in for the edge-gate service user


def _gallery(tmp_path, dim=128):
    key = init_key(tmp_path / "g.key")
    v = np.random.default_rng(0).standard_normal((3, dim)).astype(np.float32)
    with Gallery(tmp_path / "g.db", key) as g:
        g.add_person(
            "A", Consent("v1"), list(v / np.linalg.norm(v, axis=1, keepdims=True)), "m", "v"
        )


def test_rotation_without_write_access_is_a_clear_error(tmp_path, monkeypatch, capsys):
    _gallery(tmp_path)
    monkeypatch.setattr(keys_mod.os, "access", lambda *a, **k: False)
    with pytest.raises(KeyFileError, match="not writable") as e:
        keys_mod.rotate_key(tmp_path / "g.db", tmp_path / "g.key")
    assert "sudo edge-gate keys rotate" in e.value.hint
    assert load_key(tmp_path / "g.key")  # untouched


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")
def test_root_rotation_keeps_the_service_users_ownership_and_is_audited(tmp_path, capsys):
    _gallery(tmp_path)
    for f in (tmp_path / "g.key", tmp_path / "g.db"):
        os.chown(f, SERVICE_UID, SERVICE_UID)
    (tmp_path / "gate.toml").write_text(f'[audit]\npath = "{tmp_path / "audit.db"}"\n')
    rc, out, err = cli(
        capsys, "keys", "rotate", "--config", str(tmp_path / "gate.toml"),
        "--db", str(tmp_path / "g.db"), "--key-file", str(tmp_path / "g.key"),
    )  # fmt: skip
    assert rc == 0, err
    assert "back up" in out
    assert "systemctl reload edge-gate" in out
    owned = {f.name: os.stat(f).st_uid for f in tmp_path.glob("g.*")}
    assert owned["g.key"] == SERVICE_UID
    assert {uid for name, uid in owned.items() if name.startswith("g.db")} == {SERVICE_UID}
    with AuditLog(tmp_path / "audit.db") as log:
        (rec,) = log.records("keys")
    assert rec.reason == "rotated"
    assert "->" in rec.detail


def test_a_running_gate_picks_up_a_rotated_key_on_reload(tmp_path, fixtures, pipeline):
    from edge.gate.daemon import Gate

    cfg = make_config(tmp_path)
    enroll_lin(cfg, fixtures, pipeline)
    with Gate(cfg, source=ListSource([]), pin_factory=MockFactory()) as gate:
        assert gate.face is not None
        keys_mod.rotate_key(cfg.resolve(cfg.gallery.db), cfg.resolve(cfg.gallery.key_file))
        gate.reload()
        assert gate.reload_error == ""
        assert gate.face is not None  # reopened with the new key from the file
