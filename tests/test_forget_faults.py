"""Forget defects: a forget list cut by a power loss, replay over many people."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import GalleryError
from edge.gallery.crypto import init_key, load_key
from edge.gallery.store import Gallery

from .gallery_helpers import CONSENT, unit


def three_forgets(tmp_path: Path) -> tuple[list[str], list[bytes], Path]:
    """A gallery of three people forgotten one after the other: (ids, the list's lines, and a
    copy of the gallery as it was before the last forget committed)."""
    rng = np.random.default_rng(21)
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        ids = [g.add_person(n, CONSENT, list(unit(rng, 1)), "m", "v") for n in "ABC"]
        g.forget(ids[0])
        g.forget(ids[1])
    before = tmp_path / "before"
    before.mkdir()
    shutil.copy2(tmp_path / "g.db", before / "g.db")
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g:
        g.forget(ids[2])
    lines = (tmp_path / "g.db.forgotten").read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    return ids, lines, before / "g.db"


def test_a_forget_list_cut_in_its_last_line_drops_that_line_and_names_the_forget_to_redo(
    tmp_path, caplog
):
    """Power lost while `forget` wrote its line: the line has no newline, and the gallery never
    committed the forget (its commit comes after the line). Before, the list no longer chained
    and the gallery opened nowhere (gate, forget, forget --replay) until edited by hand."""
    ids, lines, before = three_forgets(tmp_path)
    shutil.copy2(before, tmp_path / "g.db")  # the forget of C never reached the gallery
    torn = lines[2][: len(lines[2]) // 2]
    assert ids[2].encode() in torn and not torn.endswith(b"\n")
    listed = tmp_path / "g.db.forgotten"
    listed.write_bytes(b"".join(lines[:2]) + torn)
    with (
        caplog.at_level(logging.WARNING, logger="edge.gallery.forgetlist"),
        Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g,
    ):
        assert [p.id for p in g.people()] == [ids[2]]  # still here: run the forget again
        assert not g.needs_forget_replay()
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1
        assert f"run it again: edge-gate forget {ids[2]}" in warned[0]
        assert listed.read_bytes() == b"".join(lines[:2])  # cut off the file
        assert g.forget(ids[2])
        assert g.people() == []
    assert len(listed.read_bytes().splitlines()) == 3
    assert ids[2].encode() in listed.read_bytes().splitlines()[2]


def test_a_forget_list_damaged_before_its_last_line_is_still_refused(tmp_path):
    """Only the last line can be cut by a power loss; a cut line in the middle is damage."""
    ids, lines, _ = three_forgets(tmp_path)
    listed = tmp_path / "g.db.forgotten"
    listed.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2] + b"\n" + lines[2])
    with pytest.raises(GalleryError, match="line 2 does not chain"):
        Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False)
    listed.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2] + lines[2])  # no newline either
    with pytest.raises(GalleryError, match="line 2 does not chain"):
        Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False)
    assert listed.read_bytes() == lines[0] + lines[1][: len(lines[1]) // 2] + lines[2]


def test_replaying_a_forget_list_opens_nobody_s_name(tmp_path, caplog):
    """`forget --replay` (and the office's list) only needs who is enrolled: before, it opened
    every person's sealed name to list the ids, so a person whose row no longer opens was
    logged as damaged (with their id) by a replay that concerned someone else."""
    import sqlite3

    rng = np.random.default_rng(22)
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        gone = g.add_person("Gone", CONSENT, list(unit(rng, 1)), "m", "v")
        other = g.add_person("Other", CONSENT, list(unit(rng, 1)), "m", "v")
    with sqlite3.connect(tmp_path / "g.db") as conn:  # Other's sealed name no longer opens
        conn.execute("UPDATE people SET name = zeroblob(40) WHERE id = ?", (other,))
    with (
        caplog.at_level(logging.INFO, logger="edge.gallery"),
        Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g,
    ):
        assert g.apply_forget_list(["P-NOBODY", gone]) == [gone]
        assert other not in caplog.text
        assert [p.id for p in g.people()] == [other]  # the damage is still shown where asked
    assert other in caplog.text


def test_a_replayed_forget_list_copied_mid_write_drops_its_cut_last_line_with_a_warning(
    tmp_path, caplog
):
    """The office's list given to `forget --replay FILE`, copied while a line was being written:
    the whole file was refused ("line 3 is not valid"), so none of its forgets could be
    replayed. The cut line is dropped with the same warning as the lane's own list (naming the
    forget to run again); a last line that is whole but lacks its newline is kept."""
    from edge.gallery.forgetlist import read_replay_file

    ids, lines, _ = three_forgets(tmp_path)
    office = tmp_path / "office.forgotten"
    office.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    with caplog.at_level(logging.WARNING, logger="edge.gallery.forgetlist"):
        got, generation = read_replay_file(office)
    assert got == ids[:2]
    assert generation == 3  # the second forget's (generation 1 at creation, one per forget)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"run it again: edge-gate forget {ids[2]}" in warned[0]
    office.write_bytes(b"".join(lines[:2]) + lines[2].rstrip(b"\n"))
    assert read_replay_file(office)[0] == ids  # whole, only its newline missing
    office.write_bytes(b"".join(lines[:2]) + b'{"forgot": ["P-1"], "g": 9}junk\n')
    with pytest.raises(GalleryError, match="line 3"):  # damage with its newline: refused
        read_replay_file(office)
