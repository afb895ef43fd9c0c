"""The face path of the gate: detector, embedder and the live gallery, turned into FaceSeen."""

from __future__ import annotations

import numpy as np

from edge import config as config_mod
from edge.gate.policy import FaceSeen


class FaceStack:
    """Pipeline + live gallery matcher; built once, or not at all (then the gate is ticket-only)."""

    def __init__(self, cfg: config_mod.Config):
        from edge.gallery.crypto import load_key
        from edge.gallery.matcher import LiveMatcher, resolve_threshold
        from edge.gallery.store import Gallery
        from edge.vision.pipeline import FacePipeline

        key = load_key(cfg.resolve(cfg.gallery.key_file))
        self.pipeline = FacePipeline.from_config(cfg)
        self.gallery = Gallery(cfg.resolve(cfg.gallery.db), key)
        try:
            threshold = resolve_threshold(cfg.gallery.match_threshold, self.pipeline.spec.threshold)
            self.matcher = LiveMatcher(
                self.gallery, self.pipeline.spec.name, threshold, cfg.gallery.min_margin
            )
        except BaseException:
            self.gallery.close()
            raise

    def observe(self, image: np.ndarray) -> tuple[FaceSeen, ...]:
        """Every face in the frame with the matcher's verdict on it."""
        faces = self.pipeline.analyze(image)
        if not faces:
            return ()
        h, w = image.shape[:2]
        usable = [f for f in faces if f.embedding is not None]
        ids = iter(self.matcher.identify(np.stack([f.embedding for f in usable]) if usable else []))
        out = []
        for f in faces:
            m = next(ids) if f.embedding is not None else None
            cx, cy = f.detection.center
            out.append(
                FaceSeen(
                    m.person_id if m else None,
                    round(m.score, 4) if m else 0.0,
                    f.detection.width / w,
                    (cx / w, cy / h),
                    m is not None,
                    m.valid_until if m else None,
                    m.pass_ref if m else "",
                    m.candidate if m else None,
                    f.embedding,
                )
            )
        return tuple(out)

    def close(self) -> None:
        """Close the gallery connection."""
        self.gallery.close()

    def __enter__(self) -> FaceStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
