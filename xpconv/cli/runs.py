"""Run directories and run records: where a run is written, what a resumed run must
share with the run it continues."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from xpconv.cli.common import CliError

#: Files whose presence marks a directory as holding a run.
RUN_FILES = ("training.npz", "model.npz", "metrics.json")
#: Settings a resumed run must share with the run it continues (option -> record key).
RUN_SETTINGS = {
    "--dataset": "dataset",
    "--limit": "limit",
    "--batch-size": "batch_size",
    "--model": "model",
}


def default_out(model: str, dataset: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"{model}-{dataset}-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path("runs") / f"{model}-{dataset}-{stamp}-{n}"
    return out


def check_out(out: Path, args: argparse.Namespace) -> None:
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


def run_record(args: argparse.Namespace, model_name: str, model: Any) -> dict[str, Any]:
    return {
        "dataset": args.dataset,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "model": model_name,
        "backend": model.backend.name,
        "device": str(model.backend.device),
        "dtype": model.dtype_name,
    }


def resume_settings(args: argparse.Namespace, record: Any, model: Any) -> None:
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


@dataclass
class Plan:
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
