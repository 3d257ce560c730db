"""Check a backward pass against central finite differences in float64, on any backend.

    import xpconv.ops as F
    from xpconv.tools import gradcheck

    report = gradcheck(F.tanh, x, backward=lambda g, x: (F.tanh_backward(g, x),))
    print(report)            # worst relative error per input and where it occurs

    gradcheck(layer, x)      # a built layer: its input and every parameter
    gradcheck(model, x)      # a Sequential: its input and every parameter

The scalar checked is ``L = sum(f(*inputs) * G)`` for a random ``G`` (seeded, float64):
the analytic gradient is ``backward(G, *inputs)``, the numeric one
``(L(x + eps e_i) - L(x - eps e_i)) / (2 eps)`` for every element ``i`` of every floating
input. Everything runs in float64 on the inputs' own backend and device; a layer or model
is cast to float64 for the check and put back as it was afterwards (parameters and
buffers alike). ``f`` must be deterministic (no dropout in training mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj

from xpconv.backends.registry import Backend, backend_of, get_backend

Array = Any

__all__ = ["GradcheckError", "GradcheckReport", "InputCheck", "gradcheck"]


class GradcheckError(AssertionError):
    """An analytic gradient differs from the finite differences; the message is the report."""


@dataclass(frozen=True)
class InputCheck:
    """The comparison for one input (or parameter).

    ``max_rel_error`` is the largest ``|analytic - numeric|`` divided by the largest
    magnitude of either gradient of this input (at least ``atol / rtol``, so gradients
    that are zero up to rounding do not count as large errors); ``index`` is where that
    largest difference occurs, with the two values there.
    """

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    index: tuple[int, ...]
    analytic: float
    numeric: float
    passed: bool


@dataclass(frozen=True)
class GradcheckReport:
    """Every input's :class:`InputCheck`; true when all passed."""

    checks: tuple[InputCheck, ...]
    rtol: float
    atol: float
    eps: float

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def worst(self) -> InputCheck:
        """The input with the largest relative error."""
        return max(self.checks, key=lambda c: c.max_rel_error)

    def __str__(self) -> str:
        rows = [
            f"gradcheck (eps {self.eps:g}, rtol {self.rtol:g}, atol {self.atol:g}): "
            f"{'passed' if self.passed else 'FAILED'}"
        ]
        for c in self.checks:
            rows.append(
                f"  {c.name:<24} {'ok  ' if c.passed else 'FAIL'} rel {c.max_rel_error:.3g} "
                f"abs {c.max_abs_error:.3g} at {c.index} (analytic {c.analytic:.10g}, "
                f"numeric {c.numeric:.10g}) shape {c.shape}"
            )
        return "\n".join(rows)


class _Target:
    """A differentiable array the check perturbs: read it, set it, restore it."""

    def __init__(self, name: str, get: Callable[[], Array], put: Callable[[Array], None]):
        self.name, self.get, self.put = name, get, put


def _float64(be: Backend, a: Array) -> Array:
    xp = be.xp
    try:
        return xp.astype(a, xp.float64)
    except Exception as exc:  # a backend without float64
        raise TypeError(
            f"gradcheck: expected a backend with float64, {be.label} cannot cast: {exc}"
        ) from exc


def _is_float(a: Any) -> bool:
    return is_array_api_obj(a) and array_namespace(a).isdtype(a.dtype, "real floating")


def _check_tolerances(eps: Any, rtol: Any, atol: Any, max_elements: Any) -> None:
    for name, value in (("eps", eps), ("rtol", rtol), ("atol", 0.0 if atol is None else atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
    if not eps > 0:
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    if max_elements is not None and (
        isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1
    ):
        raise ValueError(f"max_elements: expected a positive int or None, got {max_elements!r}")


def _output_gradient(be: Any, grad_out: Any, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """G on the host: ``grad_out`` checked against the output's ``shape``, or standard
    normal numbers drawn from ``seed``."""
    if grad_out is None:
        return np.random.default_rng(seed).standard_normal(shape)
    g_host = np.asarray(be.to_numpy(grad_out) if is_array_api_obj(grad_out) else grad_out)
    if g_host.shape != shape:
        raise ValueError(f"grad_out: expected the output's shape {shape}, got {g_host.shape}")
    return g_host


def gradcheck(
    f: Any,
    *inputs: Any,
    backward: Callable[..., Sequence[Array | None] | Array] | None = None,
    grad_out: Any = None,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float | None = None,
    training: bool = True,
    max_elements: int | None = None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradcheckReport:
    """Compare an analytic backward pass with central finite differences in float64.

    Args:
        f: a function of arrays returning one array; or a built layer
            (``forward(x, training)`` / ``backward(grad)``, parameters in ``params``); or
            a :class:`~xpconv.nn.sequential.Sequential`.
        inputs: the arrays (any backend; host NumPy arrays are used as NumPy). Floating
            inputs are cast to float64 and checked; other inputs (integer labels) are
            passed through unchecked. A layer or model takes one input, x.
        backward: for a function ``f``: ``backward(grad_out, *inputs)`` returning one
            gradient per input (``None`` for an input it does not differentiate), or a
            single array when ``f`` has one input.
        grad_out: the output gradient G (host or backend array); default: standard
            normal numbers drawn from ``seed``.
        eps: finite-difference step.
        rtol, atol: an input passes when ``max |analytic - numeric| <= atol + rtol * scale``
            with ``scale`` the largest magnitude of its two gradients. ``atol`` defaults to
            the rounding noise of the differences, ``10 * (1 + |L|) * 2.2e-16 / eps``.
        training: the mode of a layer's or model's forward pass.
        max_elements: check at most this many elements of each input, drawn from
            ``seed`` (default: every element).
        seed: seeds G and the sampled elements.
        raise_on_failure: raise :class:`GradcheckError` (an ``AssertionError``) with the
            report when an input fails; otherwise only return the report.

    Returns:
        A :class:`GradcheckReport` with the worst relative error per input and its index.
    """
    _check_tolerances(eps, rtol, atol, max_elements)
    if not inputs:
        raise TypeError("inputs: expected at least one array to differentiate")
    host_in = [np.asarray(a) if not is_array_api_obj(a) else a for a in inputs]
    be = backend_of(next((a for a in host_in if is_array_api_obj(a)), np.zeros(0)))
    if isinstance(host_in[0], np.ndarray):
        be = get_backend("numpy")
    args = [_float64(be, a) if _is_float(a) else a for a in host_in]

    restore: list[Callable[[], None]] = []
    if hasattr(f, "parameters") and hasattr(f, "backward") and callable(f.parameters):
        call, analytic, targets = _model_check(f, args, be, training, restore)
    elif hasattr(f, "params") and hasattr(f, "backward"):
        call, analytic, targets = _layer_check(f, args, be, training, restore)
    else:
        if backward is None:
            raise TypeError("backward: expected the backward function of f, got None")
        call, analytic, targets = _function_check(f, backward, args)
    try:
        g = be.asarray(_output_gradient(be, grad_out, tuple(call().shape), seed), dtype="float64")
        xp = be.xp
        grads = analytic(g)

        def loss() -> float:
            return float(xp.sum(call() * g))

        if atol is None:
            atol = 10.0 * (1.0 + abs(loss())) * float(np.finfo(np.float64).eps) / eps
        picker = np.random.default_rng([seed, 1])
        checks = []
        for target, grad in zip(targets, grads):
            if grad is None:
                raise ValueError(f"backward: returned no gradient for {target.name}")
            checks.append(_compare(target, be, grad, loss, eps, rtol, atol, max_elements, picker))
    finally:
        for undo in reversed(restore):
            undo()
    report = GradcheckReport(tuple(checks), float(rtol), float(atol), float(eps))
    if raise_on_failure and not report.passed:
        raise GradcheckError(str(report))
    return report


def _compare(
    target: _Target,
    be: Backend,
    grad: Array,
    loss: Callable[[], float],
    eps: float,
    rtol: float,
    atol: float,
    max_elements: int | None,
    picker: np.random.Generator,
) -> InputCheck:
    original = target.get()
    host = np.asarray(be.to_numpy(original), dtype=np.float64)
    analytic = np.asarray(be.to_numpy(grad), dtype=np.float64)
    if analytic.shape != host.shape:
        raise ValueError(
            f"backward: gradient of {target.name} has shape {analytic.shape}, expected {host.shape}"
        )
    numeric = np.zeros_like(host)
    indices = list(np.ndindex(host.shape))
    if max_elements is not None and len(indices) > max_elements:
        chosen = picker.choice(len(indices), size=max_elements, replace=False)
        indices = [indices[int(i)] for i in np.sort(chosen)]
        unchecked = np.ones(host.shape, dtype=bool)
        for idx in indices:
            unchecked[idx] = False
        analytic = np.where(unchecked, 0.0, analytic)  # compare the checked elements only
    try:
        for idx in indices:
            values = []
            for step in (eps, -eps):
                moved = host.copy()
                moved[idx] += step
                target.put(be.asarray(moved, dtype="float64"))
                values.append(loss())
            numeric[idx] = (values[0] - values[1]) / (2 * eps)
    finally:
        target.put(original)
    diff = np.abs(analytic - numeric)
    if diff.size == 0:
        return InputCheck(target.name, host.shape, 0.0, 0.0, (), 0.0, 0.0, True)
    where = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
    scale = max(float(np.max(np.abs(numeric))), float(np.max(np.abs(analytic))))
    worst = float(diff[where])
    # Gradients that are zero up to rounding: relative to the tolerance's own floor.
    floor = atol / rtol if rtol > 0 else 0.0
    rel = worst / max(scale, floor) if max(scale, floor) > 0 else 0.0
    return InputCheck(
        target.name,
        host.shape,
        worst,
        rel,
        where,
        float(analytic[where]),
        float(numeric[where]),
        worst <= atol + rtol * scale,
    )


def _function_check(f: Callable[..., Array], backward: Callable[..., Any], args: list[Any]):
    differentiable = [i for i, a in enumerate(args) if _is_float(a)]

    def call() -> Array:
        return f(*args)

    def analytic(g: Array) -> list[Array | None]:
        grads = backward(g, *args)
        if is_array_api_obj(grads):
            grads = (grads,)
        grads = list(grads)
        if len(grads) < len(args):
            raise ValueError(
                f"backward: expected one gradient per input ({len(args)}), got {len(grads)}"
            )
        return [grads[i] for i in differentiable]

    def target(i: int) -> _Target:
        def put(v: Array) -> None:
            args[i] = v

        return _Target(f"input {i}", lambda: args[i], put)

    return call, analytic, [target(i) for i in differentiable]


def _param_targets(named: dict[str, Any]) -> list[_Target]:
    def target(name: str, p: Any) -> _Target:
        def put(v: Array) -> None:
            p.value = v

        return _Target(name, lambda: p.value, put)

    return [target(name, p) for name, p in named.items()]


def _to_float64(be: Backend, holders: list[Any], restore: list[Callable[[], None]]) -> None:
    """Cast every parameter and buffer of ``holders`` (layers) to float64, undone later."""
    for layer in holders:
        for p in layer.params.values():
            old_value, old_grad = p.value, p.grad
            p.value = _float64(be, p.value)

            def undo(p: Any = p, v: Array = old_value, g: Array = old_grad) -> None:
                p.value, p.grad = v, g

            restore.append(undo)
        buffers = getattr(layer, "buffers", None)
        if buffers:
            saved = dict(buffers)
            for key, value in saved.items():
                buffers[key] = _float64(be, value)

            def undo_buffers(b: Any = buffers, saved: dict = saved) -> None:
                for key, value in saved.items():
                    b[key] = value

            restore.append(undo_buffers)


def _input_target(args: list[Any]) -> _Target:
    def put(v: Array) -> None:
        args[0] = v

    return _Target("x", lambda: args[0], put)


def _one_input(args: list[Any], what: str) -> None:
    if len(args) != 1 or not _is_float(args[0]):
        raise TypeError(f"inputs: a {what} is checked with one floating input x, got {len(args)}")


def _layer_check(layer: Any, args: list[Any], be: Backend, training: bool, restore: list):
    _one_input(args, "layer")
    if not getattr(layer, "built", True):
        raise ValueError(f"{layer.name}: build the layer before checking its gradients")
    _to_float64(be, [layer], restore)
    needs = layer.needs_input_grad
    layer.needs_input_grad = True
    restore.append(lambda: setattr(layer, "needs_input_grad", needs))
    params = dict(layer.params)

    def call() -> Array:
        return layer.forward(args[0], training)

    def analytic(g: Array) -> list[Array]:
        layer.forward(args[0], training)
        gx = layer.backward(g)
        return [gx, *(p.grad for p in params.values())]

    return call, analytic, [_input_target(args), *_param_targets(params)]


def _model_check(model: Any, args: list[Any], be: Backend, training: bool, restore: list):
    _one_input(args, "model")
    if model.dtype_name != "float64":
        raise TypeError(
            f"model: gradcheck needs a float64 model (dtype='float64'), got {model.dtype_name}"
        )
    params = model.parameters()
    saved_buffers = model.buffers() if hasattr(model, "buffers") else {}
    if saved_buffers:
        restore.append(lambda: _put_buffers(model, saved_buffers))

    def call() -> Array:
        return model.forward(args[0], training=training)

    def analytic(g: Array) -> list[Array]:
        model.forward(args[0], training=training)
        gx = model.backward(g, input_grad=True)
        return [gx, *(p.grad for p in params.values())]

    return call, analytic, [_input_target(args), *_param_targets(params)]


def _put_buffers(model: Any, saved: dict[str, Array]) -> None:
    layers = {layer.name: layer for layer in model.layers}
    for key, value in saved.items():
        name, buffer = key.split(".", 1)
        layers[name].buffers[buffer] = value
