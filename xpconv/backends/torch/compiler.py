"""The torch backend's compile hook: a pure function of tensors traced once per input
signature and compiled by ``torch.compile`` (TorchInductor).

The function is not handed to TorchDynamo as Python code. It is traced the way
``jax.jit`` traces: ``make_fx`` runs it once on fake tensors of the arguments' shapes,
dtypes and devices, recording every tensor operation into one graph, and that graph
is what ``torch.compile(..., fullgraph=True)`` compiles. Python-side state the
function reads (layer settings, the dropout masks given to it) is fixed at tracing,
as under ``jax.jit``, so dynamo has no Python attributes to guard on and there are no
graph breaks; a function that reads a tensor's value on the host fails while tracing
instead of compiling in pieces. The PyTorch kernels see fake tensors
(:func:`~xpconv.backends.registry.is_traced`) and take their traceable forms: the
NumPy and oneDNN calls and the ``out=`` loops are for eager execution.

A compiled function is kept per input signature: the tree of the arguments (dicts,
tuples, lists), each tensor's shape, dtype and device, and the value of each
non-tensor leaf. Calling it again with the same signature reuses it, whatever the
tensors hold.

Work that must run on the host at every call (a collective of synchronised batch norm)
goes through :func:`host_call`: in a traced function it is one opaque operator,
``xpconv::host_call``, registered with PyTorch on first use, which calls the Python
function when the compiled code runs.

TorchInductor builds CPU kernels with a C++ compiler and CUDA kernels with Triton;
:func:`can_compile` says whether the one a device needs is here. PyTorch is imported
only when these functions run.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import sys
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

__all__ = ["can_compile", "compile_function", "cpp_compiler", "host_call"]

HostFunction = Callable[[np.ndarray], np.ndarray]
#: the host functions of the traced ``host_call`` operators, by the key they carry
_HOST_FUNCTIONS: dict[int, HostFunction] = {}
_KEYS = itertools.count()


def _inductor_cxx_candidates() -> tuple[str, ...]:
    """The C++ compilers TorchInductor tries, in its order: its ``cpp.cxx`` setting
    when its config is loaded already, else that setting's default (``$CXX``, else
    ``g++``; ``clang++`` on macOS; ``cl`` on Windows), read without importing it."""
    config = sys.modules.get("torch._inductor.config")
    if config is not None:
        cxx = config.cpp.cxx
        names = cxx if isinstance(cxx, (list, tuple)) else (cxx,)
        return tuple(name for name in names if name)
    if sys.platform == "win32":
        return (os.environ.get("CXX", "cl"),)
    return (os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++"),)


def cpp_compiler() -> str | None:
    """The path of the C++ compiler TorchInductor would build CPU kernels with, or
    ``None`` when none of the ones it tries is on the ``PATH`` (or at the path given)."""
    for name in _inductor_cxx_candidates():
        found = shutil.which(name)
        if found:
            return found
    return None


def can_compile(device: Any) -> bool:
    """Whether ``torch.compile`` can build kernels for ``device`` (a ``torch.device``)
    here: a C++ compiler for the CPU (:func:`cpp_compiler`), Triton for CUDA."""
    if device.type == "cpu":
        return cpp_compiler() is not None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return bool(has_triton())
    return False


def _signature(leaves: list[Any]) -> tuple[Hashable, ...]:
    import torch

    key: list[Hashable] = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            key.append((tuple(leaf.shape), leaf.dtype, str(leaf.device)))
        else:
            key.append(("static", type(leaf).__name__, leaf))
    return tuple(key)


def _build(fn: Callable[..., Any], leaves: list[Any], tree: Any) -> tuple[Any, Any]:
    """Trace ``fn`` on fake tensors like the tensor ``leaves`` and compile the graph;
    returns the compiled graph (tensors in, a flat list of tensors out) and the tree
    of ``fn``'s result."""
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils import _pytree as pytree

    tensor_at = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    out_tree: list[Any] = []

    def flat(*tensors: Any) -> list[Any]:
        full = list(leaves)
        for i, t in zip(tensor_at, tensors):
            full[i] = t
        out, spec = pytree.tree_flatten(fn(*pytree.tree_unflatten(full, tree)))
        out_tree.append(spec)
        return out

    graph = make_fx(flat, tracing_mode="fake")(*(leaves[i] for i in tensor_at))
    return torch.compile(graph, fullgraph=True, dynamic=False), out_tree[-1]


def compile_function(
    fn: Callable[..., Any], donate_argnums: tuple[int, ...] = ()
) -> Callable[..., Any]:
    """``fn``, a pure function of tensors (nested dicts, tuples and lists of them)
    that reads none of their values on the host, compiled by ``torch.compile`` once
    per input signature (see the module docstring). It returns what ``fn`` returns,
    as new tensors. ``donate_argnums`` is accepted for the interface of
    :meth:`Backend.compile <xpconv.backends.registry.Backend.compile>` and ignored:
    PyTorch has no donation, the arguments stay valid. ``_cache_size()``, as on a
    ``jax.jit`` function, counts the signatures compiled so far."""
    compiled: dict[Hashable, tuple[Any, Any]] = {}

    def run(*args: Any) -> Any:
        import torch
        from torch.utils import _pytree as pytree

        leaves, tree = pytree.tree_flatten(args)
        key = (tree, _signature(leaves))
        if key not in compiled:
            compiled[key] = _build(fn, leaves, tree)
        graph, out_tree = compiled[key]
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        return pytree.tree_unflatten(graph(*tensors), out_tree)

    run.__wrapped__ = fn  # type: ignore[attr-defined]
    run._cache_size = compiled.__len__  # type: ignore[attr-defined]  # as jax.jit's
    return run


@functools.cache
def _host_operator() -> Any:
    """The ``xpconv::host_call`` operator (registered once per process): ``fn(values)``
    on the host for the function registered under ``key``, a new tensor of ``shape``."""
    import torch

    schema = "(Tensor values, int key, SymInt[] shape) -> Tensor"

    @torch.library.custom_op("xpconv::host_call", mutates_args=(), schema=schema)
    def operator(values: torch.Tensor, key: int, shape: list[int]) -> torch.Tensor:
        host = np.asarray(_HOST_FUNCTIONS[key](values.detach().cpu().numpy()))
        out = torch.from_numpy(np.array(host, copy=True).reshape(shape))
        return out.to(device=values.device, dtype=values.dtype)

    @operator.register_fake
    def _(values: torch.Tensor, key: int, shape: list[int]) -> torch.Tensor:
        return values.new_empty(shape)

    return operator


def host_call(fn: HostFunction, values: Any, shape: tuple[int, ...]) -> Any:
    """For ``values`` being traced: an ``xpconv::host_call`` operator that runs
    ``fn(values)`` on the host each time the compiled function runs, a tensor of
    ``shape`` and ``values``' dtype and device (``fn`` is kept for the life of the
    process). See :meth:`Backend.host_call <xpconv.backends.registry.Backend.host_call>`."""
    key = next(_KEYS)
    _HOST_FUNCTIONS[key] = fn
    return _host_operator()(values, key, list(shape))
