"""Gate daemon defects: no way round a fleet lane's face check."""

from __future__ import annotations

import time

from edge import config as config_mod
from edge.fleet.state import FleetState
from edge.lab.workspace import write_member

from .console_harness import NoFrames


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
    from argparse import Namespace

    from edge.cli.hints import for_this_run

    # the command is quoted, so the operator's own --config is put in it (not a placeholder)
    fix = for_this_run(c.fix, Namespace(config="/srv/lane 2.toml"))
    assert "`edge-gate forget --replay --config '/srv/lane 2.toml'`" in fix, fix


class GalleryFaces:
    """A face path over a real gallery: frames whose first pixel is set show the enrolled face,
    the others nobody (no match is asked for, as FaceStack does for a frame without a face)."""

    def __init__(self, live, face):
        self.live, self.face = live, face

    def observe(self, image, t=0.0):
        if not image[0, 0, 0]:
            return ()
        self.live.identify(self.face[None, :])
        return ()

    def gallery_moved(self):
        return ""

    def close(self):
        pass


def test_a_gallery_that_cannot_reload_is_logged_once_a_minute_not_every_frame(tmp_path, caplog):
    """After `keys rotate` then `forget` the running gate's matcher cannot reload the gallery:
    every frame with a face fails (closed). Frames without a face in between keep the face path
    from counting as broken, so it logged an error on every frame with a face; now the first,
    then one line a minute with the count of frames since, and another error at once."""
    import dataclasses
    import logging

    import numpy as np
    from gpiozero.pins.mock import MockFactory

    from edge.gallery.crypto import init_key, load_key
    from edge.gallery.keys import rotate_key
    from edge.gallery.matcher import LiveMatcher
    from edge.gallery.store import Gallery
    from edge.gate.daemon import Gate
    from edge.gate.sources import Frame

    from .gallery_helpers import CONSENT, unit
    from .helpers import make_config

    face = unit(np.random.default_rng(9), 1)[0]
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        pid = g.add_person("Gone", CONSENT, [face], "m", "v")
    held = Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False)
    live = LiveMatcher(held, "m", 0.9, 0.0)
    rotate_key(tmp_path / "g.db", tmp_path / "k.key")
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g:
        assert g.forget(pid)

    now = [1000.0]
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    gate = Gate(cfg, source=NoFrames(), pin_factory=MockFactory(), clock=lambda: now[0])
    gate.face = GalleryFaces(live, face)  # type: ignore[assignment]
    gate.policy.params = dataclasses.replace(gate.policy.params, face_enabled=True, liveness=False)
    seen, nobody = np.ones((120, 160, 3), np.uint8), np.zeros((120, 160, 3), np.uint8)

    def frames(n: int, start: int) -> list[str]:
        caplog.clear()
        for i in range(start, start + n):
            gate.process(Frame(seen if i % 2 == 0 else nobody, i / 10, i))
            now[0] += 1.0
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

    with caplog.at_level(logging.INFO, logger="edge.gate.daemon"):
        first = frames(40, 0)  # 20 frames with a face, in 40 seconds
        assert len(first) == 1 and "cannot be read again" in first[0]
        assert not gate.degraded  # the frames without a face in between
        later = frames(40, 40)  # 20 more: the minute is over at frame 60
        assert len(later) == 1 and "cannot be read again" in later[0]
        assert "29 more frames" in later[0]  # those with a face of frames 2..58

        class Broken:
            def observe(self, image, t=0.0):
                raise RuntimeError("interpreter lost")

            def close(self):
                pass

        gate.face = Broken()  # type: ignore[assignment]
        other = frames(2, 80)
        assert len(other) == 1 and "interpreter lost" in other[0]
    gate.close()
    held.close()


def test_a_gallery_that_cannot_reload_makes_the_gate_ticket_only_despite_empty_frames(tmp_path):
    """Every frame with a face fails (the gallery cannot be read again), every frame without a
    face succeeds: the empty frames reset the count of failures in a row, so the gate refused
    every face for ever but never said it was ticket-only. Frames with a face are counted."""
    import dataclasses

    import numpy as np
    from gpiozero.pins.mock import MockFactory

    from edge.gallery.crypto import init_key, load_key
    from edge.gallery.keys import rotate_key
    from edge.gallery.matcher import LiveMatcher
    from edge.gallery.store import Gallery
    from edge.gate import daemon
    from edge.gate.daemon import Gate
    from edge.gate.policy import FaceSeen
    from edge.gate.sources import Frame

    from .gallery_helpers import CONSENT, unit
    from .helpers import make_config

    class Judged(GalleryFaces):
        def observe(self, image, t=0.0):
            if not image[0, 0, 0]:
                return ()
            (m,) = self.live.identify(self.face[None, :])
            return (FaceSeen(m.person_id, m.score, 0.3, (0.5, 0.5), True),)

    face = unit(np.random.default_rng(12), 1)[0]
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        pid = g.add_person("Gone", CONSENT, [face], "m", "v")
    held = Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False)
    live = LiveMatcher(held, "m", 0.9, 0.0)
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    gate = Gate(cfg, source=NoFrames(), pin_factory=MockFactory())
    gate.face = Judged(live, face)  # type: ignore[assignment]
    gate.policy.params = dataclasses.replace(gate.policy.params, face_enabled=True, liveness=False)
    seen, nobody = np.ones((120, 160, 3), np.uint8), np.zeros((120, 160, 3), np.uint8)
    n = daemon.FACE_FAILURES_TO_DEGRADE
    for i in range(2 * n - 2):  # a judged face, then nobody: the face path works
        gate.process(Frame(seen if i % 2 == 0 else nobody, i / 10, i))
    assert not gate.degraded
    rotate_key(tmp_path / "g.db", tmp_path / "k.key")
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g:
        assert g.forget(pid)
    for i in range(2 * n - 2, 4 * n - 2):  # n failing frames with a face, n empty between
        gate.process(Frame(seen if i % 2 == 0 else nobody, i / 10, i))
    assert gate.degraded.startswith("ticket-only")
    assert "ticket-only" in gate.status_text()
    assert gate.face is None and not gate.policy.params.face_enabled
    gate.close()
    held.close()
