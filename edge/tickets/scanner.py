"""USB HID barcode scanners ("keyboard wedge"): each scan arrives as one line of keystrokes.

Tests and kiosks feed lines on stdin; on a Pi, `evdev` reads the scanner's input device directly
so its keystrokes never reach a console. Both yield the scanned text, one scan at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TextIO

MAX_SCAN = 512


def lines_from(stream: TextIO | Iterable[str]) -> Iterator[str]:
    """Scanned texts from a line stream; blank and overlong lines are dropped, never raised."""
    for line in stream:
        text = line.rstrip("\r\n")
        if text and len(text) <= MAX_SCAN:
            yield text


# evdev key codes for what a scanner types (US layout), shifted variants in the second map.
_KEYS = {
    2: "1",
    3: "2",
    4: "3",
    5: "4",
    6: "5",
    7: "6",
    8: "7",
    9: "8",
    10: "9",
    11: "0",
    12: "-",
    13: "=",
    16: "q",
    17: "w",
    18: "e",
    19: "r",
    20: "t",
    21: "y",
    22: "u",
    23: "i",
    24: "o",
    25: "p",
    30: "a",
    31: "s",
    32: "d",
    33: "f",
    34: "g",
    35: "h",
    36: "j",
    37: "k",
    38: "l",
    39: ";",
    44: "z",
    45: "x",
    46: "c",
    47: "v",
    48: "b",
    49: "n",
    50: "m",
    51: ",",
    52: ".",
    53: "/",
    57: " ",
}
_SHIFTED = {
    "1": "!",
    "2": "@",
    "3": "#",
    "4": "$",
    "5": "%",
    "6": "^",
    "7": "&",
    "8": "*",
    "9": "(",
    "0": ")",
    "-": "_",
    "=": "+",
    ";": ":",
    ",": "<",
    ".": ">",
    "/": "?",
}
KEY_ENTER, KEY_LSHIFT, KEY_RSHIFT = 28, 42, 54


def decode_keys(events: Iterable[tuple[int, int]]) -> Iterator[str]:
    """(keycode, value) events -> scanned lines. value 1 = down, 0 = up, 2 = repeat."""
    buf: list[str] = []
    shift = False
    for code, value in events:
        if code in (KEY_LSHIFT, KEY_RSHIFT):
            shift = value != 0
            continue
        if value != 1:
            continue
        if code == KEY_ENTER:
            if buf:
                yield "".join(buf)
            buf = []
            continue
        ch = _KEYS.get(code)
        if ch is None or len(buf) >= MAX_SCAN:
            continue
        buf.append((_SHIFTED.get(ch, ch.upper())) if shift else ch)


def evdev_scans(device_path: str) -> Iterator[str]:  # pragma: no cover - needs the Pi's scanner
    """Read a scanner's input device exclusively (grab) and yield each scan."""
    import evdev

    dev = evdev.InputDevice(device_path)
    dev.grab()
    try:
        yield from decode_keys(
            (e.code, e.value) for e in dev.read_loop() if e.type == evdev.ecodes.EV_KEY
        )
    finally:
        dev.ungrab()
