"""The backend module: selection, defaults, transfers, seeded randomness, errors."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import Case

from xpconv.backends import registry as xb


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


def test_cupy_without_a_visible_device_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    """CuPy installed but no device visible (CUDA_VISIBLE_DEVICES=""): the error says
    that no device was found, not a CuPy traceback later."""
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 0)
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=runtime)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(xb, "_CACHE", {})
    with pytest.raises(xb.BackendError) as info:
        xb.get_backend("cupy")
    assert str(info.value) == "backend 'cupy': no CUDA device found (nvidia-smi shows none)"


def test_torch_cuda_without_device_is_clear() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(xb.BackendError, match="no CUDA device"):
        xb.get_backend("torch:cuda")


def test_default_from_environment() -> None:
    code = "from xpconv.backends import registry; print(registry.default_backend().name)"
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
        "import sys, xpconv, xpconv.ops; "
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
    for nothing in ({}, {"x": None, "bias": None}):  # no array at all: nothing to go by
        with pytest.raises(TypeError, match="^expected at least one array$"):
            xb.namespace_of(**nothing)


def test_a_backend_owns_only_arrays_on_its_own_device() -> None:
    pytest.importorskip("array_api_strict")
    default, second = xb.get_backend("array_api_strict"), xb.get_backend("array_api_strict:device1")
    a = second.asarray(np.ones(3))
    assert second.owns(a) and not default.owns(a)
    with pytest.raises(xb.BackendError, match=r"^x: expected an array of backend .*device1"):
        default.check(a, "x")
    assert not default.owns(np.ones(3)) and not default.owns([1.0])


def test_placeholders_of_a_compiled_function_are_traced() -> None:
    """JAX tracers and PyTorch fake tensors are placeholders (nothing made from them
    may be cached); concrete arrays are not."""
    assert not xb.is_traced(np.ones(2))
    seen: list[bool] = []
    jax = pytest.importorskip("jax")
    jax.jit(lambda a: seen.append(xb.is_traced(a)) or a)(np.ones(2))
    assert seen == [True] and not xb.is_traced(jax.numpy.ones(2))
    torch = pytest.importorskip("torch")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.ones(2))
    assert xb.is_traced(fake) and not xb.is_traced(torch.ones(2))
