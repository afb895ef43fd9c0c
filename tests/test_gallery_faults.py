"""Gallery defects: what a running gate matches after the file changed under it."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import EdgeGateError, GalleryError
from edge.gallery.crypto import init_key, load_key
from edge.gallery.keys import rotate_key
from edge.gallery.matcher import LiveMatcher
from edge.gallery.store import Gallery

from .gallery_helpers import CONSENT, unit


def matched(live: LiveMatcher, probes: np.ndarray) -> list[str | None]:
    """Who the gate's matcher lets in for these faces; an error lets nobody in."""
    try:
        return [i.person_id for i in live.identify(probes)]
    except EdgeGateError:
        return [None] * len(probes)


def test_a_person_forgotten_after_a_key_rotation_is_not_matched_by_the_running_gate(tmp_path):
    """`keys rotate` while the gate runs, then `forget`: the gate's key no longer opens the new
    generation, so its matcher cannot reload; before, it went on matching from the templates
    it held, and the forgotten person kept being let in by face until the next reload."""
    rng = np.random.default_rng(7)
    faces = unit(rng, 2)
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        stays = g.add_person("Stays", CONSENT, [faces[0]], "m", "v")
        gone = g.add_person("Gone", CONSENT, [faces[1]], "m", "v")
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as gate:
        live = LiveMatcher(gate, "m", 0.9, 0.0)
        assert matched(live, faces) == [stays, gone]
        rotate_key(tmp_path / "g.db", tmp_path / "k.key")
        assert matched(live, faces) == [stays, gone]  # the rotation alone changes nobody
        with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g:
            assert g.forget(gone)
        for _ in range(3):  # every frame after, not only the first
            assert gone not in matched(live, faces)
        with pytest.raises(GalleryError, match="reload"):  # said, with the fix
            live.identify(faces)


def test_a_running_gate_s_gallery_that_its_key_no_longer_opens_says_so_every_time(tmp_path):
    """After `keys rotate` then `forget`, the gate's key no longer opens the gallery's new
    generation: the first frame said so, and closed the gallery's connection with it, so every
    frame after said "Cannot operate on a closed database" instead of naming the key."""
    rng = np.random.default_rng(10)
    faces = unit(rng, 2)
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        g.add_person("Stays", CONSENT, [faces[0]], "m", "v")
        gone = g.add_person("Gone", CONSENT, [faces[1]], "m", "v")
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as gate:
        live = LiveMatcher(gate, "m", 0.9, 0.0)
        rotate_key(tmp_path / "g.db", tmp_path / "k.key")
        with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g:
            assert g.forget(gone)
        for _ in range(3):
            with pytest.raises(GalleryError, match="does not open gallery"):
                live.identify(faces)


FORGET_ON_A_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from edge.errors import GalleryError
from edge.gallery.crypto import load_key
from edge.gallery.store import Gallery

d, pid = Path(sys.argv[1]), sys.argv[2]
g = Gallery(d / "g.db", load_key(d / "k.key"), create=False)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as ENOSPC
room = (d / "g.db.forgotten").stat().st_size + 40  # the next line is cut off mid-way
resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))
try:
    g.forget(pid)
except GalleryError as e:
    print("GalleryError", e)
"""


def test_a_forget_on_a_full_disk_leaves_the_forget_list_readable(tmp_path):
    """The forget list's line is written before the gallery commits; on a full disk (here a
    file size limit) part of it was written and never taken back, so the list no longer
    chained: the gallery then opened nowhere (gate, forget, forget --replay) until the file was
    edited by hand. Now the part line is taken back and the forget is refused with the fix."""
    import subprocess
    import sys

    rng = np.random.default_rng(8)
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        first = g.add_person("First", CONSENT, list(unit(rng, 1)), "m", "v")
        second = g.add_person("Second", CONSENT, list(unit(rng, 1)), "m", "v")
        assert g.forget(first)  # the list has a line to chain onto
    before = (tmp_path / "g.db.forgotten").read_bytes()
    run = subprocess.run(
        [sys.executable, "-c", FORGET_ON_A_FULL_DISK, str(tmp_path), second],
        env=this_checkout(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "GalleryError" in run.stdout, run.stdout + run.stderr
    assert "nothing was erased" in run.stdout and "free" in run.stdout
    assert (tmp_path / "g.db.forgotten").read_bytes() == before
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g:
        assert not g.needs_forget_replay()
        assert [p.id for p in g.people()] == [second]  # nothing was erased
        assert g.forget(second)  # with room again, the forget goes through
        assert g.people() == []


def test_a_pass_renews_although_one_of_the_persons_templates_is_damaged(tmp_path):
    """A renewal re-seals the person's values under a new key of theirs; one template that
    no longer opens (a bad sector, an edit) raised a bare SealError out of it (`pass renew`:
    an internal error), so the pass could not be renewed at all. The damaged value is kept as
    it is, rejected on every read as before, and the rest renews and still matches."""
    import sqlite3

    rng = np.random.default_rng(9)
    faces = unit(rng, 2)
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        pid = g.add_person("Season", CONSENT, list(faces), "m", "v", valid_until=2_000_000_000)
    db = sqlite3.connect(tmp_path / "g.db")
    (tid, blob), _ = db.execute("SELECT id, embedding FROM templates ORDER BY id").fetchall()
    with db:
        db.execute(
            "UPDATE templates SET embedding = ? WHERE id = ?",
            (blob[:20] + bytes([blob[20] ^ 1]) + blob[21:], tid),
        )
    db.close()
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g:
        assert g.templates("m").rejected == 1
        p = g.update_person(pid, valid_until=2_100_000_000)
        assert p.valid_until == 2_100_000_000 and p.intact and p.name == "Season"
        t = g.templates("m")
        assert (t.rejected, list(t.person_ids)) == (1, [pid])  # the intact one still opens
        who = [i.person_id for i in LiveMatcher(g, "m", 0.9, 0.0).identify(faces)]
        assert pid in who


def this_checkout() -> dict[str, str]:
    """The environment for a child Python that imports this checkout's `edge`."""
    import os
    from pathlib import Path

    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@pytest.mark.parametrize("column", ["NULL", "4102444800"])
def test_purge_removes_a_row_whose_validity_column_no_longer_matches_its_sealed_copy(
    tmp_path, column
):
    """A pass that expired long ago, whose clear `valid_until` column was then edited (to no
    expiry, or to 2100): it never matches, but the purge selected on the column alone and kept
    its templates past retention. Its validity can no longer be vouched for, so it goes."""
    rng = np.random.default_rng(11)
    now = 1_800_000_000
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        edited = g.add_person("Edited", CONSENT, list(unit(rng, 2)), "m", "v",
                              valid_until=now - 400 * 86400)  # fmt: skip
        recent = g.add_person("Recent", CONSENT, [unit(rng, 1)[0]], "m", "v",
                              valid_until=now - 5 * 86400)  # fmt: skip
        forever = g.add_person("Forever", CONSENT, [unit(rng, 1)[0]], "m", "v")
        g.conn.execute(f"UPDATE people SET valid_until = {column} WHERE id = ?", (edited,))
        assert g.purge_expired(now, 30) == [edited]
        assert {p.id for p in g.people()} == {recent, forever}
        left = g.conn.execute("SELECT count(*) FROM templates WHERE person_id = ?", (edited,))
        assert left.fetchone()[0] == 0
        assert g.purge_expired(now, 30) == []  # the intact rows are judged as before
