"""``import xpconv`` gives the public names and, on first use, each subpackage as an
attribute (PEP 562); a name that is neither is an AttributeError that names it."""

from __future__ import annotations

import importlib

import pytest

import xpconv


def test_each_subpackage_is_an_attribute() -> None:
    for name in xpconv.SUBPACKAGES:
        assert xpconv.__getattr__(name) is importlib.import_module(f"xpconv.{name}")


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match=r"^module 'xpconv' has no attribute 'Conv3D'$"):
        xpconv.__getattr__("Conv3D")
    with pytest.raises(AttributeError, match="no attribute 'Conv3D'"):
        xpconv.Conv3D  # noqa: B018


def test_dir_lists_the_public_names_and_the_subpackages() -> None:
    names = dir(xpconv)
    assert names == sorted(names)
    assert {"Conv2D", "Trainer", "__version__", *xpconv.SUBPACKAGES} <= set(names)
    assert set(xpconv.__all__) <= set(names)
