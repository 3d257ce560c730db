"""The one place that checks training targets and counts correct predictions.

Targets are either integer class indices (N,) in [0, K) for outputs (N, K), or
floating rows of the output's shape (N, *output_shape): one-hot rows or class
probabilities for a classifier, any values for a regression. The losses, the
metrics, ``Sequential.evaluate`` and the ``Trainer`` all check their targets here, so
they accept and refuse the same things; accuracy is counted here for both kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Array = Any

__all__ = ["check_targets", "count_correct"]


def check_targets(
    xp: Any,
    targets: Array,
    n: int,
    output_shape: Sequence[int],
    *,
    name: str = "labels",
    check_range: bool = True,
) -> bool:
    """Check ``targets`` for ``n`` outputs of per-example shape ``output_shape``.

    Args:
        xp: the targets' namespace.
        targets: integer class indices (n,) or floating rows (n, *output_shape).
        n: number of examples (rows of the outputs).
        output_shape: per-example output shape, e.g. (K,) for K classes.
        name: the argument named in errors.
        check_range: check integer indices against [0, K) (reads two numbers back
            from the device); ``False`` for indices checked before.

    Returns:
        True for integer class indices, False for floating rows.

    Raises:
        TypeError: a dtype that is neither integer nor real floating (bool included).
        ValueError: a wrong shape or, with ``check_range``, an index outside [0, K).
    """
    shape = tuple(int(s) for s in targets.shape)
    out = tuple(int(s) for s in output_shape)
    dtype = targets.dtype
    if xp.isdtype(dtype, "bool") or not xp.isdtype(dtype, ("integral", "real floating")):
        raise TypeError(
            f"{name}: expected integer class indices or floating rows, got dtype {dtype}"
        )
    if xp.isdtype(dtype, "integral"):
        if len(shape) != 1:
            raise ValueError(
                f"{name}: expected a 1-D array (N,) of integer class indices, got "
                f"{len(shape)}-D of shape {shape}"
            )
        if len(out) != 1:
            raise ValueError(
                f"{name}: integer class indices need outputs (N, K), but the outputs are "
                f"(N, {', '.join(map(str, out))}); give floating targets of that shape"
            )
        _check_rows(shape, n, name)
        if check_range:
            k = out[0]
            lo, hi = int(xp.min(targets)), int(xp.max(targets))
            if lo < 0 or hi >= k:
                raise ValueError(
                    f"{name}: expected class indices in [0, {k}) for {k} classes, "
                    f"got min {lo} and max {hi}"
                )
        return True
    if len(shape) != 1 + len(out):
        layout = "(N, K) of class probabilities" if len(out) == 1 else f"(N, *{out})"
        raise ValueError(
            f"{name}: expected floating targets as a {1 + len(out)}-D array {layout} "
            f"(integer class indices need an integer dtype), got {len(shape)}-D of shape "
            f"{shape}"
        )
    _check_rows(shape, n, name)
    if shape[1:] != out:
        what = f"{out[0]} columns, one per class" if len(out) == 1 else f"rows of shape {out}"
        raise ValueError(
            f"{name}: expected {what} of the outputs (N, {', '.join(map(str, out))}), "
            f"got {name} of shape {shape}"
        )
    return False


def _check_rows(shape: tuple[int, ...], n: int, name: str) -> None:
    if shape[0] != n:
        raise ValueError(
            f"{name}: expected {n} rows (one per example), got {shape[0]} (shape {shape})"
        )


def count_correct(xp: Any, outputs: Array, targets: Array) -> Array | None:
    """Number of rows whose largest output is the target class, as a 0-d integer array
    (on the device: no sync).

    The target class is the index for integer targets and the largest entry of the
    row (``argmax``) for one-hot or probability rows. ``None`` when the outputs are
    not (N, K) class scores, where accuracy has no meaning. Targets must have passed
    :func:`check_targets`.
    """
    if outputs.ndim != 2:
        return None
    truth = targets if xp.isdtype(targets.dtype, "integral") else xp.argmax(targets, axis=1)
    return xp.count_nonzero(xp.argmax(outputs, axis=1) == truth)
