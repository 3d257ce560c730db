"""Optimizers and learning-rate schedules.

Updates reassign ``param.value`` (``p.value = p.value - lr * g``) and never write into
an array in place, so they work on immutable arrays too. A schedule maps the step
number to a learning rate; the lecture's decay from an initial to a final rate over the
run is ``LinearDecay`` / ``ExponentialDecay`` (the trainer tells the optimizer how many
steps the run has).
"""

from __future__ import annotations

import math
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


class Schedule:
    """Learning rate as a function of the step (0-based) in a run of ``total`` steps."""

    def __call__(self, step: int, total: int) -> float:
        raise NotImplementedError


class Constant(Schedule):
    def __init__(self, lr: float) -> None:
        self.lr = float(lr)

    def __call__(self, step: int, total: int) -> float:
        return self.lr


class LinearDecay(Schedule):
    """From ``initial`` at the first step to ``final`` at the last, linearly."""

    def __init__(self, initial: float, final: float) -> None:
        self.initial, self.final = float(initial), float(final)

    def __call__(self, step: int, total: int) -> float:
        frac = min(step / max(total - 1, 1), 1.0)
        return self.initial + (self.final - self.initial) * frac


class ExponentialDecay(Schedule):
    """From ``initial`` to ``final`` geometrically: ``initial * (final/initial)**frac``."""

    def __init__(self, initial: float, final: float) -> None:
        if initial <= 0 or final <= 0:
            raise ValueError(f"ExponentialDecay: expected positive rates, got {initial}, {final}")
        self.initial, self.final = float(initial), float(final)

    def __call__(self, step: int, total: int) -> float:
        frac = min(step / max(total - 1, 1), 1.0)
        return self.initial * math.exp(math.log(self.final / self.initial) * frac)


def _schedule(lr: float, final_lr: float | None, decay: str) -> Schedule:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
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
        if weight_decay < 0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay}")
        self.weight_decay = float(weight_decay)
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

    # -- the same update as a pure function (what a compiled training step calls) --
    def init_state(self, params: dict[str, Array]) -> dict[str, dict[str, Array]]:
        """The state before the first step, per parameter name: ``{name: {slot: array}}``.

        Slots that a subclass creates on its first step start here as zeros, so the
        state has the same structure at every step (a compiled step is traced once).
        Subclasses list their slots in ``_slots``.
        """
        state = {}
        for name, value in params.items():
            xp = array_namespace(value)
            state[name] = {slot: xp.zeros_like(value) for slot in self._slots()}
        return state

    def _slots(self) -> tuple[str, ...]:
        """Names of the per-parameter state arrays the update keeps."""
        return ()

    def update(
        self,
        params: dict[str, Array],
        grads: dict[str, Array | None],
        state: dict[str, dict[str, Array]],
        lr: Any,
        step: Any,
    ) -> tuple[dict[str, Array], dict[str, dict[str, Array]]]:
        """One update as a pure function: neither the optimizer nor its inputs change.

        Args:
            params: parameter values by name.
            grads: gradients by the same names (``None``: the parameter is left as is).
            state: per-parameter state (from :meth:`init_state` or a previous update).
            lr: the learning rate, a number or a 0-d array (an array lets a compiled
                step take a new rate without being traced again).
            step: the 0-based step number (a number or a 0-d array), for Adam's bias
                correction.

        Returns:
            ``(new_params, new_state)``, the same structure as the inputs. Runs the same
            arithmetic as :meth:`step`.
        """
        saved_state, saved_count = self.state, self.step_count
        self.state = {name: dict(slots) for name, slots in state.items()}
        self.step_count = step
        try:
            new = {}
            for name, value in params.items():
                grad = grads.get(name)
                if grad is None:
                    new[name] = value
                    continue
                if self.weight_decay:
                    grad = grad + self.weight_decay * value
                new[name] = self._update(name, value, grad, lr)
            return new, self.state
        finally:
            self.state, self.step_count = saved_state, saved_count

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments and the class name (see :func:`optimizer_from_config`)."""
        return {"type": type(self).__name__, **self._config}

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
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov: needs momentum > 0, got momentum 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _slots(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum else ()

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
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name}: expected a number in [0, 1), got {beta}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _slots(self) -> tuple[str, ...]:
        return ("m", "v")

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
