"""Ready-made networks and their training recipes: the lecture's one-conv model, a small
LeNet with batch normalization, and a small ResNet for 28x28 images."""

from __future__ import annotations

import math
from typing import Any

from xpconv.nn.layers import (
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    ReLU,
    Residual,
    Standardize,
)
from xpconv.nn.sequential import Sequential
from xpconv.optim.optimizers import (
    SGD,
    Adam,
    AdamW,
    Constant,
    CosineDecay,
    ExponentialDecay,
    LinearDecay,
    Optimizer,
    Schedule,
    StepDecay,
    Warmup,
)

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "MODELS",
    "OPTIMIZERS",
    "RECIPES",
    "SCHEDULES",
    "build_model",
    "build_optimizer",
    "lecture",
    "lenet",
    "resnet",
]


#: MNIST's pixel statistics over its 60,000 training images, pixels scaled to [0, 1].
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def lecture(
    *, standardize: tuple[float, float] | None = (MNIST_MEAN, MNIST_STD), **model_args: Any
) -> Sequential:
    """The lecture's network: Standardize -> Conv2D(16, 5x5, same, tanh, Glorot) ->
    flatten -> Dense(10).

    Input (N, 1, 28, 28), pixels in [0, 1] -> logits (N, 10); softmax cross-entropy loss.
    The first layer standardises the pixels as the lecture did, ``(x - mean) / std`` with
    ``standardize = (mean, std)`` (MNIST's by default), inside the model, so evaluation,
    prediction and every export see it; ``standardize=None`` leaves it out.
    """
    model_args.setdefault("input_shape", (1, 28, 28))
    layers: list[Layer] = [] if standardize is None else [Standardize(*standardize)]
    layers += [
        Conv2D(16, 5, padding="same", activation="tanh", init="glorot_normal"),
        Flatten(),
        Dense(10, init="glorot_normal"),
    ]
    return Sequential(layers, **model_args)


def lenet(*, batch_norm: bool = True, **model_args: Any) -> Sequential:
    """A small LeNet: two conv(3x3, same) + maxpool(2) blocks, Dense(128), Dense(10).
    Input (N, 1, 28, 28) -> logits (N, 10).

    With ``batch_norm`` (the default) each block is conv (no bias) + maxpool + BatchNorm2D
    + ReLU and the hidden dense layer is Dense(128, no bias) + BatchNorm1D + ReLU; the conv
    and the pool still run as one fused step. ``batch_norm=False`` gives the plain
    network (conv + ReLU + maxpool), the benchmarks' W2.
    """
    model_args.setdefault("input_shape", (1, 28, 28))
    if not batch_norm:
        layers: list[Layer] = [
            Conv2D(32, 3, padding="same", activation="relu", init="he_normal"),
            MaxPool2D(2),
            Conv2D(64, 3, padding="same", activation="relu", init="he_normal"),
            MaxPool2D(2),
            Flatten(),
            Dense(128, activation="relu", init="he_normal"),
            Dense(10),
        ]
        return Sequential(layers, **model_args)
    layers = [
        Conv2D(32, 3, padding="same", use_bias=False, init="he_normal"),
        MaxPool2D(2),
        BatchNorm2D(),
        ReLU(),
        Conv2D(64, 3, padding="same", use_bias=False, init="he_normal"),
        MaxPool2D(2),
        BatchNorm2D(),
        ReLU(),
        Flatten(),
        Dense(128, use_bias=False, init="he_normal"),
        BatchNorm1D(),
        ReLU(),
        Dense(10),
    ]
    return Sequential(layers, **model_args)


def _basic_block(channels: int, stride: int, in_channels: int) -> list[Layer]:
    """conv3x3(stride) BN ReLU conv3x3 BN, plus a 1x1 conv + BN shortcut when the shape
    changes; a ReLU after the sum."""
    branch: list[Layer] = [
        Conv2D(channels, 3, stride=stride, padding=1, use_bias=False, init="he_normal"),
        BatchNorm2D(),
        ReLU(),
        Conv2D(channels, 3, padding=1, use_bias=False, init="he_normal"),
        BatchNorm2D(),
    ]
    shortcut = None
    if stride != 1 or channels != in_channels:
        shortcut = [
            Conv2D(channels, 1, stride=stride, use_bias=False, init="he_normal"),
            BatchNorm2D(),
        ]
    return [Residual(branch, shortcut), ReLU()]


def resnet(
    *, blocks: int = 2, widths: tuple[int, ...] = (16, 32, 64), **model_args: Any
) -> Sequential:
    """A small ResNet for 28x28 images: a stem (conv 3x3 + BN + ReLU), three stages of
    ``blocks`` basic residual blocks with ``widths`` channels (the later stages halve the
    size: 28 -> 14 -> 7), global average pooling and Dense(10).

    Input (N, 1, 28, 28) -> logits (N, 10).
    """
    model_args.setdefault("input_shape", (1, 28, 28))
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks: expected a positive int, got {blocks!r}")
    layers: list[Layer] = [
        Conv2D(widths[0], 3, padding=1, use_bias=False, init="he_normal"),
        BatchNorm2D(),
        ReLU(),
    ]
    channels = widths[0]
    for stage, width in enumerate(widths):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            layers += _basic_block(width, stride, channels)
            channels = width
    layers += [GlobalAvgPool2D(), Dense(10)]
    return Sequential(layers, **model_args)


MODELS = {"lecture": lecture, "lenet": lenet, "resnet": resnet}

#: Per-model training recipes: what ``xpconv train --model NAME`` uses unless told
#: otherwise. ``warmup`` is the fraction of the run spent warming up linearly.
_MODERN_RECIPE: dict[str, Any] = dict(
    optimizer="adamw",
    lr=3e-3,
    schedule="cosine",
    final_lr=0.0,
    warmup=0.1,
    weight_decay=5e-4,
    momentum=0.9,
    batch_size=128,
)
RECIPES: dict[str, dict[str, Any]] = {
    # Standardised inputs (see lecture()) at lr 0.1 drive the logits into the hundreds:
    # 95% accuracy but a test loss near 3. A tenth of that rate keeps the loss low.
    "lecture": dict(
        optimizer="sgd",
        lr=0.01,
        schedule="exponential",
        final_lr=0.005,
        warmup=0.0,
        weight_decay=0.0,
        momentum=0.9,
        batch_size=60,
    ),
    "lenet": dict(_MODERN_RECIPE),
    "resnet": dict(_MODERN_RECIPE),
}

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "linear", "exponential", "cosine", "step")


def build_model(name: str, **model_args: Any) -> Sequential:
    """A model from ``MODELS`` by name; ``model_args`` go to :class:`Sequential`."""
    if name not in MODELS:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**model_args)


def build_optimizer(
    optimizer: str,
    lr: float,
    *,
    schedule: str = "constant",
    total_steps: int,
    final_lr: float | None = None,
    warmup: float = 0.0,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> Optimizer:
    """An optimizer by name with a schedule over a run of ``total_steps`` steps.

    Args:
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"`` (L2 weight decay) or
            ``"adamw"`` (decoupled weight decay; biases and normalization parameters
            are not decayed).
        lr: the peak learning rate.
        schedule: ``"constant"``; ``"linear"`` or ``"exponential"`` from ``lr`` to
            ``final_lr`` (default ``lr / 2``); ``"cosine"`` to ``final_lr`` (default 0);
            ``"step"``: times 0.1 after each third of the steps after warm-up.
        warmup: the fraction of the run, in [0, 1), spent rising linearly to ``lr``
            (from ``lr / 10``) before the schedule starts.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {list(OPTIMIZERS)}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {list(SCHEDULES)}, got {schedule!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0 <= warmup < 1:
        raise ValueError(f"warmup: expected a fraction in [0, 1), got {warmup!r}")
    total = max(int(total_steps), 1)
    if schedule in ("linear", "exponential") and not warmup:
        # the lecture's form: a number and a decay to final_lr (the configs stay as before)
        kinds = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
        args: dict[str, Any] = dict(
            final_lr=lr / 2 if final_lr is None else final_lr,
            decay=schedule,
            weight_decay=weight_decay,
        )
        if optimizer == "sgd":
            args["momentum"] = momentum
        if optimizer == "adamw":
            args["exclude"] = "bias_and_norm"
        return kinds[optimizer](lr, **args)
    main: Schedule
    if schedule == "constant":
        main = Constant(lr)
    elif schedule == "linear":
        main = LinearDecay(lr, lr / 2 if final_lr is None else final_lr)
    elif schedule == "exponential":
        main = ExponentialDecay(lr, lr / 2 if final_lr is None else final_lr)
    elif schedule == "cosine":
        main = CosineDecay(lr, 0.0 if final_lr is None else final_lr)
    else:
        rest = total - (max(1, round(warmup * total)) if warmup else 0)
        main = StepDecay(lr, max(1, math.ceil(rest / 3)), gamma=0.1)
    lr_schedule: Schedule = Warmup(main, steps=float(warmup)) if warmup else main
    if optimizer == "sgd":
        return SGD(lr_schedule, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adam":
        return Adam(lr_schedule, weight_decay=weight_decay)
    return AdamW(lr_schedule, weight_decay=weight_decay, exclude="bias_and_norm")
