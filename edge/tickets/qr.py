"""Read codes from frames (zxing-cpp) and render ticket QR images.

Measured on the 62 real phone photos of ../shared/fixtures/qr: zxing-cpp reads 62, OpenCV's
QRCodeDetector 45 (`python scripts/qr_hit_rate.py`), so zxing-cpp alone reads frames. Every
format zxing knows is read but Micro QR, so a product barcode shown to the gate is decoded and
then refused as malformed, not ignored. Micro QR has one finder pattern, and a QR code's own
corner is one: in 3 of about 100 renderings of the demo's ticket scene
(`edge.lab.demo.ticket_scene`) a ticket shown on the phone also read as a Micro QR of five
digits, a second, "malformed" refusal beside the ticket's own decision. No ticket or consumer
product carries one.

A QR code zxing finds but cannot decode (a phone held inside the camera's focus, a code a few
pixels per module across) is read again sharpened, then enlarged around where it was found;
a frame with no code costs nothing more (docs/TICKETS.md, "Reading codes":
`python -m edge.lab.qr_conditions`).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import segno
import zxingcpp

log = logging.getLogger(__name__)


_B = zxingcpp.BarcodeFormat
# `QRCode` names the whole QR family, Micro QR included: its other members are listed one by one
FORMATS = tuple(
    f
    for f in zxingcpp.barcode_formats_list(zxingcpp.BarcodeFormats(_B.AllReadable))
    if f not in (_B.QRCode, _B.MicroQRCode)
)
_READ = zxingcpp.BarcodeFormats(list(FORMATS))
# What a ticket is printed as: edge-gate's and pretix's codes are QR (models 1 and 2)
TICKET_FORMATS = (_B.QRCodeModel1, _B.QRCodeModel2)
TICKETS = zxingcpp.BarcodeFormats(list(TICKET_FORMATS))
OTHERS_EVERY = 5  # a camera stream reads the other formats on every 5th frame it scans
# a QR code located but not decoded is reported as the family (its model is not known yet)
_QR_FOUND = (_B.QRCode, *TICKET_FORMATS)


def read_zxing(bgr: np.ndarray, formats: zxingcpp.BarcodeFormats = _READ) -> list[str]:
    """Decode every code of `formats` (all but Micro QR) in a frame with zxing-cpp; a QR code
    found but not decoded is tried again (read_again)."""
    found = zxingcpp.read_barcodes(bgr, formats=formats, return_errors=True)
    texts = [r.text for r in found if r.valid and r.text]
    failed = [r for r in found if not r.valid and r.format in _QR_FOUND]
    return texts + read_again(bgr, failed) if failed else texts


def _unsharp(gray: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    return cv2.addWeighted(gray, 1 + amount, cv2.GaussianBlur(gray, (0, 0), sigma), -amount, 0)


def read_again(bgr: np.ndarray, failed: list) -> list[str]:
    """QR codes zxing located and could not decode, read again where they were found:
    sharpened (a defocused code), then enlarged twice and sharpened (modules of 1-2 pixels).
    Only that part of the frame: a code that stays unreadable in view costs little."""
    corners = np.array(
        [
            (p.x, p.y)
            for r in failed
            for p in (
                r.position.top_left,
                r.position.top_right,
                r.position.bottom_left,
                r.position.bottom_right,
            )
        ],
        np.float64,
    )
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    grow = 0.35 * max(x1 - x0, y1 - y0) + 8  # the quiet zone around the code, and more
    h, w = bgr.shape[:2]
    part = bgr[
        int(max(0, y0 - grow)) : int(min(h, y1 + grow)),
        int(max(0, x0 - grow)) : int(min(w, x1 + grow)),
    ]
    if min(part.shape[:2], default=0) < 8:
        return []
    gray = (
        part
        if part.ndim == 2
        else cv2.cvtColor(np.ascontiguousarray(part[..., :3]), cv2.COLOR_BGR2GRAY)
    )
    texts = _read_sharpened(gray, 2.0, 1.5)
    if texts:  # the enlargement (4 times the pixels) only when the sharpened part was not read
        return texts
    return _read_sharpened(
        cv2.resize(gray, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC), 3.0, 2.0
    )


def _read_sharpened(gray: np.ndarray, sigma: float, amount: float) -> list[str]:
    found = zxingcpp.read_barcodes(_unsharp(gray, sigma, amount), formats=TICKETS)
    return [r.text for r in found if r.text]


def read_codes(bgr: np.ndarray) -> list[str]:
    """Every code text found in a BGR frame, in reading order, without duplicates.

    zxing-cpp only: it reads every real photo OpenCV reads and more, where OpenCV's detector
    takes 24 ms on a 640x360 frame with no code (most frames at a gate).
    """
    return list(dict.fromkeys(read_zxing(bgr)))


class StreamReader:
    """The gate's reader for camera frames: ticket QR codes on every frame it is given, the other
    formats on every OTHERS_EVERY-th.

    The other formats are read only to refuse them (a product barcode or boarding pass held up
    is told "not a ticket", not ignored), and they cost most of the reading: on a 640x360 frame
    with no code, 0.6-0.8 ms for QR alone against 4.5-4.9 ms for every format (x86, 1 core).
    It counts the frames it is given, so with `tickets.scan_every` = N the other formats are read
    on every 5N-th camera frame: a third of a second at the camera's default 15 fps and N = 1.
    Such a code is held up for seconds, and refused once (the policy's cooldown) either way.
    A still image (`qr read`, the console's upload) is read whole by `read_codes`.
    """

    def __init__(self, others_every: int = OTHERS_EVERY) -> None:
        self.others_every = max(1, others_every)
        self.scans = 0

    def read(self, bgr: np.ndarray) -> list[str]:
        """The code texts in this frame, in reading order, without duplicates."""
        everything = self.scans % self.others_every == 0
        self.scans += 1
        return list(dict.fromkeys(read_zxing(bgr, _READ if everything else TICKETS)))


def qr_matrix(text: str) -> np.ndarray:
    """The QR modules as a uint8 array (1 = dark), error correction M, quiet zone included."""
    code = segno.make_qr(text, error="m", boost_error=True)
    return np.array(list(code.matrix_iter(scale=1, border=4)), dtype=np.uint8)


def render_ticket(text: str, caption_lines: list[str], module_px: int = 8) -> np.ndarray:
    """A printable ticket image: the QR code with human-readable lines under it (BGR)."""
    m = qr_matrix(text)
    qr = np.where(m == 1, 0, 255).astype(np.uint8)
    qr = cv2.resize(qr, None, fx=module_px, fy=module_px, interpolation=cv2.INTER_NEAREST)
    w = qr.shape[1]
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    lines = []
    for ln in caption_lines:  # wrap long lines (the ticket text itself) to the image width
        per_line = max(8, int(w / (cv2.getTextSize("M", font, scale, thick)[0][0] * 0.95)))
        lines += [ln[i : i + per_line] for i in range(0, len(ln), per_line)] or [""]
    line_h = 18
    canvas = np.full((qr.shape[0] + line_h * len(lines) + 10, w), 255, np.uint8)
    canvas[: qr.shape[0]] = qr
    for i, ln in enumerate(lines):
        cv2.putText(
            canvas, ln, (8, qr.shape[0] + line_h * (i + 1) - 4), font, scale, 0, thick, cv2.LINE_AA
        )
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
