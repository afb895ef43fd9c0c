"""The CI's own checks: .ci/run runs exactly the README's test command, and the type-check
baseline lets errors be fixed but never added."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from typecheck import new_errors  # noqa: E402


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = next(ln for ln in readme.splitlines() if "pytest" in ln).split("#")[0].strip()
    assert command == "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_an_error_beyond_the_baseline_is_named_with_its_line():
    key = "edge/a.py: Incompatible types  [assignment]"
    found = [(key, "edge/a.py:3: error: Incompatible types  [assignment]")]
    assert new_errors(found, Counter({key: 1})) == []
    assert new_errors([], Counter({key: 1})) == []  # fixed: fine, the baseline may shrink
    two = found + [(key, "edge/a.py:9: error: Incompatible types  [assignment]")]
    assert new_errors(two, Counter({key: 1})) == [line for _, line in two]  # one more of a kind
    other = ("edge/b.py: Name 'x' is not defined  [name-defined]", "edge/b.py:1: error: ...")
    assert new_errors([other], Counter({key: 1})) == [other[1]]
