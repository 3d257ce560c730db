"""The ``xpconv`` command's entry: parse, dispatch to the command, turn the library's
errors into one line and an exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from xpconv.cli.common import PROG, CliError, as_flags, err
from xpconv.cli.evaluate import evaluate
from xpconv.cli.export import export
from xpconv.cli.parser import build_parser
from xpconv.cli.train import train

__all__ = ["main"]

#: The function that runs each command: (arguments, the command's parser) -> exit status.
HANDLERS: dict[str, Callable[[argparse.Namespace, argparse.ArgumentParser], int]] = {
    "train": train,
    "evaluate": evaluate,
    "export": export,
}


def _library_errors() -> tuple[type[BaseException], ...]:
    from xpconv.backends.registry import BackendError
    from xpconv.data.datasets import DatasetError
    from xpconv.io.checkpoint import CheckpointError
    from xpconv.parallel import DistributedError
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
        MemoryError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xpconv`` command with ``argv`` (default: ``sys.argv[1:]``); returns the
    exit status (0 success, 1 error, 2 bad option, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, or a bad option
        return exc.code if isinstance(exc.code, int) else 2
    handler = HANDLERS[args.command]
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
        err(as_flags(str(exc)) or type(exc).__name__)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
