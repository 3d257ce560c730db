"""Which C++ compiler the torch backend's compiled step would use
(``xpconv.backends.torch.compiler``): TorchInductor's own setting, read without
importing it."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from xpconv.backends.torch import compiler

CONFIG = "torch._inductor.config"


def _inductor_config(cxx: object) -> SimpleNamespace:
    return SimpleNamespace(cpp=SimpleNamespace(cxx=cxx))


def test_a_loaded_inductor_config_names_the_compilers_in_its_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CXX", "never-read-c++")
    monkeypatch.setitem(sys.modules, CONFIG, _inductor_config(("no-such-c++", None, "sh")))
    assert compiler._inductor_cxx_candidates() == ("no-such-c++", "sh")
    assert compiler.cpp_compiler() == compiler.shutil.which("sh")  # the first one found
    monkeypatch.setitem(sys.modules, CONFIG, _inductor_config("no-such-c++"))
    assert compiler._inductor_cxx_candidates() == ("no-such-c++",)
    assert compiler.cpp_compiler() is None


def test_without_a_loaded_config_the_default_is_cxx_then_the_platforms_compiler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, CONFIG, raising=False)
    monkeypatch.setenv("CXX", "my-c++")
    assert compiler._inductor_cxx_candidates() == ("my-c++",)
    monkeypatch.delenv("CXX")
    default = {"win32": "cl", "darwin": "clang++"}.get(sys.platform, "g++")
    assert compiler._inductor_cxx_candidates() == (default,)
