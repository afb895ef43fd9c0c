"""USB HID barcode scanners ("keyboard wedge"): each scan arrives as one line of keystrokes.

Tests and kiosks feed lines on stdin; on a Pi, `evdev` reads the scanner's input device directly
so its keystrokes never reach a console. Both yield the scanned text, one scan at a time.

Standard input is read from its file descriptor with `os.read`, not through `sys.stdin`: the
reader thread blocks there, and a buffered reader's lock held by it when systemd stops the gate
would abort the interpreter at exit ("Fatal Python error", status 134) before the audit log
is closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from edge.errors import SourceError

log = logging.getLogger(__name__)
MAX_SCAN = 512


def _bounded_lines(stream: BinaryIO) -> Iterator[bytes | None]:
    """Lines of a byte stream, never holding more than MAX_SCAN + 2 bytes; None for an overlong
    line (its rest is read in bounded pieces and thrown away)."""
    while True:
        chunk = stream.readline(MAX_SCAN + 2)
        if not chunk:
            return
        if chunk.endswith(b"\n") or len(chunk) <= MAX_SCAN:
            yield chunk
            continue
        while chunk and not chunk.endswith(b"\n"):
            chunk = stream.readline(MAX_SCAN + 2)
        yield None


def fd_lines(fd: int) -> Iterator[bytes | None]:
    """Lines of a file descriptor (stdin), read with os.read and never holding more than
    MAX_SCAN + 2 bytes of one line; None for an overlong line (its rest is dropped)."""
    buf, dropping = b"", False
    while chunk := os.read(fd, 4096):
        buf += chunk
        while (i := buf.find(b"\n")) >= 0:
            line, buf = buf[: i + 1], buf[i + 1 :]
            if dropping:  # the end of an overlong line, already reported
                dropping = False
            else:
                yield line if len(line) <= MAX_SCAN + 2 else None
        if len(buf) > MAX_SCAN + 2:
            if not dropping:
                yield None
            buf, dropping = b"", True
    if buf and not dropping:
        yield buf


def lines_from(stream: BinaryIO | Iterable[str | bytes]) -> Iterator[str]:
    """Scanned texts from a line stream; blank, undecodable and overlong lines are logged and
    skipped, never raised. A byte stream (stdin's buffer) is read in bounded pieces."""
    lines: Iterable[str | bytes | None] = stream
    if hasattr(stream, "buffer"):  # a text stream (sys.stdin): read its bytes, bounded
        lines = _bounded_lines(stream.buffer)
    elif hasattr(stream, "readline"):
        lines = _bounded_lines(stream)
    for line in lines:
        if line is None:
            log.warning("scanner line_skipped reason=longer than %d characters", MAX_SCAN)
            continue
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                log.warning("scanner line_skipped reason=not UTF-8 (%d bytes)", len(line))
                continue
        text = line.rstrip("\r\n")
        if len(text) > MAX_SCAN:
            log.warning("scanner line_skipped reason=longer than %d characters", MAX_SCAN)
        elif text:
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


def evdev_scans(
    device_path: str, retry_s: float = 1.0, evdev_module=None, sleep: Callable = time.sleep
) -> Iterator[str]:
    """Read a scanner's input device exclusively (grab) and yield each scan, forever.

    A missing `evdev` module is an error now, at start; a device that goes away (unplugged,
    USB reset) is reopened when it comes back.
    """
    if evdev_module is None:
        try:
            import evdev as evdev_module  # type: ignore[no-redef]  # the real module when none given
        except ImportError:
            raise SourceError(
                "--scanner with a device path needs the evdev module",
                "pip install 'edge-gate[pi]' (or use --scanner stdin)",
            ) from None
    return _evdev_loop(evdev_module, device_path, retry_s, sleep)


def _evdev_loop(evdev, device_path: str, retry_s: float, sleep: Callable) -> Iterator[str]:
    lost = False
    while True:
        try:
            dev = evdev.InputDevice(device_path)
        except OSError as e:
            if not lost:
                log.error("scanner unavailable device=%s reason=%s; retrying", device_path, e)
                lost = True
            sleep(retry_s)
            continue
        if lost:
            log.info("scanner back device=%s", device_path)
            lost = False
        try:
            dev.grab()
            yield from decode_keys(
                (e.code, e.value) for e in dev.read_loop() if e.type == evdev.ecodes.EV_KEY
            )
        except OSError as e:  # unplugged mid-read: ENODEV
            log.error("scanner lost device=%s reason=%s; retrying", device_path, e)
            lost = True
        finally:
            with contextlib.suppress(OSError):
                dev.close()
        sleep(retry_s)
