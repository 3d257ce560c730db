"""Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

The mask is drawn on the host from a ``numpy.random.Generator`` and moved to the
array's backend (``Backend.uniform``), so one seed gives the same mask on every
backend and the same training run everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpconv.backends.registry import backend_of
from xpconv.ops.checks import check_float, namespace

Array = Any

__all__ = ["dropout", "dropout_backward"]


def _check_p(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p: expected a float in [0, 1), got {p!r}")
    if not 0.0 <= p < 1.0:  # also rejects NaN
        raise ValueError(f"p: expected a float in [0, 1), got {p!r}")
    return float(p)


def dropout(
    x: Array,
    p: float,
    *,
    rng: np.random.Generator | None = None,
    training: bool = True,
    mask: Array | None = None,
) -> tuple[Array, Array | None]:
    """Inverted dropout of ``x`` (any shape).

    Args:
        x: input, float32 or float64.
        p: probability of zeroing an element, in [0, 1).
        rng: the generator the mask is drawn from (required when no ``mask`` is given
            and dropout is active). Each call draws ``x.size`` uniform numbers ``u``
            and keeps the elements with ``u >= p``.
        training: ``False`` turns dropout off (inference).
        mask: a scaled mask to reuse instead of drawing one: shape and dtype of ``x``,
            values 0 or 1/(1-p).

    Returns:
        ``(out, mask)``: ``out = x * mask`` (shape of ``x``) and the scaled mask, to pass
        to :func:`dropout_backward`; ``(x, None)`` when ``training`` is false or
        ``p == 0``.
    """
    xp = namespace(x=x, mask=mask)
    check_float(xp, x=x, mask=mask)
    p = _check_p(p)
    if not training or p == 0.0:
        return x, None
    if mask is not None:
        if tuple(mask.shape) != tuple(x.shape):
            raise ValueError(
                f"mask: expected the shape of x {tuple(x.shape)}, got {tuple(mask.shape)}"
            )
    else:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                "rng: expected a numpy.random.Generator (np.random.default_rng(seed)) to "
                f"draw the dropout mask from, got {type(rng).__qualname__}"
            )
        shape = tuple(int(v) for v in x.shape)
        u = backend_of(x).uniform(rng, shape, dtype=x.dtype)
        mask = xp.astype(u >= p, x.dtype) * (1.0 / (1.0 - p))
    return x * mask, mask


def dropout_backward(grad_out: Array, mask: Array | None) -> Array:
    """Vector-Jacobian product of :func:`dropout`: ``grad_out * mask``.

    Args:
        grad_out: gradient with respect to the output (shape of ``x``).
        mask: the mask :func:`dropout` returned; ``None`` (dropout was off) passes
            ``grad_out`` through.
    """
    xp = namespace(grad_out=grad_out, mask=mask)
    check_float(xp, grad_out=grad_out, mask=mask)
    if mask is None:
        return grad_out
    if tuple(mask.shape) != tuple(grad_out.shape):
        raise ValueError(
            f"mask: expected the shape of grad_out {tuple(grad_out.shape)}, got {tuple(mask.shape)}"
        )
    return grad_out * mask
