"""``xpconv export``: a checkpoint written in the formats other tools read."""

from __future__ import annotations

import argparse
from pathlib import Path

from xpconv.cli.common import CliError

__all__ = ["export"]


def export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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
