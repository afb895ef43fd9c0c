"""What every script in scripts/ does with a mistake: one line on stderr, never a traceback.

Standard library only, so it works before the script's own imports do:

    with needs_modules(__file__):        # a missing numpy or cv2: which Python, and the fix
        import cv2
    ...
    if __name__ == "__main__":
        run(main)                        # user errors exit 2, bugs 70 (traceback with --debug)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from edge.errors import EdgeGateError

INTERNAL_ERROR = 70


@contextlib.contextmanager
def needs_modules(
    script: str, setup: str = "bash scripts/setup.sh", python: str = ".venv/bin/python"
) -> Iterator[None]:
    """Turn a missing module into one line naming this Python and how to get the right one."""
    try:
        yield
    except ModuleNotFoundError as e:
        name = Path(script).name
        print(
            f"{name}: error: Python module {e.name!r} is not installed for {sys.executable} "
            f"(fix: run `{setup}`, then `{python} scripts/{name}`)",
            file=sys.stderr,
        )
        sys.exit(2)


def run(main: Callable[[], int | None]) -> None:
    """Run a script's main(): EdgeGateError and SystemExit messages as one line, exit 2."""
    name = Path(sys.argv[0]).name
    debug = "--debug" in sys.argv or os.environ.get("EDGE_DEBUG") == "1"
    try:
        rc = main()
        sys.stdout.flush()
    except EdgeGateError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        rc = 2
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        rc = 141
    except KeyboardInterrupt:
        rc = 130
    except Exception as e:
        if debug:
            raise
        print(
            f"{name}: internal error: {type(e).__name__}: {e} (run again with --debug for the "
            "traceback and report it)",
            file=sys.stderr,
        )
        rc = INTERNAL_ERROR
    sys.exit(rc or 0)
