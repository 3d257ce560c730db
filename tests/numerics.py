"""Finite differences and tolerances, the one place the numerical tests take them from.

Three kinds of comparison, three tolerances:

- one op against a float64 oracle: ``Case.rtol`` (float64 1e-10; float32
  ``4 * sqrt(eps)``, doubled on a GPU), applied by ``Case.assert_close``;
- an analytic gradient against central differences in float64: :data:`FD_TOL`;
- a composition of layers or steps against a reference built from the same pieces:
  :func:`composed_tol`, with :func:`assert_scaled_close`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Step of the central differences (float64).
FD_EPS = 1e-6
#: Central differences in float64 are good to about 1e-8 relative (truncation
#: ``eps**2`` and rounding ``1e-16 / eps``), so 1e-10 would fail correct gradients;
#: a wrong one (an unflipped kernel, a missed term) is off by 1e-2 or more.
FD_TOL = 1e-6


def central_difference(
    f: Callable[[np.ndarray], float], a: np.ndarray, eps: float = FD_EPS
) -> np.ndarray:
    """Gradient of the scalar ``f`` at ``a`` (float64), one element at a time."""
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        plus, minus = a.copy(), a.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (f(plus) - f(minus)) / (2 * eps)
    return grad


def assert_matches_differences(got: np.ndarray, fd: np.ndarray, what: str = "") -> None:
    """An analytic gradient (host float64) agrees with its central differences."""
    np.testing.assert_allclose(got, fd, rtol=FD_TOL, atol=FD_TOL, err_msg=what)


def composed_tol(dtype: str) -> float:
    """Tolerance of a few layers or steps composed, relative to the largest magnitude."""
    return 1e-9 if dtype == "float64" else 1e-4


def assert_scaled_close(got: np.ndarray, expected: np.ndarray, tol: float, what: str) -> None:
    """``max|got - expected| <= tol * max(1, max|expected|)``, shapes equal."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected))), 1.0) if expected.size else 1.0
    err = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:.3g} * {scale:.3g}"
