"""Compare liveness catalogue entries source by source, leave-one-source-out, and by context.

Every image of the PAD fixture folders (DIR/live, DIR/attack/<type>) is scored once per model on
its largest BlazeFace face (short range, then full range, then the frame padded by 30% as
eval-pad does); a face below the entry's context floor counts as refused (too close). The
source of an image is `frames.csv`'s `source` column where the folder has one, else the file
name's prefix before the first `_`.

Leave-one-source-out: for each source, the threshold is the lowest live probability at which the
other sources' attacks are accepted at most `--apcer` of the time (pooled); the source is then
reported at that threshold. `--floor` overrides the entries' min_crop_scale (repeatable: one
report per floor). `--context` also scores each live and attack frame again cut down to leave
only c model-style face heights around it on both axes (as the floor counts context), for c in
4.0 .. 1.0.

    .venv/bin/python scripts/compare_pad_models.py ../shared/fixtures/pad \\
        ../shared/fixtures/pad_frames --model silentface_int8 --model minifasnet_int8
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.vision.detector import BlazeFace  # noqa: E402
from edge.vision.image import load_image  # noqa: E402
from edge.vision.liveness import PadModel, PadSpec, judged_context  # noqa: E402

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CONTEXTS = (4.0, 3.0, 2.7, 2.4, 2.0, 1.7, 1.4, 1.2, 1.0)


def items(root: Path) -> list[tuple[Path, str, str]]:
    """(file, kind, source) for root/live/* and root/attack/<type>/*."""
    sources = {}
    if (root / "frames.csv").is_file():
        with open(root / "frames.csv") as f:
            sources = {r["file"]: r["source"] for r in csv.DictReader(f)}
    out = [(p, "live") for p in sorted((root / "live").glob("*"))]
    for d in sorted(p for p in (root / "attack").glob("*") if p.is_dir()):
        out += [(p, d.name) for p in sorted(d.glob("*"))]
    return [
        (p, k, sources.get(str(p.relative_to(root)), p.name.split("_")[0]))
        for p, k in out
        if p.suffix.lower() in IMAGE_EXT
    ]


def largest_face(dets: list[BlazeFace], bgr: np.ndarray) -> np.ndarray | None:
    """The largest face's box, looking again in a padded frame when none is found."""
    h, w = bgr.shape[:2]
    py, px = int(h * 0.3), int(w * 0.3)
    for img, off in ((bgr, (0, 0)), (None, (py, px))):
        if img is None:
            img = cv2.copyMakeBorder(bgr, py, py, px, px, cv2.BORDER_CONSTANT)
        for det in dets:
            found = det.detect(img)
            if found:
                d = max(found, key=lambda d: d.width * d.height)
                return d.box - np.array([off[1], off[0], off[1], off[0]], np.float32)
    return None


def cut_context(bgr: np.ndarray, box: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """The frame cut to c x the box about its centre (clipped to the frame), and the box in it."""
    h, w = bgr.shape[:2]
    x0, y0, x1, y1 = box
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    x0c, y0c = int(max(cx - bw * c / 2, 0)), int(max(cy - bh * c / 2, 0))
    x1c, y1c = int(min(cx + bw * c / 2, w)), int(min(cy + bh * c / 2, h))
    return bgr[y0c:y1c, x0c:x1c], box - np.array([x0c, y0c, x0c, y0c], np.float32)


def pick_threshold(rows: list[dict], rule: str, apcer: float, bpcer: float) -> float:
    """ "apcer": the lowest threshold accepting at most `apcer` of these attacks; "bpcer": the
    highest refusing at most `bpcer` of these live faces (too close counts as refused)."""
    if rule == "apcer":
        att = np.sort([r["score"] for r in rows if r["kind"] != "live"])
        k = int(np.floor(apcer * len(att)))
        return float(np.nextafter(att[len(att) - 1 - k], 2.0)) if k < len(att) else 0.0
    live = np.sort([r["score"] for r in rows if r["kind"] == "live"])
    k = int(np.floor(bpcer * len(live)))  # at most k live faces below the threshold
    return float(live[k]) if len(live) else 1.0


def loso(rows: list[dict], rule: str, apcer: float, bpcer: float) -> dict:
    """Per source: threshold from the other sources, that source's APCER/BPCER at it; pooled."""
    sources = sorted({r["source"] for r in rows})
    per, acc = {}, {"live": 0, "live_refused": 0, "attack": 0, "attack_accepted": 0}
    for s in sources:
        t = pick_threshold([r for r in rows if r["source"] != s], rule, apcer, bpcer)
        mine = [r for r in rows if r["source"] == s]
        live = np.array([r["score"] for r in mine if r["kind"] == "live"])
        atts = np.array([r["score"] for r in mine if r["kind"] != "live"])
        per[s] = {
            "threshold": round(t, 4),
            "live": len(live),
            "bpcer": round(float(np.mean(live < t)), 3) if len(live) else None,
            "attacks": len(atts),
            "apcer": round(float(np.mean(atts >= t)), 3) if len(atts) else None,
        }
        acc["live"] += len(live)
        acc["live_refused"] += int(np.sum(live < t))
        acc["attack"] += len(atts)
        acc["attack_accepted"] += int(np.sum(atts >= t))
    pooled = {
        "bpcer": round(acc["live_refused"] / max(acc["live"], 1), 3),
        "apcer": round(acc["attack_accepted"] / max(acc["attack"], 1), 3),
        **acc,
    }
    return {"by_source": per, "pooled": pooled}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--floor", action="append", type=float, help="override min_crop_scale")
    ap.add_argument("--rule", choices=("apcer", "bpcer"), default="bpcer", help="LOSO rule")
    ap.add_argument("--apcer", type=float, default=0.02, help="rule apcer: others' APCER")
    ap.add_argument("--bpcer", type=float, default=0.10, help="rule bpcer: others' BPCER")
    ap.add_argument("--only-sources", help="comma-separated source tags to keep")
    ap.add_argument("--context", action="store_true", help="score frames cut down to c x box")
    ap.add_argument("--context-threshold", type=float, help="--context at this threshold")
    ap.add_argument("--per-file", action="store_true")
    args = ap.parse_args()
    dets = [
        BlazeFace(ROOT / "models" / f"blazeface_{k}.tflite", k, threads=1, min_score=0.5)
        for k in ("short", "full")
    ]
    data = [it for d in args.dirs for it in items(d)]
    if args.only_sources:
        keep = set(args.only_sources.split(","))
        data = [it for it in data if it[2] in keep]
    faces = []
    for p, kind, src in data:
        bgr = load_image(p)
        faces.append((p, kind, src, bgr, largest_face(dets, bgr)))
    report = {}
    for name in args.model:
        spec = PadSpec.load(args.models_dir, name, require_threshold=False)
        model = PadModel(replace(spec, min_crop_scale=0.0), threads=1)  # floors: below
        rows = []
        for p, kind, src, bgr, box in faces:
            if box is None:
                rows.append({"file": p.name, "kind": kind, "source": src, "context": 0.0})
                rows[-1].update(score=0.0, members=[], no_face=True)
                continue
            s = model.score(bgr, box)
            rows.append(
                {
                    "file": p.name,
                    "kind": kind,
                    "source": src,
                    "context": round(s.context, 3),
                    "score": s.live,
                    "members": [round(v, 4) for v in s.members],
                }
            )
        floors = args.floor or [spec.min_crop_scale]
        out = {"min_crop_scale": spec.min_crop_scale, "by_floor": {}}
        for fl in floors:
            judged = [{**r, "score": r["score"] if r["context"] >= fl else 0.0} for r in rows]
            out["by_floor"][str(fl)] = {
                "too_close": sum(r["context"] < fl for r in rows),
                **loso(judged, args.rule, args.apcer, args.bpcer),
            }
        if args.context:
            fl = floors[0]
            judged = [{**r, "score": r["score"] if r["context"] >= fl else 0.0} for r in rows]
            t = args.context_threshold or pick_threshold(judged, args.rule, args.apcer, args.bpcer)
            out["by_context"] = by_context(model, faces, t)
        if args.per_file:
            out["results"] = rows
        report[name] = out
    print(json.dumps(report, indent=1))


def by_context(model: PadModel, faces, t: float) -> dict:
    """Every face re-cut to leave c model-style face heights around it on both axes, judged at
    threshold t (the pooled rule's on the faces as they are, with the first floor: reported,
    never chosen per c)."""
    out = {"threshold": round(t, 4)}
    for c in CONTEXTS:
        live, attack = [], []
        for _p, kind, _src, bgr, box in faces:
            if box is None:
                continue
            mapped = model.spec.box_map.apply(box)
            if judged_context(bgr.shape, box, mapped, 99.0) < c:
                continue  # the frame does not hold this much context
            # cut c mapped heights on both axes, in the detector box's proportions (as the
            # floor counts context: judged_context), then the mapped box inside the cut
            uh = mapped[3] - mapped[1]
            uw = uh * (box[2] - box[0]) / (box[3] - box[1])
            mx, my = (mapped[0] + mapped[2]) / 2, (mapped[1] + mapped[3]) / 2
            unit = np.array([mx - uw / 2, my - uh / 2, mx + uw / 2, my + uh / 2])
            img, u = cut_context(bgr, unit, c)
            b = mapped - (unit - u)
            inv = model.spec.box_map
            # back to a BlazeFace-style box for score(): undo the map's scale and shift
            bw, bh = (b[2] - b[0]) / inv.sw, (b[3] - b[1]) / inv.sh
            cx = (b[0] + b[2]) / 2 - inv.dx * bw
            cy = (b[1] + b[3]) / 2 - inv.dy * bh
            bf = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
            (live if kind == "live" else attack).append(model.score(img, bf).live)
        out[str(c)] = {
            "live": len(live),
            "bpcer": round(float(np.mean(np.array(live) < t)), 3) if live else None,
            "attacks": len(attack),
            "apcer": round(float(np.mean(np.array(attack) >= t)), 3) if attack else None,
        }
    return out


if __name__ == "__main__":
    main()
