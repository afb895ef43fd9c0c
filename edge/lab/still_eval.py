"""What the stillness cue costs and catches: `python -m edge.lab.still_eval FIXTURES`.

Live clips: every face of every frame through edge/vision/stillness.py as the gate sees it;
per clip, the face tracks, how long each took to be seen moving (the wait it adds before a
grant), and how many were still for STILL_S (live visitors it would refuse). NUAA live
sessions (people seated facing a webcam): the change between listed
frames of one session, against MOVED. Propped renderings (edge/lab/padsynth.py, made here):
one rendering per style of the first photo of every fixture person, 30 frames with sensor
noise of a given spread, written as MP4 and read back; the largest change any frame shows
against the first, and how many renderings the cue refuses, per noise level.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edge import config as config_mod
from edge.lab import padsynth
from edge.lab.pad_cues import _largest, _video
from edge.lab.synth import write_video
from edge.vision import stillness
from edge.vision.image import load_image, open_video
from edge.vision.pipeline import FacePipeline

FPS = 15.0


def clip_tracks(pipe: FacePipeline, path: Path) -> dict:
    """Seconds from each face track's first frame to its first motion, and tracks still."""
    cap = open_video(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or FPS
    fps = fps if 1 <= fps <= 120 else FPS
    st = stillness.Stillness()
    waits: list[float] = []
    still = 0
    decided: list[stillness._Track] = []  # the tracks themselves (an id may be reused)
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            for f in pipe.analyze(frame):
                said = st.see(frame, f.detection.box, i / fps)
                box = np.asarray(f.detection.box[:4], np.float64)
                track = next((tr for tr in st.tracks if np.array_equal(tr.box, box)), None)
                if track is None or any(tr is track for tr in decided):
                    continue  # a box see() could not place, or a track already counted
                if said in (stillness.MOVING, stillness.STILL):
                    decided.append(track)
                    if said == stillness.MOVING:
                        waits.append(i / fps - track.start)
                    else:
                        still += 1
            i += 1
    finally:
        cap.release()
    return {
        "tracks": len(decided),
        "wait_s_median": round(float(np.median(waits)), 3) if waits else None,
        "wait_s_max": round(float(max(waits)), 3) if waits else None,
        "still": still,
    }


def nuaa_changes(pipe: FacePipeline, live: Path) -> dict:
    """Change between consecutive listed frames of each NUAA live session (20 fps)."""
    sessions: dict[str, list[tuple[int, Path]]] = {}
    for p in sorted(live.glob("nuaa_*")):
        if m := re.match(r"(.*)_(\d+)\.\w+$", p.name):
            sessions.setdefault(m.group(1), []).append((int(m.group(2)), p))
    pairs = []
    for items in sessions.values():
        items.sort()
        for (i, a_path), (j, b_path) in zip(items, items[1:], strict=False):
            a, b = load_image(a_path), load_image(b_path)
            d = _largest(pipe, a)
            if d is None or a.shape != b.shape:
                continue
            pa, pb = stillness.patch(a, d.box), stillness.patch(b, d.box)
            if pa is not None and pb is not None:
                pairs.append(((j - i) / 20.0, stillness.change(pa, pb)))
    ch = np.array([c for _, c in pairs])
    return {
        "pairs": len(pairs),
        "gap_s_min": round(min(g for g, _ in pairs), 2) if pairs else None,
        "change_min": round(float(ch.min()), 2) if pairs else None,
        "change_p5": round(float(np.percentile(ch, 5)), 2) if pairs else None,
        "below_moved": int((ch < stillness.MOVED).sum()),
    }


def propped(pipe: FacePipeline, fx: Path, noise: float, tmp: Path) -> dict:
    """Renderings propped up (30 frames, only the noise changes), through an MP4 file."""
    changes, refused, n, times = [], 0, 0, []
    people = sorted(p for p in (fx / "faces").iterdir() if p.is_dir())
    for i, person in enumerate(people):
        photo = load_image(sorted(person.iterdir())[0])
        seen = pipe.embed_still(photo)
        if seen is None:
            continue
        for style in padsynth.SURROUND_STYLES:
            rng = np.random.default_rng(900 + i)
            still = padsynth.render_surround(photo, seen.detection.box, style, rng)
            frames = [
                np.clip(still + rng.normal(0, noise, still.shape), 0, 255).astype(np.uint8)
                for _ in range(30)
            ]
            path = tmp / "propped.mp4"
            write_video(path, iter(frames), FPS, (still.shape[1], still.shape[0]))
            back = list(_video(path, 1))
            d = _largest(pipe, back[0])
            if d is None:
                continue
            patches = [stillness.patch(f, d.box) for f in back]
            kept = [q for q in patches if q is not None]
            if len(kept) < 2:
                continue
            changes.append(max(stillness.change(kept[0], q) for q in kept))
            st, said = stillness.Stillness(), []
            for k, f in enumerate(back):
                t0 = time.perf_counter()
                said.append(st.see(f, d.box, k / FPS))
                times.append(time.perf_counter() - t0)
            refused += said[-1] == stillness.STILL
            n += 1
    return {
        "renderings": n,
        "refused": refused,
        "change_max": round(float(max(changes)), 2) if changes else None,
        # per frame of a face not seen moving (after it moves, see() compares nothing)
        "see_ms_median": round(float(np.median(times)) * 1000, 3) if times else None,
        "see_ms_p95": round(float(np.percentile(times, 95)) * 1000, 3) if times else None,
    }


def measure(fx: Path) -> dict:
    pipe = FacePipeline.from_config(config_mod.load(None))
    clips = {
        "zubair live": fx / "pad_frames" / "video" / "live" / "zubair_live.webm",
        "Hamilton": fx / "video" / "short_hamilton_clip.mp4",
        "mall": fx / "video" / "mall_walking.mp4",
        "interview gif": fx / "video" / "elon-musk-smoke.gif",
    }
    with tempfile.TemporaryDirectory() as tmp:
        return {
            "moved_at": stillness.MOVED,
            "still_s": stillness.STILL_S,
            "live_clips": {k: clip_tracks(pipe, p) for k, p in clips.items()},
            "nuaa_live": nuaa_changes(pipe, fx / "pad" / "live"),
            "propped": {
                str(sd): propped(pipe, fx, sd, Path(tmp)) for sd in (0.0, 2.0, 4.0, 6.0, 8.0)
            },
        }


if __name__ == "__main__":  # python -m edge.lab.still_eval FIXTURES
    print(json.dumps(measure(Path(sys.argv[1]))))
