"""Fit the dlib-ResNet alignment template to BlazeFace's keypoints, and measure the fit.

dlib's face descriptor was trained on 150x150 chips cut by its own 5-point shape
predictor (`get_face_chip_details(shape, 150, 0.25)`). Our gate has only BlazeFace's
keypoints, so we find where those keypoints land inside dlib's chips and use the mean
position as the template. Fitting images come from a registry package (the demo photos
inside npm `@vladmandic/face-api`), never from the test fixtures.

Run with a Python that has dlib-bin + face-recognition-models + ai-edge-litert:
    python scripts/fit_alignment.py --images DIR [--check DIR] --out scripts/alignment_template.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.vision.align import ALIGN_POINTS, apply_transform, similarity_transform  # noqa: E402
from edge.vision.detector import BlazeFace, iou_one_to_many  # noqa: E402
from edge.vision.image import load_image  # noqa: E402

CHIP, PADDING = 150, 0.25


def dlib_chip_affine(details) -> np.ndarray:
    """The image->chip affine transform dlib uses (rect corners, rotated, to chip corners)."""
    r = details.rect
    left, top, right, bottom = r.left(), r.top(), r.right(), r.bottom()
    cx, cy = (left + right) / 2, (top + bottom) / 2
    a = details.angle
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = np.array([[left, top], [right, top], [right, bottom]])
    src = (corners - [cx, cy]) @ rot.T + [cx, cy]
    dst = np.array(
        [[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]], dtype=np.float64
    )
    return cv2.getAffineTransform(src.astype(np.float32), dst.astype(np.float32))


def collect(images: list[Path], detector: BlazeFace, verify: bool = False) -> list[np.ndarray]:
    import dlib
    import face_recognition_models as frm

    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    points = []
    for p in images:
        bgr = load_image(p)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        dets = detector.detect(bgr)
        if not dets:
            continue
        boxes = np.array([d.box for d in dets])
        for rect in hog(rgb, 1):
            shape = sp(rgb, rect)
            details = dlib.get_face_chip_details(shape, CHIP, PADDING)
            m = dlib_chip_affine(details)
            if verify:  # our transform must reproduce dlib's own chip
                ours = cv2.warpAffine(rgb, m, (CHIP, CHIP), flags=cv2.INTER_LINEAR)
                theirs = np.asarray(dlib.get_face_chip(rgb, shape, CHIP, PADDING))
                err = np.abs(ours.astype(int) - theirs.astype(int))[10:-10, 10:-10].mean()
                print(f"  chip check {p.name}: mean abs pixel difference {err:.2f}")
            hb = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float32)
            ious = iou_one_to_many(hb, boxes)
            j = int(np.argmax(ious))
            if ious[j] < 0.3:
                continue
            points.append(apply_transform(m, dets[j].keypoints[list(ALIGN_POINTS)]))
    return points


def symmetrize(t: np.ndarray) -> np.ndarray:
    """dlib's chips are mirror-symmetric: average the template with its mirror image."""
    m = t.copy()
    m[:, 0] = (CHIP - 1) - m[:, 0]
    m[[0, 1]] = m[[1, 0]]
    return (t + m) / 2


def residual(points: list[np.ndarray], template: np.ndarray) -> float:
    """RMS distance (chip px) between each face's keypoints, similarity-fitted, and the template."""
    errs = []
    for pts in points:
        m = similarity_transform(pts, template)
        errs.append(np.sqrt(((apply_transform(m, pts) - template) ** 2).sum(1).mean()))
    return float(np.mean(errs))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--images", required=True, type=Path, nargs="+", help="folders of photos to fit on"
    )
    ap.add_argument("--check", type=Path, help="held-out folder (recursive) to measure the fit on")
    ap.add_argument("--detector", default="models/blazeface_short.tflite")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    det = BlazeFace(args.detector, "short", threads=1, min_score=0.5)
    fit_imgs = sorted(
        p for d in args.images for p in d.iterdir() if p.suffix.lower() in (".jpg", ".png")
    )
    pts = collect(fit_imgs, det, verify=True)
    template = symmetrize(np.mean(pts, axis=0))
    result = {
        "chip": CHIP,
        "padding": PADDING,
        "template": np.round(template, 3).tolist(),
        "fit_faces": len(pts),
        "fit_rms_px": round(residual(pts, template), 3),
    }
    if args.check:
        chk = sorted(
            p for p in args.check.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        cpts = collect(chk, det)
        result["check_faces"] = len(cpts)
        result["check_rms_px"] = round(residual(cpts, template), 3)
        result["check_mean"] = np.round(np.mean(cpts, 0), 3).tolist()
        result["check_template_shift_px"] = round(
            float(np.abs(np.mean(cpts, 0) - template).max()), 3
        )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
