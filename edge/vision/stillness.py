"""A face that has not moved at all: a photo, or a screen showing one, propped up at the gate.

A visitor facing the camera is never still to the pixel: breathing, balance and blinks shift
the head by a pixel or more within a second. A picture on a stand moves by nothing but the
sensor's noise, whatever its border or surround, so this cue catches what the context model
and the frame cues cannot see: a print or a screen that fills the view.

Each face is followed by its box (a track per face, continued by the nearest box of a like
size within a face width, so a live visitor beside a propped photo, more than a face width
away, does not lend it their motion; a face that jumps further between two frames starts a new
track, and waits again). Every frame, the face's neighbourhood is resampled to a small patch
and blurred (the sensor's noise averages out, the shift of an edge stays); the current frame,
read at an earlier frame's box, is compared with that frame's patch. A track moved when one
comparison differs by MOVED grey levels (mean absolute difference, with what a change of the
camera's exposure explains fitted out: gain and offset). A track that has not moved for
STILL_S is a still picture; before that it is not yet judged. Figures: models/MODELS.md
("Stillness").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.vision.image import as_bgr8

PATCH = 96  # the face, 1.2 box sides square, resampled to PATCH x PATCH pixels
BLUR = 2.0  # Gaussian sigma in patch pixels
MOVED = 0.6  # grey levels: a mean change above this is motion
STILL_S = 1.5  # seconds of a face's track without motion before it is a still picture
KEEP = 4  # recent patches a frame is compared with (the track's first one is kept as well)
SAME_FACE = 1.0  # a box this many face widths from a track's last one continues it
MAX_TRACKS = 16  # faces followed at once (the oldest seen is dropped for a new one)

# What see() says of a track.
MOVING = "moving"  # it moved: the cue has nothing against it
NOT_YET = "not_yet"  # no motion yet, for less than STILL_S: not judged live yet
STILL = "still"  # no motion for STILL_S: a picture


def patch(bgr: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The blurred grey patch of the box's neighbourhood in an 8-bit BGR frame (as_bgr8); None
    for a box that cannot be placed."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    side = 1.2 * max(x1 - x0, y1 - y0)
    h, w = bgr.shape[:2]
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)) or not 1.0 <= side <= 4 * max(h, w):
        return None
    k = PATCH / side
    m = np.array(
        [[k, 0, PATCH / 2 - k * (x0 + x1) / 2], [0, k, PATCH / 2 - k * (y0 + y1) / 2]], np.float32
    )
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    crop = cv2.warpAffine(bgr, m, (PATCH, PATCH), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return cv2.GaussianBlur(gray, (0, 0), BLUR)


def change(before: np.ndarray, now: np.ndarray) -> float:
    """Mean absolute change between two patches of one place, what a change of exposure
    explains removed: `now` is fitted as gain * before + offset (least squares), and the rest
    is motion (or noise)."""
    b = before - before.mean()
    n = now - now.mean()
    gain = float((b * n).sum() / max(float((b * b).sum()), 1e-6))
    return float(np.abs(n - gain * b).mean())


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """How far box b lies from box a, in a's widths (centres); inf when their sizes differ by
    more than twice (another face, nearer or further)."""
    wa, wb = a[2] - a[0], b[2] - b[0]
    if not 0.5 <= wb / max(wa, 1e-6) <= 2.0:
        return float("inf")
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) / wa)


@dataclass
class _Track:
    start: float
    last: float
    box: np.ndarray
    moved: bool = False
    seen: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (box, patch)


@dataclass
class Stillness:
    """The tracks of the faces at the gate; a track not seen for `gap_s` is forgotten."""

    gap_s: float = 2.0
    still_s: float = STILL_S
    tracks: list[_Track] = field(default_factory=list)

    def reset(self) -> None:
        self.tracks = []

    def see(self, bgr: np.ndarray, box: np.ndarray, t: float) -> str:
        """Record one face at frame time t (seconds) and say whether its track has moved."""
        box = np.asarray(box[:4], np.float64)
        if not np.isfinite(box).all() or not np.isfinite(t):
            return NOT_YET  # nothing to follow: not live by this cue, refused by none
        bgr = as_bgr8(bgr)  # once: every patch of this frame reads it
        # a frame dated before a track's last (a clock stepped back) keeps it
        self.tracks = [tr for tr in self.tracks if t - tr.last <= self.gap_s]
        track = min(self.tracks, key=lambda tr: _distance(tr.box, box), default=None)
        if track is None or _distance(track.box, box) > SAME_FACE:
            track = _Track(t, t, box)
            self.tracks = [*sorted(self.tracks, key=lambda tr: tr.last)[-(MAX_TRACKS - 1) :], track]
        if track.moved:
            track.last, track.box = t, box
            return MOVING
        now = patch(bgr, box)
        if now is None:  # a box too large or too small to resample: nothing to compare
            track.last, track.box = t, box
            return NOT_YET if t - track.start < self.still_s else STILL
        for old_box, old in track.seen:
            here = patch(bgr, old_box)
            if here is not None and change(old, here) >= MOVED:
                track.moved = True
                break
        track.last, track.box = t, box
        if track.moved:
            track.seen = []
            return MOVING
        track.seen = [*track.seen[:1], *track.seen[1:][-(KEEP - 1) :], (box, now)]
        return STILL if t - track.start >= self.still_s else NOT_YET
