"""Enrolment defects: one person's bad input must not stop a folder import."""

from __future__ import annotations

import pytest

from edge.gallery.bulk import UNREADABLE_IMAGES, enroll_folder
from edge.gallery.crypto import init_key
from edge.gallery.enroll import UNREADABLE
from edge.gallery.store import Gallery

from .test_enroll_bulk import CONSENT, GeneratedFaces, photos


@pytest.fixture
def gal(tmp_path):
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        yield g


def test_a_broken_clip_in_one_folder_does_not_stop_the_import(tmp_path, gal):
    """A clip that does not open in one person's folder is left out and listed; before, its
    EnrollError ended the whole import at that folder, and every re-run stopped there again."""
    pipe, folder = GeneratedFaces(), tmp_path / "passes"
    photos(folder, "alice", 0, 3)
    (folder / "bob").mkdir()
    (folder / "bob" / "clip.mp4").write_bytes(b"not a video at all")
    photos(folder, "carol", 2, 3)
    r = enroll_folder(gal, pipe, folder, CONSENT, threshold=0.8)
    assert sorted(r.enrolled) == ["alice", "carol"]
    assert r.refused == {"bob": UNREADABLE_IMAGES}
    assert [(s.reason, s.source.endswith("clip.mp4")) for s in r.skipped] == [(UNREADABLE, True)]
