"""Compiled inference on a backend that compiles (JAX): predict and evaluate give the
layer-by-layer values and follow parameter and buffer changes."""

from __future__ import annotations

import numpy as np
import pytest

from xpconv.models import zoo

jax = pytest.importorskip("jax", reason="JAX is the backend that compiles")


def _eager(model, x):
    return np.asarray(model._run(model.as_input(x), False))


def test_predict_and_evaluate_compile_and_follow_the_parameters() -> None:
    model = zoo.lenet(backend="jax", dtype="float64", seed=0)  # with BatchNorm buffers
    assert model.backend.can_compile
    r = np.random.default_rng(0)
    x, y = r.random((6, 1, 28, 28)), r.integers(0, 10, 6)
    np.testing.assert_allclose(
        np.asarray(model.predict(x)), _eager(model, x), rtol=1e-12, atol=1e-12
    )
    compiled = model._infer_compiled
    weight = model.parameters()["conv2d_0.weight"]
    weight.value = weight.value * 2  # a training step replaces values like this
    name = next(iter(model.buffers()))
    model._set_buffer(name, model.buffers()[name] + 0.5)
    got = np.asarray(model.predict(x))
    np.testing.assert_allclose(got, _eager(model, x), rtol=1e-12, atol=1e-12)
    assert model._infer_compiled is compiled  # one compiled function, new argument values
    logits = _eager(model, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    result = model.evaluate(x, y)
    assert result["loss"] == pytest.approx(-log_p[np.arange(6), y].mean(), rel=1e-10)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == y))


def test_backends_without_a_compiler_run_layer_by_layer() -> None:
    model = zoo.lecture(backend="numpy", dtype="float64", seed=0)
    x = np.random.default_rng(1).random((3, 1, 28, 28))
    np.testing.assert_array_equal(model.predict(x), _eager(model, x))
    assert not hasattr(model, "_infer_compiled")
