"""Residual blocks: a chain of layers plus a shortcut."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from xpconv import ops as F
from xpconv.nn.layers.base import (
    BuildContext,
    Layer,
    LayerShapes,
    backward_step,
    layer_from_config,
)

Array = Any
Shape = tuple[int, ...]


class _NestedBuffers(MutableMapping):
    """A live view of the buffers of a block's inner layers as ``"inner.key"`` entries;
    setting an entry reassigns it in the inner layer."""

    def __init__(self, owner: Residual) -> None:
        self._owner = owner

    def _split(self, key: str) -> tuple[Layer, str]:
        for prefix, layer in self._owner._named_children():
            if key.startswith(prefix + "."):
                rest = key[len(prefix) + 1 :]
                if rest in layer.buffers:
                    return layer, rest
        raise KeyError(key)

    def __getitem__(self, key: str) -> Array:
        layer, rest = self._split(key)
        return layer.buffers[rest]

    def __setitem__(self, key: str, value: Array) -> None:
        layer, rest = self._split(key)
        layer.buffers[rest] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"{self._owner.name}: buffers cannot be removed, got {key!r}")

    def __iter__(self) -> Iterator[str]:
        for prefix, layer in self._owner._named_children():
            for key in layer.buffers:
                yield f"{prefix}.{key}"

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Residual(Layer):
    """A residual block: ``layers(x) + shortcut(x)``, both chains of layers.

    Args:
        layers: the main branch, applied in order.
        shortcut: ``None`` for the identity, or layers (e.g. a 1x1 strided ``Conv2D`` and
            a ``BatchNorm2D``) mapping x to the branch's output shape.

    Inner layers are named by kind within the block (``conv2d_0``, ``batchnorm2d_0``,
    ``shortcut.conv2d_0``), so the model names their parameters and buffers
    ``residual_0.conv2d_0.weight`` and so on. A ReLU after the sum is a separate layer.
    """

    skips_input_grad = True

    def __init__(self, layers: Sequence[Layer], shortcut: Sequence[Layer] | None = None) -> None:
        super().__init__()
        if isinstance(layers, Layer):
            layers = [layers]
        if isinstance(shortcut, Layer):
            shortcut = [shortcut]
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise TypeError(
                f"{self.name}: layers expected a non-empty list of Layer, got {layers!r}"
            )
        if shortcut is not None and not all(isinstance(layer, Layer) for layer in shortcut):
            raise TypeError(
                f"{self.name}: shortcut expected a list of Layer or None, got {shortcut!r}"
            )
        self.layers: list[Layer] = list(layers)
        self.shortcut: list[Layer] = list(shortcut or [])

    @property  # type: ignore[override]
    def buffers(self) -> MutableMapping[str, Array]:  # type: ignore[override]
        return _NestedBuffers(self)

    @buffers.setter
    def buffers(self, values: Mapping[str, Array]) -> None:
        view = _NestedBuffers(self)
        for key, value in values.items():
            view[key] = value

    def _named_children(self) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self.layers] + [
            (f"shortcut.{layer.name}", layer) for layer in self.shortcut
        ]

    def children(self) -> list[tuple[str, Layer]]:
        """The inner layers with their names inside the block (branch, then shortcut)."""
        return self._named_children()

    def _chains(self) -> list[list[tuple[str, Layer]]]:
        """The branch and the shortcut, each layer with its name inside its chain
        (``conv2d_0``, ``batchnorm2d_0``, ...)."""
        chains = []
        for chain in (self.layers, self.shortcut):
            names: dict[str, int] = {}
            named = []
            for layer in chain:
                kind = type(layer).__name__
                index = names.get(kind, 0)
                names[kind] = index + 1
                named.append((f"{kind.lower()}_{index}", layer))
            chains.append(named)
        return chains

    def _same_outputs(self, shapes: list[Shape]) -> Shape:
        if shapes[0] != shapes[1]:
            where = "the shortcut" if self.shortcut else "the identity shortcut (the input)"
            raise ValueError(
                f"{self.name}: the branch gives output shape {shapes[0]} but {where} gives "
                f"{shapes[1]}; add a shortcut such as Conv2D(..., kernel_size=1, stride=...)"
            )
        return shapes[0]

    def shapes_for(self, input_shape: Shape) -> LayerShapes:
        outputs: list[Shape] = []
        params: dict[str, Shape] = {}
        buffers: dict[str, Shape] = {}
        for prefix, chain in zip(("", "shortcut."), self._chains()):
            shape = tuple(input_shape)
            for name, layer in chain:
                inner = layer.shapes_for(shape)
                params.update({f"{prefix}{name}.{k}": v for k, v in inner.params.items()})
                buffers.update({f"{prefix}{name}.{k}": v for k, v in inner.buffers.items()})
                shape = inner.output
            outputs.append(shape)
        return LayerShapes(self._same_outputs(outputs), params, buffers)

    def _build(self, input_shape: Shape, ctx: BuildContext) -> Shape:
        shapes = []
        for chain in self._chains():
            shape = input_shape
            for name, layer in chain:
                layer.name = name
                shape = layer.build(shape, ctx)
            shapes.append(shape)
        self._same_outputs(shapes)
        self.params = {
            f"{prefix}.{key}": p
            for prefix, layer in self._named_children()
            for key, p in layer.params.items()
        }
        return shapes[0]

    def forward(self, x: Array, training: bool) -> Array:
        h = x
        for layer in self.layers:
            h = layer.forward(h, training)
        s = x
        for layer in self.shortcut:
            s = layer.forward(s, training)
        return F.add(h, s)

    def backward(self, grad: Array, *, input_grad: bool | None = None) -> Array | None:
        need = self._wants_input_grad(input_grad)
        grad_branch, grad_short = F.add_backward(grad)
        for layer in reversed(self.layers[1:]):
            grad_branch = layer.backward(grad_branch)
        grad_branch = backward_step(self.layers[0], grad_branch, input_grad=need)
        if self.shortcut:
            for layer in reversed(self.shortcut[1:]):
                grad_short = layer.backward(grad_short)
            grad_short = backward_step(self.shortcut[0], grad_short, input_grad=need)
        if not need:
            return None
        return grad_branch + grad_short

    def get_config(self) -> dict[str, Any]:
        def configs(chain: list[Layer]) -> list[dict[str, Any]]:
            return [{"type": type(layer).__name__, "config": layer.get_config()} for layer in chain]

        return {"layers": configs(self.layers), "shortcut": configs(self.shortcut) or None}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Residual:
        """A block from :meth:`get_config` output (unbuilt)."""
        shortcut = config.get("shortcut")
        return cls(
            [layer_from_config(item["type"], item["config"]) for item in config["layers"]],
            None
            if not shortcut
            else [layer_from_config(item["type"], item["config"]) for item in shortcut],
        )

    def describe(self) -> str:
        short = "identity" if not self.shortcut else f"{len(self.shortcut)} layer(s)"
        return f"Residual({len(self.layers)} layers, shortcut {short})"
