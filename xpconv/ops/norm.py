"""Batch normalization, global average pooling and the residual sum, with backward passes.

Shapes use the PyTorch layout; the channel axis is axis 1:

- ``batch_norm``: x (N, C), (N, C, L) or (N, C, H, W); weight, bias, running_mean and
  running_var (C,). Statistics are taken per channel over every other axis.
- ``global_avg_pool2d``: x (N, C, H, W) -> (N, C), the mean over H and W (PyTorch's
  ``AdaptiveAvgPool2d(1)`` followed by a flatten).
- ``add``: a + b of equal shapes; its backward passes the gradient to both (fan-out).

Batch normalization follows ``torch.nn.functional.batch_norm``: in training the batch
mean and the *biased* batch variance normalize, and the running statistics become
``(1 - momentum) * running + momentum * batch`` with the *unbiased* batch variance; in
inference the running statistics normalize. Nothing is updated in place: the new
running statistics are returned.

Synchronised statistics: given a :class:`StatsReducer` (``reducer=``), training takes
the statistics of the *global* batch, whose parts are held by several processes. The
forward pass hands its value count per channel, its per-channel sums and its sums of
squares about its own mean to ``reducer.gather`` in one buffer (2C + 1,), and combines
every process's (Chan et al.'s parallel variance); the backward pass hands the sums of
``grad_out`` and ``grad_out * x_hat`` (2C,) to ``reducer.backward``. With a reducer of
one process the result is that of the unsynchronised op up to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import array_api_compat

from xpconv.backends.kernels import kernels_for
from xpconv.ops.checks import check_float, check_number, check_rank, namespace

Array = Any

__all__ = [
    "BatchNormSaved",
    "StatsReducer",
    "add",
    "add_backward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
]


class StatsReducer(Protocol):
    """Sums batch-norm statistics over the processes that share a global batch.

    Both methods take a 1-D array of the caller's backend and dtype and return one of
    the same shape; they are called in the same order on every process (the layers'
    forward order, then their backward order), inside a compiled step too.

    - ``gather(stats)``: every process's ``stats`` (k,) as rows of a (P, k) array, in
      rank order (a process that only fills in gives a row of zeros).
    - ``backward(sums)``: the per-channel gradient sums of the global batch, in the
      scale of this process's own mean loss: ``sum_r (n_r / N) sums_r / (n / N)``
      for ``n`` examples of the ``N`` of the global batch here (zeros where ``n`` is 0).
    """

    def gather(self, stats: Array) -> Array: ...

    def backward(self, sums: Array) -> Array: ...


@dataclass(frozen=True)
class BatchNormSaved:
    """What the backward pass of :func:`batch_norm_forward` needs."""

    x_hat: Array  # normalized input, the shape of x
    invstd: Array  # 1 / sqrt(var + eps), (C,)
    weight: Array | None  # (C,) or None
    training: bool  # batch statistics (True) or running statistics (False)
    reducer: StatsReducer | None = None  # synchronised statistics
    count: Any = None  # values per channel of the global batch (with a reducer)


def _per_channel(xp: Any, v: Array, ndim: int) -> Array:
    """(C,) -> (1, C, 1, ...) to broadcast against an input of rank ``ndim``."""
    return xp.reshape(v, (1, -1) + (1,) * (ndim - 2))


def _check_bn(
    x: Array,
    weight: Array | None,
    bias: Array | None,
    running_mean: Array | None,
    running_var: Array | None,
    training: bool,
    momentum: float,
    eps: float,
    synced: bool = False,
) -> Any:
    xp = namespace(
        x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var
    )
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"x: expected a 2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W) array, "
            f"got {x.ndim}-D of shape {tuple(x.shape)}"
        )
    check_float(
        xp, x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var
    )
    channels = int(x.shape[1])
    for name, v in (
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ):
        if v is not None and tuple(v.shape) != (channels,):
            raise ValueError(
                f"{name}: expected shape ({channels},) (one value per channel of x, shape "
                f"{tuple(x.shape)}), got {tuple(v.shape)}"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean, running_var: give both or neither")
    if not training and running_mean is None:
        raise ValueError("running_mean: inference (training=False) needs the running statistics")
    check_number(momentum, "momentum", low=0.0, high=1.0)
    check_number(eps, "eps", low=0.0, low_open=True)
    if training and not synced:  # synchronised: the global batch counts (checked by its owner)
        count = int(x.shape[0])
        for s in x.shape[2:]:
            count *= int(s)
        if count < 2:
            raise ValueError(
                f"x: training needs more than one value per channel for the batch variance, "
                f"got x of shape {tuple(x.shape)}"
            )
    return xp


def batch_norm_forward(
    x: Array,
    weight: Array | None,
    bias: Array | None,
    running_mean: Array | None = None,
    running_var: Array | None = None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    reducer: StatsReducer | None = None,
) -> tuple[Array, Array | None, Array | None, BatchNormSaved]:
    """:func:`batch_norm` that also returns what :func:`batch_norm_backward` needs.

    ``reducer`` (training only): take the statistics of the global batch through it
    (module docstring); ``running_mean`` and ``running_var`` are then required.

    Returns:
        ``(y, new_running_mean, new_running_var, saved)``; the running statistics are
        returned unchanged in inference and ``None`` when none were given.
    """
    synced = training and reducer is not None
    xp = _check_bn(x, weight, bias, running_mean, running_var, training, momentum, eps, synced)
    nd = x.ndim
    if synced:
        if running_mean is None:
            raise ValueError("running_mean: synchronised statistics need the running statistics")
        return _synced_forward(
            xp, x, weight, bias, running_mean, running_var, momentum, eps, reducer
        )
    if training:
        y, x_hat, mean, var, invstd = kernels_for(xp).batch_norm_train(xp, x, weight, bias, eps)
        if running_mean is not None:
            count = math.prod(int(d) for d in x.shape) // int(x.shape[1])
            unbiased = var * (count / (count - 1))
            running_mean = (1.0 - momentum) * running_mean + momentum * mean
            running_var = (1.0 - momentum) * running_var + momentum * unbiased
    else:
        invstd = 1.0 / xp.sqrt(running_var + eps)
        x_hat = (x - _per_channel(xp, running_mean, nd)) * _per_channel(xp, invstd, nd)
        y = x_hat
        if weight is not None:
            y = y * _per_channel(xp, weight, nd)
        if bias is not None:
            y = y + _per_channel(xp, bias, nd)
    return y, running_mean, running_var, BatchNormSaved(x_hat, invstd, weight, training)


def _synced_forward(
    xp: Any,
    x: Array,
    weight: Array | None,
    bias: Array | None,
    running_mean: Array,
    running_var: Array,
    momentum: float,
    eps: float,
    reducer: StatsReducer,
) -> tuple[Array, Array, Array, BatchNormSaved]:
    """Training batch norm with the global batch's statistics (one ``reducer.gather``):
    each process's count, sums and centred sums of squares, combined as Chan et al.'s
    parallel variance (as accurate as the two-pass variance of one process)."""
    nd, axes, c = x.ndim, (0, *range(2, x.ndim)), int(x.shape[1])
    local = math.prod(int(d) for d in x.shape) // c
    local_mean = xp.mean(x, axis=axes)
    d = x - _per_channel(xp, local_mean, nd)
    count = xp.asarray([float(local)], dtype=x.dtype, device=array_api_compat.device(x))
    parts = reducer.gather(xp.concat([count, local_mean * local, xp.sum(d * d, axis=axes)]))
    counts = parts[:, :1]  # (P, 1); 0 for a process that only fills in
    sums, squares = parts[:, 1 : c + 1], parts[:, c + 1 :]
    m = xp.sum(counts)
    mean = xp.sum(sums, axis=0) / m
    means = sums / xp.where(counts > 0, counts, xp.ones_like(counts))
    spread = xp.where(counts > 0, means - mean, xp.zeros_like(means))
    var = (xp.sum(squares, axis=0) + xp.sum(counts * spread * spread, axis=0)) / m
    invstd = 1.0 / xp.sqrt(var + eps)
    x_hat = (x - _per_channel(xp, mean, nd)) * _per_channel(xp, invstd, nd)
    y = x_hat if weight is None else x_hat * _per_channel(xp, weight, nd)
    if bias is not None:
        y = y + _per_channel(xp, bias, nd)
    new_mean = (1.0 - momentum) * running_mean + momentum * mean
    new_var = (1.0 - momentum) * running_var + momentum * (var * (m / (m - 1.0)))
    return y, new_mean, new_var, BatchNormSaved(x_hat, invstd, weight, True, reducer, m)


def _synced_backward(xp: Any, g: Array, saved: BatchNormSaved) -> tuple[Array, Array, Array]:
    """Training batch norm's backward with the global batch's gradient sums."""
    nd, axes, c = g.ndim, (0, *range(2, g.ndim)), int(g.shape[1])
    grad_bias = xp.sum(g, axis=axes)
    grad_weight = xp.sum(g * saved.x_hat, axis=axes)
    total = saved.reducer.backward(xp.concat([grad_bias, grad_weight]))
    m = saved.count
    gx = g - _per_channel(xp, total[:c] / m, nd) - saved.x_hat * _per_channel(xp, total[c:] / m, nd)
    scale = saved.invstd if saved.weight is None else saved.weight * saved.invstd
    return gx * _per_channel(xp, scale, nd), grad_weight, grad_bias


def batch_norm(
    x: Array,
    weight: Array | None,
    bias: Array | None,
    running_mean: Array | None = None,
    running_var: Array | None = None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Array, Array | None, Array | None]:
    """Batch normalization, as ``torch.nn.functional.batch_norm`` (without its in-place update).

    Args:
        x: input (N, C), (N, C, L) or (N, C, H, W), float32 or float64.
        weight, bias: optional per-channel scale and shift (C,).
        running_mean, running_var: running statistics (C,), or both ``None`` (training
            only: then nothing is tracked).
        training: normalize with the batch statistics (and update the running ones),
            else with the running statistics.
        momentum: weight of the batch statistics in the running update, in [0, 1].
        eps: added to the variance before the square root.

    Returns:
        ``(y, new_running_mean, new_running_var)``: y has the shape of x; the running
        statistics are new arrays (unchanged in inference, ``None`` if not given).
    """
    y, rm, rv, _ = batch_norm_forward(
        x,
        weight,
        bias,
        running_mean,
        running_var,
        training=training,
        momentum=momentum,
        eps=eps,
    )
    return y, rm, rv


def _backward_from_saved(grad_out: Array, saved: BatchNormSaved) -> tuple[Array, Array, Array]:
    xp = namespace(grad_out=grad_out, x_hat=saved.x_hat)
    if saved.reducer is not None:
        return _synced_backward(xp, grad_out, saved)
    return kernels_for(xp).batch_norm_backward(
        xp, grad_out, saved.x_hat, saved.invstd, saved.weight, saved.training
    )


def batch_norm_backward(
    grad_out: Array,
    x: Array | BatchNormSaved,
    weight: Array | None = None,
    running_mean: Array | None = None,
    running_var: Array | None = None,
    *,
    training: bool = True,
    eps: float = 1e-5,
) -> tuple[Array, Array, Array]:
    """Vector-Jacobian product of :func:`batch_norm`.

    Args:
        grad_out: gradient with respect to y, the shape of x.
        x: the input, with ``weight``, ``running_mean``, ``running_var``, ``training``
            and ``eps`` as given to :func:`batch_norm` (the forward pass is recomputed;
            the running statistics matter in inference only); or the
            :class:`BatchNormSaved` that :func:`batch_norm_forward` returned, alone.

    Returns:
        ``(grad_x, grad_weight, grad_bias)`` of shapes x.shape, (C,) and (C,) (the
        gradients of the scale and shift even when the forward had none). In training
        the batch statistics depend on x, and grad_x carries that dependence.
    """
    if isinstance(x, BatchNormSaved):
        for name, value in dict(weight=weight, running_mean=running_mean).items():
            if value is not None:
                raise TypeError(
                    f"{name}: not read with the BatchNormSaved of batch_norm_forward, got "
                    f"{type(value).__name__}"
                )
        if running_var is not None:
            raise TypeError("running_var: not read with the BatchNormSaved of batch_norm_forward")
        return _backward_from_saved(grad_out, x)
    xp = namespace(grad_out=grad_out, x=x)
    if tuple(grad_out.shape) != tuple(x.shape):
        raise ValueError(
            f"grad_out: expected shape {tuple(x.shape)} (the shape of x), "
            f"got {tuple(grad_out.shape)}"
        )
    *_, saved = batch_norm_forward(
        x, weight, None, running_mean, running_var, training=training, eps=eps
    )
    check_float(xp, x=x, grad_out=grad_out)
    return _backward_from_saved(grad_out, saved)


# ------------------------------------------------------------------ global pooling


def global_avg_pool2d(x: Array) -> Array:
    """Mean over the spatial axes: x (N, C, H, W) -> (N, C).

    PyTorch's ``adaptive_avg_pool2d(x, 1)`` gives the same values shaped (N, C, 1, 1).
    """
    xp = namespace(x=x)
    check_rank(x, "x", 4, "(N, C, H, W)")
    check_float(xp, x=x)
    return xp.mean(x, axis=(2, 3))


def global_avg_pool2d_backward(grad_out: Array, x_shape: tuple[int, ...]) -> Array:
    """Vector-Jacobian product of :func:`global_avg_pool2d`.

    Args:
        grad_out: gradient with respect to the output, (N, C).
        x_shape: the input's shape (N, C, H, W).

    Returns:
        grad_x (N, C, H, W): each output gradient divided by H * W at every position.
    """
    xp = namespace(grad_out=grad_out)
    shape = tuple(int(s) for s in x_shape)
    if len(shape) != 4:
        raise ValueError(f"x_shape: expected (N, C, H, W), got {shape}")
    if tuple(grad_out.shape) != shape[:2]:
        raise ValueError(
            f"grad_out: expected shape {shape[:2]} for an input of shape {shape}, "
            f"got {tuple(grad_out.shape)}"
        )
    check_float(xp, grad_out=grad_out)
    scale = 1.0 / (shape[2] * shape[3])
    return xp.broadcast_to(grad_out[:, :, None, None], shape) * scale  # a fresh array


# ------------------------------------------------------------------ residual sum


def add(a: Array, b: Array) -> Array:
    """a + b for arrays of one shape, dtype and device (a residual block's sum)."""
    xp = namespace(a=a, b=b)
    check_float(xp, a=a, b=b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"b: expected the shape of a, {tuple(a.shape)}, got {tuple(b.shape)} "
            "(a residual branch and its shortcut must have the same output shape)"
        )
    return a + b


def add_backward(grad_out: Array) -> tuple[Array, Array]:
    """Vector-Jacobian product of :func:`add`: the gradient goes to both inputs."""
    namespace(grad_out=grad_out)
    return grad_out, grad_out
