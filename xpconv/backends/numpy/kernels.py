"""NumPy fast path: the kernels of ``_kernels.Kernels``, same contracts as the portable
ones, registered for the NumPy namespace.

im2col and col2im: the portable path copies the input three times (transpose, pad,
stack of the tap slices). Here the transposed, padded input is written once into a
buffer, the (C, KH, KW, KP, KQ, PH, PW, N) windows are a strided view of it, and one
copy makes the columns. col2im accumulates into a buffer it owns, in place, one strided
view per kernel tap. The shapes, regions and strides are ``_strided``'s, shared with
the PyTorch kernels; here the copies are split over the cores.

The pool, weight-gradient and tanh kernels write into buffers they own with ``out=``
instead of chaining temporaries. Work on large arrays is split over the machine's
cores (NumPy releases the GIL inside its loops, and one core does not saturate memory
bandwidth), always into the same parts, so results do not depend on how many threads
run them.

Matrix products: while OpenBLAS runs on one thread
(:func:`xpconv.backends.numpy.host.product_threads`, the host tuning's way), large
ones are split into one part per core over xpconv's threads. While OpenBLAS threads its
products itself (the default), the kernels keep its threads asleep where they can: a
product OpenBLAS would thread runs as parts small enough for it to keep on the calling
thread (at most 2**18 multiply-adds), over xpconv's threads, when those parts are still
wide; row sums are NumPy's instead of a matrix-vector product. A product that cannot be
cut so is one call OpenBLAS threads; its threads then spin for a while, and xpconv's
kernels run their parts on one thread meanwhile instead of fighting them for the cores.
The kernels never change OpenBLAS's settings, and the parts never depend on how many
threads run them. Large arrays take their memory from
:mod:`xpconv.backends.numpy.scratch`.
Measured timings are in docs/performance.md.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from xpconv.backends.kernels import PORTABLE, Kernels, register_fast_path
from xpconv.backends.numpy import host, scratch
from xpconv.backends.portable import ConvGeometry
from xpconv.backends.strided import StridedPlan, strided_plan

Array = Any


_PARALLEL_BYTES = 1 << 22  # below 4 MB a copy is not worth splitting
_PARALLEL_COMPUTE_BYTES = 1 << 18  # an op of several ns per value (tanh): from 256 KB


@cache
def _cores() -> int:
    return min(host.usable_cores(), 8)


@cache
def _executor() -> ThreadPoolExecutor | None:
    """Helper threads: one fewer than the cores, as the calling thread takes a part."""
    return ThreadPoolExecutor(_cores() - 1) if _cores() > 1 else None


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_executor.cache_clear)


# OpenBLAS keeps the threads of a threaded product spinning for 2**28 cycles after it
_BLAS_SPIN_S = 0.15


class _BlasThreads:
    """When OpenBLAS last threaded one of xpconv's products (monotonic seconds)."""

    woken = -1.0


def _blas_wakes() -> None:
    """Note that OpenBLAS is about to thread a product: its threads spin a while."""
    _BlasThreads.woken = time.monotonic()


def _workers(limit: int | None = None) -> int:
    """Threads the parts may run on now: every core, fewer while the host balancing
    (``host.balance_threads``) sees the machine busy, one while OpenBLAS's own threads
    still spin after a product xpconv let it thread, at most ``limit``."""
    if time.monotonic() - _BlasThreads.woken < _BLAS_SPIN_S:
        return 1
    allowed = host.parallel_workers() or _cores()
    return max(1, min(allowed, _cores(), limit or allowed))


def _run_parts(work: Any, bounds: list[int], workers: int) -> None:
    """Run ``work(lo, hi)`` for every range of ``bounds``, on up to ``workers`` threads.

    The calling thread runs the first range itself instead of waiting for a helper to
    wake. With one worker it runs them all, one after another: the parts, and so the
    results, are the same.
    """
    ranges = list(zip(bounds[:-1], bounds[1:]))
    pool = _executor() if workers > 1 else None
    if pool is None:
        for lo, hi in ranges:
            work(lo, hi)
        return
    futures = [pool.submit(work, lo, hi) for lo, hi in ranges[1:]]
    work(*ranges[0])
    for future in futures:
        future.result()


def _in_parts(
    work: Any, count: int, nbytes: int, threshold: int = _PARALLEL_BYTES, limit: int = 0
) -> None:
    """Run ``work(lo, hi)`` over ranges that split ``range(count)`` (channels, kernel
    taps, rows, chunks or elements), one per core when ``nbytes`` reach ``threshold``,
    on at most ``limit`` threads (0: no limit)."""
    parts = min(_cores(), count) if nbytes >= threshold else 1
    _run_parts(work, [count * k // parts for k in range(parts + 1)], _workers(limit or None))


def _padded_chwn(x: np.ndarray, plan: StridedPlan) -> np.ndarray:
    """(N, C, H, W) -> (C, Hp, Wp, N) with zero padding, in one pass."""
    xt = x.transpose(1, 2, 3, 0)
    if not plan.zero and xt.flags.c_contiguous:  # stored batch-innermost: no copy
        return xt
    buf = scratch.take(plan.padded, x.dtype)
    if not plan.zero:
        np.copyto(buf, xt)
        return buf
    for region in plan.zero:
        buf[region] = 0
    buf[plan.inside] = xt
    return buf


def im2col(xp: Any, x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """Columns of ``x``: (N, C, H, W) -> (C * KH * KW, OH * OW * N)."""
    plan = strided_plan(geom)
    src = _padded_chwn(np.asarray(x), plan)
    windows = as_strided(
        src, shape=plan.windows, strides=plan.window_strides(*src.strides), writeable=False
    )
    cols = scratch.take(windows.shape, src.dtype)
    if geom.in_channels == 1 and geom.pool == (1, 1):  # split the kernel taps instead
        kw = geom.kernel[1]

        def copy(lo: int, hi: int) -> None:
            for tap in range(lo, hi):
                np.copyto(cols[0, tap // kw, tap % kw], windows[0, tap // kw, tap % kw])

        _in_parts(copy, geom.taps, cols.nbytes)
    else:

        def copy(lo: int, hi: int) -> None:
            np.copyto(cols[lo:hi], windows[lo:hi])

        _in_parts(copy, geom.in_channels, cols.nbytes)
    return cols.reshape(geom.in_channels * geom.taps, geom.columns)


def col2im(xp: Any, cols: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """The adjoint of :func:`im2col`: (C * KH * KW, OH * OW * N) -> (N, C, H, W)."""
    plan = strided_plan(geom)
    c = geom.in_channels
    cols = np.asarray(cols).reshape(plan.windows)
    if plan.reshape_only:
        return cols.reshape(c, *geom.in_size, geom.batch).transpose(3, 0, 1, 2)
    acc = scratch.take(plan.padded, cols.dtype)
    acc.fill(0)
    strides = plan.tap_strides(*acc.strides)

    def accumulate(lo: int, hi: int) -> None:
        for i, j, row, col in plan.tap_starts:
            view = as_strided(
                acc[lo:hi, row:, col:], (hi - lo, *plan.tap_shape), strides, writeable=True
            )
            view += cols[lo:hi, i, j]

    _in_parts(accumulate, c, cols.nbytes)
    return acc[plan.inside].transpose(3, 0, 1, 2)


_SINGLE_THREAD_GEMM = 1 << 18  # OpenBLAS keeps products below M * N * K = 2**18 on one thread
_SPLIT_GEMM = 1 << 23  # from here a product is split over the cores (below: no gain)
_SPLIT_ALIGN = 16  # part boundaries: whole cache lines of float32, whole BLAS row tiles
_SPLIT_MIN = 128  # rows or columns per part below which the inner dimension is split


def _bounds(size: int, parts: int) -> list[int]:
    """``parts`` + 1 boundaries that split ``range(size)`` at multiples of 16."""
    inner = [size * k // parts // _SPLIT_ALIGN * _SPLIT_ALIGN for k in range(1, parts)]
    return [0, *inner, size]


def _one_thread_cuts(m: int, n: int, k: int) -> list[int] | None:
    """Boundaries that cut an (M, K) @ (K, N) product by columns (or rows, whichever are
    more) into parts of at most 2**18 multiply-adds, the size OpenBLAS keeps on the
    calling thread, each as wide as that allows at a multiple of 16; ``None`` when a
    part would be narrower than 128."""
    width = _SINGLE_THREAD_GEMM // (k * min(m, n)) // _SPLIT_ALIGN * _SPLIT_ALIGN
    if width < _SPLIT_MIN:
        return None
    return [*range(0, max(m, n), width), max(m, n)]


def _unthreaded_parts(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """``a @ b`` into ``out`` in the parts of :func:`_one_thread_cuts`, over xpconv's
    threads, the same parts every time; False, with nothing done, when it gives none."""
    (m, k), n = a.shape, b.shape[1]
    cuts = _one_thread_cuts(m, n, k)
    if cuts is None:
        return False

    def multiply(lo: int, hi: int) -> None:
        for p, q in zip(cuts[lo:hi], cuts[lo + 1 : hi + 1]):
            if n >= m:
                np.matmul(a, b[:, p:q], out=out[:, p:q])
            else:
                np.matmul(a[p:q], b, out=out[p:q])

    _in_parts(multiply, len(cuts) - 1, out.nbytes, _PARALLEL_COMPUTE_BYTES)
    return True


def matmul(xp: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for (M, K) and (K, N).

    While OpenBLAS threads its products itself (``product_threads()`` is ``None``), a
    product it would thread whose parts of at most 2**18 multiply-adds, the size it
    keeps on the calling thread, are still 128 columns (or rows) wide runs as those
    parts over xpconv's threads: OpenBLAS's own threads are never woken, so they never
    spin beside xpconv's. Other products are one call.

    While OpenBLAS runs on one thread (:func:`~xpconv.backends.numpy.host.product_threads`
    is not ``None``), a product of 2**23 multiply-adds or more is cut into one part per
    core, always the same way: by rows or columns, whichever are more, at multiples of
    16, or by the inner dimension when both are few (the partial products then added in
    a fixed order). The parts run on up to ``product_threads()`` threads, fewer while
    the host balancing asks for fewer, and give the same bits on any number of them.
    Smaller products, and every product while OpenBLAS threads on its own, are one BLAS
    call.
    """
    a, b = np.asarray(a), np.asarray(b)
    (m, k), n = a.shape, b.shape[1]
    if m * n * k <= _SINGLE_THREAD_GEMM:  # one thread whatever OpenBLAS's count
        return a @ b
    threads = host.product_threads()
    if threads is None or m * n * k < _SPLIT_GEMM:
        out = scratch.take((m, n), np.result_type(a, b))
        if threads is None:
            if _unthreaded_parts(a, b, out):
                return out
            _blas_wakes()
        return np.matmul(a, b, out=out)
    parts, workers = _cores(), _workers(threads)
    if max(m, n) >= _SPLIT_MIN * parts:
        out = scratch.take((m, n), np.result_type(a, b))
        if n >= m:

            def columns(lo: int, hi: int) -> None:
                np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])

            _run_parts(columns, _bounds(n, parts), workers)
        else:

            def rows(lo: int, hi: int) -> None:
                np.matmul(a[lo:hi], b, out=out[lo:hi])

            _run_parts(rows, _bounds(m, parts), workers)
        return out
    partial: dict[int, np.ndarray] = {}

    def inner(lo: int, hi: int) -> None:
        partial[lo] = a[:, lo:hi] @ b[lo:hi]

    _run_parts(inner, _bounds(k, parts), workers)
    # the same order every time
    return sum(partial[lo] for lo in sorted(partial))  # type: ignore[return-value]


_CONV_BLOCK = 1 << 19  # bytes of columns built and multiplied at a time: they stay in cache
# OpenBLAS's Skylake-X kernels multiply a product of at most 10**6 multiply-adds without
# packing its operands: for a convolution's thin weight about twice as fast per
# multiply-add (docs/performance.md), so a block's product is cut into pieces under it
_UNPACKED_GEMM = 10**6


def conv_matmul(
    xp: Any,
    x: np.ndarray,
    weight2d: np.ndarray,
    bias: np.ndarray | None,
    geom: ConvGeometry,
    keep_cols: bool = True,
    tanh: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``weight2d @ im2col(x) + bias`` (its tanh with ``tanh``): (N, C, H, W) ->
    (O, OH * OW * N), built a few output rows at a time.

    Each block of columns is copied from the windows view and multiplied, and the bias
    added to its outputs and their tanh taken, while it is still in cache; only the
    output (and the columns, when ``keep_cols``) go to memory. Without ``keep_cols`` (a
    forward pass no backward follows) the columns are never stored at all. While
    OpenBLAS runs on one thread the output rows are split over the cores, each block
    one-thread BLAS products, the same blocks every time (see :func:`matmul`); a block's
    product over more than ``_UNPACKED_GEMM`` multiply-adds is one batched call over
    pieces of its columns.
    Pool-ordered columns (the fused conv + pool step) and grouped convolutions take the
    one-pass path. Returns ``(output, columns or None)``.
    """
    if not _blockwise(geom):
        return PORTABLE.conv_matmul(xp, x, weight2d, bias, geom, keep_cols, tanh)
    out, cols, _ = _conv_blocks(x, weight2d, bias, geom, keep_cols, tanh, None)
    return out, cols


def conv_linear(
    xp: Any,
    x: np.ndarray,
    weight2d: np.ndarray,
    bias: np.ndarray | None,
    geom: ConvGeometry,
    head: np.ndarray,
    keep_cols: bool = True,
    tanh: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """:func:`conv_matmul`, and ``head @ flatten(output)``: (U, O * OH * OW) -> (U, N).

    Each thread multiplies the output rows it made by their columns of ``head`` as
    soon as its part is done, while they are in cache, instead of one product over
    the whole output after every part. The parts' products are added in a fixed order,
    so the result does not depend on how many threads ran them. Returns ``(output,
    columns or None, head product)``.
    """
    if not _blockwise(geom):
        return PORTABLE.conv_linear(xp, x, weight2d, bias, geom, head, keep_cols, tanh)
    return _conv_blocks(x, weight2d, bias, geom, keep_cols, tanh, np.asarray(head))


def _blockwise(geom: ConvGeometry) -> bool:
    """Whether :func:`_conv_blocks` runs the convolution: one group, no pooling taps."""
    return geom.pool == (1, 1) and geom.groups == 1


def _conv_blocks(
    x: np.ndarray,
    weight2d: np.ndarray,
    bias: np.ndarray | None,
    geom: ConvGeometry,
    keep_cols: bool,
    tanh: bool,
    head: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The output matrix, the columns (or None) and the (U, N) ``head`` product (or
    None) of :func:`conv_matmul` and :func:`conv_linear`."""
    plan = strided_plan(geom)
    src = _padded_chwn(np.asarray(x), plan)
    w2 = np.asarray(weight2d)
    windows = as_strided(
        src, shape=plan.windows, strides=plan.window_strides(*src.strides), writeable=False
    )
    rows, (oh, ow), n = w2.shape[1], geom.out, geom.batch
    per_row = ow * n  # columns of one output row
    out = scratch.take((w2.shape[0], oh * per_row), np.result_type(w2, src))
    cols = scratch.take(windows.shape, src.dtype) if keep_cols else None
    step = max(1, _CONV_BLOCK // (rows * per_row * src.itemsize))  # output rows per block
    threads = host.product_threads()  # None: OpenBLAS threads its products itself
    # then every product is one OpenBLAS keeps on the calling thread, so that its own
    # threads never wake and spin beside xpconv's
    limit = _UNPACKED_GEMM if threads else _SINGLE_THREAD_GEMM
    piece = _piece(per_row, limit // (rows * len(w2)))
    head_rows = oh if threads or head is None else _SINGLE_THREAD_GEMM // (len(head) * per_row)
    shift = None if bias is None else np.asarray(bias, dtype=out.dtype).reshape(-1, 1)
    # (O, U, OH * OW): per output channel, the head's columns that read it
    head_by_channel = None if head is None else head.reshape(len(head), len(w2), -1).swapaxes(0, 1)
    partial: dict[int, np.ndarray] = {}

    def work(lo: int, hi: int) -> None:
        if cols is None:  # one block's columns, reused
            block_cols = np.empty((*windows.shape[:5], step, *windows.shape[6:]), src.dtype)
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            block = block_cols[..., : b - a, :, :] if cols is None else cols[..., a:b, :, :]
            np.copyto(block, windows[..., a:b, :, :])
            product = out[:, a * per_row : b * per_row]
            _thin_product(w2, block.reshape(rows, -1), product, piece)
            if shift is not None:
                product += shift
            if tanh:
                np.tanh(product, out=product)
        if head_by_channel is not None:
            partial[lo] = _head_part(head_by_channel, out, lo, hi, ow, max(1, head_rows))

    _in_parts(work, oh, out.nbytes, _PARALLEL_COMPUTE_BYTES, threads or 0)
    head_out = None if head is None else sum(partial[lo] for lo in sorted(partial))
    return out, None if cols is None else cols.reshape(rows, -1), head_out  # type: ignore[return-value]


def _head_part(
    head_by_channel: np.ndarray, out: np.ndarray, lo: int, hi: int, ow: int, rows: int
) -> np.ndarray:
    """The (U, N) product of the head's columns with output rows ``lo:hi`` of the
    (O, OH * OW * N) ``out``: (O, U, R) @ (O, R, N) summed over O, ``rows`` output rows
    per product, the partial products added in order."""
    n = out.shape[1] // head_by_channel.shape[2]
    total = None
    for a in range(lo, hi, rows):
        b = min(a + rows, hi)
        done = out[:, a * ow * n : b * ow * n].reshape(len(out), -1, n)
        product = np.matmul(head_by_channel[:, :, a * ow : b * ow], done).sum(axis=0)
        total = product if total is None else total + product
    return total  # type: ignore[return-value]


def _piece(columns: int, limit: int) -> int:
    """The widest piece of at most ``limit`` columns that cuts ``columns`` into 2 to 16
    equal pieces; ``columns`` itself when it is within ``limit`` or no such cut exists."""
    if columns <= limit:
        return columns
    cuts = (columns // k for k in range(2, 17) if columns % k == 0 and columns // k <= limit)
    return next(cuts, columns)


def _thin_product(w2: np.ndarray, block: np.ndarray, out: np.ndarray, piece: int) -> None:
    """``w2 @ block`` into ``out`` (a view whose last axis is contiguous), as one batched
    call of products of ``piece`` columns each (``piece`` divides the columns of one
    output row, so those of every block of whole rows)."""
    if piece >= block.shape[1]:
        np.matmul(w2, block, out=out)
        return
    pieces = block.shape[1] // piece
    np.matmul(
        w2,
        block.reshape(len(block), pieces, piece).swapaxes(0, 1),
        out=out.reshape(len(out), pieces, piece).swapaxes(0, 1),  # a view: the last axis is split
    )


def weight_grad(xp: Any, grad2: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``grad2 @ cols.T`` for (O, L) and (K, L).

    A small output with a huge inner dimension (a first layer: O * K of a few hundred,
    L of a hundred thousand) is slow as one GEMM. It runs as batched matmuls over
    chunks of L, each small enough for OpenBLAS to keep on one thread, with the chunks
    split over the cores and the partial sums added in a fixed order. Other shapes are
    ``matmul(cols, grad2.T).T``.
    """
    (o, length), k = grad2.shape, cols.shape[0]
    chunks = next(
        (
            c
            for c in (256, 512, 1024, 2048)
            if length % c == 0 and o * k * (length // c) <= _SINGLE_THREAD_GEMM
        ),
        None,
    )
    if o * k > 4096 or chunks is None or length < 64 * chunks:
        return matmul(xp, cols, grad2.T).T  # the faster orientation (docs/performance.md)
    m = length // chunks
    g3 = grad2.reshape(o, chunks, m).transpose(1, 0, 2)  # (B, O, M) views, no copies
    c3 = cols.reshape(k, chunks, m).transpose(1, 2, 0)  # (B, M, K)
    partial: dict[int, np.ndarray] = {}

    def accumulate(lo: int, hi: int) -> None:
        partial[lo] = np.matmul(g3[lo:hi], c3[lo:hi]).sum(axis=0)

    _in_parts(accumulate, chunks, grad2.nbytes + cols.nbytes)
    # the same order every time
    return sum(partial[lo] for lo in sorted(partial))  # type: ignore[return-value]


def max_pool_blocks(
    xp: Any, blocks: np.ndarray, bias: np.ndarray | None = None, relu: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Pool-ordered max pool, bias and ReLU (contract in ``_pool``), split over the
    cores by channel, each part finished in place while it is in cache."""
    blocks = np.asarray(blocks)
    o, taps = blocks.shape[:2]
    best = scratch.take((o, *blocks.shape[2:]), blocks.dtype)
    code = np.zeros(best.shape, dtype=np.int8)
    shift = None if bias is None else np.asarray(bias, dtype=blocks.dtype).reshape(o, 1, 1, 1)

    def reduce(lo: int, hi: int) -> None:
        part, top, index = blocks[lo:hi], best[lo:hi], code[lo:hi]
        np.copyto(top, part[:, 0])
        for k in range(1, taps):
            later = np.greater(part[:, k], top).view(np.int8)  # ties keep the earlier tap
            np.maximum(top, part[:, k], out=top)
            step = np.subtract(np.int8(k), index)
            step *= later
            index += step
        if shift is not None:
            top += shift[lo:hi]
        if relu:
            index += 1
            index *= np.greater(top, 0).view(np.int8)
            index -= 1
            np.maximum(top, 0, out=top)

    _in_parts(reduce, o, blocks.nbytes)
    return best, code


def max_pool_blocks_backward(
    xp: Any, grad_out: np.ndarray, argmax: np.ndarray, taps: int
) -> np.ndarray:
    """Pool-ordered max-pool backward (contract in ``_pool``), written tap by tap into
    one buffer and split over the cores by channel."""
    grad, argmax = np.asarray(grad_out), np.asarray(argmax)
    out = scratch.take((grad.shape[0], taps, *grad.shape[1:]), grad.dtype)

    def scatter(lo: int, hi: int) -> None:
        for k in range(taps):
            np.multiply(grad[lo:hi], argmax[lo:hi] == k, out=out[lo:hi, k])

    _in_parts(scatter, grad.shape[0], out.nbytes)
    return out


def _dense(a: np.ndarray) -> bool:
    """Whether ``a`` fills its memory without gaps, in any axis order."""
    expected = a.itemsize
    for stride, size in sorted(zip(a.strides, a.shape)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _elementwise(
    fn: Any, *arrays: np.ndarray, threshold: int = _PARALLEL_BYTES
) -> np.ndarray | None:
    """``fn(out, *arrays)`` on pieces of flat memory split over the cores, into a new
    array laid out like ``arrays[0]``; None when the arrays do not share one dense
    layout (the caller then takes the portable expression)."""
    first = arrays[0]
    if not all(a.shape == first.shape and a.strides == first.strides for a in arrays):
        return None
    if not _dense(first):
        return None
    out = as_strided(scratch.take((first.size,), first.dtype), first.shape, first.strides)
    flat = [np.ravel(a, order="K") for a in (out, *arrays)]  # views: all dense

    def run(lo: int, hi: int) -> None:
        fn(*(f[lo:hi] for f in flat))

    _in_parts(run, first.size, out.nbytes, threshold)
    return out


def tanh(xp: Any, x: np.ndarray) -> np.ndarray:
    """``tanh(x)``, split over the cores."""
    x = np.asarray(x)
    out = _elementwise(lambda o, a: np.tanh(a, out=o), x, threshold=_PARALLEL_COMPUTE_BYTES)
    return PORTABLE.tanh(xp, x) if out is None else out


def _tanh_grad(out: np.ndarray, grad: np.ndarray, t: np.ndarray) -> None:
    np.multiply(t, t, out=out)
    np.subtract(1, out, out=out)
    np.multiply(out, grad, out=out)


def tanh_backward(xp: Any, grad_out: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``grad_out * (1 - t**2)`` in one buffer, split over the cores."""
    grad_out, t = np.asarray(grad_out), np.asarray(t)
    out = _elementwise(_tanh_grad, grad_out, t) if grad_out.dtype == t.dtype else None
    return PORTABLE.tanh_backward(xp, grad_out, t) if out is None else out


def row_sums(xp: Any, a: np.ndarray) -> np.ndarray:
    """Row sums of (M, K) ``a``: (M,). A matrix-vector product (faster than
    ``sum(axis=1)`` on long rows), except while OpenBLAS threads its products itself:
    it threads that one from 9,216 values, waking threads that then spin beside
    xpconv's, so the sums are NumPy's, split by rows over xpconv's threads."""
    a = np.asarray(a)
    if host.product_threads() is not None or a.size < 9216:
        return a @ np.ones(a.shape[1], dtype=a.dtype)
    out = np.empty(a.shape[0], dtype=a.dtype)

    def add(lo: int, hi: int) -> None:
        np.sum(a[lo:hi], axis=1, out=out[lo:hi])

    _in_parts(add, a.shape[0], a.nbytes)
    return out


def _channel_rows(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """``x`` (N, C, ...) as a (C, M) view of its memory, and the axis order of that
    memory, when each channel's values are one contiguous block (the batch-innermost
    layout a convolution leaves, or C-order with N == 1); else ``None``."""
    for order in ((1, *range(2, x.ndim), 0), (1, 0, *range(2, x.ndim))):
        view = x.transpose(order)
        if view.flags.c_contiguous:
            return view.reshape(x.shape[1], -1), order
    return None


def _like(rows: np.ndarray, order: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """(C, M) rows in memory order ``order`` -> the (N, C, ...) view of them."""
    return rows.reshape([shape[a] for a in order]).transpose(np.argsort(order))


_BN_BLOCK = 1 << 16  # values per pass of a channel block: 256 KB of float32 stays in cache


def batch_norm_train(
    xp: Any, x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training-mode batch norm of ``x`` (N, C, ...) channel block by channel block, so
    each block is read once from memory and its statistics, normalization, scale and
    shift run in cache (the portable path makes about ten passes over ``x``). The sums
    are NumPy's pairwise ones, as in the portable path (a matrix-vector product or
    ``einsum`` is faster but much less accurate in float32; docs/performance.md).

    Returns ``(y, x_hat, mean, var, invstd)`` (var biased; y and x_hat in x's memory
    order). Other memory orders take the portable code.
    """
    found = _channel_rows(np.asarray(x))
    if found is None or x.dtype not in (np.float32, np.float64):
        return PORTABLE.batch_norm_train(xp, x, weight, bias, eps)
    rows, order = found
    c, m = rows.shape
    xh, y = scratch.take(rows.shape, rows.dtype), scratch.take(rows.shape, rows.dtype)
    mean, var, invstd = (np.empty(c, dtype=x.dtype) for _ in range(3))
    step = max(1, _BN_BLOCK // m)

    def work(lo: int, hi: int) -> None:
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            block, h, out = rows[a:b], xh[a:b], y[a:b]
            mean[a:b] = block.sum(axis=1) / m
            np.subtract(block, mean[a:b, None], out=h)
            var[a:b] = np.square(h, out=out).sum(axis=1) / m  # y's rows as scratch
            invstd[a:b] = 1.0 / np.sqrt(var[a:b] + eps)
            h *= invstd[a:b, None]
            if weight is None:
                out[...] = h
            else:
                np.multiply(h, weight[a:b, None], out=out)
            if bias is not None:
                out += bias[a:b, None]

    _in_parts(work, c, rows.nbytes)
    shape = tuple(x.shape)
    return _like(y, order, shape), _like(xh, order, shape), mean, var, invstd


def batch_norm_backward(
    xp: Any,
    grad_out: np.ndarray,
    x_hat: np.ndarray,
    invstd: np.ndarray,
    weight: np.ndarray | None,
    training: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch norm's backward in training, block by block: ``(grad_x, grad_weight,
    grad_bias)``. Inference, and ``grad_out`` in another memory order than ``x_hat``,
    take the portable code."""
    found_g, found_h = _channel_rows(np.asarray(grad_out)), _channel_rows(np.asarray(x_hat))
    same = found_g is not None and found_h is not None and found_g[1] == found_h[1]
    if not (training and same and grad_out.dtype == x_hat.dtype):
        return PORTABLE.batch_norm_backward(xp, grad_out, x_hat, invstd, weight, training)
    (g, order), (h, _) = found_g, found_h
    c, m = g.shape
    gx = scratch.take(g.shape, g.dtype)
    gw, gb = np.empty(c, dtype=g.dtype), np.empty(c, dtype=g.dtype)
    scale = invstd if weight is None else weight * invstd
    step = max(1, _BN_BLOCK // m)

    def work(lo: int, hi: int) -> None:
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            out = gx[a:b]
            gb[a:b] = g[a:b].sum(axis=1)
            gw[a:b] = np.multiply(g[a:b], h[a:b], out=out).sum(axis=1)  # gx's rows as scratch
            # grad_x = scale * (g - mean(g) - x_hat * mean(g * x_hat))
            np.multiply(h[a:b], (gw[a:b] / m)[:, None], out=out)
            np.subtract(g[a:b], out, out=out)
            out -= (gb[a:b] / m)[:, None]
            out *= scale[a:b, None]

    _in_parts(work, c, g.nbytes)
    return _like(gx, order, tuple(grad_out.shape)), gw, gb


def batch_innermost(xp: Any, x: np.ndarray) -> bool:
    """Whether the batch axis (0) of ``x`` has the smallest stride."""
    strides = np.asarray(x).strides
    return x.ndim > 1 and x.shape[0] > 1 and strides[0] == min(abs(s) for s in strides)


def _load() -> Kernels:
    return Kernels(
        "numpy",
        im2col,
        col2im,
        matmul=matmul,
        conv_matmul=conv_matmul,
        conv_linear=conv_linear,
        weight_grad=weight_grad,
        batch_innermost=batch_innermost,
        max_pool_blocks=max_pool_blocks,
        max_pool_blocks_backward=max_pool_blocks_backward,
        tanh=tanh,
        tanh_backward=tanh_backward,
        batch_norm_train=batch_norm_train,
        batch_norm_backward=batch_norm_backward,
        row_sums=row_sums,
    )


register_fast_path("is_numpy_namespace", cache(_load))
