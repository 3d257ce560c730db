"""The house rules, checked on the source: the import graph has no cycle and no import up
a floor, no module reaches into another package's private modules, and every public
subpackage is an attribute of ``xpconv`` after a bare import.

The graph counts every import: at the top of a module and inside functions alike (a
function-local import only delays a cycle, it does not remove it). Imports under
``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "xpconv"

#: Floors, bottom first: a module may import its own floor and the floors below it.
FLOORS: dict[str, int] = {
    "backends": 0,
    "ops": 1,
    "nn": 2,
    "optim": 2,
    "io": 3,
    "data": 3,
    "models": 3,
    "tools": 3,
    "parallel": 3,
    "train": 4,
    "cli": 5,
}


def _modules() -> dict[str, Path]:
    """Every module of xpconv: dotted name -> file (a package by its ``__init__``)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _target(base: str, name: str | None) -> str | None:
    """The most specific xpconv module that ``from base import name`` loads."""
    if name and f"{base}.{name}" in MODULES:
        return f"{base}.{name}"
    return base if base in MODULES else None


def imports_of(module: str, source: str) -> set[str]:
    """The xpconv modules that ``source`` (the text of ``module``) imports."""
    tree = ast.parse(source)
    skip = _type_checking_lines(tree)
    is_package = MODULES.get(module, Path()).name == "__init__.py"
    package = module if is_package else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", 0) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [_target(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [_target(base, alias.name) for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t and t.startswith("xpconv") and t != module)
    return found


GRAPH = {name: imports_of(name, path.read_text()) for name, path in MODULES.items()}


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for importer, targets in graph.items():
        low = _floor(importer)
        for target in targets:
            high = _floor(target)
            if target == "xpconv" and importer != "xpconv.__main__":
                bad.append(f"{importer} imports the top-level package")
            elif low is not None and high is not None and high > low:
                bad.append(f"{importer} (floor {low}) imports {target} (floor {high})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (one per back edge)."""
    found, state = [], dict.fromkeys(graph, 0)
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif state.get(nxt) == 0:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node)
    return found


def private_reaches(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a private module (``_name``) from outside its package."""
    bad = []
    for importer, targets in graph.items():
        for target in targets:
            parent, _, leaf = target.rpartition(".")
            if (
                leaf.startswith("_")
                and not importer.startswith(parent + ".")
                and importer != parent
            ):
                bad.append(f"{importer} imports private {target}")
    return sorted(bad)


def test_the_checks_catch_what_they_should() -> None:
    graph = {"xpconv.ops.a": {"xpconv.nn.b"}, "xpconv.nn.b": {"xpconv.ops.a"}}
    assert upward_imports(graph) == ["xpconv.ops.a (floor 1) imports xpconv.nn.b (floor 2)"]
    assert cycles(graph) == [["xpconv.nn.b", "xpconv.ops.a", "xpconv.nn.b"]]
    assert private_reaches({"xpconv.io.x": {"xpconv.nn.layers._fused"}})
    assert not private_reaches({"xpconv.nn.layers": {"xpconv.nn.layers._fused"}})
    local = "def f():\n    from xpconv.train import trainer\n"
    assert imports_of("xpconv.io.saving", local) == {"xpconv.train.trainer"}
    hidden = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xpconv import train\n"
    assert imports_of("xpconv.io.saving", hidden) == set()


def test_every_subpackage_has_a_floor() -> None:
    packages = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    assert packages - {"__main__", "_version"} == set(FLOORS)


def test_no_import_goes_up_a_floor() -> None:
    assert upward_imports(GRAPH) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(GRAPH) == []


def test_no_module_reaches_into_another_packages_private_modules() -> None:
    assert private_reaches(GRAPH) == []


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_subpackages_are_attributes_after_a_bare_import(name: str) -> None:
    code = f"import xpconv as xc; m = xc.{name}; print(m.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"xpconv.{name}"


def test_a_bare_import_loads_no_optional_library() -> None:
    code = (
        "import sys, xpconv; "
        "print(sorted(m for m in ('torch', 'jax', 'cupy', 'onnx', 'matplotlib', 'mpi4py') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ function length

#: The most lines a function may have, from its ``def`` to its last line, docstring and
#: decorators left out.
MAX_FUNCTION_LINES = 60


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """``(qualified name, line, length)`` of every function and method in ``source``."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = child.body
                doc = 0
                if (
                    body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    doc = (body[0].end_lineno or body[0].lineno) - body[0].lineno + 1
                length = (child.end_lineno or child.lineno) - child.lineno + 1 - doc
                found.append((f"{prefix}{child.name}", child.lineno, length))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def long_functions(roots: list[Path]) -> list[str]:
    """``path:line name (length)`` of every function over :data:`MAX_FUNCTION_LINES`
    under ``roots``."""
    base = ROOT.parent
    long = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            where = path.relative_to(base).as_posix()
            for name, line, length in function_lengths(path.read_text(encoding="utf-8")):
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{where}:{line} {name} ({length} lines)")
    return long


def test_the_length_check_counts_lines_without_the_docstring() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    fits = f'def f():\n    """Doc.\n\n    More doc.\n    """\n{body}\n'
    assert function_lengths(fits) == [("f", 1, MAX_FUNCTION_LINES)]
    inner = body.replace("\n", "\n    ")
    nested = f"class A:\n    def g(self):\n        def h():\n            pass\n    {inner}\n"
    assert function_lengths(nested) == [("A.g", 2, MAX_FUNCTION_LINES + 2), ("A.g.h", 3, 2)]


def test_no_function_is_longer_than_the_limit() -> None:
    long = long_functions([ROOT, ROOT.parent / "benchmarks"])
    assert not long, "split these functions:\n" + "\n".join(long)


def test_the_tests_mirror_the_packages() -> None:
    """Each folder of tests/ holds the tests of the xpconv subpackage of its name, and
    each subpackage with code of its own has one."""
    tests = Path(__file__).resolve().parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert folders <= packages, f"test folders without a package: {sorted(folders - packages)}"
    assert packages - folders <= {"tools"}, f"untested packages: {sorted(packages - folders)}"


def test_the_fast_loop_names_tests_that_exist() -> None:
    """Every test :data:`conftest.SLOW_ON_JAX` and :data:`conftest.FAST_MPI` name is
    defined where they say (a renamed test would silently change the fast loop), and the
    one MPI program the fast loop keeps is parametrised with the id it names."""
    from conftest import FAST_MPI, SLOW_ON_JAX

    tests = Path(__file__).resolve().parent
    for nodeid in sorted(SLOW_ON_JAX | FAST_MPI):
        path, _, name = nodeid.partition("::")
        source = (tests.parent / path).read_text(encoding="utf-8")
        function = name.split("[")[0]
        assert f"def {function}(" in source, f"{nodeid}: no test {function} in {path}"
    (kept,) = FAST_MPI
    found = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", kept],
        cwd=tests.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert kept in found.stdout, f"{kept} is not collected:\n{found.stdout[-2000:]}"
