"""Decode any still image or frame into 8-bit BGR, or raise ImageError saying why."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edge.errors import ImageError

MIN_SIDE = 16
MAX_SIDE = 4096  # larger images are downscaled: faces at a gate are never that small
MAX_PIXELS = 120_000_000  # refuse decompression bombs before they eat the Pi's memory


def to_bgr8(img: np.ndarray, name: str = "frame") -> np.ndarray:
    """Normalise depth and channels: 16-bit, float, gray, gray+alpha, RGBA all become BGR uint8."""
    if not isinstance(img, np.ndarray) or img.size == 0:
        raise ImageError(f"{name}: empty image")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 2, 3, 4)):
        raise ImageError(f"{name}: unsupported layout {img.shape}")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        finite = np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0)
        hi = 255.0 if finite.max(initial=0) > 1.0 else 1.0
        img = np.clip(finite * (255.0 / hi), 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported pixel type {img.dtype}")
    if img.ndim == 2 or img.shape[2] == 1:
        img = cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 2:  # gray + alpha
        img = cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(
            f"{name}: {w}x{h} is too small to hold a face",
            f"use images at least {MIN_SIDE}px on each side",
        )
    if max(h, w) > MAX_SIDE:
        s = MAX_SIDE / max(h, w)
        img = cv2.resize(
            img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
        )
    return np.ascontiguousarray(img)


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode bytes (JPEG, PNG, WebP, BMP, ...) with every depth and channel layout."""
    if not data:
        raise ImageError(f"{name}: file is empty")
    _check_header_size(data, name)
    buf = np.frombuffer(data, dtype=np.uint8)
    # JPEG: as the camera saw it (EXIF orientation applied; a phone's portrait shot is upright).
    # Other formats: every depth and channel as stored (IMREAD_UNCHANGED ignores orientation).
    flags = (
        cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
        if data[:2] == b"\xff\xd8"
        else cv2.IMREAD_UNCHANGED
    )
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as e:
        raise ImageError(f"{name}: cannot decode: {e.msg if hasattr(e, 'msg') else e}") from None
    if img is None:
        raise ImageError(f"{name}: not a readable image (truncated or unknown format)")
    return to_bgr8(img, name)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read and decode an image file; every failure is an ImageError naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file") from None
    except OSError as e:
        raise ImageError(f"{p}: cannot read: {e.strerror}") from None
    return decode_image(data, str(p))


def _check_header_size(data: bytes, name: str) -> None:
    """Refuse images whose header claims an absurd size, before decoding them."""
    w = h = 0
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{name}: {w}x{h} pixels is larger than this gate will decode")
