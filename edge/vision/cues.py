"""Cues beside the liveness model: the edge of a print or screen, and a head with no body.

The context model judges a face by what surrounds it; a photo or a screen held so that it and
a plain surface fill the view shows it "a face in a plain room". Two cheap geometric cues look
at the same neighbourhood for what a live visitor never shows:

- frame: straight edges on two opposite sides of the face (the border of a print, a phone's or a
  monitor's bezel), each a single line, not one of a row of folds or bars; or a corner, two
  perpendicular edges with a plain surface beyond both;
- surround: a head on one plain surface that also fills the place of the shoulders (a photo cut
  out around the head): beside the head and where the shoulders should be, the same flat colour.

Both only veto a frame the model judged live. Everything is measured in a canonical crop: the
face box (BlazeFace) scaled so that its mean side is FACE_PX pixels, CONTEXT face sizes wide,
with a mask of the pixels that lie inside the camera frame (a cue never reads past its edge).
Figures and what they were developed on: models/MODELS.md ("Cues").
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.vision.image import as_bgr8

FACE_PX = 40  # face box mean side in the canonical crop
CONTEXT = 3.2  # the crop is this many face sizes wide and high
SIZE = int(round(CONTEXT * FACE_PX))
FAR = 16  # a face box further than this many frame sides from the frame is not placed

# frame cue (lengths and distances in face sizes)
MIN_PIECE = 0.35  # line pieces shorter than this are ignored before merging
MIN_EDGE = 1.0  # a print or screen edge beside a face is at least one face long
OFF_FACE = 0.7  # ... and passes at least this far from the face centre
MIN_CONTRAST = 10.0  # grey levels across the edge (median along it)
PARALLEL_DEG = 8.0
MAX_SAME_SIDE = 4  # more parallel lines than this on one side are texture (folds, bars)
CORNER_EDGE = 1.2  # each edge of a corner against a plain surface is at least this long
BEYOND_ALONG = 0.5  # the surface beyond an edge is read along at least this much of it

# surround cue: regions (x0, x1, y0, y1) in face sizes from the face centre, y down
BESIDE = ((-1.45, -0.95, -0.5, 0.1), (0.95, 1.45, -0.5, 0.1))
SHOULDERS = ((-1.35, -0.75, 0.75, 1.15), (0.75, 1.35, 0.75, 1.15))
PLAIN_STD = 8.0  # grey-level spread within a region of a plain surface
SAME_LIGHT = 0.2  # brightest and darkest region differ by at most this share of the mean
SAME_HUE = 0.06  # each region's chromaticity (B, G, R over their mean) within this of the mean
MIN_IN_VIEW = 0.25  # share of a region that must lie inside the frame to be read


@dataclass(frozen=True)
class Edge:
    """One straight edge in the canonical crop, in face sizes from the face centre."""

    angle: float  # direction, radians in [0, pi)
    offset: float  # signed distance of the line from the face centre
    length: float
    contrast: float
    side: int  # 0 right, 1 below, 2 left, 3 above the face
    beyond: float = 99.0  # grey-level spread of the band just beyond it (away from the face)


def canonical(bgr: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The face's neighbourhood at a fixed scale (SIZE x SIZE BGR) and its in-frame mask.

    A box that cannot be placed (a coordinate not finite, or more than FAR frame sides from the
    frame) has nothing of the frame in view: the cues then say nothing about it. A frame that
    is not 8-bit BGR is read as as_bgr8 reads it (an empty one is an ImageError)."""
    bgr = as_bgr8(bgr)
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    reach = FAR * max(bgr.shape[:2])
    if not all(np.isfinite(v) and abs(v) <= reach for v in (x0, y0, x1, y1)):
        # OpenCV's warp overflows (and crashes the process) on such a transform
        return np.zeros((SIZE, SIZE, 3), np.uint8), np.zeros((SIZE, SIZE), bool)
    k = FACE_PX / max(((x1 - x0) + (y1 - y0)) / 2, 1.0)
    c = SIZE / 2
    m = np.array([[k, 0, c - k * (x0 + x1) / 2], [0, k, c - k * (y0 + y1) / 2]], np.float32)
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    # replicated, not black: interpolation next to the frame's edge must not draw a dark line
    crop = cv2.warpAffine(bgr, m, (SIZE, SIZE), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    inside = np.full(bgr.shape[:2], 255, np.uint8)
    valid = cv2.warpAffine(inside, m, (SIZE, SIZE), flags=cv2.INTER_NEAREST) > 0
    return crop, valid


_LSD = None


def _segments(gray: np.ndarray) -> np.ndarray:
    """Line segments (K, 4) of OpenCV's line segment detector (parameter-free)."""
    global _LSD
    if _LSD is None:
        _LSD = cv2.createLineSegmentDetector(cv2.LSD_REFINE_STD)
    found = _LSD.detect(gray)[0]
    return np.zeros((0, 4)) if found is None else found.reshape(-1, 4).astype(np.float64)


def _merge(seg: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Collinear pieces joined into lines: (angle, offset px, start, end) along the line."""
    c = SIZE / 2
    d = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])
    seg, d = seg[d >= MIN_PIECE * FACE_PX], d[d >= MIN_PIECE * FACE_PX]
    if not len(seg):
        return []
    th = np.arctan2(seg[:, 3] - seg[:, 1], seg[:, 2] - seg[:, 0]) % np.pi
    u = np.stack([np.cos(th), np.sin(th)], 1)
    n = np.stack([-u[:, 1], u[:, 0]], 1)
    rho = ((seg[:, :2] - c) * n).sum(1)
    t0, t1 = ((seg[:, :2] - c) * u).sum(1), ((seg[:, 2:] - c) * u).sum(1)
    lo, hi = np.minimum(t0, t1), np.maximum(t0, t1)
    used = np.zeros(len(seg), bool)
    out = []
    for i in np.argsort(-(hi - lo)):  # longest first; a few dozen segments at most
        if used[i]:
            continue
        dth = np.abs((th - th[i] + np.pi / 2) % np.pi - np.pi / 2)
        same = np.flatnonzero(~used & (dth < np.radians(4)) & (np.abs(rho - rho[i]) < 2.5))
        a, b = lo[i], hi[i]
        for j in same[np.argsort(lo[same])]:  # sorted by start: one pass joins the chain
            if lo[j] <= b + 0.3 * FACE_PX and hi[j] >= a - 0.3 * FACE_PX:
                a, b = min(a, lo[j]), max(b, hi[j])
        used[same[(lo[same] >= a - 1e-6) & (hi[same] <= b + 1e-6)]] = True
        used[i] = True
        out.append((float(th[i]), float(rho[i]), float(a), float(b)))
    return out


def straight_edges(crop: np.ndarray, valid: np.ndarray) -> list[Edge]:
    """Long straight edges in the canonical crop that pass beside (not through) the face,
    lie inside the frame on both sides and have contrast across them."""
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    inside = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    c, f = SIZE / 2, float(FACE_PX)
    out = []
    for th, rho, a, b in _merge(_segments(gray)):
        u = np.array([np.cos(th), np.sin(th)])
        n = np.array([-u[1], u[0]])
        a, b = _in_view(inside, c + rho * n, u, a, b)
        if b - a < MIN_EDGE * f or abs(rho) < OFF_FACE * f:
            continue
        pts = c + np.linspace(a, b, 11)[:, None] * u + rho * n
        on = _read(inside, pts)
        both = _read(inside, pts + 2 * n) & _read(inside, pts - 2 * n)
        if on.mean() < 0.6 or not on[5] or both.mean() < 0.6:
            continue  # the frame's own border, or mostly outside it
        ga = cv2.remap(gray, *_maps(pts + 1.5 * n), cv2.INTER_LINEAR).ravel()
        gb = cv2.remap(gray, *_maps(pts - 1.5 * n), cv2.INTER_LINEAR).ravel()
        contrast = float(np.median(np.abs(ga.astype(np.float32) - gb)))
        if contrast < MIN_CONTRAST:
            continue
        foot = rho * n
        side = int(((np.degrees(np.arctan2(foot[1], foot[0])) + 45) % 360) // 90)
        away = n if rho > 0 else -n
        band = (pts[None, :, :] + np.arange(3, 10)[:, None, None] * away).reshape(-1, 2)
        ok = _read(inside, band) & (band >= 0).all(axis=1) & (band <= SIZE - 1).all(axis=1)
        # 3..9 px beyond, read where all of that depth is in crop and frame (a band cut short
        # reads only what lies next to the line)
        deep = ok.reshape(7, -1).all(axis=0)
        vals = _read(gray, band).reshape(7, -1)[:, deep].astype(np.float32)
        beyond = float(vals.std()) if deep.mean() * (b - a) >= BEYOND_ALONG * f else 99.0
        out.append(Edge(th, rho / f, (b - a) / f, contrast, side, beyond))
    return out


def _in_view(inside: np.ndarray, foot: np.ndarray, u: np.ndarray, a: float, b: float):
    """The part of a line (from `a` to `b` along `u` from `foot`) inside the frame: the crop
    beyond the frame's edge repeats its last row or column, and so runs a line crossing that
    edge on, straight, to the crop's border."""
    t = np.linspace(a, b, 33)
    on = np.flatnonzero(_read(inside, foot + t[:, None] * u))
    return (float(t[on[0]]), float(t[on[-1]])) if len(on) else (a, a)


def _read(mask: np.ndarray, pts: np.ndarray) -> np.ndarray:
    ix = np.clip(np.round(pts).astype(int), 0, SIZE - 1)
    return mask[ix[:, 1], ix[:, 0]]


def _maps(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = pts.astype(np.float32)
    return p[:, 0:1].copy(), p[:, 1:2].copy()


def _angle_between(a: float, b: float) -> float:
    return abs((a - b + np.pi / 2) % np.pi - np.pi / 2)


def framed(edges: list[Edge]) -> bool:
    """Two parallel straight edges on opposite sides of the face: the border of a print or the
    bezel of a screen around it. On a side with a row of parallel lines (folds, bars, or the
    photo's own content) only the outermost counts, and only with a plain surface beyond it."""
    tol = np.radians(PARALLEL_DEG)
    single = []
    for e in edges:
        row = [o for o in edges if o.side == e.side and _angle_between(o.angle, e.angle) < tol]
        if len(row) <= MAX_SAME_SIDE:
            single.append(e)
        elif abs(e.offset) == max(abs(o.offset) for o in row) and e.beyond <= PLAIN_STD:
            single.append(e)  # the border of something patterned, held against a plain surface
    if any(
        p.side != q.side and (p.side - q.side) % 2 == 0 and _angle_between(p.angle, q.angle) < tol
        for i, p in enumerate(single)
        for q in single[i + 1 :]
    ):
        return True
    # A corner: two perpendicular edges on adjacent sides, each with a plain surface beyond it
    # (a print's or screen's corner against a plain surround; the rest is out of view).
    rim = [e for e in edges if e.beyond <= PLAIN_STD and e.length >= CORNER_EDGE]
    return any(
        (p.side - q.side) % 2 == 1 and abs(_angle_between(p.angle, q.angle) - np.pi / 2) < tol
        for i, p in enumerate(rim)
        for q in rim[i + 1 :]
    )


def _region(crop: np.ndarray, valid: np.ndarray, r: tuple[float, float, float, float]):
    c, f = SIZE / 2, FACE_PX
    xs = slice(int(c + r[0] * f), int(c + r[1] * f))
    ys = slice(int(c + r[2] * f), int(c + r[3] * f))
    return crop[ys, xs].astype(np.float32), valid[ys, xs]


def floating_head(crop: np.ndarray, valid: np.ndarray) -> bool:
    """Beside the head and where the shoulders should be, one plain surface of one colour: a
    head with no body (a photo cut out around the head). A live visitor's shoulders break it.

    Both places beside the head and at least one shoulder must be in view (MIN_IN_VIEW of each);
    says nothing (False) otherwise. One colour: brightness within SAME_LIGHT of the mean (a lit
    surface is brighter on one side) and the same hue (chromaticity within SAME_HUE).
    """
    seen = []
    for r in BESIDE + SHOULDERS:
        px, ok = _region(crop, valid, r)
        seen.append(None if ok.size == 0 or ok.mean() < MIN_IN_VIEW else px[ok])
    if seen[0] is None or seen[1] is None or (seen[2] is None and seen[3] is None):
        return False
    parts = [p for p in seen if p is not None]
    if max(float(p.std(axis=0).mean()) for p in parts) > PLAIN_STD:
        return False
    means = np.array([p.mean(axis=0) for p in parts])
    light = means.mean(axis=1)
    hue = means / np.maximum(light[:, None], 1.0)
    return bool(
        light.max() - light.min() <= SAME_LIGHT * light.mean()
        and np.abs(hue - hue.mean(axis=0)).max() <= SAME_HUE
    )


def veto(bgr: np.ndarray, box: np.ndarray) -> str | None:
    """The name of the cue that refuses this face ("frame", "surround"), or None."""
    crop, valid = canonical(bgr, box)
    if framed(straight_edges(crop, valid)):
        return "frame"
    if floating_head(crop, valid):
        return "surround"
    return None
