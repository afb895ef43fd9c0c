"""Enrollment that gives the matcher enough: three templates by default, bulk import by folder."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import EnrollError
from edge.gallery.bulk import (
    ALREADY,
    DUPLICATE,
    NO_FACE,
    NO_IMAGES,
    SEVERAL,
    TOO_FEW,
    UNREADABLE_IMAGES,
    enroll_folder,
)
from edge.gallery.crypto import init_key
from edge.gallery.enroll import enroll
from edge.gallery.matcher import to_template_grid
from edge.gallery.store import Consent, Gallery
from edge.vision.detector import Detection
from edge.vision.pipeline import FaceObservation
from edge.vision.quality import Quality

CONSENT = Consent("2026-03", operator="staff")
DIM = 64


class GeneratedFaces:
    """Stands in for the face pipeline on generated photos: the photo's top-left pixel names
    the person (blue) and the photo (green); the embedding is that person's centre plus
    per-photo noise. A photo whose red value is 255 shows no face; 128, a second, smaller face
    (the next person) beside the first. Counts every embedding."""

    class spec:  # noqa: N801 - mirrors EmbedderSpec's fields used by enrollment
        name, sha256, dim, threshold, same_person_floor = "generated", "0" * 64, DIM, 0.8, 0.5

    max_image_pixels = 100_000_000

    def __init__(self, people: int = 40, seed: int = 0):
        rng = np.random.default_rng(seed)
        c = rng.standard_normal((people, DIM)).astype(np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.rng, self.calls = rng, 0

    def _face(self, person: int, photo: int, x: float, size: float) -> FaceObservation:
        self.calls += 1
        noise = np.random.default_rng(person * 1000 + photo).standard_normal(DIM)
        v = self.centres[person] + 0.15 * noise.astype(np.float32) / np.sqrt(DIM)
        q = Quality(100.0, 100.0, 0.0, 120.0, ())
        box = np.array([x, 10.0, x + size, 10.0 + size], np.float32)
        det = Detection(box, np.zeros((6, 2), np.float32), 0.9)
        return FaceObservation(det, q, (v / np.linalg.norm(v)).astype(np.float32))

    def still_faces(self, bgr: np.ndarray) -> list[FaceObservation]:
        blue, green, red = (int(x) for x in bgr[0, 0])
        if red == 255:
            return []
        faces = [self._face(blue, green, 5.0, 40.0)]
        if red == 128:
            faces.append(self._face(blue + 1, green, 50.0, 20.0))
        return faces


def photos(
    folder: Path, name: str, person: int, n: int, no_face: bool = False, two: bool = False
) -> None:
    d = folder / name
    d.mkdir(parents=True, exist_ok=True)
    first = len(list(d.iterdir()))
    for i in range(first, first + n):
        img = np.zeros((64, 64, 3), np.uint8)
        img[0, 0] = (person, i + 1, 255 if no_face else (128 if two else 0))
        cv2.imwrite(str(d / f"{i:02d}.png"), img)


@pytest.fixture
def gal(tmp_path):
    g = Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key"))
    yield g
    g.close()


def test_folder_import_counts_every_refusal_and_embeds_each_photo_once(tmp_path, gal, monkeypatch):
    pipe, folder = GeneratedFaces(), tmp_path / "passes"
    photos(folder, "alice", 0, 3)
    photos(folder, "bob", 1, 5)
    photos(folder, "carol", 2, 1)  # one photo
    photos(folder, "dave", 0, 4)  # alice's face under another name
    (folder / "erin").mkdir()  # nothing in it
    photos(folder, "frank", 3, 3, no_face=True)
    (folder / "gina").mkdir()
    (folder / "gina" / "broken.jpg").write_bytes(b"not a jpeg")
    photos(folder, "hank", 5, 3)
    photos(folder, "hank", 5, 1, two=True)  # hank and someone else: left out, listed
    photos(folder, "ivy", 7, 3, two=True)  # only photos with two people: whose pass?
    writes = []
    real_add = gal.add_person
    monkeypatch.setattr(gal, "add_person", lambda *a, **k: writes.append(a[0]) or real_add(*a, **k))
    progress = []
    r = enroll_folder(
        gal, pipe, folder, CONSENT, threshold=0.8, on_progress=lambda *a: progress.append(a)
    )
    assert set(r.enrolled) == {"alice", "bob", "hank"}
    assert r.templates == {"alice": 3, "bob": 5, "hank": 3}
    assert r.refused == {
        "carol": TOO_FEW,
        "dave": DUPLICATE,
        "erin": NO_IMAGES,
        "frank": NO_FACE,
        "gina": UNREADABLE_IMAGES,
        "ivy": SEVERAL,
    }
    left_out = {Path(s.source).relative_to(folder).as_posix(): s for s in r.skipped}
    assert set(left_out) == {"gina/broken.jpg", "hank/03.png", *(f"ivy/0{i}.png" for i in range(3))}
    assert "not a readable image" in left_out["gina/broken.jpg"].detail
    assert "2 faces: 40x40 at (5, 10), 20x20 at (50, 10)" in left_out["hank/03.png"].detail
    assert pipe.calls == 3 + 5 + 1 + 4 + 0 + (3 + 2) + 3 * 2  # each face, each photo once
    assert writes == ["alice", "bob", "hank"]  # one transaction per enrolled person
    assert progress[0] == (0, 9, "alice")
    assert progress[-1] == (9, 9, "")
    people = {p.name: p for p in gal.people()}
    assert set(people) == {"alice", "bob", "hank"}
    assert people["bob"].template_count == 5
    t = gal.templates("generated")
    assert np.array_equal(to_template_grid(t.matrix), t.matrix)  # stored on the matcher's grid

    again = enroll_folder(gal, pipe, folder, CONSENT, threshold=0.8, min_templates=1)
    assert again.refused["alice"] == ALREADY
    assert again.refused["bob"] == ALREADY
    assert again.refused["dave"] == DUPLICATE
    assert set(again.enrolled) == {"carol"}

    picked = enroll_folder(gal, pipe, folder, CONSENT, threshold=0.8, pick="largest")
    assert set(picked.enrolled) == {"ivy"}  # the largest face of each photo: ivy's own
    assert not any(s.reason == "several_faces" for s in picked.skipped)


def test_a_new_person_needs_three_templates_unless_told(tmp_path, gal):
    pipe = GeneratedFaces()
    photos(tmp_path, "one", 5, 2)
    two = [str(p) for p in sorted((tmp_path / "one").iterdir())]
    with pytest.raises(EnrollError, match="only 2 usable") as e:
        enroll(gal, pipe, "Two Photos", CONSENT, two, threshold=0.8)
    assert "--min-templates 1" in e.value.hint
    assert gal.people() == []
    pid, n = enroll(gal, pipe, "Two Photos", CONSENT, two, threshold=0.8, min_templates=1)
    assert n == 2
    photos(tmp_path, "more", 5, 1)  # adding to someone enrolled is never refused for count
    extra = [str(next((tmp_path / "more").iterdir()))]
    pid2, n2 = enroll(gal, pipe, "", CONSENT, extra, threshold=0.8, person_id=pid)
    assert (pid2, n2) == (pid, 1)
    assert gal.people()[0].template_count == 3


def test_duplicate_check_runs_against_the_growing_import(tmp_path, gal):
    """Two folders of one person within the same import: the second is refused."""
    pipe, folder = GeneratedFaces(), tmp_path / "p"
    for i in range(30):
        photos(folder, f"p{i:02d}", i, 3)
    photos(folder, "p99_same_as_p07", 7, 3)
    r = enroll_folder(gal, pipe, folder, CONSENT, threshold=0.8)
    assert len(r.enrolled) == 30
    assert r.refused == {"p99_same_as_p07": DUPLICATE}


def test_enroll_folder_command(tmp_path, monkeypatch, capsys):
    from edge.cli import main
    from edge.vision import pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod.FacePipeline, "from_config", lambda *a, **k: GeneratedFaces())
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f'[audit]\npath = "{tmp_path / "audit.db"}"\n')
    folder = tmp_path / "passes"
    photos(folder, "alice", 0, 3)
    photos(folder, "carol", 2, 1)
    g = ["--config", str(cfg), "--db", str(tmp_path / "g.db"), "--key-file", str(tmp_path / "k")]
    init_key(tmp_path / "k")
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: a line per tenth
    assert main(["enroll", *g, "--folder", str(folder), "--consent-version", "v1"]) == 0
    out = capsys.readouterr().out
    assert "enrolled 1 of 2 people (3 templates)" in out
    assert "refused 1: too_few_templates: carol" in out
    assert main(["enroll", *g, "--folder", str(folder), "--consent-version", "v1"]) == 1
    assert "already_enrolled: alice" in capsys.readouterr().out
    assert main(["enroll", *g, "--folder", str(folder), "--consent-version", "v1", "x.jpg"]) == 2


@pytest.mark.fixtures
def test_enroll_folder_on_real_faces(tmp_path, gal, fixtures, pipeline):
    faces = fixtures / "faces"
    r = enroll_folder(gal, pipeline, faces, CONSENT, threshold=pipeline.spec.threshold)
    few = {d.name for d in faces.iterdir() if d.is_dir() and len(list(d.iterdir())) < 3}
    assert few <= set(r.refused)
    assert all(r.refused[n] in (TOO_FEW, NO_FACE) for n in few)
    assert len(r.enrolled) >= 10
    assert DUPLICATE not in r.refused.values()
    assert all(3 <= n <= 5 for n in r.templates.values())
    assert len(gal.people()) == len(r.enrolled)


def test_a_damaged_template_hides_no_one_from_either_duplicate_check(tmp_path, gal):
    """A gallery row that is no longer finite (damaged, or stored by a faulty model) never
    matches and never hides the person's good templates: `enroll` and `enroll --folder` refuse
    the same face. (A raw argmax over the rows picked the NaN row and let the face in twice.)"""
    pipe, folder = GeneratedFaces(), tmp_path / "passes"
    photos(folder, "alice", 0, 3)
    enrolled = enroll_folder(gal, pipe, folder, CONSENT, threshold=0.8)
    assert set(enrolled.enrolled) == {"alice"}
    alice = enrolled.enrolled["alice"]
    damaged = np.full(DIM, np.nan, np.float32)
    gal.add_templates(alice, CONSENT, [damaged], "generated", "0" * 12)
    t = gal.templates("generated")
    assert len(t.matrix) == 4 and np.isnan(t.matrix).any(axis=1).sum() == 1

    photos(tmp_path / "again", "alice_again", 0, 3)
    r = enroll_folder(gal, pipe, tmp_path / "again", CONSENT, threshold=0.8)
    assert r.refused == {"alice_again": DUPLICATE}
    files = [str(p) for p in sorted((tmp_path / "again" / "alice_again").iterdir())]
    with pytest.raises(EnrollError, match=f"already matches enrolled person {alice}"):
        enroll(gal, pipe, "Alice Again", CONSENT, files, threshold=0.8)
    assert [p.name for p in gal.people()] == ["alice"]


def test_the_already_enrolled_check_decides_as_the_gate_matcher_does():
    """enrolled_matches (both enroll paths) against the gate's Matcher with no margin, on
    galleries with damaged rows and faces: the same people, every time."""
    from edge.gallery.matcher import Matcher, enrolled_matches

    rng = np.random.default_rng(7)
    seen: set[int] = set()
    for trial in range(60):
        people = int(rng.integers(1, 12))
        per = rng.integers(1, 5, people)
        pids = np.repeat([f"P-{i}" for i in range(people)], per).astype(object)
        rows = rng.standard_normal((len(pids), DIM)).astype(np.float32)
        rows = to_template_grid(rows / np.linalg.norm(rows, axis=1, keepdims=True))
        noise = rng.standard_normal((4, DIM)) * rng.uniform(0.0, 2.0) / np.sqrt(DIM)
        probes = rows[rng.integers(len(rows), size=4)] + noise
        probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
        if trial % 3 == 0:  # a damaged row, maybe the very one a face came from
            rows[rng.integers(len(rows))] = np.nan if trial % 2 else np.inf
        if trial % 5 == 0:
            probes[0] = np.nan
        want = {
            m.person_id for m in Matcher(rows, pids, 0.8, 0.0).match_many(probes) if m.person_id
        }
        assert enrolled_matches(probes, rows, pids, 0.8) == want
        assert enrolled_matches(probes, rows, pids, 0.8, exclude="P-0") == want - {"P-0"}
        seen.add(len(want))
    assert 0 in seen and max(seen) >= 2  # trials with no match and with several people


def test_a_folder_or_a_set_of_photos_of_two_people_is_not_one_person(tmp_path, gal):
    """Photos of someone else among a person's let that other person in on the pass (the
    matcher takes the best template): a folder holding two people is refused, and so are
    photos of two people given to one `enroll`; one person's photos still enroll."""
    folder = tmp_path / "people"
    photos(folder, "Mixed", person=3, n=2)
    photos(folder, "Mixed", person=4, n=2)
    photos(folder, "Single", person=5, n=4)
    pipe = GeneratedFaces()
    r = enroll_folder(gal, pipe, folder, CONSENT, threshold=0.8, min_templates=1)
    assert r.refused == {"Mixed": "not_one_person"}
    assert list(r.enrolled) == ["Single"]
    files = sorted(str(f) for f in (folder / "Mixed").iterdir())
    with pytest.raises(EnrollError, match="not all of one person") as e:
        enroll(gal, pipe, "Mixed", CONSENT, files, threshold=0.8, min_templates=1)
    assert "nothing was enrolled" in str(e.value) and len(gal.people()) == 1
    pid, n = enroll(gal, pipe, "One", CONSENT, files[:2], threshold=0.8, min_templates=1)
    assert n == 2 and len(gal.people()) == 2


def test_faces_of_one_person_need_a_chain_of_links_not_every_pair():
    """A person's photos differ: each face must link to one other of the set, not to all."""
    from edge.gallery.enroll import split_faces

    def unit(deg: float) -> np.ndarray:
        return np.array([np.cos(np.radians(deg)), np.sin(np.radians(deg))], np.float32)

    chain = np.stack([unit(0), unit(50), unit(100)])  # neighbours 0.64, ends -0.17
    assert split_faces(chain, 0.5) is None
    assert split_faces(np.stack([unit(0), unit(100), unit(50)]), 0.5) is None
    apart = np.stack([unit(0), unit(20), unit(120), unit(140)])
    assert split_faces(apart, 0.5) == (0, 2)  # a tie: the part without the first face is named
    assert split_faces(apart, -1.0) is None
    stranger_first = np.stack([unit(120), unit(0), unit(10), unit(20)])
    assert split_faces(stranger_first, 0.5) == (1, 0)  # the smaller part is named


def test_the_kiosks_live_frames_are_not_held_to_the_floor_its_uploaded_photos_are(tmp_path, gal):
    """A few frames the kiosk samples of one visitor walking up (far, then close) need not link
    above the floor; photos given for a person must."""
    from edge.gallery.enroll import Candidate

    pipe = GeneratedFaces()
    two = [pipe.centres[6], pipe.centres[7]]  # unrelated directions: below the floor
    for live in (False, True):
        cands = [Candidate(e, 1.0, f"kiosk#{i}", live=live) for i, e in enumerate(two)]
        call = lambda c=cands: enroll(  # noqa: E731
            gal, pipe, "Walk-up", CONSENT, [], threshold=0.8, min_templates=1, candidates=c
        )
        if live:
            assert call()[1] == 2
        else:
            with pytest.raises(EnrollError, match="not all of one person"):
                call()
