"""The argument parser of the ``xpconv`` command: one builder per command."""

from __future__ import annotations

import argparse
import math
from typing import Any

from xpconv.cli.common import (
    AUGMENTS,
    DATASETS,
    EVAL_BATCH,
    MODELS,
    OPTIMIZER_NAMES,
    PROG,
    SCHEDULE_NAMES,
    TRAIN_DEFAULTS,
)
from xpconv.models.zoo import RECIPES
from xpconv.nn.sequential import MAX_SEED

__all__ = ["build_parser"]


def _by_model(key: str) -> str:
    """A recipe setting in the help text: ``60 for lecture, 128 otherwise``."""
    lecture, other = RECIPES["lecture"][key], RECIPES["lenet"][key]
    return f"{lecture:g} for lecture, {other:g} otherwise"


# --------------------------------------------------------------------------- options


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    value = _non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default=None,
        help="numpy, torch, cupy, jax or array_api_strict (default: $XPCONV_BACKEND, else numpy)",
    )
    p.add_argument(
        "--device", default=None, help="device on the backend, e.g. cuda, cuda:1, device1"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="directory with the four IDX files (default: $XPCONV_DATA, then the download "
        "cache; offline, the scikit-learn digits are used instead)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xpconv`` command; ``args.command`` names the command
    and ``args.command_parser`` is its subparser (for usage errors found later)."""
    from xpconv._version import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convolutional networks written once against the Python Array API: "
        "train and evaluate on NumPy, PyTorch, CuPy or array-api-strict.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_train, _add_evaluate, _add_export):
        command = add(sub)
        command.set_defaults(command_parser=command)
    return parser


def _add_train(sub: Any) -> argparse.ArgumentParser:
    train = sub.add_parser(
        "train",
        help="train a model and write metrics, checkpoints and pictures",
        description="Train a model (the lecture's one-conv network by default) with SGD, "
        "momentum 0.9 and an exponentially decaying learning rate, evaluating on the "
        "test set after every epoch. Each model has its own recipe (optimizer, learning "
        "rate, schedule, batch size), printed at the start; the options below change it.",
    )
    _train_model_options(train)
    _train_recipe_options(train)
    _train_run_options(train)
    _train_distributed_options(train)
    _train_batch_options(train)
    _common_options(train)
    return train


def _train_model_options(train: argparse.ArgumentParser) -> None:
    """What is trained, on what, for how long."""
    train.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help=f"architecture (default: {TRAIN_DEFAULTS['model']}): lecture (one conv), lenet "
        "(two conv blocks with batch norm), resnet (three stages of residual blocks)",
    )
    train.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help=f"dataset (default: {TRAIN_DEFAULTS['dataset']}; with --resume, the checkpoint's)",
    )
    train.add_argument(
        "--epochs",
        type=_positive_int,
        default=TRAIN_DEFAULTS["epochs"],
        help=f"total epochs of the run (default: {TRAIN_DEFAULTS['epochs']})",
    )
    train.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=f"examples per step (default: the model's recipe: {_by_model('batch_size')}; "
        "with --resume, the checkpoint's)",
    )


def _train_recipe_options(train: argparse.ArgumentParser) -> None:
    """The options that change the model's recipe."""
    train.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"initial (peak) learning rate (default: the model's recipe: {_by_model('lr')})",
    )
    train.add_argument(
        "--final-lr",
        type=_positive_float,
        default=None,
        help="learning rate at the last step of a linear, exponential or cosine schedule "
        "(default: lr / 2 for the lecture's exponential decay, 0 for cosine)",
    )
    train.add_argument(
        "--optimizer",
        choices=OPTIMIZER_NAMES,
        default=None,
        help="sgd (momentum 0.9), adam, or adamw (decoupled weight decay, biases and "
        "normalization parameters not decayed) (default: the model's recipe)",
    )
    train.add_argument(
        "--schedule",
        choices=SCHEDULE_NAMES,
        default=None,
        help="learning-rate schedule after the warm-up: constant, linear, exponential, "
        "cosine, or step (x0.1 after each third) (default: the model's recipe)",
    )
    train.add_argument(
        "--warmup",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help="fraction of the steps spent warming up linearly from lr / 10 (default: the "
        f"model's recipe: {_by_model('warmup')})",
    )
    train.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=None,
        help="weight decay (decoupled for adamw, L2 otherwise) (default: the model's recipe)",
    )
    train.add_argument(
        "--augment",
        nargs="?",
        const="auto",
        default=None,
        choices=AUGMENTS,
        help="augment the training batches: auto (random crops with 2 pixels of padding, "
        "plus horizontal flips except for digits), crop, flip, crop+flip or none "
        "(default: none; --augment alone means auto)",
    )


def _train_run_options(train: argparse.ArgumentParser) -> None:
    """Seed, dtype, data limit, output and resumption."""
    train.add_argument(
        "--seed",
        type=_seed,
        default=None,
        help=f"weights and shuffling (default: {TRAIN_DEFAULTS['seed']})",
    )
    train.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help=f"default: {TRAIN_DEFAULTS['dtype']}",
    )
    train.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="train on the first N training examples only (with --resume: the checkpoint's)",
    )
    train.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory (default: runs/<model>-<dataset>-<timestamp>)",
    )
    train.add_argument(
        "--resume",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a training.npz until --epochs epochs are done in total",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in the --out directory (default: refuse)",
    )
    train.add_argument("--no-plots", action="store_true", help="do not draw the pictures")


def _train_distributed_options(train: argparse.ArgumentParser) -> None:
    train.add_argument(
        "--distributed",
        choices=("mpi", "nccl"),
        default=None,
        help="data-parallel training over the ranks of mpiexec (mpi: mpi4py, any backend; "
        "nccl: GPUs, backend cupy or torch); --batch-size is then the global batch",
    )
    train.add_argument(
        "--distributed-timeout",
        type=_positive_float,
        default=TRAIN_DEFAULTS["distributed_timeout"],
        metavar="SECONDS",
        help="with --distributed: how long a rank waits for the others in a collective "
        f"before stopping every rank (default: {TRAIN_DEFAULTS['distributed_timeout']:g})",
    )


def _train_batch_options(train: argparse.ArgumentParser) -> None:
    """``--drop-last`` and ``--batch-norm-stats``: both part of the run record."""
    train.add_argument(
        "--drop-last",
        action="store_const",
        const=True,
        default=None,
        help="skip the last batch of each epoch when it is smaller than --batch-size",
    )
    train.add_argument(
        "--batch-norm-stats",
        choices=("global", "per-rank"),
        default=None,
        help="with --distributed: batch norm normalises with the statistics of the global "
        "batch, as one process does (global, the default), or of each rank's share",
    )


def _add_evaluate(sub: Any) -> argparse.ArgumentParser:
    evaluate = sub.add_parser(
        "evaluate",
        help="test loss and accuracy of a checkpoint",
        description="Load a model checkpoint (model.npz or training.npz) on any backend and "
        "evaluate it on the test set. Prints a summary line and a JSON line.",
    )
    evaluate.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="model.npz, training.npz or model.safetensors"
    )
    evaluate.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="dataset (default: the one the checkpoint was trained on, else mnist)",
    )
    evaluate.add_argument(
        "--batch-size",
        type=_positive_int,
        default=EVAL_BATCH,
        help=f"examples per forward pass (default: {EVAL_BATCH})",
    )
    evaluate.add_argument(
        "--json", default=None, metavar="PATH", help="also write the results to this file"
    )
    _common_options(evaluate)
    return evaluate


def _add_export(sub: Any) -> argparse.ArgumentParser:
    export = sub.add_parser(
        "export",
        help="write a checkpoint as ONNX, PyTorch, safetensors or npz",
        description="Write a model checkpoint (.npz or .safetensors) in the format the "
        "output's suffix names: .onnx (input 'input' (N, *input_shape), output 'output' "
        "(N, *output_shape), dynamic batch N), .pt (the state_dict of xpconv.to_torch(model), "
        "for torch.load(path, weights_only=True)), .safetensors or .npz. The output is never "
        "the checkpoint itself.",
    )
    export.add_argument("checkpoint", metavar="CHECKPOINT", help="model.npz, training.npz, ...")
    export.add_argument(
        "output",
        metavar="OUT",
        help="the file to write: OUT.onnx, OUT.pt, OUT.safetensors or OUT.npz",
    )
    export.add_argument(
        "--opset", type=_positive_int, default=None, help="ONNX opset (.onnx only; default: 17)"
    )
    export.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="tensor type of the ONNX graph (.onnx only; default: float32)",
    )
    export.add_argument(
        "--check",
        action="store_true",
        help="run the .onnx file in onnxruntime on a random batch and compare with xpconv",
    )
    export.add_argument("--traceback", action="store_true", help="show the full traceback")
    return export
