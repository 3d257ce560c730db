"""The ``xpconv`` command line: train a network, evaluate a checkpoint.

    xpconv train                                   # lecture model, MNIST, one epoch
    xpconv train --model lenet --epochs 5 --backend torch --device cuda
    xpconv train --resume runs/lecture-mnist-20260101-120000/training.npz --epochs 3
    xpconv evaluate runs/lecture-mnist-20260101-120000/model.npz --backend array_api_strict

``train`` writes into its output directory: ``metrics.json``, ``model.npz`` (the
trained model), ``training.npz`` (everything needed to resume, rewritten after every
epoch) and, when matplotlib is installed, ``curves.png``, ``filters.png``,
``feature_maps.png`` and ``confusion.png``.

Exit status: 0 on success, 2 for a bad option (argparse), 1 for an error of the
library (missing data, a broken checkpoint, a backend that cannot be used), 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

PROG = "xpconv"
MODELS = ("lecture", "lenet")
DATASETS = ("mnist", "fashion-mnist", "digits")
#: Batch size of test-set evaluation, in ``train`` and ``evaluate`` alike (so the two
#: compute the same numbers).
EVAL_BATCH = 512


class CliError(Exception):
    """An error reported as ``xpconv: error: <message>`` with exit status 1."""


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
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
    """The argument parser of the ``xpconv`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convolutional networks written once against the Python Array API: "
        "train and evaluate on NumPy, PyTorch, CuPy or array-api-strict.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser(
        "train",
        help="train a model and write metrics, checkpoints and pictures",
        description="Train a model (the lecture's one-conv network by default) with SGD, "
        "momentum 0.9 and an exponentially decaying learning rate, evaluating on the "
        "test set after every epoch.",
    )
    train.add_argument(
        "--model", choices=MODELS, default=None, help="architecture (default: lecture)"
    )
    train.add_argument(
        "--dataset", choices=DATASETS, default="mnist", help="dataset (default: mnist)"
    )
    train.add_argument(
        "--epochs", type=_positive_int, default=1, help="total epochs of the run (default: 1)"
    )
    train.add_argument(
        "--batch-size", type=_positive_int, default=60, help="examples per step (default: 60)"
    )
    train.add_argument(
        "--lr", type=_positive_float, default=None, help="initial learning rate (default: 0.1)"
    )
    train.add_argument(
        "--final-lr",
        type=_positive_float,
        default=None,
        help="learning rate at the last step, reached by exponential decay (default: lr / 2)",
    )
    train.add_argument(
        "--seed", type=_non_negative_int, default=None, help="weights and shuffling (default: 0)"
    )
    train.add_argument(
        "--dtype", choices=("float32", "float64"), default=None, help="default: float32"
    )
    train.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="train on the first N training examples only",
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
    train.add_argument("--no-plots", action="store_true", help="do not draw the pictures")
    _common_options(train)
    train.set_defaults(handler=_train, command_parser=train)

    evaluate = sub.add_parser(
        "evaluate",
        help="test loss and accuracy of a checkpoint",
        description="Load a model checkpoint (model.npz or training.npz) on any backend and "
        "evaluate it on the test set. Prints a summary line and a JSON line.",
    )
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT", help="model.npz or training.npz")
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
    evaluate.set_defaults(handler=_evaluate, command_parser=evaluate)
    return parser


# --------------------------------------------------------------------------- internals


def _err(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _backend(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The selected backend; an unknown name or device is a usage error (exit 2)."""
    from .backend import get_backend

    try:
        return get_backend(args.backend, args.device)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if message.startswith("backend: "):
            parser.error(f"argument --backend: {message[len('backend: ') :]}")
        parser.error(f"argument --device: {message}")


def _load_data(name: str, data_dir: str | None, progress: bool) -> Any:
    """Load a dataset, printing any warning (e.g. the offline fallback) on stderr."""
    from .datasets import load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_dataset(name, data_dir, progress=progress)
    for w in caught:
        text = str(w.message)
        if text.startswith(f"{PROG}: "):
            text = text[len(PROG) + 2 :]
        print(f"{PROG}: warning: {text}", file=sys.stderr)
    return dataset


def _describe_data(dataset: Any) -> str:
    shape = "x".join(str(s) for s in dataset.image_shape[1:])
    return (
        f"data: {dataset.name} ({len(dataset.y_train)} train / {len(dataset.y_test)} test "
        f"images, {shape}, {dataset.num_classes} classes)\n"
        f"      from {dataset.source}"
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _default_out(model: str, dataset: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"{model}-{dataset}-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path("runs") / f"{model}-{dataset}-{stamp}-{n}"
    return out


def _zoo_name(model: Any) -> str:
    """The zoo name whose architecture ``model`` has, or ``"custom"``."""
    from .zoo import build_model

    layers = model.get_config()["layers"]
    for name in MODELS:
        reference = build_model(name, backend="numpy", input_shape=model.input_shape)
        if reference.get_config()["layers"] == layers:
            return name
    return "custom"


def _step_curve(history: Any) -> tuple[list[float], list[float]]:
    """Every step's loss and its position in epochs (1.0 = end of the first epoch)."""
    positions: list[float] = []
    losses: list[float] = []
    for epoch, values in zip(history.epoch, history.step_losses):
        positions += [epoch - 1 + (i + 1) / len(values) for i in range(len(values))]
        losses += values
    return positions, losses


# --------------------------------------------------------------------------- train


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import __version__
    from .optimizers import SGD
    from .saving import load_training, save_model, save_training
    from .trainer import Trainer
    from .zoo import build_model

    progress = not args.no_progress
    backend = _backend(parser, args)
    ignored = [
        f"--{name.replace('_', '-')}"
        for name in ("model", "lr", "final_lr", "seed", "dtype")
        if getattr(args, name) is not None
    ]
    lr = 0.1 if args.lr is None else args.lr
    final_lr = lr / 2 if args.final_lr is None else args.final_lr
    seed = 0 if args.seed is None else args.seed

    resumed_from = None
    if args.resume is not None:
        resumed_from = Path(args.resume)
        trainer = load_training(resumed_from, backend=backend, progress=progress)
        model = trainer.model
        model_name = _zoo_name(model)
        if ignored:
            print(
                f"note: {', '.join(ignored)} ignored with --resume (the checkpoint holds the "
                "model, optimizer and seed)"
            )
        print(
            f"resuming {resumed_from} after epoch {trainer.epochs_done}, until epoch {args.epochs}"
        )
        if trainer.epochs_done >= args.epochs:
            print(
                f"note: the checkpoint already has {trainer.epochs_done} epoch(s); "
                f"nothing to train (raise --epochs to continue)"
            )
        optimizer = trainer.optimizer
    else:
        model_name = args.model or "lecture"
        model = build_model(
            model_name,
            backend=backend,
            seed=seed,
            dtype=args.dtype or "float32",
        )
        optimizer = SGD(lr, momentum=0.9, final_lr=final_lr, decay="exponential")
        trainer = Trainer(model, optimizer, seed=seed, progress=progress)

    dataset = _load_data(args.dataset, args.data_dir, progress)
    print(_describe_data(dataset))
    x_train, y_train = dataset.x_train, dataset.y_train
    if args.limit is not None and args.limit < len(y_train):
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
        print(f"      training on the first {args.limit} of {len(dataset.y_train)} examples")

    out = Path(args.out) if args.out is not None else _default_out(model_name, dataset.name)
    out.mkdir(parents=True, exist_ok=True)
    model.summary()
    opt = optimizer.get_config()
    print(
        f"optimizer: {opt['type']} lr {opt['lr']:g} -> {opt.get('final_lr') or opt['lr']:g} "
        f"({opt.get('decay', 'constant')}), momentum {opt.get('momentum', 0):g}, "
        f"batch size {args.batch_size}, {args.epochs} epoch(s)"
    )
    print(f"output: {out}")

    training_path = out / "training.npz"

    def on_epoch_end(tr: Any) -> None:
        h = tr.history
        save_training(tr, training_path)
        val = ""
        if h.val_loss[-1] is not None:
            val = f", test loss {h.val_loss[-1]:.4f} acc {h.val_accuracy[-1]:.2%}"
        print(
            f"epoch {h.epoch[-1]}/{args.epochs}: loss {h.loss[-1]:.4f} acc "
            f"{h.accuracy[-1]:.2%}{val} ({h.seconds[-1]:.1f} s, "
            f"{h.images_per_second[-1]:.0f} img/s)",
            flush=True,
        )

    sys.stdout.flush()
    epochs_before = trainer.epochs_done
    started = time.perf_counter()
    try:
        history = trainer.fit(
            x_train,
            y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_data=(dataset.x_test, dataset.y_test),
            on_epoch_end=on_epoch_end,
        )
    except KeyboardInterrupt:
        done = trainer.epochs_done
        where = f"; epoch {done} is saved in {training_path}" if done else ""
        print(
            f"\n{PROG}: interrupted{where}"
            + (f" (continue with: {PROG} train --resume {training_path})" if done else ""),
            file=sys.stderr,
        )
        return 130
    wall = time.perf_counter() - started
    trained = trainer.epochs_done - epochs_before
    if trainer.epochs_done and not training_path.exists():
        save_training(trainer, training_path)

    if trained > 0 and history.val_loss[-1] is not None:
        # The trainer has just evaluated these very weights on the test set (with
        # Sequential.evaluate's default batch size, EVAL_BATCH).
        test = {"loss": history.val_loss[-1], "accuracy": history.val_accuracy[-1]}
    else:
        test = model.evaluate(dataset.x_test, dataset.y_test, batch_size=EVAL_BATCH)
    seconds = float(sum(history.seconds))
    images = float(sum(r * s for r, s in zip(history.images_per_second, history.seconds)))
    metrics: dict[str, Any] = {
        "test_accuracy": test["accuracy"],
        "test_loss": _finite(test["loss"]),
        "train_loss": [_finite(v) for v in history.loss],
        "train_accuracy": [_finite(v) for v in history.accuracy],
        "val_loss": [_finite(v) for v in history.val_loss],
        "val_accuracy": [_finite(v) for v in history.val_accuracy],
        "lr": list(history.lr),
        "epoch_seconds": list(history.seconds),
        "backend": backend.name,
        "device": str(backend.device),
        "dtype": model.dtype_name,
        "model": model_name,
        "num_parameters": model.num_parameters(),
        "dataset": args.dataset,
        "dataset_loaded": dataset.name,
        "data_source": dataset.source,
        "train_examples": len(y_train),
        "test_examples": len(dataset.y_test),
        "epochs": len(history.epoch),
        "batch_size": args.batch_size,
        "optimizer": optimizer.get_config(),
        "seconds": seconds,
        "wall_seconds": wall,
        "images_per_second": _finite(images / seconds) if seconds > 0 else None,
        "seed": trainer.seed,
        "limit": args.limit,
        "resumed_from": None if resumed_from is None else str(resumed_from),
        "xpconv_version": __version__,
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        "train_loss_steps": dict(zip(("epoch", "loss"), _step_curve(history))),
    }
    save_model(
        model,
        out / "model.npz",
        extra={
            "model_name": model_name,
            "dataset": args.dataset,
            "test_accuracy": test["accuracy"],
        },
    )
    _write_json(out / "metrics.json", metrics)

    written = ["metrics.json", "model.npz", "training.npz"]
    if not args.no_plots:
        written += _pictures(model, dataset, history, out, model_name, len(y_train))

    print()
    print(history.table())
    print(
        f"test accuracy: {test['accuracy']:.2%} (loss {test['loss']:.4f}) on "
        f"{len(dataset.y_test)} {dataset.name} test images; training took {seconds:.1f} s"
    )
    print(f"wrote {', '.join(written)} into {out}")
    return 0


def _pictures(
    model: Any,
    dataset: Any,
    history: Any,
    out: Path,
    model_name: str,
    n_train: int,
) -> list[str]:
    try:
        from . import plots

        title = (
            f"{model_name} model on {plots._title(dataset.name)} ({n_train} training "
            f"images): {len(history.epoch)} epoch(s), backend {model.backend.label}"
        )
        paths = plots.save_all(
            model, dataset, history, out, steps=_step_curve(history), title=title
        )
    except ImportError as exc:
        print(f"pictures skipped: {exc}")
        return []
    return [p.name for p in paths]


# --------------------------------------------------------------------------- evaluate


def _evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .checkpoint import load_checkpoint
    from .saving import load_model

    backend = _backend(parser, args)
    path = Path(args.checkpoint)
    _, meta = load_checkpoint(path)
    model = load_model(path, backend=backend)
    name = args.dataset or meta.get("dataset") or "mnist"
    dataset = _load_data(name, args.data_dir, not args.no_progress)
    print(_describe_data(dataset), file=sys.stderr)
    test = model.evaluate(dataset.x_test, dataset.y_test, batch_size=args.batch_size)
    result = {
        "checkpoint": str(path),
        "test_accuracy": test["accuracy"],
        "test_loss": _finite(test["loss"]),
        "test_examples": len(dataset.y_test),
        "backend": backend.name,
        "device": str(backend.device),
        "dtype": model.dtype_name,
        "dataset": name,
        "dataset_loaded": dataset.name,
        "data_source": dataset.source,
    }
    print(
        f"test accuracy: {test['accuracy']:.2%}  loss: {test['loss']:.4f}  "
        f"({len(dataset.y_test)} {dataset.name} test images, backend {backend.label})"
    )
    print(json.dumps(result, allow_nan=False))
    if args.json is not None:
        _write_json(Path(args.json), result)
    return 0


# --------------------------------------------------------------------------- main


def _library_errors() -> tuple[type[BaseException], ...]:
    from .backend import BackendError
    from .checkpoint import CheckpointError
    from .datasets import DatasetError
    from .trainer import TrainingError

    return (
        CliError,
        DatasetError,
        CheckpointError,
        BackendError,
        TrainingError,
        ValueError,
        OSError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xpconv`` command with ``argv`` (default: ``sys.argv[1:]``); returns the
    exit status (0 success, 1 error, 2 bad option, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, or a bad option
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace, argparse.ArgumentParser], int] = args.handler
    errors = _library_errors()
    try:
        return handler(args, args.command_parser)
    except SystemExit as exc:  # parser.error() on a value checked after parsing
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except errors as exc:
        if args.traceback:
            raise
        _err(str(exc) or type(exc).__name__)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
