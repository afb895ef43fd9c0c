"""Face embedder: an aligned chip in, an L2-normalised float32 vector out."""

from __future__ import annotations

import cv2
import numpy as np

from edge.vision.models import EmbedderSpec
from edge.vision.runtime import TFLiteModel


def l2_normalise(v: np.ndarray) -> np.ndarray:
    """Unit-length embeddings, so a dot product is the cosine score matching relies on."""
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


class Embedder:
    """Turns an aligned face chip into the template the gallery stores and matches."""

    def __init__(self, spec: EmbedderSpec, threads: int = 0):
        self.spec = spec
        self.model = TFLiteModel(spec.path, threads)

    def embed(self, chip_bgr: np.ndarray) -> np.ndarray:
        """Embed one aligned BGR chip of the spec's size."""
        rgb = cv2.cvtColor(chip_bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
        (out,) = self.model.run(rgb[None])
        return l2_normalise(out[0])
