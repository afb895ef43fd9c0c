"""Same photos, same clip, two CPUs: do the models and the gate agree?

`run` embeds fixed photos with every model in models/models.json (every group is iterated, so
models added later are covered) and plays the Hamilton clip through the real gate, to JSON.
`compare` fails when any per-image cosine to the reference is low or any gate decision differs.

    python -m edge.measure.equivalence run --out x86.json
    python -m edge.measure.equivalence compare x86.json arm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.config import PROJECT_ROOT, fixtures_dir
from edge.measure.evaluation import IMAGE_EXT
from edge.vision.image import load_image
from edge.vision.models import load_catalogue

MIN_COSINE = 0.999
BOUND_KEY = "cross_cpu_min_cosine"  # a model's own bound in models.json, when it has measured one
CLIP = Path("video") / "short_hamilton_clip.mp4"
ENROLL_DIR = Path("faces") / "lin_manuel_miranda"
EVENT_KEYS = ("frame", "decision", "via", "reason", "enrolled", "score")
DETECTOR = "blazeface_short"  # the gate's default detector, used to find faces for every model


def pick_photos(faces: Path, n: int) -> list[Path]:
    """`n` photos spread evenly over the sorted list of faces/<person>/<image> (repeatable)."""
    files = sorted(
        f for d in sorted(faces.iterdir()) if d.is_dir() for f in d.iterdir()
        if f.suffix.lower() in IMAGE_EXT
    )  # fmt: skip
    if n >= len(files):
        return files
    return [files[int(i * len(files) / n)] for i in range(n)]


def _vec(a: np.ndarray | None) -> list[float] | None:
    return None if a is None else np.asarray(a, dtype=np.float64).ravel().tolist()


def embed_photos(models: Path, photos: list[Path], names: list[str], threads: int) -> dict:
    """Per embedder: each photo's embedding (None when no face was found) and detector score."""
    from edge.vision.pipeline import FacePipeline

    out = {}
    for name in names:
        pipe = FacePipeline(models, DETECTOR, name, threads=threads)
        rows = []
        for p in photos:
            obs = pipe.embed_still(load_image(p))
            rows.append(
                {
                    "vector": _vec(obs.embedding) if obs else None,
                    "det_score": float(obs.detection.score) if obs else None,
                }
            )
        out[name] = rows
    return out


def detect_photos(models: Path, photos: list[Path], cat: dict, threads: int) -> dict:
    """Per detector: the best face's box and score on each photo, and the face count."""
    from edge.vision.detector import BlazeFace

    out = {}
    for name, e in cat.get("detectors", {}).items():
        det = BlazeFace(models / e["file"], e["kind"], threads=threads)
        rows = []
        for p in photos:
            found = det.detect(load_image(p))
            best = max(found, key=lambda d: d.score, default=None)
            rows.append(
                {
                    "faces": len(found),
                    "vector": _vec(best.box) if best else None,
                    "score": float(best.score) if best else None,
                }
            )
        out[name] = rows
    return out


def face_crop(img: np.ndarray, box: np.ndarray, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """The face box enlarged by `scale`, resized to the model's NHWC or NCHW input, RGB float."""
    import cv2

    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * scale / 2
    m = np.float32([[1, 0, half - cx], [0, 1, half - cy]])
    side = max(int(round(2 * half)), 1)
    crop = cv2.warpAffine(img, m, (side, side), borderMode=cv2.BORDER_REPLICATE)
    chw = len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)
    h, w = (shape[2], shape[3]) if chw else (shape[1], shape[2])
    rgb = cv2.cvtColor(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    x = rgb.astype(np.float32)[None]
    return x.transpose(0, 3, 1, 2) if chw else x


def other_models(models: Path, photos: list[Path], cat: dict, threads: int) -> dict:
    """Every catalogue group other than detectors and embedders (liveness/PAD, ...).

    The model is run as a plain TFLite graph on each photo's face crop (enlarged by the entry's
    `crop_scale`, default 1.5; scaled to 0..1 when its `input_range` starts with "0..1"), and its
    outputs are recorded flattened: enough to see whether two CPUs compute the same function.
    """
    from edge.vision.detector import BlazeFace
    from edge.vision.runtime import TFLiteModel

    dspec = cat["detectors"][DETECTOR]
    det = BlazeFace(models / dspec["file"], dspec["kind"], threads=threads)
    imgs = [load_image(p) for p in photos]
    boxes = [max(det.detect(im), key=lambda d: d.score, default=None) for im in imgs]
    out = {}
    for group, entries in cat.items():
        if group in ("detectors", "embedders") or not isinstance(entries, dict):
            continue
        for name, e in entries.items():
            if not (isinstance(e, dict) and str(e.get("file", "")).endswith(".tflite")):
                continue
            model = TFLiteModel(models / e["file"], threads)
            div = 255.0 if str(e.get("input_range", "")).startswith("0..1") else 1.0
            rows = []
            for im, b in zip(imgs, boxes, strict=True):
                if b is None:
                    rows.append({"vector": None})
                    continue
                x = face_crop(im, b.box, model.inputs[0].shape, float(e.get("crop_scale", 1.5)))
                outs = model.run(x / div)
                rows.append({"vector": _vec(np.concatenate([o.ravel() for o in outs]))})
            out[f"{group}/{name}"] = rows
    return out


def gate_on_clip(fixtures: Path, threads: int) -> dict:
    """The real gate (mock relay) on the Hamilton clip with Lin-Manuel Miranda enrolled."""
    from gpiozero.pins.mock import MockFactory

    from edge import config as config_mod
    from edge import tickets as tk
    from edge.gallery.crypto import init_key
    from edge.gallery.enroll import enroll
    from edge.gallery.store import Consent, Gallery
    from edge.gate.daemon import Gate
    from edge.tickets.ledger import init_ledger
    from edge.vision.pipeline import FacePipeline

    with tempfile.TemporaryDirectory(prefix="edge-equiv-") as tmp:
        d = Path(tmp)
        tk.keygen(d / "office")
        (d / "gate.toml").write_text(
            '[gate]\nid = "equivalence"\n'
            f"[vision]\nthreads = {threads}\n"
            '[gallery]\ndb = "gallery.db"\nkey_file = "gallery.key"\n'
            '[tickets]\npubkeys = ["office/issuer.pub"]\nledger = "ledger.db"\n'
            'revocation_list = "revoked.txt"\n'
            '[relay]\npin_factory = "mock"\n[audit]\npath = "audit.db"\n'
        )
        (d / "revoked.txt").touch()
        cfg = config_mod.load(d / "gate.toml")
        init_ledger(cfg.resolve(cfg.tickets.ledger))
        pipe = FacePipeline.from_config(cfg)
        photos = sorted(str(f) for f in (fixtures / ENROLL_DIR).iterdir())
        with Gallery(cfg.resolve(cfg.gallery.db), init_key(cfg.resolve(cfg.gallery.key_file))) as g:
            pid, _ = enroll(
                g, pipe, "Lin-Manuel Miranda", Consent("v1"), photos,
                threshold=pipe.spec.threshold, min_templates=1,
            )  # fmt: skip
        events: list[dict] = []
        cfg = config_mod.override(cfg, camera={"source": str(fixtures / CLIP), "realtime": False})
        with Gate(cfg, events.append, pin_factory=MockFactory()) as gate:
            gate.run()
    return {
        "embedder": cfg.vision.embedder,
        "frames": gate.frames,
        "events": [
            {**{k: e[k] for k in EVENT_KEYS if k != "enrolled"}, "enrolled": e.get("person") == pid}
            for e in events
        ],
    }


def run(out: Path, images: int, clip: bool, threads: int) -> dict:
    """Measure this machine; the JSON holds every vector, so `compare` needs nothing else."""
    from edge.vision.cpu import read_cpu
    from edge.vision.runtime import RUNTIME

    models, fixtures = PROJECT_ROOT / "models", fixtures_dir()
    cat = load_catalogue(models)
    photos = pick_photos(fixtures / "faces", images)
    times: dict[str, float] = {}
    t = time.perf_counter()
    res: dict = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "runtime": RUNTIME,
        "cpu": read_cpu().summary(),
        "qemu_cpu": os.environ.get("QEMU_CPU", ""),
        "photos": [str(p.relative_to(fixtures)) for p in photos],
        "catalogue": {g: sorted(v) for g, v in cat.items() if isinstance(v, dict)},
    }
    res["embedders"] = embed_photos(models, photos, sorted(cat["embedders"]), threads)
    times["embedders"], t = time.perf_counter() - t, time.perf_counter()
    res["detectors"] = detect_photos(models, photos, cat, threads)
    res["models"] = other_models(models, photos, cat, threads)
    times["detectors+others"], t = time.perf_counter() - t, time.perf_counter()
    res["gate"] = gate_on_clip(fixtures, threads) if clip else None
    times["gate"] = time.perf_counter() - t
    res["seconds"] = {k: round(v, 1) for k, v in times.items()}
    out.write_text(json.dumps(res))
    return res


@dataclass
class Report:
    """What `compare` found: printable lines, figures for MODELS.md, and the failures."""

    lines: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _rows(a: list[dict], b: list[dict]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Vectors present on both sides, and the indices present on one side only."""
    both = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x["vector"] and y["vector"]]
    one = [
        i
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        if bool(x["vector"]) != bool(y["vector"])
    ]
    va = np.array([a[i]["vector"] for i in both], dtype=np.float64)
    vb = np.array([b[i]["vector"] for i in both], dtype=np.float64)
    return va, vb, one


def cosines(va: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped matrices."""
    num = (va * vb).sum(axis=1)
    den = np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)
    return num / np.maximum(den, 1e-30)


def pairwise_delta(va: np.ndarray, vb: np.ndarray) -> float:
    """Largest change of any pairwise similarity between photos, one side to the other."""
    if len(va) < 2:
        return 0.0
    na = va / np.linalg.norm(va, axis=1, keepdims=True)
    nb = vb / np.linalg.norm(vb, axis=1, keepdims=True)
    iu = np.triu_indices(len(va), k=1)
    return float(np.abs((na @ na.T)[iu] - (nb @ nb.T)[iu]).max())


def compare(ref: dict, other: dict, min_cosine: float = MIN_COSINE) -> Report:
    """Compare two `run` results; any failure means the other machine must not be trusted."""
    r = Report()
    r.lines.append(
        f"reference {ref['machine']} py{ref['python']} | other {other['machine']} "
        f"py{other['python']} QEMU_CPU={other['qemu_cpu'] or '-'} | {len(ref['photos'])} photos"
    )
    if ref["photos"] != other["photos"] or ref["catalogue"] != other["catalogue"]:
        r.failures.append("the two runs used different photos or model catalogues")
        return r
    cat = load_catalogue(PROJECT_ROOT / "models")
    for section in ("embedders", "models"):
        for name in sorted(ref[section]):
            a, b = ref[section][name], other[section].get(name)
            if b is None:
                r.failures.append(f"{name}: missing on the other side")
                continue
            va, vb, one = _rows(a, b)
            if one:
                r.failures.append(f"{name}: a face on one side only for photos {one}")
            if not len(va):
                r.failures.append(f"{name}: no photo measured on both sides")
                continue
            cos = cosines(va, vb)
            fig = {
                "images": len(va),
                "min_cosine": round(float(cos.min()), 6),
                "max_cosine": round(float(cos.max()), 6),
                "max_abs_diff": round(float(np.abs(va - vb).max()), 6),
            }
            line = f"{name:<24} n={len(va):<3} cosine min {cos.min():.6f} max {cos.max():.6f}"
            if section == "embedders":
                fig["max_pairwise_delta"] = round(pairwise_delta(va, vb), 6)
                fig["threshold"] = cat["embedders"].get(name, {}).get("threshold", 0.0)
                line += f"  max |Δ pairwise sim| {fig['max_pairwise_delta']:.6f}"
            else:
                line += f"  max |Δ output| {fig['max_abs_diff']:.6f}"
            group, _, key = name.rpartition("/")
            bound = float(cat.get(group or section, {}).get(key, {}).get(BOUND_KEY, min_cosine))
            fig["bound"] = bound
            r.lines.append(
                line + (f"  (bound {bound} from models.json)" if bound != min_cosine else "")
            )
            r.figures[name] = fig
            if cos.min() < bound:
                worst = ref["photos"][int(np.argmin(cos))] if not one else "?"
                r.failures.append(f"{name}: cosine {cos.min():.6f} < {bound} (e.g. {worst})")
    for name in sorted(ref["detectors"]):
        a, b = ref["detectors"][name], other["detectors"][name]
        va, vb, one = _rows(a, b)
        dcount = sum(x["faces"] != y["faces"] for x, y in zip(a, b, strict=True))
        dscore = max(
            (
                abs(x["score"] - y["score"])
                for x, y in zip(a, b, strict=True)
                if x["score"] is not None and y["score"] is not None
            ),
            default=0.0,
        )
        dbox = float(np.abs(va - vb).max()) if len(va) else 0.0
        r.figures[name] = {"max_box_px": round(dbox, 3), "max_score_diff": round(dscore, 6),
                           "face_count_differs": dcount}  # fmt: skip
        r.lines.append(
            f"{name:<24} max |Δ box| {dbox:.3f} px  max |Δ score| {dscore:.6f}  "
            f"face count differs on {dcount} photo(s)"
        )
    gate_compare(ref.get("gate"), other.get("gate"), r)
    return r


def gate_compare(a: dict | None, b: dict | None, r: Report) -> None:
    """Every decision on the clip must be the same: frame, outcome, way in, reason, person."""
    if a is None and b is None:
        return
    if a is None or b is None:
        r.failures.append("gate clip run on one side only")
        return
    da = [tuple(e[k] for k in EVENT_KEYS[:-1]) for e in a["events"]]  # all but the score
    db = [tuple(e[k] for k in EVENT_KEYS[:-1]) for e in b["events"]]
    grants = [e for e in a["events"] if e["decision"] == "grant"]
    dscore = max(
        (abs(x["score"] - y["score"]) for x, y in zip(a["events"], b["events"], strict=False)),
        default=0.0,
    )
    r.figures["gate"] = {"frames": a["frames"], "decisions": len(da), "grants": len(grants),
                         "same": da == db and a["frames"] == b["frames"],
                         "max_score_diff": round(dscore, 6)}  # fmt: skip
    r.lines.append(
        f"gate on {CLIP.name} ({a['embedder']}): {a['frames']} frames, {len(da)} decisions, "
        f"{len(grants)} grants (first at frame {grants[0]['frame'] if grants else '-'}), "
        f"max |Δ score| {dscore:.4f}: {'identical' if r.figures['gate']['same'] else 'DIFFERENT'}"
    )
    if not r.figures["gate"]["same"]:
        diff = next(
            (i for i, (x, y) in enumerate(zip(da, db, strict=False)) if x != y),
            min(len(da), len(db)),
        )
        r.failures.append(
            f"gate decisions differ at decision {diff}:"
            f" {da[diff : diff + 1]} vs {db[diff : diff + 1]}"
            f" ({a['frames']} vs {b['frames']} frames, {len(da)} vs {len(db)} decisions)"
        )
    if not grants:
        r.failures.append("the reference gate granted nobody on the clip: nothing was compared")


def main(argv: list[str] | None = None) -> int:
    """`run` on each machine, then `compare` the two JSON files."""
    ap = argparse.ArgumentParser(prog="python -m edge.measure.equivalence", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("run", help="embed the photos and play the clip here; write JSON")
    sp.add_argument("--out", required=True, type=Path)
    sp.add_argument("--images", type=int, default=8, help="photos from faces/ (default 8)")
    sp.add_argument("--no-clip", action="store_true", help="skip the gate run on the clip")
    sp.add_argument("--threads", type=int, default=1)
    sp = sub.add_parser("compare", help="compare a reference JSON with another; exit 1 on any gap")
    sp.add_argument("reference", type=Path)
    sp.add_argument("other", type=Path)
    sp.add_argument("--min-cosine", type=float, default=MIN_COSINE)
    sp.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        res = run(args.out, args.images, not args.no_clip, args.threads)
        print(f"{res['machine']} py{res['python']} ({res['cpu']}): {len(res['photos'])} photos, "
              f"seconds {res['seconds']} -> {args.out}")  # fmt: skip
        return 0
    rep = compare(json.loads(args.reference.read_text()), json.loads(args.other.read_text()),
                  args.min_cosine)  # fmt: skip
    print("\n".join(rep.lines))
    if args.json:
        args.json.write_text(
            json.dumps({"figures": rep.figures, "failures": rep.failures}, indent=1)
        )
    for f in rep.failures:
        print(f"FAIL: {f}", file=sys.stderr)
    print(
        "equivalence: " + ("FAILED" if rep.failures else f"all within cosine >= {args.min_cosine}")
    )
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
