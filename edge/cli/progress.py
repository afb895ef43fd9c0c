"""A progress bar on stderr: redrawn in place on a terminal, a line every tenth otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Call with (done, total, label); cheap enough to call per item."""

    def __init__(self, what: str, stream: TextIO | None = None, width: int = 30):
        self.what, self.stream, self.width = what, stream or sys.stderr, width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0, self._last_tenth = time.monotonic(), -1

    def __call__(self, done: int, total: int, label: str = "") -> None:
        frac = done / total if total else 1.0
        elapsed = time.monotonic() - self._t0
        eta = f" ~{elapsed / done * (total - done):.0f}s left" if 0 < done < total else ""
        if self.tty:
            bar = "#" * int(frac * self.width)
            self.stream.write(
                f"\r{self.what} [{bar:<{self.width}}] {done}/{total}{eta} {label[:30]:<30}"
            )
            if done >= total:
                self.stream.write("\n")
        elif int(frac * 10) > self._last_tenth:
            self._last_tenth = int(frac * 10)
            self.stream.write(f"{self.what}: {done}/{total}{eta}\n")
        self.stream.flush()
