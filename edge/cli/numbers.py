"""Number arguments checked at parse time: `--gallery -5` is one line naming the flag, exit 2.

Use them as argparse `type=`; argparse prefixes the message with the flag's name.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from edge.config import MAX_THREADS


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _within(text: str, kind: type, ok: Callable[[float], bool], rule: str) -> float:
    """The number `text` says, or the argparse error naming the rule it breaks."""
    x = _number(text, kind)
    if not ok(x):
        raise argparse.ArgumentTypeError(f"{text} must be {rule}")
    return x


def positive_int(text: str) -> int:
    """A whole number >= 1 (a count of things that must exist)."""
    return int(_within(text, int, lambda n: n >= 1, "1 or more"))


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (0 meaning "none" or "the default", as each flag says)."""
    return int(_within(text, int, lambda n: n >= 0, "0 or more"))


def thread_count(text: str) -> int:
    """Interpreter threads: 0 (all cores) to MAX_THREADS."""
    return int(_within(text, int, lambda n: 0 <= n <= MAX_THREADS, f"0 to {MAX_THREADS}"))


def positive_float(text: str) -> float:
    """A finite number > 0 (a rate, a duration)."""
    return float(_within(text, float, lambda x: x > 0, "more than 0"))


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (seconds of allowance; 0 = none)."""
    return float(_within(text, float, lambda x: x >= 0, "0 or more"))


def fraction(text: str) -> float:
    """A number in [0, 1] (a probability threshold)."""
    return float(_within(text, float, lambda x: 0 <= x <= 1, "between 0 and 1"))
