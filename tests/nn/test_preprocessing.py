"""Standardize: the input normalisation that is part of a model (the lecture model's
first layer), through training, saving, loading and every export."""

from __future__ import annotations

import numpy as np
import pytest

import xpconv as xc
from xpconv.io.checkpoint import CheckpointError


def _model(standardize: xc.Standardize, shape=(3, 5, 7), dtype="float64") -> xc.Sequential:
    layers = [standardize, xc.Conv2D(2, (2, 3), activation="tanh"), xc.Flatten(), xc.Dense(3)]
    return xc.Sequential(layers, input_shape=shape, dtype=dtype, seed=4)


def _x(shape=(3, 5, 7), n=4, dtype="float64") -> np.ndarray:
    return np.random.default_rng(1).random((n, *shape)).astype(dtype)


@pytest.mark.parametrize(
    "mean, std", [(0.5, 2.0), ([0.1, 0.2, 0.3], [0.5, 1.0, 4.0]), ([0.1, 0.2, 0.3], 0.25)]
)
def test_forward_backward_and_input_gradient(mean, std) -> None:
    layer = xc.Standardize(mean, std)
    model = _model(layer)
    x = _x()
    m = np.reshape(mean, (-1, 1, 1)) if isinstance(mean, list) else mean
    s = np.reshape(std, (-1, 1, 1)) if isinstance(std, list) else std
    np.testing.assert_allclose(layer.forward(x, training=False), (x - m) / s, rtol=1e-15)
    # the layer after it skips its input gradient, as the first layer would
    assert [la.needs_input_grad for la in model.layers] == [False, False, True, True]
    out = model.forward(x, training=True)
    grad = np.random.default_rng(2).normal(size=out.shape)
    assert model.backward(grad) is None
    model.forward(x, training=True)
    gx = model.backward(grad, input_grad=True)
    eps, i = 1e-6, (1, 2, 3, 4)
    up, down = x.copy(), x.copy()
    up[i] += eps
    down[i] -= eps
    numeric = (
        np.sum(model.forward(up, training=False) * grad)
        - np.sum(model.forward(down, training=False) * grad)
    ) / (2 * eps)
    np.testing.assert_allclose(gx[i], numeric, rtol=1e-6)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="std expected positive finite numbers"):
        xc.Standardize(0.0, 0.0)
    with pytest.raises(ValueError, match="mean expected finite numbers"):
        xc.Standardize(float("nan"), 1.0)
    with pytest.raises(TypeError, match="mean expected numbers"):
        xc.Standardize("0.5", 1.0)
    with pytest.raises(ValueError, match="same number of values, got 2 and 3"):
        xc.Standardize([0.1, 0.2], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="3 per-channel values, expected an input"):
        _model(xc.Standardize([0.1, 0.2, 0.3], 1.0), shape=(2, 5, 7))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_saved_and_loaded_with_the_model(tmp_path, suffix: str) -> None:
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    model = _model(xc.Standardize([0.1, 0.2, 0.3], [0.5, 1.0, 4.0]), dtype="float32")
    path = tmp_path / f"m{suffix}"
    xc.save_model(model, path)
    loaded = xc.load_model(path)
    assert type(loaded.layers[0]) is xc.Standardize
    assert loaded.layers[0].get_config() == {"mean": [0.1, 0.2, 0.3], "std": [0.5, 1.0, 4.0]}
    x = _x(dtype="float32")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.evaluate(x, np.array([0, 1, 2, 0]))["loss"] == pytest.approx(
        model.evaluate(x, np.array([0, 1, 2, 0]))["loss"], rel=1e-7
    )


def test_a_crafted_checkpoint_with_a_bad_std_is_refused(tmp_path) -> None:
    from xpconv.io.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "m.npz"
    xc.save_model(_model(xc.Standardize(0.5, 2.0)), path)
    arrays, meta = load_checkpoint(path)
    meta["architecture"]["layers"][0]["config"]["std"] = -1.0
    save_checkpoint(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(CheckpointError, match=r"layers\[0\].config.*Standardize refuses"):
        xc.load_model(tmp_path / "bad.npz")


def test_exports_apply_it(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    model = _model(xc.Standardize([0.1, 0.2, 0.3], [0.5, 1.0, 4.0]), dtype="float32")
    x = _x(dtype="float32")
    want = np.asarray(model.predict(x))
    xc.to_onnx(model, tmp_path / "m.onnx")
    runtime = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(runtime.run(None, {"input": x})[0], want, rtol=1e-5, atol=1e-6)
    module = xc.to_torch(model).eval()
    assert type(module[0]).__name__ == "Standardize"
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), want, rtol=1e-5, atol=1e-6)
    state = module.state_dict()
    torch.save(state, tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True).keys() == state.keys()
    with pytest.raises(ValueError, match="unsupported module.*0: Standardize"):
        xc.from_torch(module, model.input_shape)


def test_the_lecture_model_standardises_mnist_pixels() -> None:
    from xpconv.models.zoo import MNIST_MEAN, MNIST_STD

    model = xc.models.zoo.lecture(seed=0)
    first = model.layers[0]
    assert type(first) is xc.Standardize
    assert first.get_config() == {"mean": MNIST_MEAN, "std": MNIST_STD}
    assert "Standardize(mean 0.1307, std 0.3081)" in model.summary(print_fn=None)
    plain = xc.models.zoo.lecture(standardize=None, seed=0)
    assert [type(la).__name__ for la in plain.layers] == ["Conv2D", "Flatten", "Dense"]


@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_moves_with_the_model(backend: str) -> None:
    model = _model(xc.Standardize([0.1, 0.2, 0.3], 0.5), dtype="float32")
    x = _x(dtype="float32")
    want = np.asarray(model.predict(x))
    try:
        model.to(backend)
    except xc.BackendError as exc:
        pytest.skip(f"{backend}: {exc}")
    got = model.backend.to_numpy(model.predict(model.backend.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_jax_model_trains_after_its_compiled_evaluation() -> None:
    """Standardize's constants made inside a compiled function are not kept: a model
    evaluated (compiled inference) and then trained (compiled step) traces both cleanly."""
    pytest.importorskip("jax")
    from xpconv.models import zoo

    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    y = np.arange(8) % 10
    model = zoo.lecture(backend="jax", seed=0)
    before = model.evaluate(x, y)["loss"]
    trainer = xc.Trainer(model, xc.SGD(0.01, momentum=0.9), progress=False)
    trainer.fit(x, y, epochs=1, batch_size=4, validation_data=(x, y))
    assert model.evaluate(x, y)["loss"] < before


def test_description_lists_per_channel_values() -> None:
    assert xc.Standardize(0.1307, 0.3081).describe() == "Standardize(mean 0.1307, std 0.3081)"
    layer = xc.Standardize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert layer.describe() == (
        "Standardize(mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225])"
    )


def test_one_layer_follows_the_dtype_of_its_input() -> None:
    """The layer's constants are made in the input's dtype, also when one layer sees
    float32 and then float64 data (and back): no rounding to the first one's dtype."""
    layer = xc.Standardize([0.1, 0.2, 0.3], [0.3, 0.7, 1.1])
    xc.Sequential([layer], input_shape=(3, 5, 7), dtype="float32")
    m, s = np.reshape([0.1, 0.2, 0.3], (-1, 1, 1)), np.reshape([0.3, 0.7, 1.1], (-1, 1, 1))
    for dtype, rtol in (("float32", 1e-6), ("float64", 1e-15), ("float32", 1e-6)):
        x = _x(dtype=dtype)
        out = layer.forward(x, training=False)
        assert out.dtype == np.dtype(dtype)
        np.testing.assert_allclose(out, (x.astype(np.float64) - m) / s, rtol=rtol, atol=rtol)
