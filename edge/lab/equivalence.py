"""Same photos, same clip, two CPUs: do the models and the gate agree?

`run` embeds fixed photos with every model in models/models.json (every group is iterated, so
models added later are covered) and plays the Hamilton clip through the real gate, to JSON.
`compare` fails when any per-image cosine to the reference is low or any gate decision differs.

    python -m edge.lab.equivalence run --out x86.json
    python -m edge.lab.equivalence compare x86.json arm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge import tickets as tk
from edge.config import PROJECT_ROOT, fixtures_dir
from edge.gallery.crypto import init_key
from edge.gallery.enroll import enroll
from edge.gallery.store import Consent, Gallery
from edge.gate.daemon import Gate
from edge.gate.sources import FirstFrames, VideoFileSource
from edge.lab.crosscpu import CLIP, EVENT_KEYS, MIN_COSINE, compare
from edge.lab.evaluation import IMAGE_EXT
from edge.progress import Progress
from edge.tickets.ledger import init_ledger
from edge.vision.cpu import read_cpu
from edge.vision.detector import BlazeFace
from edge.vision.image import load_image
from edge.vision.liveness import PadModel, PadSpec
from edge.vision.models import load_catalogue
from edge.vision.pipeline import FacePipeline
from edge.vision.runtime import RUNTIME, TFLiteModel

ENROLL_DIR = Path("faces") / "lin_manuel_miranda"
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
    A liveness entry of several networks runs through PadModel (its own crops and box map).
    """
    dspec = cat["detectors"][DETECTOR]
    det = BlazeFace(models / dspec["file"], dspec["kind"], threads=threads)
    imgs = [load_image(p) for p in photos]
    boxes = [max(det.detect(im), key=lambda d: d.score, default=None) for im in imgs]
    out = {}
    for group, entries in cat.items():
        if group in ("detectors", "embedders") or not isinstance(entries, dict):
            continue
        for name, e in entries.items():
            if group == "liveness" and isinstance(e, dict) and "models" in e:
                out[f"{group}/{name}"] = pad_outputs(models, name, imgs, boxes, threads)
                continue
            if not (isinstance(e, dict) and str(e.get("file", "")).endswith(".tflite")):
                continue
            model = TFLiteModel(models / e["file"], threads)
            div = 255.0 if str(e.get("input_range", "")).startswith("0..1") else 1.0
            rows: list[dict] = []
            for im, b in zip(imgs, boxes, strict=True):
                if b is None:
                    rows.append({"vector": None})
                    continue
                x = face_crop(im, b.box, model.inputs[0].shape, float(e.get("crop_scale", 1.5)))
                outs = model.run(x / div)
                rows.append({"vector": _vec(np.concatenate([o.ravel() for o in outs]))})
            out[f"{group}/{name}"] = rows
    return out


def pad_outputs(models: Path, name: str, imgs: list, boxes: list, threads: int) -> list[dict]:
    """A PAD entry of several networks, through the gate's own crops (PadModel): every
    member's softmax on each photo's face, concatenated."""
    pad = PadModel(PadSpec.load(models, name, require_threshold=False), threads)
    rows: list[dict] = []
    for im, b in zip(imgs, boxes, strict=True):
        if b is None:
            rows.append({"vector": None})
            continue
        outs = pad.outputs(im, b.box)
        rows.append({"vector": _vec(np.concatenate([y for _m, y, _s in outs]))})
    return rows


def gate_on_clip(fixtures: Path, threads: int, frames: int = 0) -> dict:
    """The real gate (mock relay) on the Hamilton clip with Lin-Manuel Miranda enrolled.

    frames > 0 plays only the clip's first frames (his grant comes at frame 93 of 275), which
    keeps the emulated run short; 0 plays all of it.
    """
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
        source = FirstFrames(VideoFileSource(fixtures / CLIP, realtime=False), frames)
        with Gate(cfg, events.append, source=source, pin_factory=MockFactory()) as gate:
            gate.run()
    return {
        "embedder": cfg.vision.embedder,
        "frames": gate.frames,
        "events": [
            {**{k: e[k] for k in EVENT_KEYS if k != "enrolled"}, "enrolled": e.get("person") == pid}
            for e in events
        ],
    }


def run(out: Path, images: int, clip: bool, threads: int, frames: int = 0) -> dict:
    """Measure this machine; the JSON holds every vector, so `compare` needs nothing else."""
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
    steps = Progress(f"equivalence on {platform.machine()}", 3 if clip else 2, unit="step")
    res["embedders"] = embed_photos(models, photos, sorted(cat["embedders"]), threads)
    times["embedders"], t = time.perf_counter() - t, time.perf_counter()
    steps(1, label="embedders")
    res["detectors"] = detect_photos(models, photos, cat, threads)
    res["models"] = other_models(models, photos, cat, threads)
    times["detectors+others"], t = time.perf_counter() - t, time.perf_counter()
    steps(2, label="detectors and other models")
    res["gate"] = gate_on_clip(fixtures, threads, frames) if clip else None
    times["gate"] = time.perf_counter() - t
    steps.close()
    res["seconds"] = {k: round(v, 1) for k, v in times.items()}
    out.write_text(json.dumps(res))
    return res


def main(argv: list[str] | None = None) -> int:
    """`run` on each machine, then `compare` the two JSON files."""
    ap = argparse.ArgumentParser(prog="python -m edge.lab.equivalence", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("run", help="embed the photos and play the clip here; write JSON")
    sp.add_argument("--out", required=True, type=Path)
    sp.add_argument("--images", type=int, default=8, help="photos from faces/ (default 8)")
    sp.add_argument("--no-clip", action="store_true", help="skip the gate run on the clip")
    sp.add_argument(
        "--clip-frames", type=int, default=0, help="play only the first N frames (0: all)"
    )
    sp.add_argument("--threads", type=int, default=1)
    sp = sub.add_parser("compare", help="compare a reference JSON with another; exit 1 on any gap")
    sp.add_argument("reference", type=Path)
    sp.add_argument("other", type=Path)
    sp.add_argument("--min-cosine", type=float, default=MIN_COSINE)
    sp.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        res = run(args.out, args.images, not args.no_clip, args.threads, args.clip_frames)
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
