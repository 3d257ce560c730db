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
from fnmatch import fnmatchcase
from typing import Any

from array_api_compat import array_namespace

from xpconv.nn.layers import Parameter
from xpconv.ops.checks import check_number

Array = Any

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Constant",
    "CosineDecay",
    "ExponentialDecay",
    "LinearDecay",
    "Optimizer",
    "Schedule",
    "StepDecay",
    "Warmup",
    "optimizer_from_config",
    "schedule_from_config",
]


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

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments and the class name (see :func:`schedule_from_config`)."""
        return {"type": type(self).__name__, **{k: getattr(self, k) for k in self._fields}}

    _fields: tuple[str, ...] = ()


class Constant(Schedule):
    _fields = ("lr",)

    def __init__(self, lr: float) -> None:
        self.lr = check_positive(lr, "lr")

    def __call__(self, step: int, total: int) -> float:
        return self.lr


class LinearDecay(Schedule):
    """From ``initial`` at the first step to ``final`` at the last, linearly."""

    _fields = ("initial", "final")

    def __init__(self, initial: float, final: float) -> None:
        self.initial = check_positive(initial, "lr")
        self.final = check_positive(final, "final_lr")

    def __call__(self, step: int, total: int) -> float:
        frac = min(step / max(total - 1, 1), 1.0)
        return self.initial + (self.final - self.initial) * frac


class ExponentialDecay(Schedule):
    """From ``initial`` to ``final`` geometrically: ``initial * (final/initial)**frac``."""

    _fields = ("initial", "final")

    def __init__(self, initial: float, final: float) -> None:
        self.initial = check_positive(initial, "lr")
        self.final = check_positive(final, "final_lr")

    def __call__(self, step: int, total: int) -> float:
        frac = min(step / max(total - 1, 1), 1.0)
        return self.initial * math.exp(math.log(self.final / self.initial) * frac)


def _rate(value: Any, name: str, *, zero: bool = False) -> float:
    """A finite learning rate: positive (or >= 0 with ``zero``)."""
    return check_number(value, name, low=0.0, low_open=not zero)


def _warmup_steps(steps: Any) -> int | float:
    if isinstance(steps, bool) or not isinstance(steps, (int, float)):
        raise ValueError(
            f"Warmup: steps expected an int >= 0 or a fraction in (0, 1), got {steps!r}"
        )
    if isinstance(steps, int):
        if steps < 0:
            raise ValueError(f"Warmup: steps expected an int >= 0, got {steps}")
        return steps
    if not 0.0 < steps < 1.0:
        raise ValueError(f"Warmup: steps expected a fraction of the run in (0, 1), got {steps}")
    return float(steps)


class CosineDecay(Schedule):
    """From ``initial`` to ``final`` along half a cosine over ``steps`` steps (default: the
    whole run), then ``final``: ``final + (initial - final) * (1 + cos(pi * t / T)) / 2``.

    As ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=T, eta_min=final)``.
    """

    _fields = ("initial", "final", "steps")

    def __init__(self, initial: float, final: float = 0.0, steps: int | None = None) -> None:
        self.initial = _rate(initial, "CosineDecay: initial")
        self.final = _rate(final, "CosineDecay: final", zero=True)
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ValueError(f"CosineDecay: steps expected a positive int or None, got {steps!r}")
        self.steps = steps

    def __call__(self, step: int, total: int) -> float:
        period = self.steps or max(total, 1)
        t = min(step, period)
        return self.final + (self.initial - self.final) * (1 + math.cos(math.pi * t / period)) / 2


class StepDecay(Schedule):
    """``initial * gamma ** (step // step_size)``, as ``torch.optim.lr_scheduler.StepLR``."""

    _fields = ("initial", "step_size", "gamma")

    def __init__(self, initial: float, step_size: int, gamma: float = 0.1) -> None:
        self.initial = _rate(initial, "StepDecay: initial")
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"StepDecay: step_size expected a positive int, got {step_size!r}")
        self.step_size = step_size
        self.gamma = _rate(gamma, "StepDecay: gamma")

    def __call__(self, step: int, total: int) -> float:
        return self.initial * self.gamma ** (step // self.step_size)


class Warmup(Schedule):
    """A linear warm-up, then another schedule.

    For the first ``w`` steps the rate rises linearly from ``start_factor`` times the
    rate ``after`` starts with to that rate; from step ``w`` on it is ``after`` run over
    the remaining ``total - w`` steps. ``steps`` is ``w`` itself (an int) or a fraction of
    the run (a float in (0, 1)). As ``SequentialLR([LinearLR(start_factor, 1.0, w),
    after], milestones=[w])`` in ``torch.optim.lr_scheduler``.
    """

    def __init__(
        self, after: Schedule | float, steps: int | float = 0.1, start_factor: float = 0.1
    ) -> None:
        if not isinstance(after, Schedule):
            after = Constant(_rate(after, "Warmup: after"))
        self.after = after
        self.steps = _warmup_steps(steps)
        if (
            isinstance(start_factor, bool)
            or not isinstance(start_factor, (int, float))
            or not 0 < start_factor <= 1
        ):
            raise ValueError(
                f"Warmup: start_factor expected a number in (0, 1], got {start_factor!r}"
            )
        self.start_factor = float(start_factor)

    def warmup_steps(self, total: int) -> int:
        """``w`` for a run of ``total`` steps."""
        if isinstance(self.steps, int):
            return self.steps
        return max(1, round(self.steps * total))

    def __call__(self, step: int, total: int) -> float:
        w = self.warmup_steps(total)
        rest = max(total - w, 1)
        if step < w:
            frac = self.start_factor + (1.0 - self.start_factor) * step / w
            return self.after(0, rest) * frac
        return self.after(step - w, rest)

    def get_config(self) -> dict[str, Any]:
        return {
            "type": "Warmup",
            "after": self.after.get_config(),
            "steps": self.steps,
            "start_factor": self.start_factor,
        }


SCHEDULES: dict[str, type[Schedule]] = {
    cls.__name__: cls
    for cls in (Constant, LinearDecay, ExponentialDecay, CosineDecay, StepDecay, Warmup)
}


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """A schedule from :meth:`Schedule.get_config` output."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {sorted(SCHEDULES)}, got {kind!r}")
    if kind == "Warmup":
        config["after"] = schedule_from_config(config["after"])
    return SCHEDULES[kind](**config)


def _schedule(lr: float | Schedule, final_lr: float | None, decay: str) -> Schedule:
    if isinstance(lr, Schedule):
        if final_lr is not None:
            raise ValueError(f"final_lr: expected None when lr is a schedule, got {final_lr!r}")
        return lr
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

    _config: dict[str, Any]

    def __init__(
        self, lr: float | Schedule, final_lr: float | None, decay: str, weight_decay: float
    ) -> None:
        self.schedule = _schedule(lr, final_lr, decay)
        self.weight_decay = check_number(weight_decay, "weight_decay", low=0.0)
        self.step_count = 0
        self.total_steps = 1
        self.state: dict[str, dict[str, Array]] = {}

    #: Hyperparameters fixed once the optimizer has taken a step: the compiled JAX step
    #: has them built in, and the state slots depend on them (momentum's velocity), so
    #: a change would take effect on some backends and not others. It is refused.
    FIXED_AFTER_FIRST_STEP = frozenset(
        {"momentum", "nesterov", "beta1", "beta2", "eps", "weight_decay"}
    )

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in self.FIXED_AFTER_FIRST_STEP
            and getattr(self, "step_count", 0) > 0
            and name in self.__dict__
            and value != self.__dict__[name]
        ):
            raise AttributeError(
                f"{name}: fixed after the optimizer's first step (it is {self.__dict__[name]!r}, "
                f"got {value!r}); build a new {type(self).__name__} to train with another "
                f"{name}, or set it before training"
            )
        super().__setattr__(name, value)

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
        plain = {
            k: float(v) if isinstance(v, numbers.Real) and not isinstance(v, (bool, int)) else v
            for k, v in self._config.items()
        }  # NumPy scalars as Python floats, for JSON
        if isinstance(plain.get("lr"), Schedule):
            plain["lr"] = plain["lr"].get_config()  # type: ignore[union-attr]
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

    Momentum is the lecture's form, the rate inside the velocity: ``v = m*v + lr*g;
    w -= v`` (Nesterov: ``w -= m*v + lr*g``), stored as ``velocity = -v``. With a
    constant rate this equals PyTorch's ``v = m*v + g; w -= lr*v``; under a decaying
    rate it does not (past steps keep the rate they were taken with).
    """

    def __init__(
        self,
        lr: float | Schedule = 0.01,
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
        lr: float | Schedule = 0.001,
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


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Each step first shrinks a parameter, ``value * (1 - lr * weight_decay)``, then takes
    the Adam step with the plain gradient (no L2 term is added to it).

    Args:
        lr: learning rate, or a :class:`Schedule` (e.g. ``Warmup(CosineDecay(3e-3))``).
        beta1, beta2, eps: as :class:`Adam`.
        weight_decay: the decoupled decay rate (>= 0).
        exclude: parameters that are not decayed: ``"none"``; ``"bias_and_norm"``
            (parameters with fewer than two axes: biases and normalization scales and
            shifts); or a list of glob patterns on parameter names such as
            ``["*.bias", "batchnorm*"]``.
        final_lr, decay: as :class:`Adam` (when ``lr`` is a number).
    """

    def __init__(
        self,
        lr: float | Schedule = 0.001,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        exclude: str | list[str] = "none",
        final_lr: float | None = None,
        decay: str = "linear",
    ) -> None:
        super().__init__(lr, beta1=beta1, beta2=beta2, eps=eps, final_lr=final_lr, decay=decay)
        self.decoupled_weight_decay = _rate(weight_decay, "weight_decay", zero=True)
        if isinstance(exclude, str):
            if exclude not in ("none", "bias_and_norm"):
                raise ValueError(
                    f"exclude: expected 'none', 'bias_and_norm' or a list of name patterns, "
                    f"got {exclude!r}"
                )
        elif not isinstance(exclude, (list, tuple)) or not all(isinstance(e, str) for e in exclude):
            raise ValueError(
                f"exclude: expected 'none', 'bias_and_norm' or a list of name patterns, "
                f"got {exclude!r}"
            )
        self.exclude = exclude if isinstance(exclude, str) else list(exclude)
        self._config.update(weight_decay=weight_decay, exclude=self.exclude)

    def decays(self, name: str, value: Array) -> bool:
        """Whether parameter ``name`` (of array ``value``) gets weight decay."""
        if self.exclude == "none":
            return True
        if self.exclude == "bias_and_norm":
            return value.ndim >= 2
        return not any(fnmatchcase(name, pattern) for pattern in self.exclude)

    def _update(self, name: str, value: Array, grad: Array, lr: float) -> Array:
        if self.decoupled_weight_decay and self.decays(name, value):
            value = value * (1.0 - lr * self.decoupled_weight_decay)
        return super()._update(name, value, grad, lr)


def optimizer_from_config(config: dict[str, Any]) -> Optimizer:
    """A fresh optimizer from :meth:`Optimizer.get_config` output."""
    kinds = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}
    config = dict(config)
    if isinstance(config.get("lr"), dict):
        config["lr"] = schedule_from_config(config["lr"])
    kind = config.pop("type", None)
    if kind not in kinds:
        raise ValueError(f"optimizer: expected one of {sorted(kinds)}, got {kind!r}")
    return kinds[kind](**config)
