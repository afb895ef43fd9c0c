"""`edge-gate eval-pad DIR`: presentation-attack detection measured in ISO/IEC 30107-3 terms.

DIR holds live/ and attack/<type>/ (print, screen, replay, mask, ...), each with images or video
files. An image is one presentation, judged by the model's live probability on its largest face
and by the cues (edge/vision/cues.py); a video is one presentation, judged by the gate's own
episode logic (policy k-of-n with the liveness verdict, motion cue included): accepted when the
policy would grant the face. APCER per type = attacks accepted / attacks of that type; `apcer`
is the worst type (30107-3); BPCER = live presentations refused. A presentation with no face
found, or a face too close to judge, counts as refused.

Generalisation: every image has a source tag (its row's `source` in DIR/frames.csv, else the
file name before the first "_", or the first group of --source-pattern). `by_source` gives the
figures per source; leave-one-source-out picks the threshold on all other sources with the
same rule `--write-threshold` uses and reports each source at that threshold.

`--clips DIR`: every video under DIR/live and DIR/attack/<type> (or DIR/<type>) played through
the gate's policy as if the face matched; clip-level APCER/BPCER and the frames to a decision.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.config import Config
from edge.errors import ImageError
from edge.gate.policy import DENY, FACE, GRANT, FaceSeen, Observation, Policy, PolicyParams
from edge.progress import progress
from edge.vision import cues
from edge.vision.image import load_image, open_video
from edge.vision.liveness import LivenessJudge, PadModel
from edge.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".gif", ".webm"}
TARGET_BPCER = 0.10  # issue 19's target: APCER <= 0.02 at BPCER <= 0.10, leave-one-source-out


@dataclass(frozen=True)
class Item:
    """One file to judge: where it is, what it shows, and where it came from."""

    path: Path
    root: Path
    kind: str  # "live" or the attack type
    source: str

    @property
    def name(self) -> str:
        """The path relative to its DIR."""
        return str(self.path.relative_to(self.root))

    def shown(self, roots: int) -> str:
        """How a report names the file: relative to its DIR, or whole when DIRs were pooled."""
        return self.name if roots == 1 else str(self.path)


@dataclass(frozen=True)
class Presentation:
    """One live or attack sample's outcome, the unit the PAD error rates count."""

    item: Item
    accepted: bool
    score: float | None  # image: live probability (0 too close); video: share of frames live
    faces: int  # frames (or 1 for an image) in which a face was judged
    too_close: bool = False  # image: the frame holds too little context to judge the face
    cue: str | None = None  # image: the cue that refuses the face whatever the model says
    decision: str = ""  # video: "grant", or the reason of the first refusal
    decision_frame: int | None = None  # video: the frame of the first decision on the face
    first_face: int | None = None  # video: the first frame a face was judged in


# --- what to judge --------------------------------------------------------------------------------


def source_table(root: Path) -> dict[str, str]:
    """DIR/frames.csv: file (relative to DIR) -> source tag; {} when absent or without those."""
    f = root / "frames.csv"
    if not f.is_file():
        return {}
    with open(f, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {r["file"]: r["source"] for r in rows if r.get("file") and r.get("source")}


def source_tag(name: str, table: dict[str, str], rel: str, pattern: re.Pattern | None) -> str:
    """The source of one file: frames.csv, else --source-pattern's group, else the prefix."""
    if rel in table:
        return table[rel]
    if pattern is not None and (m := pattern.search(name)):
        return m.group(1) if m.groups() else m.group(0)
    return Path(name).stem.split("_", 1)[0]


def _wanted(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if include and not any(fnmatch.fnmatch(name, g) for g in include):
        return False
    return not any(fnmatch.fnmatch(name, g) for g in exclude)


def presentations(
    roots: Path | list[Path],
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    pattern: str | None = None,
    any_type_dir: bool = False,
) -> list[Item]:
    """Every file of DIR/live/* and DIR/attack/<type>/* (with any_type_dir, DIR/<type>/* too)
    of each DIR, sorted, filtered by file-name globs; other files are ignored."""
    rx = re.compile(pattern) if pattern else None
    out = []
    for root in [roots] if isinstance(roots, Path) else roots:
        table = source_table(root)
        dirs = [(root / "live", "live")]
        dirs += [(d, d.name) for d in sorted((root / "attack").glob("*")) if d.is_dir()]
        if any_type_dir:
            dirs += [
                (d, d.name)
                for d in sorted(root.glob("*"))
                if d.is_dir() and d.name not in ("live", "attack")
            ]
        for d, kind in dirs:
            for p in sorted(d.glob("*")):
                if p.suffix.lower() not in IMAGE_EXT | VIDEO_EXT:
                    continue
                if not _wanted(p.name, include, exclude):
                    continue
                rel = str(p.relative_to(root))
                out.append(Item(p, root, kind, source_tag(p.name, table, rel, rx)))
    return out


# --- judging --------------------------------------------------------------------------------------


def judge_image(
    pipe: FacePipeline, pad: PadModel, bgr: np.ndarray, times: list[float], with_cues: bool = True
) -> tuple[float | None, bool, str | None]:
    """(live probability, too close, cue) for the largest face; (None, False, None) for none.

    The cues are read on every judged face (not only those the model passes), so that the
    verdict at any threshold can be worked out from the report.
    """
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
                if pad.too_close != close:
                    return p, True, None  # not judged: refused whatever else is seen
                times.append(time.perf_counter() - t0)
                return p, False, cues.veto(bgr, box) if with_cues else None
    return None, False, None


def judge_clip(
    pipe: FacePipeline, judge: LivenessJudge, params: PolicyParams, item: Item, times: list[float]
) -> Presentation:
    """Play a clip through the face policy as if the visitor matched: does it grant, when?"""
    judge.reset()
    cap = open_video(item.path, pipe.max_image_pixels)
    fps = cap.get(cv2.CAP_PROP_FPS) or 15.0
    fps = fps if 1 <= fps <= 120 else 15.0
    policy, i, live_frames, judged = Policy(params), 0, 0, 0
    first, decision, at = None, "", None
    try:
        while decision != GRANT:
            ok, frame = cap.read()
            if not ok:
                break
            h, w = frame.shape[:2]
            faces = []
            for f in pipe.analyze(frame):
                d = f.detection
                v = None
                if f.quality.ok:
                    t0, close = time.perf_counter(), judge.model.too_close
                    v = judge.verdict(frame, d.box, d.keypoints, i / fps)
                    if judge.model.too_close == close:
                        times.append(time.perf_counter() - t0)
                    judged += 1
                    live_frames += v.live
                    first = i if first is None else first
                cx, cy = d.center
                faces.append(
                    FaceSeen(
                        "probe",
                        1.0,
                        d.width / w,
                        (cx / w, cy / h),
                        f.quality.ok,
                        live=None if v is None else v.live,
                        pad="" if v is None else v.reason,
                        quality=f.quality.reasons,
                    )
                )
            for dec in policy.step(Observation(i / fps, i, 0.0, tuple(faces))):
                if dec.via != FACE:
                    continue
                if dec.decision == GRANT:
                    decision, at = GRANT, i
                elif dec.decision == DENY and not decision:
                    decision, at = str(dec.reason), i  # the first refusal; a grant may follow
            i += 1
    finally:
        cap.release()
    if i == 0:  # judged as a presentation with no face, it would count as refused
        raise ImageError(
            f"{item.path}: no frame could be read (empty, damaged, or a codec OpenCV lacks)",
            "re-encode the clip (e.g. H.264 in MP4) or leave it out",
        )
    score = live_frames / judged if judged else None
    return Presentation(
        item, decision == GRANT, score, judged, decision=decision, decision_frame=at,
        first_face=first,
    )  # fmt: skip


def need_both_kinds(items: list, problem: str, fix: str) -> None:
    """Figures need bona fide and attack presentations both: an ImageError when a kind is
    missing."""
    if not any(i.kind == "live" for i in items) or not any(i.kind != "live" for i in items):
        raise ImageError(problem, fix)


def nothing_left(results: list, skipped: list, given: int, where: str) -> None:
    """Figures need a live and an attack presentation judged: an ImageError when the files
    that could not be read left either kind without one (a report of None is no figure)."""
    need_both_kinds(
        [r.item for r in results],
        f"{where}: nothing to measure: {len(skipped)} of {given} file(s) could not be read, "
        "and no live or no attack presentation was left",
        "see the skipped files' reasons above (eval-pad skip=...); pass images or videos",
    )


def evaluate_pad(
    cfg: Config,
    roots: Path | list[Path],
    pipe: FacePipeline,
    judge: LivenessJudge,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    pattern: str | None = None,
) -> dict:
    """Every presentation under the roots, judged; the 30107-3 figures and per-file results."""
    roots = [roots] if isinstance(roots, Path) else list(roots)
    items = presentations(roots, include, exclude, pattern)
    need_both_kinds(
        items,
        f"{', '.join(map(str, roots))}: needs live/ and attack/<type>/ with images or videos",
        "put bona fide samples in live/ and each attack type in attack/<type>/",
    )
    params = PolicyParams.from_config(cfg)
    times: list[float] = []
    results, skipped = [], []
    for item in progress(items, "eval-pad", unit="presentation"):
        try:
            if item.path.suffix.lower() in VIDEO_EXT:
                results.append(judge_clip(pipe, judge, params, item, times))
                continue
            img = load_image(item.path, pipe.max_image_pixels)
            p, close, cue = judge_image(pipe, judge.model, img, times, judge.cues)
        except ImageError as e:
            skipped.append(_skip(item, e, len(roots)))
            continue
        ok = p is not None and judge.model.is_live(p) and cue is None
        results.append(Presentation(item, ok, p, int(p is not None), close, cue))
    nothing_left(results, skipped, len(items), ", ".join(map(str, roots)))
    report = summarise(results, judge.model.spec.threshold, times, roots)
    report["too_close"] = sum(r.too_close for r in results)  # faces filling the frame
    report["cues"] = judge.cues
    report["skipped"] = skipped
    return report


def _skip(item: Item, e: ImageError, roots: int) -> dict:
    """A file left out of the figures (unreadable, oversized): logged, and listed in the
    report's `skipped`, so a count that fell short says why."""
    log.warning("eval-pad skip=%s reason=%s", item.path, e)
    return {"file": item.shown(roots), "reason": str(e.args[0])}


def evaluate_clips(cfg: Config, root: Path, pipe: FacePipeline, judge: LivenessJudge) -> dict:
    """`--clips DIR`: each video judged as the gate would; clip-level figures and latency."""
    items = [
        i for i in presentations(root, any_type_dir=True) if i.path.suffix.lower() in VIDEO_EXT
    ]
    need_both_kinds(
        items,
        f"{root}: needs live/ and attack/<type>/ (or <type>/) with video files",
        "put clips of live visitors in live/ and each attack type in its own folder",
    )
    params = PolicyParams.from_config(cfg)
    times: list[float] = []
    results, skipped = [], []
    for i in progress(items, "eval-pad --clips", unit="clip"):
        try:
            results.append(judge_clip(pipe, judge, params, i, times))
        except ImageError as e:  # an unreadable or oversized clip: said, and left out
            skipped.append(_skip(i, e, 1))
    nothing_left(results, skipped, len(items), str(root))
    report = summarise(results, judge.model.spec.threshold, times, [root])
    report["cues"] = judge.cues
    report["stillness"] = judge.stillness is not None
    report["mode"] = judge.mode
    report["skipped"] = skipped

    def latency(r: Presentation) -> int | None:
        if r.decision_frame is None or r.first_face is None:
            return None
        return r.decision_frame - r.first_face

    for row, r in zip(report["results"], results, strict=True):
        row.update(
            decision=r.decision or None,
            decision_frame=r.decision_frame,
            latency_frames=latency(r),
            frames_judged=r.faces,
        )
    grants = [latency(r) for r in results if r.item.kind == "live" and r.accepted]
    refusals = [latency(r) for r in results if r.item.kind != "live" and not r.accepted]
    report["median_frames_to_grant"] = _median([x for x in grants if x is not None])
    report["median_frames_to_refusal"] = _median([x for x in refusals if x is not None])
    return report


def _median(xs: list[int]) -> float | None:
    return float(np.median(xs)) if xs else None


# --- figures --------------------------------------------------------------------------------------


def _rates(rows: list[dict], accepted) -> dict:
    """Counts, APCER per type (and the worst), BPCER of some result rows."""
    live = [r for r in rows if r["kind"] == "live"]
    types = sorted({r["kind"] for r in rows if r["kind"] != "live"})
    by_type = {
        t: round(sum(accepted(r) for r in a) / len(a), 4)
        for t in types
        if (a := [r for r in rows if r["kind"] == t])
    }
    attacks = [r for r in rows if r["kind"] != "live"]
    return {
        "live": len(live),
        "attacks": {t: sum(r["kind"] == t for r in rows) for t in types},
        "apcer": max(by_type.values()) if by_type else None,
        "apcer_by_type": by_type,
        # every attack pooled, whatever its type (the worst type of a type seen twice says less)
        "apcer_all": round(sum(accepted(r) for r in attacks) / len(attacks), 4)
        if attacks
        else None,
        "bpcer": round(sum(not accepted(r) for r in live) / len(live), 4) if live else None,
    }


def summarise(
    results: list[Presentation], threshold: float, times: list[float], roots: list[Path]
) -> dict:
    """The report: counts, APCER by type (and the worst), BPCER, per source, ms per face."""
    rows = [
        {
            "file": r.item.shown(len(roots)),
            "kind": r.item.kind,
            "source": r.item.source,
            "accepted": r.accepted,
            "score": None if r.score is None else round(r.score, 6),
            **({"too_close": True} if r.too_close else {}),
            **({"cue": r.cue} if r.cue else {}),
        }
        for r in results
    ]
    ok = lambda r: r["accepted"]  # noqa: E731
    by_source = {
        s: {k: v for k, v in _rates([r for r in rows if r["source"] == s], ok).items()}
        for s in sorted({str(r["source"]) for r in rows})
    }
    return {
        "dir": str(roots[0]) if len(roots) == 1 else [str(r) for r in roots],
        **_rates(rows, ok),
        "no_face": sum(r.faces == 0 for r in results),
        "threshold": threshold,
        "median_ms_per_face": round(float(np.median(times)) * 1000, 2) if times else None,
        "by_source": by_source,
        "results": rows,
    }


def _effective(r: dict) -> float:
    """The score a threshold is compared with: 0 when no face was found or a cue refuses it."""
    return 0.0 if r.get("cue") or r["score"] is None else float(r["score"])


def _images(results: list[dict]) -> list[dict]:
    return [r for r in results if Path(r["file"]).suffix.lower() in IMAGE_EXT]


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


MIDPOINTS = {  # where between APCER 0 (a) and the live budget (b) the threshold sits
    "mean": lambda a, b: (a + b) / 2,
    "geometric": lambda a, b: float(np.sqrt(a * b)),
    "logit": lambda a, b: float(1 / (1 + np.exp(-(_logit(a) + _logit(b)) / 2))),
}


def threshold_for(
    results: list[dict],
    targets: tuple[str, ...] | None = None,
    target_bpcer: float = TARGET_BPCER,
    strict: bool = True,
    midpoint: str = "mean",
) -> tuple[float, str]:
    """The threshold with the most room on both sides: halfway between the lowest one that
    accepts no attack image (of `targets`, default every type) and the strictest one that
    refuses at most target_bpcer of the live images; when those two cross, the strictest one
    within the budget (the live budget binds, the attacks are judged at it).

    Images with no face found, too close, or refused by a cue count as refused at any
    threshold. strict=False refuses (ImageError) a threshold that accepts half the attacks.
    `midpoint` (MIDPOINTS) is a measurement: "halfway" in probability (the shipped rule), in
    log-odds, or the geometric mean, both of which lie nearer the attacks.
    """
    imgs = _images(results)
    live = np.array([_effective(r) for r in imgs if r["kind"] == "live"])
    att = np.array(
        [
            _effective(r)
            for r in imgs
            if r["kind"] != "live" and (targets is None or r["kind"] in targets)
        ]
    )
    if not len(live) or not len(att):
        raise ImageError(
            "no live or no attack image was scored",
            "add images to DIR/live and DIR/attack/<type>",
        )
    allowed = [v for v in np.unique(live) if np.mean(live < v) <= target_bpcer]
    t_live = float(np.floor(max(allowed, default=0.0) * 1e4) / 1e4)  # rounded down: within
    t_att = float(np.ceil(np.nextafter(att.max(), 2.0) * 1e4) / 1e4)  # rounded up: above all
    if t_att <= t_live:
        t = round(MIDPOINTS[midpoint](t_att, t_live), 4)
        where = "halfway" if midpoint == "mean" else f"{midpoint} midpoint"
        how = f"{where} between APCER 0 ({t_att}) and BPCER {target_bpcer:.0%} ({t_live})"
    else:
        t, how = t_live, f"strictest with BPCER <= {target_bpcer:.0%} (APCER 0 needs {t_att})"
    apcer = float(np.mean(att >= t))
    if apcer >= 0.5 and not strict:
        raise ImageError(
            f"no usable threshold: BPCER {target_bpcer:.0%} needs {t:.4f}, which accepts "
            f"{apcer:.0%} of the attacks",
            "measure on live images the camera would see (whole frames with the face and its "
            "surroundings)",
        )
    return t, (
        f"{how}: BPCER {np.mean(live < t):.3f} on {len(live)} live, "
        f"APCER {apcer:.3f} on {len(att)} attack images"
    )


def leave_one_source_out(
    results: list[dict], target_bpcer: float = TARGET_BPCER, midpoint: str = "mean"
) -> dict:
    """Each source judged at the threshold `threshold_for` picks on all the other sources.

    Per source: that threshold, counts, `loso_apcer` (worst type), `loso_apcer_by_type`,
    `loso_bpcer`; pooled: the same over every source's presentations at its own threshold.
    A source whose fold leaves no usable threshold is reported with threshold None and left
    out of the pooled figures.
    """
    imgs = _images(results)
    per, pooled = {}, []
    for s in sorted({r["source"] for r in imgs}):
        held = [r for r in imgs if r["source"] == s]
        try:
            others = [r for r in imgs if r["source"] != s]
            t, why = threshold_for(others, None, target_bpcer, midpoint=midpoint)
        except ImageError as e:  # the other sources hold no live or no attack image
            per[s] = {"threshold": None, "why": e.args[0]}
            continue
        ok = lambda r, t=t: _effective(r) >= t  # noqa: E731
        rates = _rates(held, ok)
        per[s] = {
            "threshold": t,
            "why": why,
            "live": rates["live"],
            "attacks": rates["attacks"],
            "loso_apcer": rates["apcer"],
            "loso_apcer_by_type": rates["apcer_by_type"],
            "loso_apcer_all": rates["apcer_all"],
            "loso_bpcer": rates["bpcer"],
        }
        pooled += [{**r, "accepted": ok(r)} for r in held]
    rates = _rates(pooled, lambda r: r["accepted"])
    return {
        "rule": f"threshold_for on the other sources (target BPCER {target_bpcer})"
        + ("" if midpoint == "mean" else f", {midpoint} midpoint"),
        "by_source": per,
        "pooled": {
            "live": rates["live"],
            "attacks": rates["attacks"],
            "loso_apcer": rates["apcer"],
            "loso_apcer_by_type": rates["apcer_by_type"],
            "loso_apcer_all": rates["apcer_all"],
            "loso_bpcer": rates["bpcer"],
        },
    }


def write_pad_threshold(models_dir: Path, name: str, threshold: float, source: str) -> None:
    """Store the measured threshold in models.json next to the model entry (atomically)."""
    f = models_dir / "models.json"
    cat = json.loads(f.read_text())
    entry = cat["liveness"][name]
    entry["threshold"], entry["threshold_source"] = threshold, source
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cat, indent=2) + "\n")
    tmp.replace(f)
