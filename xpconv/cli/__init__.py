"""The ``xpconv`` command line: train a network, evaluate a checkpoint.

    xpconv train                                   # lecture model, MNIST, one epoch
    xpconv train --model lenet --epochs 5 --backend torch --device cuda
    xpconv train --model resnet --dataset fashion-mnist --epochs 5 --augment
    xpconv train --resume runs/lecture-mnist-20260101-120000/training.npz --epochs 3
    xpconv evaluate runs/lecture-mnist-20260101-120000/model.npz --backend array_api_strict
    xpconv export runs/lecture-mnist-20260101-120000/model.npz model.onnx --check

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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from xpconv.io.files import write_json
from xpconv.models.zoo import RECIPES

__all__ = ["build_parser", "main"]

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


def _by_model(key: str) -> str:
    """A recipe setting in the help text: ``60 for lecture, 128 otherwise``."""
    lecture, other = RECIPES["lecture"][key], RECIPES["lenet"][key]
    return f"{lecture:g} for lecture, {other:g} otherwise"


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
    """The argument parser of the ``xpconv`` command."""
    from xpconv._version import __version__

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
        "test set after every epoch. Each model has its own recipe (optimizer, learning "
        "rate, schedule, batch size), printed at the start; the options below change it.",
    )
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
    train.add_argument(
        "--seed",
        type=_non_negative_int,
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
    _batch_options(train)
    _common_options(train)
    train.set_defaults(handler=_train, command_parser=train)

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
    evaluate.set_defaults(handler=_evaluate, command_parser=evaluate)

    export = sub.add_parser(
        "export",
        help="write a checkpoint as an ONNX file",
        description="Write a model checkpoint (.npz or .safetensors) as ONNX: input 'input' "
        "(N, *input_shape), output 'output' (N, *output_shape), dynamic batch N.",
    )
    export.add_argument("checkpoint", metavar="CHECKPOINT", help="model.npz, training.npz, ...")
    export.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write")
    export.add_argument(
        "--opset", type=_positive_int, default=None, help="ONNX opset (default: 17)"
    )
    export.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="tensor type of the graph (default: float32)",
    )
    export.add_argument(
        "--check",
        action="store_true",
        help="run the file in onnxruntime on a random batch and compare with xpconv",
    )
    export.add_argument("--traceback", action="store_true", help="show the full traceback")
    export.set_defaults(handler=_export, command_parser=export)
    return parser


# --------------------------------------------------------------------------- internals


def _err(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _backend(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
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
)


def _as_flags(text: str) -> str:
    """A library message with its argument names replaced by the command's flags."""
    for argument, flag in LIBRARY_TO_FLAGS:
        text = text.replace(argument, flag)
    return text


def _load_data(name: str, data_dir: str | None, progress: bool) -> Any:
    """Load a dataset, falling back to the digits set when MNIST or Fashion-MNIST cannot
    be had (and no directory was named), printing every warning on stderr; the
    library's messages are given in the command's flags."""
    from xpconv.data.datasets import DatasetError, load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = load_dataset(name, data_dir, progress=progress, allow_fallback=True)
        except DatasetError as exc:
            raise DatasetError(_as_flags(str(exc))) from exc
    for w in caught:
        text = str(w.message)
        if text.startswith(f"{PROG}: "):
            text = text[len(PROG) + 2 :]
        print(f"{PROG}: warning: {_as_flags(text)}", file=sys.stderr)
    return dataset


def _describe_data(dataset: Any) -> str:
    shape = "x".join(str(s) for s in dataset.image_shape[1:])
    return (
        f"data: {dataset.name} ({len(dataset.y_train)} train / {len(dataset.y_test)} test "
        f"images, {shape}, {dataset.num_classes} classes)\n"
        f"      from {dataset.source}"
    )


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


def _step_curve(history: Any) -> tuple[list[float], list[float]]:
    """Every step's loss and its position in epochs (1.0 = end of the first epoch)."""
    positions: list[float] = []
    losses: list[float] = []
    for epoch, values in zip(history.epoch, history.step_losses):
        positions += [epoch - 1 + (i + 1) / len(values) for i in range(len(values))]
        losses += values
    return positions, losses


# --------------------------------------------------------------------------- runs

#: Files whose presence marks a directory as holding a run.
RUN_FILES = ("training.npz", "model.npz", "metrics.json")
#: Settings a resumed run must share with the run it continues (option -> record key).
RUN_SETTINGS = {
    "--dataset": "dataset",
    "--limit": "limit",
    "--batch-size": "batch_size",
    "--model": "model",
    "--drop-last": "drop_last",
    "--batch-norm-stats": "batch_norm_stats",
}


def _check_out(out: Path, args: argparse.Namespace) -> None:
    """Refuse to write a run into a directory that holds another one, unless
    ``--overwrite``; continuing the run of that very directory is allowed."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found or args.overwrite:
        return
    if args.resume is not None and Path(args.resume).resolve().parent == out.resolve():
        return
    raise CliError(
        f"--out {out}: the directory already holds a run ({', '.join(found)}); continue it "
        f"with --resume {out / 'training.npz'}, choose another --out, or pass --overwrite "
        "to replace it"
    )


def _batch_options(train: argparse.ArgumentParser) -> None:
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


def _run_record(args: argparse.Namespace, model_name: str, model: Any) -> dict[str, Any]:
    return {
        "dataset": args.dataset,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "model": model_name,
        "backend": model.backend.name,
        "device": str(model.backend.device),
        "dtype": model.dtype_name,
        "drop_last": bool(args.drop_last),
        "batch_norm_stats": args.batch_norm_stats or "global",
    }


def _resume_settings(args: argparse.Namespace, record: Any, model: Any) -> None:
    """Fill unset options from the checkpoint's record of its run; refuse options that
    contradict it (naming each), and say when the backend differs."""
    if not isinstance(record, dict):
        print("note: the checkpoint records no run settings; nothing to check them against")
        args.dataset = args.dataset or "mnist"
        return
    differ = []
    for option, key in RUN_SETTINGS.items():
        attr = option[2:].replace("-", "_")
        given, recorded = getattr(args, attr), record.get(key)
        if given is None:
            setattr(args, attr, recorded)
        elif given != recorded:
            differ.append(f"{option} {given} (the checkpoint's run: {recorded})")
    if differ:
        raise CliError(
            f"--resume {args.resume}: the run continued here differs from the checkpoint's: "
            f"{'; '.join(differ)}; resume with the same settings, or start a new run"
        )
    args.dataset = args.dataset or "mnist"
    here = {"backend": model.backend.name, "device": str(model.backend.device)}
    moved = [f"{k} {here[k]} (was {record.get(k)})" for k in here if record.get(k) != here[k]]
    if moved:
        print(
            f"note: resuming on {', '.join(moved)}: results are not bit-identical to an "
            "uninterrupted run"
        )


def _load_or_fail(load: Callable[[], Any], path: Path) -> Any:
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


# --------------------------------------------------------------------------- train


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.distributed is None:
        return _train_run(args, parser, None)
    import contextlib

    comm = _communicator(args)
    with contextlib.ExitStack() as stack:
        stack.enter_context(comm.abort_on_error())  # an error on one rank stops them all
        if not comm.is_root:  # rank 0 alone prints, writes metrics, checkpoints, pictures
            stack.enter_context(
                contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w")))
            )
        return _train_run(args, parser, comm)


def _communicator(args: argparse.Namespace) -> Any:
    """The MPI communicator of a ``--distributed`` run (the NCCL one is made once the
    backend is known); a clear error without mpi4py or without an MPI launcher."""
    from xpconv.parallel.distributed import MPICommunicator, launched_by_mpi

    comm = MPICommunicator(timeout=args.distributed_timeout)
    if comm.size == 1 and not launched_by_mpi():
        raise CliError(
            f"--distributed {args.distributed}: this process was not started by an MPI "
            f"launcher (world size 1); run it as e.g. mpiexec -n 2 {PROG} train "
            f"--distributed {args.distributed} ..."
        )
    backend = args.backend or os.environ.get("XPCONV_BACKEND") or ""
    if args.distributed == "nccl" and args.device is None and backend in ("torch", "cupy"):
        # One GPU per rank: the rank's index among the ranks of its machine.
        local = comm.comm.Split_type(comm.MPI.COMM_TYPE_SHARED).Get_rank()
        args.device = f"cuda:{local}" if backend == "torch" else str(local)
    return comm


@dataclass
class _Plan:
    """A training run as planned: options resolved, model, trainer and data ready."""

    args: argparse.Namespace
    comm: Any
    root: bool
    model_name: str
    trainer: Any
    dataset: Any
    x_train: Any
    y_train: Any
    out: Path
    resumed_from: Path | None
    run_record: dict[str, Any]

    @property
    def training_path(self) -> Path:
        return self.out / "training.npz"


def _train_run(args: argparse.Namespace, parser: argparse.ArgumentParser, comm: Any) -> int:
    """Plan the run, run it, report it."""
    plan = _plan_run(args, parser, comm)
    ran = _run_training(plan)
    if ran is None:
        return 130
    if not plan.root:
        return 0
    return _report_run(plan, *ran)


#: Options that a resumed run takes from its checkpoint, and the recipe's options.
RECIPE_OPTIONS = ("lr", "final_lr", "optimizer", "schedule", "warmup", "weight_decay")


def _plan_run(args: argparse.Namespace, parser: argparse.ArgumentParser, comm: Any) -> _Plan:
    """Step 1: resolve the options (defaults, the recipe, a checkpoint's settings), build
    or resume the model and trainer, load the data, choose the output directory."""
    root = comm is None or comm.is_root
    progress = not args.no_progress and root
    backend = _backend(parser, args)
    if args.out is not None:
        _check_out(Path(args.out), args)  # before any data is loaded
    comm = _ready_communicator(args, backend, comm)
    resumed_from = None if args.resume is None else Path(args.resume)
    if resumed_from is not None:
        trainer, model_name = _resume(args, backend, progress, comm)
        model, recipe = trainer.model, None
    else:
        args.dataset = args.dataset or TRAIN_DEFAULTS["dataset"]
        model_name, model, recipe = _new_model(args, backend)
    if comm is not None and not root:
        comm.barrier()  # rank 0 downloads or checks the files first
    dataset = _load_data(args.dataset, args.data_dir, progress)
    if comm is not None and root:
        comm.barrier()
    print(_describe_data(dataset))
    x_train, y_train = dataset.x_train, dataset.y_train
    if args.limit is not None and args.limit < len(y_train):
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
        print(f"      training on the first {args.limit} of {len(dataset.y_train)} examples")
    if recipe is not None:
        trainer = _new_trainer(args, model, recipe, dataset.name, len(y_train), progress, comm)
    out = Path(args.out) if args.out is not None else _default_out(model_name, dataset.name)
    _check_out(out, args)
    if root:
        out.mkdir(parents=True, exist_ok=True)
    _print_plan(trainer, args, out, comm)
    return _Plan(
        args=args,
        comm=comm,
        root=root,
        model_name=model_name,
        trainer=trainer,
        dataset=dataset,
        x_train=x_train,
        y_train=y_train,
        out=out,
        resumed_from=resumed_from,
        run_record=_run_record(args, model_name, model),
    )


def _ready_communicator(args: argparse.Namespace, backend: Any, comm: Any) -> Any:
    """The communicator of a distributed run on ``backend`` (NCCL wraps the MPI one),
    its ranks sharing the machine's cores; ``None`` for one process."""
    if args.distributed == "nccl":
        from xpconv.parallel.distributed import NCCLCommunicator

        comm = NCCLCommunicator(backend, comm, timeout=args.distributed_timeout)
    if comm is not None:
        from xpconv.parallel.distributed import share_cores

        threads = share_cores(comm, backend)
        if threads is not None:
            print(f"note: {threads} BLAS thread(s) per rank (the ranks share this machine)")
    return comm


def _resume(args: argparse.Namespace, backend: Any, progress: bool, comm: Any) -> tuple[Any, str]:
    """The trainer of ``--resume``, the options it fixes filled in from the checkpoint's
    record of its run, and the model's name as recorded there."""
    from xpconv.io.checkpoint import load_checkpoint
    from xpconv.train.resume import load_training

    ignored = [
        f"--{name.replace('_', '-')}"
        for name in (*RECIPE_OPTIONS, "augment", "seed", "dtype")
        if getattr(args, name) is not None
    ]
    path = Path(args.resume)
    _, meta = load_checkpoint(path)
    trainer = _load_or_fail(lambda: load_training(path, backend=backend, progress=progress), path)
    trainer.communicator = comm
    record = meta.get("run")
    _resume_settings(args, record, trainer.model)
    trainer.sync_batch_norm = (args.batch_norm_stats or "global") == "global"
    recorded = record.get("model") if isinstance(record, dict) else None
    model_name = recorded if isinstance(recorded, str) else "custom"  # files without a record
    if args.batch_size is None:
        args.batch_size = RECIPES.get(model_name, RECIPES["lecture"])["batch_size"]
    if ignored:
        print(
            f"note: {', '.join(ignored)} ignored with --resume (the checkpoint holds the "
            "model, optimizer and seed)"
        )
    print(f"resuming {path} after epoch {trainer.epochs_done}, until epoch {args.epochs}")
    if trainer.epochs_done >= args.epochs:
        print(
            f"note: the checkpoint already has {trainer.epochs_done} epoch(s); "
            f"nothing to train (raise --epochs to continue)"
        )
    return trainer, model_name


def _new_model(args: argparse.Namespace, backend: Any) -> tuple[str, Any, dict[str, Any]]:
    """A new run's model name, model and recipe (the model's, changed by the options),
    the recipe printed."""
    from xpconv.models.zoo import build_model

    model_name = args.model or TRAIN_DEFAULTS["model"]
    seed = TRAIN_DEFAULTS["seed"] if args.seed is None else args.seed
    model = build_model(
        model_name, backend=backend, seed=seed, dtype=args.dtype or TRAIN_DEFAULTS["dtype"]
    )
    recipe = dict(RECIPES[model_name])
    args.batch_size = args.batch_size or recipe["batch_size"]
    chosen = {k: getattr(args, k) for k in RECIPE_OPTIONS if getattr(args, k) is not None}
    if "lr" in chosen and "final_lr" not in chosen and recipe["schedule"] != "cosine":
        recipe["final_lr"] = None  # lr / 2, as the lecture's decay
    if "schedule" in chosen and "final_lr" not in chosen:
        recipe["final_lr"] = None
    recipe.update(chosen)
    print(
        f"recipe for {model_name}: {recipe['optimizer']}, lr {recipe['lr']:g}, "
        f"{recipe['schedule']} schedule"
        + (f" after a {recipe['warmup']:.0%} warm-up" if recipe["warmup"] else "")
        + f", weight decay {recipe['weight_decay']:g}, batch size {args.batch_size}"
        + ("" if args.augment is None else f", augment {args.augment}")
        + " (change with --optimizer, --lr, --final-lr, --schedule, --warmup, "
        "--weight-decay, --batch-size, --augment)"
    )
    return model_name, model, recipe


def _new_trainer(
    args: argparse.Namespace,
    model: Any,
    recipe: dict[str, Any],
    dataset_name: str,
    n_train: int,
    progress: bool,
    comm: Any,
) -> Any:
    """The trainer of a new run: the recipe's optimizer over all its steps."""
    from xpconv.models.zoo import build_optimizer
    from xpconv.train.trainer import Trainer

    optimizer = build_optimizer(
        recipe["optimizer"],
        recipe["lr"],
        schedule=recipe["schedule"],
        total_steps=args.epochs * math.ceil(n_train / args.batch_size),
        final_lr=recipe["final_lr"],
        warmup=recipe["warmup"],
        weight_decay=recipe["weight_decay"],
        momentum=recipe["momentum"],
    )
    seed = TRAIN_DEFAULTS["seed"] if args.seed is None else args.seed
    augment = _augment(args.augment, dataset_name)
    return Trainer(
        model,
        optimizer,
        seed=seed,
        progress=progress,
        augment=augment,
        communicator=comm,
        sync_batch_norm=(args.batch_norm_stats or "global") == "global",
    )


def _print_plan(trainer: Any, args: argparse.Namespace, out: Path, comm: Any) -> None:
    """The model's summary, the optimizer, augmentation, output and ranks of the run."""
    trainer.model.summary()
    opt = trainer.optimizer.get_config()
    if isinstance(opt["lr"], (int, float)):
        print(
            f"optimizer: {opt['type']} lr {opt['lr']:g} -> {opt.get('final_lr') or opt['lr']:g} "
            f"({opt.get('decay', 'constant')}), momentum {opt.get('momentum', 0):g}, "
            f"batch size {args.batch_size}, {args.epochs} epoch(s)"
        )
    else:
        print(
            f"optimizer: {opt['type']} lr {_describe_schedule(opt['lr'])}, weight decay "
            f"{opt.get('weight_decay', 0):g}, batch size {args.batch_size}, {args.epochs} epoch(s)"
        )
    if trainer.augment is not None:
        print(f"augmentation: {trainer.augment.describe()}")
    print(f"output: {out}")
    if comm is not None:
        print(f"distributed: {comm.size} ranks over {comm.engine}, {args.batch_size} per step")


def _run_training(plan: _Plan) -> tuple[Any, float, int] | None:
    """Step 2: train, a checkpoint and a line printed after every epoch. Returns the
    history, the wall time and the epochs trained, or ``None`` when interrupted (after
    saying where the last epoch is saved)."""
    from xpconv.train.callbacks import Checkpoint, EpochLogger

    args, trainer = plan.args, plan.trainer
    trainer.callbacks += [
        Checkpoint(plan.training_path, extra={"run": plan.run_record}),
        EpochLogger(),
    ]
    sys.stdout.flush()
    epochs_before = trainer.epochs_done
    started = time.perf_counter()
    try:
        history = trainer.fit(
            plan.x_train,
            plan.y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_data=(plan.dataset.x_test, plan.dataset.y_test),
            drop_last=bool(args.drop_last),
        )
    except KeyboardInterrupt:
        if plan.comm is not None and plan.comm.size > 1:
            raise  # abort_on_error stops every rank at once, with one message
        done = trainer.epochs_done
        saved = plan.training_path if plan.training_path.exists() else plan.resumed_from
        where, hint = "", ""
        if done and saved is not None:
            where = f"; epoch {done} is saved in {saved}"
            hint = f" (continue with: {PROG} train --resume {saved} --epochs {args.epochs})"
        print(f"\n{PROG}: interrupted{where}{hint}", file=sys.stderr)
        return None
    return history, time.perf_counter() - started, trainer.epochs_done - epochs_before


def _report_run(plan: _Plan, history: Any, wall: float, trained: int) -> int:
    """Step 3 (root rank): the test result, metrics.json, model.npz, the pictures and
    the closing table."""
    from xpconv.io.saving import save_model
    from xpconv.train.checkpoints import save_training

    trainer, dataset, out = plan.trainer, plan.dataset, plan.out
    model = trainer.model
    if trainer.epochs_done and not plan.training_path.exists():
        save_training(trainer, plan.training_path, extra={"run": plan.run_record})
    if trained > 0 and history.val_loss[-1] is not None:
        # The trainer has just evaluated these very weights on the test set (with
        # Sequential.evaluate's default batch size, EVAL_BATCH).
        test = {"loss": history.val_loss[-1], "accuracy": history.val_accuracy[-1]}
    else:
        test = model.evaluate(dataset.x_test, dataset.y_test, batch_size=EVAL_BATCH)
    metrics = _metrics(plan, history, test, wall)
    extra = {"model_name": plan.model_name, "dataset": plan.args.dataset}
    save_model(model, out / "model.npz", extra={**extra, "test_accuracy": test["accuracy"]})
    write_json(out / "metrics.json", metrics)
    written = ["metrics.json", "model.npz", "training.npz"]
    if not plan.args.no_plots:
        n_train = len(plan.y_train)
        written += _pictures(model, dataset, history, out, plan.model_name, n_train)
    print()
    print(history.table())
    print(
        f"test accuracy: {test['accuracy']:.2%} (loss {test['loss']:.4f}) on "
        f"{len(dataset.y_test)} {dataset.name} test images; training took "
        f"{metrics['seconds']:.1f} s"
    )
    print(f"wrote {', '.join(written)} into {out}")
    return 0


def _metrics(plan: _Plan, history: Any, test: dict[str, float], wall: float) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    from xpconv._version import __version__

    args, trainer, dataset, comm = plan.args, plan.trainer, plan.dataset, plan.comm
    model, backend = trainer.model, trainer.model.backend
    seconds = float(sum(history.seconds))
    images = float(sum(r * s for r, s in zip(history.images_per_second, history.seconds)))
    return {
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
        "model": plan.model_name,
        "num_parameters": model.num_parameters(),
        "dataset": args.dataset,
        "dataset_loaded": dataset.name,
        "data_source": dataset.source,
        "train_examples": len(plan.y_train),
        "test_examples": len(dataset.y_test),
        "epochs": len(history.epoch),
        "batch_size": args.batch_size,
        "optimizer": trainer.optimizer.get_config(),
        "augment": None if trainer.augment is None else trainer.augment.get_config(),
        "seconds": seconds,
        "wall_seconds": wall,
        "images_per_second": _finite(images / seconds) if seconds > 0 else None,
        "seed": trainer.seed,
        "limit": args.limit,
        "resumed_from": None if plan.resumed_from is None else str(plan.resumed_from),
        "distributed": None
        if comm is None
        else {"engine": comm.engine, "ranks": comm.size, "global_batch_size": args.batch_size},
        "xpconv_version": __version__,
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        "train_loss_steps": dict(zip(("epoch", "loss"), _step_curve(history))),
    }


def _augment(spec: str | None, dataset: str) -> Any:
    """The :class:`~xpconv.data.augment.Augment` that ``--augment SPEC`` asks for, or None."""
    from xpconv.data.augment import Augment, augment_for_dataset

    if spec is None or spec == "none":
        return None
    if spec == "auto":
        return augment_for_dataset(dataset)
    return Augment(crop_padding=2 if "crop" in spec else 0, flip="flip" in spec)


def _describe_schedule(config: dict[str, Any]) -> str:
    """A schedule config as text, e.g. ``warm-up 10% from 0.0003, then cosine 0.003 -> 0``."""
    kind = config["type"]
    if kind == "Warmup":
        steps = config["steps"]
        share = f"{steps:.0%}" if isinstance(steps, float) else f"{steps} steps"
        return f"warm-up over {share} of the run, then {_describe_schedule(config['after'])}"
    if kind == "Constant":
        return f"{config['lr']:g} (constant)"
    if kind == "StepDecay":
        return f"{config['initial']:g} x {config['gamma']:g} every {config['step_size']} steps"
    names = {"CosineDecay": "cosine", "LinearDecay": "linear", "ExponentialDecay": "exponential"}
    return f"{config['initial']:g} -> {config['final']:g} ({names.get(kind, kind)})"


def _pictures(
    model: Any,
    dataset: Any,
    history: Any,
    out: Path,
    model_name: str,
    n_train: int,
) -> list[str]:
    try:
        from xpconv.tools import plots

        title = (
            f"{model_name} model on {plots.dataset_title(dataset.name)} ({n_train} training "
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
    from xpconv.io.checkpoint import load_checkpoint
    from xpconv.io.saving import load_model

    backend = _backend(parser, args)
    path = Path(args.checkpoint)
    if path.suffix.lower() == ".safetensors":
        from xpconv.io import load_safetensors

        _, meta = _load_or_fail(lambda: load_safetensors(path), path)
    else:
        _, meta = load_checkpoint(path)
    model = _load_or_fail(lambda: load_model(path, backend=backend), path)
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
        write_json(Path(args.json), result)
    return 0


# --------------------------------------------------------------------------- export


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from xpconv.io import DEFAULT_OPSET, MIN_OPSET, to_onnx
    from xpconv.io.saving import load_model

    if not Path(args.checkpoint).is_file():
        raise CliError(f"checkpoint: expected an existing file, got {args.checkpoint!r}")
    try:
        import onnx
    except ImportError as exc:
        raise CliError("export needs the onnx package: pip install 'xpconv[interop]'") from exc
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        parser.error(f"argument --opset: expected {MIN_OPSET} to {newest}, got {opset}")
    model = load_model(Path(args.checkpoint), backend="numpy")
    to_onnx(model, Path(args.output), opset=opset, dtype=args.dtype)
    shape = ", ".join(str(s) for s in model.input_shape)
    out = ", ".join(str(s) for s in model.output_shape)
    print(
        f"wrote {args.output}: input 'input' (N, {shape}) -> output 'output' (N, {out}), "
        f"opset {opset}, {args.dtype}"
    )
    if args.check:
        from xpconv.io.onnx import compare_with_onnxruntime

        try:
            diff = compare_with_onnxruntime(model, Path(args.output))
        except (ImportError, RuntimeError) as exc:  # no onnxruntime, or it cannot run it
            raise CliError(f"--check: {exc}") from exc
        print(
            f"onnxruntime against xpconv on a random batch of {diff['examples']}: max abs "
            f"difference {diff['max_abs']:.3g}, relative to the largest output "
            f"{diff['max_rel']:.3g}"
        )
    return 0


# --------------------------------------------------------------------------- main


def _library_errors() -> tuple[type[BaseException], ...]:
    from xpconv.backends.registry import BackendError
    from xpconv.data.datasets import DatasetError
    from xpconv.io.checkpoint import CheckpointError
    from xpconv.parallel.distributed import DistributedError
    from xpconv.train.trainer import TrainingError

    return (
        CliError,
        DatasetError,
        CheckpointError,
        BackendError,
        TrainingError,
        DistributedError,
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
    from xpconv.backends.numpy import host

    host.tune_host()  # the command owns its process; XPCONV_HOST_TUNING=0 turns it off
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
