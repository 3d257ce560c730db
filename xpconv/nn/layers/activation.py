"""Activation layers: Activation and one class per named activation."""

from __future__ import annotations

from typing import Any

from xpconv import ops as F
from xpconv.nn.layers.base import Layer, _ActivationMixin

Array = Any
Shape = tuple[int, ...]


class Activation(_ActivationMixin, Layer):
    """An activation as a layer of its own: ``Activation("relu")``."""

    def __init__(self, activation: str, **kwargs: Any) -> None:
        super().__init__()
        self._set_activation(activation)
        self._kwargs = kwargs
        if kwargs:
            forward, backward = self._act_forward, self._act_backward
            self._act_forward = lambda z: forward(z, **kwargs)
            self._act_backward = lambda g, z, out=None: backward(g, z, out=out, **kwargs)

    def forward(self, x: Array, training: bool) -> Array:
        return self._activate(x)

    def backward(self, grad: Array) -> Array:
        return self._deactivate(grad)

    def get_config(self) -> dict[str, Any]:
        return {"activation": self.activation, **self._kwargs}

    def describe(self) -> str:
        return f"Activation({self.activation})"


def _named_activation(act: str, doc: str) -> Any:
    def __init__(self, **kwargs: Any) -> None:
        Activation.__init__(self, act, **kwargs)
        self.name = type(self).__name__

    def get_config(self) -> dict[str, Any]:
        return dict(self._kwargs)

    return type(
        F.ACTIVATIONS[act].layer,
        (Activation,),
        {"__init__": __init__, "get_config": get_config, "__doc__": doc},
    )


Identity = _named_activation("identity", "f(x) = x.")
ReLU = _named_activation("relu", "f(x) = max(x, 0).")
LeakyReLU = _named_activation("leaky_relu", "f(x) = x if x > 0 else negative_slope * x.")
Sigmoid = _named_activation("sigmoid", "f(x) = 1 / (1 + exp(-x)).")
Tanh = _named_activation("tanh", "f(x) = tanh(x).")
Softmax = _named_activation("softmax", "Softmax along ``axis`` of the batch (default -1).")
LogSoftmax = _named_activation(
    "log_softmax", "Log-softmax along ``axis`` of the batch (default -1)."
)
