"""Backends: the array libraries xpconv runs on, chosen by name.

:mod:`~xpconv.backends.registry` holds :class:`Backend` and the registry of names
(``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"``, ``"array_api_strict"``). Each array
library has a folder with its kernel table (the fast paths behind the ops, registered in
:mod:`~xpconv.backends.kernels`); the portable table (:mod:`~xpconv.backends.portable`)
runs on any Array API namespace. No module here imports an array library other than
NumPy until it is used; NumPy's host tuning (:mod:`xpconv.backends.numpy.host`) runs
only when asked.
"""

from __future__ import annotations

from xpconv.backends import kernels
from xpconv.backends.cupy import kernels as _cupy_kernels  # noqa: F401  (registers; no CuPy)
from xpconv.backends.jax import kernels as _jax_kernels  # noqa: F401  (registers; no JAX)
from xpconv.backends.numpy import kernels as _numpy_kernels  # noqa: F401  (registers)
from xpconv.backends.registry import (
    Backend,
    BackendError,
    BackendSpec,
    available_backends,
    backend_of,
    default_backend,
    get_backend,
    namespace_of,
    register_backend,
    registered_backends,
    set_default_backend,
    unregister_backend,
)
from xpconv.backends.torch import kernels as _torch_kernels  # noqa: F401  (registers; no torch)

__all__ = [
    "Backend",
    "BackendError",
    "BackendSpec",
    "available_backends",
    "backend_of",
    "default_backend",
    "get_backend",
    "kernels",
    "namespace_of",
    "register_backend",
    "registered_backends",
    "set_default_backend",
    "unregister_backend",
]
