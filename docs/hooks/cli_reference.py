"""MkDocs hook: the command-line reference, generated from the ``xpconv`` argument parser.

A page holding the marker ``<!-- cli-reference -->`` gets, in its place, one section per
command with its usage line, description and options, read from the parser that
``xpconv`` itself runs. The parser is found by name (``build_parser``) in ``xpconv.cli``
or any of its submodules, so the page follows the code wherever the parser lives.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Any

MARKER = "<!-- cli-reference -->"


def find_parser_factory() -> Any:
    """``build_parser`` from ``xpconv.cli`` or, failing that, from one of its submodules."""
    cli = importlib.import_module("xpconv.cli")
    if callable(getattr(cli, "build_parser", None)):
        return cli.build_parser
    for info in pkgutil.walk_packages(getattr(cli, "__path__", []), "xpconv.cli."):
        module = importlib.import_module(info.name)
        if callable(getattr(module, "build_parser", None)):
            return module.build_parser
    raise RuntimeError("no build_parser() found in xpconv.cli or its submodules")


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| option | meaning |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            metavar = action.metavar or (
                "{" + ",".join(map(str, action.choices)) + "}" if action.choices else None
            )
            takes = action.nargs != 0
            name = f"{names} {metavar or action.dest.upper()}" if takes else names
        else:
            name = str(action.metavar or action.dest)
        helptext = (action.help or "") % {"default": action.default, "prog": parser.prog}
        rows.append(f"| `{_escape(name)}` | {_escape(helptext)} |")
    return rows


def _section(parser: argparse.ArgumentParser, title: str, level: int) -> list[str]:
    usage = parser.format_usage().strip().removeprefix("usage: ")
    lines = [f"{'#' * level} `{title}`", "", "```text", usage, "```", ""]
    if parser.description:
        lines += [parser.description, ""]
    lines += _option_rows(parser) + [""]
    return lines


def cli_reference_markdown() -> str:
    """The reference of ``xpconv`` and each of its commands, as Markdown."""
    parser = find_parser_factory()()
    lines = _section(parser, parser.prog, 2)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                lines += _section(sub, f"{parser.prog} {name}", 3)
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference_markdown())
    return markdown
