"""Number arguments checked at parse time: `--gallery -5` is one line naming the flag, exit 2.

Use them as argparse `type=`; argparse prefixes the message with the flag's name.
"""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (a count of things that must exist)."""
    n = int(_number(text, int))
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} must be 1 or more")
    return n


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (0 meaning "none" or "the default", as each flag says)."""
    n = int(_number(text, int))
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return n


def positive_float(text: str) -> float:
    """A finite number > 0 (a rate, a duration)."""
    x = float(_number(text, float))
    if x <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0")
    return x


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (seconds of allowance; 0 = none)."""
    x = float(_number(text, float))
    if x < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return x


def fraction(text: str) -> float:
    """A number in [0, 1] (a probability threshold)."""
    x = float(_number(text, float))
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return x
