"""``xpconv train``: plan the run, run it, report it."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from xpconv.cli.common import (
    PROG,
    TRAIN_DEFAULTS,
    CliError,
    backend_of,
    describe_data,
    load_data,
    load_or_fail,
)
from xpconv.cli.report import describe_schedule, report_run
from xpconv.cli.runs import (
    Plan,
    RunLock,
    claim_out,
    default_out,
    resume_settings,
    run_record,
    validate_run_record,
)
from xpconv.data.datasets import DatasetError
from xpconv.models.zoo import RECIPES

__all__ = ["train"]


def train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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
    from xpconv.parallel import MPICommunicator, launched_by_mpi

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


def _train_run(args: argparse.Namespace, parser: argparse.ArgumentParser, comm: Any) -> int:
    """Plan the run, run it, report it."""
    locks: list[RunLock] = []  # the output directory, claimed until the run ends
    try:
        plan = _plan_run(args, parser, comm, locks)
        ran = _run_training(plan)
        if ran is None:
            return 130
        if not plan.root:
            return 0
        return report_run(plan, *ran)
    finally:
        for lock in locks:
            lock.release()


#: Options that a resumed run takes from its checkpoint, and the recipe's options.
RECIPE_OPTIONS = ("lr", "final_lr", "optimizer", "schedule", "warmup", "weight_decay")


def _plan_run(
    args: argparse.Namespace, parser: argparse.ArgumentParser, comm: Any, locks: list[RunLock]
) -> Plan:
    """Step 1: resolve the options (defaults, the recipe, a checkpoint's settings), build
    or resume the model and trainer, load the data, claim the output directory (rank 0;
    the claim is appended to ``locks``)."""
    root = comm is None or comm.is_root
    progress = not args.no_progress and root
    backend = backend_of(parser, args)
    if args.out is not None and root:
        locks.append(claim_out(Path(args.out), args))  # before any data is loaded
    comm = _ready_communicator(args, backend, comm)
    resumed_from = None if args.resume is None else Path(args.resume)
    recorded_data = None
    if resumed_from is not None:
        trainer, model_name, recorded_data = _resume(args, backend, progress, comm)
        model, recipe = trainer.model, None
    else:
        args.dataset = args.dataset or TRAIN_DEFAULTS["dataset"]
        model_name, model, recipe = _new_model(args, backend)
    dataset, x_train, y_train = _data(args, comm, progress, recorded_data)
    if recipe is not None:
        trainer = _new_trainer(args, model, recipe, dataset.name, len(y_train), progress, comm)
    out = Path(args.out) if args.out is not None else None
    if out is None:
        out = default_out(model_name, dataset.name, create=root)
        if root:
            locks.append(claim_out(out, args, created=True))
    _print_plan(trainer, args, out, comm)
    record = {**run_record(args, model_name, model), "dataset_loaded": dataset.name}
    return Plan(
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
        run_record=record,
    )


def _data(args: argparse.Namespace, comm: Any, progress: bool, recorded: str | None) -> Any:
    """The dataset, and the training examples (``--limit``). A resumed run loads the data
    it started on (``recorded``: the dataset its record says it loaded) and never falls
    back to other data: without it, it stops and says so."""
    root = comm is None or comm.is_root
    if comm is not None and not root:
        comm.barrier()  # rank 0 downloads or checks the files first
    try:
        dataset = load_data(
            recorded or args.dataset, args.data_dir, progress, fallback=args.resume is None
        )
    except DatasetError as exc:
        if args.resume is None:
            raise
        raise CliError(
            f"--resume {args.resume}: the run trained on {recorded or args.dataset} and "
            f"continues on the same data only, which cannot be loaded here: {exc}"
        ) from exc
    finally:
        if comm is not None and root:
            comm.barrier()
    print(describe_data(dataset))
    x_train, y_train = dataset.x_train, dataset.y_train
    if args.limit is not None and args.limit < len(y_train):
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
        print(f"      training on the first {args.limit} of {len(dataset.y_train)} examples")
    return dataset, x_train, y_train


def _ready_communicator(args: argparse.Namespace, backend: Any, comm: Any) -> Any:
    """The communicator of a distributed run on ``backend`` (NCCL wraps the MPI one),
    its ranks sharing the machine's cores; ``None`` for one process."""
    if args.distributed == "nccl":
        from xpconv.parallel import NCCLCommunicator

        comm = NCCLCommunicator(backend, comm, timeout=args.distributed_timeout)
    if comm is not None:
        from xpconv.parallel import share_cores

        threads = share_cores(comm, backend)
        if threads is not None:
            print(f"note: {threads} BLAS thread(s) per rank (the ranks share this machine)")
    return comm


def _resume(
    args: argparse.Namespace, backend: Any, progress: bool, comm: Any
) -> tuple[Any, str, str | None]:
    """The trainer of ``--resume``, the options it fixes filled in from the checkpoint's
    record of its run (validated first), the model's name as recorded there and the
    dataset the run loaded (``None`` when not recorded)."""
    from xpconv.io.checkpoint import load_checkpoint
    from xpconv.train.resume import load_training

    ignored = [
        f"--{name.replace('_', '-')}"
        for name in (*RECIPE_OPTIONS, "augment", "seed", "dtype")
        if getattr(args, name) is not None
    ]
    path = Path(args.resume)
    _, meta = load_checkpoint(path)
    record = None if meta.get("run") is None else validate_run_record(meta["run"], path)
    trainer = load_or_fail(lambda: load_training(path, backend=backend, progress=progress), path)
    trainer.communicator = comm
    resume_settings(args, record, trainer.model)
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
    return trainer, model_name, None if record is None else record.get("dataset_loaded")


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
            f"optimizer: {opt['type']} lr {describe_schedule(opt['lr'])}, weight decay "
            f"{opt.get('weight_decay', 0):g}, batch size {args.batch_size}, {args.epochs} epoch(s)"
        )
    if trainer.augment is not None:
        print(f"augmentation: {trainer.augment.describe()}")
    print(f"output: {out}")
    if comm is not None:
        print(f"distributed: {comm.size} ranks over {comm.engine}, {args.batch_size} per step")


def _run_training(plan: Plan) -> tuple[Any, float, int] | None:
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


def _augment(spec: str | None, dataset: str) -> Any:
    """The :class:`~xpconv.data.augment.Augment` that ``--augment SPEC`` asks for, or None."""
    from xpconv.data.augment import Augment, augment_for_dataset

    if spec is None or spec == "none":
        return None
    if spec == "auto":
        return augment_for_dataset(dataset)
    return Augment(crop_padding=2 if "crop" in spec else 0, flip="flip" in spec)
