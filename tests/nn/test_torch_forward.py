"""Whole-model forward values against the same network built in PyTorch with the
weights copied over: an independent oracle for every layer type and option.

Each network puts one layer type (with its options) inside a small model that ends
in Flatten and Dense, so the values that reach the output went through the layer
under test and through the layers around it. The reference is ``torch.nn`` in
float64; the library runs on every backend at the case's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import Case, torch_or_skip

import xpconv as xc
from xpconv.nn import layers as L


def _torch_layer(nn: Any, layer: Any, in_shape: tuple[int, ...]) -> Any:
    """The torch.nn module computing what ``layer`` computes (weights copied later)."""
    if isinstance(layer, L.Conv1D):
        k = layer.kernel_size[1]
        padding = layer.padding if isinstance(layer.padding, str) else layer.padding[1]
        conv = nn.Conv1d(
            in_shape[0],
            layer.filters,
            k,
            stride=layer.stride[1],
            padding=padding,
            dilation=layer.dilation[1],
            groups=layer.groups,
            bias=layer.use_bias,
        )
        return _with_activation(nn, conv, layer.activation)
    if isinstance(layer, L.Conv2D):
        conv = nn.Conv2d(
            in_shape[0],
            layer.filters,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.use_bias,
        )
        return _with_activation(nn, conv, layer.activation)
    if isinstance(layer, L.MaxPool2D):
        return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, L.AvgPool2D):
        return nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, count_include_pad=True)
    if isinstance(layer, L.Flatten):
        return nn.Flatten()
    if isinstance(layer, L.Dense):
        dense = nn.Linear(in_shape[0], layer.units, bias=layer.use_bias)
        return _with_activation(nn, dense, layer.activation)
    if isinstance(layer, L.Dropout):
        return nn.Dropout(layer.p)
    if isinstance(layer, L.LeakyReLU):
        return nn.LeakyReLU(layer_slope(layer))
    for ours, theirs in (
        (L.ReLU, nn.ReLU()),
        (L.Sigmoid, nn.Sigmoid()),
        (L.Tanh, nn.Tanh()),
        (L.Softmax, nn.Softmax(dim=1)),
        (L.LogSoftmax, nn.LogSoftmax(dim=1)),
        (L.Identity, nn.Identity()),
    ):
        if isinstance(layer, ours):
            return theirs
    raise AssertionError(f"no torch counterpart for {layer!r}")


def layer_slope(layer: Any) -> float:
    return float(layer.get_config()["negative_slope"])


def _with_activation(nn: Any, module: Any, activation: str | None) -> Any:
    acts = {
        None: None,
        "identity": None,
        "relu": nn.ReLU(),
        "tanh": nn.Tanh(),
        "sigmoid": nn.Sigmoid(),
    }
    act = acts[activation]
    return module if act is None else nn.Sequential(module, act)


def _torch_model(model: xc.Sequential, input_shape: tuple[int, ...]) -> Any:
    """The same network in torch.nn, float64, with the library's weights copied in."""
    torch = torch_or_skip()
    nn = torch.nn
    modules, shape = [], input_shape
    for layer in model.layers:
        module = _torch_layer(nn, layer, shape).double()
        params = {k: model.backend.to_numpy(p.value) for k, p in layer.params.items()}
        target = module[0] if isinstance(module, nn.Sequential) else module
        with torch.no_grad():
            for name, value in params.items():
                getattr(target, name).copy_(torch.from_numpy(np.array(value, np.float64)))
        modules.append(module)
        shape = layer.output_shape
    return nn.Sequential(*modules).double().eval()


def _head() -> list[Any]:
    return [L.Flatten(), L.Dense(5, activation="tanh"), L.Dense(3)]


NETWORKS: list[tuple[str, Callable[[], list[Any]], tuple[int, ...]]] = [
    ("conv2d-plain", lambda: [L.Conv2D(3, 3), *_head()], (2, 7, 7)),
    ("conv2d-same-odd", lambda: [L.Conv2D(3, 3, padding="same", activation="relu"), *_head()],
     (2, 6, 5)),
    ("conv2d-same-even", lambda: [L.Conv2D(2, (2, 4), padding="same"), *_head()], (3, 6, 7)),
    ("conv2d-valid-rect", lambda: [L.Conv2D(4, (3, 2), padding="valid"), *_head()], (2, 6, 6)),
    ("conv2d-pad-pair", lambda: [L.Conv2D(2, 3, padding=(2, 1), activation="tanh"), *_head()],
     (1, 5, 6)),
    ("conv2d-stride", lambda: [L.Conv2D(3, 3, stride=(2, 3), padding=1), *_head()], (2, 9, 10)),
    ("conv2d-dilation", lambda: [L.Conv2D(2, 3, dilation=(2, 1), padding=2), *_head()],
     (2, 8, 7)),
    ("conv2d-groups", lambda: [L.Conv2D(6, 3, groups=3, padding=1), *_head()], (3, 6, 6)),
    ("conv2d-depthwise", lambda: [L.Conv2D(4, 3, groups=4, activation="sigmoid"), *_head()],
     (4, 6, 6)),
    ("conv2d-nobias", lambda: [L.Conv2D(3, 2, use_bias=False), *_head()], (2, 5, 5)),
    ("conv2d-all", lambda: [L.Conv2D(4, (3, 2), stride=2, padding=(1, 2), dilation=(1, 2),
                                     groups=2, activation="relu"), *_head()], (2, 9, 9)),
    ("conv1d", lambda: [L.Conv1D(3, 3, padding=1, activation="tanh"), *_head()], (2, 11)),
    ("conv1d-stride-dilation-groups", lambda: [L.Conv1D(4, 3, stride=2, dilation=2, groups=2),
                                               *_head()], (2, 15)),
    ("conv1d-same", lambda: [L.Conv1D(2, 4, padding="same", use_bias=False), *_head()], (3, 9)),
    ("maxpool", lambda: [L.Conv2D(2, 3, padding=1), L.MaxPool2D(2), *_head()], (1, 8, 8)),
    ("maxpool-overlap-pad", lambda: [L.MaxPool2D(3, stride=2, padding=1), *_head()], (2, 7, 7)),
    ("maxpool-rect", lambda: [L.MaxPool2D((2, 3), stride=(1, 2)), *_head()], (2, 6, 7)),
    ("avgpool", lambda: [L.Conv2D(2, 3), L.AvgPool2D(2), *_head()], (1, 8, 8)),
    ("avgpool-pad", lambda: [L.AvgPool2D(3, stride=2, padding=1), *_head()], (2, 7, 6)),
    ("dense-activations", lambda: [L.Flatten(), L.Dense(6, activation="relu"),
                                   L.Dense(4, activation="sigmoid"), L.Dense(3, use_bias=False)],
     (2, 3, 3)),
    ("relu", lambda: [L.Flatten(), L.Dense(6), L.ReLU(), L.Dense(3)], (2, 2, 3)),
    ("leaky_relu", lambda: [L.Flatten(), L.Dense(6), L.LeakyReLU(negative_slope=0.2),
                            L.Dense(3)], (2, 2, 3)),
    ("sigmoid-tanh", lambda: [L.Flatten(), L.Dense(6), L.Sigmoid(), L.Dense(5), L.Tanh(),
                              L.Dense(3)], (12,)),
    ("softmax", lambda: [L.Flatten(), L.Dense(6), L.Softmax()], (2, 2, 3)),
    ("log_softmax", lambda: [L.Flatten(), L.Dense(6), L.LogSoftmax()], (2, 2, 3)),
    ("identity", lambda: [L.Identity(), *_head()], (2, 3, 3)),
    ("dropout-eval", lambda: [L.Conv2D(2, 3), L.Dropout(0.4), *_head()], (1, 6, 6)),
    ("lenet", lambda: [L.Conv2D(4, 3, padding="same", activation="relu"), L.MaxPool2D(2),
                       L.Conv2D(6, 3, padding="same", activation="relu"), L.MaxPool2D(2),
                       L.Flatten(), L.Dense(8, activation="relu"), L.Dropout(0.5), L.Dense(10)],
     (1, 12, 12)),
]  # fmt: skip


@pytest.mark.parametrize("make, shape", [n[1:] for n in NETWORKS], ids=[n[0] for n in NETWORKS])
def test_forward_matches_torch_nn_with_copied_weights(
    case: Case, make, shape: tuple[int, ...], rng: np.random.Generator
) -> None:
    torch = torch_or_skip()
    model = xc.Sequential(
        make(), backend=case.backend, dtype=case.dtype, seed=7, input_shape=shape, loss="mse"
    )
    for layer in model.layers:  # non-zero biases, so copying them matters
        if "bias" in layer.params:
            p = layer.params["bias"]
            p.value = case.asarray(rng.normal(size=p.shape) * 0.5)
    reference = _torch_model(model, shape)
    x = case.host(rng.normal(size=(4, *shape)))
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    model.eval()
    case.assert_close(model.forward(case.asarray(x), training=False), expected, "forward")
    assert np.std(expected) > 1e-3  # the network does not squash everything to a constant
