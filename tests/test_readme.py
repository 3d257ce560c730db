"""The Python examples of the README and of the documentation pages run as written,
check their own results, and produce what the text says they do.

Each example names the install it needs (the README's run after ``pip install -e
".[cli]"``); this test runs them all in the test environment, which has every extra.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
PATTERN = re.compile(r"^```python\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)


def _blocks(path: Path) -> list[str]:
    return PATTERN.findall(path.read_text(encoding="utf-8"))


EXAMPLES = [(page, i, code) for page in PAGES for i, code in enumerate(_blocks(page))]


def _run(code: str, path: Path) -> dict:
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(code, str(path), "exec"), namespace)
    return namespace


@pytest.mark.parametrize(
    ("page", "index", "code"),
    EXAMPLES,
    ids=[f"{page.relative_to(ROOT)}-block{i}" for page, i, _ in EXAMPLES],
)
def test_example_runs(page: Path, index: int, code: str, tmp_path, monkeypatch, capsys) -> None:
    """Every example asserts something about its own output, and the assertions hold."""
    tree = ast.parse(code)
    assert any(isinstance(node, ast.Assert) for node in ast.walk(tree)), (
        f"{page.name} example {index} should end by checking its result with assert"
    )
    monkeypatch.chdir(tmp_path)
    namespace = _run(code, page)
    printed = capsys.readouterr().out
    if page == README and "history" in namespace:  # the README's training example
        history = namespace["history"]
        assert history.epoch == [1, 2]
        assert history.loss[1] < history.loss[0] and history.val_accuracy[-1] > 0.8
        assert "total parameters" in printed and "val_acc" in printed
        assert (tmp_path / "model.npz").is_file()
    if page == README and "grad_w" in namespace:  # the README's functional example
        y = namespace["be"].to_numpy(namespace["y"])
        assert y.shape == (2, 4, 8, 8) and np.std(y) > 0.1


def test_readme_has_examples() -> None:
    assert len(_blocks(README)) >= 2, "README.md lost its python examples"


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 200, f"README.md should stay at most 200 lines, has {lines}"


def test_readme_examples_need_only_the_cli_extra() -> None:
    """The README's examples run after ``pip install -e ".[cli]"``: they import nothing
    outside xpconv's core dependencies and that extra, and name no backend that needs
    another install."""
    allowed = {"xpconv", "numpy", "sklearn", "matplotlib", "tqdm"}
    for code in _blocks(README):
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.keyword) and node.arg == "backend":
                assert isinstance(node.value, ast.Constant) and node.value.value == "numpy"
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert {n.split(".")[0] for n in names} <= allowed, names
