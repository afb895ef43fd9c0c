"""Imports point one way, as docs/DESIGN.md draws them, and the product never imports the lab.

The layers are read from the picture at the top of docs/DESIGN.md, so the picture and this
check cannot drift apart. Every import counts: at the top of a file, inside a function (a lazy
import is still an arrow) and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
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


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(folder: str) -> dict[str, set[str]]:
    """Each module of a folder (edge/ by dotted name, scripts/ by file stem) and the modules of
    that same folder it imports."""
    base = ROOT if folder == "edge" else ROOT / folder
    files = {module_name(p, base): p for p in (ROOT / folder).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        found = {m for m in imported_modules(path) if m in files and m != name}
        # `from edge.fleet import lane` imports the module edge.fleet.lane, not edge.fleet's code
        graph[name] = {m for m in found if not any(o.startswith(m + ".") for o in found)}
    return graph


def layers() -> tuple[dict[str, int], dict[str, str]]:
    """From docs/DESIGN.md's picture: module prefix -> rank (higher may import lower), and
    prefix -> layer name. Layers drawn on one line are side by side: one rank, no imports
    between them."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    picture = text.split("## Layers", 1)[1].split("```")[1]
    rows: list[list[tuple[str, list[str]]]] = []
    for line in picture.splitlines():
        groups = re.findall(r"(?:^ {2}|│ +)(\w+) +((?:edge\.[\w.]+,? *)+)", line)
        if groups:
            rows.append([(name, re.findall(r"edge\.[\w.]+", mods)) for name, mods in groups])
        elif rows and (more := re.match(r"^ {4,}((?:edge\.[\w.]+,? *)+)", line)):
            rows[-1][-1][1].extend(re.findall(r"edge\.[\w.]+", more.group(1)))
    rank, layer = {}, {}
    for i, row in enumerate(reversed(rows)):
        for name, mods in row:
            for m in mods:
                rank[m], layer[m] = i, name
    return rank, layer


def place(module: str, prefixes: dict[str, int]) -> str | None:
    """The most specific prefix of the picture a module falls under."""
    hits = [p for p in prefixes if module == p or module.startswith(p + ".")]
    return max(hits, key=len) if hits else None


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(frozenset(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_of_the_product_has_a_layer_in_the_picture():
    rank, _ = layers()
    assert {"edge.cli", "edge.gate", "edge.vision", "edge.config", "edge.lab"} <= set(rank)
    unplaced = sorted(m for m in modules("edge") if m != "edge" and place(m, rank) is None)
    assert unplaced == [], "add them to the picture in docs/DESIGN.md"


def test_imports_point_down_the_layers():
    rank, layer = layers()
    lab = rank["edge.lab"]
    wrong = []
    for src, targets in modules("edge").items():
        if src == "edge" or (s := place(src, rank)) is None or rank[s] == lab:
            continue
        for dst in targets:
            t = place(dst, rank)
            if t is None or rank[t] == lab:
                continue
            if rank[t] > rank[s] or (rank[t] == rank[s] and layer[t] != layer[s]):
                wrong.append(f"{src} ({layer[s]}) imports {dst} ({layer[t]})")
    assert wrong == []


def test_no_two_modules_import_each_other():
    found = set(cycles(modules("edge"))) | set(cycles(modules("scripts")))
    assert found == set()


def function_import_runs(source: str) -> list[list[ast.stmt]]:
    """Import statements inside functions (at any depth), as runs of consecutive statements of
    one block."""
    runs: dict[int, list[ast.stmt]] = {}
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            for block in (getattr(node, f, None) for f in ("body", "orelse", "finalbody")):
                run: list[ast.stmt] = []
                for stmt in block if isinstance(block, list) else []:
                    if isinstance(stmt, ast.Import | ast.ImportFrom):
                        run.append(stmt)
                        continue
                    if run:
                        runs[run[0].lineno] = run
                    run = []
                if run:
                    runs[run[0].lineno] = run
    return [runs[k] for k in sorted(runs)]


def unexplained_imports(source: str) -> list[int]:
    """Lines of function-level imports that say nowhere why they are not at the top: no comment
    on the import, on another import of the same run, or on the line above the run."""
    commented = {
        t.start[0]
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.COMMENT
    }
    bad = []
    for run in function_import_runs(source):
        said = range(run[0].lineno - 1, (run[-1].end_lineno or run[-1].lineno) + 1)
        if not commented.intersection(said):
            bad.extend(stmt.lineno for stmt in run)
    return bad


def test_every_import_inside_a_function_says_why_it_is_not_at_the_top():
    # An import stays in a function only to keep a heavy or optional library (OpenCV, LiteRT,
    # MQTT, the web stack, a Pi's hardware library) out of a start-up that does not need it, or
    # so that one module that cannot load fails one doctor check; a comment says which.
    bad = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in sorted((ROOT / "edge").rglob("*.py"))
        for line in unexplained_imports(p.read_text())
    ]
    assert bad == [], "hoist these to the top of the file, or say why they must wait"


def test_an_import_in_a_function_without_a_comment_is_found():
    source = (
        "import os\n\n"
        "def quiet():\n    import json\n\n    return json\n\n"
        "def said():\n    # cv2 loads only when an image is read\n    import cv2\n\n"
        "    import numpy as np\n    return cv2, np\n\n"
        "def inline(x):\n    if x:\n        import zlib  # only for compressed input\n"
        "    y = x\n    import bz2\n"
    )
    assert unexplained_imports(source) == [4, 19]


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset("abc")]


def test_no_product_module_imports_the_lab_except_the_cli_hand_off():
    # edge/cli/lab.py names the lab in one import_module() call, made only when a lab command runs
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith("edge.lab"))
        for p in PRODUCT
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_gate_and_its_command_line_load_without_the_lab():
    script = (
        "import sys, edge.cli, edge.gate.daemon, edge.fleet.sync, edge.gate.desk;"
        "edge.cli.build_parser();"
        "print(sorted(m for m in sys.modules if m.startswith('edge.lab')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
