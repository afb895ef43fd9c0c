"""Gate daemon defects found in review: no way round a fleet lane's face check."""

from __future__ import annotations

import time

from edge import config as config_mod
from edge.fleet.state import FleetState
from edge.lab.workspace import write_member


class NoFrames:
    state, finished = "ok", True

    def read(self):
        return None

    def close(self):
        pass


def test_a_lane_whose_ledger_does_not_open_still_grants_nobody_by_face_before_the_forget_list(
    office_keys, tmp_path
):
    """A restored lane's ledger refused at start (here: missing) made the gate skip the fleet's
    face check with it, so faces were granted although sync said the office's forget list was
    not applied yet (a backup from before a deletion brings the person back)."""
    from edge.gate.daemon import Gate
    from edge.gate.policy import GRANT, Decision, Via

    m = write_member(tmp_path, "lane1", "mqtt://127.0.0.1:1", "park", office_keys[1])
    cfg = config_mod.load(m.config)
    cfg.resolve(cfg.tickets.ledger).unlink()
    st = FleetState(m.dir / "fleet.db")
    st.put(forget_replay="new epoch 1a2b3c4d: the ledger's outbox went back")
    events: list[dict] = []
    gate = Gate(cfg, on_decision=events.append, source=NoFrames())
    try:
        assert gate.ledger.problem  # tickets refused: the ledger is not there
        gate.act(Decision(time.monotonic(), 1, GRANT, Via.FACE, "P-0123456789abcdef", 0.7, "ok"))
        assert (events[-1]["decision"], events[-1]["reason"]) == ("deny", "forget_replay")
        st.put(forget_replay=None)  # sync applied the list: faces again, tickets still refused
        gate.act(Decision(time.monotonic(), 2, GRANT, Via.FACE, "P-0123456789abcdef", 0.7, "ok"))
        assert events[-1]["decision"] == "grant"
    finally:
        gate.close()
        st.close()


def test_doctor_fails_on_a_gallery_restored_from_before_a_forget(tmp_path):
    """A gallery restored from an older copy admits nobody by face until `forget --replay`
    (the gate runs ticket-only); doctor's gallery check said "N people, M templates", all
    well, so the operator who restored it was not told what the gate needs."""
    import shutil
    import sqlite3

    import numpy as np

    from edge.gallery.crypto import init_key
    from edge.gallery.store import Gallery
    from edge.gate import doctor

    from .gallery_helpers import CONSENT, unit
    from .helpers import make_config

    cfg = make_config(tmp_path)
    db, key = cfg.resolve(cfg.gallery.db), cfg.resolve(cfg.gallery.key_file)
    rng = np.random.default_rng(3)
    with Gallery(db, init_key(key)) as g:
        g.add_person("Stays", CONSENT, list(unit(rng, 1)), "m", "v")
        gone = g.add_person("Gone", CONSENT, list(unit(rng, 1)), "m", "v")
        backup = sqlite3.connect(tmp_path / "backup.db")
        g.conn.backup(backup)  # the operator's nightly copy
        backup.close()
        assert g.forget(gone)
    shutil.copyfile(tmp_path / "backup.db", db)  # restored after a disk fault
    site = doctor.Site(cfg, db, key)
    (c,) = [c for c in doctor.run_checks(site) if c.check == "gallery database"]
    assert c.status == "fail", c
    assert "forget --replay" in c.fix
