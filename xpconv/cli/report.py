"""The end of ``xpconv train``: the test result, ``metrics.json``, ``model.npz``, the
pictures and the closing table."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from xpconv.cli.common import EVAL_BATCH, finite
from xpconv.cli.runs import Plan
from xpconv.io.files import write_json


def report_run(plan: Plan, history: Any, wall: float, trained: int) -> int:
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


def _metrics(plan: Plan, history: Any, test: dict[str, float], wall: float) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    from xpconv._version import __version__

    args, trainer, dataset, comm = plan.args, plan.trainer, plan.dataset, plan.comm
    model, backend = trainer.model, trainer.model.backend
    seconds = float(sum(history.seconds))
    images = float(sum(r * s for r, s in zip(history.images_per_second, history.seconds)))
    return {
        "test_accuracy": test["accuracy"],
        "test_loss": finite(test["loss"]),
        "train_loss": [finite(v) for v in history.loss],
        "train_accuracy": [finite(v) for v in history.accuracy],
        "val_loss": [finite(v) for v in history.val_loss],
        "val_accuracy": [finite(v) for v in history.val_accuracy],
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
        "images_per_second": finite(images / seconds) if seconds > 0 else None,
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


def describe_schedule(config: dict[str, Any]) -> str:
    """A schedule config as text, e.g. ``warm-up 10% from 0.0003, then cosine 0.003 -> 0``."""
    kind = config["type"]
    if kind == "Warmup":
        steps = config["steps"]
        share = f"{steps:.0%}" if isinstance(steps, float) else f"{steps} steps"
        return f"warm-up over {share} of the run, then {describe_schedule(config['after'])}"
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


def _step_curve(history: Any) -> tuple[list[float], list[float]]:
    """Every step's loss and its position in epochs (1.0 = end of the first epoch)."""
    positions: list[float] = []
    losses: list[float] = []
    for epoch, values in zip(history.epoch, history.step_losses):
        positions += [epoch - 1 + (i + 1) / len(values) for i in range(len(values))]
        losses += values
    return positions, losses
