"""The finite-difference checker itself: it finds a wrong backward and where, skips
what has no gradient, and refuses bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Case

import xpconv as xc
import xpconv.ops as F
from xpconv.nn.layers import BuildContext
from xpconv.tools import gradcheck


def test_gradcheck_finds_a_wrong_backward_and_where(case64: Case) -> None:
    x = case64.asarray(np.linspace(-1.0, 1.0, 12).reshape(3, 4))

    def wrong(g, x):  # drops the gradient of one element
        xp = case64.xp
        mask = xp.asarray(np.eye(3, 4)[::-1].copy() == 0, device=case64.backend.device)
        return F.tanh_backward(g, x) * xp.astype(mask, xp.float64)

    report = gradcheck(F.tanh, x, backward=wrong, raise_on_failure=False)
    assert not report.passed
    check = report.worst()
    assert check.index in {(2, 0), (1, 1), (0, 2)} and check.max_rel_error > 0.01
    assert "FAIL" in str(report) and str(check.index) in str(report)
    with pytest.raises(AssertionError, match="FAILED"):
        gradcheck(F.tanh, x, backward=wrong)
    assert gradcheck(F.tanh, x, backward=lambda g, x: F.tanh_backward(g, x)).passed


def test_gradcheck_skips_integer_inputs_and_casts_float32(case: Case) -> None:
    r = np.random.default_rng(5)
    logits = case.asarray(r.normal(size=(4, 3)))
    labels = case.asarray(np.array([0, 2, 1, 2]))
    report = gradcheck(
        lambda z, y: F.softmax_cross_entropy(z, y),
        logits,
        labels,
        backward=lambda g, z, y: (F.softmax_cross_entropy_backward(z, y) * g, None),
    )
    assert [c.name for c in report.checks] == ["input 0"]
    assert report.checks[0].max_rel_error < 1e-6


def test_gradcheck_argument_errors(rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 2))
    with pytest.raises(TypeError, match="backward"):
        gradcheck(F.tanh, x)
    with pytest.raises(ValueError, match="eps"):
        gradcheck(F.tanh, x, backward=F.tanh_backward, eps=0.0)
    with pytest.raises(ValueError, match="grad_out"):
        gradcheck(F.tanh, x, backward=F.tanh_backward, grad_out=np.ones(3))


def test_gradcheck_of_a_float32_layer_restores_its_dtype(case: Case) -> None:
    layer = xc.BatchNorm2D()
    rngs = np.random.default_rng(0), np.random.default_rng(1)
    layer.build((2, 3, 3), BuildContext(case.backend, case.backend.dtype(case.dtype), *rngs))
    x = case.asarray(np.random.default_rng(0).normal(size=(3, 2, 3, 3)))
    xc.tools.gradcheck(layer, x)
    assert layer.params["weight"].value.dtype == case.backend.dtype(case.dtype)
    assert layer.buffers["running_mean"].dtype == case.backend.dtype(case.dtype)


def test_gradcheck_of_a_model_names_every_parameter_and_keeps_its_statistics() -> None:
    model = xc.Sequential(
        [xc.Conv2D(2, 3), xc.BatchNorm2D(), xc.Flatten(), xc.Dense(3)],
        backend="numpy", input_shape=(1, 5, 5), seed=0, dtype="float64",
    )  # fmt: skip
    before = {k: np.array(v) for k, v in model.buffers().items()}
    x = np.random.default_rng(0).normal(size=(4, 1, 5, 5))
    report = gradcheck(model, x)  # training mode: every forward updates the running stats
    assert report.passed
    assert [c.name for c in report.checks] == ["x", *model.parameters()]
    assert [c.name for c in report.checks][1:3] == ["conv2d_0.weight", "conv2d_0.bias"]
    after = model.buffers()
    assert sorted(after) == sorted(before) == ["batchnorm2d_0.running_mean",
                                               "batchnorm2d_0.running_var"]  # fmt: skip
    for key, value in before.items():
        np.testing.assert_array_equal(np.asarray(after[key]), value, err_msg=key)


def test_gradcheck_without_inputs_says_what_it_needs() -> None:
    with pytest.raises(TypeError, match="^inputs: expected at least one array to differentiate$"):
        gradcheck(F.tanh, backward=F.tanh_backward)


def test_gradcheck_draws_the_output_gradient_from_its_seed() -> None:
    x = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    reports = [str(gradcheck(F.tanh, x, backward=F.tanh_backward, seed=s)) for s in (3, 3, 4)]
    assert reports[0] == reports[1]  # the same G, so the same worst element and values
    assert reports[0] != reports[2]
