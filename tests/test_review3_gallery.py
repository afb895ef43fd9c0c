"""Gallery defects found in review: what a running gate matches after the file changed under it."""

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
