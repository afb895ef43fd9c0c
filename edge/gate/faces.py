"""The face path of the gate: detector, embedder and the live gallery, turned into FaceSeen."""

from __future__ import annotations

import logging

import numpy as np

from edge import config as config_mod
from edge.db import file_id, let_go
from edge.errors import GalleryError
from edge.gallery.crypto import load_key
from edge.gate.policy import FaceSeen

log = logging.getLogger(__name__)


class FaceStack:
    """Pipeline + live gallery matcher; built once, or not at all (then the gate is ticket-only)."""

    def __init__(self, cfg: config_mod.Config):
        # a ticket-only gate never loads the models (LiteRT, OpenCV) or the gallery
        from edge.vision.liveness import LivenessJudge
        from edge.vision.pipeline import FacePipeline

        self.cfg = cfg
        self.path = cfg.resolve(cfg.gallery.db)
        self.key = load_key(cfg.resolve(cfg.gallery.key_file))  # before the models: quick
        self.pipeline = FacePipeline.from_config(cfg)
        # A missing or corrupt PAD model raises here: the gate goes ticket-only, never skips PAD.
        self.liveness = LivenessJudge.from_config(
            cfg, config_mod.models_path(cfg), cfg.policy.window_s
        )
        self.fuse = cfg.policy.fuse_frames
        self._open_gallery()

    def _open_gallery(self, create: bool = True) -> None:
        """The gallery file at the configured path and its live matcher (at start, and again
        when the file was replaced underneath the running gate: never made anew then)."""
        # loaded with the models: a ticket-only gate never imports the gallery
        from edge.gallery.matcher import LiveMatcher, resolve_threshold
        from edge.gallery.rules import rules_from_catalogue
        from edge.gallery.store import Gallery

        cfg = self.cfg
        # the file's identity before it is opened: replaced in between, the next check sees
        # the new one and opens it (after, the gate would read the old one and never follow)
        self.file_id = file_id(self.path)
        self.gallery = Gallery(self.path, self.key, create=create)
        try:
            if self.gallery.needs_forget_replay():  # a restored backup: nobody by face
                raise GalleryError(
                    self.gallery.forget_state().reason,
                    "`edge-gate forget --replay --config C` (with the office's list: --replay "
                    "FILE), then systemctl reload edge-gate",
                )
            spec = self.pipeline.spec
            threshold = resolve_threshold(cfg.gallery.match_threshold, spec.threshold)
            # gallery.match_threshold = 0: threshold and margin calibrated for the gallery's size
            table = () if cfg.gallery.match_threshold > 0 else rules_from_catalogue(spec.thresholds)
            self.matcher = LiveMatcher(
                self.gallery, spec.name, threshold, cfg.gallery.min_margin, table
            )
        except BaseException:
            self.gallery.close()
            raise

    def gallery_moved(self) -> str:
        """'' while the file at gallery.db is the one open; else what became of it (deleted,
        replaced): a connection keeps reading a file deleted or renamed over, so the running
        gate would go on matching people who are no longer on disk."""
        now = file_id(self.path)
        if now == self.file_id:
            return ""
        return "deleted" if now is None else "replaced"

    def reopen_gallery(self) -> None:
        """Close the gallery held open and open the file now at gallery.db, with the checks
        of a start (the forget list, the key); an error is raised, the face path unusable."""
        let_go(self.gallery)  # first: the log at the path is the old file's (edge.db.let_go)
        self._open_gallery(create=False)

    def observe(self, image: np.ndarray, t: float = 0.0) -> tuple[FaceSeen, ...]:
        """Every face in the frame with the matcher's verdict on it, and the liveness verdict
        on those that could lead to a grant (nobody else costs a PAD run)."""
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
            who = m.person_id or (m.candidate if self.fuse else None) if m else None
            v = self._live(image, f.detection, t) if who else None
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
                    None if v is None else v.live,
                    "" if v is None else v.reason,
                    f.quality.reasons,
                )
            )
        return tuple(out)

    def _live(self, image: np.ndarray, det, t: float):
        """The PAD verdict (liveness.Verdict); a frame it cannot judge is not live."""
        # loaded with the models by __init__ (a ticket-only gate never loads them)
        from edge.vision.liveness import Verdict

        if self.liveness is None:
            return None
        try:
            return self.liveness.verdict(image, det.box, det.keypoints, t)
        except Exception as e:  # noqa: BLE001 - fail closed on this frame
            log.error("liveness error=%s", e)
            return Verdict(False, "error")

    def close(self) -> None:
        """Close the gallery connection."""
        self.gallery.close()

    def __enter__(self) -> FaceStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
