"""Decode any still image or frame into 8-bit BGR, or raise ImageError saying why.

The size an image claims is read from its header before anything is decoded (PNG IHDR, JPEG
SOF, GIF, BMP, WebP, TIFF, PNM): a small file claiming 30,000 x 30,000 pixels would otherwise
have OpenCV allocate gigabytes. The limit is `vision.max_image_pixels`; a format whose header
is not read here is not decoded at all.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from edge.config import VisionConfig
from edge.errors import ImageError

MIN_SIDE = 16
MAX_SIDE = 4096  # larger images are downscaled: faces at a gate are never that small
MAX_PIXELS = VisionConfig.max_image_pixels  # the default of the config key
FORMATS = "JPEG, PNG, GIF, BMP, WebP, TIFF or PNM"
HEAD_BYTES = 1 << 20  # enough of a file to find its size: JPEG's frame header may follow EXIF


def to_bgr8(img: np.ndarray, name: str = "frame") -> np.ndarray:
    """Normalise depth and channels (as_bgr8), then size: too small to hold a face is an
    ImageError, larger than MAX_SIDE is downscaled."""
    img = as_bgr8(img, name)
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(
            f"{name}: {w}x{h} is too small to hold a face or a code",
            f"use images at least {MIN_SIDE}px on each side",
        )
    if max(h, w) > MAX_SIDE:
        s = MAX_SIDE / max(h, w)
        img = cv2.resize(
            img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
        )
    return np.ascontiguousarray(img)


def as_bgr8(img: np.ndarray, name: str = "frame") -> np.ndarray:
    """Depth and channels only, the size kept: 16-bit, float, gray, gray+alpha, RGBA all become
    BGR uint8 (8-bit BGR is returned as it is); an empty image or another layout is an
    ImageError."""
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
    return img


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode bytes (JPEG, PNG, WebP, BMP, ...) with every depth and channel layout."""
    if not data:
        raise ImageError(f"{name}: file is empty")
    check_image_header(data, name, max_pixels)
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
    return to_bgr8(over_white(img), name)


def over_white(img: np.ndarray) -> np.ndarray:
    """An image file's transparency shown as a viewer shows it, on white: dropping the alpha
    made a code drawn in black on transparent black all black. Camera frames never come here
    (a camera's fourth channel is padding, not alpha)."""
    if img.ndim != 3 or img.shape[2] not in (2, 4):
        return img
    top = float(np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else 1.0
    if float(img[:, :, -1].min()) >= top:  # opaque: nothing to blend
        return img
    out = np.empty(img.shape[:2] + (img.shape[2] - 1,), img.dtype)
    rows = max(1, (1 << 20) // max(1, img.shape[1]))  # tens of MB of floats at a time, not GB
    half = 0.5 if img.dtype.kind in "ui" else 0.0  # rounded, not cut
    for y in range(0, img.shape[0], rows):
        block = img[y : y + rows].astype(np.float32)
        alpha = block[:, :, -1:] / top
        out[y : y + rows] = block[:, :, :-1] * alpha + top * (1.0 - alpha) + half
    return out


def _not_a_file(p: Path) -> None:
    """An ImageError for a path that exists and is neither a file nor a folder: reading a
    pipe waits for a writer for ever, a device like /dev/zero never ends."""
    try:
        if p.exists() and not p.is_file() and not p.is_dir():
            raise ImageError(f"{p}: is a device or a pipe, not an image file")
    except OSError:  # a name too long, a loop: reading it says why
        pass


def load_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file; every failure is an ImageError naming the file."""
    p = Path(path)
    _not_a_file(p)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{p}: is a folder, not an image") from None
    except OSError as e:
        raise ImageError(f"{p}: cannot read: {e.strerror}") from None
    return decode_image(data, str(p), max_pixels)


def read_head(path: str | os.PathLike[str]) -> bytes:
    """The first bytes of a file, enough for `image_size` (an ImageError names the file)."""
    _not_a_file(Path(path))
    try:
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror}") from None


def check_image_header(head: bytes, name: str, max_pixels: int = MAX_PIXELS) -> str:
    """The image's format, after refusing one whose header claims more than `max_pixels`.

    Raises ImageError for data that is not an image format read here, or whose header cannot
    be found (truncated).
    """
    found = image_size(head)
    if found is None:
        raise ImageError(
            f"{name}: not a readable image (unknown format; edge-gate reads {FORMATS})"
        )
    fmt, w, h = found
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: not a readable image (truncated or damaged {fmt} header)")
    if w * h > max_pixels:
        raise ImageError(
            f"{name}: {fmt} of {w}x{h} pixels is larger than this gate decodes "
            f"({max_pixels:,} pixels)",
            "use a smaller image, or raise vision.max_image_pixels in the config",
        )
    return fmt


def opencv_path(path: str | os.PathLike[str]) -> str:
    """The path as OpenCV's video functions take it. A name that is not UTF-8 (bytes Python
    keeps as lone surrogates) is refused here: OpenCV's bindings end the whole process with a
    segmentation fault on it, the gate included."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise ImageError(
            f"{shown}: a file name that is not UTF-8 cannot be opened as a video",
            "rename the file (or its folder) in UTF-8",
        ) from None
    return text


def open_video(source: str | int | os.PathLike[str], max_pixels: int = MAX_PIXELS):
    """cv2.VideoCapture on a clip, a still image or a camera, after refusing oversized frames.

    A file that is a still image (OpenCV decodes those when opened) has its header checked
    first; every source has its frame size checked before the first frame is read. The caller
    checks `isOpened()` and releases the capture.
    """
    camera = isinstance(source, int) or str(source).startswith("/dev/")
    if not camera:
        head = read_head(str(source))
        if image_size(head) is not None:
            check_image_header(head, str(source), max_pixels)
    cap = cv2.VideoCapture(source if isinstance(source, int) else opencv_path(source))
    if cap.isOpened():
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w * h > max_pixels:
            cap.release()
            raise ImageError(
                f"{source}: frames of {w}x{h} pixels are larger than this gate decodes "
                f"({max_pixels:,} pixels)",
                "use a smaller video, or raise vision.max_image_pixels in the config",
            )
    return cap


def image_size(head: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the first bytes of an image, without decoding it.

    None when the bytes are no image format read here; a width or height of 0 when the format
    is known but its size could not be found in `head` (truncated).
    """
    for fmt, is_it, parse in _FORMATS:
        if is_it(head):
            try:
                w, h = parse(head)
            except (struct.error, ValueError, IndexError):
                w = h = 0
            return fmt, abs(w), abs(h)
    return None


def _png(b: bytes) -> tuple[int, int]:
    return struct.unpack(">II", b[16:24])


def _jpeg(b: bytes) -> tuple[int, int]:
    """Walk the marker segments to the frame header (SOFn) and read its size."""
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return 0, 0
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return 0, 0
        (length,) = struct.unpack(">H", b[i + 2 : i + 4])
        if marker in (*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", b[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return 0, 0


def _gif(b: bytes) -> tuple[int, int]:
    return struct.unpack("<HH", b[6:10])


def _bmp(b: bytes) -> tuple[int, int]:
    if struct.unpack("<I", b[14:18])[0] == 12:  # OS/2 header: 16-bit sizes
        return struct.unpack("<HH", b[18:22])
    return struct.unpack("<ii", b[18:26])


def _webp(b: bytes) -> tuple[int, int]:
    chunk = b[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", b[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", b[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return 1 + int.from_bytes(b[24:27], "little"), 1 + int.from_bytes(b[27:30], "little")
    return 0, 0


def _tiff(b: bytes) -> tuple[int, int]:
    """Tags ImageWidth (256) and ImageLength (257) of the first image directory."""
    e = "<" if b[:2] == b"II" else ">"
    (ifd,) = struct.unpack(e + "I", b[4:8])
    (n,) = struct.unpack(e + "H", b[ifd : ifd + 2])
    size = {}
    for k in range(n):
        tag, typ, _, value = struct.unpack(e + "HHI4s", b[ifd + 2 + 12 * k : ifd + 14 + 12 * k])
        if tag in (256, 257):
            size[tag] = struct.unpack(
                e + ("H" if typ == 3 else "I"), value[: 2 if typ == 3 else 4]
            )[0]
    return size.get(256, 0), size.get(257, 0)


def _pnm(b: bytes) -> tuple[int, int]:
    """P1..P6: width and height are the first two numbers after the magic (comments skipped)."""
    words = []
    for line in b[2:4096].split(b"\n"):
        words += line.split(b"#")[0].split()
        if len(words) >= 2:
            return int(words[0]), int(words[1])
    return 0, 0


_FORMATS = (
    ("PNG", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), _png),
    ("JPEG", lambda b: b.startswith(b"\xff\xd8"), _jpeg),
    ("GIF", lambda b: b[:6] in (b"GIF87a", b"GIF89a"), _gif),
    ("BMP", lambda b: b.startswith(b"BM"), _bmp),
    ("WebP", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", _webp),
    ("TIFF", lambda b: b[:4] in (b"II*\x00", b"MM\x00*"), _tiff),
    ("PNM", lambda b: b[:1] == b"P" and b[1:2] in b"123456" and b[2:3].isspace(), _pnm),
)
