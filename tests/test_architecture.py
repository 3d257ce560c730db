"""The floors of the house: no module reaches into another module's private parts.

The rule, checked on the source of every module of ``xpconv`` with ``ast``:

- A private module (a name starting with one underscore, such as
  ``xpconv.functional._conv``) belongs to its package: only the modules of that
  package (its ``__init__`` and its sibling modules) may import it or anything in it.
  So the modules of ``xpconv/functional/`` import each other, the package's
  ``__init__`` re-exports them, and the top ``xpconv`` modules may import
  ``xpconv._io``; ``xpconv.layers`` may not import ``xpconv.functional._conv``.
- A private name (``_targets``, ``_geom``) may be imported only from a private module
  of the importer's own package; never from a public module, whoever imports it.
- Reaching a private module or name through an imported module's attributes
  (``from . import functional as F`` then ``F._loss``) counts as importing it.

Dunder names (``__version__``, ``__future__``) are not private.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "xpconv"


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of xpconv: dotted name -> (file, whether it is a package)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, package)
    return found


MODULES = _modules()


def _package_of(module: str, is_package: bool) -> str:
    """The package whose modules ``module`` is one of (a package's own ``__init__``
    belongs to the package itself)."""
    return module if is_package else module.rpartition(".")[0]


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(importer, is_package).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_module(name: str) -> bool:
    return name in MODULES


def _check_target(
    importer: str, is_package: bool, target: str, line: int, module: bool = False
) -> list[str]:
    """Problems with ``importer`` using the module or module attribute ``target``
    (``module``: ``target`` is known to be a module, as in ``import target``)."""
    own = _package_of(importer, is_package)
    parts = target.split(".")
    problems = []
    for i, part in enumerate(parts):
        if not _private(part):
            continue
        owner = ".".join(parts[:i])  # the package or module that holds the private part
        holder_is_module = _is_module(".".join(parts[: i + 1])) or (module and i == len(parts) - 1)
        holder_is_module = holder_is_module or (i < len(parts) - 1)  # has parts beneath it
        if holder_is_module:  # a private module: private to its package
            if owner != own:
                problems.append(f"{importer}:{line} imports private module {target}")
        elif not (_private(parts[i - 1]) and ".".join(parts[: i - 1]) == own):
            # a private name: only from a private module of the importer's package
            problems.append(f"{importer}:{line} imports private name {target}")
        break
    return problems


def violations(importer: str, source: str, is_package: bool = False) -> list[str]:
    """Every import (or module attribute) of ``source`` that breaks the rule."""
    tree = ast.parse(source)
    problems: list[str] = []
    aliases: dict[str, str] = {}  # local name -> module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                problems += _check_target(importer, is_package, alias.name, node.lineno, True)
                if alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, is_package, node)
            if node.module == "__future__":
                continue
            found = _check_target(importer, is_package, base, node.lineno, True)
            problems += found
            for alias in [] if found else node.names:
                full = f"{base}.{alias.name}"
                problems += _check_target(importer, is_package, full, node.lineno)
                if _is_module(full):
                    aliases[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _private(node.attr)
        ):
            target = f"{aliases[node.value.id]}.{node.attr}"
            problems += _check_target(importer, is_package, target, node.lineno)
    return sorted(set(problems))


def test_the_rule_catches_what_it_should() -> None:
    """The checker itself: each forbidden form is reported, each allowed one is not."""
    bad = {
        "from .functional._conv import conv_geometry": "private module",
        "from .functional import _loss": "private module",
        "import xpconv.functional._kernels": "private module",
        "from .functional._checks import positive_int": "private module",
        "from .layers import _as_pair": "private name",
        "from . import functional as F\nF._loss": "private module",
        "from . import layers\nlayers._as_pair": "private name",
        "from ..functional._conv import conv_geometry": "private module",
    }
    for source, kind in bad.items():
        importer = "xpconv.interop.x" if ".." in source else "xpconv.model"
        found = violations(importer, source)
        assert found and kind in found[0], (source, found)
    assert violations("xpconv.interop.x", "from .._io import atomic_write")
    allowed = [
        ("xpconv.functional._loss", "from ._activation import _log_softmax", False),
        ("xpconv.functional", "from ._conv import conv2d", True),
        ("xpconv.functional._pool", "from .checks import int_pair", False),
        ("xpconv.trainer", "from ._io import atomic_write", False),
        ("xpconv.cli", "from . import __version__", False),
        ("xpconv.model", "from .functional.checks import positive_int", False),
        ("xpconv.layers", "from . import functional as F\nF.conv2d", False),
    ]
    for importer, source, package in allowed:
        assert violations(importer, source, package) == [], (importer, source)
    # a private name of a public module is refused even inside its package
    assert violations("xpconv.functional._loss", "from .targets import _check_rows")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_another_modules_private_parts(module: str) -> None:
    path, package = MODULES[module]
    assert violations(module, path.read_text(encoding="utf-8"), package) == []
