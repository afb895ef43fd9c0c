"""Generated ticket clips: printed and phone-screen tickets held to a camera, for demo and tests.

Each segment shows one code (or nothing) with its own perspective, drift, blur, exposure and
noise, like a visitor's hand at the gate. Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.tickets.qr import render_ticket
from edge.vision.image import opencv_path


@dataclass(frozen=True)
class Segment:
    """A stretch of a generated clip: a ticket (print or phone) or nobody, for some seconds."""

    seconds: float
    text: str | None = None  # None = nobody at the gate
    style: str = "print"  # print | phone
    label: str = ""


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    base = 60 + 90 * y + 40 * x * np.array([0.6, 0.9, 1.0], np.float32)
    texture = cv2.GaussianBlur(rng.normal(0, 18, (h, w)).astype(np.float32), (0, 0), 6)[:, :, None]
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def _card(text: str, style: str) -> np.ndarray:
    ticket = render_ticket(text, [text[:24] + "…"], module_px=6)
    if style == "phone":  # a phone: black bezel around a bright screen
        return cv2.copyMakeBorder(ticket, 60, 90, 24, 24, cv2.BORDER_CONSTANT, value=(20, 20, 20))
    return cv2.copyMakeBorder(ticket, 16, 16, 16, 16, cv2.BORDER_CONSTANT, value=(235, 235, 228))


def _place(
    frame: np.ndarray, card: np.ndarray, rng: np.random.Generator, phase: float, params: dict
) -> None:
    h, w = frame.shape[:2]
    ch, cw = card.shape[:2]
    scale = params["size"] / max(ch, cw)
    cx = w / 2 + params["dx"] + 12 * np.sin(phase * 2.1)
    cy = h / 2 + params["dy"] + 8 * np.cos(phase * 1.7)
    src = np.float32([[0, 0], [cw, 0], [cw, ch], [0, ch]])
    half = np.float32([[-cw, -ch], [cw, -ch], [cw, ch], [-cw, ch]]) * scale / 2
    ang = params["angle"] + 0.03 * np.sin(phase)
    rot = np.float32([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = half @ rot.T + np.float32([cx, cy]) + params["skew"]
    m = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    warped = cv2.warpPerspective(card, m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full((ch, cw), 255, np.uint8), m, (w, h))
    frame[mask > 0] = warped[mask > 0]


def render_frames(
    segments: list[Segment], fps: float = 10.0, size: tuple[int, int] = (640, 480), seed: int = 0
):
    """Yield (frame, segment index) for every frame of the clip."""
    rng = np.random.default_rng(seed)
    w, h = size
    bg = _background(rng, w, h)
    for si, seg in enumerate(segments):
        card = _card(seg.text, seg.style) if seg.text else None
        params = {
            "size": rng.uniform(0.45, 0.62) * min(w, h) * (1.25 if seg.style == "phone" else 1.0),
            "dx": rng.uniform(-60, 60),
            "dy": rng.uniform(-30, 30),
            "angle": rng.uniform(-0.35, 0.35),
            "skew": rng.uniform(-18, 18, (4, 2)).astype(np.float32),
            "gain": rng.uniform(0.65, 1.2),
            "bias": rng.uniform(-25, 20),
            "blur": rng.uniform(0.0, 1.2),
        }
        for i in range(max(1, round(seg.seconds * fps))):
            frame = bg.copy()
            if card is not None:
                _place(frame, card, rng, i / fps, params)
            f = frame.astype(np.float32) * params["gain"] + params["bias"]
            f += rng.normal(0, 3.0, f.shape)
            if params["blur"] > 0.2:
                f = cv2.GaussianBlur(f, (0, 0), params["blur"])
            yield np.clip(f, 0, 255).astype(np.uint8), si


def write_video(path: Path, frames, fps: float, size: tuple[int, int]) -> int:
    """Write BGR frames of one size to an MP4 file; returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wr = cv2.VideoWriter(opencv_path(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not wr.isOpened():
        raise OSError(f"cannot write video {path}")
    n = 0
    for frame in frames:
        wr.write(frame)
        n += 1
    wr.release()
    return n


def write_clip(
    path: Path,
    segments: list[Segment],
    fps: float = 10.0,
    size: tuple[int, int] = (640, 480),
    seed: int = 0,
) -> int:
    """Write an MP4 clip; returns the number of frames."""
    frames = (frame for frame, _ in render_frames(segments, fps, size, seed))
    return write_video(path, frames, fps, size)
