"""The backend module: selection, defaults, transfers, seeded randomness, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import Case

from xpconv import _host
from xpconv import backend as xb


def test_select_by_name_and_alias() -> None:
    assert xb.get_backend("numpy").name == "numpy"
    assert xb.get_backend("np") is xb.get_backend("numpy")
    assert xb.get_backend("numpy").float_dtype == xb.get_backend("numpy").xp.float32


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"backend: expected one of .*'numpy'.* got 'jaxx'"):
        xb.get_backend("jaxx")


def test_missing_library_names_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    monkeypatch.setattr(xb, "_CACHE", {})
    with pytest.raises(xb.BackendError, match=r"pip install 'xpconv\[cupy\]'.*cupy-cuda12x"):
        xb.get_backend("cupy")


def test_torch_cuda_without_device_is_clear() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(xb.BackendError, match="no CUDA device"):
        xb.get_backend("torch:cuda")


def test_default_from_environment() -> None:
    code = "from xpconv import backend; print(backend.default_backend().name)"
    env = {"XPCONV_BACKEND": "array_api_strict", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "array_api_strict", out.stderr


def test_set_default_backend() -> None:
    try:
        xb.set_default_backend("array_api_strict")
        assert xb.default_backend().name == "array_api_strict"
        with pytest.raises(ValueError, match="backend"):
            xb.set_default_backend("nope")
    finally:
        xb.set_default_backend(None)
    assert xb.default_backend().name in xb.available_backends()


def test_importing_xpconv_loads_no_array_library() -> None:
    code = (
        "import sys, xpconv, xpconv.functional; "
        "print(sorted(m for m in ('torch', 'cupy', 'array_api_strict') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_transfers_round_trip(case: Case, rng: np.random.Generator) -> None:
    host = rng.normal(size=(3, 4))
    a = case.asarray(host)
    assert case.backend.owns(a)
    back = case.backend.to_numpy(a)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host.astype(case.dtype))
    labels = case.backend.asarray(np.array([1, 2, 3]))
    assert case.backend.to_numpy(labels).dtype == np.int64


def test_float_data_defaults_to_float32(case: Case) -> None:
    be = case.backend
    assert be.asarray(np.ones(3)).dtype == be.xp.float32
    assert be.asarray(np.ones(3), dtype="float64").dtype == be.xp.float64


def test_seeded_values_identical_on_every_backend(case: Case) -> None:
    be = case.backend
    a = be.to_numpy(be.normal(np.random.default_rng(7), (5, 6), scale=0.1))
    b = be.to_numpy(be.uniform(np.random.default_rng(7), (4,)))
    ref = xb.get_backend("numpy")
    np.testing.assert_array_equal(a, ref.normal(np.random.default_rng(7), (5, 6), scale=0.1))
    np.testing.assert_array_equal(b, ref.uniform(np.random.default_rng(7), (4,)))


def test_backend_of_and_check(case: Case) -> None:
    a = case.asarray(np.ones(2))
    assert xb.backend_of(a).name == case.backend_name
    case.backend.check(a, "x")
    other = "numpy" if case.backend_name != "numpy" else "array_api_strict"
    with pytest.raises(xb.BackendError, match=r"x: expected an array of backend"):
        xb.get_backend(other).check(a, "x")


def test_namespace_of_rejects_non_arrays() -> None:
    with pytest.raises(TypeError, match=r"x: expected an array, got builtins.list"):
        xb.namespace_of(x=[1.0, 2.0])


def test_numpy_backend_keeps_freed_memory_unless_told_not_to(monkeypatch) -> None:
    if sys.platform != "linux":
        pytest.skip("the allocator setting exists on Linux with glibc only")
    assert _host.keep_freed_memory() is True
    monkeypatch.setenv("XPCONV_KEEP_FREED_MEMORY", "0")
    assert _host.keep_freed_memory() is False


_IDLE_BLAS_CPU = """
import resource, sys, time
import numpy as np
from xpconv import _host
square = np.ones((600, 600), dtype=np.float32)
quieted = _host.quiet_blas_threads()
square @ square
before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
time.sleep(0.3)
print(quieted, resource.getrusage(resource.RUSAGE_SELF).ru_utime - before)
"""


def _idle_blas_cpu(timeout: str | None) -> tuple[str, float]:
    """(whether the setting acted, CPU seconds the process burns while asleep for 0.3 s
    after a product), in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if timeout is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = timeout
    done = subprocess.run(
        [sys.executable, "-c", _IDLE_BLAS_CPU], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    quieted, seconds = done.stdout.split()
    return quieted, float(seconds)


def test_numpy_backend_makes_idle_blas_threads_sleep() -> None:
    if not _host.openblas_paths() or (os.cpu_count() or 1) < 2:
        pytest.skip("needs NumPy on a multi-threaded OpenBLAS (Linux, 2+ cores)")
    # OpenBLAS's default (2**28 cycles): the workers spin for about 0.1 s after a product
    assert _idle_blas_cpu("28") == ("False", pytest.approx(0.1, abs=0.07))
    quieted, spun = _idle_blas_cpu(None)
    assert quieted == "True"
    assert spun < 0.02
