"""``xpconv export``: a checkpoint written in every format the library writes, chosen
by the output's suffix: ``.onnx``, ``.pt`` (a PyTorch ``state_dict``), ``.safetensors``
or ``.npz``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from xpconv.cli.common import CliError

__all__ = ["export"]


def export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Load the checkpoint, write it in the format the output's suffix names; never onto
    the checkpoint itself (compared by identity: links and other spellings too)."""
    from xpconv.io.formats import export_format, same_file
    from xpconv.io.saving import load_model, save_model

    source, target = Path(args.checkpoint), Path(args.output)
    if not source.is_file():
        raise CliError(f"checkpoint: expected an existing file, got {args.checkpoint!r}")
    try:
        fmt = export_format(target)
    except ValueError as exc:
        parser.error(f"argument OUT: {exc}")
    if same_file(source, target) or source.resolve() == target.resolve():
        raise CliError(
            f"OUT {args.output}: it is the checkpoint being exported ({args.checkpoint}); "
            "choose another output file"
        )
    if fmt != "onnx" and (args.check or args.opset is not None):
        parser.error(f"argument {'--check' if args.check else '--opset'}: only for .onnx output")
    opset = _opset(args, parser) if fmt == "onnx" else 0
    model = load_model(source, backend="numpy")
    if fmt == "onnx":
        _write_onnx(model, target, opset, args)
    elif fmt == "torch":
        from xpconv.io.torch import save_torch_state_dict

        save_torch_state_dict(model, target)
        print(f"wrote {target}: the state_dict of xpconv.to_torch(model), {model.dtype_name}")
    else:
        save_model(model, target)
        print(f"wrote {target}: the model as {fmt}, {model.dtype_name}")
    return 0


def _opset(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from xpconv.io import DEFAULT_OPSET, MIN_OPSET

    try:
        import onnx
    except ImportError as exc:
        raise CliError("export needs the onnx package: pip install 'xpconv[interop]'") from exc
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        parser.error(f"argument --opset: expected {MIN_OPSET} to {newest}, got {opset}")
    return opset


def _write_onnx(model: Any, target: Path, opset: int, args: argparse.Namespace) -> None:
    from xpconv.io import to_onnx

    to_onnx(model, target, opset=opset, dtype=args.dtype)
    shape = ", ".join(str(s) for s in model.input_shape)
    out = ", ".join(str(s) for s in model.output_shape)
    print(
        f"wrote {target}: input 'input' (N, {shape}) -> output 'output' (N, {out}), "
        f"opset {opset}, {args.dtype}"
    )
    if args.check:
        from xpconv.io.onnx import compare_with_onnxruntime

        try:
            diff = compare_with_onnxruntime(model, target)
        except (ImportError, RuntimeError) as exc:  # no onnxruntime, or it cannot run it
            raise CliError(f"--check: {exc}") from exc
        print(
            f"onnxruntime against xpconv on a random batch of {diff['examples']}: max abs "
            f"difference {diff['max_abs']:.3g}, relative to the largest output "
            f"{diff['max_rel']:.3g}"
        )
