"""The stateless training step, and :class:`TrainStep`, which compiles it where it can.

The stateless core is a pure function from (parameters, buffers, optimizer state,
batch, dropout masks, learning rate, step number) to (loss, outputs, new parameters,
new buffers, new optimizer state)::

    state = TrainState(params, buffers, optimizer.init_state(params))
    loss, out, state = train_step(model, optimizer, state, x, y, masks, lr, step)

It does not repeat any numerics: it binds the values it is given into the model's
layers for the duration of the call, runs the layers' own forward and backward passes
and the loss, collects the gradients, applies :meth:`Optimizer.update
<xpconv.optim.optimizers.Optimizer.update>`, and puts the model back as it was. Nothing
inside reads a value back to the host, so ``jax.jit`` traces it as it stands, and so
does PyTorch's ``make_fx`` before ``torch.compile``.

:class:`TrainStep` is the friendly form: ``step(x, y) -> loss``. It draws the dropout
masks on the host from the model's generator (the same draws, in the same order, as
``model.train_batch``, so one seed gives the same run on every backend), calls the
core, and leaves the model and optimizer holding the new values. On a backend that
compiles (JAX; PyTorch where ``torch.compile`` finds its C++ compiler) the core runs as
one compiled function per input shape (on JAX with parameters, buffers and optimizer
state donated); elsewhere it runs eagerly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from xpconv.nn.layers import Dropout
from xpconv.nn.sequential import Sequential
from xpconv.optim.optimizers import Optimizer

Array = Any
Grads = dict[str, Array]
GradientHook = Callable[[Grads], Grads]

__all__ = ["GradientHook", "TrainState", "TrainStep", "apply_gradients", "loss_and_gradients"]
__all__ += ["train_step"]


class TrainState(NamedTuple):
    """What a training step changes, as plain dicts of arrays (a JAX pytree).

    Attributes:
        params: parameter values by ``model.parameters()`` name.
        buffers: non-trainable layer state by ``model.buffers()`` name.
        opt_state: optimizer state ``{param name: {slot: array}}``.
    """

    params: dict[str, Array]
    buffers: dict[str, Array]
    opt_state: dict[str, dict[str, Array]]


def _buffer_owners(model: Sequential) -> dict[str, tuple[Any, str]]:
    return {f"{layer.name}.{key}": (layer, key) for layer in model.layers for key in layer.buffers}


@contextmanager
def _bound(
    model: Sequential,
    params: dict[str, Array],
    buffers: dict[str, Array],
    masks: dict[str, Array],
) -> Iterator[None]:
    """Put ``params``, ``buffers`` and dropout ``masks`` into the model's layers for the
    duration of the block; restore what was there afterwards, whatever happens."""
    named = model.parameters()
    if set(params) != set(named):
        raise ValueError(f"params: expected the names {sorted(named)}, got {sorted(params)}")
    owners = _buffer_owners(model)
    if set(buffers) != set(owners):
        raise ValueError(f"buffers: expected the names {sorted(owners)}, got {sorted(buffers)}")
    saved_params = {name: (p.value, p.grad) for name, p in named.items()}
    saved_buffers = {layer: dict(layer.buffers) for layer in model.layers}
    dropouts = {layer.name: layer for layer in model.layers if isinstance(layer, Dropout)}
    missing = sorted(name for name, layer in dropouts.items() if layer.p and name not in masks)
    if missing:  # drawing inside a compiled step would freeze one mask into it
        raise ValueError(
            f"masks: expected a mask for every active Dropout layer, missing {missing} "
            "(draw them with Dropout.draw_mask)"
        )
    try:
        for name, p in named.items():
            p.value, p.grad = params[name], None
        for name, (layer, key) in owners.items():
            layer.buffers = {**layer.buffers, key: buffers[name]}
        for name, mask in masks.items():
            if name not in dropouts:
                raise ValueError(
                    f"masks: expected Dropout layer names {sorted(dropouts)}, got {name!r}"
                )
            dropouts[name].given_mask = mask
        yield
    finally:
        for name, p in named.items():
            p.value, p.grad = saved_params[name]
        for layer, kept in saved_buffers.items():
            layer.buffers = kept
        for layer in dropouts.values():
            layer.given_mask = None


def loss_and_gradients(
    model: Sequential,
    params: dict[str, Array],
    buffers: dict[str, Array],
    x: Array,
    y: Array,
    masks: dict[str, Array],
) -> tuple[Array, Array, Grads, dict[str, Array]]:
    """Forward in training mode, loss and backward, as a pure function.

    Args:
        model: a built model; its structure is used, its values are not changed.
        params: parameter values by ``model.parameters()`` name.
        buffers: buffer values by ``model.buffers()`` name.
        x: inputs (N, *input_shape) of the model's backend and dtype.
        y: targets: labels (N,) or float targets (N, *output_shape), already checked.
        masks: a scaled dropout mask (N, *layer input shape) per active ``Dropout``
            layer name (see :meth:`~xpconv.nn.layers.Dropout.draw_mask`).

    Returns:
        ``(loss, outputs, grads, new_buffers)``: the 0-d loss, the outputs
        (N, *output_shape), the gradients by parameter name, and the buffers the
        training forward left.
    """
    with _bound(model, params, buffers, masks):
        out = x
        for step in model.steps:
            out = step.forward(out, True)
        loss = model.loss.forward(out, y)
        model.backward(model.loss.backward())
        grads = {name: p.grad for name, p in model.parameters().items()}
        new_buffers = model.buffers()
    return loss, out, grads, new_buffers


def apply_gradients(
    optimizer: Optimizer,
    params: dict[str, Array],
    grads: Grads,
    opt_state: dict[str, dict[str, Array]],
    lr: Any,
    step: Any,
) -> tuple[dict[str, Array], dict[str, dict[str, Array]]]:
    """The optimizer's update as a pure function (:meth:`Optimizer.update`)."""
    return optimizer.update(params, grads, opt_state, lr, step)


def train_step(
    model: Sequential,
    optimizer: Optimizer,
    state: TrainState,
    x: Array,
    y: Array,
    masks: dict[str, Array],
    lr: Any,
    step: Any,
    gradient_hook: GradientHook | None = None,
) -> tuple[Array, Array, TrainState]:
    """One whole training step as a pure function: forward, loss, backward,
    ``gradient_hook`` (if any), optimizer update.

    Args: as :func:`loss_and_gradients` and :func:`apply_gradients`; ``state`` holds
    the parameters, buffers and optimizer state.

    Returns:
        ``(loss, outputs, new_state)``; ``loss`` is 0-d, ``outputs`` (N, *output_shape).
    """
    loss, out, grads, buffers = loss_and_gradients(model, state.params, state.buffers, x, y, masks)
    if gradient_hook is not None:
        grads = _hooked(gradient_hook, grads)
    params, opt_state = apply_gradients(optimizer, state.params, grads, state.opt_state, lr, step)
    return loss, out, TrainState(params, buffers, opt_state)


def _hooked(hook: GradientHook, grads: Grads, order: list[str] | None = None) -> Grads:
    """``hook(grads)`` with the gradients in ``order`` (model order), checked."""
    new = hook({name: grads[name] for name in (order or grads)})
    if not isinstance(new, dict) or set(new) != set(grads):
        raise ValueError(
            f"gradient_hook: expected a dict with the names {sorted(grads)}, got "
            f"{sorted(new) if isinstance(new, dict) else type(new).__name__}"
        )
    return new


class TrainStep:
    """One whole training step of ``model`` with ``optimizer``: ``step(x, y) -> loss``.

    Equals ``model.train_batch(x, y)`` followed by ``optimizer.step(model.parameters())``
    (the same dropout masks, the same arithmetic), and leaves the model and optimizer
    in the same state, except that ``Parameter.grad`` is left ``None``: the step uses
    the gradients up.

    On a backend that compiles (:attr:`Backend.can_compile
    <xpconv.backends.registry.Backend.can_compile>`) the whole step is one compiled
    function per input shape: the first step of each shape (the last, smaller batch of
    an epoch is another) takes the compile, the later ones reuse it. The learning rate
    and step number enter as 0-d arrays, so a decaying schedule does not cause
    recompilation. The compiled step gives the eager step's results to the rounding of
    the dtype (the compiler orders and fuses the arithmetic its own way).

    - JAX: ``jax.jit``; parameters, buffers and optimizer state are donated, so arrays
      read from ``model.parameters()`` before a step are invalid after it (copy them
      with ``model.state_dict()``).
    - PyTorch: ``torch.compile`` (TorchInductor), where the C++ compiler it builds CPU
      kernels with is installed (for CUDA, Triton); without it the step runs eagerly.
      Nothing is donated.

    Elsewhere the same step runs eagerly.

    Args:
        model: a :class:`~xpconv.nn.sequential.Sequential` (built now or on the first batch).
        optimizer: an :class:`~xpconv.optim.optimizers.Optimizer`.
        gradient_hook: ``hook(grads) -> grads`` with ``grads`` a dict by
            ``model.parameters()`` name, applied between backward and the update (an
            all-reduce across processes, say). It runs on the host: on a backend that
            compiles, the step is then two compiled functions (gradients; update) with
            the hook between.
        compile: ``None`` (default): compile where the backend compiles by default
            (every backend that can, unless the environment variable
            ``XPCONV_COMPILE`` names others, see :attr:`compiled`); ``True``: compile
            where the backend can; ``False``: run eagerly everywhere (on PyTorch, for
            short runs, where the compile would take longer than the steps it saves).
    """

    def __init__(
        self,
        model: Sequential,
        optimizer: Optimizer,
        *,
        gradient_hook: GradientHook | None = None,
        compile: bool | None = None,
    ) -> None:
        if not isinstance(model, Sequential):
            raise TypeError(f"model: expected a Sequential, got {type(model).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected an Optimizer, got {type(optimizer).__name__}")
        if gradient_hook is not None and not callable(gradient_hook):
            raise TypeError(
                f"gradient_hook: expected a callable or None, got {type(gradient_hook).__name__}"
            )
        if compile not in (None, True, False):
            raise TypeError(f"compile: expected None, True or False, got {compile!r}")
        self.model, self.optimizer = model, optimizer
        self.gradient_hook = gradient_hook
        self.compile = compile
        self.last_output: Array | None = None
        self._compiled: dict[str, Any] = {}
        self._compiled_for: Any = None
        self._slot_names: dict[str, set[str]] | None = None

    @property
    def compiled(self) -> bool:
        """Whether the step runs compiled on the model's current backend: with
        ``compile=None``, where the backend compiles by default
        (:attr:`Backend.compiles_by_default
        <xpconv.backends.registry.Backend.compiles_by_default>`); with ``True``, where
        it can compile at all."""
        backend = self.model.backend
        if self.compile is None:
            return backend.compiles_by_default
        return self.compile and backend.can_compile

    # ------------------------------------------------------------------ state
    def _state(self) -> TrainState:
        model, optimizer = self.model, self.optimizer
        params = {name: p.value for name, p in model.parameters().items()}
        if self._slot_names is None:
            self._slot_names = {k: set(v) for k, v in optimizer.init_state(params).items()}
        opt_state: dict[str, dict[str, Array]] = {}
        fresh = None
        for name in params:
            slots = dict(optimizer.state.get(name, {}))
            if not self._slot_names[name] <= set(slots):  # before the first update
                fresh = fresh if fresh is not None else optimizer.init_state(params)
                slots = {**fresh[name], **slots}
            opt_state[name] = slots
        return TrainState(params, model.buffers(), opt_state)

    def _store(self, state: TrainState) -> None:
        model = self.model
        for name, p in model.parameters().items():
            p.value, p.grad = state.params[name], None
        owners = _buffer_owners(model)
        for name, value in state.buffers.items():
            layer, key = owners[name]
            layer.buffers = {**layer.buffers, key: value}
        self.optimizer.state = {name: dict(slots) for name, slots in state.opt_state.items()}
        self.optimizer.step_count += 1

    def _masks(self, batch: int, rows: tuple[int, int, int] | None) -> dict[str, Array]:
        model = self.model
        masks = {}
        count = batch if rows is None else rows[2]
        for layer in model.layers:
            if isinstance(layer, Dropout):
                mask = layer.draw_mask(count, model.backend, model.dtype)
                if mask is not None:
                    masks[layer.name] = mask if rows is None else mask[rows[0] : rows[1], ...]
        return masks

    # ------------------------------------------------------------------ the step
    def __call__(
        self,
        x: Any,
        y: Any,
        *,
        validate: bool = True,
        rows: tuple[int, int, int] | None = None,
    ) -> Array:
        """Train on one batch: ``x`` (N, *input_shape), ``y`` labels (N,) or float
        targets (N, *output_shape). Returns the loss, a 0-d array on the device; the
        outputs (N, *output_shape) stay in :attr:`last_output`.

        ``validate=False`` skips the checks of data checked before (the class range of
        the labels, the finiteness of the inputs), so the step never waits on the device.
        ``rows=(lo, hi, count)``: the batch is rows ``[lo, hi)`` of a global batch of
        ``count`` examples (``hi - lo == N``); the dropout masks are drawn for the whole
        global batch and these rows taken, so they do not depend on how it is split.
        """
        model, optimizer = self.model, self.optimizer
        x = model.as_input(x, finite=validate)
        n = int(x.shape[0])
        if rows is not None and not (0 <= rows[0] < rows[1] <= rows[2] and rows[1] - rows[0] == n):
            raise ValueError(
                f"rows: expected (lo, hi, count) with 0 <= lo < hi <= count and hi - lo = "
                f"{n} (the batch), got {rows}"
            )
        y = model.as_target(y, n, validate=validate)
        masks = self._masks(n, rows)
        state = self._state()
        lr, step = optimizer.lr, optimizer.step_count
        if self.compiled:
            be = model.backend
            lr = be.xp.asarray(lr, dtype=model.dtype, device=be.device)
            step = be.xp.asarray(step, dtype=model.dtype, device=be.device)
            loss, out, state = self._run_compiled(state, x, y, masks, lr, step)
        else:
            loss, out, state = train_step(
                model, optimizer, state, x, y, masks, lr, step, self.gradient_hook
            )
        self._store(state)
        self.last_output = model.last_output = out
        return loss

    def _functions(self) -> dict[str, Any]:
        be = self.model.backend
        if self._compiled_for is not be:  # the model moved: compile anew
            model, optimizer = self.model, self.optimizer

            def whole(params, buffers, opt_state, x, y, masks, lr, step):
                state = TrainState(params, buffers, opt_state)
                return train_step(model, optimizer, state, x, y, masks, lr, step)

            def gradients(params, buffers, x, y, masks):
                return loss_and_gradients(model, params, buffers, x, y, masks)

            def update(params, grads, opt_state, lr, step):
                return apply_gradients(optimizer, params, grads, opt_state, lr, step)

            self._compiled = {
                "whole": be.compile(whole, (0, 1, 2)),
                "gradients": be.compile(gradients, (1,)),
                "update": be.compile(update, (0, 2)),
            }
            self._compiled_for = be
        return self._compiled

    def _run_compiled(
        self,
        state: TrainState,
        x: Array,
        y: Array,
        masks: dict[str, Array],
        lr: Array,
        step: Array,
    ) -> tuple[Array, Array, TrainState]:
        fns = self._functions()
        if self.gradient_hook is None:
            return fns["whole"](*state[:2], state.opt_state, x, y, masks, lr, step)
        loss, out, grads, buffers = fns["gradients"](state.params, state.buffers, x, y, masks)
        grads = _hooked(self.gradient_hook, grads, list(state.params))
        params, opt_state = fns["update"](state.params, grads, state.opt_state, lr, step)
        return loss, out, TrainState(params, buffers, opt_state)
