"""How the gate reads a ticket held up to its camera: `python -m edge.lab.qr_conditions [N]`.

A real ticket text (signed with a key made from a fixed seed) is drawn as the gate prints it
(QR, error correction M), on a white card or a phone's screen with a dark bezel, in a 640x480
frame of clutter, turned, tilted, blurred (a phone held inside the camera's focus), under a
glare, in dim light with sensor noise, saved as JPEG. For each condition, N frames (seeds
fixed): how many one zxing pass reads (the reading before `read_again`) and how many the gate
reads (`read_zxing`, ticket formats: the camera path). And the cost on frames with no code and
with a code it cannot read.
Synthetic: no lens, rolling shutter or screen moire; figures in docs/TICKETS.md.
"""

from __future__ import annotations

import json
import sys
import time

import cv2
import numpy as np
import zxingcpp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import tickets as tk
from edge.tickets.qr import TICKETS, qr_matrix, read_zxing

FRAME = (640, 480)
BASE = {"px": 150.0, "turn": 5.0, "tilt": 3.0, "blur": 0.0, "glare": 0.0, "light": 1.0,
        "noise": 2.0, "jpeg": 85, "inverted": False}  # fmt: skip
CONDITIONS: dict[str, dict] = {
    "baseline (150 px, 3.7 px per module)": {},
    "50 px across": {"px": 50.0},
    "55 px across": {"px": 55.0},
    "blur sigma 1.75": {"blur": 1.75},
    "blur sigma 2.0": {"blur": 2.0},
    "blur sigma 2.5": {"blur": 2.5},
    "80 px, blur sigma 1.0": {"px": 80.0, "blur": 1.0},
    "100 px, blur sigma 1.5": {"px": 100.0, "blur": 1.5},
    "tilted 35 degrees": {"tilt": 35.0},
    "glare 0.25 of the code": {"glare": 0.25},
    "glare 0.25, tilted 30 degrees": {"glare": 0.25, "tilt": 30.0},
    "30% light, noise 4": {"light": 0.3, "noise": 4.0},
    "inverted (a dark-mode screen)": {"inverted": True},
}


def ticket_text(seed: int = 0) -> str:
    """A ticket as the office issues them, signed with a key made from `seed` (the same text,
    and so the same modules, at every run)."""
    t = tk.Ticket("DAY-0001", product="day", valid_until=2_000_000_000, holder="")
    key = Ed25519PrivateKey.from_private_bytes(np.random.default_rng(seed).bytes(32))
    return tk.sign(t, key)


def clutter(rng: np.random.Generator) -> np.ndarray:
    """A frame of smooth colour and a few sharp-edged boxes: a hall behind the visitor."""
    w, h = FRAME
    base = cv2.resize(rng.uniform(40, 200, (6, 8, 3)), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):
        x, y = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        cv2.rectangle(base, (x, y), (x + int(rng.uniform(20, 160)), y + int(rng.uniform(20, 120))),
                      tuple(float(c) for c in rng.uniform(0, 255, 3)), -1)  # fmt: skip
    return base.astype(np.float32)


def render(text: str, cond: dict, seed: int) -> np.ndarray:
    """One frame of the code shown under `cond` (keys of BASE), BGR uint8."""
    c = {**BASE, **cond}
    rng = np.random.default_rng(seed)
    m = qr_matrix(text)  # quiet zone included
    dark, light = (235.0, 20.0) if c["inverted"] else (20.0, 235.0)
    card_px = 8 * m.shape[0]
    card = np.where(
        cv2.resize(m, (card_px, card_px), interpolation=cv2.INTER_NEAREST) == 1, dark, light
    )
    card = np.pad(card, card_px // 8, constant_values=light if rng.uniform() < 0.5 else 15.0)
    card = np.repeat(card[:, :, None].astype(np.float32), 3, axis=2)
    # where the card goes: the code `px` across, turned and tilted, near the middle
    s = c["px"] * (m.shape[0] / (m.shape[0] - 8)) / card_px  # px counts the modules, not the zone
    half = card.shape[0] / 2
    w, h = card.shape[1], card.shape[0]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    corners = (src - half) * s
    # tilted about the vertical axis, seen from 4 card widths away: one edge nearer, taller
    tilt, dist = np.radians(c["tilt"] * rng.choice([-1, 1])), 8 * half * s
    depth = dist + corners[:, 0] * np.sin(tilt)
    corners = (
        np.stack([corners[:, 0] * np.cos(tilt), corners[:, 1]], axis=1) * (dist / depth)[:, None]
    )
    a = np.radians(rng.uniform(-c["turn"], c["turn"]))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array(FRAME) / 2 + rng.uniform(-60, 60, 2)
    dst = (corners @ rot.T + centre).astype(np.float32)
    hom = cv2.getPerspectiveTransform(src, dst)
    frame = clutter(rng)
    warped = cv2.warpPerspective(card, hom, FRAME, flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.ones(card.shape[:2], np.float32), hom, FRAME)[:, :, None]
    frame = frame * (1 - mask) + warped * mask
    if c["glare"] > 0:  # a bright blob on the code: a lamp in the phone's glass
        yy, xx = np.mgrid[: FRAME[1], : FRAME[0]]
        gx, gy = centre + rng.uniform(-0.2, 0.2, 2) * c["px"]
        r = c["glare"] * c["px"]
        frame += 200.0 * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * r * r))[:, :, None]
    if c["blur"] > 0:
        frame = cv2.GaussianBlur(frame, (0, 0), c["blur"])
    frame = frame * c["light"] + rng.normal(0, c["noise"], frame.shape)
    frame = np.clip(frame, 0, 255).astype(np.uint8)
    _, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(c["jpeg"])])
    out = cv2.imdecode(jpg, cv2.IMREAD_COLOR)
    if out is None:  # OpenCV decodes what it just encoded: never expected
        raise ValueError("a rendered frame did not survive its JPEG round trip")
    return out


def _located(frame: np.ndarray) -> bool:
    """zxing found a QR code it could not decode (what read_again is asked about)."""
    return any(
        not r.valid for r in zxingcpp.read_barcodes(frame, formats=TICKETS, return_errors=True)
    )


def one_pass(frame: np.ndarray) -> list[str]:
    """What zxing reads at once (the reading before read_again was added)."""
    return [r.text for r in zxingcpp.read_barcodes(frame, formats=TICKETS) if r.text]


def measure(n: int = 20) -> dict:
    """Each condition's frames read by one pass and by the gate; the cost with no code."""
    text = ticket_text()
    out: dict = {"frames_per_condition": n, "conditions": {}}
    for i, (name, cond) in enumerate(CONDITIONS.items()):
        frames = [render(text, cond, 1000 * i + k) for k in range(n)]
        out["conditions"][name] = {
            "one_pass": sum(text in one_pass(f) for f in frames),
            "gate": sum(text in read_zxing(f, TICKETS) for f in frames),
        }
    empty = [clutter(np.random.default_rng(k)).astype(np.uint8) for k in range(50)]
    # codes zxing locates and cannot decode at once: what the second reading costs
    blurred = [render(text, c, 99_000 + k) for k in range(40) for c in ({"blur": 2.0},
               {"px": 80.0, "blur": 1.0})]  # fmt: skip
    unread = [f for f in blurred if not one_pass(f) and _located(f)]
    out["frames_found_not_read"] = len(unread)
    for name, fn in (("one_pass", one_pass), ("gate", lambda f: read_zxing(f, TICKETS))):
        for what, frames in (("no_code", empty), ("found_not_read", unread)):
            ms = []
            for f in frames:
                t0 = time.perf_counter()
                fn(f)
                ms.append((time.perf_counter() - t0) * 1000)
            out[f"ms_{what}_{name}"] = round(float(np.median(ms)), 2)
    return out


if __name__ == "__main__":  # python -m edge.lab.qr_conditions [N]
    cv2.setNumThreads(1)
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 20), indent=1))
