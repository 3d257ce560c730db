"""``xpconv evaluate``: the test loss and accuracy of a checkpoint, on any backend."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xpconv.cli.common import backend_of, describe_data, finite, load_data, load_or_fail
from xpconv.io.files import write_json

__all__ = ["evaluate"]


def evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from xpconv.io.checkpoint import load_checkpoint
    from xpconv.io.saving import load_model

    backend = backend_of(parser, args)
    path = Path(args.checkpoint)
    if path.suffix.lower() == ".safetensors":
        from xpconv.io import load_safetensors

        _, meta = load_or_fail(lambda: load_safetensors(path), path)
    else:
        _, meta = load_checkpoint(path)
    model = load_or_fail(lambda: load_model(path, backend=backend), path)
    name = args.dataset or meta.get("dataset") or "mnist"
    dataset = load_data(name, args.data_dir, not args.no_progress)
    print(describe_data(dataset), file=sys.stderr)
    test = model.evaluate(dataset.x_test, dataset.y_test, batch_size=args.batch_size)
    result = {
        "checkpoint": str(path),
        "test_accuracy": test["accuracy"],
        "test_loss": finite(test["loss"]),
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
