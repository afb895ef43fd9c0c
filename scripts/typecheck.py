"""Type-check edge/ with the pinned mypy against a baseline that may shrink and never grow.

`.ci/mypy-baseline.txt` lists the errors edge/ had when the check started, one per line, as
`path: message  [code]` (no line numbers, so unrelated edits do not move them). The check fails
on any error that is not in the baseline (or one more of a kind than it lists) and names it with
its line. Fixed errors pass; `--update` then rewrites the baseline without them, and refuses to
add any (it writes the first baseline when there is none).

    .venv/bin/python scripts/typecheck.py            # CI (.ci/run)
    .venv/bin/python scripts/typecheck.py --update   # after fixing some: shrink the baseline
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / ".ci" / "mypy-baseline.txt"
LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<msg>.*)$")


def run_mypy() -> list[tuple[str, str]]:
    """(baseline key, the line as mypy printed it) for every error mypy finds in edge/."""
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", "--show-error-codes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode > 1:  # 1: errors found; 2: mypy itself failed
        sys.exit(f"typecheck: mypy did not run: {out.stderr or out.stdout}")
    found = []
    for line in out.stdout.splitlines():
        if m := LINE.match(line):
            found.append((f"{m['path']}: {m['msg']}", line))
    return found


def read_baseline() -> Counter[str]:
    """The baseline's errors, counted."""
    lines = BASELINE.read_text().splitlines() if BASELINE.exists() else []
    return Counter(ln for ln in lines if ln and not ln.startswith("#"))


def new_errors(found: list[tuple[str, str]], baseline: Counter[str]) -> list[str]:
    """mypy's lines for errors beyond the baseline (all lines of a kind that grew)."""
    now = Counter(key for key, _ in found)
    grew = {key for key, n in now.items() if n > baseline[key]}
    return [line for key, line in found if key in grew]


def main() -> int:
    """Compare with the baseline (or shrink it with --update)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--update", action="store_true", help="rewrite the baseline without fixed errors"
    )
    args = ap.parse_args()
    found = run_mypy()
    baseline = read_baseline()
    new = new_errors(found, baseline)
    now = Counter(key for key, _ in found)
    starting = args.update and not BASELINE.exists()  # the first baseline takes what there is
    if new and not starting:
        print(f"typecheck: {len(new)} type error(s) not in {BASELINE.relative_to(ROOT)}:")
        print("\n".join(f"  {line}" for line in new))
        print("fix them (the baseline may shrink, never grow)")
        return 1
    fixed = sum((baseline - now).values())
    if args.update:
        header = (
            "# mypy errors in edge/ still to fix: may shrink, never grow (scripts/typecheck.py)\n"
        )
        BASELINE.write_text(header + "".join(f"{k}\n" for k in sorted(now.elements())))
        print(f"typecheck: baseline now {sum(now.values())} errors ({fixed} removed)")
    else:
        hint = f"; {fixed} fixed: shrink the baseline with --update" if fixed else ""
        print(f"typecheck: no new type errors ({sum(now.values())} known ones left{hint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
