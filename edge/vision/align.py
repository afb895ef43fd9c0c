"""Similarity alignment from detector keypoints to an embedder's template."""

from __future__ import annotations

import cv2
import numpy as np

# BlazeFace keypoints used for alignment: right eye, left eye, nose tip, mouth centre.
# The ear tragions move with yaw and are left out.
ALIGN_POINTS = (0, 1, 2, 3)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping src (N,2) onto dst (N,2); 2x3."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("degenerate keypoints: all at one place")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1
    r = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]]).astype(np.float32)


def apply_transform(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points through a 2x3 similarity matrix (keypoints into chip coordinates)."""
    pts = np.asarray(pts, dtype=np.float32)
    return pts @ m[:, :2].T + m[:, 2]


def align_face(
    bgr: np.ndarray, keypoints: np.ndarray, template: np.ndarray, size: int
) -> np.ndarray:
    """Warp the face so its keypoints land on the template; returns a size x size BGR chip."""
    m = similarity_transform(keypoints[list(ALIGN_POINTS)], template)
    return cv2.warpAffine(
        bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
