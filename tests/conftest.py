"""Shared fixtures: the backend x device x dtype cases every numerical test runs on.

A case turns host float64 NumPy data into arrays of its backend, device and dtype,
and states the tolerance for comparing with a float64 reference:

- float64: rtol 1e-10 (relative to the largest reference magnitude)
- float32: 4 * sqrt(eps32) ~ 1.4e-3; GPU float32 twice that.

The other tolerances (finite differences, composed layers) are in ``numerics.py``.

Cases whose library or device is missing are skipped with a visible reason (``-rs``).
In CI (``CI=true``) a missing oracle, data set or CPU backend fails the run instead
(:func:`require_or_skip`); only GPU cases may skip there.

Training steps compile by default only on JAX here: ``XPCONV_COMPILE=jax`` is set for
the whole run (and the processes it starts) unless the environment sets it. PyTorch's
``torch.compile`` takes seconds per model and batch shape, and the suite trains many
small models on torch, so there the steps run eagerly unless a test asks for the
compiled step (``TrainStep(compile=True)``, or ``XPCONV_COMPILE`` changed): those tests
are in ``tests/train/test_compiled_step.py``. ``XPCONV_COMPILE=jax,torch pytest`` runs
every torch step compiled.

JAX runs in its 64-bit mode for the whole test run (set here, before any JAX array
exists), so its float32 and float64 cases share one process: the float32 cases then
also check that nothing is promoted to float64 by accident. JAX with 64-bit mode off,
its default, is covered by a test that runs in a subprocess (``tests/train/test_step.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numerics import assert_scaled_close, composed_tol

from xpconv.backends import registry as xb

os.environ.setdefault("XPCONV_COMPILE", "jax")  # see the module docstring

try:
    import jax
except ImportError:  # the jax cases are skipped with the loader's reason
    pass
else:
    jax.config.update("jax_enable_x64", True)

DATA_DIR = Path(
    os.environ.get("XPCONV_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@dataclass(frozen=True)
class Case:
    """One backend, device and dtype under test."""

    id: str
    backend_name: str
    device: Any
    dtype: str
    readonly: bool = False
    gpu: bool = False

    @property
    def backend(self) -> xb.Backend:
        return xb.get_backend(self.backend_name, device=self.device)

    @property
    def xp(self) -> Any:
        return self.backend.xp

    @property
    def rtol(self) -> float:
        if self.dtype == "float64":
            return 1e-10
        return 4 * math.sqrt(np.finfo(np.float32).eps) * (2 if self.gpu else 1)

    def asarray(self, a: Any, dtype: str | None = None) -> Any:
        """Host data -> an array of this case (floats get the case dtype)."""
        host = np.asarray(a)
        if host.dtype.kind == "f":
            host = host.astype(dtype or self.dtype)
        if self.readonly:
            host = host.copy()
            host.flags.writeable = False
        return self.backend.asarray(host, dtype=None if host.dtype.kind != "f" else host.dtype.name)

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(self.backend.to_numpy(a), dtype=np.float64)

    def host(self, a: Any) -> np.ndarray:
        """Host float64 copy of ``a`` after rounding to this case's dtype."""
        return np.asarray(a).astype(self.dtype).astype(np.float64)

    def assert_close(self, actual: Any, expected: np.ndarray, what: str = "") -> None:
        """``actual`` (an array of this case) matches float64 ``expected``."""
        assert_scaled_close(self.to_numpy(actual), expected, self.rtol, f"{what} on {self.id}")


CASES = [
    Case("numpy-f64", "numpy", None, "float64"),
    Case("numpy-f32", "numpy", None, "float32"),
    Case("numpy-readonly-f64", "numpy", None, "float64", readonly=True),
    Case("strict-f64", "array_api_strict", None, "float64"),
    Case("strict-device1-f32", "array_api_strict", "device1", "float32"),
    Case("torch-cpu-f64", "torch", "cpu", "float64"),
    Case("torch-cpu-f32", "torch", "cpu", "float32"),
    Case("jax-cpu-f32", "jax", "cpu", "float32"),
    Case("cupy-f32", "cupy", None, "float32", gpu=True),
    Case("torch-cuda-f32", "torch", "cuda", "float32", gpu=True),
]
# JAX compiles every op for every new shape, so its float64 case joins only the float64
# tests (finite differences, tight parity); its float32 case runs everywhere.
F64_CASES = [c for c in CASES if c.dtype == "float64"] + [
    Case("jax-cpu-f64", "jax", "cpu", "float64")
]
#: The cases that run another case's code paths again (a library's second dtype, a
#: read-only copy). They are marked ``slow``: the fast loop (``-m "not slow"``) keeps
#: one case per library (NumPy float64, array-api-strict float32 on its second device,
#: PyTorch and JAX float32) and CI runs them all.
REPEATS = {"numpy-f32", "numpy-readonly-f64", "strict-f64", "torch-cpu-f64", "jax-cpu-f64"}


#: How many configurations of a random sweep the fast loop runs; CI runs all of them.
FAST_SWEEP = 12

#: How many configurations of a random sweep the JAX case runs, in CI too. JAX compiles
#: every op for every new shape: one configuration of conv2d's sweep takes about 2.4 s
#: on JAX and 3 ms on NumPy, and the JAX case of the 200-configuration sweep alone was
#: a quarter of the suite's time. The rest skip with this reason; the portable kernels
#: JAX runs are checked on every configuration by array-api-strict.
JAX_SWEEP = 20

#: JAX compiles every op for every new shape (seconds each), so the fast loop runs a
#: test on the JAX case with its first parametrisation only (the first configuration of
#: a sweep), and not at all the tests here, whose code paths on JAX a cheaper test runs.
SLOW_ON_JAX = {
    # 25 geometries each; tests/backends/test_kernels.py compares the same JAX kernels
    "tests/ops/test_conv.py::test_fast_path_matches_portable",
    "tests/ops/test_conv.py::test_fast_col2im_matches_portable",
    # test_buffers_in_state_dict_checkpoints_and_to runs the blocks on JAX
    "tests/nn/test_blocks.py::test_blocks_match_torch_over_training_steps_and_in_eval",
    # tests/nn/test_layer_api.py::test_fused_conv_pool_every_backend runs the fusion
    "tests/nn/test_network.py::test_conv_pool_fusion_changes_nothing",
    # test_conv_dense_step_matches_torch_autograd runs the fused step on JAX
    "tests/nn/test_network.py::test_conv_dense_fusion_changes_nothing",
    # tests/nn/test_preprocessing.py trains a JAX model with the Trainer
    "tests/nn/test_network.py::test_trainer_learns_with_history_and_validation",
    # tests/parallel/test_strategy.py reduces the statistics inside a compiled JAX step
    "tests/ops/test_functional_ops.py::"
    "test_synced_batch_norm_of_the_parts_is_batch_norm_of_the_whole_batch",
    # test_gradient_hook_runs_between_backward_and_update[jax] runs the JAX TrainStep
    "tests/train/test_step.py::test_train_step_equals_train_batch_then_step",
}
#: The MPI programs (``mpiexec``, a Python process per rank) are slow, except this one:
#: two ranks train the one-process model, so the fast loop still runs ``mpiexec``.
FAST_MPI = {
    "tests/parallel/test_distributed.py::test_ranks_train_the_one_process_model_float64"
    "[2-numpy-sgd-162]"
}


def sweep(configs: list[Any], ids: list[str], fast: int = FAST_SWEEP) -> list[Any]:
    """``configs`` as parameters whose first ``fast`` run in the fast loop and the rest
    are marked ``slow`` (a seeded sweep: the same configurations everywhere). A tuple
    holds the values of several argument names."""
    return [
        pytest.param(
            *(c if isinstance(c, tuple) else (c,)),
            id=i,
            marks=[pytest.mark.sweep(k), *([pytest.mark.slow] if k >= fast else [])],
        )
        for k, (c, i) in enumerate(zip(configs, ids))
    ]


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects the slow tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow the repeated JAX parametrisations and the MPI programs (see
    :data:`SLOW_ON_JAX` and :data:`FAST_MPI`); skip the JAX case past the first
    :data:`JAX_SWEEP` configurations of a sweep."""
    jax_seen: set[str] = set()
    for item in items:
        on_jax = _on_jax(item)
        position = item.get_closest_marker("sweep")
        if on_jax and position is not None and position.args[0] >= JAX_SWEEP:
            reason = f"JAX runs the first {JAX_SWEEP} configurations of a sweep (JAX_SWEEP)"
            item.add_marker(pytest.mark.skip(reason=reason))
        if item.get_closest_marker("slow"):
            continue
        if item.get_closest_marker("mpi"):
            if item.nodeid not in FAST_MPI:
                item.add_marker(pytest.mark.slow)
            continue
        if on_jax:
            test = item.nodeid.split("[")[0]
            if test in jax_seen or test in SLOW_ON_JAX:
                item.add_marker(pytest.mark.slow)
            jax_seen.add(test)


def _on_jax(item: pytest.Item) -> bool:
    """Whether ``item`` runs on a JAX case of the ``case`` fixture."""
    params = getattr(item, "callspec", None)
    case = params.params.get("case") if params else None
    return isinstance(case, Case) and case.backend_name == "jax"


def _available(case: Case) -> str | None:
    try:
        case.backend  # noqa: B018 - selecting it is the check
    except xb.BackendError as exc:
        return str(exc)
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_or_skip(available: bool, reason: str) -> None:
    """Skip visibly when something a test needs is missing; in CI (``CI=true``) fail."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{reason}; CI=true requires it (install it or provide the data)")
    pytest.skip(reason)


def _params(cases: list[Case]) -> list[Any]:
    params = []
    for case in cases:
        reason = _available(case)
        if reason and not case.gpu and in_ci():
            reason = None  # the test then fails in the fixture, naming what is missing
        marks = [pytest.mark.skip(reason=f"{case.id}: {reason}")] if reason else []
        if case.gpu:
            marks.append(pytest.mark.gpu)
        if case.id in REPEATS:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@pytest.fixture(params=_params(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    """Every backend x device x dtype combination importable here."""
    return _checked(request.param)


@pytest.fixture(params=_params(F64_CASES))
def case64(request: pytest.FixtureRequest) -> Case:
    """The float64 cases (finite differences, tight parity)."""
    return _checked(request.param)


def _checked(case: Case) -> Case:
    if in_ci() and not case.gpu:  # elsewhere a missing backend was skipped at collection
        reason = _available(case)
        require_or_skip(reason is None, f"{case.id}: {reason}")
    return case


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    path = DATA_DIR / "mnist"
    require_or_skip(
        (path / "train-images-idx3-ubyte.gz").exists(),
        f"full MNIST not found in {path} (set XPCONV_TEST_DATA to its parent)",
    )
    return path


def torch_or_skip() -> Any:
    """The torch module; a visible skip when it is not installed (a failure in CI)."""
    try:
        import torch
    except ImportError as exc:
        require_or_skip(False, f"PyTorch is the independent oracle and is missing ({exc})")
    return torch


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n``) the workers share the cores: OpenBLAS on one thread
    in each worker and in the programs the tests start (unless the environment says
    otherwise). Its idle threads wait spinning, so two workers each training with two
    BLAS threads took 2-5x longer. It reads the setting when NumPy loads, so it is set
    here, in the controller, before the workers start. xpconv's kernels then split
    their large products over their own threads (``host.product_threads``); the
    tests that need OpenBLAS threading set its count themselves."""
    workers = getattr(config.option, "numprocesses", None)
    if workers and not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_per_worker() -> None:
    """Under pytest-xdist (``-n``) the workers share the cores: PyTorch on one thread in
    each, as its threads on the other workers' cores only wait for them."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread for the test (``pytest.mark.usefixtures``): on tiny arrays
    its thread pool only adds waits (seconds per test on a loaded machine)."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def close_composed(case: Case, got: Any, expected: np.ndarray, what: str) -> None:
    """``got`` (an array of ``case``, or host) matches ``expected`` within the tolerance
    of a few layers composed (:func:`numerics.composed_tol`)."""
    got = got if isinstance(got, np.ndarray) else case.to_numpy(got)
    assert_scaled_close(got, expected, composed_tol(case.dtype), f"{what} on {case.id}")
