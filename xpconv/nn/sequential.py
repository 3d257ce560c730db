"""Sequential: a chain of layers that owns the backend, the dtype and the seed.

    model = Sequential(
        [Conv2D(16, 5, padding="same", activation="tanh"), Flatten(), Dense(10)],
        backend="numpy", seed=0, input_shape=(1, 28, 28),
    )
    logits = model.forward(x)            # x (N, 1, 28, 28) -> (N, 10)

The same seed gives bit-identical initial weights on every backend: weights are drawn
on the host from one ``numpy.random.Generator`` and cast to the model's dtype.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from xpconv.backends.registry import Backend, get_backend
from xpconv.nn.inputs import (
    InputChecker,
    as_batch,
    batch_count,
    check_activation_memory,
    check_input_shape,
)
from xpconv.nn.layers import (
    BuildContext,
    ConvDense,
    ConvMaxPool,
    Layer,
    Parameter,
    backward_step,
    layer_from_config,
)
from xpconv.nn.losses import Loss, get_loss
from xpconv.nn.metrics import MetricTotals
from xpconv.nn.summary import summary_table

Array = Any

__all__ = ["Sequential"]


#: The largest seed: a model built with it is saved, loaded and resumed alike.
MAX_SEED = 2**63 - 1


class Sequential:
    """Layers applied in order, with a loss, on one backend, device and dtype.

    Args:
        layers: the layers, unbuilt.
        loss: ``"softmax_cross_entropy"`` (default), ``"mse"`` or a ``Loss``.
        backend: backend name or ``Backend`` (default: the process default).
        device: device on that backend (default: its default device).
        dtype: ``"float32"`` (default) or ``"float64"``.
        seed: seeds the weight initialisers and the dropout masks; an int from 0 to
            :data:`MAX_SEED` (2**63 - 1, the range every checkpoint reader accepts).
        input_shape: per-example input shape, e.g. (1, 28, 28); without it the model
            is built on its first input.
        fuse: run a Conv2D (ReLU or no activation) and a tiled MaxPool2D after it as one
            step (:class:`~xpconv.nn.layers.ConvMaxPool`), and a Conv2D (tanh or no
            activation), a Flatten and a Dense as one (:class:`~xpconv.nn.layers.ConvDense`):
            same results, less memory traffic.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        loss: str | Loss = "softmax_cross_entropy",
        backend: str | Backend | None = None,
        device: Any = None,
        dtype: str = "float32",
        seed: int = 0,
        input_shape: Sequence[int] | None = None,
        fuse: bool = True,
    ) -> None:
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise TypeError(f"layers: expected a non-empty list of Layer, got {layers!r}")
        _claim_layers(self, layers)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed: expected an int from 0 to 2**63 - 1, got {seed!r}")
        self.layers = list(layers)
        self.loss = get_loss(loss)
        self.backend = get_backend(backend, device)
        self.dtype = self.backend.dtype(dtype)
        self.seed = seed
        self.fuse = fuse
        self.training = False
        #: The outputs of the last :meth:`train_batch` (``return_outputs=True`` hands
        #: them back directly).
        self.last_output: Array | None = None
        self.dropout_rng = np.random.default_rng([seed, 1])
        self.input_shape: tuple[int, ...] | None = None
        self._inputs = InputChecker(self)
        #: Refuse NaN, infinity and values outside the model dtype's range in inputs
        #: (one reduction per call, before any compute). Set to False to skip it.
        self.check_finite = True
        if input_shape is not None:
            self.build(input_shape)

    # ------------------------------------------------------------------ building
    @property
    def xp(self) -> Any:
        return self.backend.xp

    @property
    def built(self) -> bool:
        return self.input_shape is not None

    @property
    def dtype_name(self) -> str:
        return "float64" if self.dtype == self.xp.float64 else "float32"

    def build(self, input_shape: Sequence[int]) -> Sequential:
        """Create every layer's parameters for inputs of ``input_shape`` (no batch axis)."""
        shape = check_input_shape(input_shape)
        ctx = BuildContext(
            self.backend, self.dtype, np.random.default_rng(self.seed), self.dropout_rng
        )
        names: dict[str, int] = {}
        for layer in self.layers:
            index = names.get(type(layer).__name__, 0)
            names[type(layer).__name__] = index + 1
            layer.name = f"{type(layer).__name__.lower()}_{index}"
            shape = layer.build(shape, ctx)
        self._lead = _leading_preprocessing(self.layers)
        for i, layer in enumerate(self.layers):
            # No gradient wanted before the first layer that is not a fixed transform.
            layer.needs_input_grad = i > self._lead
        self._steps = _plan(self.layers, self.fuse)
        self.input_shape = check_input_shape(input_shape)
        return self

    @property
    def steps(self) -> list[Any]:
        """The layers as a pass runs them: fused runs (:class:`~xpconv.nn.layers.ConvMaxPool`,
        :class:`~xpconv.nn.layers.ConvDense`) count as one step. Each step has
        ``forward(x, training)`` and ``backward(grad)``."""
        self._require_built()
        return list(self._steps)

    @property
    def output_shape(self) -> tuple[int, ...]:
        self._require_built()
        return self.layers[-1].output_shape  # type: ignore[return-value]

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError("model: not built yet; pass input_shape or call forward once")

    # ------------------------------------------------------------------ inputs
    def as_input(self, x: Any, argument: str = "x", *, finite: bool = True) -> Array:
        """Check ``x`` (N, *input_shape) and put it on the model's backend and dtype.

        Host data (NumPy arrays, lists) is moved to the device; arrays of another backend
        or device are refused. NaN, infinity and values beyond the model dtype's range
        are refused before the cast and before any compute, on every backend: one
        reduction, read at once (``finite=False`` or ``model.check_finite = False`` skips
        it, for data checked before). Floating data of another precision is cast with a
        warning (once). The checks live in :mod:`xpconv.nn.inputs`.
        """
        return self._inputs.as_input(x, argument, finite=finite)

    def as_target(self, y: Any, n: int, argument: str = "y", *, validate: bool = True) -> Array:
        """Labels (N,) integers in [0, classes), or float targets (N, *output_shape)
        (one-hot rows or class probabilities for a classifier), on the model's backend.

        Checked by :func:`xpconv.ops.targets.check_targets`, the one target
        check of losses, metrics and the Trainer. Integer labels are checked against
        the number of classes (the model's output width) by reading their range back
        once; ``validate=False`` skips that for labels checked before.
        """
        self._require_built()
        return self._inputs.as_target(y, n, argument, validate=validate)

    # ------------------------------------------------------------------ passes
    def forward(self, x: Any, training: bool | None = None) -> Array:
        """Outputs (N, *output_shape) for inputs (N, *input_shape)."""
        return self._run(self.as_input(x), training)

    def _run(self, x: Array, training: bool | None) -> Array:
        training = self.training if training is None else training
        for step in self._steps:
            x = step.forward(x, training)
        return x

    __call__ = forward

    def backward(self, grad: Array, *, input_grad: bool = False) -> Array | None:
        """Back-propagate ``grad`` (N, *output_shape); fills every ``Parameter.grad``.

        Returns the gradient with respect to the input (N, *input_shape) when
        ``input_grad`` is true; otherwise the first layer may skip computing it.
        """
        steps, lead = self._steps, self._lead  # leading preprocessing steps: 1 step each
        for step in reversed(steps[lead + 1 :]):
            grad = step.backward(grad)
        out = backward_step(steps[lead], grad, input_grad=input_grad)
        if out is None:
            return None
        for step in reversed(steps[:lead]):  # only when the input's gradient is wanted
            out = step.backward(out)
        return out

    def train_batch(
        self, x: Any, y: Any, *, validate: bool = True, return_outputs: bool = False
    ) -> Array | tuple[Array, Array]:
        """Forward in training mode, loss, backward. Returns the loss as a 0-d array
        (on the device: reading it with ``float`` forces a sync), or ``(loss, outputs)``
        with ``return_outputs=True``, outputs (N, *output_shape).

        ``validate=False`` skips the class-range check of labels already checked (the
        Trainer checks the whole dataset once), so the step never waits on the device.
        The outputs also stay in :attr:`last_output`.
        """
        out = self._run(self.as_input(x, finite=validate), training=True)
        loss = self.loss.forward(out, self.as_target(y, out.shape[0], validate=validate))
        self.backward(self.loss.backward())
        self.last_output = out
        return (loss, out) if return_outputs else loss

    def train(self) -> Sequential:
        """Training mode (dropout active, batch norm uses and updates batch statistics)."""
        self.training = True
        return self

    def eval(self) -> Sequential:
        """Inference mode (dropout is the identity, batch norm uses running statistics)."""
        self.training = False
        return self

    # ------------------------------------------------------------------ inference
    def _infer(self, x: Array) -> Array:
        """The inference pass of :meth:`predict` and :meth:`evaluate`: on a backend that
        compiles inference (JAX, see ``Backend.compiles_inference``), one compiled
        function per input shape with the parameters and buffers as its arguments (so it
        follows training), else layer by layer."""
        if not self.backend.compiles_inference:
            return self._run(x, False)
        if getattr(self, "_infer_for", None) is not self.backend:
            self._infer_compiled = self.backend.compile(self._bound_inference)
            self._infer_for = self.backend
        params = {name: p.value for name, p in self.parameters().items()}
        return self._infer_compiled(params, self.buffers(), x)

    def _bound_inference(
        self, params: dict[str, Array], buffers: dict[str, Array], x: Array
    ) -> Array:
        """``_run(x, False)`` on the given parameter and buffer values (a pure function of
        them, for compiling); the layers' own values are put back afterwards."""
        named = self.parameters()
        owners = {f"{layer.name}.{k}": layer for layer in self.layers for k in layer.buffers}
        kept = (
            {n: p.value for n, p in named.items()},
            {layer: dict(layer.buffers) for layer in self.layers},
        )
        try:
            for name, p in named.items():
                p.value = params[name]
            for name, layer in owners.items():
                layer.buffers = {**layer.buffers, name.split(".", 1)[1]: buffers[name]}
            out = self._run(x, False)
        finally:
            for name, p in named.items():
                p.value = kept[0][name]
            for layer, values in kept[1].items():
                layer.buffers = values
        return out

    def predict(self, x: Any, batch_size: int = 512) -> Array:
        """Outputs (logits) for ``x`` (N, *input_shape), in batches, in inference mode
        (compiled on JAX, see :meth:`_infer`).

        Raises:
            MemoryError: before any activation is allocated, when one batch does not fit
                the backend's free memory (the message names the batch size that fits).
        """
        x = as_batch(x)
        n = batch_count(x, batch_size)
        if not self.built:
            self.build(tuple(x.shape[1:]))
        check_activation_memory(self, batch_size, n)
        self._inputs.check_values(x)
        parts = [
            self._infer(self.as_input(x[i : min(i + batch_size, n), ...], finite=False))
            for i in range(0, n, batch_size)
        ]
        return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=0)

    def predict_classes(self, x: Any, batch_size: int = 512) -> np.ndarray:
        """Predicted class indices (N,) as a host NumPy array."""
        return self.backend.to_numpy(self.xp.argmax(self.predict(x, batch_size), axis=1))

    def evaluate(self, x: Any, y: Any, batch_size: int = 512) -> dict[str, float]:
        """Mean loss and accuracy over (x, y); labels are checked once, metrics read
        once at the end.

        Raises:
            MemoryError: as :meth:`predict`, before any activation is allocated.
        """
        x = as_batch(x)
        n = batch_count(x, batch_size)
        if not self.built:
            self.build(tuple(x.shape[1:]))
        check_activation_memory(self, batch_size, n)
        self._inputs.check_values(x)
        targets = self.as_target(y, n)
        totals = MetricTotals(self.xp)
        for i in range(0, n, batch_size):
            out = self._infer(self.as_input(x[i : min(i + batch_size, n), ...], finite=False))
            target = targets[i : min(i + batch_size, n), ...]
            totals.add(self.loss.forward(out, target), out, target)
        return totals.result()

    # ------------------------------------------------------------------ parameters
    def parameters(self) -> dict[str, Parameter]:
        """Every parameter by ``"layer.param"`` name, in layer order."""
        self._require_built()
        return {
            f"{layer.name}.{key}": p for layer in self.layers for key, p in layer.params.items()
        }

    def gradients(self) -> dict[str, Array | None]:
        return {name: p.grad for name, p in self.parameters().items()}

    def num_parameters(self) -> int:
        return sum(layer.num_parameters() for layer in self.layers)

    def buffers(self) -> dict[str, Array]:
        """Every buffer (non-trainable state such as running statistics) by
        ``"layer.key"`` name, in layer order."""
        self._require_built()
        return {
            f"{layer.name}.{key}": value
            for layer in self.layers
            for key, value in layer.buffers.items()
        }

    def _set_buffer(self, name: str, value: Array) -> None:
        layer_name, key = name.split(".", 1)
        layer = next(layer for layer in self.layers if layer.name == layer_name)
        layer.buffers[key] = value

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter values, then buffers, as host NumPy arrays."""
        state = {name: self.backend.to_numpy(p.value) for name, p in self.parameters().items()}
        state.update({name: self.backend.to_numpy(v) for name, v in self.buffers().items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set parameter and buffer values from host arrays; names and shapes must match
        exactly."""
        params = self.parameters()
        buffers = self.buffers()
        shapes = {name: p.shape for name, p in params.items()}
        shapes.update({name: tuple(v.shape) for name, v in buffers.items()})
        missing, extra = set(shapes) - set(state), set(state) - set(shapes)
        if missing or extra:
            raise ValueError(
                f"state: expected parameters {sorted(shapes)}, missing {sorted(missing)}, "
                f"unexpected {sorted(extra)}"
            )
        for name, shape in shapes.items():
            value = np.asarray(state[name])
            if tuple(value.shape) != shape:
                raise ValueError(f"state[{name!r}]: expected shape {shape}, got {value.shape}")
        for name, p in params.items():
            p.value = self.backend.asarray(np.asarray(state[name]), dtype=self.dtype)
            p.grad = None
        for name in buffers:
            self._set_buffer(name, self.backend.asarray(np.asarray(state[name]), dtype=self.dtype))

    def to(self, backend: str | Backend, device: Any = None) -> Sequential:
        """Move every parameter and buffer to another backend/device (in place); returns self.

        A :class:`~xpconv.train.trainer.Trainer` of this model moves its optimizer's state
        along at its next ``fit`` (with a warning)."""
        target = get_backend(backend, device)
        state = self.state_dict() if self.built else None
        self.backend = target
        self.dtype = target.dtype(self.dtype_name if state is None else _host_dtype(state))
        if state is not None:
            for name, p in self.parameters().items():
                p.value, p.grad = target.asarray(state[name], dtype=self.dtype), None
            for name in self.buffers():
                self._set_buffer(name, target.asarray(state[name], dtype=self.dtype))
        return self

    # ------------------------------------------------------------------ description
    def get_config(self) -> dict[str, Any]:
        """The architecture as JSON-serialisable data (see :meth:`from_config`)."""
        return {
            "layers": [
                {"type": type(layer).__name__, "config": layer.get_config()}
                for layer in self.layers
            ],
            "loss": self.loss.name,
            "dtype": self.dtype_name,
            "seed": self.seed,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "fuse": self.fuse,
        }

    @classmethod
    def from_config(
        cls, config: dict[str, Any], *, backend: str | Backend | None = None, device: Any = None
    ) -> Sequential:
        """A new model with the architecture of ``config`` (fresh weights)."""
        layers = [layer_from_config(item["type"], item["config"]) for item in config["layers"]]
        return cls(
            layers,
            loss=config["loss"],
            backend=backend,
            device=device,
            dtype=config["dtype"],
            seed=config["seed"],
            input_shape=config["input_shape"],
            fuse=config.get("fuse", True),
        )

    def summary(self, print_fn: Any = print) -> str:
        """A table of each layer's output shape and parameter count; printed and returned."""
        self._require_built()
        result = summary_table(self)
        if print_fn is not None:
            print_fn(result)
        return result

    def __repr__(self) -> str:
        inner = ", ".join(layer.describe() for layer in self.layers)
        return f"Sequential([{inner}], backend={self.backend.label!r}, dtype={self.dtype_name!r})"


def _claim_layers(model: Sequential, layers: Sequence[Layer]) -> None:
    """Each layer belongs to one model once: its parameters, saved activations and name
    are the model's."""
    seen: set[int] = set()
    for i, layer in enumerate(layers):
        if id(layer) in seen:
            raise ValueError(
                f"layers[{i}]: the layer {layer!r} appears twice in this model; a layer "
                "owns its parameters, so create a new layer for every position"
            )
        seen.add(id(layer))
        ref = getattr(layer, "_xpconv_owner", None)
        owner = ref() if ref is not None else None
        if owner is not None and owner is not model:
            raise ValueError(
                f"layers[{i}]: the layer {layer!r} already belongs to another model "
                f"({owner!r}); building this model would overwrite that model's weights; "
                "create new layers (or copy them with layer_from_config)"
            )
    for layer in layers:
        layer._xpconv_owner = weakref.ref(model)  # type: ignore[attr-defined]


def _leading_preprocessing(layers: list[Layer]) -> int:
    """How many layers at the start are fixed transforms of the input (``preprocessing``
    layers such as :class:`~xpconv.nn.layers.Standardize`), the last layer excepted."""
    lead = 0
    while lead + 1 < len(layers) and getattr(layers[lead], "preprocessing", False):
        lead += 1
    return lead


def _plan(layers: list[Layer], fuse: bool) -> list[Any]:
    """The steps a forward pass runs: the layers, with fusable Conv2D + MaxPool2D
    pairs replaced by one :class:`~xpconv.nn.layers.ConvMaxPool` step and Conv2D +
    Flatten + Dense runs by one :class:`~xpconv.nn.layers.ConvDense` step."""
    steps: list[Any] = []
    i = 0
    while i < len(layers):
        if fuse and i + 1 < len(layers) and ConvMaxPool.fits(layers[i], layers[i + 1]):
            steps.append(ConvMaxPool(layers[i], layers[i + 1]))  # type: ignore[arg-type]
            i += 2
        elif fuse and i + 2 < len(layers) and ConvDense.fits(*layers[i : i + 3]):
            steps.append(ConvDense(*layers[i : i + 3]))  # type: ignore[arg-type]
            i += 3
        else:
            steps.append(layers[i])
            i += 1
    return steps


def _host_dtype(state: dict[str, np.ndarray]) -> str:
    first = next(iter(state.values()), None)
    return "float64" if first is not None and first.dtype == np.float64 else "float32"
