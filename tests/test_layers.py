"""The product never imports the lab: a lane ships and runs without measuring or demo code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = [p for p in (ROOT / "edge").rglob("*.py") if "lab" not in p.relative_to(ROOT).parts]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_product_module_imports_the_lab_except_the_cli_hand_off():
    # edge/cli/lab.py names the lab in one import_module() call, made only when a lab command runs
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith("edge.lab"))
        for p in PRODUCT
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_gate_and_its_command_line_load_without_the_lab():
    script = (
        "import sys, edge.cli, edge.gate.daemon, edge.fleet.sync, edge.tickets.desk;"
        "edge.cli.build_parser();"
        "print(sorted(m for m in sys.modules if m.startswith('edge.lab')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
