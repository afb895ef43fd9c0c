"""Enrollment: the best few faces from images, a video or the camera become sealed templates.

No image is ever written: frames are embedded in memory and dropped. Consent comes first; a
minor needs a guardian; a face that already matches someone else is refused unless forced. A
photo showing several faces is refused with their boxes (whose pass would it be?) unless the
operator picks the largest, which is logged; a file that is no readable image is named as such.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ConsentError, EnrollError, ImageError, SeveralFacesError
from edge.gallery.matcher import Matcher, enrolled_matches, to_template_grid
from edge.gallery.store import Consent, Gallery
from edge.vision.embedder import l2_normalise
from edge.vision.image import load_image, open_video, to_bgr8
from edge.vision.pipeline import FaceObservation, FacePipeline

log = logging.getLogger(__name__)
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v"}
MIN_TEMPLATES = 3  # good templates a person needs: one photo alone refuses too many pass holders


PICKS = ("largest",)  # --pick: which face of a photo with several to enroll

# Why an input gave no face to enroll (Skipped.reason).
UNREADABLE = "unreadable"
SEVERAL_FACES = "several_faces"
NO_FACE = "no_face"


@dataclass(frozen=True)
class Candidate:
    """One usable face from an enrolment input, kept until the best are chosen."""

    embedding: np.ndarray
    quality: float
    source: str
    # a frame the console's kiosk took from its live camera: a few sampled frames of one
    # visitor walking up (far, then close) need not link above the same-person floor, so they
    # are not held to it; staff watch that capture
    live: bool = False


@dataclass(frozen=True)
class Skipped:
    """An input that gave no face: which, why (UNREADABLE, SEVERAL_FACES, NO_FACE), in words."""

    source: str
    reason: str
    detail: str
    hint: str = ""


def describe_faces(faces: list[FaceObservation]) -> str:
    """'2 faces: 411x411 at (507, 216), 367x367 at (1078, 219)', largest first."""
    ordered = sorted(faces, key=lambda f: -f.detection.width * f.detection.height)
    boxes = ", ".join(
        f"{f.detection.width:.0f}x{f.detection.height:.0f} at "
        f"({f.detection.box[0]:.0f}, {f.detection.box[1]:.0f})"
        for f in ordered
    )
    return f"{len(faces)} faces: {boxes}"


def one_face(
    faces: list[FaceObservation], source: str, pick: str | None = None
) -> FaceObservation | None:
    """The face to enroll from one photo (None: no face), refusing a photo of several people.

    With pick="largest" the largest face is taken anyway, and that is logged with the boxes.
    Every enrollment path (a photo on the command line, a folder import, the console's kiosk)
    goes through this rule.
    """
    if len(faces) <= 1:
        return faces[0] if faces else None
    if pick not in PICKS:
        raise SeveralFacesError(
            f"{source}: {describe_faces(faces)}; whose pass this is cannot be told",
            "use a photo of the person alone, or pass --pick largest to enroll the largest face",
        )
    log.warning("enroll pick=largest input=%s %s", source, describe_faces(faces))
    return max(faces, key=lambda f: f.detection.width * f.detection.height)


def check_consent(consent: Consent, minor: bool) -> None:
    """Refuse enrolment without a consent record, or a guardian for a minor."""
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
    """Fingerprint the consent notice, proving later which text the person agreed to."""
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
    try:
        cap = open_video(source, pipe.max_image_pixels)
    except ImageError as e:
        raise EnrollError(str(e.args[0]), e.hint) from None
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


def collect(
    pipe: FacePipeline, inputs: list[str], pick: str | None = None
) -> tuple[list[Candidate], list[Skipped]]:
    """Faces from photos, videos and cameras, and the inputs that gave none, each with why."""
    cands: list[Candidate] = []
    skipped: list[Skipped] = []
    for item in inputs:
        p = Path(item)
        if item.isdigit() or item.startswith("/dev/video"):
            cands += candidates_from_video(pipe, int(item) if item.isdigit() else item)
            continue
        if p.suffix.lower() in VIDEO_EXT:
            try:
                cands += candidates_from_video(pipe, p)
            except EnrollError as e:  # listed like an unreadable photo (`enroll` refuses it)
                skipped.append(Skipped(str(p), UNREADABLE, str(e.args[0]), e.hint))
            continue
        try:
            faces = pipe.still_faces(load_image(p, pipe.max_image_pixels))
            obs = one_face(faces, str(p), pick)
        except ImageError as e:
            hint = e.hint or "give photos (JPEG, PNG, ...) or a video of the person"
            skipped.append(Skipped(str(p), UNREADABLE, str(e.args[0]), hint))
            continue
        except SeveralFacesError as e:
            skipped.append(Skipped(str(p), SEVERAL_FACES, str(e.args[0]), e.hint))
            continue
        if obs is not None and "too_small" in obs.quality.reasons:
            # the gate looks at no face this small: a template of it matches nobody, or anybody
            px, least = obs.quality.face_px, pipe.quality.min_face_px
            log.warning("enroll skip input=%s reason=too_small face_px=%.0f", p, px)
            skipped.append(
                Skipped(
                    str(p),
                    NO_FACE,
                    f"{p}: the face is {px:.0f} px, under {least} px",
                    "a photo where the face is larger (vision.min_face_px)",
                )  # fmt: skip
            )
            continue
        c = _from_observation(obs, str(p), strict=False)
        if c is None:
            log.warning("enroll skip input=%s reason=no_face", p)
            skipped.append(Skipped(str(p), NO_FACE, f"{p}: no face found"))
        else:
            cands.append(c)
    return cands, skipped


def refuse_skipped(skipped: list[Skipped]) -> None:
    """An input the operator named that is no readable image, or shows several faces: refused.

    (Photos without a face are only left out: enough usable faces from the rest still enroll.)
    """
    for reason, error in ((UNREADABLE, EnrollError), (SEVERAL_FACES, SeveralFacesError)):
        bad = [s for s in skipped if s.reason == reason]
        if bad:
            more = f" (and {len(bad) - 1} more such input(s))" if len(bad) > 1 else ""
            raise error(bad[0].detail + more, bad[0].hint or None)


def pick_best(cands: list[Candidate], k: int) -> list[Candidate]:
    """The k best by quality, dropping near-duplicates (consecutive video frames)."""
    chosen: list[Candidate] = []
    for c in sorted(cands, key=lambda c: -c.quality):
        if all(float(c.embedding @ d.embedding) < 0.995 for d in chosen):
            chosen.append(c)
        if len(chosen) >= k:
            break
    return chosen


def split_faces(embs: np.ndarray, floor: float) -> tuple[int, int] | None:
    """Two faces of the set that no chain of pairs above `floor` joins, or None when the faces
    form one group: a face of the larger part, then a face of the smaller part (the one to
    name). The part holding the first face (the best, after pick_best) counts as the larger on
    a tie. A person's photos differ (age, glasses, light), so each face needs a link to one
    other, not to all."""
    linked = (embs @ embs.T) >= floor
    reach = np.zeros(len(embs), bool)
    reach[0] = True
    for _ in range(len(embs)):  # at most a few templates: the group grows or is complete
        grown = reach | linked[reach].any(axis=0)
        if (grown == reach).all():
            break
        reach = grown
    if reach.all():
        return None
    inside, outside = np.flatnonzero(reach), np.flatnonzero(~reach)
    if len(inside) >= len(outside):
        return int(inside[0]), int(outside[0])
    return int(outside[0]), int(inside[0])


def check_one_person(pool: list[Candidate], floor: float) -> None:
    """The faces given for one person must be of one person: a photo or frame of someone else
    among them would let that other person in on this pass (the matcher takes the best
    template). Every usable face given is checked, not only the templates kept: a camera's
    frames of one visitor link through the frames between (one far away and one close up may
    not link directly), while a second person's frames link to none of the first's. `floor` 0
    (not measured for this embedder): not checked."""
    if floor <= 0 or len(pool) < 2:
        return
    embs = l2_normalise(np.stack([c.embedding for c in pool]))
    pair = split_faces(embs, floor)
    if pair is None:
        return
    a, b = pair
    score = float(embs[a] @ embs[b])
    raise EnrollError(
        f"the faces are not all of one person: {pool[b].source} does not match "
        f"{pool[a].source} or the faces linked to it (score {score:.3f}, same-person floor "
        f"{floor:.3f}); nothing was enrolled",
        "enroll one person at a time: leave out the photo or frames of anyone else (at the "
        "console's kiosk: start a new capture)",
    )


def _check_same_person(
    gallery: Gallery, model_id: str, person_id: str, embs: np.ndarray, threshold: float
) -> None:
    """Every new face must match the person's own templates: no one joins someone else's pass."""
    own = gallery.templates(model_id, person_id)
    if not len(own.matrix):
        raise EnrollError(
            f"person {person_id} has no usable {model_id} template to check the new face against",
            "re-enroll them from scratch with --replace-templates (consent is recorded again)",
        )
    scores = Matcher(own.matrix, own.person_ids, threshold, 0.0).match_many(embs)
    worst = min(m.score for m in scores)
    if any(m.person_id != person_id for m in scores):
        raise EnrollError(
            f"the new face does not match person {person_id} (score {worst:.3f}, "
            f"threshold {threshold:.3f}); nothing was added",
            "check who this is; if it is them and they changed, re-enroll with --replace-templates",
        )


def enroll(
    gallery: Gallery,
    pipe: FacePipeline,
    name: str,
    consent: Consent,
    inputs: list[str],
    *,
    threshold: float,
    pass_ref: str = "",
    valid_until: int | None = None,
    minor: bool = False,
    person_id: str | None = None,
    replace: bool = False,
    force: bool = False,
    max_templates: int = 5,
    min_templates: int = MIN_TEMPLATES,
    candidates: list[Candidate] | None = None,
    pick: str | None = None,
) -> tuple[str, int]:
    """Enroll a new person, or with person_id add templates that verify as them.

    replace=True re-enrolls person_id from scratch: their templates are replaced by these,
    without the same-person check (they may look different now), with consent recorded again.
    `candidates` are faces already embedded (the console's kiosk: frames it never stores),
    chosen from together with the faces found in `inputs`.
    Returns (person id, templates added).
    """
    if person_id is None and not name.strip():
        raise EnrollError("a name is required", "pass --name")
    if person_id is not None and (name.strip() or pass_ref or valid_until is not None or minor):
        raise EnrollError(
            "--person-id adds faces only; name, pass id, validity and minor flag are not changed",
            "use `edge-gate pass edit` or `edge-gate pass renew` for those",
        )
    if replace and person_id is None:
        raise EnrollError("--replace-templates needs --person-id", "pass --person-id P-...")
    if person_id is not None:
        minor = gallery.person(person_id).minor  # also: an unknown id fails here, by name
    check_consent(consent, minor or bool(consent.guardian))
    found, skipped = collect(pipe, inputs, pick)
    refuse_skipped(skipped)
    pool = [*(candidates or ()), *found]
    cands = pick_best(pool, max(max_templates, min_templates))
    if not cands:
        raise EnrollError(
            "no usable face in the inputs"
            + (f" ({'; '.join(s.detail for s in skipped)})" if skipped else ""),
            "use a sharp, frontal, well-lit photo or clip of one person",
        )
    embs = to_template_grid(np.stack([c.embedding for c in cands]))  # held exactly by the matcher
    model = pipe.spec.name
    if person_id is not None and not replace:
        _check_same_person(gallery, model, person_id, embs, threshold)
    else:  # a new person, or new faces replacing all of theirs
        check_one_person([c for c in pool if not c.live], pipe.spec.same_person_floor)
    t = gallery.templates(model)
    others = enrolled_matches(embs, t.matrix, t.person_ids, threshold, exclude=person_id)
    if others and not force:
        raise EnrollError(
            f"this face already matches enrolled person {sorted(others)[0]}",
            "check who this is; add faces to them with --person-id, or pass --force if they"
            " are different people",
        )
    qualities = [c.quality for c in cands]
    if person_id is not None:  # adding faces to someone already enrolled always helps
        if replace:  # a re-enrollment from scratch must leave enough templates
            check_template_count(len(cands), min_templates)
        gallery.add_templates(
            person_id, consent, list(embs), model, pipe.spec.sha256[:12], qualities, replace
        )
        return person_id, len(cands)
    check_template_count(len(cands), min_templates)
    pid = gallery.add_person(
        name, consent, list(embs), model, pipe.spec.sha256[:12], qualities, pass_ref,
        valid_until, minor or bool(consent.guardian),
    )  # fmt: skip
    return pid, len(cands)


def check_template_count(found: int, needed: int) -> None:
    """Refuse an enrollment that would leave the person with too few good templates."""
    if found < needed:
        raise EnrollError(
            f"only {found} usable, distinct face(s) in the inputs; {needed} are needed",
            "add more photos of the person (or a short video), or pass --min-templates 1 "
            "to accept fewer (more refusals at the gate)",
        )
