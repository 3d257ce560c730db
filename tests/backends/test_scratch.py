"""The NumPy kernels' reused memory (``xpconv.backends.numpy.scratch``).

- ``take`` alone: an array like ``np.empty``'s; its memory goes back for reuse only
  when it and every view of it are gone, comes back for the same size in any shape
  and dtype, and never while anything views it; small arrays are plain ones; at most
  ``KEPT_BYTES`` wait; several threads at once never share live memory.
- Inside training, where it meets every kernel that takes memory from it (the fused
  convolution + pool, a plain and a 1x1 convolution, the lecture's convolution +
  dense step, batch norm, tanh): a model trained with all of it reused gives the same
  bits as one trained with none, and what a user holds (outputs, gradients) keeps its
  values while later steps run.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from xpconv import ops as F
from xpconv.backends.numpy import scratch
from xpconv.models.zoo import Conv2D, Dense, Flatten, Sequential, lecture, lenet
from xpconv.optim.optimizers import SGD


@pytest.fixture(autouse=True)
def _empty() -> None:
    gc.collect()  # arrays earlier tests left in reference cycles give their memory back
    scratch.clear()
    yield
    scratch.clear()


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_memory_comes_back_once_no_view_of_it_is_left() -> None:
    a = scratch.take((512, 1024), np.float32)
    assert a.shape == (512, 1024) and a.dtype == np.float32
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    start, view = _address(a), a.T[::2]
    del a
    assert scratch.kept_bytes() == 0  # the view still reads it
    other = scratch.take((512, 512), np.float64)  # the same size: new memory
    assert _address(other) != start
    del view
    assert scratch.kept_bytes() == 512 * 1024 * 4
    elsewhere = np.empty(512 * 1024 * 4, np.uint8)  # would get freed memory's address
    again = scratch.take((256, 2048), np.int32)  # the same size, any shape and dtype
    assert not np.shares_memory(again, elsewhere)
    assert _address(again) == start and again.shape == (256, 2048)
    assert again.dtype == np.int32 and scratch.kept_bytes() == 0


def test_a_free_list_hands_back_what_it_keeps_by_size() -> None:
    free = scratch._FreeList()
    a, b = np.empty(1 << 20, np.uint8), np.empty(2 << 20, np.uint8)
    lease = free.lend(a)
    with free.lock:
        free.put(b)
    assert free.bytes == 2 << 20
    assert free.get(1 << 20) is None  # a is lent
    del lease  # its weak reference's callback runs no Python: the next call collects
    assert free.get(3 << 20) is None and free.get(2 << 20) is b and free.get(1 << 20) is a
    assert free.get(1 << 20) is None and free.bytes == 0 and not free.lent


def test_small_arrays_are_plain_and_never_kept() -> None:
    a = scratch.take((16, 16), np.float32)
    assert a.flags.owndata
    del a
    assert scratch.kept_bytes() == 0


def test_no_more_than_the_bound_waits_and_clear_frees_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scratch, "KEPT_BYTES", 3 << 20)
    arrays = [scratch.take((1 << 20,), np.uint8) for _ in range(5)]
    del arrays
    assert scratch.kept_bytes() == 3 << 20
    scratch.clear()
    assert scratch.kept_bytes() == 0


def test_threads_taking_at_once_never_share_live_memory() -> None:
    errors: list[str] = []

    def work(seed: int) -> None:
        for i in range(200):
            a = scratch.take((1 << 18,), np.float32)  # 1 MiB
            a.fill(seed)
            b = scratch.take((1 << 18,), np.float32)
            b.fill(-1.0)
            if not (a == seed).all() or np.shares_memory(a, b):
                errors.append(f"thread {seed}, round {i}")
            del a, b
            if i % 50 == 0:
                gc.collect()

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _pointwise() -> Sequential:
    layers = [Conv2D(4, 3, padding=1, activation="relu"), Conv2D(6, 1), Flatten(), Dense(10)]
    return Sequential(layers, input_shape=(1, 28, 28), backend="numpy", seed=0)


def _train(build, smallest: int, monkeypatch: pytest.MonkeyPatch, steps: int = 3):
    """Parameters and predictions after ``steps`` SGD steps with every array of at
    least ``smallest`` bytes taken from reused memory; checks on the way that the
    gradients the user held from each step still have that step's values."""
    monkeypatch.setattr(scratch, "SMALLEST", smallest)
    gc.collect()  # arrays earlier tests left in reference cycles give their memory back
    scratch.clear()
    model = build()
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 6)
    optimizer = SGD(0.05, momentum=0.9)
    held, copies, outputs = [], [], []
    for _ in range(steps):
        model.train_batch(x, y)
        grads = {k: p.grad for k, p in model.parameters().items()}
        held.append(grads)
        copies.append({k: np.array(g) for k, g in grads.items()})
        optimizer.step(model.parameters())
        outputs.append(model.predict(x))
    for grads, want in zip(held, copies):
        for k in want:
            np.testing.assert_array_equal(grads[k], want[k], err_msg=k)
    params = {k: np.array(v) for k, v in model.state_dict().items()}
    return params, outputs


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: lenet(backend="numpy", seed=0, batch_norm=False), id="lenet"),
        pytest.param(lambda: lenet(backend="numpy", seed=0, batch_norm=True), id="lenet-bn"),
        pytest.param(lambda: lecture(backend="numpy", seed=0), id="lecture"),
        pytest.param(_pointwise, id="1x1-conv"),  # col2im returns a view of its input
    ],
)
def test_training_with_reused_memory_gives_the_same_bits(
    build, monkeypatch: pytest.MonkeyPatch
) -> None:
    want, want_out = _train(build, 1 << 62, monkeypatch)
    assert scratch.kept_bytes() == 0
    got, got_out = _train(build, 1, monkeypatch)  # every array reused
    assert scratch.kept_bytes() > 0
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for g, w in zip(got_out, want_out):  # held by the test since their step
        np.testing.assert_array_equal(g, w)


def test_a_saved_state_gives_the_same_gradients_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scratch, "SMALLEST", 1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    out, saved = F.conv_max_pool2d_forward(x, w, b, relu=True, padding=1)
    g = rng.standard_normal(out.shape).astype(np.float32)
    first = F.conv_max_pool2d_backward(g, saved)
    copies = [np.array(a) for a in first]
    F.conv_max_pool2d_forward(x + 1, w, b, relu=True, padding=1)  # takes memory meanwhile
    second = F.conv_max_pool2d_backward(g, saved)
    for a, c, d in zip(first, second, copies):
        np.testing.assert_array_equal(a, d)
        np.testing.assert_array_equal(c, d)
