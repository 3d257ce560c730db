"""The documentation's generated parts: the tutorial notebook is the one its script
writes, and the command-line reference covers every command and option of the parser.

(The site itself is built, and the notebook executed, by ``ci/package.sh``.)"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_notebook_matches_its_script() -> None:
    script = _load(ROOT / "docs" / "tutorial" / "make_lecture.py")
    notebook = json.loads((ROOT / "docs" / "tutorial" / "lecture.ipynb").read_text("utf-8"))
    stored = [
        ("md" if cell["cell_type"] == "markdown" else "code", "".join(cell["source"]))
        for cell in notebook["cells"]
    ]
    assert stored == script.CELLS, "run `python docs/tutorial/make_lecture.py` and commit"
    assert all(not cell.get("outputs") for cell in notebook["cells"]), "stored with outputs"


def test_cli_reference_lists_every_command_and_option() -> None:
    hook = _load(ROOT / "docs" / "hooks" / "cli_reference.py")
    parser = hook.find_parser_factory()()
    text = hook.cli_reference_markdown()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert subparsers, "the parser has no commands"
    for name, sub in subparsers[0].choices.items():
        assert f"### `{parser.prog} {name}`" in text
        for action in sub._actions:
            for option in action.option_strings:
                assert f"`{option}" in text or f", {option}" in text, (name, option)
    page = (ROOT / "docs" / "guide" / "cli.md").read_text("utf-8")
    assert hook.MARKER in page and hook.on_page_markdown(page).count(hook.MARKER) == 0
