"""BlazeFace face detector: anchors, sigmoid scores, weighted NMS and 6 keypoints, decoded here.

Keypoints (in the subject's terms): 0 right eye, 1 left eye, 2 nose tip, 3 mouth centre,
4 right ear tragion, 5 left ear tragion. Everything returned is in frame pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from edge.errors import ModelError
from edge.vision.runtime import TFLiteModel


@dataclass(frozen=True)
class Detection:
    """One face from BlazeFace: box, score and six keypoints in frame pixels."""

    box: np.ndarray  # (4,) x0, y0, x1, y1 in frame pixels
    keypoints: np.ndarray  # (6, 2) x, y in frame pixels
    score: float

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return float(self.box[3] - self.box[1])

    @property
    def center(self) -> tuple[float, float]:
        """Box centre (x, y) in pixels."""
        return float(self.box[0] + self.box[2]) / 2, float(self.box[1] + self.box[3]) / 2


# MediaPipe SSD anchor layouts: (input size, strides, anchors per cell per layer)
ANCHOR_LAYOUTS = {
    "short": (128, (8, 16, 16, 16), 2),
    "full": (192, (4,), 1),
}


@lru_cache(maxsize=4)
def ssd_anchors(kind: str) -> np.ndarray:
    """Anchor centres (N, 2) in [0, 1]; layers sharing a stride are merged as MediaPipe does."""
    size, strides, per_layer = ANCHOR_LAYOUTS[kind]
    out = []
    i = 0
    while i < len(strides):
        stride = strides[i]
        count = 0
        while i < len(strides) and strides[i] == stride:
            count += per_layer
            i += 1
        g = int(np.ceil(size / stride))
        ys, xs = np.mgrid[0:g, 0:g]
        centers = np.stack([(xs + 0.5) / g, (ys + 0.5) / g], axis=-1).reshape(-1, 2)
        out.append(np.repeat(centers, count, axis=0))
    return np.concatenate(out).astype(np.float32)


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one box against many, vectorised for NMS."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(
    boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray, iou: float, max_faces: int
):
    """MediaPipe's weighted NMS: overlapping candidates are blended by score, not dropped."""
    order = np.argsort(-scores)
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    alive = np.ones(len(scores), dtype=bool)
    result = []
    for i in range(len(scores)):  # loops over surviving candidates, a handful per face
        if not alive[i]:
            continue
        overlap = alive & (iou_one_to_many(boxes[i], boxes) > iou)
        overlap[i] = True
        w = scores[overlap][:, None]
        result.append(
            (
                (boxes[overlap] * w).sum(0) / w.sum(),
                (kps[overlap] * w[:, :, None]).sum(0) / w.sum(),
                float(scores[i]),
            )
        )
        alive &= ~overlap
        if len(result) >= max_faces:
            break
    return result


class BlazeFace:
    """Detect faces in a BGR frame of any size."""

    def __init__(
        self,
        model_path,
        kind: str = "short",
        threads: int = 0,
        min_score: float = 0.6,
        iou: float = 0.3,
        max_faces: int = 16,
    ):
        if kind not in ANCHOR_LAYOUTS:
            raise ModelError(f"unknown BlazeFace kind {kind!r}", "use 'short' or 'full'")
        self.model = TFLiteModel(model_path, threads)
        self.size = ANCHOR_LAYOUTS[kind][0]
        self.anchors = ssd_anchors(kind)
        shape = self.model.inputs[0].shape
        if shape[1:3] != (self.size, self.size) or self.model.outputs[0].shape[1] != len(
            self.anchors
        ):
            raise ModelError(
                f"{model_path}: shape {shape} does not match BlazeFace {kind}",
                "check vision.detector",
            )
        self.min_score, self.iou, self.max_faces = min_score, iou, max_faces

    def preprocess(self, bgr: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        """Letterbox to a square, resize to the model size, scale to [-1, 1]."""
        h, w = bgr.shape[:2]
        side = max(h, w)
        pad_x, pad_y = (side - w) / 2, (side - h) / 2
        square = cv2.copyMakeBorder(
            bgr,
            int(pad_y),
            side - h - int(pad_y),
            int(pad_x),
            side - w - int(pad_x),
            cv2.BORDER_CONSTANT,
            value=(0, 0, 0),
        )
        small = cv2.resize(square, (self.size, self.size), interpolation=cv2.INTER_AREA)
        x = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32) * (2.0 / 255.0) - 1.0
        return x[None], float(side), float(int(pad_x)), float(int(pad_y))

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        """Faces in a BGR frame, best first, in frame pixels."""
        x, side, pad_x, pad_y = self.preprocess(bgr)
        regs, logits = self.model.run(x)
        return self.decode(regs[0], logits[0, :, 0], side, pad_x, pad_y)

    def decode(
        self, regs: np.ndarray, logits: np.ndarray, side: float, pad_x: float, pad_y: float
    ) -> list[Detection]:
        """Turn raw model outputs into Detections (anchors, sigmoid, weighted NMS); pure."""
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80.0, 80.0)))
        keep = scores >= self.min_score
        if not keep.any():
            return []
        r = regs[keep] / self.size
        a = self.anchors[keep]
        cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
        half_w, half_h = r[:, 2] / 2, r[:, 3] / 2
        boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
        kps = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
        out = []
        for box, kp, score in weighted_nms(boxes, kps, scores[keep], self.iou, self.max_faces):
            box_px = box * side - np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)
            kp_px = kp * side - np.array([pad_x, pad_y], dtype=np.float32)
            out.append(Detection(box_px.astype(np.float32), kp_px.astype(np.float32), score))
        return out
