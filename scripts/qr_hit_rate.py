"""How many real QR photos each decoder reads: python scripts/qr_hit_rate.py [FIXTURES/qr]."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.config import fixtures_dir  # noqa: E402
from edge.tickets.qr import read_codes, read_zxing  # noqa: E402
from edge.vision.image import load_image  # noqa: E402


def read_opencv(bgr) -> list[str]:
    """OpenCV's QRCodeDetector, the reader zxing-cpp is compared with (not used by the gate)."""
    try:
        ok, texts, _, _ = cv2.QRCodeDetector().detectAndDecodeMulti(bgr)
    except cv2.error:
        return []
    return [t for t in texts if t] if ok else []


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else fixtures_dir() / "qr"
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    hits = {"opencv": 0, "zxing": 0, "edge-gate (read_codes)": 0}
    for p in images:
        expected = p.with_suffix(".txt").read_bytes().decode("utf-8", errors="replace")
        img = load_image(p)
        for name, fn in (
            ("opencv", read_opencv),
            ("zxing", read_zxing),
            ("edge-gate (read_codes)", read_codes),
        ):
            hits[name] += expected in fn(img)
    print(json.dumps({"images": len(images), "read_exactly": hits}))


if __name__ == "__main__":
    main()
