"""Argument checks: the bottom floor that functional ops, layers, the model and the
Trainer all validate with.

Every check raises before any compute, with a message that names the argument, the
expected value and the actual one.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from xpconv.backends.registry import namespace_of

Array = Any

__all__ = ["check_float", "check_number", "check_rank", "int_pair", "namespace", "positive_int"]


def namespace(**arrays: Array) -> Any:
    """The namespace of the named arrays, which must share backend and device."""
    return namespace_of(**arrays)


def check_float(xp: Any, **arrays: Array) -> Any:
    """All named arrays are real floating and of one dtype; returns that dtype."""
    dtype, first = None, None
    for name, a in arrays.items():
        if a is None:
            continue
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(
                f"{name}: expected a floating dtype (float32 or float64), got {a.dtype}"
            )
        if dtype is None:
            dtype, first = a.dtype, name
        elif a.dtype != dtype:
            raise TypeError(
                f"{name}: expected dtype {dtype} (the dtype of {first}), got {a.dtype}; "
                "cast both to one dtype"
            )
    return dtype


def check_rank(a: Array, name: str, ndim: int, layout: str) -> None:
    """``a`` has ``ndim`` axes; ``layout`` (e.g. ``"(N, C, H, W)"``) is named in the error."""
    if a.ndim != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-D array {layout}, got {a.ndim}-D of shape {tuple(a.shape)}"
        )


def positive_int(value: Any, name: str) -> int:
    """``value`` as a positive int (bools refused); ``name`` is named in the error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


def int_pair(value: Any, name: str, *, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each at least ``minimum``, as a pair."""
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in pair):
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name}: expected {what} values, got {value!r}")
    return pair  # type: ignore[return-value]


def check_number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the given range, else an error naming ``name``.

    Python and NumPy real scalars (``np.float32(0.1)``) are accepted; ``bool`` is not.
    ``low_open``/``high_open`` exclude the bound itself.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {number}")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name}: expected a number in {left}{lo}, {hi}{right}, got {number}")
    return number
