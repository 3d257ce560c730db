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

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from array_api_compat import is_array_api_obj

from .backend import Backend, get_backend
from .functional._checks import positive_int
from .layers import BuildContext, ConvMaxPool, Layer, Parameter, layer_from_config
from .losses import Loss, get_loss

Array = Any

__all__ = ["Sequential"]


class Sequential:
    """Layers applied in order, with a loss, on one backend, device and dtype.

    Args:
        layers: the layers, unbuilt.
        loss: ``"softmax_cross_entropy"`` (default), ``"mse"`` or a ``Loss``.
        backend: backend name or ``Backend`` (default: the process default).
        device: device on that backend (default: its default device).
        dtype: ``"float32"`` (default) or ``"float64"``.
        seed: seeds the weight initialisers and the dropout masks.
        input_shape: per-example input shape, e.g. (1, 28, 28); without it the model
            is built on its first input.
        fuse: run a Conv2D (ReLU or no activation) and a tiled MaxPool2D after it as one
            step (:class:`~xpconv.layers.ConvMaxPool`): same results, less memory
            traffic.
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
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self.layers = list(layers)
        self.loss = get_loss(loss)
        self.backend = get_backend(backend, device)
        self.dtype = self.backend.dtype(dtype)
        self.seed = seed
        self.fuse = fuse
        self.training = False
        self.last_output: Array | None = None  # outputs of the last train_batch
        self.dropout_rng = np.random.default_rng([seed, 1])
        self.input_shape: tuple[int, ...] | None = None
        self._warned_cast = False
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
        shape = tuple(int(s) for s in input_shape)
        if not shape or min(shape) < 1:
            raise ValueError(
                f"input_shape: expected positive sizes such as (1, 28, 28), got {shape}"
            )
        ctx = BuildContext(
            self.backend, self.dtype, np.random.default_rng(self.seed), self.dropout_rng
        )
        names: dict[str, int] = {}
        for layer in self.layers:
            index = names.get(type(layer).__name__, 0)
            names[type(layer).__name__] = index + 1
            layer.name = f"{type(layer).__name__.lower()}_{index}"
            shape = layer.build(shape, ctx)
            layer.needs_input_grad = layer is not self.layers[0]
        self._steps = _plan(self.layers, self.fuse)
        self.input_shape = tuple(int(s) for s in input_shape)
        return self

    @property
    def steps(self) -> list[Any]:
        """The layers as a pass runs them: fused pairs (:class:`~xpconv.layers.ConvMaxPool`)
        count as one step. Each step has ``forward(x, training)`` and ``backward(grad)``."""
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
    def as_input(self, x: Any, argument: str = "x") -> Array:
        """Check ``x`` (N, *input_shape) and put it on the model's backend and dtype.

        Host NumPy data is checked for NaN/infinity and moved to the device; arrays of
        another backend or device are refused. Floating data of another precision is
        cast with a warning (once).
        """
        host = isinstance(x, np.ndarray) or not is_array_api_obj(x)
        if host:
            x = np.asarray(x)
            if x.dtype.kind not in "fiu":
                raise TypeError(f"{argument}: expected numeric data, got dtype {x.dtype}")
            if x.dtype.kind == "f":
                _check_finite_host(x, argument)
                if x.dtype.name != self.dtype_name:
                    self._warn_cast(argument, x.dtype.name)
            x = self.backend.asarray(x, dtype=self.dtype)
        else:
            self.backend.check(x, argument)
            if x.dtype != self.dtype:
                if not self.xp.isdtype(x.dtype, "real floating"):
                    raise TypeError(f"{argument}: expected a floating array, got {x.dtype}")
                self._warn_cast(argument, str(x.dtype))
                x = self.xp.astype(x, self.dtype)
        self._check_shape(x, argument)
        return x

    def _warn_cast(self, argument: str, got: str) -> None:
        if not self._warned_cast:
            warnings.warn(
                f"{argument}: {got} data cast to the model's {self.dtype_name}",
                UserWarning,
                stacklevel=4,
            )
            self._warned_cast = True

    def _check_shape(self, x: Array, argument: str) -> None:
        if x.ndim < 2:
            raise ValueError(
                f"{argument}: expected a batch (N, *input_shape), got shape {tuple(x.shape)}"
            )
        if not self.built:
            self.build(tuple(x.shape[1:]))
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{argument}: expected examples of shape {self.input_shape} (model input), "
                f"got {tuple(x.shape[1:])} (batch of shape {tuple(x.shape)})"
            )
        if x.shape[0] < 1:
            raise ValueError(f"{argument}: expected at least one example, got an empty batch")

    def as_target(self, y: Any, n: int, argument: str = "y", *, validate: bool = True) -> Array:
        """Labels (N,) integers in [0, classes), or float targets (N, *output_shape).

        Integer labels are checked against the number of classes (the model's output
        width): on the host for host data, else by reading their range back from the
        device once; ``validate=False`` skips that for labels checked before.
        """
        if isinstance(y, np.ndarray) or not is_array_api_obj(y):
            y = np.asarray(y)
            if y.dtype.kind in "iu":
                y = self.backend.asarray(y.astype(np.int64))
            elif y.dtype.kind == "f":
                y = self.backend.asarray(y, dtype=self.dtype)
            else:
                raise TypeError(
                    f"{argument}: expected integer labels or float targets, got {y.dtype}"
                )
        else:
            self.backend.check(y, argument)
        if y.ndim < 1 or y.shape[0] != n:
            raise ValueError(
                f"{argument}: expected {n} labels (one per example), got shape {tuple(y.shape)}"
            )
        if validate and y.ndim == 1 and self.xp.isdtype(y.dtype, "integral"):
            self._check_classes(y, argument)
        return y

    def _check_classes(self, y: Array, argument: str) -> None:
        classes = self.output_shape[-1]
        low, high = int(self.xp.min(y)), int(self.xp.max(y))
        if low < 0 or high >= classes:
            raise ValueError(
                f"{argument}: expected labels in [0, {classes}) for a model with {classes} "
                f"outputs, got values from {low} to {high}"
            )

    # ------------------------------------------------------------------ passes
    def forward(self, x: Any, training: bool | None = None) -> Array:
        """Outputs (N, *output_shape) for inputs (N, *input_shape)."""
        x = self.as_input(x)
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
        first = self.layers[0]
        first.needs_input_grad = input_grad
        try:
            for step in reversed(self._steps):
                grad = step.backward(grad)
        finally:
            first.needs_input_grad = False
        return grad if input_grad else None

    def train_batch(self, x: Any, y: Any, *, validate: bool = True) -> Array:
        """Forward in training mode, loss, backward. Returns the loss as a 0-d array
        (on the device: reading it with ``float`` forces a sync).

        ``validate=False`` skips the class-range check of labels already checked (the
        Trainer checks the whole dataset once), so the step never waits on the device.
        The outputs (N, *output_shape) stay in :attr:`last_output`.
        """
        out = self.forward(x, training=True)
        loss = self.loss.forward(out, self.as_target(y, out.shape[0], validate=validate))
        self.backward(self.loss.backward())
        self.last_output = out
        return loss

    def train(self) -> Sequential:
        """Training mode (dropout active)."""
        self.training = True
        return self

    def eval(self) -> Sequential:
        """Inference mode (dropout is the identity)."""
        self.training = False
        return self

    # ------------------------------------------------------------------ inference
    def predict(self, x: Any, batch_size: int = 512) -> Array:
        """Outputs (logits) for ``x`` (N, *input_shape), in batches, in inference mode."""
        n = _batches(x, batch_size)
        parts = [
            self.forward(x[i : min(i + batch_size, n), ...], training=False)
            for i in range(0, n, batch_size)
        ]
        return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=0)

    def predict_classes(self, x: Any, batch_size: int = 512) -> np.ndarray:
        """Predicted class indices (N,) as a host NumPy array."""
        return self.backend.to_numpy(self.xp.argmax(self.predict(x, batch_size), axis=1))

    def evaluate(self, x: Any, y: Any, batch_size: int = 512) -> dict[str, float]:
        """Mean loss and accuracy over (x, y); labels are checked once, metrics read
        once at the end."""
        xp = self.xp
        n = _batches(x, batch_size)
        if not self.built:
            self.build(tuple(x.shape[1:]))
        targets = self.as_target(y, n)
        total_loss, correct = 0.0, 0
        for i in range(0, n, batch_size):
            out = self.forward(x[i : min(i + batch_size, n), ...], training=False)
            target = targets[i : min(i + batch_size, n), ...]
            total_loss = total_loss + self.loss.forward(out, target) * out.shape[0]
            if target.ndim == 1:
                hits = xp.argmax(out, axis=1) == target
                correct = correct + xp.count_nonzero(hits)
        return {"loss": float(total_loss) / n, "accuracy": int(correct) / n}

    # ------------------------------------------------------------------ parameters
    def parameters(self) -> dict[str, Parameter]:
        """Every parameter by ``"layer.param"`` name, in layer order."""
        self._require_built()
        return {
            f"{layer.name}.{key}": p for layer in self.layers for key, p in layer.params.items()
        }

    def buffers(self) -> dict[str, Array]:
        """Every layer's non-trainable state by ``"layer.key"`` name, in layer order."""
        self._require_built()
        return {
            f"{layer.name}.{key}": value
            for layer in self.layers
            for key, value in layer.buffers.items()
        }

    def gradients(self) -> dict[str, Array | None]:
        return {name: p.grad for name, p in self.parameters().items()}

    def num_parameters(self) -> int:
        return sum(layer.num_parameters() for layer in self.layers)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter values as host NumPy arrays."""
        return {name: self.backend.to_numpy(p.value) for name, p in self.parameters().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set parameter values from host arrays; names and shapes must match exactly."""
        params = self.parameters()
        missing, extra = set(params) - set(state), set(state) - set(params)
        if missing or extra:
            raise ValueError(
                f"state: expected parameters {sorted(params)}, missing {sorted(missing)}, "
                f"unexpected {sorted(extra)}"
            )
        for name, p in params.items():
            value = np.asarray(state[name])
            if tuple(value.shape) != p.shape:
                raise ValueError(f"state[{name!r}]: expected shape {p.shape}, got {value.shape}")
        for name, p in params.items():
            p.value = self.backend.asarray(np.asarray(state[name]), dtype=self.dtype)
            p.grad = None

    def to(self, backend: str | Backend, device: Any = None) -> Sequential:
        """Move every parameter to another backend/device (in place); returns self."""
        target = get_backend(backend, device)
        state = self.state_dict() if self.built else None
        self.backend = target
        self.dtype = target.dtype(self.dtype_name if state is None else _host_dtype(state))
        if state is not None:
            for p, value in zip(self.parameters().values(), state.values()):
                p.value, p.grad = target.asarray(value, dtype=self.dtype), None
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
        )

    def summary(self, print_fn: Any = print) -> str:
        """A table of each layer's output shape and parameter count; printed and returned."""
        self._require_built()
        rows = [("layer", "output shape", "params")]
        rows.append(("input", str((None, *self.input_shape)), ""))
        for layer in self.layers:
            rows.append(
                (
                    f"{layer.name}: {layer.describe()}",
                    str((None, *layer.output_shape)),
                    f"{layer.num_parameters():,}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "-" * (sum(widths) + 4)
        text = [line]
        for i, row in enumerate(rows):
            text.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
            if i == 0:
                text.append(line)
        text += [
            line,
            f"total parameters: {self.num_parameters():,}   backend: {self.backend.label}   "
            f"dtype: {self.dtype_name}",
        ]
        result = "\n".join(text)
        if print_fn is not None:
            print_fn(result)
        return result

    def __repr__(self) -> str:
        inner = ", ".join(layer.describe() for layer in self.layers)
        return f"Sequential([{inner}], backend={self.backend.label!r}, dtype={self.dtype_name!r})"


def _batches(x: Any, batch_size: int) -> int:
    """Check a dataset and batch size for inference; returns the number of examples."""
    positive_int(batch_size, "batch_size")
    n = int(x.shape[0]) if getattr(x, "ndim", 0) else 0
    if n < 1:
        raise ValueError(f"x: expected at least one example, got shape {tuple(x.shape)}")
    return n


def _plan(layers: list[Layer], fuse: bool) -> list[Any]:
    """The steps a forward pass runs: the layers, with fusable Conv2D + MaxPool2D
    pairs replaced by one :class:`~xpconv.layers.ConvMaxPool` step."""
    steps: list[Any] = []
    i = 0
    while i < len(layers):
        if fuse and i + 1 < len(layers) and ConvMaxPool.fits(layers[i], layers[i + 1]):
            steps.append(ConvMaxPool(layers[i], layers[i + 1]))
            i += 2
        else:
            steps.append(layers[i])
            i += 1
    return steps


def _check_finite_host(x: np.ndarray, argument: str) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(
            f"{argument}: expected finite values (no NaN or infinity), "
            f"got {x[index]} at index {index}"
        )


def _host_dtype(state: dict[str, np.ndarray]) -> str:
    first = next(iter(state.values()), None)
    return "float64" if first is not None and first.dtype == np.float64 else "float32"
