"""Backends: the one place that knows concrete array libraries.

A :class:`Backend` bundles an Array-API namespace (obtained through
``array_api_compat``), the device arrays live on, the default float dtype, and the
transfers between host NumPy arrays and that device. Each array library is imported
lazily, on first selection, so ``import xpconv`` needs only NumPy and
array-api-compat.

Select a backend by name::

    from xpconv.backends import registry as backend
    be = backend.get_backend("numpy")          # or "cupy", "torch", "array_api_strict"
    be = backend.get_backend("torch", device="cuda")
    backend.set_default_backend("cupy")        # process default (also XPCONV_BACKEND)

Random numbers never come from the array libraries: they are drawn from one seeded
``numpy.random.Generator`` on the host and moved to the device, so the same seed gives
bit-identical values on every backend.

Every backend is one :class:`BackendSpec` in a registry: its name and aliases, how to
recognise its arrays, and a loader that imports the library and returns a
:class:`Backend` for a device. ``get_backend``, ``backend_of``, ``available_backends``
and the error messages all read the registry, so adding a backend is one call to
:func:`register_backend`; the numerical code does not change.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "Backend",
    "BackendError",
    "BackendSpec",
    "available_backends",
    "backend_of",
    "default_backend",
    "get_backend",
    "is_traced",
    "namespace_of",
    "register_backend",
    "registered_backends",
    "set_default_backend",
    "unregister_backend",
]

Array = Any
#: a function of host arrays, run from a compiled function (see :meth:`Backend.host_call`)
HostFunction = Callable[[np.ndarray], np.ndarray]


class BackendError(RuntimeError):
    """A backend cannot be selected, or arrays from different backends were mixed."""


@dataclass(frozen=True)
class Backend:
    """An array library, a device on it, and the transfers to and from the host.

    Attributes:
        name: ``"numpy"``, ``"cupy"``, ``"torch"`` or ``"array_api_strict"``.
        xp: the Array-API namespace (from ``array_api_compat``).
        device: the device new arrays are created on.
        float_dtype: the default floating dtype of models on this backend (float32).
    """

    name: str
    xp: Any
    device: Any
    float_dtype: Any
    _to_numpy: Callable[[Array], np.ndarray] = field(repr=False, compare=False)
    # Optional library hooks: why a float dtype name cannot be used now (None: it can),
    # and the host integer dtype the library stores a host integer dtype as.
    _dtype_problem: Callable[[str], str | None] | None = field(
        default=None, repr=False, compare=False
    )
    _host_int_dtype: Callable[[np.dtype], np.dtype] | None = field(
        default=None, repr=False, compare=False
    )
    # ``_compile(fn, donate_argnums)``: a compiled version of a pure function of arrays
    _compile: Callable[[Callable[..., Any], tuple[int, ...]], Callable[..., Any]] | None = field(
        default=None, repr=False, compare=False
    )
    # whether inference (``Sequential.predict``, ``evaluate``) runs compiled too, where
    # the backend compiles (see :attr:`compiles_inference`)
    _compile_inference: bool = field(default=True, repr=False, compare=False)
    # ``_host_call(fn, values, shape)``: :meth:`host_call` inside compiled functions
    _host_call: Callable[[HostFunction, Array, tuple[int, ...]], Array] | None = field(
        default=None, repr=False, compare=False
    )
    # the host scheduling of the library's kernels: the opt-in process-wide tuning, and
    # what runs between two training steps (see :meth:`tune_host`, :meth:`between_steps`)
    _tune_host: Callable[[], dict[str, bool]] | None = field(
        default=None, repr=False, compare=False
    )
    _between_steps: Callable[[], Any] | None = field(default=None, repr=False, compare=False)

    def tune_host(self) -> dict[str, bool]:
        """Apply this backend's process-wide host tuning (NumPy:
        :func:`xpconv.backends.numpy.host.tune_host`); returns what was done (empty for
        a backend without any). Changes the whole process: call it only when asked."""
        return {} if self._tune_host is None else self._tune_host()

    def between_steps(self) -> None:
        """Called by the training loop before each step: lets the backend adapt its
        kernels' thread use to the machine's load (NumPy, once :meth:`tune_host` switched
        it on). Changes no result; does nothing otherwise."""
        if self._between_steps is not None:
            self._between_steps()

    @property
    def can_compile(self) -> bool:
        """Whether :meth:`compile` makes a compiled function rather than none: JAX;
        PyTorch where ``torch.compile`` finds what it builds kernels with (a C++
        compiler for the CPU, Triton for CUDA)."""
        return self._compile is not None

    @property
    def compiles_by_default(self) -> bool:
        """Whether what compiles unless told otherwise (``TrainStep(compile=None)``,
        compiled inference) compiles here: the backend can compile, and the environment
        variable ``XPCONV_COMPILE``, when set and not empty, names it (backend names
        separated by commas, ``"jax,torch"``; ``"none"``: no backend). Read at each call."""
        if not self.can_compile:
            return False
        names = os.environ.get("XPCONV_COMPILE", "").strip()
        return not names or self.name in {n.strip().lower() for n in names.split(",")}

    @property
    def compiles_inference(self) -> bool:
        """Whether ``Sequential.predict`` and ``evaluate`` run compiled here (JAX, see
        :attr:`compiles_by_default`), rather than layer by layer. PyTorch compiles only
        training steps: inference is called on batches of many shapes, and each new
        shape is a compile."""
        return self._compile_inference and self.compiles_by_default

    def compile(
        self, fn: Callable[..., Any], donate_argnums: tuple[int, ...] = ()
    ) -> Callable[..., Any]:
        """``fn``, a pure function of arrays (nested dicts and tuples of them), compiled
        for this backend (once per input shape), with the arguments at
        ``donate_argnums`` donated where the library can (JAX: their buffers are
        reused for the outputs, and the caller must not use them afterwards; PyTorch
        ignores it). Raises ``BackendError`` on backends that do not compile (see
        :attr:`can_compile`)."""
        if self._compile is None:
            raise BackendError(f"backend {self.name!r} does not compile functions")
        return self._compile(fn, donate_argnums)

    def host_call(self, fn: HostFunction, values: Array, shape: tuple[int, ...]) -> Array:
        """``fn(values)`` run on the host: ``values`` copied to a NumPy array, ``fn``'s
        result, of ``shape`` and ``values``' dtype, moved back to the device. Inside a
        function being compiled it is a host callback of the compiled code (JAX:
        ``io_callback``, ordered; PyTorch: an opaque custom operator), so ``fn`` runs at
        every call of the compiled function, not once while tracing; elsewhere it is
        called directly."""
        if self._host_call is not None and is_traced(values):
            return self._host_call(fn, values, shape)
        out = np.asarray(fn(self.to_numpy(values)))
        return self.asarray(out, dtype=out.dtype.name)

    @property
    def label(self) -> str:
        """A short human-readable name such as ``"torch:cuda:0"``."""
        dev = str(self.device)
        if self.name in ("numpy",) or dev in ("cpu", "CPU_DEVICE"):
            return self.name
        return f"{self.name}:{dev}"

    def dtype(self, name: str | Any) -> Any:
        """The namespace's dtype for ``"float32"``/``"float64"`` (or a dtype itself)."""
        if isinstance(name, str):
            if name not in ("float32", "float64"):
                raise ValueError(f"dtype: expected 'float32' or 'float64', got {name!r}")
            problem = self._dtype_problem(name) if self._dtype_problem else None
            if problem:
                raise BackendError(f"dtype: {problem}")
            return getattr(self.xp, name)
        if name in (self.xp.float32, self.xp.float64):
            return name
        return self.dtype(_dtype_name(name))

    def asarray(self, a: Any, dtype: Any = None) -> Array:
        """Move host data (NumPy array, list, scalar) to this backend's device.

        ``dtype`` may be a dtype of this namespace or a name such as ``"float32"``;
        without it, floating data gets ``float_dtype`` and integers keep theirs.
        """
        if array_api_compat.is_array_api_obj(a) and not isinstance(a, np.ndarray):
            a = self.to_numpy(a)
        host = np.asarray(a)
        if dtype is None:
            dtype = self.float_dtype if host.dtype.kind == "f" else None
        elif isinstance(dtype, str):
            dtype = self.dtype(dtype) if dtype.startswith("float") else getattr(self.xp, dtype)
        if dtype is None:
            if self._host_int_dtype is not None and host.dtype.kind in "iu":
                host = host.astype(self._host_int_dtype(host.dtype), copy=False)
            dtype = getattr(self.xp, host.dtype.name)
        return self.xp.asarray(host, dtype=dtype, device=self.device)

    def to_numpy(self, a: Array) -> np.ndarray:
        """Copy an array of this backend to a host NumPy array."""
        return self._to_numpy(a)

    def owns(self, a: Array) -> bool:
        """Whether ``a`` is an array of this backend on this backend's device."""
        try:
            return backend_of(a).name == self.name and _same_device(
                array_api_compat.device(a), self.device
            )
        except BackendError:
            return False

    def check(self, a: Array, argument: str) -> None:
        """Raise ``BackendError`` unless ``a`` lives on this backend and device."""
        if not self.owns(a):
            raise BackendError(
                f"{argument}: expected an array of backend {self.label!r}, "
                f"got {_describe(a)}; move it with Backend.asarray"
            )

    def uniform(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = None) -> Array:
        """Uniform [0, 1) numbers of ``shape`` drawn on the host from ``rng``."""
        return self.asarray(rng.random(shape), dtype=dtype)

    def normal(
        self,
        rng: np.random.Generator,
        shape: tuple[int, ...],
        scale: float = 1.0,
        dtype: Any = None,
    ) -> Array:
        """Normal(0, scale) numbers of ``shape`` drawn on the host from ``rng``."""
        return self.asarray(rng.normal(0.0, scale, size=shape), dtype=dtype)


def _dtype_name(dtype: Any) -> str:
    text = str(dtype)
    for name in ("float64", "float32", "float16", "bfloat16"):
        if name in text:
            return name
    return text


def _same_device(a: Any, b: Any) -> bool:
    # JAX arrays being traced by ``jax.jit`` report no device: they match any.
    return a is None or b is None or str(a) == str(b)


def _describe(a: Any) -> str:
    try:
        be = backend_of(a)
        return f"an array of backend {be.name!r} on device {array_api_compat.device(a)!s}"
    except BackendError:
        return f"an object of type {type(a).__module__}.{type(a).__qualname__}"


# --------------------------------------------------------------------------- loaders


def _load_numpy(device: Any) -> Backend:
    if device not in (None, "cpu"):
        raise BackendError(f"device: backend 'numpy' has only device 'cpu', got {device!r}")
    from xpconv.backends.numpy import host

    xp = array_api_compat.array_namespace(np.empty(0))
    return Backend(
        "numpy",
        xp,
        "cpu",
        xp.float32,
        np.asarray,
        _tune_host=host.tune_host,
        _between_steps=host.balance_threads,
    )


def _load_array_api_strict(device: Any) -> Backend:
    try:
        import array_api_strict as strict
    except ImportError as exc:
        raise BackendError(
            "backend 'array_api_strict' needs the package array-api-strict: "
            "pip install array-api-strict"
        ) from exc
    dev = strict.Device(device) if isinstance(device, str) else device
    if dev is None:
        dev = strict.Device("CPU_DEVICE")
    cpu = strict.Device("CPU_DEVICE")

    def to_numpy(a: Array) -> np.ndarray:
        return np.asarray(strict.asarray(a, device=cpu, copy=True) if a.device != cpu else a)

    return Backend("array_api_strict", strict, dev, strict.float32, to_numpy)


def _load_torch(device: Any) -> Backend:
    try:
        import torch
    except ImportError as exc:
        raise BackendError(
            "backend 'torch' needs PyTorch: pip install 'xpconv[torch]' (or torch>=2.1)"
        ) from exc
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(
                "backend 'torch' with device 'cuda': PyTorch sees no CUDA device; install a "
                "CUDA build of torch and check the driver (nvidia-smi)"
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    xp = array_api_compat.array_namespace(torch.empty(0))

    def to_numpy(a: Array) -> np.ndarray:
        return a.detach().cpu().numpy()

    from xpconv.backends.torch import compiler

    compile_fn = compiler.compile_function if compiler.can_compile(dev) else None
    return Backend(
        "torch",
        xp,
        dev,
        xp.float32,
        to_numpy,
        _compile=compile_fn,
        _compile_inference=False,
        _host_call=compiler.host_call,
    )


def _load_cupy(device: Any) -> Backend:
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(
            "backend 'cupy' needs CuPy: pip install 'xpconv[cupy]' "
            "(cupy-cuda12x; use cupy-cuda13x for CUDA 13)"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise BackendError(
            f"backend 'cupy': no usable CUDA device ({exc}); check the NVIDIA driver "
            "(nvidia-smi) and that the CuPy package matches the CUDA version"
        ) from exc
    if count < 1:
        raise BackendError("backend 'cupy': no CUDA device found (nvidia-smi shows none)")
    index = 0 if device is None else int(str(device).rsplit(":", 1)[-1])
    dev = cupy.cuda.Device(index)
    xp = array_api_compat.array_namespace(cupy.empty(0))
    return Backend("cupy", xp, dev, xp.float32, cupy.asnumpy)


def _load_jax(device: Any) -> Backend:
    try:
        import jax
    except ImportError as exc:
        raise BackendError(
            "backend 'jax' needs JAX: pip install 'xpconv[jax]' (or 'jax[cpu]')"
        ) from exc
    if device is None or hasattr(device, "platform"):
        dev = device if device is not None else jax.devices()[0]
    else:
        platform, _, index = str(device).partition(":")
        platform = {"cuda": "gpu"}.get(platform, platform)
        try:
            devices = jax.devices(platform)
        except RuntimeError as exc:
            raise BackendError(
                f"backend 'jax' with device {device!r}: JAX has no {platform!r} devices "
                f"({exc}); install a CUDA build of JAX (pip install 'jax[cuda12]') for 'gpu'"
            ) from exc
        position = int(index) if index else 0
        if not 0 <= position < len(devices):
            raise BackendError(
                f"device: backend 'jax' has {len(devices)} {platform!r} device(s), got {device!r}"
            )
        dev = devices[position]
    xp = array_api_compat.array_namespace(jax.numpy.empty(0))

    def dtype_problem(name: str) -> str | None:
        if name == "float64" and not jax.config.jax_enable_x64:  # type: ignore[attr-defined]
            return (
                "backend 'jax' computes in float64 only in JAX's 64-bit mode, which is off; "
                "enable it before creating arrays with "
                "jax.config.update('jax_enable_x64', True) or JAX_ENABLE_X64=1 in the "
                "environment"
            )
        return None

    def host_int_dtype(dtype: np.dtype) -> np.dtype:
        return np.dtype(jax.dtypes.canonicalize_dtype(dtype))

    def to_numpy(a: Array) -> np.ndarray:
        # a copy: a step that donates its parameters frees the buffers a view would see
        return np.array(a)

    def compile_fn(fn: Callable[..., Any], donate: tuple[int, ...]) -> Callable[..., Any]:
        return jax.jit(fn, donate_argnums=donate)

    return Backend(
        "jax",
        xp,
        dev,
        xp.float32,
        to_numpy,
        dtype_problem,
        host_int_dtype,
        compile_fn,
        _host_call=_jax_host_call,
    )


def _jax_host_call(fn: HostFunction, values: Array, shape: tuple[int, ...]) -> Array:
    """:meth:`Backend.host_call` in a traced JAX function: an ordered ``io_callback``."""
    import jax
    from jax.experimental import io_callback

    spec = jax.ShapeDtypeStruct(shape, values.dtype)
    return io_callback(fn, spec, values, ordered=True)


@dataclass(frozen=True)
class BackendSpec:
    """One registered backend: how to recognise its arrays and how to load it.

    Attributes:
        name: the name ``get_backend`` takes (lower case).
        load: ``load(device)`` imports the library and returns a :class:`Backend` on
            ``device`` (``None``: the library's default); raises ``BackendError`` naming
            the package to install when the library or device is missing.
        is_array: whether an object is an array of this library. Must not import the
            library (check ``type(a).__module__``, or use ``array_api_compat.is_*``).
        aliases: other accepted names (``"np"``).
    """

    name: str
    load: Callable[[Any], Backend]
    is_array: Callable[[Any], bool]
    aliases: tuple[str, ...] = ()


def _is_strict_array(a: Any) -> bool:
    return type(a).__module__.startswith("array_api_strict")


_REGISTRY: dict[str, BackendSpec] = {}
_ALIASES: dict[str, str] = {"array-api-strict": "array_api_strict"}


def register_backend(spec: BackendSpec, *, replace: bool = False) -> None:
    """Add a backend to the registry (``replace=True`` to redefine an existing name).

    Arrays are recognised by the most recently registered spec first, so a backend
    wrapping another library's arrays can claim them (narrow its ``is_array``).
    """
    if not isinstance(spec, BackendSpec):
        raise TypeError(f"spec: expected a BackendSpec, got {type(spec).__name__}")
    name = spec.name.strip().lower()
    if not name or ":" in name:
        raise ValueError(f"spec.name: expected a name without ':', got {spec.name!r}")
    taken = name in _REGISTRY or name in _ALIASES
    if taken and not replace:
        raise ValueError(f"spec.name: backend {name!r} is registered already")
    _REGISTRY.pop(name, None)
    _REGISTRY[name] = spec
    for alias in spec.aliases:
        _ALIASES[alias.strip().lower()] = name
    for key in [k for k in _CACHE if k[0] == name]:
        del _CACHE[key]


def unregister_backend(name: str) -> None:
    """Remove a registered backend (and its aliases and cached instances)."""
    if name not in _REGISTRY:
        raise ValueError(f"name: expected one of {sorted(_REGISTRY)}, got {name!r}")
    del _REGISTRY[name]
    for alias in [a for a, target in _ALIASES.items() if target == name]:
        del _ALIASES[alias]
    for key in [k for k in _CACHE if k[0] == name]:
        del _CACHE[key]


def registered_backends() -> list[str]:
    """Names of every registered backend, importable here or not."""
    return list(_REGISTRY)


_CACHE: dict[tuple[str, str], Backend] = {}
_default_name: str | None = None


def _split(name: str, device: Any) -> tuple[str, Any]:
    if ":" in name and device is None:  # "torch:cuda", "cupy:1"
        name, device = name.split(":", 1)
    return _ALIASES.get(name, name), device


def get_backend(name: str | Backend | None = None, device: Any = None) -> Backend:
    """Return the backend called ``name`` (default: the process default).

    Args:
        name: ``"numpy"``, ``"cupy"``, ``"torch"``, ``"array_api_strict"``, optionally
            with a device after a colon (``"torch:cuda"``), or a ``Backend``.
        device: the device (``"cuda"``, ``"cuda:1"``, ``"device1"`` ...); default: the
            library's default device.

    Raises:
        ValueError: unknown name.
        BackendError: the library is missing or has no usable device; the message names
            the package to install.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        name = default_backend_name()
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a name such as 'numpy', got {type(name).__name__}")
    key_name, device = _split(name.strip().lower(), device)
    if key_name not in _REGISTRY:
        raise ValueError(f"backend: expected one of {sorted(_REGISTRY)}, got {name!r}")
    key = (key_name, str(device))
    if key not in _CACHE:
        _CACHE[key] = _REGISTRY[key_name].load(device)
    return _CACHE[key]


def default_backend_name() -> str:
    """The process default: ``set_default_backend``, else ``XPCONV_BACKEND``, else numpy."""
    return _default_name or os.environ.get("XPCONV_BACKEND", "").strip() or "numpy"


def default_backend() -> Backend:
    """The process default backend as a ``Backend``."""
    return get_backend(None)


def set_default_backend(name: str | None) -> None:
    """Set the process default backend by name (``None`` restores the environment's)."""
    global _default_name
    if name is not None:
        get_backend(name)  # fail now, not at first use
    _default_name = name


def available_backends() -> list[str]:
    """Names of the backends whose library imports and has a usable device here."""
    names = []
    for name in _REGISTRY:
        try:
            get_backend(name)
        except BackendError:
            continue
        names.append(name)
    return names


def is_traced(a: Array) -> bool:
    """Whether ``a`` is a placeholder of a function being compiled (a JAX tracer, a
    PyTorch fake tensor, or any tensor while TorchDynamo traces): arrays made from it
    must not outlive the trace, so nothing built from it may be cached."""
    jax_core = sys.modules.get("jax.core")
    tracer = getattr(jax_core, "Tracer", None)
    if tracer is not None and isinstance(a, tracer):
        return True
    fake = getattr(sys.modules.get("torch._subclasses.fake_tensor"), "FakeTensor", None)
    if fake is not None and isinstance(a, fake):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and array_api_compat.is_torch_array(a) and _dynamo_tracing(torch)


def _dynamo_tracing(torch: Any) -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and bool(compiler.is_compiling())


def backend_of(a: Array) -> Backend:
    """The backend (with the array's device) that array ``a`` belongs to."""
    for spec in reversed(_REGISTRY.values()):
        if spec.is_array(a):
            if spec.name == "numpy":
                return get_backend("numpy")
            return get_backend(spec.name, device=array_api_compat.device(a))
    raise BackendError(
        f"expected an array of a supported backend ({', '.join(_REGISTRY)}), "
        f"got {type(a).__module__}.{type(a).__qualname__}"
    )


for _spec in (
    BackendSpec("numpy", _load_numpy, array_api_compat.is_numpy_array, aliases=("np",)),
    BackendSpec("torch", _load_torch, array_api_compat.is_torch_array),
    BackendSpec("cupy", _load_cupy, array_api_compat.is_cupy_array),
    BackendSpec("array_api_strict", _load_array_api_strict, _is_strict_array, aliases=("strict",)),
    BackendSpec("jax", _load_jax, array_api_compat.is_jax_array),
):
    register_backend(_spec)
del _spec


def namespace_of(**arrays: Array) -> Any:
    """The Array-API namespace shared by the named arrays (``None`` values are skipped).

    Raises ``BackendError`` naming both arguments when arrays come from two backends
    or two devices, and ``TypeError`` when an argument is not an array at all.
    """
    first_name, first = None, None
    for name, a in arrays.items():
        if a is None:
            continue
        if not array_api_compat.is_array_api_obj(a) or isinstance(a, (int, float, bool)):
            raise TypeError(
                f"{name}: expected an array, got {type(a).__module__}.{type(a).__qualname__}"
            )
        if first is None:
            first_name, first = name, a
            continue
        same_lib = type(a) is type(first) or backend_of(a).name == backend_of(first).name
        if not same_lib or not _same_device(
            array_api_compat.device(a), array_api_compat.device(first)
        ):
            raise BackendError(
                f"arrays from different backends or devices: {first_name} is "
                f"{_describe(first)} but {name} is {_describe(a)}"
            )
    if first is None:
        raise TypeError("expected at least one array")
    return array_api_compat.array_namespace(first)
