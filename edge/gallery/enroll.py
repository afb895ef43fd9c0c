"""Enrollment: the best few faces from images, a video or the camera become sealed templates.

No image is ever written: frames are embedded in memory and dropped. Consent comes first; a
minor needs a guardian; a face that already matches someone else is refused unless forced.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import ConsentError, EnrollError, ImageError
from edge.gallery.matcher import Matcher, to_template_grid
from edge.gallery.store import Consent, Gallery
from edge.vision.image import load_image, to_bgr8
from edge.vision.pipeline import FaceObservation, FacePipeline

log = logging.getLogger(__name__)
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v"}
MIN_TEMPLATES = 3  # good templates a person needs: one photo alone refuses too many pass holders


@dataclass(frozen=True)
class Candidate:
    embedding: np.ndarray
    quality: float
    source: str


def check_consent(consent: Consent, minor: bool) -> None:
    if not consent.notice_version.strip():
        raise ConsentError(
            "enrollment needs a consent record",
            "pass --consent-version (the notice the person agreed to)",
        )
    if minor and not consent.guardian.strip():
        raise ConsentError(
            "a minor can only be enrolled with a guardian's consent", "pass --guardian NAME"
        )


def notice_sha256(path: Path | None) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else ""


def _from_observation(obs: FaceObservation | None, source: str, strict: bool) -> Candidate | None:
    if obs is None or obs.embedding is None:
        return None
    if strict and not obs.quality.ok:
        return None
    return Candidate(obs.embedding, obs.quality.score, source)


def candidates_from_video(
    pipe: FacePipeline, source, every: int = 3, max_frames: int = 900
) -> list[Candidate]:
    """Frames with exactly one face that passes the quality gate."""
    cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        raise EnrollError(f"cannot open video {source}", "check the path or camera index")
    out, i = [], 0
    try:
        while i < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            i += 1
            if i % every:
                continue
            try:
                faces = pipe.analyze(to_bgr8(frame))
            except ImageError:
                continue
            if len(faces) == 1:
                c = _from_observation(faces[0], f"{source}#{i}", strict=True)
                if c is not None:
                    out.append(c)
    finally:
        cap.release()
    return out


def collect(pipe: FacePipeline, inputs: list[str]) -> list[Candidate]:
    cands = []
    for item in inputs:
        p = Path(item)
        if item.isdigit() or item.startswith("/dev/video"):
            cands += candidates_from_video(pipe, int(item) if item.isdigit() else item)
        elif p.suffix.lower() in VIDEO_EXT:
            cands += candidates_from_video(pipe, p)
        else:
            try:
                img = load_image(p)
            except ImageError as e:
                log.warning("enroll skip input=%s reason=%s", p, e)
                continue
            c = _from_observation(pipe.embed_still(img), str(p), strict=False)
            if c is None:
                log.warning("enroll skip input=%s reason=no_face", p)
            else:
                cands.append(c)
    return cands


def pick_best(cands: list[Candidate], k: int) -> list[Candidate]:
    """The k best by quality, dropping near-duplicates (consecutive video frames)."""
    chosen: list[Candidate] = []
    for c in sorted(cands, key=lambda c: -c.quality):
        if all(float(c.embedding @ d.embedding) < 0.995 for d in chosen):
            chosen.append(c)
        if len(chosen) >= k:
            break
    return chosen


def enroll(
    gallery: Gallery,
    pipe: FacePipeline,
    name: str,
    consent: Consent,
    inputs: list[str],
    *,
    threshold: float,
    min_margin: float,
    pass_ref: str = "",
    valid_until: int | None = None,
    minor: bool = False,
    person_id: str | None = None,
    force: bool = False,
    max_templates: int = 5,
    min_templates: int = MIN_TEMPLATES,
) -> tuple[str, int]:
    """Enroll (or, with person_id, re-enroll); returns (person id, templates added)."""
    if not name.strip() and person_id is None:
        raise EnrollError("a name is required", "pass --name")
    check_consent(consent, minor or bool(consent.guardian))
    cands = pick_best(collect(pipe, inputs), max(max_templates, min_templates))
    if not cands:
        raise EnrollError(
            "no usable face in the inputs",
            "use a sharp, frontal, well-lit photo or clip of one person",
        )
    embs = to_template_grid(np.stack([c.embedding for c in cands]))  # held exactly by the matcher
    t = gallery.templates(pipe.spec.name)
    if len(t.matrix):
        matches = Matcher(t.matrix, t.person_ids, threshold, 0.0).match_many(embs)
        others = {m.person_id for m in matches if m.person_id and m.person_id != person_id}
        if others and not force:
            raise EnrollError(
                f"this face already matches enrolled person {sorted(others)[0]}",
                "check who this is; re-enroll with --person-id, or pass --force if they are different people",
            )
    if person_id is None:  # adding faces to someone already enrolled always helps
        check_template_count(len(cands), min_templates)
    pid = gallery.add_person(
        name,
        consent,
        list(embs),
        pipe.spec.name,
        pipe.spec.sha256[:12],
        [c.quality for c in cands],
        pass_ref,
        valid_until,
        minor or bool(consent.guardian),
        person_id,
    )
    return pid, len(cands)


def check_template_count(found: int, needed: int) -> None:
    """Refuse an enrollment that would leave the person with too few good templates."""
    if found < needed:
        raise EnrollError(
            f"only {found} usable, distinct face(s) in the inputs; {needed} are needed",
            "add more photos of the person (or a short video), or pass --min-templates 1 "
            "to accept fewer (more refusals at the gate)",
        )
