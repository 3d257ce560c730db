"""Weight initialisers, drawn on the host so one seed gives one model on every backend.

Each initialiser maps ``(rng, shape, fan_in, fan_out)`` to a float64 NumPy array; the
layer casts it to the model's dtype and moves it to the model's device. For a
convolution weight (O, C, KH, KW), ``fan_in = C * KH * KW`` and ``fan_out = O * KH * KW``;
for a dense weight (OUT, IN), ``fan_in = IN`` and ``fan_out = OUT``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Initializer = Callable[[np.random.Generator, tuple[int, ...], int, int], np.ndarray]

__all__ = ["INITIALIZERS", "get_initializer", "initializer_config"]


def glorot_normal(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot/Xavier normal: std = sqrt(2 / (fan_in + fan_out))."""
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def glorot_uniform(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot/Xavier uniform on [-a, a], a = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def he_normal(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    """He/Kaiming normal for ReLU networks: std = sqrt(2 / fan_in)."""
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def he_uniform(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    """He/Kaiming uniform on [-a, a], a = sqrt(6 / fan_in)."""
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=shape)


def lecture(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    """The lecture's "glorot" scheme: normal with std = 2 / (inputs + outputs).

    Inputs and outputs count channels (a convolution's kernel area is left out), and
    the ratio is used as the standard deviation itself, as the lecture writes it.
    """
    inputs, outputs = (shape[1], shape[0]) if len(shape) >= 2 else (fan_in, fan_out)
    return rng.normal(0.0, 2.0 / (inputs + outputs), size=shape)


def standard(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    """Standard normal (std 1), the lecture's default."""
    return rng.normal(0.0, 1.0, size=shape)


INITIALIZERS: dict[str, Initializer] = {
    "glorot_normal": glorot_normal,
    "glorot": glorot_normal,
    "xavier": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "he_normal": he_normal,
    "he": he_normal,
    "he_uniform": he_uniform,
    "lecture": lecture,
    "standard": standard,
}


def get_initializer(init: str | Initializer) -> Initializer:
    """An initialiser by name (see ``INITIALIZERS``) or a callable passed through."""
    if callable(init):
        return init
    if init not in INITIALIZERS:
        raise ValueError(f"init: expected one of {sorted(INITIALIZERS)}, got {init!r}")
    return INITIALIZERS[init]


def initializer_config(init: str | Initializer) -> str | Initializer:
    """What a layer's ``get_config`` keeps of its ``init`` argument: the name as given,
    the name of a registered initialiser passed as a function (``he_normal`` ->
    ``"he_normal"``), or else the callable itself (which rebuilds the same layer but
    is not JSON: register it in ``INITIALIZERS`` to save the architecture)."""
    if isinstance(init, str):
        return init
    for name, fn in INITIALIZERS.items():
        if fn is init:
            return name
    return init
