"""The stateless training step and TrainStep on every backend; the backend registry;
JAX-specific behaviour (compiled step, 64-bit mode, parity with NumPy, checkpoints, CLI).

JAX compiles are slow on a small machine, so the shapes here are tiny and the LeNet
runs are shared through module-scoped fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import CASES, DATA_DIR, Case

import xpconv as xc
from xpconv.backends import registry as xb
from xpconv.train.step import TrainState, TrainStep, train_step

REPO = Path(__file__).resolve().parents[2]


def _small(backend, dtype: str = "float32", seed: int = 3) -> xc.Sequential:
    """Conv + relu + pool (fused), dense + relu, dropout, dense: every kind of step."""
    return xc.Sequential(
        [
            xc.Conv2D(3, 3, padding="same", activation="relu"),
            xc.MaxPool2D(2),
            xc.Flatten(),
            xc.Dense(6, activation="relu"),
            xc.Dropout(0.25),
            xc.Dense(4),
        ],
        backend=backend,
        dtype=dtype,
        seed=seed,
        input_shape=(1, 6, 6),
    )


def _batch(seed: int = 0, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 6, 6)).astype(np.float32), rng.integers(0, 4, n)


OPTIMIZERS = {
    "sgd-momentum": lambda: xc.SGD(0.1, momentum=0.9, final_lr=0.02),
    "adam": lambda: xc.Adam(0.01, weight_decay=0.001),
}


def _host(model: xc.Sequential) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in model.state_dict().items()}


def _assert_state_close(a: dict, b: dict, tol: float, what: str) -> None:
    assert set(a) == set(b)
    for name in a:
        scale = max(float(np.max(np.abs(b[name]))), 1.0)
        err = float(np.max(np.abs(a[name] - b[name])))
        assert err <= tol * scale, f"{what} {name}: error {err:.3g} > {tol:.3g} * {scale:.3g}"


# --------------------------------------------------------------------------- TrainStep


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_train_step_equals_train_batch_then_step(case: Case, kind: str) -> None:
    """Three steps with dropout: same losses, weights and optimizer state as the
    stateful API. Eager steps agree exactly; the compiled JAX step agrees with the
    eager JAX path to the rounding of the dtype (the compiled torch step: see
    test_compiled_step.py)."""
    x, y = _batch()
    x = case.host(x)
    eager, fused = _small(case.backend, case.dtype), _small(case.backend, case.dtype)
    opt_eager, opt_fused = OPTIMIZERS[kind](), OPTIMIZERS[kind]()
    opt_eager.setup(3), opt_fused.setup(3)
    step = TrainStep(fused, opt_fused)
    assert step.compiled == case.backend.compiles_by_default
    tol = 0.0 if not step.compiled else (1e-5 if case.dtype == "float32" else 1e-12)
    for i in range(3):
        expected = eager.train_batch(case.asarray(x), case.asarray(y))
        opt_eager.step(eager.parameters())
        got = step(case.asarray(x), case.asarray(y))
        assert got.shape == () and case.backend.owns(got)
        e, g = float(expected), float(got)
        assert abs(e - g) <= tol * max(abs(e), 1.0), f"step {i}: loss {g} != {e}"
        np.testing.assert_allclose(
            case.to_numpy(step.last_output),
            case.to_numpy(eager.last_output),
            rtol=0,
            atol=tol * 10 + 0.0,
        )
    _assert_state_close(_host(fused), _host(eager), tol, "parameter")
    state_f = {k: case.to_numpy(v) for k, v in opt_fused.state_arrays().items()}
    state_e = {k: case.to_numpy(v) for k, v in opt_eager.state_arrays().items()}
    _assert_state_close(state_f, state_e, tol, "optimizer state")
    assert opt_fused.step_count == opt_eager.step_count == 3
    assert all(p.value.dtype == fused.dtype for p in fused.parameters().values())
    # the stateful API carries on from where the step left off
    fused.train_batch(case.asarray(x), case.asarray(y))
    opt_fused.step(fused.parameters())
    assert opt_fused.step_count == 4


def _jax_or_skip() -> None:
    case = next(c for c in CASES if c.id == "jax-cpu-f32")
    try:
        case.backend  # noqa: B018 - selecting it is the check
    except xb.BackendError as exc:
        pytest.skip(f"jax: {exc}")


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_gradient_hook_runs_between_backward_and_update(backend: str) -> None:
    if backend == "jax":
        _jax_or_skip()
    x, y = _batch(1)
    seen: list[list[str]] = []

    def halve(grads: dict) -> dict:
        seen.append(list(grads))
        return {name: g * 0.5 for name, g in grads.items()}

    hooked = _small(backend)
    step = TrainStep(hooked, xc.SGD(0.2), gradient_hook=halve)
    reference = _small(backend)
    sgd = xc.SGD(0.2)
    for _ in range(2):
        step(x, y)
        reference.train_batch(x, y)
        for p in reference.parameters().values():
            p.grad = p.grad * 0.5
        sgd.step(reference.parameters())
    assert seen == [list(hooked.parameters())] * 2
    _assert_state_close(_host(hooked), _host(reference), 1e-6, "parameter")


def test_gradient_hook_must_return_every_gradient() -> None:
    step = TrainStep(_small("numpy"), xc.SGD(0.1), gradient_hook=lambda g: {})
    with pytest.raises(ValueError, match=r"gradient_hook: expected a dict with the names"):
        step(*_batch())


def test_train_step_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"model: expected a Sequential, got SGD"):
        TrainStep(xc.SGD(0.1), xc.SGD(0.1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"gradient_hook: expected a callable or None, got int"):
        TrainStep(_small("numpy"), xc.SGD(0.1), gradient_hook=3)  # type: ignore[arg-type]
    step = TrainStep(_small("numpy"), xc.SGD(0.1))
    x, _ = _batch()
    with pytest.raises(ValueError, match=r"y: expected class indices in \[0, 4\)"):
        step(x, np.full(5, 7))


def test_core_is_pure_and_carries_buffers() -> None:
    """The core leaves the model and its inputs as they were, and threads every
    layer's buffers through (here a buffer a layer replaces in its training forward)."""

    class Counting(xc.Identity):
        def _build(self, input_shape, ctx):
            self.buffers = {"count": ctx.backend.asarray(np.zeros(()))}
            return input_shape

        def forward(self, x, training):
            if training:
                self.buffers = {"count": self.buffers["count"] + 1.0}
            return x

    model = xc.Sequential(
        [xc.Flatten(), Counting(), xc.Dense(3)], backend="numpy", seed=0, input_shape=(2, 2)
    )
    assert list(model.buffers()) == ["counting_0.count"]
    opt = xc.SGD(0.1, momentum=0.5)
    params = {k: p.value for k, p in model.parameters().items()}
    before = {k: v.copy() for k, v in params.items()}
    state = TrainState(params, model.buffers(), opt.init_state(params))
    x, y = np.ones((2, 2, 2), np.float32), np.array([0, 2])
    loss, out, new = train_step(model, opt, state, x, y, {}, 0.1, 0)
    assert out.shape == (2, 3) and loss.shape == ()
    assert float(new.buffers["counting_0.count"]) == 1.0
    assert float(model.buffers()["counting_0.count"]) == 0.0
    for k, v in before.items():
        np.testing.assert_array_equal(model.parameters()[k].value, v)
        assert not np.array_equal(new.params[k], v)
    assert opt.state == {} and opt.step_count == 0
    step = TrainStep(model, opt)
    step(x, y), step(x, y)
    assert float(model.buffers()["counting_0.count"]) == 2.0


# --------------------------------------------------------------------------- registry


def test_registering_a_thin_wrapper_backend() -> None:
    """A backend added by registration alone: array-api-strict's third device under
    its own name. Selection, recognition, listing and training all see it."""
    strict = pytest.importorskip("array_api_strict")
    device = strict.Device("device2")

    def load(dev):
        if dev is not None and str(dev) not in ("device2", str(device)):
            raise xb.BackendError(f"device: backend 'wrapped' has only 'device2', got {dev!r}")
        return xb.Backend(
            "wrapped",
            strict,
            device,
            strict.float32,
            lambda a: np.asarray(strict.asarray(a, device=strict.Device("CPU_DEVICE"))),
        )

    def is_array(a) -> bool:
        return type(a).__module__.startswith("array_api_strict") and a.device == device

    xb.register_backend(xb.BackendSpec("wrapped", load, is_array, aliases=("wrap",)))
    try:
        with pytest.raises(ValueError, match=r"backend 'wrapped' is registered already"):
            xb.register_backend(xb.BackendSpec("wrapped", load, is_array))
        be = xb.get_backend("wrap")
        assert be is xb.get_backend("wrapped") and be.name == "wrapped"
        assert "wrapped" in xb.available_backends() and "wrapped" in xb.registered_backends()
        a = be.asarray(np.ones(3))
        assert xb.backend_of(a).name == "wrapped"
        assert xb.backend_of(strict.asarray([1.0])).name == "array_api_strict"
        model = _small("wrapped")
        loss = TrainStep(model, xc.SGD(0.1))(*_batch())
        assert xb.backend_of(loss).name == "wrapped"
        reference = _small("numpy")
        expected = reference.train_batch(*_batch())
        assert abs(float(loss) - float(expected)) < 1e-6
        with pytest.raises(xb.BackendError, match=r"x: expected an array of backend .wrapped:"):
            be.check(strict.asarray([1.0]), "x")
    finally:
        xb.unregister_backend("wrapped")
    with pytest.raises(ValueError, match=r"backend: expected one of .* got 'wrap'"):
        xb.get_backend("wrap")


def test_unknown_array_error_lists_registered_backends() -> None:
    with pytest.raises(xb.BackendError, match=r"numpy, torch, cupy, array_api_strict, jax"):
        xb.backend_of([1, 2])


# --------------------------------------------------------------------------- JAX


def _run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("JAX_ENABLE_X64", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.mark.slow
def test_jax_default_mode_float32_trains_and_float64_error_says_how() -> None:
    """JAX's default (64-bit mode off): float32 training raises no warning (labels
    become int32), and asking for float64 names the switch that enables it."""
    _jax_or_skip()
    result = _run_python(
        """
        import warnings
        warnings.simplefilter("error")
        import numpy as np, xpconv as xc
        from xpconv.backends import registry as xb
        try:
            xc.Sequential([xc.Flatten(), xc.Dense(2)], backend="jax", dtype="float64")
        except xb.BackendError as exc:
            print("ERROR", exc)
        model = xc.Sequential([xc.Flatten(), xc.Dropout(0.5), xc.Dense(3)], backend="jax",
                              seed=0, input_shape=(4,))
        step = xc.TrainStep(model, xc.Adam(0.01))
        x, y = np.ones((6, 4), np.float32), np.array([0, 1, 2, 0, 1, 2])
        losses = [float(step(x, y)) for _ in range(3)]
        print("LOSSES", losses, str(model.parameters()["dense_0.weight"].value.dtype))
        print("EVAL", model.evaluate(x, y))
        """
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ERROR dtype: backend 'jax' computes in float64 only in JAX's 64-bit mode" in out
    assert "jax.config.update('jax_enable_x64', True)" in out and "JAX_ENABLE_X64=1" in out
    losses_line = next(line for line in out.splitlines() if line.startswith("LOSSES"))
    assert "float32" in losses_line
    assert "EVAL" in out


def test_jax_devices_by_name() -> None:
    _jax_or_skip()
    be = xb.get_backend("jax:cpu")
    assert be.name == "jax" and be.device.platform == "cpu"
    assert xb.get_backend("jax", device="cpu:0").device == be.device
    with pytest.raises(xb.BackendError, match=r"device: backend 'jax' has 1 'cpu' device"):
        xb.get_backend("jax", device="cpu:7")
    with pytest.raises(xb.BackendError, match=r"backend 'jax' with device 'tpu'"):
        xb.get_backend("jax", device="tpu")


@pytest.fixture(scope="module")
def lenet_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """20 LeNet steps (batch 8, float32, the same seed) through the Trainer on NumPy
    and on JAX, and a training checkpoint of each."""
    _jax_or_skip()
    rng = np.random.default_rng(11)
    x = rng.random((160, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 160)
    runs = {}
    for name in ("numpy", "jax"):
        model = xc.models.zoo.lenet(backend=name, seed=5, input_shape=(1, 28, 28))
        trainer = xc.Trainer(model, xc.SGD(0.05, momentum=0.9), seed=2, progress=False)
        history = trainer.fit(x, y, epochs=1, batch_size=8)
        path = tmp_path_factory.mktemp(name) / "training.npz"
        xc.save_training(trainer, path)
        runs[name] = {"trainer": trainer, "losses": history.step_losses[0], "path": path}
    runs["data"] = (x, y)
    return runs


@pytest.mark.slow
def test_lenet_20_steps_on_jax_match_numpy(lenet_runs: dict) -> None:
    ours, ref = lenet_runs["jax"], lenet_runs["numpy"]
    assert ours["trainer"].train_step.compiled
    assert len(ref["losses"]) == 20
    np.testing.assert_allclose(ours["losses"], ref["losses"], rtol=1e-4, atol=1e-4)
    _assert_state_close(_host(ours["trainer"].model), _host(ref["trainer"].model), 1e-4, "w")


@pytest.mark.slow
def test_checkpoint_saved_on_jax_resumes_on_numpy_and_back(lenet_runs: dict) -> None:
    x, y = lenet_runs["data"]
    on_numpy = xc.load_training(lenet_runs["jax"]["path"], backend="numpy", progress=False)
    np.testing.assert_allclose(
        on_numpy.model.state_dict()["conv2d_0.weight"],
        lenet_runs["jax"]["trainer"].model.state_dict()["conv2d_0.weight"],
        rtol=0,
        atol=0,
    )
    on_numpy.fit(x[:16], y[:16], epochs=2, batch_size=8)  # one more epoch of 2 steps
    path = lenet_runs["numpy"]["path"].with_name("continued.npz")
    xc.save_training(on_numpy, path)
    back = xc.load_training(path, backend="jax", progress=False)
    assert back.model.backend.name == "jax" and back.epochs_done == 2
    for name, value in on_numpy.model.state_dict().items():
        np.testing.assert_array_equal(back.model.state_dict()[name], value)
    for key, value in on_numpy.optimizer.state_arrays().items():
        np.testing.assert_array_equal(np.asarray(back.optimizer.state_arrays()[key]), value)
    metrics = back.model.evaluate(x[:16], y[:16])
    expected = on_numpy.model.evaluate(x[:16], y[:16])
    assert abs(metrics["loss"] - expected["loss"]) < 1e-4


@pytest.mark.slow
def test_cli_train_on_jax(tmp_path: Path) -> None:
    _jax_or_skip()
    mnist = DATA_DIR / "mnist"
    if not (mnist / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found in {mnist} (set XPCONV_TEST_DATA to its parent)")
    from xpconv.cli import main

    out = tmp_path / "out"
    argv = ["train", "--backend", "jax", "--data-dir", str(mnist), "--limit", "120"]
    argv += ["--epochs", "1", "--out", str(out), "--no-progress", "--no-plots"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["backend"] == "jax"
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and np.isfinite(metrics["train_loss"])


def test_core_needs_a_mask_for_every_active_dropout() -> None:
    model = _small("numpy")
    opt = xc.SGD(0.1)
    params = {k: p.value for k, p in model.parameters().items()}
    state = TrainState(params, {}, opt.init_state(params))
    x, y = _batch()
    with pytest.raises(ValueError, match=r"masks: expected a mask .* missing \['dropout_0'\]"):
        train_step(model, opt, state, x, y, {}, 0.1, 0)
    mask = model.layers[4].draw_mask(5, model.backend, model.dtype)
    loss, _, _ = train_step(model, opt, state, x, y, {"dropout_0": mask}, 0.1, 0)
    assert np.isfinite(float(loss))
