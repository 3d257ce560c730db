"""The checks at a model's boundary: inputs and targets in, on the model's backend.

Host data (NumPy arrays, lists) is moved to the device; arrays of another backend or
device are refused; NaN, infinity and values beyond the model dtype's range are refused
before any compute, with one reduction read back at once. Targets are checked by
:func:`xpconv.ops.targets.check_targets`, the one target check of losses,
metrics and the Trainer.

:class:`InputChecker` holds the one piece of state (whether the cast warning was given)
for one model; :class:`~xpconv.nn.sequential.Sequential` delegates ``as_input`` and
``as_target`` to it.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from array_api_compat import is_array_api_obj

from xpconv.ops.checks import positive_int
from xpconv.ops.targets import check_targets

Array = Any

__all__ = [
    "InputChecker",
    "activation_bytes",
    "as_batch",
    "check_activation_memory",
    "detached",
    "batch_count",
    "check_finite_host",
    "check_input_shape",
]


class InputChecker:
    """The input and target checks of one model.

    ``model`` is read for ``backend``, ``dtype``, ``dtype_name``, ``check_finite``,
    ``built``, ``input_shape``, ``output_shape`` and ``build`` (a model not built yet
    is built on its first input's shape).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.warned_cast = False
        self.warned_scale = False

    def as_input(self, x: Any, argument: str = "x", *, finite: bool = True) -> Array:
        """``x`` (N, *input_shape) checked and on the model's backend and dtype (see
        :meth:`xpconv.nn.sequential.Sequential.as_input`)."""
        model = self.model
        host = isinstance(x, np.ndarray) or not is_array_api_obj(x)
        finite = finite and model.check_finite
        if host:
            x = np.asarray(x)
            if x.dtype.kind not in "fiu":
                raise TypeError(f"{argument}: expected numeric data, got dtype {x.dtype}")
            if x.dtype.kind == "f":
                if finite:
                    check_finite_host(x, argument, model.dtype_name)
                if x.dtype.name != model.dtype_name:
                    self._warn_cast(argument, x.dtype.name)
            else:
                self._warn_unscaled(x, argument)
            x = model.backend.asarray(x, dtype=model.dtype)
        else:
            xp = model.backend.xp
            model.backend.check(x, argument)
            x = detached(x)
            if finite and xp.isdtype(x.dtype, "real floating"):
                self.check_finite_device(x, argument)
            if x.dtype != model.dtype:
                if not xp.isdtype(x.dtype, "real floating"):
                    raise TypeError(f"{argument}: expected a floating array, got {x.dtype}")
                self._warn_cast(argument, str(x.dtype))
                x = xp.astype(x, model.dtype)
        self._check_shape(x, argument)
        return x

    def as_target(self, y: Any, n: int, argument: str = "y", *, validate: bool = True) -> Array:
        """Labels (N,) or float targets (N, *output_shape) on the model's backend (see
        :meth:`xpconv.nn.sequential.Sequential.as_target`)."""
        model = self.model
        xp = model.backend.xp
        if isinstance(y, np.ndarray) or not is_array_api_obj(y):
            y = np.asarray(y)
            if y.dtype.kind in "iu":
                y = model.backend.asarray(y.astype(np.int64))
            elif y.dtype.kind == "f":
                if validate and model.check_finite:
                    check_finite_host(y, argument, model.dtype_name)
                y = model.backend.asarray(y, dtype=model.dtype)
            else:
                raise TypeError(
                    f"{argument}: expected integer labels or float targets, got {y.dtype}"
                )
        else:
            model.backend.check(y, argument)
            y = detached(y)
            if validate and model.check_finite and xp.isdtype(y.dtype, "real floating"):
                self.check_finite_device(y, argument)
        if y.ndim < 1:
            raise ValueError(
                f"{argument}: expected {n} labels (one per example), got shape {tuple(y.shape)}"
            )
        check_targets(xp, y, n, model.output_shape, name=argument, check_range=validate)
        return y

    def check_values(self, x: Any) -> None:
        """The finiteness and range check of :meth:`as_input`, once for a whole dataset."""
        model = self.model
        if not model.check_finite:
            return
        if isinstance(x, np.ndarray):
            if x.dtype.kind == "f":
                check_finite_host(x, "x", model.dtype_name)
        else:
            model.backend.check(x, "x")
            if model.backend.xp.isdtype(x.dtype, "real floating"):
                self.check_finite_device(x, "x")

    def check_finite_device(self, x: Array, argument: str) -> None:
        """One reduction on the device; the details are looked up on failure only."""
        backend, dtype_name = self.model.backend, self.model.dtype_name
        xp = backend.xp
        limit = float(np.finfo(dtype_name).max)
        if not bool(backend.to_numpy(xp.all(xp.abs(x) <= limit))):
            check_finite_host(backend.to_numpy(x), argument, dtype_name)

    def _warn_unscaled(self, x: np.ndarray, argument: str) -> None:
        """Integer images (uint8 pixels 0-255) are used as they are, with one warning
        when their values go beyond 1: networks train badly on such a scale."""
        if not self.warned_scale and x.size and int(x.max()) > 1:
            warnings.warn(
                f"{argument}: {x.dtype} data with values up to {int(x.max())} is used as it "
                "is; scale it to [0, 1] first (x / 255 for 8-bit pixels)",
                UserWarning,
                stacklevel=5,
            )
            self.warned_scale = True

    def _warn_cast(self, argument: str, got: str) -> None:
        if not self.warned_cast:
            warnings.warn(
                f"{argument}: {got} data cast to the model's {self.model.dtype_name}",
                UserWarning,
                stacklevel=5,
            )
            self.warned_cast = True

    def _check_shape(self, x: Array, argument: str) -> None:
        model = self.model
        if x.ndim < 2:
            raise ValueError(
                f"{argument}: expected a batch (N, *input_shape), got shape {tuple(x.shape)}"
            )
        if not model.built:
            model.build(tuple(x.shape[1:]))
        if tuple(x.shape[1:]) != model.input_shape:
            raise ValueError(
                f"{argument}: expected examples of shape {model.input_shape} (model input), "
                f"got {tuple(x.shape[1:])} (batch of shape {tuple(x.shape)})"
            )
        if x.shape[0] < 1:
            raise ValueError(f"{argument}: expected at least one example, got an empty batch")


def activation_bytes(model: Any, batch_size: int) -> int:
    """Bytes one inference batch of ``batch_size`` holds at its peak: the largest input
    plus output of any layer (the two live at once), in the model's dtype."""
    per_example = max(
        math.prod(layer.input_shape or ()) + math.prod(layer.output_shape or ())
        for layer in model.layers
    )
    return batch_size * per_example * np.dtype(model.dtype_name).itemsize


def available_bytes(backend: Any) -> int | None:
    """Memory free for arrays of ``backend``: the device's free memory for a CUDA torch
    or CuPy device, the host's available memory (``MemAvailable``) otherwise; ``None``
    when it cannot be read (no check is made then)."""
    device = str(getattr(backend, "device", "cpu"))
    try:
        if backend.name == "torch" and device.startswith("cuda"):
            import torch

            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        if backend.name == "cupy":
            import cupy

            return int(cupy.cuda.runtime.memGetInfo()[0])
        if backend.name == "jax" and "cpu" not in device.lower():
            return None
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, ImportError, RuntimeError, AttributeError):
        return None
    return None


def check_activation_memory(model: Any, batch_size: int, n: int) -> None:
    """Refuse, before any activation is allocated, an inference whose batches of
    ``min(batch_size, n)`` examples do not fit the backend's free memory.

    Raises:
        MemoryError: one line naming the memory needed and free, and the largest
            ``batch_size`` that fits (or that even one example does not).
    """
    batch = min(batch_size, n)
    if batch < 1:
        return
    need = activation_bytes(model, batch)
    free = available_bytes(model.backend)
    if free is None or need <= free:
        return
    one = activation_bytes(model, 1)
    gib = 2**30
    advice = (
        f"lower batch_size to {free // one} or less"
        if free >= one
        else f"even one example needs {one / gib:.3g} GiB: the model is too large here"
    )
    raise MemoryError(
        f"batch_size={batch_size}: the activations of one batch need {need / gib:.3g} GiB but "
        f"{free / gib:.3g} GiB is free on {model.backend.name}; {advice}"
    )


def detached(x: Array) -> Array:
    """``x`` cut from any autograd graph of its library (a PyTorch tensor with
    ``requires_grad``): xpconv computes its own gradients, and a tracked input would make
    every weight update keep a graph (memory growing each step) or fail in place."""
    if getattr(x, "requires_grad", False) and hasattr(x, "detach"):
        return x.detach()
    return x


def as_batch(x: Any) -> Any:
    """Arrays pass through; other host data (nested lists) becomes a NumPy array."""
    if isinstance(x, np.ndarray) or is_array_api_obj(x):
        return x
    try:
        host = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"x: expected an array (N, *input_shape), got {type(x).__name__}") from exc
    if host.dtype.kind not in "fiu":
        raise TypeError(
            f"x: expected numeric data (N, *input_shape), got {type(x).__name__} of dtype "
            f"{host.dtype}"
        )
    return host


def batch_count(x: Any, batch_size: int) -> int:
    """Check a dataset (N, ...) and batch size for inference; returns N."""
    positive_int(batch_size, "batch_size")
    n = int(x.shape[0]) if getattr(x, "ndim", 0) else 0
    if n < 1:
        raise ValueError(f"x: expected at least one example, got shape {tuple(x.shape)}")
    return n


def check_input_shape(value: Any) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints; no silent truncation of floats."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"input_shape: expected a tuple of positive ints such as (1, 28, 28), got {value!r}"
        )
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in value):
        raise TypeError(
            f"input_shape: expected a tuple of positive ints such as (1, 28, 28), got "
            f"{tuple(value)!r}"
        )
    shape = tuple(int(s) for s in value)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape: expected positive sizes such as (1, 28, 28), got {shape}")
    return shape


def check_finite_host(x: np.ndarray, argument: str, dtype: str = "float64") -> None:
    """No NaN, no infinity and nothing beyond the largest finite ``dtype`` value (which
    the cast to ``dtype`` would turn into infinity) in the host array ``x``."""
    limit = np.finfo(dtype).max
    ok = np.abs(x) <= limit
    if not ok.all():
        index = tuple(int(i) for i in np.argwhere(~ok)[0])
        value = x[index]
        if np.isfinite(value):
            raise ValueError(
                f"{argument}: expected values within the {dtype} range of the model "
                f"(|x| <= {float(limit):.4g}), got {value} at index {index}"
            )
        raise ValueError(
            f"{argument}: expected finite values (no NaN or infinity), got {value} at index {index}"
        )
