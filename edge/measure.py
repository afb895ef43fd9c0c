"""`edge-gate eval` and `edge-gate bench`: accuracy on labelled folders, latency on a clip."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeGateError, ImageError, SourceError
from edge.evaluate import pair_scores, summarise
from edge.vision.image import load_image, to_bgr8
from edge.vision.models import load_catalogue
from edge.vision.pipeline import FacePipeline, StageTimes

log = logging.getLogger(__name__)
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def identity_images(root: Path) -> list[tuple[str, Path]]:
    """DIR/<person>/<image> -> [(person, path)], sorted for repeatable runs."""
    if not root.is_dir():
        raise EdgeGateError(f"{root} is not a folder", "pass a folder laid out as DIR/<person>/<image>")
    out = [(d.name, f) for d in sorted(root.iterdir()) if d.is_dir()
           for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXT]
    if not out:
        raise EdgeGateError(f"{root} holds no DIR/<person>/<image> files")
    return out


def evaluate_folder(pipe: FacePipeline, root: Path) -> dict:
    """Embed every image, score all pairs, report the verification metrics."""
    embs, labels, ms, no_face, unreadable, low_quality = [], [], [], 0, 0, 0
    for person, path in identity_images(root):
        try:
            img = load_image(path)
        except ImageError as e:
            log.warning("eval skip unreadable=%s reason=%s", path, e)
            unreadable += 1
            continue
        t0 = time.perf_counter()
        obs = pipe.embed_still(img)
        ms.append((time.perf_counter() - t0) * 1000)
        if obs is None:
            no_face += 1
            continue
        low_quality += not obs.quality.ok
        embs.append(obs.embedding)
        labels.append(person)
    result = {
        "embedder": pipe.spec.name,
        "detector": "blazeface_" + ("full" if pipe.detector.size == 192 else "short"),
        "images": len(ms) + unreadable,
        "embedded": len(embs),
        "no_face": no_face,
        "unreadable": unreadable,
        "below_quality_gate": int(low_quality),
        "identities": len(set(labels)),
    }
    if len(embs) >= 2:
        result.update(summarise(pair_scores(np.array(embs), labels)))
    result["median_ms_per_image"] = round(float(np.median(ms)), 2) if ms else None
    return result


def write_threshold(models_dir: Path, embedder: str, threshold: float, source: str) -> None:
    """Record a measured threshold in models/models.json, where the matcher reads it."""
    f = models_dir / "models.json"
    cat = load_catalogue(models_dir)
    cat["embedders"][embedder]["threshold"] = round(threshold, 4)
    cat["embedders"][embedder]["threshold_source"] = source
    f.write_text(json.dumps(cat, indent=2) + "\n")


def _stats(values: list[float]) -> dict[str, float]:
    a = np.array(values) * 1000
    return {"median_ms": round(float(np.median(a)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2)}


def bench_clip(make_pipe, clip: Path, threads_list: list[int], max_frames: int = 0) -> dict:
    """Per-stage latency and end-to-end fps on a recorded clip, for each thread count."""
    report = {"clip": str(clip), "runs": []}
    for threads in threads_list:
        pipe: FacePipeline = make_pipe(threads)
        cap = cv2.VideoCapture(str(clip))
        if not cap.isOpened():
            raise SourceError(f"{clip}: cannot open video", "check the path and that the file is a video")
        decode, times, n, faces = [], StageTimes(), 0, 0
        t_start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            if not ok:
                break
            frame = to_bgr8(frame)
            decode.append(time.perf_counter() - t0)
            faces += len(pipe.analyze(frame, embed_all=True, times=times))
            n += 1
            if max_frames and n >= max_frames:
                break
        wall = time.perf_counter() - t_start
        cap.release()
        s = times.samples
        face_frames = [x for x in s if x["faces"]]
        report["runs"].append({
            "threads": threads,
            "frames": n,
            "faces": faces,
            "decode": _stats(decode),
            "detect": _stats([x["detect"] for x in s]),
            "align": _stats([x["align"] / x["faces"] for x in face_frames]) if face_frames else None,
            "embed": _stats([x["embed"] / x["faces"] for x in face_frames]) if face_frames else None,
            "fps_end_to_end": round(n / wall, 2) if wall else None,
        })
    return report


def format_bench(report: dict) -> str:
    lines = [f"clip: {report['clip']}"]
    for r in report["runs"]:
        lines.append(f"threads={r['threads']} frames={r['frames']} faces={r['faces']} fps_end_to_end={r['fps_end_to_end']}")
        for stage in ("decode", "detect", "align", "embed"):
            st = r[stage]
            if st:
                lines.append(f"  {stage:<7} median {st['median_ms']:8.2f} ms   p95 {st['p95_ms']:8.2f} ms")
    return "\n".join(lines)


def bench_gate(clip: Path, enroll_images: list[Path], workdir: Path) -> dict:
    """The whole gate on a clip (fast replay): fps, per-frame latency, and time to first grant.

    Latency is counted two ways, in the clip's own time: from the first frame with any face,
    and from the first frame in which the enrolled person's face passes the quality gate.
    """
    from gpiozero.pins.mock import MockFactory

    from edge import config as config_mod
    from edge.daemon import Gate
    from edge.demo import enroll_person, prepare

    cfg = config_mod.load(prepare(workdir, None)[0])  # the demo workspace: keys, mock relay
    pid = enroll_person(cfg, FacePipeline.from_config(cfg), "bench person", enroll_images)
    gate = Gate(cfg, source_spec=str(clip), realtime=False, pin_factory=MockFactory())
    per_frame, first_face, first_usable, grants = [], None, None, []
    original = gate.process

    def timed(frame):
        t0 = time.perf_counter()
        out = original(frame)
        per_frame.append(time.perf_counter() - t0)
        return out

    observe = gate.face.observe
    gate.process = timed
    seen_faces: list[tuple[int, bool]] = []  # (faces in frame, a usable face above the threshold)

    def observe_and_note(image):
        faces = observe(image)
        seen_faces.append((len(faces), any(f.quality_ok and f.score >= gate.face.matcher.threshold for f in faces)))
        return faces

    gate.face.observe = observe_and_note
    fps = gate.source.fps
    act = gate.act

    def note(d):
        if d.decision == "grant":
            grants.append(d)
        act(d)

    gate.act = note
    t0 = time.perf_counter()
    gate.run()
    wall = time.perf_counter() - t0
    for i, (n, usable) in enumerate(seen_faces):
        if n and first_face is None:
            first_face = i
        if usable and first_usable is None:
            first_usable = i
    g0 = grants[0] if grants else None
    return {
        "clip": str(clip), "frames": gate.frames, "fps_end_to_end": round(gate.frames / wall, 2),
        "frame_ms_median": round(float(np.median(per_frame)) * 1000, 2),
        "frame_ms_p95": round(float(np.percentile(per_frame, 95)) * 1000, 2),
        "grants": len(grants), "granted_person_is_enrolled": bool(grants) and all(d.subject == pid for d in grants),
        "first_face_frame": first_face, "first_usable_match_frame": first_usable,
        "grant_frame": g0.frame if g0 else None,
        "latency_from_first_face_s": round((g0.frame - first_face) / fps, 3) if g0 and first_face is not None else None,
        "latency_from_first_usable_match_s": round((g0.frame - first_usable) / fps, 3)
        if g0 and first_usable is not None else None,
        "note": "latencies in clip time at the clip's frame rate; add one frame_ms for processing",
    }
