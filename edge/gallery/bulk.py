"""Bulk enrollment: every `DIR/<name>/` of an existing pass system becomes one person.

Each image is embedded once; each person is written in one transaction; the duplicate-face
check runs against an in-memory matrix that grows with the import, so the cost per person does
not grow with the gallery's decryption. One person's bad photos never stop the others: a file
that is no readable image, or a photo showing several faces, is left out and listed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import EnrollError, NotTextError
from edge.gallery.enroll import (
    MIN_TEMPLATES,
    SEVERAL_FACES,
    UNREADABLE,
    Skipped,
    check_consent,
    check_one_person,
    collect,
    pick_best,
)
from edge.gallery.matcher import enrolled_matches, to_template_grid
from edge.gallery.schema import check_text
from edge.gallery.store import Consent, Gallery
from edge.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

# Refusal reasons, as counted in the summary.
NO_IMAGES = "no_images"
NO_FACE = "no_usable_face"
TOO_FEW = "too_few_templates"
DUPLICATE = "matches_enrolled_person"
ALREADY = "already_enrolled"
SEVERAL = "several_faces"  # every usable photo shows several people (see --pick largest)
UNREADABLE_IMAGES = "unreadable_images"  # no file of the folder is a readable image
NAME_NOT_TEXT = "name_not_utf8"  # the folder's name has bytes of another encoding
NOT_ONE_PERSON = "not_one_person"  # the folder's faces are of more than one person


@dataclass
class BulkResult:
    """What a folder import did: who was enrolled, who was refused and why."""

    enrolled: dict[str, str] = field(default_factory=dict)  # folder name -> person id
    templates: dict[str, int] = field(default_factory=dict)  # folder name -> templates stored
    refused: dict[str, str] = field(default_factory=dict)  # folder name -> reason
    skipped: list[Skipped] = field(default_factory=list)  # files left out: unreadable, several

    def by_reason(self) -> dict[str, list[str]]:
        """Refused folder names grouped by reason."""
        out: dict[str, list[str]] = {}
        for name, reason in self.refused.items():
            out.setdefault(reason, []).append(name)
        return out


class KnownFaces:
    """Enrolled templates in memory for the duplicate check; grows as people are added."""

    def __init__(self, matrix: np.ndarray, person_ids: np.ndarray, capacity: int = 1024):
        n, dim = matrix.shape if matrix.size else (0, 0)
        self._m = np.zeros((max(capacity, 2 * n), dim), np.float32) if dim else None
        self._pids: list[str] = [str(p) for p in person_ids]
        if n:
            self._m[:n] = matrix

    def __len__(self) -> int:
        return len(self._pids)

    def matches(self, embs: np.ndarray, threshold: float) -> set[str]:
        """The enrolled people these faces already are (the same check as `enroll`)."""
        if self._m is None:
            return set()
        return enrolled_matches(embs, self._m[: len(self._pids)], self._pids, threshold)

    def add(self, embs: np.ndarray, pid: str) -> None:
        """Append one person's templates (amortised doubling, no per-entry work)."""
        n = len(self._pids)
        if self._m is None:
            self._m = np.zeros((1024, embs.shape[1]), np.float32)
        if n + len(embs) > len(self._m):
            grown = np.zeros((2 * (n + len(embs)), self._m.shape[1]), np.float32)
            grown[:n] = self._m[:n]
            self._m = grown
        self._m[n : n + len(embs)] = embs
        self._pids += [pid] * len(embs)


def person_folders(folder: Path) -> list[Path]:
    """The subfolders of DIR, sorted by name; hidden ones are skipped."""
    if not folder.is_dir():
        raise EnrollError(f"{folder} is not a folder", "pass a folder of DIR/<name>/ subfolders")
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise EnrollError(
            f"{folder} has no subfolders",
            "put each person's photos in DIR/<name>/ (one per person)",
        )
    return dirs


def enroll_folder(
    gallery: Gallery,
    pipe: FacePipeline,
    folder: Path,
    consent: Consent,
    *,
    threshold: float,
    min_templates: int = MIN_TEMPLATES,
    max_templates: int = 5,
    force: bool = False,
    valid_until: int | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
    pick: str | None = None,
) -> BulkResult:
    """Enroll every DIR/<name>/ as one person named <name>; refusals are counted, not raised."""
    check_consent(consent, bool(consent.guardian))
    dirs = person_folders(folder)
    rules = ImportRules(
        consent, pipe.spec.name, threshold, min_templates, max_templates, force, valid_until, pick
    )
    t = gallery.templates(rules.model)
    known = KnownFaces(t.matrix, t.person_ids)
    names = {p.id: p.name for p in gallery.people()}
    result = BulkResult()
    for i, d in enumerate(dirs):
        if on_progress:
            on_progress(i, len(dirs), d.name)
        files = sorted(str(f) for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
        reason, pid, n = _one(gallery, pipe, known, names, d.name, files, rules, result.skipped)
        shown = os.fsencode(d.name).decode("utf-8", "backslashreplace")  # printable, as it is
        if reason:
            result.refused[shown] = reason
            log.debug("enroll refused folder=%d of %d reason=%s", i + 1, len(dirs), reason)
        else:
            result.enrolled[shown], result.templates[shown] = pid, n
    if on_progress:
        on_progress(len(dirs), len(dirs), "")
    return result


@dataclass(frozen=True)
class ImportRules:
    """What every folder of one bulk import is held to: consent, model, limits, pass validity."""

    consent: Consent
    model: str
    threshold: float
    min_templates: int
    max_templates: int
    force: bool
    valid_until: int | None
    pick: str | None = None


def _one(
    gallery: Gallery,
    pipe: FacePipeline,
    known: KnownFaces,
    names: dict[str, str],
    name: str,
    files: list[str],
    rules: ImportRules,
    left_out: list[Skipped],
) -> tuple[str, str, int]:
    """Enroll one folder; returns (refusal reason or "", person id, templates)."""
    if not files:
        return NO_IMAGES, "", 0
    try:
        check_text(name, "the folder's name")
    except NotTextError:
        return NAME_NOT_TEXT, "", 0
    found, skipped = collect(pipe, files, rules.pick)
    left_out += [s for s in skipped if s.reason in (UNREADABLE, SEVERAL_FACES)]
    cands = pick_best(found, max(rules.max_templates, rules.min_templates))
    if not cands:
        why = {s.reason for s in skipped}
        if why == {UNREADABLE}:
            return UNREADABLE_IMAGES, "", 0
        return (SEVERAL if SEVERAL_FACES in why else NO_FACE), "", 0
    if len(cands) < rules.min_templates:
        return TOO_FEW, "", 0
    try:
        check_one_person(found, pipe.spec.same_person_floor)
    except EnrollError:
        return NOT_ONE_PERSON, "", 0
    embs = to_template_grid(np.stack([c.embedding for c in cands]))
    hits = known.matches(embs, rules.threshold)
    if hits and not rules.force:
        return ALREADY if any(names.get(h) == name for h in hits) else DUPLICATE, "", 0
    pid = gallery.add_person(
        name,
        rules.consent,
        list(embs),
        rules.model,
        pipe.spec.sha256[:12],
        [c.quality for c in cands],
        valid_until=rules.valid_until,
    )
    known.add(embs, pid)
    names[pid] = name
    return "", pid, len(cands)
