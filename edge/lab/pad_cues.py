"""What the frame and surround cues cost and catch: `python -m edge.lab.pad_cues FIXTURES`.

Live faces of every source (camera frames and photos): how often a cue refuses one, and how
often it refuses one the liveness model passed (the BPCER the cues add). Renderings
(edge/lab/padsynth.py, generated here, never stored): a fixture face printed, cut out around
the head or on a screen, on a plain gray/white surround, the face 0.35-0.6 of the frame height;
how many the model, too close, or a cue refuses, and how many pass everything. Renderings of
the even-numbered people (sorted) were looked at while the cues were made ("dev"); the odd ones
were not ("test"), nor were any of the seeds here.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge import config as config_mod
from edge.errors import ImageError
from edge.lab import padsynth
from edge.vision import cues
from edge.vision.image import load_image, open_video
from edge.vision.liveness import PadModel, PadSpec
from edge.vision.pipeline import FacePipeline


def _video(path: Path, every: int) -> Iterator[np.ndarray]:
    cap = open_video(path)
    i = 0
    try:
        while True:
            ok, f = cap.read()
            if not ok:
                return
            if i % every == 0:
                yield f
            i += 1
    finally:
        cap.release()


def live_sources(fx: Path) -> dict[str, Iterator[np.ndarray]]:
    """Live faces by source: camera frames of rooms and stages, and photos of people."""

    def images(paths) -> Iterator[np.ndarray]:
        for p in paths:
            try:
                yield load_image(p)
            except ImageError:
                continue

    return {
        "nuaa (webcam)": images(sorted((fx / "pad" / "live").glob("nuaa_*"))),
        "zubair (room)": images(sorted((fx / "pad_frames" / "live").glob("*"))),
        "zubair clip, every 7th frame": _video(
            fx / "pad_frames" / "video" / "live" / "zubair_live.webm", 7
        ),
        "hamilton clip, every 5th frame": _video(fx / "video" / "short_hamilton_clip.mp4", 5),
        "mall clip, every 8th frame": _video(fx / "video" / "mall_walking.mp4", 8),
        "silent-face samples": images(sorted((fx / "spoof").glob("image_T*.jpg"))),
        "faces/ photos": images(sorted((fx / "faces").glob("*/*"))),
        "lfw photos, no black fill": (
            f for f in images(sorted((fx / "lfw").glob("*/*.jpg"))) if not black_filled(f)
        ),
    }


def black_filled(bgr: np.ndarray) -> bool:
    """Black where the image's crop ran past the photo it was cut from (most LFW images: a
    straight border a frame cue rightly calls one), on a side or in a corner."""
    g = bgr.mean(axis=2) if bgr.ndim == 3 else bgr.astype(np.float64)
    parts = (
        g[:4],
        g[-4:],
        g[:, :4],
        g[:, -4:],
        g[:12, :12],
        g[:12, -12:],
        g[-12:, :12],
        g[-12:, -12:],
    )
    return any(p.mean() < 25 and p.std() < 12 for p in parts)


LONE_RIM_LENGTH = 2.5  # face sizes: an edge across most of the canonical crop's height


def lone_rim(bgr: np.ndarray, box: np.ndarray) -> str | None:
    """A cue measured and not adopted (models/MODELS.md, "Cues"): one long straight edge beside
    the face ("beside": left or right) or above or below it ("above_below") with a plain
    surface beyond it, the one border of a print or screen still in view; None if there is
    none. A door frame, a lane's post or a ceiling line beside a live head looks the same."""
    crop, valid = cues.canonical(bgr, box)
    found = {
        "beside" if e.side in (0, 2) else "above_below"
        for e in cues.straight_edges(crop, valid)
        if e.beyond <= cues.PLAIN_STD and e.length >= LONE_RIM_LENGTH
    }
    return "beside" if "beside" in found else (found.pop() if found else None)


def _largest(pipe: FacePipeline, bgr: np.ndarray):
    for det in pipe.still_detectors():
        found = det.detect(bgr)
        if found:
            return max(found, key=lambda d: d.width * d.height)
    return None


def measure(
    fx: Path, cfg: config_mod.Config, model: str | None = None, threshold: float | None = None
) -> dict:
    """The cues on every live source and on the renderings, with the model's verdict beside
    (at the entry's threshold, or `threshold`)."""
    pipe = FacePipeline.from_config(cfg)
    spec = PadSpec.load(config_mod.models_path(cfg), model or cfg.liveness.model)
    if threshold is not None:
        spec = dataclasses.replace(spec, threshold=threshold)
    pad = PadModel(spec, threads=1)
    live, times = {}, []
    for name, frames in live_sources(fx).items():
        n = fired = passed = added = 0
        rims = {"beside": 0, "above_below": 0}
        for bgr in frames:
            d = _largest(pipe, bgr)
            if d is None:
                continue
            ok = pad.is_live(pad.live_probability(bgr, d.box))
            t0 = time.perf_counter()
            cue = cues.veto(bgr, d.box) is not None
            times.append(time.perf_counter() - t0)
            n, fired, passed, added = n + 1, fired + cue, passed + ok, added + (ok and cue)
            if (rim := lone_rim(bgr, d.box)) is not None:
                rims[rim] += 1
        live[name] = {
            "faces": n,
            "cue_fires": round(fired / n, 4) if n else None,
            "model_passes": passed,
            "bpcer_added": round(added / passed, 4) if passed else None,
            "lone_rim": rims,
        }
    renders: dict[str, dict[str, int]] = {}
    people = sorted(p for p in (fx / "faces").iterdir() if p.is_dir())
    for i, person in enumerate(people):
        split = "dev" if i % 2 == 0 else "test"
        for photo_path in sorted(person.iterdir())[:2]:
            try:
                photo = load_image(photo_path)
            except ImageError:
                continue
            seen = pipe.embed_still(photo)
            if seen is None:
                continue
            for style in padsynth.SURROUND_STYLES:
                for seed in range(3):
                    rng = np.random.default_rng(5000 + 31 * i + seed)
                    frame = padsynth.render_surround(photo, seen.detection.box, style, rng)
                    row = renders.setdefault(f"{style} {split}", dict.fromkeys(OUTCOMES, 0))
                    outcome, box = _outcome(pipe, pad, frame)
                    row[outcome] += 1
                    if outcome == "accepted" and box is not None:
                        rim = lone_rim(frame, box)
                        key = f"accepted_lone_rim_{rim}" if rim else "accepted_no_rim"
                        row[key] = row.get(key, 0) + 1
    return {
        "model": spec.name,
        "threshold": spec.threshold,
        "cue_ms_median": round(float(np.median(times)) * 1000, 2) if times else None,
        "cue_ms_p95": round(float(np.percentile(times, 95)) * 1000, 2) if times else None,
        "live": live,
        "renderings": renders,
    }


OUTCOMES = ("no_face", "too_close", "cue", "model", "accepted")


def _outcome(pipe: FacePipeline, pad: PadModel, frame: np.ndarray):
    """What refuses one rendering first, as the gate asks: too close, the model, a cue; and
    the face box judged (None without a face)."""
    faces = pipe.analyze(frame)
    if not faces:
        return "no_face", None
    box = max(faces, key=lambda f: f.detection.width).detection.box
    before = pad.too_close
    p = pad.live_probability(frame, box)
    if pad.too_close > before:
        return "too_close", box
    if cues.veto(frame, box) is not None:
        return "cue", box  # the cues alone refuse it, whatever the model says
    return ("accepted" if pad.is_live(p) else "model"), box


if __name__ == "__main__":  # python -m edge.lab.pad_cues FIXTURES [MODEL [THRESHOLD]]
    cfg = config_mod.load(None)
    a = sys.argv[1:]
    model = a[1] if len(a) > 1 and a[1] != "-" else None
    threshold = float(a[2]) if len(a) > 2 else None
    print(json.dumps(measure(Path(a[0]), cfg, model, threshold)))
