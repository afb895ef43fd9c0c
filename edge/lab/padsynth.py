"""Generated face attacks: a photo printed on paper, or shown on a screen, held up to the camera.

The card carries the photo's print or screen appearance (halftone, paper grain, ink gamut; or a
sub-pixel grid, moire, glare, a colour cast) and moves in 3-D in front of a background: it tilts,
turns and drifts, so every frame is one perspective view of one plane. Deterministic per seed.
These are weak evidence of real-world attack detection: a real print or screen has optics,
sensor noise and materials no renderer reproduces; they exercise the motion cue and the tests.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from edge.errors import ImageError
from edge.vision.image import load_image

log = logging.getLogger(__name__)

FRAME = (640, 480)
STYLES = ("print", "screen")


def _print_face(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo as an inkjet print: less contrast and gamut, halftone dots, paper grain, border."""
    f = photo.astype(np.float32)
    f = 30 + f * 0.8  # paper white is not the sensor's white, ink black is not black
    gray = f.mean(axis=2, keepdims=True)
    f = gray + (f - gray) * 0.8  # narrower gamut
    h, w = f.shape[:2]
    period = max(3.0, w / 160)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dots = 0.5 + 0.5 * np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
    f *= 0.9 + 0.1 * dots[:, :, None]
    grain = cv2.GaussianBlur(rng.normal(0, 10, (h, w)).astype(np.float32), (0, 0), 1.2)
    f += grain[:, :, None]
    b = max(6, w // 20)
    f = cv2.copyMakeBorder(f, b, b, b, b, cv2.BORDER_CONSTANT, value=(238, 236, 228))
    return np.clip(f, 0, 255).astype(np.uint8)


def _screen_face(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo on a phone: RGB sub-pixel stripes, a blue cast and gamma, glare, a black bezel."""
    f = photo.astype(np.float32) / 255.0
    f = f ** rng.uniform(0.8, 0.95)
    f *= np.array([1.08, 1.0, 0.9], np.float32)  # BGR: cooler white point
    h, w = f.shape[:2]
    px = max(3, w // 180)
    stripes = np.zeros((h, w, 3), np.float32)
    cols = (np.arange(w) // max(1, px // 3)) % 3
    for c in range(3):  # BGR sub-pixels side by side
        stripes[:, cols == (2 - c), c] = 1.0
    rows = (np.arange(h) % px) == 0
    f = f * (0.55 + 0.45 * stripes)
    f[rows] *= 0.7
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.1, 0.5) * h
    glare = np.exp(-(((xx - gx) / (0.35 * w)) ** 2 + ((yy - gy) / (0.25 * h)) ** 2))
    f = f * 1.25 + 0.35 * glare[:, :, None]
    f = np.clip(f * 255, 0, 255).astype(np.uint8)
    return cv2.copyMakeBorder(
        f, h // 10, h // 8, w // 18, w // 18, cv2.BORDER_CONSTANT, value=(18, 18, 20)
    )


def _background(rng: np.random.Generator) -> np.ndarray:
    w, h = FRAME
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    base = 70 + 80 * y + 50 * x * np.array([0.7, 0.9, 1.0], np.float32)
    tex = cv2.GaussianBlur(rng.normal(0, 20, (h, w)).astype(np.float32), (0, 0), 5)[:, :, None]
    return np.clip(base + tex, 0, 255).astype(np.uint8)


def _pose(
    card: np.ndarray, yaw: float, pitch: float, roll: float, cx: float, cy: float, size: float
):
    """Perspective map of the card's corners: a plane rotated in 3-D, seen by a pinhole camera."""
    ch, cw = card.shape[:2]
    s = size / max(ch, cw)
    corners = np.array([[-cw, -ch, 0], [cw, -ch, 0], [cw, ch, 0], [-cw, ch, 0]], np.float32) * s / 2
    cyw, syw, cp, sp, cr, sr = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(roll),
        np.sin(roll),
    )
    r = (
        np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        @ np.array([[cyw, 0, syw], [0, 1, 0], [-syw, 0, cyw]])
        @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    )
    p = corners @ r.T
    focal, depth = 700.0, 700.0
    z = depth + p[:, 2]
    dst = np.stack([cx + focal * p[:, 0] / z, cy + focal * p[:, 1] / z], axis=1).astype(np.float32)
    src = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float32)
    return cv2.getPerspectiveTransform(src, dst)


def render_attack(photo: np.ndarray, style: str, rng: np.random.Generator, pose=None) -> np.ndarray:
    """One frame: the photo (print or screen) on a plane in front of a background."""
    card = _print_face(photo, rng) if style == "print" else _screen_face(photo, rng)
    return _compose(card, _background(rng), rng, pose or _random_pose(rng))


def render_print(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One frame of the photo printed and held up (a random pose)."""
    return render_attack(photo, "print", rng)


def render_screen(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One frame of the photo on a phone screen held up (a random pose)."""
    return render_attack(photo, "screen", rng)


def _random_pose(rng: np.random.Generator) -> tuple:
    w, h = FRAME
    return (
        rng.uniform(-0.4, 0.4),
        rng.uniform(-0.3, 0.3),
        rng.uniform(-0.15, 0.15),
        w / 2 + rng.uniform(-60, 60),
        h / 2 + rng.uniform(-30, 30),
        rng.uniform(0.55, 0.8) * h,
    )


def _compose(card: np.ndarray, bg: np.ndarray, rng: np.random.Generator, pose: tuple) -> np.ndarray:
    w, h = FRAME
    m = _pose(card, *pose)
    warped = cv2.warpPerspective(card, m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full(card.shape[:2], 255, np.uint8), m, (w, h)) > 0
    frame = bg.copy()
    frame[mask] = warped[mask]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 0.85 + 0.3 * (xx / w) * rng.uniform(0.5, 1.0)  # a window to one side
    f = frame.astype(np.float32) * light[:, :, None] + rng.normal(0, 2.5, frame.shape)
    return np.clip(cv2.GaussianBlur(f, (0, 0), 0.7), 0, 255).astype(np.uint8)


def attack_frames(
    photo: np.ndarray, style: str, seconds: float = 3.0, fps: float = 15.0, seed: int = 0
):
    """Yield a clip's frames: the card tilting and turning in 3-D, drifting, lit from one side."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}")
    rng = np.random.default_rng(seed)
    card = _print_face(photo, rng) if style == "print" else _screen_face(photo, rng)
    bg = _background(rng)
    w, h = FRAME
    size = rng.uniform(0.6, 0.8) * h
    a_yaw, a_pitch = rng.uniform(0.25, 0.45), rng.uniform(0.15, 0.3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    for i in range(max(1, round(seconds * fps))):
        t = i / fps
        pose = (
            a_yaw * np.sin(2.1 * t + ph[0]),
            a_pitch * np.sin(1.6 * t + ph[1]),
            0.08 * np.sin(1.1 * t + ph[2]),
            w / 2 + 40 * np.sin(0.9 * t),
            h / 2 + 15 * np.cos(1.3 * t),
            size * (1 + 0.08 * np.sin(0.7 * t)),
        )
        yield _compose(card, bg, rng, pose)


def write_attack_clip(
    path: Path,
    photo: np.ndarray,
    style: str,
    seconds: float = 3.0,
    fps: float = 15.0,
    seed: int = 0,
) -> int:
    """Write an MP4 attack clip; returns the number of frames."""
    # imported here: the model build renders prints and screens in an env without the gate's
    # ticket dependencies (synth imports the QR renderer)
    from edge.lab.synth import write_video

    return write_video(path, attack_frames(photo, style, seconds, fps, seed), fps, FRAME)


def write_attack_set(faces: Path, out: Path, seconds: float = 3.0, fps: float = 15.0) -> int:
    """OUT/attack/{print,screen}/<person>.mp4 from the first photo of each FACES/<person>/."""
    n = 0
    for i, person in enumerate(sorted(p for p in faces.iterdir() if p.is_dir())):
        photos = sorted(
            p for p in person.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        if not photos:
            continue
        try:  # the size checked before decoding, as everywhere an image is read
            img = load_image(photos[0])
        except ImageError as e:
            log.warning("attack set: %s skipped: %s", person.name, e)
            continue
        for style in STYLES:
            write_attack_clip(
                out / "attack" / style / f"{person.name}.mp4", img, style, seconds, fps, seed=i
            )
            n += 1
    return n


# --- a photo or a screen filling the view on a plain surround ------------------------------------
#
# The attacks the context model misses: the print or screen is held so close that nothing of the
# room is in view, only the photo and a plain gray or white surface around it. Development
# renderings for the frame and surround cues (edge/vision/cues.py): generated at test time,
# never stored as images.

SURROUND_STYLES = ("print", "cutout", "screen")


def _plain(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A plain gray or white surface: one colour, a soft light falloff, sensor noise."""
    w, h = size
    level = rng.uniform(200, 240) if rng.random() < 0.5 else rng.uniform(105, 180)
    tint = 1 + rng.uniform(-0.04, 0.04, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(0, w), rng.uniform(0, h)
    fall = 1 - rng.uniform(0.05, 0.15) * (((xx - gx) / w) ** 2 + ((yy - gy) / h) ** 2)
    return (level * fall)[:, :, None] * tint[None, None, :].astype(np.float32)


def _head_mask(shape: tuple[int, int], box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A head cut out with scissors: an ellipse over face and hair with a wobbly outline."""
    h, w = shape
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - rng.uniform(0.08, 0.18) * bh
    ax, ay = rng.uniform(0.6, 0.75) * bw, rng.uniform(0.8, 0.95) * bh
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = np.arctan2((yy - cy) / ay, (xx - cx) / ax)
    k = rng.integers(3, 7)
    wobble = 1 + 0.04 * np.sin(k * ang + rng.uniform(0, 2 * np.pi))
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return (r <= wobble).astype(np.float32)


def render_surround(
    photo: np.ndarray,
    box: np.ndarray,
    style: str,
    rng: np.random.Generator,
    size: tuple[int, int] = FRAME,
    face_frac: float | None = None,
    held: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """One frame: the face of `photo` (its face box `box`) as a print, a cut-out print or on a
    screen, held so that it and a plain gray/white surround fill the view. The face box is
    `face_frac` (default 0.35-0.6) of the frame height. `held` (dx, dy pixels, degrees) moves
    the print or screen over the surround: the same seed with a hand's tremor in `held` makes
    the frames of one hand-held presentation."""
    if style not in SURROUND_STYLES:
        raise ValueError(f"style must be one of {SURROUND_STYLES}")
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    frac = rng.uniform(0.35, 0.6) if face_frac is None else face_frac
    s = frac * h / max(y1 - y0, 1.0)
    img = cv2.resize(
        photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    )
    fb = np.array([x0, y0, x1, y1]) * s
    bw, bh = fb[2] - fb[0], fb[3] - fb[1]
    # the part of the photo that was printed or shown: head and shoulders with its own background
    lft = int(max(fb[0] - rng.uniform(0.5, 0.9) * bw, 0))
    r = int(min(fb[2] + rng.uniform(0.5, 0.9) * bw, img.shape[1]))
    t = int(max(fb[1] - rng.uniform(0.6, 1.0) * bh, 0))
    b = int(min(fb[3] + rng.uniform(0.9, 1.6) * bh, img.shape[0]))
    piece, fb = img[t:b, lft:r], fb - np.array([lft, t, lft, t])
    if style == "screen":
        card = _screen_face(piece, rng)
        bx, by = (card.shape[1] - piece.shape[1]) // 2, (card.shape[0] - piece.shape[0]) * 4 // 9
        mask = np.ones(card.shape[:2], np.float32)
    else:
        card = _print_face(piece, rng)
        bx = by = (card.shape[1] - piece.shape[1]) // 2
        mask = np.ones(card.shape[:2], np.float32)
        if style == "cutout":
            mask = np.zeros(card.shape[:2], np.float32)
            mask[by : by + piece.shape[0], bx : bx + piece.shape[1]] = _head_mask(
                piece.shape[:2], fb, rng
            )
    fb = fb + np.array([bx, by, bx, by])
    # place it: the face near the middle of the view, turned a few degrees
    fcx, fcy = (fb[0] + fb[2]) / 2, (fb[1] + fb[3]) / 2
    tx, ty = w / 2 + rng.uniform(-0.12, 0.12) * w, h / 2 + rng.uniform(-0.08, 0.08) * h
    tx, ty = tx + held[0], ty + held[1]
    m = cv2.getRotationMatrix2D((float(fcx), float(fcy)), float(rng.uniform(-6, 6)) + held[2], 1.0)
    m[:, 2] += (tx - fcx, ty - fcy)
    warped = cv2.warpAffine(card, m, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32)
    alpha = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR)[:, :, None]
    f = _plain(size, rng) * (1 - alpha) + warped * alpha
    f = f * rng.uniform(0.85, 1.1) + rng.normal(0, rng.uniform(1.0, 3.0), f.shape)
    return np.clip(cv2.GaussianBlur(f, (0, 0), rng.uniform(0.5, 0.9)), 0, 255).astype(np.uint8)


def tremor(rng: np.random.Generator, n: int, px: float = 2.0, deg: float = 0.5) -> np.ndarray:
    """n poses (dx, dy, degrees) of a hand holding a card: a smooth random walk within +-px
    pixels and +-deg degrees, for render_surround's `held`."""
    walk = np.cumsum(rng.normal(0, 1, (n, 3)), axis=0)
    walk = walk - walk.mean(axis=0)
    top = np.maximum(np.abs(walk).max(axis=0), 1e-6)
    return walk / top * np.array([px, px, deg])


def read_part(src: Path, start: int = 0, stop: int | None = None) -> tuple[list[np.ndarray], float]:
    """Frames start..stop of a recorded clip, and its frame rate (15 when it says none)."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 15.0
    frames, i = [], 0
    while stop is None or i < stop:
        ok, f = cap.read()
        if not ok:
            break
        if i >= start:
            frames.append(f)
        i += 1
    cap.release()
    return frames, fps


def write_part(src: Path, dst: Path, start: int, stop: int | None = None) -> int:
    """Frames start..stop of a recorded clip as an MP4 (e.g. a replay clip without the opening
    in which the person himself is in view); returns the number of frames written."""
    # synth imports the QR renderer, absent from the model build's env (above)
    from edge.lab.synth import write_video

    frames, fps = read_part(src, start, stop)
    if not frames:
        raise ValueError(f"{src}: no frames from {start}")
    h, w = frames[0].shape[:2]
    return write_video(dst, iter(frames), fps, (w, h))


if __name__ == "__main__":
    # python -m edge.lab.padsynth FACES_DIR OUT_DIR: generated print and screen clips
    # python -m edge.lab.padsynth part SRC DST START [STOP]: a part of a recorded clip
    import sys

    if sys.argv[1] == "part":
        stop = int(sys.argv[5]) if len(sys.argv) > 5 else None
        n = write_part(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), stop)
        print(f"wrote {n} frames to {sys.argv[3]}")
    else:
        n = write_attack_set(Path(sys.argv[1]), Path(sys.argv[2]))
        print(f"wrote {n} clips to {sys.argv[2]}")
