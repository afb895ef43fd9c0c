"""Why live frames are refused: every live image the leave-one-source-out rule refuses, taken apart.

For the PAD fixture folders (as `edge-gate eval-pad DIR... --leave-one-source-out`: largest
BlazeFace face at [vision] min_score, short then full range, then the frame padded), each live
image refused at its fold's threshold is reported with what decided it: too close (and the
context the frame held), a cue, or the model (each network's scale and live probability), with
the face's share of the frame and its sharpness as the quality gate measures it.

Then the same leave-one-source-out rule on variants, each fixed in advance from upstream's code
or the camera geometry (MODELS.md says which helped and which shipped): the floor's context
counted across in the narrower model-style widths (as before judged_context); the BlazeFace box
as it is (no box map); the map with RetinaFace's proportions as measured on these frames
(`--retinaface`) and RetinaFace's own box; cv2.INTER_AREA instead of upstream's bilinear
resize; the mean over the mirrored crop (upstream trains with random flips); the mean over
crops 0.95 / 1 / 1.05 times the size (upstream trains with random crops of 0.9-1.1 the area);
only the networks whose crop got their own scale (both when neither did).
The cues and the floor (2.0, in each variant's own box) are those of the product.

    .venv/bin/python scripts/pad_refusals.py report ../shared/fixtures/pad_frames \\
        ../shared/fixtures/pad --exclude 'apfol_*' --exclude 'vishal_*' [--retinaface RF.json]
    # RetinaFace's boxes on the same faces (build-only venv, scripts/requirements-build-padbox.txt)
    /var/cache/edge-gate-build/padbox/bin/python scripts/pad_refusals.py retinaface \\
        ../shared/fixtures/pad_frames ../shared/fixtures/pad --exclude 'apfol_*' \\
        --exclude 'vishal_*' --out RF.json
    # NUAA by subject, as eval-pad's: report ../shared/fixtures/pad --include 'nuaa_*'
    #     --source-pattern '^(nuaa_[0-9]+)' --target-bpcer 0.05
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from edge.vision.detector import BlazeFace  # noqa: E402
from edge.vision.image import load_image  # noqa: E402
from edge.vision.liveness import (  # noqa: E402
    BoxMap,
    PadModel,
    PadSpec,
    context_scale,
    judged_context,
)

MIN_SCORE = 0.6  # [vision] min_score of firmware_config/gate.toml: eval-pad's boxes


def faces(dirs: list[Path], exclude: tuple[str, ...], include=(), pattern=None) -> list[dict]:
    """Every image's largest face as eval-pad finds it (kind, source, box or None); the source
    is `pattern`'s first group when given (eval-pad's --source-pattern)."""
    from compare_pad_models import items, largest_face

    dets = [
        BlazeFace(ROOT / "models" / f"blazeface_{k}.tflite", k, threads=1, min_score=MIN_SCORE)
        for k in ("short", "full")
    ]
    out = []
    for p, kind, source in (it for d in dirs for it in items(d)):
        if any(fnmatch.fnmatch(p.name, g) for g in exclude):
            continue
        if include and not any(fnmatch.fnmatch(p.name, g) for g in include):
            continue
        if pattern and (m := re.search(pattern, p.name)):
            source = m.group(1)
        box = largest_face(dets, load_image(p))
        out.append({"file": str(p), "kind": kind, "source": source, "box": box})
    return out


def crop(bgr: np.ndarray, box: np.ndarray, scale: float, size: int, interp: int, zoom: float):
    """crop_upstream with the interpolation and a size factor (zoom) as parameters."""
    h, w = bgr.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    fit = min((h - 1) / bh, (w - 1) / bw)
    s = min(min(fit, scale) * zoom, fit)
    nw, nh = bw * s, bh * s
    left, top = x0 + bw / 2 - nw / 2, y0 + bh / 2 - nh / 2
    left -= min(left, 0.0) + max(left + nw - w, 0.0)
    top -= min(top, 0.0) + max(top + nh - h, 0.0)
    x0i, y0i, x1i, y1i = int(left), int(top), int(left + nw), int(top + nh)
    c = bgr[max(y0i, 0) : max(y1i, y0i + 1), max(x0i, 0) : max(x1i, x0i + 1)]
    return cv2.resize(c, (size, size), interpolation=interp), s


def variant_score(pad: PadModel, bgr, box, bm: BoxMap, interp=cv2.INTER_LINEAR, flips=(False,),
                  zooms=(1.0,), mapped=None, full_only=False) -> tuple:  # fmt: skip
    """(fused live probability, judged context, [(member probability, scale)]) of a variant."""
    if mapped is None:
        mapped = np.round(bm.apply(box) * 64.0) / 64.0
    ctx = judged_context(bgr.shape, box, mapped, pad.spec.crop_scale)
    members = []
    for m, model in zip(pad.spec.members, pad.models, strict=True):
        ps, s = [], 0.0
        for flip, z in itertools.product(flips, zooms):
            c, s = crop(bgr, mapped, m.crop_scale, m.size, interp, z)
            c = np.ascontiguousarray(c[:, ::-1]) if flip else c
            (y,) = model.run(c.astype(np.float32)[None])
            y = y.reshape(-1)
            ps.append(float(y[m.live_index] / max(float(y.sum()), 1e-6)))
        members.append((float(np.mean(ps)), s))
    fused = [p for (p, s), m in zip(members, pad.spec.members, strict=True) if s >= m.crop_scale]
    if not (full_only and fused):  # full_only: the networks that got their own scale, if any
        fused = [p for p, _ in members]
    return float(np.mean(fused)), ctx, members


def loso_rows(fs: list[dict], scores: dict[str, tuple], floor: float, cue: dict) -> list[dict]:
    """eval-pad's result rows for these scores: too close below the floor, cues as the product."""
    rows = []
    for f in fs:
        r = {"file": f["file"], "kind": f["kind"], "source": f["source"], "score": None}
        if f["file"] in scores:
            live, ctx, _ = scores[f["file"]]
            if ctx < floor:
                r.update(score=0.0, too_close=True)
            else:
                r["score"] = live
                if cue.get(f["file"]):
                    r["cue"] = cue[f["file"]]
        rows.append(r)
    return rows


def refused(rows: list[dict], target: float) -> tuple[dict, list[tuple[dict, float]]]:
    """Pooled leave-one-source-out figures and the (live row, fold threshold) refused."""
    from edge.lab.pad_eval import _effective, leave_one_source_out

    lo = leave_one_source_out(rows, target)
    out = []
    for r in rows:
        t = lo["by_source"].get(r["source"], {}).get("threshold")
        if r["kind"] == "live" and t is not None and _effective(r) < t:
            out.append((r, t))
    return lo["pooled"], out


def report(args) -> dict:
    from edge.config import load
    from edge.vision import cues
    from edge.vision.pipeline import FacePipeline

    spec = PadSpec.load(ROOT / "models", args.model)
    pad = PadModel(replace(spec, min_crop_scale=0.0), threads=1)
    pipe = FacePipeline.from_config(load(ROOT / "firmware_config" / "gate.toml"), threads=1)
    fs = faces(args.dirs, tuple(args.exclude), tuple(args.include), args.source_pattern)
    imgs = {f["file"]: load_image(Path(f["file"])) for f in fs if f["box"] is not None}
    cue = {f["file"]: cues.veto(imgs[f["file"]], f["box"]) for f in fs if f["file"] in imgs}
    rf = json.loads(args.retinaface.read_text()) if args.retinaface else {}
    bm = spec.box_map
    variants: dict[str, dict] = {
        "product": {"bm": bm},
        "context across counted in model-style widths (before)": {"bm": bm, "widths": True},
        "BlazeFace box as it is (no map)": {"bm": BoxMap()},
        "cv2.INTER_AREA resize": {"bm": bm, "interp": cv2.INTER_AREA},
        "mean with the mirrored crop": {"bm": bm, "flips": (False, True)},
        "mean over crops 0.95/1/1.05": {"bm": bm, "zooms": (0.95, 1.0, 1.05)},
        "only the networks that got their own scale": {"bm": bm, "full_only": True},
    }
    if rf:
        pairs = [(np.asarray(f["box"], float), np.asarray(rf[f["file"]], float))
                 for f in fs if rf.get(f["file"]) is not None]  # fmt: skip
        sw = float(np.median([(r[2] - r[0]) / (b[2] - b[0]) for b, r in pairs]))
        sh = float(np.median([(r[3] - r[1]) / (b[3] - b[1]) for b, r in pairs]))
        variants[f"map with RetinaFace's size here (sw {sw:.2f}, sh {sh:.2f})"] = {
            "bm": BoxMap(bm.dx, bm.dy, sw, sh)
        }
        variants["RetinaFace's own box"] = {"bm": BoxMap(), "own": True}
    out: dict = {"model": spec.name, "floor": spec.min_crop_scale, "variants": {}}
    for name, v in variants.items():
        scores = {}
        for f in fs:
            if f["file"] not in imgs:
                continue
            kw = {k: v[k] for k in ("interp", "flips", "zooms", "full_only") if k in v}
            if v.get("own"):
                if rf.get(f["file"]) is None:
                    continue
                kw["mapped"] = np.asarray(rf[f["file"]], float)
            sc = variant_score(pad, imgs[f["file"]], f["box"], v["bm"], **kw)
            if v.get("widths"):  # the floor's context as it was: context_scale of the mapped box
                mapped = np.round(v["bm"].apply(f["box"]) * 64.0) / 64.0
                sc = (sc[0], context_scale(imgs[f["file"]].shape, mapped, spec.crop_scale), sc[2])
            scores[f["file"]] = sc
        pooled, bad = refused(loso_rows(fs, scores, spec.min_crop_scale, cue), args.target_bpcer)
        out["variants"][name] = {
            "loso_apcer_all": pooled["loso_apcer_all"],
            "loso_apcer_by_type": pooled["loso_apcer_by_type"],
            "loso_bpcer": pooled["loso_bpcer"],
            "live_refused": [Path(r["file"]).name for r, _ in bad],
        }
        if name != "product":
            continue
        rows = []
        for r, t in bad:
            img, f = imgs[r["file"]], next(f for f in fs if f["file"] == r["file"])
            live, ctx, members = scores[r["file"]]
            seen = pipe.analyze(img)
            q = max(seen, key=lambda s: s.detection.width).quality if seen else None
            b = f["box"]
            rows.append({
                "file": Path(r["file"]).name,
                "fold_threshold": t,
                "frame": f"{img.shape[1]}x{img.shape[0]}",
                "face_share_w_h": [round(float(b[2] - b[0]) / img.shape[1], 3),
                                   round(float(b[3] - b[1]) / img.shape[0], 3)],
                "judged_context": round(ctx, 3),
                "refused_by": "too_close" if r.get("too_close") else r.get("cue") or "model",
                "live": round(live, 4),
                "members": [{"scale": round(s, 3), "live": round(p, 4)} for p, s in members],
                "sharpness": None if q is None else round(q.sharpness, 1),
            })  # fmt: skip
        out["refused_live"] = rows
    return out


def retinaface(args) -> dict:
    """Upstream-style RetinaFace box (fit_pad_box's) of the face eval-pad judges, per image."""
    from fit_pad_box import retinaface_boxes

    from edge.vision.detector import iou_one_to_many

    out = {}
    for f in faces(args.dirs, tuple(args.exclude)):
        if f["box"] is None:
            continue
        rf = retinaface_boxes(load_image(Path(f["file"])))
        iou = iou_one_to_many(f["box"], rf) if len(rf) else np.zeros(0)
        j = int(np.argmax(iou)) if len(iou) else -1
        out[f["file"]] = rf[j].tolist() if j >= 0 and iou[j] >= 0.3 else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("report", "retinaface"):
        sp = sub.add_parser(name)
        sp.add_argument("dirs", nargs="+", type=Path)
        sp.add_argument("--exclude", action="append", default=[])
        sp.add_argument("--include", action="append", default=[])
        sp.add_argument("--source-pattern", help="source = this regex's first group in the name")
    sub.choices["report"].add_argument("--model", default="silentface_int8")
    sub.choices["report"].add_argument("--target-bpcer", type=float, default=0.10)
    sub.choices["report"].add_argument("--retinaface", type=Path, help="JSON of `retinaface`")
    sub.choices["retinaface"].add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "retinaface":
        args.out.write_text(json.dumps(retinaface(args)) + "\n")
        return
    print(json.dumps(report(args), indent=1))


if __name__ == "__main__":
    main()
