"""Run directories and run records: where a run is written, what a resumed run must
share with the run it continues."""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from xpconv.cli.common import DATASETS, MODELS, CliError

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


def default_out(model: str, dataset: str, *, create: bool = True) -> Path:
    """A new directory ``runs/<model>-<dataset>-<timestamp>[-n]``, created here (when
    ``create``) with an exclusive ``mkdir``, so two runs started in the same second get
    two directories."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if create:
        Path("runs").mkdir(exist_ok=True)
    for n in range(1, 10_000):
        out = Path("runs") / f"{model}-{dataset}-{stamp}{'' if n == 1 else f'-{n}'}"
        try:
            if not create:
                return out
            out.mkdir()
        except FileExistsError:
            continue
        return out
    raise CliError(f"runs/{model}-{dataset}-{stamp}: 10000 runs this second; pass --out DIR")


class RunLock:
    """A run directory claimed by this process: an exclusive, non-blocking ``flock`` on
    the directory, held until :meth:`release` (or the process ends, even killed). A
    directory the claim ``created`` is removed on release if the run wrote nothing."""

    def __init__(self, out: Path, created: bool = False) -> None:
        import fcntl

        self.out, self.created = out, created
        self.fd: int | None = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.created = False  # another run's directory
            self.release()
            raise CliError(
                f"--out {out}: another xpconv train is writing a run into this directory; "
                "wait for it to end, or choose another --out"
            ) from None

    def release(self) -> None:
        if self.fd is not None and self.created:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                self.out.rmdir()  # still under the lock
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def claim_out(out: Path, args: argparse.Namespace, *, created: bool = False) -> RunLock:
    """Claim ``out`` for this run before anything is written into it: created if
    missing, locked against every other ``xpconv train`` (so two runs, or two resumes,
    never write into one directory), then checked under the lock for another run's
    files (:func:`check_out`).

    Raises:
        CliError: ``out`` is a file, is locked by another run, or holds another run.
    """
    if out.exists() and not out.is_dir():
        raise CliError(
            f"--out {out}: expected a directory for the run, found a file; choose another --out"
        )
    try:
        out.mkdir(parents=True)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise CliError(f"--out {out}: cannot create the directory ({exc.strerror})") from exc
    lock = RunLock(out, created)
    try:
        check_out(out, args)
    except CliError:
        lock.release()
        raise
    return lock


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


#: The run record's keys (``training.npz``'s ``"run"`` entry): required or not.
RUN_KEYS: dict[str, bool] = {
    "dataset": True,
    "limit": True,
    "batch_size": True,
    "model": True,
    "backend": False,
    "device": False,
    "dtype": False,
    "dataset_loaded": False,
    "drop_last": False,
    "batch_norm_stats": False,
}


def validate_run_record(record: Any, path: Path) -> dict[str, Any]:
    """Check a run record read from ``path`` field by field, on the schema path of the
    trainer metadata (:mod:`xpconv.io.schema`'s helpers), before anything uses it.

    Raises:
        CheckpointError: naming the file and the first field that is missing, unknown,
            of the wrong type or out of range.
    """
    from xpconv.io.checkpoint import CheckpointError
    from xpconv.io.schema import LIMITS, expect_int, expect_mapping, field_error

    def choice(key: str, allowed: tuple[str, ...]) -> None:
        if key in record and record[key] not in allowed:
            raise field_error(
                f"run.{key}", f"expected one of {list(allowed)}, got {record[key]!r:.80}"
            )

    try:
        record = expect_mapping(record, "run", RUN_KEYS)
        choice("dataset", DATASETS)
        choice("dataset_loaded", DATASETS)
        choice("model", (*MODELS, "custom"))
        choice("dtype", ("float32", "float64"))
        if not isinstance(record.get("drop_last", False), bool):
            raise field_error(
                "run.drop_last", f"expected true or false, got {record['drop_last']!r:.80}"
            )
        choice("batch_norm_stats", ("global", "per-rank"))
        if record["limit"] is not None:
            expect_int(record["limit"], "run.limit", low=1, high=LIMITS["size"])
        expect_int(record["batch_size"], "run.batch_size", low=1, high=LIMITS["size"])
        for key in ("backend", "device"):
            if key in record and not (isinstance(record[key], str) and len(record[key]) <= 200):
                raise field_error(f"run.{key}", f"expected a short string, got {record[key]!r:.80}")
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: the run record is not valid: {exc}") from None
    return dict(record)


def run_record(args: argparse.Namespace, model_name: str, model: Any) -> dict[str, Any]:
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
        given, recorded = getattr(args, attr, None), record.get(key)
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
