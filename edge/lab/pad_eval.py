"""`edge-gate eval-pad DIR`: presentation-attack detection measured in ISO/IEC 30107-3 terms.

DIR holds live/ and attack/<type>/ (print, screen, replay, mask, ...), each with images or video
files. An image is one presentation, judged by the model's live probability on its largest face;
a video is one presentation, judged by the gate's own episode logic (policy k-of-n with the
liveness verdict, motion cue included): accepted when the policy would grant the face.
APCER per type = attacks accepted / attacks of that type; `apcer` is the worst type (30107-3);
BPCER = live presentations refused. A presentation with no face found counts as refused.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.config import Config
from edge.errors import ImageError
from edge.gate.policy import FACE, GRANT, FaceSeen, Observation, Policy, PolicyParams
from edge.progress import progress
from edge.vision.image import load_image, open_video
from edge.vision.liveness import LivenessJudge, PadModel
from edge.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".gif", ".webm"}
TARGET_BPCER = 0.05


@dataclass(frozen=True)
class Presentation:
    """One live or attack sample's outcome, the unit the PAD error rates count."""

    path: Path
    kind: str  # "live" or the attack type
    accepted: bool
    score: float | None  # image: live probability; video: share of judged frames found live
    faces: int  # frames (or 1 for an image) in which a face was judged


def presentations(root: Path) -> list[tuple[Path, str]]:
    """(file, kind) for DIR/live/* and DIR/attack/<type>/*, sorted; other files are ignored."""
    out = [(p, "live") for p in sorted((root / "live").glob("*"))]
    for d in sorted(p for p in (root / "attack").glob("*") if p.is_dir()):
        out += [(p, d.name) for p in sorted(d.glob("*"))]
    return [(p, k) for p, k in out if p.suffix.lower() in IMAGE_EXT | VIDEO_EXT]


def judge_image(pipe: FacePipeline, pad: PadModel, bgr: np.ndarray, times: list[float]):
    """Live probability of the largest face (None when no face is found)."""
    h, w = bgr.shape[:2]
    pad_px = (int(h * 0.3), int(w * 0.3))
    for img, off in ((bgr, (0, 0)), (None, pad_px)):
        if img is None:  # a tight crop leaves the detector no context: look again padded
            img = cv2.copyMakeBorder(bgr, off[0], off[0], off[1], off[1], cv2.BORDER_CONSTANT)
        for det in pipe.still_detectors():
            dets = det.detect(img)
            if dets:
                d = max(dets, key=lambda d: d.width * d.height)
                box = d.box - np.array([off[1], off[0], off[1], off[0]], np.float32)
                t0, close = time.perf_counter(), pad.too_close
                p = pad.live_probability(bgr, box)
                if pad.too_close == close:  # the model ran: time it (a face too close is free)
                    times.append(time.perf_counter() - t0)
                return p
    return None


def judge_clip(
    pipe: FacePipeline, judge: LivenessJudge, params: PolicyParams, path: Path, times: list[float]
) -> tuple[bool, float | None, int]:
    """Play a clip through the face policy as if the visitor matched: does it grant?"""
    judge.reset()
    cap = open_video(path, pipe.max_image_pixels)
    fps = cap.get(cv2.CAP_PROP_FPS) or 15.0
    fps = fps if 1 <= fps <= 120 else 15.0
    policy, i, live_frames, judged, granted = Policy(params), 0, 0, 0, False
    try:
        while not granted:
            ok, frame = cap.read()
            if not ok:
                break
            h, w = frame.shape[:2]
            faces = []
            for f in pipe.analyze(frame):
                d = f.detection
                live = None
                if f.quality.ok:
                    t0, close = time.perf_counter(), judge.model.too_close
                    live = judge.judge(frame, d.box, d.keypoints, i / fps)
                    if judge.model.too_close == close:
                        times.append(time.perf_counter() - t0)
                    judged += 1
                    live_frames += bool(live)
                cx, cy = d.center
                faces.append(
                    FaceSeen("probe", 1.0, d.width / w, (cx / w, cy / h), f.quality.ok, live=live)
                )
            for dec in policy.step(Observation(i / fps, i, 0.0, tuple(faces))):
                granted |= dec.decision == GRANT and dec.via == FACE
            i += 1
    finally:
        cap.release()
    return granted, (live_frames / judged if judged else None), judged


def evaluate_pad(cfg: Config, root: Path, pipe: FacePipeline, judge: LivenessJudge) -> dict:
    """Every presentation under root, judged; the 30107-3 figures and per-file results."""
    items = presentations(root)
    if not any(k == "live" for _, k in items) or not any(k != "live" for _, k in items):
        raise ImageError(
            f"{root}: needs live/ and attack/<type>/ with images or videos",
            "put bona fide samples in live/ and each attack type in attack/<type>/",
        )
    params = PolicyParams.from_config(cfg)
    times: list[float] = []
    results = []
    for path, kind in progress(items, f"eval-pad {root.name}", unit="presentation"):
        try:
            if path.suffix.lower() in VIDEO_EXT:
                ok, score, n = judge_clip(pipe, judge, params, path, times)
            else:
                img = load_image(path, pipe.max_image_pixels)
                p = judge_image(pipe, judge.model, img, times)
                ok, score, n = (p is not None and judge.model.is_live(p)), p, int(p is not None)
        except ImageError as e:
            log.warning("eval-pad skip=%s reason=%s", path, e)
            continue
        results.append(Presentation(path, kind, ok, score, n))
    report = summarise(results, judge.model.spec.threshold, times, root)
    report["too_close"] = judge.model.too_close  # faces filling the frame: not judged, not live
    return report


def summarise(
    results: list[Presentation], threshold: float, times: list[float], root: Path
) -> dict:
    """The report: counts, APCER by type (and the worst), BPCER, threshold, ms per face."""
    live = [r for r in results if r.kind == "live"]
    types = sorted({r.kind for r in results if r.kind != "live"})
    attacks = {t: [r for r in results if r.kind == t] for t in types}
    apcer_by_type = {t: round(sum(r.accepted for r in a) / len(a), 4) for t, a in attacks.items()}
    return {
        "dir": str(root),
        "live": len(live),
        "attacks": {t: len(a) for t, a in attacks.items()},
        "apcer": max(apcer_by_type.values()) if apcer_by_type else None,
        "apcer_by_type": apcer_by_type,
        "bpcer": round(sum(not r.accepted for r in live) / len(live), 4) if live else None,
        "no_face": sum(r.faces == 0 for r in results),
        "threshold": threshold,
        "median_ms_per_face": round(float(np.median(times)) * 1000, 2) if times else None,
        "results": [
            {
                "file": str(r.path.relative_to(root)),
                "kind": r.kind,
                "accepted": r.accepted,
                "score": None if r.score is None else round(r.score, 6),
            }
            for r in results
        ],
    }


def threshold_for(
    results: list[dict], targets: tuple[str, ...] = ("print", "screen")
) -> tuple[float, str]:
    """The lowest threshold that accepts no print or screen image, if it refuses at most
    TARGET_BPCER of live images; else the strictest (highest) one that refuses no more.

    Refuses (ImageError) to return a threshold under 0.5: that would wave attacks through.
    """
    imgs = [
        r for r in results if r["score"] is not None and Path(r["file"]).suffix.lower() in IMAGE_EXT
    ]
    live = np.array([r["score"] for r in imgs if r["kind"] == "live"])
    att = np.array([r["score"] for r in imgs if r["kind"] in targets])
    if not len(live) or not len(att):
        raise ImageError(
            "no live or no print/screen image was scored",
            "add images to DIR/live and DIR/attack/print|screen",
        )
    t0 = float(np.ceil(np.nextafter(att.max(), 2.0) * 1e4) / 1e4)  # rounded up: still above
    if t0 <= 1.0 and np.mean(live < t0) <= TARGET_BPCER:
        return t0, (
            f"lowest with APCER 0 on {len(att)} print/screen images; "
            f"BPCER {np.mean(live < t0):.3f} on {len(live)} live"
        )
    allowed = [v for v in np.unique(live) if np.mean(live < v) <= TARGET_BPCER]
    t = float(np.floor(max(allowed) * 1e4) / 1e4)  # the strictest within the target, rounded down
    if t < 0.5:
        raise ImageError(
            f"no usable threshold: BPCER {TARGET_BPCER:.0%} needs {t:.3f}, which would accept "
            "most attacks",
            "measure on live images the camera would see (whole frames with the face and its "
            "surroundings)",
        )
    return t, (
        f"strictest with BPCER <= {TARGET_BPCER:.0%}: BPCER {np.mean(live < t):.3f} on "
        f"{len(live)} live, APCER {np.mean(att >= t):.3f} on {len(att)} print/screen images"
    )


def write_pad_threshold(models_dir: Path, name: str, threshold: float, source: str) -> None:
    """Store the measured threshold in models.json next to the model entry (atomically)."""
    f = models_dir / "models.json"
    cat = json.loads(f.read_text())
    entry = cat["liveness"][name]
    entry["threshold"], entry["threshold_source"] = threshold, source
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cat, indent=2) + "\n")
    tmp.replace(f)
