"""The NumPy kernels' reuse of large temporaries (``xpconv.backends.numpy.scratch``).

- ``take`` and ``give`` alone: the same memory comes back for the same size, in any
  shape and dtype; arrays it did not make, arrays given twice, small arrays and
  anything past the bound are never kept.
- Inside training, where it meets every layer that gives memory back (the fused
  convolution + pool, a plain convolution, the lecture's convolution + dense step):
  a model trained with every temporary reused gives the same bits as one trained
  with none reused, and what a user holds (outputs, gradients, a saved state used
  twice) is never overwritten.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpconv import ops as F
from xpconv.backends.numpy import scratch
from xpconv.models.zoo import Conv2D, Dense, Flatten, Sequential, lecture, lenet
from xpconv.optim.optimizers import SGD


@pytest.fixture(autouse=True)
def _empty() -> None:
    scratch.clear()
    yield
    scratch.clear()


def test_the_same_size_gets_the_same_memory_back_in_any_shape() -> None:
    a = scratch.take((512, 1024), np.float32)
    assert a.shape == (512, 1024) and a.dtype == np.float32 and a.flags.c_contiguous
    scratch.give(a[::2])  # any view of it gives the whole memory back
    assert scratch.kept_bytes() == a.nbytes
    b = scratch.take((512, 512), np.float64)
    assert b.shape == (512, 512) and b.dtype == np.float64
    assert np.shares_memory(a, b) and scratch.kept_bytes() == 0
    c = scratch.take((512, 1024), np.float32)  # nothing kept: new memory
    assert not np.shares_memory(c, b)


def test_only_its_own_large_arrays_are_kept_and_each_once() -> None:
    scratch.give(np.empty((1024, 1024), np.float32))  # not made by take
    scratch.give(None)
    small = scratch.take((16,), np.float32)
    scratch.give(small)
    assert scratch.kept_bytes() == 0
    a = scratch.take((1024, 1024), np.float32)
    scratch.give(a)
    scratch.give(a.T)  # the same memory again: ignored
    assert scratch.kept_bytes() == a.nbytes
    first, second = scratch.take(a.shape, a.dtype), scratch.take(a.shape, a.dtype)
    assert np.shares_memory(first, a) and not np.shares_memory(second, a)


def test_no_more_than_the_bound_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scratch, "KEPT_BYTES", 3 << 20)
    arrays = [scratch.take((1 << 20,), np.uint8) for _ in range(5)]
    for a in arrays:
        scratch.give(a)
    assert scratch.kept_bytes() == 3 << 20
    scratch.clear()
    assert scratch.kept_bytes() == 0


def test_the_numpy_table_keeps_what_shares_memory_with_keep() -> None:
    from xpconv.backends.kernels import kernels_for

    a = scratch.take((1024, 1024), np.float32)
    kernels_for(np).release(np, a, keep=a[1:].T)
    assert scratch.kept_bytes() == 0
    kernels_for(np).release(np, a, keep=np.zeros(3))
    assert scratch.kept_bytes() == a.nbytes


def _train(build, smallest: int, monkeypatch: pytest.MonkeyPatch, steps: int = 3):
    """Parameters, outputs and gradients after ``steps`` SGD steps with every take of
    at least ``smallest`` bytes reused."""
    monkeypatch.setattr(scratch, "SMALLEST", smallest)
    scratch.clear()
    model = build()
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 6)
    optimizer = SGD(0.05, momentum=0.9)
    outputs, grads = [], []
    for _ in range(steps):
        model.train_batch(x, y)
        grads.append({k: np.array(p.grad) for k, p in model.parameters().items()})
        held = {k: p.grad for k, p in model.parameters().items()}  # the user's references
        optimizer.step(model.parameters())
        outputs.append((model.predict(x), held))
    kept = scratch.kept_bytes()
    # what the user held from each step is what it was then
    for (_, held), want in zip(outputs, grads):
        for k in want:
            np.testing.assert_array_equal(held[k], want[k])
    params = {k: np.array(v) for k, v in model.state_dict().items()}
    return params, [o for o, _ in outputs], kept


def _pointwise() -> Sequential:
    layers = [Conv2D(4, 3, padding=1, activation="relu"), Conv2D(6, 1), Flatten(), Dense(10)]
    return Sequential(layers, input_shape=(1, 28, 28), backend="numpy", seed=0)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: lenet(backend="numpy", seed=0, batch_norm=False), id="lenet"),
        pytest.param(lambda: lenet(backend="numpy", seed=0, batch_norm=True), id="lenet-bn"),
        pytest.param(lambda: lecture(backend="numpy", seed=0), id="lecture"),
        pytest.param(_pointwise, id="1x1-conv"),  # col2im returns a view of its input
    ],
)
def test_training_with_reuse_gives_the_same_bits(build, monkeypatch: pytest.MonkeyPatch) -> None:
    want, want_out, none_kept = _train(build, 1 << 62, monkeypatch)
    got, got_out, kept = _train(build, 1, monkeypatch)  # every temporary reused
    assert none_kept == 0 and kept > 0
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for g, w in zip(got_out, want_out):
        np.testing.assert_array_equal(g, w)


def test_a_saved_state_not_consumed_gives_the_same_gradients_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scratch, "SMALLEST", 1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    out, saved = F.conv_max_pool2d_forward(x, w, b, relu=True, padding=1)
    g = rng.standard_normal(out.shape).astype(np.float32)
    first = [np.array(a) for a in F.conv_max_pool2d_backward(g, saved)]
    F.conv_max_pool2d_forward(x + 1, w, b, relu=True, padding=1)  # takes memory meanwhile
    second = F.conv_max_pool2d_backward(g, saved)
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("kernel, padding", [(1, 0), (3, 1)])
def test_gradients_an_op_returns_are_not_given_back(
    kernel: int, padding: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a 1x1 convolution's input gradient is a view of its column gradient
    monkeypatch.setattr(scratch, "SMALLEST", 1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, kernel, kernel)).astype(np.float32)
    g = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    grads = F.conv2d_backward(g, x, w, padding=padding)
    want = [np.array(a) for a in grads]
    for a in grads:  # every size they could have been kept under, taken and overwritten
        for size in {a.nbytes, (a.base if a.base is not None else a).nbytes}:
            scratch.take((size,), np.uint8)[:] = 255
    for a, b in zip(grads, want):
        np.testing.assert_array_equal(a, b)
