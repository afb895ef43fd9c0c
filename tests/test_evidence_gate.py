"""The gate's side of issue 20: a flood of junk codes costs one audit record per window (row 9,
audit side), a gallery restored from before a `forget` makes the gate ticket-only, and the
evidence chains are kept up while it runs."""

from __future__ import annotations

import shutil
import sqlite3
import time

from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge.gallery.crypto import load_key
from edge.gallery.store import Gallery
from edge.gate.audit import AuditLog, open_audit
from edge.gate.daemon import Gate

from .gallery_helpers import CONSENT, unit
from .helpers import ListSource, empty_gallery, make_config


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def scan(gate: Gate, texts: list[str]) -> None:
    """Codes read by the lane's scanner, decided and acted on as the daemon's loop does."""
    for text in texts:
        gate._scan_q.put(text)
        for d in gate.process(None):
            gate.act(d)


def audit_rows(cfg) -> list[tuple[str, str]]:
    with AuditLog(cfg.resolve(cfg.audit.path), cfg.audit.retention_days) as log:
        return [(r.reason, r.detail) for r in log.records("decision")]


def test_a_flood_of_junk_codes_is_one_record_per_window(tmp_path):
    """Row 9: each junk QR code cost an fsync'd audit record (and a retained broker message)."""
    cfg = make_config(tmp_path, 'mode = "ticket-only"')
    cfg = config_mod.override(cfg, audit={"junk_window_s": 60.0})
    clock = Clock(time.time())
    with Gate(cfg, source=ListSource([]), pin_factory=MockFactory(), clock=clock) as gate:
        scan(gate, [f"JUNK-{i}" for i in range(300)])  # all inside one window
        clock.t += 61
        gate.tick(0.0)  # the window ended: its one record is written
        scan(gate, [f"EG1.NOT-A-TICKET-{i}" for i in range(5)])
    rows = audit_rows(cfg)
    junk = [r for r in rows if r[0] == "junk_codes"]
    assert [r for r in rows if r[0] == "malformed"] == []
    assert len(junk) == 2, rows
    assert junk[0][1].startswith("300 unreadable or invalid codes in 60 s (malformed 300)")
    assert junk[1][1].startswith("5 unreadable or invalid codes")
    with open_audit(cfg, "use") as log:  # the gate keyed what it wrote
        rep = log.verify()
        assert (rep.ok, rep.keyed) == (True, True), rep


def test_junk_window_0_records_every_code(tmp_path):
    cfg = config_mod.override(
        make_config(tmp_path, 'mode = "ticket-only"'), audit={"junk_window_s": 0.0}
    )
    with Gate(cfg, source=ListSource([]), pin_factory=MockFactory()) as gate:
        scan(gate, [f"JUNK-{i}" for i in range(4)])
    assert [r[0] for r in audit_rows(cfg)].count("malformed") == 4


def test_junk_window_out_of_range_is_refused(tmp_path):
    import pytest

    from edge.errors import ConfigError

    p = tmp_path / "gate.toml"
    p.write_text("[audit]\njunk_window_s = -5\n")
    with pytest.raises(ConfigError, match="audit.junk_window_s"):
        config_mod.load(p)


def test_gate_on_a_gallery_restored_from_before_a_forget_is_ticket_only(tmp_path):
    """Forget then restore of an old backup admits nobody: the face path does not load."""
    cfg = make_config(tmp_path)
    empty_gallery(cfg)
    db, key = cfg.resolve(cfg.gallery.db), load_key(cfg.resolve(cfg.gallery.key_file))
    import numpy as np

    with Gallery(db, key) as g:
        pid = g.add_person("Ada Park", CONSENT, unit(np.random.default_rng(1), 3, 192), "m", "1")
    bak = tmp_path / "gallery.bak"
    a, b = sqlite3.connect(db), sqlite3.connect(bak)
    a.backup(b)
    a.close()
    b.close()
    with Gallery(db, key) as g:
        g.forget(pid)
    shutil.copyfile(bak, db)
    with Gate(cfg, source=ListSource([]), pin_factory=MockFactory()) as gate:
        assert gate.face is None
        assert "ticket-only" in gate.degraded
        assert "restored from an older copy" in gate.degraded
