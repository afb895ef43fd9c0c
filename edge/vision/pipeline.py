"""The face pipeline as one object: frame in, FaceObservations out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.config import Config, VisionConfig, models_path, override
from edge.vision.align import align_face
from edge.vision.detector import BlazeFace, Detection
from edge.vision.embedder import Embedder
from edge.vision.models import detector_spec, embedder_spec, verify_file
from edge.vision.quality import Quality, QualityThresholds, assess


@dataclass(frozen=True)
class FaceObservation:
    """One detected face: where it is, whether it is good enough, and its template if it is."""

    detection: Detection
    quality: Quality
    embedding: np.ndarray | None  # None when the quality gate refused the face


@dataclass
class StageTimes:
    """Per-frame stage timings collected by `analyze` for `edge-gate bench`."""

    samples: list[dict[str, float]] = field(default_factory=list)


class FacePipeline:
    """Detector, aligner, quality gate and embedder built once from the model catalogue."""

    def __init__(
        self,
        models_dir: Path,
        detector: str,
        embedder: str,
        threads: int = 0,
        min_score: float = 0.6,
        quality: QualityThresholds | None = None,
        verify: bool = True,
        max_image_pixels: int = VisionConfig.max_image_pixels,
    ):
        dspec = detector_spec(models_dir, detector)
        espec = embedder_spec(models_dir, embedder)
        if verify:
            verify_file(dspec.path, dspec.sha256)
            verify_file(espec.path, espec.sha256)
        self.detector = BlazeFace(dspec.path, dspec.kind, threads=threads, min_score=min_score)
        self.embedder = Embedder(espec, threads=threads)
        self.quality = quality or QualityThresholds.from_config()
        self.spec = espec
        self.max_image_pixels = max_image_pixels  # for the callers that read its images
        self._models_dir, self._threads, self._full = models_dir, threads, None

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        embedder: str | None = None,
        detector: str | None = None,
        threads: int | None = None,
    ) -> FacePipeline:
        """Build the pipeline the config names; the optional arguments override it (CLI flags)."""
        v = override(
            cfg, vision={"embedder": embedder, "detector": detector, "threads": threads}
        ).vision
        return cls(
            models_path(cfg),
            v.detector,
            v.embedder,
            v.threads,
            v.min_score,
            QualityThresholds.from_config(v),
            max_image_pixels=v.max_image_pixels,
        )

    def chip(self, bgr: np.ndarray, det: Detection) -> np.ndarray:
        """The aligned face chip the embedder expects."""
        return align_face(bgr, det.keypoints, self.spec.template, self.spec.size)

    def analyze(
        self, bgr: np.ndarray, embed_all: bool = False, times: StageTimes | None = None
    ) -> list[FaceObservation]:
        """Detect every face; embed those that pass the quality gate (or all, for evaluation)."""
        t0 = time.perf_counter()
        dets = self.detector.detect(bgr)
        t1 = time.perf_counter()
        out, t_align, t_embed = [], 0.0, 0.0
        for d in dets:
            a0 = time.perf_counter()
            chip = self.chip(bgr, d)
            q = assess(d, chip, self.quality)
            a1 = time.perf_counter()
            emb = self.embedder.embed(chip) if (q.ok or embed_all) else None
            t_align += a1 - a0
            t_embed += time.perf_counter() - a1
            out.append(FaceObservation(d, q, emb))
        if times is not None:
            times.samples.append(
                {"detect": t1 - t0, "align": t_align, "embed": t_embed, "faces": len(dets)}
            )
        return out

    def embed_still(self, bgr: np.ndarray, pad: float = 0.3) -> FaceObservation | None:
        """Embed the largest face in a still photo (eval; enrollment asks `still_faces` first)."""
        faces = self.still_faces(bgr, pad)
        return max(faces, key=lambda f: f.detection.width * f.detection.height) if faces else None

    def still_faces(self, bgr: np.ndarray, pad: float = 0.3) -> list[FaceObservation]:
        """Every face in a still photo, embedded; boxes in the photo's own pixels.

        Tries the photo as is, then padded (a tight crop leaves BlazeFace no context), then the
        full-range detector (small faces in large photos), keeping the first that finds a face.
        """
        h, w = bgr.shape[:2]
        py, px = int(h * pad), int(w * pad)
        padded = cv2.copyMakeBorder(bgr, py, py, px, px, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        for img, (dx, dy) in ((bgr, (0, 0)), (padded, (px, py))):
            for det in self.still_detectors():
                faces = self._embed_with(det, img)
                if faces:
                    return [_shifted(f, dx, dy) for f in faces]
        return []

    def still_detectors(self) -> list[BlazeFace]:
        """The configured detector, then the full-range one (loaded once) for small faces."""
        if self._full is None and self.detector.size != 192:  # 192 px input: already full range
            spec = detector_spec(self._models_dir, "blazeface_full")
            self._full = BlazeFace(
                spec.path, spec.kind, threads=self._threads, min_score=self.detector.min_score
            )
        return [self.detector] + ([self._full] if self._full is not None else [])

    def _embed_with(self, det: BlazeFace, bgr: np.ndarray) -> list[FaceObservation]:
        out = []
        for d in det.detect(bgr):
            chip = self.chip(bgr, d)
            out.append(FaceObservation(d, assess(d, chip, self.quality), self.embedder.embed(chip)))
        return out


def _shifted(f: FaceObservation, dx: int, dy: int) -> FaceObservation:
    """The observation with its box and keypoints moved by (-dx, -dy): back from a padded image."""
    if not (dx or dy):
        return f
    d = f.detection
    off = np.array([dx, dy], dtype=d.keypoints.dtype)
    det = Detection(d.box - np.tile(off, 2).astype(d.box.dtype), d.keypoints - off, d.score)
    return FaceObservation(det, f.quality, f.embedding)
