"""The README's Python examples run as written, check their own results, and produce
what the text says they do."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def _run(code: str) -> dict:
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str, tmp_path, monkeypatch, capsys) -> None:
    """Every example asserts something about its own output, and the assertions hold."""
    tree = ast.parse(code)
    assert any(isinstance(node, ast.Assert) for node in ast.walk(tree)), (
        "a README example should end by checking its result with assert"
    )
    monkeypatch.chdir(tmp_path)
    namespace = _run(code)
    printed = capsys.readouterr().out
    if "history" in namespace:  # the training example
        history = namespace["history"]
        assert history.epoch == [1, 2]
        assert history.loss[1] < history.loss[0] and history.val_accuracy[-1] > 0.8
        assert "total parameters" in printed and "val_acc" in printed
        assert (tmp_path / "model.npz").is_file()
    if "results" in namespace:  # the functional example
        results = namespace["results"]
        assert sorted(results) == ["array_api_strict", "numpy"]
        assert all(r.shape == (2, 4, 8, 8) and np.std(r) > 0.1 for r in results.values())


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2, "README.md lost its python examples"
