"""The training step compiled by ``torch.compile`` on the torch backend: the same results
as the eager step to the rounding of the dtype, one compile per input shape whatever
the learning rate, host callbacks inside the compiled step, and the eager step where
no C++ compiler is found.

Each compile takes seconds, so the models are tiny, the shapes few, and the cases not
needed to cover each option once are marked slow. The suite runs torch steps eagerly
by default (``XPCONV_COMPILE=jax``, set in ``conftest.py``): these tests ask for the
compiled step with ``compile=True``, or set ``XPCONV_COMPILE`` themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numerics import assert_scaled_close

import xpconv as xc
from xpconv.backends import registry as xb
from xpconv.train.step import TrainStep

torch = pytest.importorskip("torch", reason="the compiled torch step needs PyTorch")

REPO = Path(__file__).resolve().parents[2]


def _torch_or_skip() -> xb.Backend:
    be = xb.get_backend("torch")
    if not be.can_compile:
        pytest.skip("torch.compile has no C++ compiler here (CXX, else g++)")
    return be


def _model(dtype: str, seed: int = 5) -> xc.Sequential:
    """Convolution, max pooling, batch norm, dense, dropout, dense: every kind of step,
    and buffers the training forward replaces. (No bias right before batch norm: its
    gradient is zero up to rounding, which Adam would scale up to whole steps.)"""
    return xc.Sequential(
        [
            xc.Conv2D(3, 3, padding="same", activation="relu"),
            xc.MaxPool2D(2),
            xc.BatchNorm2D(),
            xc.Flatten(),
            xc.Dense(6, activation="relu"),
            xc.Dropout(0.25),
            xc.Dense(4),
        ],
        backend="torch",
        dtype=dtype,
        seed=seed,
        input_shape=(1, 6, 6),
    )


def _batch(n: int = 5, seed: int = 0, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 6, 6)).astype(dtype), rng.integers(0, 4, n)


OPTIMIZERS = {
    "sgd-momentum": lambda: xc.SGD(0.1, momentum=0.9, final_lr=0.02),
    "adam": lambda: xc.Adam(0.01, weight_decay=0.001),
}


def _halve(grads: dict) -> dict:
    return {name: g * 0.5 for name, g in grads.items()}


def _tol(dtype: str) -> float:
    """Compiled against eager: the same arithmetic, ordered and fused by the compiler."""
    return 1e-5 if dtype == "float32" else 1e-12


def _host(arrays: dict) -> dict[str, np.ndarray]:
    return {
        k: np.asarray(torch.as_tensor(v).detach().cpu(), dtype=np.float64)
        for k, v in arrays.items()
    }


def _assert_same_run(compiled: TrainStep, eager: TrainStep, dtype: str, steps: int = 3) -> None:
    x, y = _batch(dtype=dtype)
    tol = _tol(dtype)
    for i in range(steps):
        got, expected = compiled(x, y), eager(x, y)
        assert got.shape == () and got.dtype == expected.dtype
        assert abs(float(got) - float(expected)) <= tol * max(abs(float(expected)), 1.0), i
        assert_scaled_close(
            _host({"o": compiled.last_output})["o"],
            _host({"o": eager.last_output})["o"],
            tol,
            f"outputs of step {i}",
        )
    for what, get in (
        ("parameters", lambda s: s.model.state_dict()),
        ("buffers", lambda s: _host(s.model.buffers())),
        ("optimizer state", lambda s: _host(s.optimizer.state_arrays())),
    ):
        a, b = get(compiled), get(eager)
        assert set(a) == set(b) and a, what
        for name in a:
            assert_scaled_close(np.asarray(a[name]), np.asarray(b[name], np.float64), tol, name)
    assert compiled.optimizer.step_count == eager.optimizer.step_count == steps


#: each option value once in the fast set (two compiled models); the rest of the
#: product is slow
COVERING = {
    ("float32", "sgd-momentum", False),
    ("float64", "adam", True),
}


@pytest.mark.parametrize(
    "dtype, kind, hooked",
    [
        pytest.param(d, k, h, marks=() if (d, k, h) in COVERING else pytest.mark.slow)
        for d in ("float32", "float64")
        for k in sorted(OPTIMIZERS)
        for h in (False, True)
    ],
)
def test_compiled_torch_step_equals_the_eager_step(dtype: str, kind: str, hooked: bool) -> None:
    """Three steps with batch norm and dropout: losses, outputs, weights, running
    statistics and optimizer state agree with the eager step to the dtype's rounding,
    with the whole step compiled or, with a gradient hook, its two halves."""
    _torch_or_skip()
    steps = []
    for compile in (True, False):
        opt = OPTIMIZERS[kind]()
        opt.setup(3)
        hook = _halve if hooked else None
        steps.append(TrainStep(_model(dtype), opt, gradient_hook=hook, compile=compile))
    assert steps[0].compiled and not steps[1].compiled
    _assert_same_run(steps[0], steps[1], dtype)
    used = {k: f._cache_size() for k, f in steps[0]._compiled.items()}
    assert used == (
        {"whole": 0, "gradients": 1, "update": 1}
        if hooked
        else {"whole": 1, "gradients": 0, "update": 0}
    )


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_a_changing_learning_rate_and_step_do_not_recompile() -> None:
    """A decaying rate and the step number are 0-d tensors: one trace and one dynamo
    graph for four steps; a new batch size is one more of each."""
    _torch_or_skip()
    opt = xc.SGD(0.1, momentum=0.9, final_lr=0.01)
    opt.setup(6)
    step = TrainStep(_model("float32"), opt, compile=True)
    x, y = _batch()
    step(x, y)
    whole, graphs = step._compiled["whole"], _graphs()
    rates = set()
    for _ in range(3):
        rates.add(opt.lr)
        step(x, y)
    assert len(rates) == 3 and whole._cache_size() == 1 and _graphs() == graphs
    step(*_batch(4))
    assert whole._cache_size() == 2 and _graphs() == graphs + 1


def test_compile_none_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TrainStep(compile=None)`` compiles on torch unless ``XPCONV_COMPILE`` names
    other backends only; ``compile=True`` compiles where it can, ``False`` never."""
    be = _torch_or_skip()
    model = _model("float32")
    monkeypatch.delenv("XPCONV_COMPILE", raising=False)
    assert be.compiles_by_default and TrainStep(model, xc.SGD(0.1)).compiled
    assert not be.compiles_inference  # inference stays layer by layer on torch
    monkeypatch.setenv("XPCONV_COMPILE", "jax")
    assert not TrainStep(model, xc.SGD(0.1)).compiled
    assert TrainStep(model, xc.SGD(0.1), compile=True).compiled
    monkeypatch.setenv("XPCONV_COMPILE", "jax, Torch")
    assert TrainStep(model, xc.SGD(0.1)).compiled
    monkeypatch.setenv("XPCONV_COMPILE", "none")
    assert not TrainStep(model, xc.SGD(0.1)).compiled
    assert not TrainStep(model, xc.SGD(0.1), compile=False).compiled


def test_a_host_call_runs_at_every_call_of_the_compiled_function() -> None:
    """``Backend.host_call`` inside a compiled function is a callback of the compiled
    code: it sees each call's values, not the trace's."""
    be = _torch_or_skip()
    seen: list[np.ndarray] = []

    def on_host(values: np.ndarray) -> np.ndarray:
        seen.append(values.copy())
        return np.stack([values, values * 10.0])

    def fn(x):
        return be.host_call(on_host, x * 2.0, (2, *x.shape)) + 1.0

    compiled = be.compile(fn)
    for value in (1.0, 3.0):
        out = compiled(be.asarray(np.full(3, value)))
        np.testing.assert_allclose(be.to_numpy(out), [[2 * value + 1] * 3, [20 * value + 1] * 3])
    assert [float(v[0]) for v in seen] == [2.0, 6.0]
    assert compiled._cache_size() == 1


def test_without_a_cpp_compiler_the_torch_step_runs_eagerly() -> None:
    """With ``CXX`` naming no compiler (torch.compile would find none), the torch
    backend does not compile, and the default step runs eagerly, unchanged."""
    program = textwrap.dedent(
        """
        import numpy as np
        import xpconv as xc
        from xpconv.backends import registry as xb
        be = xb.get_backend("torch")
        assert not be.can_compile and not be.compiles_by_default
        model = xc.Sequential([xc.Flatten(), xc.Dense(3)], backend="torch", seed=0,
                              input_shape=(4,))
        twin = xc.Sequential([xc.Flatten(), xc.Dense(3)], backend="torch", seed=0,
                             input_shape=(4,))
        step = xc.TrainStep(model, xc.SGD(0.1), compile=True)
        assert not step.compiled
        x, y = np.ones((2, 4)), np.array([0, 2])
        loss = step(x, y)
        expected = twin.train_batch(x, y)
        assert float(loss) == float(expected), (float(loss), float(expected))
        try:
            be.compile(lambda a: a)
        except xb.BackendError as exc:
            assert "does not compile" in str(exc)
        else:
            raise AssertionError("compile without a compiler")
        print("eager")
        """
    )
    env = {**os.environ, "CXX": str(REPO / "no-such-dir" / "c++"), "XPCONV_COMPILE": ""}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "eager", proc.stderr


@pytest.mark.slow
def test_trainer_on_torch_compiles_by_default_and_matches_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Trainer.fit`` on torch with ``XPCONV_COMPILE`` unset: compiled steps (the last,
    smaller batch a second shape), the eager run's history and weights to float32
    rounding."""
    _torch_or_skip()
    monkeypatch.delenv("XPCONV_COMPILE", raising=False)
    x, y = _batch(13, seed=4)
    runs = []
    for compile in (None, False):
        trainer = xc.Trainer(_model("float32"), xc.SGD(0.05, momentum=0.9), progress=False)
        trainer.train_step = TrainStep(trainer.model, trainer.optimizer, compile=compile)
        history = trainer.fit(x, y, batch_size=5, epochs=2)
        runs.append((trainer, history))
    (compiled, h_c), (eager, h_e) = runs
    assert compiled.train_step.compiled and not eager.train_step.compiled
    assert compiled.train_step._compiled["whole"]._cache_size() == 2
    np.testing.assert_allclose(h_c.as_dict()["loss"], h_e.as_dict()["loss"], rtol=1e-5)
    a, b = compiled.model.state_dict(), eager.model.state_dict()
    for name in a:
        assert_scaled_close(a[name], b[name].astype(np.float64), 1e-4, name)
