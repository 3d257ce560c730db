"""What every command shares: the program's name and constants, its error type, the
backend and data loading with the library's words given as the command's flags."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROG = "xpconv"
MODELS = ("lecture", "lenet", "resnet")
DATASETS = ("mnist", "fashion-mnist", "digits")
OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
SCHEDULE_NAMES = ("constant", "linear", "exponential", "cosine", "step")
AUGMENTS = ("auto", "crop", "flip", "crop+flip", "none")
#: Batch size of test-set evaluation, in ``train`` and ``evaluate`` alike (so the two
#: compute the same numbers).
EVAL_BATCH = 512
#: Defaults of ``train``'s options that do not come from the model's recipe: the code
#: reads them here and the help text is written from them.
TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "lecture",
    "dataset": "mnist",
    "epochs": 1,
    "seed": 0,
    "dtype": "float32",
    "distributed_timeout": 300.0,
}


class CliError(Exception):
    """An error reported as ``xpconv: error: <message>`` with exit status 1."""


def err(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def backend_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The selected backend; an unknown name or device is a usage error (exit 2)."""
    from xpconv.backends.registry import get_backend

    try:
        return get_backend(args.backend, args.device)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if message.startswith("backend: "):
            parser.error(f"argument --backend: {message[len('backend: ') :]}")
        parser.error(f"argument --device: {message}")


#: How the library's phrases naming an argument read on the command line (whole
#: phrases, so that a path holding the word is left alone).
LIBRARY_TO_FLAGS = (
    ("data_dir=DIR", "--data-dir DIR"),
    ("(from data_dir)", "(from --data-dir)"),
    ("(from data_dir;", "(from --data-dir;"),
    ("leave data_dir and XPCONV_DATA unset", "leave --data-dir and XPCONV_DATA unset"),
    ("lower batch_size to", "lower --batch-size to"),
)


def as_flags(text: str) -> str:
    """A library message with its argument names replaced by the command's flags."""
    for argument, flag in LIBRARY_TO_FLAGS:
        text = text.replace(argument, flag)
    return text


def load_data(name: str, data_dir: str | None, progress: bool, *, fallback: bool = True) -> Any:
    """Load a dataset, falling back (when ``fallback``) to the digits set when MNIST or
    Fashion-MNIST cannot be had (and no directory was named), printing every warning on
    stderr; the library's messages are given in the command's flags."""
    from xpconv.data.datasets import DatasetError, load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = load_dataset(name, data_dir, progress=progress, allow_fallback=fallback)
        except DatasetError as exc:
            raise DatasetError(as_flags(str(exc))) from exc
    for w in caught:
        text = str(w.message)
        if text.startswith(f"{PROG}: "):
            text = text[len(PROG) + 2 :]
        print(f"{PROG}: warning: {as_flags(text)}", file=sys.stderr)
    return dataset


def describe_data(dataset: Any) -> str:
    shape = "x".join(str(s) for s in dataset.image_shape[1:])
    return (
        f"data: {dataset.name} ({len(dataset.y_train)} train / {len(dataset.y_test)} test "
        f"images, {shape}, {dataset.num_classes} classes)\n"
        f"      from {dataset.source}"
    )


def finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def load_or_fail(load: Callable[[], Any], path: Path) -> Any:
    """Run a checkpoint load; an unexpected error of a crafted file is one clear line."""
    from xpconv.io.checkpoint import CheckpointError

    try:
        return load()
    except CheckpointError:
        raise
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, MemoryError) as exc:
        raise CliError(
            f"{path}: cannot load the checkpoint ({type(exc).__name__}: {exc}); rerun with "
            "--traceback for details"
        ) from exc
