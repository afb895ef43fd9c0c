"""Face quality gate: size, sharpness, yaw and exposure, each with a reason when it fails."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import VisionConfig
from edge.vision.detector import Detection


@dataclass(frozen=True)
class QualityThresholds:
    """Limits a face must meet before it is embedded (size, sharpness, yaw, brightness)."""

    min_face_px: int
    min_sharpness: float
    max_yaw: float
    min_brightness: float
    max_brightness: float

    @classmethod
    def from_config(cls, v: VisionConfig | None = None) -> QualityThresholds:
        """The [vision] quality keys; their defaults live in one place, edge.config."""
        v = v or VisionConfig()
        return cls(v.min_face_px, v.min_sharpness, v.max_yaw, v.min_brightness, v.max_brightness)


@dataclass(frozen=True)
class Quality:
    """What the quality gate measured on one face, and why it refused it."""

    face_px: float
    sharpness: float
    yaw: float
    brightness: float
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when no check refused the face."""
        return not self.reasons

    @property
    def score(self) -> float:
        """One number to rank frames for enrollment: bigger, sharper, more frontal is better."""
        return float(min(self.face_px, 200) / 200 + min(self.sharpness, 400) / 400 - abs(self.yaw))


def estimate_yaw(kps: np.ndarray) -> float:
    """Signed nose offset from the eye midpoint, in inter-eye distances (0 = frontal)."""
    eye_mid = (kps[0] + kps[1]) / 2
    iod = float(np.linalg.norm(kps[1] - kps[0]))
    if iod < 1e-6:
        return 1.0
    axis = (kps[1] - kps[0]) / iod
    return float(np.dot(kps[2] - eye_mid, axis) / iod)


def assess(det: Detection, chip_bgr: np.ndarray, t: QualityThresholds) -> Quality:
    """Measure a detection and its aligned chip against the thresholds."""
    gray = cv2.cvtColor(chip_bgr, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape
    centre = gray[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    sharp = float(cv2.Laplacian(centre, cv2.CV_32F).var())
    bright = float(centre.mean())
    face_px = min(det.width, det.height)
    yaw = estimate_yaw(det.keypoints)
    reasons = []
    if face_px < t.min_face_px:
        reasons.append("too_small")
    if sharp < t.min_sharpness:
        reasons.append("blurry")
    if abs(yaw) > t.max_yaw:
        reasons.append("turned_away")
    if bright < t.min_brightness:
        reasons.append("too_dark")
    if bright > t.max_brightness:
        reasons.append("too_bright")
    return Quality(face_px, sharp, yaw, bright, tuple(reasons))
