"""Optimizers and learning-rate schedules.

Updates reassign ``param.value`` (``p.value = p.value - lr * g``) and never write into
an array in place, so they work on immutable arrays too. A schedule maps the step
number to a learning rate; the lecture's decay from an initial to a final rate over the
run is ``LinearDecay`` / ``ExponentialDecay`` (the trainer tells the optimizer how many
steps the run has).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from array_api_compat import array_namespace

from .layers import Parameter

Array = Any

__all__ = [
    "SGD",
    "Adam",
    "Constant",
    "ExponentialDecay",
    "LinearDecay",
    "Optimizer",
    "Schedule",
    "optimizer_from_config",
]


def check_number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the given range, else an error naming ``name``.

    Python and NumPy real scalars (``np.float32(0.1)``) are accepted; ``bool`` is not.
    ``low_open``/``high_open`` exclude the bound itself.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {number}")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name}: expected a number in {left}{lo}, {hi}{right}, got {number}")
    return number


def check_positive(value: Any, name: str) -> float:
    """A finite number > 0 (learning rates, eps)."""
    return check_number(value, name, low=0.0, low_open=True)


def check_fraction(value: Any, name: str) -> float:
    """A finite number in [0, 1) (momentum, betas)."""
    return check_number(value, name, low=0.0, high=1.0, high_open=True)


class Schedule:
    """Learning rate as a function of the step (0-based) in a run of ``total`` steps."""

    def __call__(self, step: int, total: int) -> float:
        raise NotImplementedError


class Constant(Schedule):
    def __init__(self, lr: float) -> None:
        self.lr = check_positive(lr, "lr")

    def __call__(self, step: int, total: int) -> float:
        return self.lr


class LinearDecay(Schedule):
    """From ``initial`` at the first step to ``final`` at the last, linearly."""

    def __init__(self, initial: float, final: float) -> None:
        self.initial = check_positive(initial, "lr")
        self.final = check_positive(final, "final_lr")

    def __call__(self, step: int, total: int) -> float:
        frac = min(step / max(total - 1, 1), 1.0)
        return self.initial + (self.final - self.initial) * frac


class ExponentialDecay(Schedule):
    """From ``initial`` to ``final`` geometrically: ``initial * (final/initial)**frac``."""

    def __init__(self, initial: float, final: float) -> None:
        self.initial = check_positive(initial, "lr")
        self.final = check_positive(final, "final_lr")

    def __call__(self, step: int, total: int) -> float:
        frac = min(step / max(total - 1, 1), 1.0)
        return self.initial * math.exp(math.log(self.final / self.initial) * frac)


def _schedule(lr: float, final_lr: float | None, decay: str) -> Schedule:
    lr = check_positive(lr, "lr")
    if final_lr is None:
        return Constant(lr)
    if decay == "linear":
        return LinearDecay(lr, final_lr)
    if decay == "exponential":
        return ExponentialDecay(lr, final_lr)
    raise ValueError(f"decay: expected 'linear' or 'exponential', got {decay!r}")


class Optimizer:
    """Base: holds the schedule, the step counter and per-parameter state."""

    def __init__(self, lr: float, final_lr: float | None, decay: str, weight_decay: float) -> None:
        self.schedule = _schedule(lr, final_lr, decay)
        self.weight_decay = check_number(weight_decay, "weight_decay", low=0.0)
        self.step_count = 0
        self.total_steps = 1
        self.state: dict[str, dict[str, Array]] = {}

    def setup(self, total_steps: int) -> None:
        """Tell the schedule how many steps the run has."""
        self.total_steps = max(int(total_steps), 1)

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return self.schedule(self.step_count, self.total_steps)

    def step(self, params: dict[str, Parameter]) -> None:
        """Update every parameter that has a gradient, then advance the schedule."""
        lr = self.lr
        for name, p in params.items():
            if p.grad is None:
                continue
            grad = p.grad
            if self.weight_decay:
                grad = grad + self.weight_decay * p.value
            p.value = self._update(name, p.value, grad, lr)
        self.step_count += 1

    def _update(self, name: str, value: Array, grad: Array, lr: float) -> Array:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments and the class name (see :func:`optimizer_from_config`)."""
        plain = {
            k: float(v) if isinstance(v, numbers.Real) and not isinstance(v, (bool, int)) else v
            for k, v in self._config.items()
        }  # NumPy scalars as Python floats, for JSON
        return {"type": type(self).__name__, **plain}

    def state_arrays(self) -> dict[str, Array]:
        """Per-parameter state as flat ``"param/slot"`` -> array (for checkpoints)."""
        return {f"{n}/{k}": v for n, slots in self.state.items() for k, v in slots.items()}

    def load_state_arrays(self, arrays: dict[str, Array]) -> None:
        self.state = {}
        for key, value in arrays.items():
            name, slot = key.rsplit("/", 1)
            self.state.setdefault(name, {})[slot] = value


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    velocity = momentum * velocity - lr * grad; value += velocity (Nesterov:
    value += momentum * velocity - lr * grad).
    """

    def __init__(
        self,
        lr: float = 0.01,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        final_lr: float | None = None,
        decay: str = "linear",
    ) -> None:
        super().__init__(lr, final_lr, decay, weight_decay)
        self._config = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            final_lr=final_lr,
            decay=decay,
        )
        momentum = check_fraction(momentum, "momentum")
        if nesterov and momentum == 0:
            raise ValueError("nesterov: needs momentum > 0, got momentum 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        #: Names of the per-parameter state arrays (checked when a checkpoint loads).
        self.state_slots: tuple[str, ...] = ("velocity",) if self.momentum else ()

    def _update(self, name: str, value: Array, grad: Array, lr: float) -> Array:
        if self.momentum == 0.0:
            return value - lr * grad
        slots = self.state.setdefault(name, {})
        velocity = slots.get("velocity")
        velocity = -lr * grad if velocity is None else self.momentum * velocity - lr * grad
        slots["velocity"] = velocity
        if self.nesterov:
            return value + (self.momentum * velocity - lr * grad)
        return value + velocity


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` is L2 added to the gradient."""

    def __init__(
        self,
        lr: float = 0.001,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        final_lr: float | None = None,
        decay: str = "linear",
    ) -> None:
        super().__init__(lr, final_lr, decay, weight_decay)
        self._config = dict(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            final_lr=final_lr,
            decay=decay,
        )
        beta1, beta2 = check_fraction(beta1, "beta1"), check_fraction(beta2, "beta2")
        eps = check_positive(eps, "eps")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.state_slots: tuple[str, ...] = ("m", "v")

    def _update(self, name: str, value: Array, grad: Array, lr: float) -> Array:
        xp = array_namespace(value)
        slots = self.state.setdefault(name, {})
        m = slots.get("m")
        v = slots.get("v")
        m = (1 - self.beta1) * grad if m is None else self.beta1 * m + (1 - self.beta1) * grad
        v = (
            (1 - self.beta2) * grad * grad
            if v is None
            else self.beta2 * v + (1 - self.beta2) * grad * grad
        )
        slots["m"], slots["v"] = m, v
        t = self.step_count + 1
        m_hat = m / (1 - self.beta1**t)
        v_hat = v / (1 - self.beta2**t)
        return value - lr * m_hat / (xp.sqrt(v_hat) + self.eps)


def optimizer_from_config(config: dict[str, Any]) -> Optimizer:
    """A fresh optimizer from :meth:`Optimizer.get_config` output."""
    kinds = {"SGD": SGD, "Adam": Adam}
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in kinds:
        raise ValueError(f"optimizer: expected one of {sorted(kinds)}, got {kind!r}")
    return kinds[kind](**config)
