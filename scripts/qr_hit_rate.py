"""How many real QR photos each decoder reads: python scripts/qr_hit_rate.py [FIXTURES/qr].

Each photo X.jpg or X.png comes with X.txt, the text its code holds. Without an argument the
shared fixtures' qr/ folder ($EDGE_FIXTURES) is read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.scripting import needs_modules, run  # noqa: E402

with needs_modules(__file__):
    import cv2

    from edge.config import fixtures_dir
    from edge.errors import EdgeGateError
    from edge.progress import progress
    from edge.tickets.qr import TICKETS, read_codes, read_zxing
    from edge.vision.image import load_image


def read_opencv(bgr) -> list[str]:
    """OpenCV's QRCodeDetector, the reader zxing-cpp is compared with (not used by the gate)."""
    try:
        ok, texts, _, _ = cv2.QRCodeDetector().detectAndDecodeMulti(bgr)
    except cv2.error:
        return []
    return [t for t in texts if t] if ok else []


def photos(root: Path) -> list[tuple[Path, Path]]:
    """(photo, expected text file) pairs under root; a photo without its .txt is an error."""
    if not root.is_dir():
        raise EdgeGateError(
            f"{root}: no such folder",
            "pass a folder of QR photos with a .txt each, or set EDGE_FIXTURES",
        )
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        raise EdgeGateError(f"{root}: no .jpg or .png photos in it")
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise EdgeGateError(
            f"{missing[0].with_suffix('.txt')}: no such file (the text {missing[0].name} holds)",
            "put the expected text beside each photo as X.txt",
        )
    return [(p, p.with_suffix(".txt")) for p in images]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path, help="photos with .txt (default FIXTURES/qr)")
    ap.add_argument("--debug", action="store_true", help="traceback of an internal error")
    args = ap.parse_args()
    pairs = photos(args.folder or fixtures_dir() / "qr")
    hits = {"opencv": 0, "zxing": 0, "edge-gate (read_codes)": 0, "edge-gate (ticket QR only)": 0}
    for p, txt in progress(pairs, "qr photos"):
        expected = txt.read_bytes().decode("utf-8", errors="replace")
        img = load_image(p)
        for name, fn in (
            ("opencv", read_opencv),
            ("zxing", read_zxing),
            ("edge-gate (read_codes)", read_codes),
            # what the gate reads on the camera frames between full reads (qr.StreamReader)
            ("edge-gate (ticket QR only)", lambda b: read_zxing(b, TICKETS)),
        ):
            hits[name] += expected in fn(img)
    print(json.dumps({"images": len(pairs), "read_exactly": hits}))
    return 0


if __name__ == "__main__":
    run(main)
