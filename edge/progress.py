"""Progress of long work on stderr (tqdm): count, rate and ETA; one summary line off a terminal.

Every long command and build script reports through here, so they all look and behave alike:
- stderr is a terminal: a tqdm bar, redrawn in place;
- EDGE_PROGRESS=lines (set by scripts whose output passes through a pipe to a terminal, such as
  scripts/check-aarch64.sh): the same figures as a new line every few seconds;
- otherwise (a log, CI, a pipe): nothing while working, then one summary line.
Standard library and tqdm only: the build scripts' own virtualenvs import it too.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LINE_EVERY_S = 5.0


def _mode(stream: TextIO) -> str:
    forced = os.environ.get("EDGE_PROGRESS", "")
    if forced in ("lines", "summary"):
        return forced
    return "bar" if getattr(stream, "isatty", lambda: False)() else "summary"


def _columns(stream: TextIO) -> int:
    """The terminal's width (0: unknown, e.g. a pseudo-terminal nobody sized)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class Progress:
    """Call with (done, total, label) as work advances; `close()` (or done == total) ends it."""

    def __init__(
        self, what: str, total: int | None = None, unit: str = "item", stream: TextIO | None = None
    ):
        self.what, self.total, self.unit = what, total, unit
        self.stream = stream or sys.stderr
        self.mode = _mode(self.stream)
        self.done, self._t0, self._last_line, self._closed = 0, time.monotonic(), 0.0, False
        self._bar = (
            tqdm(
                total=total,
                desc=what,
                unit=unit,
                file=self.stream,
                dynamic_ncols=_columns(self.stream) > 0,
                # a terminal of unknown size (0 x 0): tqdm would hide the bar below "row 0"
                **({} if _columns(self.stream) > 0 else {"ncols": 80, "nrows": 24}),
                mininterval=0.2,
            )
            if self.mode == "bar"
            else None
        )

    def __call__(self, done: int, total: int | None = None, label: str = "") -> None:
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
        if self._bar is not None:
            if label:
                self._bar.set_postfix_str(label[:30], refresh=False)
            self._bar.update(done - self.done)
        self.done = done
        now = time.monotonic()
        if self.mode == "lines" and now - self._last_line >= LINE_EVERY_S:
            self._last_line = now
            self._line(now)
        if self.total is not None and done >= self.total:
            self.close()

    def _line(self, now: float) -> None:
        meter = tqdm.format_meter(
            self.done, self.total, now - self._t0, ncols=0, prefix=self.what, unit=self.unit
        )
        self.stream.write(meter.strip() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar, or write the one summary line (count, time, rate)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            return
        elapsed = time.monotonic() - self._t0
        rate = f", {self.done / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.done else ""
        of = f"/{self.total}" if self.total is not None else ""
        self.stream.write(
            f"{self.what}: {self.done}{of} {self.unit}(s) in "
            f"{tqdm.format_interval(elapsed)}{rate}\n"
        )
        self.stream.flush()


def progress(
    items: Iterable[T],
    what: str,
    total: int | None = None,
    unit: str = "item",
    stream: TextIO | None = None,
) -> Iterator[T]:
    """Iterate `items`, reporting each one done (see the module docstring for where and how)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    p = Progress(what, total, unit, stream)
    try:
        for n, item in enumerate(items, 1):
            yield item
            p(n)
    finally:
        p.close()
