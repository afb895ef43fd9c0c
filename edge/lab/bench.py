"""`edge-gate bench`: latency per stage on a clip, the whole gate, 1:N search in a large gallery."""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge.errors import SourceError
from edge.gallery.crypto import init_key
from edge.gallery.matcher import Matcher, to_template_grid
from edge.gallery.store import Consent, Gallery, NewPerson
from edge.gate.daemon import Gate
from edge.lab.demo import enroll_person, prepare
from edge.progress import Progress, progress
from edge.vision.image import open_video, to_bgr8
from edge.vision.pipeline import FacePipeline, StageTimes

log = logging.getLogger(__name__)


def _stats(values: list[float]) -> dict[str, float]:
    a = np.array(values) * 1000
    return {
        "median_ms": round(float(np.median(a)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
    }


def bench_clip(
    make_pipe, clip: Path, threads_list: list[int], max_frames: int = 0, make_pad=None
) -> dict:
    """Per-stage latency and end-to-end fps on a recorded clip, for each thread count.

    With `make_pad` (threads -> PadModel) the liveness model runs on every face as its own
    stage, `pad` (the gate runs it only on faces that match someone enrolled).
    """
    report = {"clip": str(clip), "runs": []}
    for threads in threads_list:
        pipe: FacePipeline = make_pipe(threads)
        pad = make_pad(threads) if make_pad else None
        pad_times: list[float] = []
        cap = open_video(clip, pipe.max_image_pixels)
        if not cap.isOpened():
            raise SourceError(
                f"{clip}: cannot open video", "check the path and that the file is a video"
            )
        decode, times, n, faces = [], StageTimes(), 0, 0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = count if count > 0 else None  # a still photo says -2**63: unknown
        shown = Progress(
            f"bench threads={threads}",
            min(frames, max_frames) if frames and max_frames else (max_frames or frames),
            unit="frame",
        )
        t_start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            if not ok:
                break
            frame = to_bgr8(frame)
            decode.append(time.perf_counter() - t0)
            seen = pipe.analyze(frame, embed_all=True, times=times)
            faces += len(seen)
            for f in seen if pad else ():
                t1 = time.perf_counter()
                pad.live_probability(frame, f.detection.box)
                pad_times.append(time.perf_counter() - t1)
            n += 1
            shown(n)
            if max_frames and n >= max_frames:
                break
        wall = time.perf_counter() - t_start
        cap.release()
        if not n:
            raise SourceError(
                f"{clip}: no frame could be read (not a video, or damaged)",
                "give a video file such as an mp4 recorded by the gate's camera",
            )
        shown.close()
        s = times.samples
        face_frames = [x for x in s if x["faces"]]
        report["runs"].append(
            {
                "threads": threads,
                "frames": n,
                "faces": faces,
                "decode": _stats(decode),
                "detect": _stats([x["detect"] for x in s]),
                "align": _stats([x["align"] / x["faces"] for x in face_frames])
                if face_frames
                else None,
                "embed": _stats([x["embed"] / x["faces"] for x in face_frames])
                if face_frames
                else None,
                "pad": _stats(pad_times) if pad_times else None,
                "fps_end_to_end": round(n / wall, 2) if wall else None,
            }
        )
    return report


def format_bench(report: dict) -> str:
    """Readable per-stage timings for `bench` when --json is not asked for."""
    lines = [f"clip: {report['clip']}"]
    for r in report["runs"]:
        lines.append(
            f"threads={r['threads']} frames={r['frames']} faces={r['faces']}"
            f" fps_end_to_end={r['fps_end_to_end']}"
        )
        for stage in ("decode", "detect", "align", "embed", "pad"):
            st = r.get(stage)
            if st:
                lines.append(
                    f"  {stage:<7} median {st['median_ms']:8.2f} ms   p95 {st['p95_ms']:8.2f} ms"
                )
    return "\n".join(lines)


def bench_gate(
    clip: Path,
    enroll_images: list[Path],
    workdir: Path,
    embedder: str | None = None,
    detector: str | None = None,
) -> dict:
    """The whole gate on a clip (fast replay): fps, per-frame latency, and time to first grant.

    Latency is counted two ways, in the clip's own time: from the first frame with any face,
    and from the first frame in which the enrolled person's face passes the quality gate.
    `embedder` / `detector` (None: the demo config's) are set before the person is enrolled.
    """
    cfg = config_mod.load(prepare(workdir, None)[0])  # the demo workspace: keys, mock relay
    cfg = config_mod.override(cfg, vision={"embedder": embedder, "detector": detector})
    pid = enroll_person(cfg, FacePipeline.from_config(cfg), "bench person", enroll_images)
    cfg = config_mod.override(cfg, camera={"source": str(clip), "realtime": False})
    gate = Gate(cfg, pin_factory=MockFactory())
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

    def observe_and_note(image, t=0.0):
        faces = observe(image, t)
        seen_faces.append(
            (
                len(faces),
                any(f.quality_ok and f.score >= gate.face.matcher.threshold for f in faces),
            )
        )
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
        "clip": str(clip),
        "embedder": cfg.vision.embedder,
        "detector": cfg.vision.detector,
        "frames": gate.frames,
        "fps_end_to_end": round(gate.frames / wall, 2),
        "frame_ms_median": round(float(np.median(per_frame)) * 1000, 2),
        "frame_ms_p95": round(float(np.percentile(per_frame, 95)) * 1000, 2),
        "grants": len(grants),
        "granted_person_is_enrolled": bool(grants) and all(d.subject == pid for d in grants),
        "first_face_frame": first_face,
        "first_usable_match_frame": first_usable,
        "grant_frame": g0.frame if g0 else None,
        "latency_from_first_face_s": round((g0.frame - first_face) / fps, 3)
        if g0 and first_face is not None
        else None,
        "latency_from_first_usable_match_s": round((g0.frame - first_usable) / fps, 3)
        if g0 and first_usable is not None
        else None,
        "note": "latencies in clip time at the clip's frame rate; add one frame_ms for processing",
    }


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_gallery(
    n: int, dim: int = 128, people_templates: int = 3, probes: int = 200, seed: int = 0
) -> dict:
    """1:N search over n sealed templates of generated unit vectors, one probe at a time.

    Half the probes are noisy copies of enrolled templates, half are strangers; every decision
    is checked against exact float32 scoring of every template (`decisions_equal_exact`).
    """
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        kek = init_key(Path(tmp) / "k.key")
        vec = rng.standard_normal((n, dim)).astype(np.float32)
        vec = to_template_grid(vec / np.linalg.norm(vec, axis=1, keepdims=True))
        t0 = time.perf_counter()
        per = people_templates
        with Gallery(Path(tmp) / "g.db", kek) as g:
            batches = range(0, n, 5000)  # batches of people, each with `per` templates
            for start in progress(batches, f"bench gallery: {n} templates", unit="batch"):
                batch = [
                    NewPerson(f"person {i}", Consent("bench"), list(vec[i : i + per]), [1.0] * per)
                    for i in range(start, min(n, start + 5000), per)
                ]
                g.add_people(batch, "bench", "v")
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with Gallery(Path(tmp) / "g.db", kek) as g:
            t = g.templates("bench")
        m = Matcher(t.matrix, t.person_ids, 0.5, 0.04)
        load_s = time.perf_counter() - t0
        del t
    mated = vec[rng.integers(0, n, probes - probes // 2)]
    mated = mated + rng.normal(0, 0.02, mated.shape).astype(np.float32)
    strangers = rng.standard_normal((probes // 2, dim)).astype(np.float32)
    q = np.concatenate([mated, strangers])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    lat, got, rescored = [], [], []
    for p in q:  # one probe at a time, as the gate sees them
        s = time.perf_counter()
        got.append(m.match(p))
        lat.append(time.perf_counter() - s)
        rescored.append(len(m.candidates(p)[0]))
    exact = m.person_scores(q)
    ref = exact.argmax(axis=1)
    same = sum(
        r.candidate == m.people[b] and abs(r.score - float(e[b])) <= 1e-6
        for r, b, e in zip(got, ref, exact, strict=True)
    )
    a = np.array(lat) * 1000
    return {
        "templates": n,
        "people": len(m.people),
        "dim": dim,
        "build_s": round(build_s, 2),
        "load_decrypt_s": round(load_s, 3),
        "search_ms_median": round(float(np.median(a)), 3),
        "search_ms_p95": round(float(np.percentile(a, 95)), 3),
        "search_ms_min": round(float(a.min()), 3),  # the figure least disturbed by other load
        "matrix_mb": round(m.nbytes / 2**20, 1),  # MiB
        "peak_rss_mb": round(_rss_mb(), 1),
        "rows_rescored_median": int(np.median(rescored)),
        "probes": probes,
        "probes_matched": sum(r.person_id is not None for r in got),
        "decisions_equal_exact": same,
    }


def format_gallery_bench(r: dict) -> str:
    """Readable 1:N search figures for `bench --gallery` when --json is not asked for."""
    return (
        f"gallery 1:N: {r['templates']} templates, {r['people']} people, dim {r['dim']}\n"
        f"  load (decrypt) {r['load_decrypt_s']:.3f} s"
        f"   search median {r['search_ms_median']:.3f} ms"
        f"   p95 {r['search_ms_p95']:.3f} ms   min {r['search_ms_min']:.3f} ms"
        f"   matrix {r['matrix_mb']} MiB"
        f"   process peak {r['peak_rss_mb']} MiB"
        f"\n  {r['probes_matched']}/{r['probes']} probes matched (half are strangers);"
        " rows rescored"
        f" median {r['rows_rescored_median']}; best person and score equal to exact float32 scoring"
        f" for {r['decisions_equal_exact']}/{r['probes']}"
    )
