"""The reference workloads, their PyTorch twins, the data, and one runner per contender.

W1 is the lecture's network, W2 a small LeNet (see ``xpconv.models.zoo``). Both take float32
images of shape 1x28x28 and 10 classes. The data are uniform random images and random
labels from a fixed seed; every contender gets the same batch, moved to its backend once
before timing, so transfers are never timed.

A *contender* is one implementation being timed:

- ``"xpconv-numpy"``, ``"xpconv-torch"`` (xpconv on PyTorch CPU tensors, trained
  through ``xpconv.TrainStep``, compiled by ``torch.compile`` where PyTorch finds its
  C++ compiler and ``XPCONV_COMPILE`` does not leave torch out),
  ``"xpconv-torch-eager"`` (xpconv on PyTorch stepped eagerly, by
  ``model.train_batch`` + ``SGD.step``) and ``"xpconv-array_api_strict"`` (a
  reference only: correct, not built for speed);
- ``"torch"``: PyTorch's own ``nn.Sequential`` of the same layers, trained with
  ``torch.optim.SGD`` (momentum 0.9) and ``F.cross_entropy`` through autograd;
- ``"xpconv-jax"``: xpconv on JAX, trained through ``xpconv.TrainStep`` (the whole
  step compiled by ``jax.jit``);
- ``"jax"``: a plain JAX model of the same network (``lax.conv_general_dilated``,
  ``lax.reduce_window`` max pooling, ``jax.grad``, the same SGD with momentum), its
  whole step under ``jax.jit`` with parameters and velocities donated.

A runner's ``run(steps)`` performs ``steps`` training steps (forward, loss, backward,
optimizer update) or inference passes and reads one number back at the end (the last
loss, or one logit), which forces any pending work to finish.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpconv.backends.numpy.host import balance_threads
from xpconv.models import zoo
from xpconv.nn.layers import Conv2D
from xpconv.optim.optimizers import SGD

__all__ = [
    "CLASSES",
    "CONTENDERS",
    "DTYPE",
    "EAGER",
    "IMAGE_SHAPE",
    "LR",
    "MODES",
    "MOMENTUM",
    "REFERENCE_ONLY",
    "WORKLOADS",
    "Workload",
    "available_contenders",
    "build_xpconv",
    "copy_weights",
    "is_xpconv",
    "make_data",
    "make_runner",
    "torch_net",
]

IMAGE_SHAPE = (1, 28, 28)
CLASSES = 10
DTYPE = "float32"
LR = 0.01
MOMENTUM = 0.9
MODES = ("train", "inference")

XPCONV_BACKENDS = {
    "xpconv-numpy": "numpy",
    "xpconv-torch": "torch",
    "xpconv-torch-eager": "torch",
    "xpconv-array_api_strict": "array_api_strict",
    "xpconv-jax": "jax",
}
CONTENDERS = (*XPCONV_BACKENDS, "torch", "jax")
REFERENCE_ONLY = frozenset({"xpconv-array_api_strict"})
#: xpconv contenders that never compile their step, on a backend that could
EAGER = frozenset({"xpconv-torch-eager"})


def is_xpconv(contender: str) -> bool:
    """Whether ``contender`` is xpconv on some backend (else a peer library)."""
    return contender in XPCONV_BACKENDS


@dataclass(frozen=True)
class Workload:
    """A reference network: its xpconv builder and a one-line description."""

    key: str
    zoo_name: str
    description: str


WORKLOADS = {
    "W1": Workload(
        "W1",
        "lecture",
        "Conv2D(1->16, 5x5, same) tanh, flatten, Dense(12544->10)",
    ),
    "W2": Workload(
        "W2",
        "lenet",
        "Conv2D(1->32, 3x3, same) relu maxpool2, Conv2D(32->64, 3x3, same) relu "
        "maxpool2, flatten, Dense(3136->128) relu, Dense(128->10)",
    ),
}


def has_module(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules
        return False


def available_contenders() -> dict[str, str | None]:
    """Every contender mapped to ``None`` when it can run here, else the reason it cannot."""
    torch_missing = None if has_module("torch") else "PyTorch is not installed (pip install torch)"
    strict_missing = (
        None
        if has_module("array_api_strict")
        else "array-api-strict is not installed (pip install array-api-strict)"
    )
    jax_missing = None if has_module("jax") else "JAX is not installed (pip install 'jax[cpu]')"
    return {
        "xpconv-numpy": None,
        "xpconv-torch": torch_missing,
        "xpconv-torch-eager": torch_missing,
        "xpconv-array_api_strict": strict_missing,
        "xpconv-jax": jax_missing,
        "torch": torch_missing,
        "jax": jax_missing,
    }


def make_data(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Host images (batch, 1, 28, 28) float32 in [0, 1) and labels (batch,) int64."""
    rng = np.random.default_rng([seed, batch])
    x = rng.random((batch, *IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, CLASSES, size=batch, dtype=np.int64)
    return x, y


#: environment variable that sets every Conv2D's ``algorithm`` in the xpconv models
#: ("auto", "im2col" or "winograd"; unset: the models' own, "auto"); read by each
#: process that builds a model, so own-process contenders follow it too
ALGORITHM_ENV = "XPCONV_BENCH_CONV_ALGORITHM"


def build_xpconv(workload: str, backend: str, seed: int = 0) -> Any:
    """The xpconv model of ``workload`` on ``backend`` (float32, built), its
    convolutions on the algorithm :data:`ALGORITHM_ENV` names (when set)."""
    builder = getattr(zoo, WORKLOADS[workload].zoo_name)
    # W1 is the lecture's network without the zoo model's input standardisation (its
    # PyTorch twin has none); W2 is the plain LeNet
    extra: dict[str, Any] = {"W1": {"standardize": None}, "W2": {"batch_norm": False}}[workload]
    model = builder(backend=backend, dtype=DTYPE, seed=seed, **extra)
    algorithm = os.environ.get(ALGORITHM_ENV)
    if algorithm:
        for layer in model.layers:
            if isinstance(layer, Conv2D):
                layer.algorithm = algorithm
        model.build(model.input_shape)  # the same seed: the same weights
    return model


def torch_net(workload: str) -> Any:
    """PyTorch's ``nn.Sequential`` with the same layers and shapes as the xpconv model."""
    from torch import nn

    channels, height, width = IMAGE_SHAPE
    if workload == "W1":
        return nn.Sequential(
            nn.Conv2d(channels, 16, 5, padding=2),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(16 * height * width, CLASSES),
        )
    if workload == "W2":
        return nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 128),
            nn.ReLU(),
            nn.Linear(128, CLASSES),
        )
    raise ValueError(f"workload: expected one of {sorted(WORKLOADS)}, got {workload!r}")


def copy_weights(model: Any, net: Any) -> None:
    """Give ``net`` (PyTorch) the xpconv model's initial weights, parameter by parameter.

    Both libraries store weights in the same layout (conv (O, C, KH, KW), dense
    (out, in)), so the two networks compute the same function from the first step.
    """
    import torch

    state = list(model.state_dict().items())
    params = list(net.parameters())
    if len(state) != len(params):
        raise ValueError(f"copy_weights: {len(state)} xpconv parameters, {len(params)} torch ones")
    with torch.no_grad():
        for (name, value), p in zip(state, params):
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(
                    f"copy_weights: {name} has shape {value.shape}, torch expects {tuple(p.shape)}"
                )
            p.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


class XpconvRunner:
    """Times xpconv: ``model.train_batch`` + ``SGD.step`` on data checked once, as
    ``Trainer.fit`` checks it (``validate=False``) (on a backend that compiles by
    default, see ``Backend.compiles_by_default``, unless ``compile`` is False:
    ``xpconv.TrainStep``, whose first step, the warm-up's, compiles), or
    ``model.predict`` of one batch (compiled on a backend that compiles inference);
    before every step ``xpconv.backends.numpy.host.balance_threads()``, as
    ``Trainer.fit`` does (it does nothing unless ``xpconv.tune_host`` switched it on)."""

    def __init__(
        self,
        workload: str,
        backend: str,
        mode: str,
        batch: int,
        seed: int = 0,
        compile: bool = True,
    ):
        self.model = build_xpconv(workload, backend, seed)
        self.optimizer = SGD(LR, momentum=MOMENTUM)
        x, y = make_data(batch, seed)
        self.x = self.model.as_input(x)
        self.y = self.model.as_target(y, batch)
        self.mode = mode
        self.train_step = None
        if compile and self.model.backend.compiles_by_default:
            from xpconv import TrainStep

            self.train_step = TrainStep(self.model, self.optimizer)

    def run(self, steps: int) -> float:
        model, x = self.model, self.x
        if self.mode == "train":
            loss = None
            for _ in range(steps):
                balance_threads()
                if self.train_step is not None:
                    loss = self.train_step(x, self.y, validate=False)
                    continue
                loss = model.train_batch(x, self.y, validate=False)  # checked once, above
                self.optimizer.step(model.parameters())
            return float(loss)
        out = None
        for _ in range(steps):
            balance_threads()
            out = model.predict(x, batch_size=int(x.shape[0]))  # compiled where it compiles
        return float(out[0, 0])


class TorchRunner:
    """Times PyTorch's ``nn.Module``: autograd step with ``torch.optim.SGD``, or eval forward."""

    def __init__(self, workload: str, mode: str, batch: int, seed: int = 0):
        import torch

        self.torch = torch
        self.net = torch_net(workload)
        copy_weights(build_xpconv(workload, "numpy", seed), self.net)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)
        x, y = make_data(batch, seed)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.mode = mode
        self.net.train(mode == "train")

    def run(self, steps: int) -> float:
        torch, net, x = self.torch, self.net, self.x
        if self.mode == "train":
            loss = None
            for _ in range(steps):
                self.optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(net(x), self.y)
                loss.backward()
                self.optimizer.step()
            return loss.item()
        out = None
        with torch.inference_mode():
            for _ in range(steps):
                out = net(x)
        return out[0, 0].item()


class JaxRunner:
    """Times a plain JAX model of the workload: ``jax.jit`` of a whole ``jax.grad`` step
    (SGD with momentum, parameters and velocities donated), or a jitted forward."""

    def __init__(self, workload: str, mode: str, batch: int, seed: int = 0):
        import jax
        import jax.numpy as jnp
        from jax import lax

        self.jax = jax
        self.params = [
            jnp.asarray(v) for v in build_xpconv(workload, "numpy", seed).state_dict().values()
        ]
        self.velocity = [jnp.zeros_like(p) for p in self.params]
        x, y = make_data(batch, seed)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.mode = mode
        dims = ("NCHW", "OIHW", "NCHW")

        def conv(x, w, b, pad):
            out = lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=dims)
            return out + b[None, :, None, None]

        def pool(x):
            return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

        def forward(params, x):
            if workload == "W1":
                w, b, dw, db = params
                h = jnp.tanh(conv(x, w, b, 2)).reshape(x.shape[0], -1)
                return h @ dw.T + db
            w1, b1, w2, b2, d1, c1, d2, c2 = params
            h = pool(jax.nn.relu(conv(x, w1, b1, 1)))
            h = pool(jax.nn.relu(conv(h, w2, b2, 1))).reshape(x.shape[0], -1)
            return jax.nn.relu(h @ d1.T + c1) @ d2.T + c2

        def loss_fn(params, x, y):
            logp = jax.nn.log_softmax(forward(params, x), axis=1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        def step(params, velocity, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            velocity = [MOMENTUM * v - LR * g for v, g in zip(velocity, grads)]
            return loss, [p + v for p, v in zip(params, velocity)], velocity

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.forward = jax.jit(forward)

    def run(self, steps: int) -> float:
        if self.mode == "train":
            loss = None
            for _ in range(steps):
                loss, self.params, self.velocity = self.step(
                    self.params, self.velocity, self.x, self.y
                )
            return float(loss)
        out = None
        for _ in range(steps):
            out = self.forward(self.params, self.x)
        return float(out[0, 0])


def make_runner(contender: str, workload: str, mode: str, batch: int, seed: int = 0) -> Any:
    """A runner for one contender, workload, mode and batch size."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload: expected one of {sorted(WORKLOADS)}, got {workload!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if contender == "torch":
        return TorchRunner(workload, mode, batch, seed)
    if contender == "jax":
        return JaxRunner(workload, mode, batch, seed)
    if contender in XPCONV_BACKENDS:
        backend = XPCONV_BACKENDS[contender]
        return XpconvRunner(workload, backend, mode, batch, seed, contender not in EAGER)
    raise ValueError(f"contender: expected one of {CONTENDERS}, got {contender!r}")
